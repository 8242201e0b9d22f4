//! One sample's result, the record that every way of producing scores (the model stages, a
//! score table read back) hands to the outputs.
use std::fmt;

use aesthete_preprocess::is_image_extension;
use aesthete_shards::Member;

/// A sample with its result, ready to be written.
pub(crate) struct SampleRecord {
    pub key: String,
    /// The sample's members, original bytes; empty when the outputs write no tar.
    pub members: Vec<Member>,
    pub result: SampleResult,
}

/// What became of a sample.
pub(crate) enum SampleResult {
    Scored {
        /// Width and height of the decoded image, when known (a stored embedding may come
        /// without them).
        size: Option<(u32, u32)>,
        score: f32,
        /// With `--save-embeddings`.
        embedding: Option<Vec<f32>>,
    },
    Failed {
        /// Known when the image was decoded before the failure.
        size: Option<(u32, u32)>,
        error: SampleError,
    },
}

impl SampleResult {
    pub fn score(&self) -> Option<f32> {
        match self {
            SampleResult::Scored { score, .. } => Some(*score),
            SampleResult::Failed { .. } => None,
        }
    }
}

/// Why a sample has no score. Its text is what the table's `error` column holds.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum SampleError {
    /// No member has an image extension.
    NoImage {
        /// Extensions of the members it has.
        extensions: Vec<String>,
    },
    /// The shard reader skipped the sample (a member over the size limit, a bad header).
    Unreadable(String),
    /// The image member did not decode or preprocess.
    Image {
        /// The member's name in the shard.
        member: String,
        /// Why, with its causes.
        reason: String,
    },
    /// Read back from a score table written earlier, as it was recorded there.
    Recorded(String),
}

impl SampleError {
    pub fn no_image(members: &[Member]) -> Self {
        SampleError::NoImage {
            extensions: members.iter().map(|m| m.extension().to_string()).collect(),
        }
    }
}

impl fmt::Display for SampleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SampleError::NoImage { extensions } => {
                write!(f, "no image member (members: {})", extensions.join(", "))
            }
            SampleError::Unreadable(reason) | SampleError::Recorded(reason) => f.write_str(reason),
            SampleError::Image { member, reason } => write!(f, "{member}: {reason}"),
        }
    }
}

/// What kind of failure an `error` text records. The texts carry no kind field: each kind is
/// recognized from the way [`SampleError`] (and `rescore`, for stored embeddings) writes it,
/// and the tests below hold the two together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum ErrorKind {
    /// [`SampleError::NoImage`].
    NoImage,
    /// [`SampleError::Image`] over the decoder's limits (pixels or bytes).
    ImageTooLarge,
    /// [`SampleError::Image`], any other reason.
    UndecodableImage,
    /// [`SampleError::Unreadable`]: the shard reader skipped the sample.
    Unreadable,
    /// `rescore` found no usable embedding (missing, wrong width, not finite, zero norm).
    BadEmbedding,
    /// Anything else, including a row with neither a score nor an error.
    Other,
}

impl ErrorKind {
    /// The kind of the failure recorded as `text`.
    pub fn of(text: &str) -> Self {
        if text.starts_with("no image member") {
            return ErrorKind::NoImage;
        }
        // The shard reader's skipped-sample errors name the sample or member and the shard:
        // "member M of sample K in shard S is N bytes, ...", "sample K in shard S is over ...",
        // "member name \"M\" in shard S at byte N is not valid utf-8".
        if (text.starts_with("member ") || text.starts_with("sample "))
            && text.contains(" in shard ")
        {
            return ErrorKind::Unreadable;
        }
        // "{member}: {reason}", the member being the sample's image.
        if let Some((member, reason)) = text.split_once(": ")
            && is_image_extension(aesthete_shards::split_name(member).1)
        {
            let over_limit =
                reason.contains("exceeds the limit of") || reason.contains("over the limit of");
            return if over_limit { ErrorKind::ImageTooLarge } else { ErrorKind::UndecodableImage };
        }
        if text.starts_with("embedding ") || text.starts_with("no embedding") {
            return ErrorKind::BadEmbedding;
        }
        ErrorKind::Other
    }

