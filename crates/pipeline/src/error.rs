use std::path::PathBuf;

/// What can stop a run as a whole. Failures of single samples or shards are not errors of the
/// run: they are recorded in the outputs and the [`crate::RunSummary`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The run's settings do not make sense.
    #[error("{0}")]
    Config(String),
    /// The input list could not be expanded (a local pattern, or listing an object store).
    #[error("listing input shards")]
    Inputs(#[source] aesthete_store::Error),
    /// Object-store clients could not be made, or a run's outputs could not be prepared there.
    #[error("object storage")]
    Store(#[source] aesthete_store::Error),
    /// Two input shards would write outputs of the same name.
    #[error("input shards {first} and {second} would both write {name} in the output directory")]
    OutputNameClash {
        /// Output name both map to.
        name: String,
        /// One input shard.
        first: aesthete_store::Location,
        /// The other.
        second: aesthete_store::Location,
    },
    /// A model file is missing or unreadable.
    #[error(
        "{what} not found at {path}; run `cargo xtask fetch-models` or pass --models, --clip and --head"
    )]
    ModelMissing {
        /// Which model.
        what: &'static str,
        /// Where it was looked for.
        path: PathBuf,
    },
    /// A model file could not be read for the fingerprint completion records hold.
    #[error("reading model file {path}")]
    ModelRead {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// No model directory was given and none of the default ones holds the models.
    #[error(
        "no models found (looked in {}); run `cargo xtask fetch-models` to download them into the first, or pass --models DIR, or --clip DIR and --head FILE",
        display_paths(tried)
    )]
    ModelsNotFound {
        /// The directories looked in, in order.
        tried: Vec<PathBuf>,
    },
    /// The CLIP model failed to load or run.
    #[error("clip model")]
    Clip(#[from] aesthete_clip::Error),
    /// The aesthetic head failed to load or run.
    #[error("aesthetic head")]
    Head(#[from] aesthete_head::Error),
    /// The preprocessing configuration is unusable.
    #[error("preprocessing configuration")]
    Preprocess(#[from] aesthete_preprocess::Error),
    /// The CLIP model and the head disagree on the embedding size.
    #[error("the clip model makes {clip}-d embeddings but the aesthetic head expects {head}-d")]
    DimensionMismatch {
        /// CLIP's projection size.
        clip: usize,
        /// The head's input size.
        head: usize,
    },
    /// The preprocessing crop size differs from the size the CLIP model was trained on.
    #[error("preprocessing makes {preprocess}px images but the clip model takes {clip}px")]
    ImageSizeMismatch {
        /// Crop size from the preprocessor config.
        preprocess: usize,
        /// CLIP's image size.
        clip: usize,
    },
    /// The output directory holds results made with other settings.
    #[error(
        "{path} was made with other settings ({difference}); pass --overwrite to redo it or choose another output directory"
    )]
    SettingsChanged {
        /// The completion record.
        path: PathBuf,
        /// What differs.
        difference: String,
    },
    /// This worker's count of workers is not the one the run's completion records hold: run
    /// this way, some shards would belong to no worker.
    #[error(
        "{path} was written by a run split across {recorded} workers, but this worker is one of {now}; pass --num-shards {recorded} (every worker of a run, and every resubmission, needs the same count)"
    )]
    WorkersChanged {
        /// A completion record of the run.
        path: PathBuf,
        /// The count it holds.
        recorded: usize,
        /// This worker's count.
        now: usize,
    },
    /// A completion record was written by a newer aesthete, in a record version this one does
    /// not know; it is not guessed at.
    #[error(
        "{path} is a completion record of version {version}, newer than this aesthete reads (up to {supported}); use a newer aesthete, or pass --overwrite to redo the shard"
    )]
    RecordVersion {
        /// The completion record.
        path: PathBuf,
        /// Its `record_version`.
        version: u64,
        /// The newest version this build reads.
        supported: u32,
    },
    /// The output directory cannot be created or written.
    #[error("output directory {path}")]
    Output {
        /// The path that failed.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A score table cannot be read (missing, not Parquet, a column missing or of another
    /// type).
    #[error("score table {path}: {reason}")]
    Table {
        /// The table.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A model call failed on a batch; the run stops because every later batch would too.
    #[error("scoring a batch of {images} images from {shard}")]
    Inference {
        /// Number of images in the batch.
        images: usize,
        /// First shard of the batch.
        shard: aesthete_store::Location,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The decode threads could not be started (the system refused new threads).
    #[error("cannot start {threads} decode threads")]
    ThreadPool {
        /// Threads asked for.
        threads: usize,
        /// The cause.
        #[source]
        source: rayon::ThreadPoolBuildError,
    },
    /// A pipeline thread died.
    #[error("pipeline stage `{0}` stopped unexpectedly")]
    StageDied(&'static str),
}

fn display_paths(paths: &[PathBuf]) -> String {
    let shown: Vec<_> = paths.iter().map(|p| p.display().to_string()).collect();
    if shown.is_empty() {
        "nowhere: neither AESTHETE_MODELS nor HOME is set".into()
    } else {
        shown.join(", ")
    }
}
