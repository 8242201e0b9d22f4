use std::path::PathBuf;
use std::time::Duration;

/// Receives a run's progress; the CLI draws a bar or logs from it. Every method has an empty
/// default, and calls come from pipeline threads, so implementations must be cheap.
pub trait Progress: Send + Sync {
    /// The run is planned: `todo` shards to process, `skipped` already complete.
    fn started(&self, todo: usize, skipped: usize) {
        let _ = (todo, skipped);
    }
    /// A batch went through the model: `images` scored, `failed` samples recorded as errors.
    fn batch_scored(&self, images: usize, failed: usize) {
        let _ = (images, failed);
    }
    /// A shard's outputs are in place (or it failed).
    fn shard_finished(&self, report: &ShardReport) {
        let _ = report;
    }
}

/// A [`Progress`] that ignores everything.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl Progress for NoProgress {}

/// What happened to one input shard.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ShardReport {
    /// The input shard.
    pub input: aesthete_store::Location,
    /// Samples read from it (rows of its table).
    pub samples: u64,
    /// Samples kept.
    pub kept: u64,
    /// Samples recorded with an error.
    pub failed: u64,
    /// Why the shard's outputs are not whole; what was salvaged is in them.
    pub error: Option<ShardError>,
}

/// Why a shard's outputs are not whole. The run goes on with the other shards; a rerun tries
/// this one again.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ShardError {
    /// The input could not be read whole (missing, cut off, a corrupt header, or changed since
    /// it was scored); the samples before the fault are in the outputs.
    Input(String),
    /// An output could not be written.
    Output {
        /// The output.
        path: PathBuf,
        /// Why, with its causes.
        reason: String,
    },
}

impl std::fmt::Display for ShardError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ShardError::Input(reason) => f.write_str(reason),
            ShardError::Output { path, reason } => {
                write!(f, "writing {}: {reason}", path.display())
            }
        }
    }
}

/// The outcome of a run.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct RunSummary {
    /// Shards of this worker.
    pub shards: usize,
    /// Shards skipped because their outputs were already complete.
    pub skipped: usize,
    /// Shards processed in this run (including failed ones).
    pub processed: usize,
    /// Shards that could not be read whole, with the reason.
    pub failed_shards: Vec<ShardReport>,
    /// Samples read in this run.
    pub samples: u64,
    /// Images that went through the model in this run.
    pub images: u64,
    /// Samples kept in this run.
    pub kept: u64,
    /// Samples recorded with an error in this run.
    pub failed_samples: u64,
    /// Wall time of the run.
    pub elapsed: Duration,
}

impl RunSummary {
    /// Images scored per second of wall time.
    pub fn images_per_second(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 { self.images as f64 / secs } else { 0.0 }
    }

    /// Whether every shard was read whole.
    pub fn is_success(&self) -> bool {
        self.failed_shards.is_empty()
    }
}
