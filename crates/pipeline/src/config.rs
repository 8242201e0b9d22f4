use std::path::PathBuf;
use std::sync::Arc;

use aesthete_preprocess::PreprocessOptions;
use aesthete_shards::ReadOptions;
use aesthete_store::{Location, Stores};

use crate::Error;

/// Which samples a run keeps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Selection {
    /// Keep samples whose score is at least this value (the reference's rule: `score >= t`).
    Threshold(f32),
    /// Keep the best fraction of all samples scored in the run (DataComp style). Ties at the
    /// cut are all kept, so slightly more than the fraction may pass.
    KeepTop(f32),
}

impl Default for Selection {
    /// NeMo Curator's `ImageAestheticFilterStage` default: `score >= 0.5`, which keeps nearly
    /// every real image (they score about 4 to 7).
    fn default() -> Self {
        Selection::Threshold(0.5)
    }
}

/// What a run writes for each input shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Outputs {
    /// `NAME.tar` with the kept samples and `NAME.parquet` with every sample's score.
    #[default]
    FilterAndScore,
    /// Only `NAME.parquet`.
    ScoresOnly,
}

/// This worker's part of a run split across machines: shard `j` of the sorted list belongs to
/// worker `j % count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partition {
    index: usize,
    count: usize,
}

impl Partition {
    /// Worker `index` of `count`.
    pub fn new(index: usize, count: usize) -> Result<Self, Error> {
        if count == 0 || index >= count {
            return Err(Error::Config(format!(
                "shard index {index} is outside 0..{count} (the number of workers)"
            )));
        }
        Ok(Partition { index, count })
    }

    /// The whole run on one worker.
    pub fn whole() -> Self {
        Partition { index: 0, count: 1 }
    }

    /// This worker's index.
    pub fn index(&self) -> usize {
        self.index
    }

    /// Number of workers.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Whether shard number `position` in the sorted list is this worker's.
    pub fn owns(&self, position: usize) -> bool {
        position % self.count == self.index
    }
}

impl Default for Partition {
    fn default() -> Self {
        Partition::whole()
    }
}

/// A validated description of one run; built by the CLI or by a library user.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub(crate) inputs: Vec<String>,
    pub(crate) output_dir: Location,
    /// Where outputs bound for an object store are written first (default: the system's
    /// temporary directory).
    pub(crate) staging: Option<PathBuf>,
    pub(crate) stores: Option<Arc<Stores>>,
    pub(crate) outputs: Outputs,
    pub(crate) selection: Selection,
    pub(crate) batch_size: usize,
    pub(crate) partition: Partition,
    pub(crate) overwrite: bool,
    pub(crate) save_embeddings: bool,
    pub(crate) decode_threads: usize,
    pub(crate) preprocess: PreprocessOptions,
    pub(crate) read: ReadOptions,
}

impl RunConfig {
    /// A run over `inputs` (shard files, directories, globs, brace patterns or list files, as
    /// [`aesthete_shards::expand_inputs`] reads them, and object-store URLs as
    /// [`Stores::expand`] reads them) writing into `output_dir` (a directory, or an
    /// object-store prefix such as `s3://bucket/out/`).
    pub fn new<S: Into<String>>(
        inputs: impl IntoIterator<Item = S>,
        output_dir: impl Into<Location>,
    ) -> Result<Self, Error> {
        let inputs: Vec<String> = inputs.into_iter().map(Into::into).collect();
        if inputs.is_empty() {
            return Err(Error::Config("no input shards given".into()));
        }
        Ok(RunConfig {
            inputs,
            output_dir: output_dir.into(),
            staging: None,
            stores: None,
            outputs: Outputs::default(),
            selection: Selection::default(),
            batch_size: 32,
            partition: Partition::whole(),
            overwrite: false,
            save_embeddings: false,
            decode_threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            preprocess: PreprocessOptions::default(),
            read: ReadOptions::default(),
        })
    }

    /// What to write per shard.
    pub fn outputs(mut self, outputs: Outputs) -> Self {
        self.outputs = outputs;
        self
    }

    /// Which samples to keep.
    pub fn selection(mut self, selection: Selection) -> Result<Self, Error> {
        match selection {
            Selection::Threshold(t) if !t.is_finite() => {
                return Err(Error::Config(format!("threshold {t} is not a finite number")));
            }
            Selection::KeepTop(f) if !(f > 0.0 && f <= 1.0) => {
                return Err(Error::Config(format!("keep-top fraction {f} is not in (0, 1]")));
            }
            _ => {}
        }
        self.selection = selection;
        Ok(self)
    }

    /// Images per model call (NeMo's `model_inference_batch_size`, default 32). Batches may
    /// span shards.
    pub fn batch_size(mut self, batch_size: usize) -> Result<Self, Error> {
        if batch_size == 0 {
            return Err(Error::Config("batch size must be at least 1".into()));
        }
        self.batch_size = batch_size;
        Ok(self)
    }

    /// This worker's part of a run split across machines.
    pub fn partition(mut self, partition: Partition) -> Self {
        self.partition = partition;
        self
    }

    /// Redo shards whose outputs are already complete.
    pub fn overwrite(mut self, overwrite: bool) -> Self {
        self.overwrite = overwrite;
        self
    }

    /// Store each sample's normalized CLIP embedding in the Parquet table.
    pub fn save_embeddings(mut self, save: bool) -> Self {
        self.save_embeddings = save;
        self
    }

    /// Threads that decode and preprocess images while the model runs.
    pub fn decode_threads(mut self, threads: usize) -> Self {
        self.decode_threads = threads.max(1);
        self
    }

    /// Image decoding and preprocessing options (exact or fast, limits).
    pub fn preprocess_options(mut self, options: PreprocessOptions) -> Self {
        self.preprocess = options;
        self
    }

    /// Shard reading options (member size limit).
    pub fn read_options(mut self, options: ReadOptions) -> Self {
        self.read = options;
        self
    }

    /// The object stores inputs are read from and outputs written to (default: clients
    /// configured from the environment, made when the run starts).
    pub fn stores(mut self, stores: Arc<Stores>) -> Self {
        self.stores = Some(stores);
        self
    }

    /// Where outputs bound for an object store are written before they are uploaded, in a
    /// directory of the run's own (default: the system's temporary directory).
    pub fn staging_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.staging = Some(dir.into());
        self
    }

    /// The directory or object-store prefix outputs go to.
    pub fn output_dir(&self) -> &Location {
        &self.output_dir
    }

    /// This config with its stores made from the environment when none were given.
    pub(crate) fn with_stores(&self) -> Result<RunConfig, Error> {
        let mut config = self.clone();
        if config.stores.is_none() {
            config.stores = Some(Arc::new(Stores::from_env().map_err(Error::Store)?));
        }
        Ok(config)
    }

    /// The stores, once [`RunConfig::with_stores`] made them.
    pub(crate) fn stores_ref(&self) -> &Stores {
        self.stores.as_deref().expect("a run's config has its stores (RunConfig::with_stores)")
    }

    /// [`RunConfig::stores_ref`], shared.
    pub(crate) fn stores_arc(&self) -> Arc<Stores> {
        self.stores.clone().expect("a run's config has its stores (RunConfig::with_stores)")
    }
}
