use std::io;
use std::path::PathBuf;

/// Everything that can go wrong while reading, writing or listing shards.
///
/// Errors are split by who is at fault: the file system ([`Error::Io`], [`Error::Read`]),
/// the shard's bytes ([`Error::Truncated`], [`Error::CorruptHeader`]), a configured limit
/// ([`Error::MemberTooLarge`], [`Error::SampleTooLarge`]), or the caller's input
/// ([`Error::UnsafeName`], [`Error::NoMatch`], ...). Each carries the shard, sample key,
/// member name or byte offset it concerns.
///
/// Byte offsets count bytes of the tar stream: for a `.tar.gz` shard they are offsets
/// in the decompressed stream.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Opening, creating, listing or writing a file failed.
    #[error("i/o error on {path}")]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Reading a shard's bytes failed (including a corrupt gzip stream).
    #[error("failed to read shard {shard} at byte {offset}")]
    Read {
        /// The shard being read.
        shard: PathBuf,
        /// Bytes of the tar stream consumed before the failure.
        offset: u64,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The shard ends in the middle of a header or member, or without the end-of-archive
    /// block. Every sample completed before the cut has been yielded; none follow.
    #[error("shard {shard} is truncated at byte {offset}")]
    Truncated {
        /// The shard being read.
        shard: PathBuf,
        /// Where the input ended.
        offset: u64,
    },
    /// A tar header is invalid (bad checksum, unparsable number, malformed pax record).
    /// Reading stops: there is no way to find the next header.
    #[error("corrupt tar header in shard {shard} at byte {offset}: {reason}")]
    CorruptHeader {
        /// The shard being read.
        shard: PathBuf,
        /// Offset of the offending header block.
        offset: u64,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A member is larger than [`ReadOptions::max_member_size`](crate::ReadOptions::max_member_size).
    /// Its sample is skipped without being loaded; reading continues with the next sample.
    #[error(
        "member {member} of sample {key} in shard {shard} is {size} bytes, over the limit of {limit}"
    )]
    MemberTooLarge {
        /// The shard being read.
        shard: PathBuf,
        /// Key of the skipped sample.
        key: String,
        /// Full name of the oversized member.
        member: String,
        /// Its size in bytes, from the header.
        size: u64,
        /// The configured limit.
        limit: u64,
    },
    /// A sample's members add up to more than
    /// [`ReadOptions::max_sample_size`](crate::ReadOptions::max_sample_size).
    /// The sample is skipped; reading continues with the next one.
    #[error("sample {key} in shard {shard} is over the limit of {limit} bytes")]
    SampleTooLarge {
        /// The shard being read.
        shard: PathBuf,
        /// Key of the skipped sample.
        key: String,
        /// The configured limit.
        limit: u64,
    },
    /// A member's name is not valid UTF-8. Its sample is skipped; reading continues.
    #[error("member name {name:?} in shard {shard} at byte {offset} is not valid utf-8")]
    NonUtf8Name {
        /// The shard being read.
        shard: PathBuf,
        /// Offset of the member's header.
        offset: u64,
        /// The name, with invalid bytes replaced by U+FFFD.
        name: String,
    },
    /// The writer refused a member name that is absolute, contains a `..` component,
    /// is empty, ends with `/` or contains a NUL byte.
    #[error("refusing to write member name {name:?}: {reason}")]
    UnsafeName {
        /// The refused name.
        name: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// The writer was given a member whose name does not belong to the sample's key, so
    /// a reader would not group it back into that sample.
    #[error("member {member} does not belong to sample key {key}")]
    KeyMismatch {
        /// The sample key.
        key: String,
        /// The member name.
        member: String,
    },
    /// The writer was given two consecutive samples with the same key, which a reader
    /// would merge into one.
    #[error("sample key {key} repeats the previous sample's key")]
    RepeatedKey {
        /// The repeated key.
        key: String,
    },
    /// An earlier write of this shard failed, so it can no longer be committed.
    #[error("an earlier write to {path} failed; the shard cannot be committed")]
    WriterFailed {
        /// The final path of the shard.
        path: PathBuf,
    },
    /// An input pattern, directory or list entry matched no shard.
    #[error("{pattern} matches no shard")]
    NoMatch {
        /// The pattern as given (after brace expansion).
        pattern: String,
    },
    /// An input names a file that does not exist.
    #[error("{path} does not exist")]
    NotFound {
        /// The missing path.
        path: PathBuf,
    },
    /// An input pattern is malformed or expands to too many paths.
    #[error("invalid input pattern {pattern:?}: {reason}")]
    Pattern {
        /// The pattern as given.
        pattern: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl Error {
    /// The key of the sample this error skipped, when the reader goes on after it (a size
    /// limit, a name that is not UTF-8); `None` when the error ends the shard or is not a
    /// reading error. A caller recording failures per sample uses it to name the sample.
    pub fn skipped_sample_key(&self) -> Option<&str> {
        match self {
            Error::MemberTooLarge { key, .. } | Error::SampleTooLarge { key, .. } => Some(key),
            Error::NonUtf8Name { name, .. } => Some(crate::split_name(name).0),
            _ => None,
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: io::Error) -> Error {
        Error::Io { path: path.into(), source }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_errors_name_their_sample_and_shard_errors_do_not() {
        let too_large = Error::MemberTooLarge {
            shard: "s.tar".into(),
            key: "a/b/001".into(),
            member: "a/b/001.jpg".into(),
            size: 10,
            limit: 5,
        };
        assert_eq!(too_large.skipped_sample_key(), Some("a/b/001"));
        let bad_name =
            Error::NonUtf8Name { shard: "s.tar".into(), offset: 0, name: "x/\u{fffd}.jpg".into() };
        assert_eq!(bad_name.skipped_sample_key(), Some("x/\u{fffd}"));
        let cut = Error::Truncated { shard: "s.tar".into(), offset: 512 };
        assert_eq!(cut.skipped_sample_key(), None);
    }
}
