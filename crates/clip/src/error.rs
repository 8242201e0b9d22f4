use std::path::PathBuf;

/// Everything that can go wrong loading or running a CLIP vision tower.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file could not be read or written.
    #[error("i/o error on {path}")]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A JSON file (config or shard index) is not valid JSON of the expected form.
    #[error("invalid json in {path}")]
    Json {
        /// The file, or `<string>` for [`ClipVisionConfig::from_json_str`](crate::ClipVisionConfig::from_json_str).
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: serde_json::Error,
    },
    /// The config parses but describes no model this crate can build.
    #[error("invalid config: `{field}` {reason}")]
    Config {
        /// The offending config field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The directory holds no safetensors weights this crate can read.
    #[error(
        "no safetensors weights in {dir} (expected model.safetensors or model.safetensors.index.json){hint}"
    )]
    NoWeights {
        /// The model directory.
        dir: PathBuf,
        /// Extra advice, such as how to convert a PyTorch pickle.
        hint: &'static str,
    },
    /// A safetensors file could not be opened or parsed.
    #[error("cannot read safetensors file {path}")]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// What the tensor library said (candle's error today; not part of this crate's
        /// door, so a candle upgrade changes no signature).
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
    /// A tensor the vision tower needs is absent from the checkpoint.
    #[error("missing tensor `{name}` in {path}")]
    MissingTensor {
        /// Full checkpoint name, e.g. `vision_model.post_layernorm.weight`.
        name: String,
        /// The file (or shard index) that should hold it.
        path: PathBuf,
    },
    /// A tensor has a shape other than the config implies.
    #[error("tensor `{name}` has shape {actual:?}, expected {expected:?}")]
    TensorShape {
        /// Full checkpoint name.
        name: String,
        /// Shape implied by the config.
        expected: Vec<usize>,
        /// Shape found in the checkpoint.
        actual: Vec<usize>,
    },
    /// A tensor is stored with a data type that is not a float type.
    #[error("tensor `{name}` has dtype {dtype}, expected f32, f16 or bf16")]
    TensorDtype {
        /// Full checkpoint name.
        name: String,
        /// The stored data type.
        dtype: String,
    },
    /// The data type is not supported on the device (CPU: f32, and bf16 with AMX-BF16 or
    /// AVX512-BF16; never f16).
    #[error("dtype {dtype} is not supported on {device}{hint}")]
    UnsupportedDtype {
        /// The requested data type.
        dtype: crate::DType,
        /// The device, as text.
        device: String,
        /// What to use instead.
        hint: &'static str,
    },
    /// A device string is neither `cpu`, `cuda` nor `cuda:N`.
    #[error("unknown device `{0}` (expected cpu, cuda or cuda:N)")]
    UnknownDevice(String),
    /// A CUDA device was asked for but the crate was built without the `cuda` feature.
    #[error("device `{0}` needs aesthete-clip built with the `cuda` feature")]
    CudaNotCompiled(String),
    /// The CUDA libraries this machine lacks (the crate loads them when a model is first
    /// put on a CUDA device).
    #[error("{device} is unavailable: this machine lacks {missing}")]
    CudaUnavailable {
        /// The device, as text (`cuda:0`).
        device: String,
        /// The libraries that could not be loaded, comma-separated.
        missing: String,
    },
    /// The CUDA device could not be opened or a step on it failed.
    #[error("{device}: {reason}")]
    Cuda {
        /// The device, as text (`cuda:0`).
        device: String,
        /// The step that failed and the driver's or library's words.
        reason: String,
    },
    /// The image batch does not have the size the model was trained on.
    #[error("image batch has {actual}×{actual} pixels, the model expects {expected}×{expected}")]
    ImageSize {
        /// The model's `image_size`.
        expected: usize,
        /// The batch's image size.
        actual: usize,
    },
    /// The model produced embeddings that cannot be normalized (NaN, infinite or zero).
    #[error("model produced invalid embeddings")]
    Embeddings(#[source] aesthete_tensor::ShapeError),
    /// A tensor operation failed (the source is the tensor library's error).
    #[error("tensor operation failed")]
    Compute(#[source] Box<dyn std::error::Error + Send + Sync + 'static>),
}

impl From<candle_core::Error> for Error {
    fn from(source: candle_core::Error) -> Error {
        Error::Compute(Box::new(source))
    }
}
