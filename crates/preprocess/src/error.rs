use std::path::PathBuf;

use crate::ImageFormat;

/// Everything that can go wrong while configuring the engine or preprocessing an image.
///
/// The variants are split by who is at fault, as in `image`:
/// the bytes ([`Error::UnknownFormat`], [`Error::Truncated`], [`Error::Corrupt`],
/// [`Error::ZeroSized`]),
/// this crate ([`Error::Unsupported`]), the limits the caller set ([`Error::TooLarge`],
/// [`Error::AllocationLimit`]), or the caller's arguments and files
/// ([`Error::OutputLength`], [`Error::Config`], [`Error::Io`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The bytes start with no signature of a supported format.
    #[error("unrecognized image format")]
    UnknownFormat,
    /// The data ends before the image does.
    #[error("truncated {format} data")]
    Truncated {
        /// The format sniffed from the magic bytes.
        format: ImageFormat,
    },
    /// The data is malformed.
    #[error("corrupt {format} data: {reason}")]
    Corrupt {
        /// The format sniffed from the magic bytes.
        format: ImageFormat,
        /// What the decoder found wrong.
        reason: String,
    },
    /// The image has no pixels (a width or height of 0), which no resize can take.
    #[error("{} image has no pixels (zero width or height)", format.map_or("the".to_string(), |f| format!("the {f}")))]
    ZeroSized {
        /// The format, when the bytes were decoded here (not for an RGB image handed in).
        format: Option<ImageFormat>,
    },
    /// The data is valid but uses a feature this crate does not decode.
    #[error("unsupported {format} image: {reason}")]
    Unsupported {
        /// The format sniffed from the magic bytes.
        format: ImageFormat,
        /// The feature that is missing.
        reason: String,
    },
    /// The header claims more pixels than [`Limits::max_pixels`](crate::Limits::max_pixels).
    #[error("{width}x{height} image exceeds the limit of {max_pixels} pixels")]
    TooLarge {
        /// Width claimed by the header.
        width: u32,
        /// Height claimed by the header.
        height: u32,
        /// The limit in force.
        max_pixels: u64,
    },
    /// Decoding would allocate more than [`Limits::max_alloc`](crate::Limits::max_alloc).
    #[error("decoding needs {needed} bytes, over the limit of {max_alloc} bytes")]
    AllocationLimit {
        /// Bytes the decode would need.
        needed: u64,
        /// The limit in force.
        max_alloc: u64,
    },
    /// The output slot has the wrong length.
    #[error("output slot holds {actual} floats, expected {expected}")]
    OutputLength {
        /// [`Preprocessor::output_len`](crate::Preprocessor::output_len).
        expected: usize,
        /// Length of the slice passed in.
        actual: usize,
    },
    /// A preprocessor config is malformed or asks for something this crate does not do.
    #[error("invalid preprocessor config: {reason}")]
    Config {
        /// What is wrong with it.
        reason: String,
    },
    /// A config file could not be read.
    #[error("failed to read {}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub(crate) fn corrupt(format: ImageFormat, reason: impl std::fmt::Display) -> Self {
        Error::Corrupt { format, reason: house_style(reason) }
    }

    pub(crate) fn unsupported(format: ImageFormat, reason: impl std::fmt::Display) -> Self {
        Error::Unsupported { format, reason: house_style(reason) }
    }

    pub(crate) fn config(reason: impl std::fmt::Display) -> Self {
        Error::Config { reason: reason.to_string() }
    }

    /// True when the image bytes are at fault (unknown format, truncated or corrupt data):
    /// the sample is bad, not the setup.
    pub fn is_bad_input(&self) -> bool {
        matches!(self, Error::UnknownFormat | Error::Truncated { .. } | Error::Corrupt { .. })
    }
}

/// Decoder messages in this crate's style: lowercase, no trailing period.
fn house_style(reason: impl std::fmt::Display) -> String {
    let mut s = reason.to_string().to_lowercase();
    while s.ends_with('.') {
        s.pop();
    }
    s
}