    /// A few words for a person.
    pub fn label(self) -> &'static str {
        match self {
            ErrorKind::NoImage => "no image",
            ErrorKind::ImageTooLarge => "image over the size limits",
            ErrorKind::UndecodableImage => "undecodable image",
            ErrorKind::Unreadable => "unreadable sample",
            ErrorKind::BadEmbedding => "no usable embedding",
            ErrorKind::Other => "other",
        }
    }
}

/// `error: cause: cause`, the way `{:#}` prints an anyhow chain.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table's `error` column keeps the text it has always had.
    #[test]
    fn sample_errors_read_as_before() {
        let no_image = SampleError::NoImage { extensions: vec!["txt".into(), "json".into()] };
        assert_eq!(no_image.to_string(), "no image member (members: txt, json)");
        let image = SampleError::Image { member: "a.jpg".into(), reason: "corrupt JPEG".into() };
        assert_eq!(image.to_string(), "a.jpg: corrupt JPEG");
        assert_eq!(SampleError::Recorded("x".into()).to_string(), "x");
    }

    /// Each way a sample fails, made as the pipeline makes it (real decoder and shard reader
    /// errors), is recognized as its kind.
    #[test]
    fn recorded_errors_are_recognized_by_kind() {
        use aesthete_preprocess::{Decoder, Limits, RgbImage};
        use aesthete_shards::{ReadOptions, ShardReader};

        let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures");
        let members = [Member::new("a/k.txt", "x"), Member::new("a/k.json", "{}")];
        assert_eq!(ErrorKind::of(&SampleError::no_image(&members).to_string()), ErrorKind::NoImage);

        let mut image = RgbImage::new();
        let garbage = Decoder::new(Limits::default()).decode(b"not an image", &mut image);
        let undecodable = SampleError::Image {
            member: "dir/k.photo.JPG".into(),
            reason: error_chain(&garbage.unwrap_err()),
        };
        assert_eq!(ErrorKind::of(&undecodable.to_string()), ErrorKind::UndecodableImage);

        // A fixture shard's images, read with limits they break.
        let shard = fixtures.join("pipeline/shards/good-000000.tar");
        let sample = ShardReader::open(&shard, ReadOptions::default()).unwrap().next().unwrap();
        let sample = sample.unwrap();
        let member = sample.members().iter().find(|m| is_image_extension(m.extension())).unwrap();
        for limits in [Limits::default().max_pixels(4), Limits::default().max_alloc(16)] {
            let error = Decoder::new(limits).decode(&member.data, &mut image).unwrap_err();
            let too_large =
                SampleError::Image { member: member.name.clone(), reason: error_chain(&error) };
            assert_eq!(ErrorKind::of(&too_large.to_string()), ErrorKind::ImageTooLarge, "{error}");
        }
        for options in
            [ReadOptions::default().max_member_size(8), ReadOptions::default().max_sample_size(8)]
        {
            let error = ShardReader::open(&shard, options).unwrap().next().unwrap().unwrap_err();
            assert!(error.skipped_sample_key().is_some(), "{error}");
            let unreadable = SampleError::Unreadable(error_chain(&error));
            assert_eq!(ErrorKind::of(&unreadable.to_string()), ErrorKind::Unreadable, "{error}");
        }

        // rescore's texts for rows it cannot score (rescore/mod.rs, rescore/source.rs).
        for text in [
            "embedding has zero norm",
            "embedding has values that are not finite",
            "embedding has 512 values; the aesthetic head takes 768",
            "no embedding in the input table",
        ] {
            assert_eq!(ErrorKind::of(text), ErrorKind::BadEmbedding, "{text}");
        }
        assert_eq!(ErrorKind::of("not scored"), ErrorKind::Other);
    }
}
