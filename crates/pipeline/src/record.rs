//! One sample's result, the record that every way of producing scores (the model stages, a
//! score table read back) hands to the outputs.
use std::fmt;

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
}
