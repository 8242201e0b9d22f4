use std::path::PathBuf;

/// Everything that can go wrong loading, converting or running a head.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The file could not be opened or read.
    #[error("cannot read {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// The file is neither a safetensors file nor a PyTorch zip checkpoint.
    #[error("{path} is neither a safetensors file nor a PyTorch (zip) checkpoint{hint}")]
    UnknownFormat {
        /// The file.
        path: PathBuf,
        /// A hint about what the file might be instead, possibly empty.
        hint: &'static str,
    },
    /// The tensors could not be decoded from a file that looked like a checkpoint.
    #[error("cannot decode the tensors of {path}")]
    Decode {
        /// The file.
        path: PathBuf,
        /// What the tensor library said (candle's error today; not part of this crate's
        /// door, so a candle upgrade changes no signature).
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
    /// A tensor that is not part of the head's `layers.{i}.{weight,bias}` state dict.
    #[error(
        "{path}: unexpected tensor `{name}` (a head holds only `layers.{{i}}.{{weight,bias}}`)"
    )]
    UnexpectedTensor {
        /// The file.
        path: PathBuf,
        /// The tensor's name.
        name: String,
    },
    /// The layer indices fit neither known layout.
    #[error(
        "{path}: linear layers at indices {indices:?} match neither the linear head \
         [0, 2, 4, 6, 7] nor the relu head [0, 3, 6, 9, 11]"
    )]
    UnknownLayout {
        /// The file.
        path: PathBuf,
        /// The `i` of every `layers.{i}.*` tensor, sorted.
        indices: Vec<usize>,
    },
    /// A layer has a weight but no bias, or the reverse.
    #[error("{path}: tensor `{name}` is missing")]
    MissingTensor {
        /// The file.
        path: PathBuf,
        /// The missing tensor's name.
        name: String,
    },
    /// A tensor's shape does not chain with its neighbours.
    #[error("{path}: tensor `{name}` has shape {actual:?}, expected {expected}")]
    Shape {
        /// The file.
        path: PathBuf,
        /// The tensor's name.
        name: String,
        /// What was expected, in words or as a shape.
        expected: String,
        /// The tensor's shape.
        actual: Vec<usize>,
    },
    /// A tensor holds NaN or infinite values.
    #[error("{path}: tensor `{name}` holds values that are not finite")]
    NonFinite {
        /// The file.
        path: PathBuf,
        /// The tensor's name.
        name: String,
    },
    /// The embeddings' dimension is not the head's input dimension.
    #[error("embeddings have {actual} values, the head takes {expected}")]
    InputDim {
        /// The head's input dimension.
        expected: usize,
        /// The embeddings' dimension.
        actual: usize,
    },
    /// A converted file could not be written.
    #[error("cannot write {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
    /// The tensor library failed while building or running the head.
    #[error("head computation failed")]
    Compute(#[source] Box<dyn std::error::Error + Send + Sync + 'static>),
}

impl Error {
    /// A failure of the tensor library.
    pub(crate) fn compute(source: candle_core::Error) -> Error {
        Error::Compute(Box::new(source))
    }
}
