//! `aesthete rescore`: aesthetic scores from stored CLIP embeddings, with no image decoded and
//! no encoder run.
//!
//! Each input file (an aesthete table with embeddings, clip-retrieval's `img_emb_N.npy`, a
//! `.npy` with its key list, an `.npz`; see `source`) is read a batch of rows at a time; each
//! row is L2-normalized, whatever the source, and scored by the head; the file's table
//! (`NAME.parquet`, the same columns as `aesthete score` writes) and completion record
//! (`NAME.done.json`) appear atomically in the output directory. Files are spread over worker
//! threads; a rerun skips complete files.
mod float_lists;
mod hybrid;
mod npy;
mod source;

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use aesthete_head::{AestheticHead, RowProblem};
use aesthete_store::Location;

use crate::done::{OutputsSetting, SelectionSetting, Settings};
use crate::inputs::{DirFiles, expand_files};
use crate::outputs::{Keep, ShardOutput, Target, Totals};
use crate::plan::{self, Scope, ShardJob};
use crate::record::{SampleError, SampleResult};
use crate::{Error, Partition, Progress, RunSummary, ShardError, ShardReport};

use source::{Batch, Source};

/// The settings of a rescore run, validated.
///
/// ```
/// use aesthete_pipeline::{Partition, RescoreConfig};
///
/// let config = RescoreConfig::new(["embeddings/img_emb/img_emb_{0..9}.npy"], "scores")?
///     .threshold(5.0)?
///     .key_column("url")?
///     .partition(Partition::new(0, 2)?);
/// assert_eq!(config.output_dir(), std::path::Path::new("scores"));
/// # Ok::<(), aesthete_pipeline::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct RescoreConfig {
    inputs: Vec<String>,
    output_dir: PathBuf,
    threshold: f32,
    batch_size: usize,
    partition: Partition,
    overwrite: bool,
    key_column: String,
    threads: usize,
}

impl RescoreConfig {
    /// A run over `inputs` (files, globs, brace patterns or list files, as
    /// [`aesthete_shards::expand_inputs`] reads them, or directories: every `.parquet`,
    /// `.npy` and `.npz` in one, and `img_emb/*.npy` in a clip-retrieval output folder),
    /// writing into `output_dir`.
    pub fn new<S: Into<String>>(
        inputs: impl IntoIterator<Item = S>,
        output_dir: impl Into<PathBuf>,
    ) -> Result<Self, Error> {
        let inputs: Vec<String> = inputs.into_iter().map(Into::into).collect();
        if inputs.is_empty() {
            return Err(Error::Config("no input files given".into()));
        }
        Ok(RescoreConfig {
            inputs,
            output_dir: output_dir.into(),
            // NeMo Curator's default, as `aesthete score`'s.
            threshold: 0.5,
            batch_size: 8192,
            partition: Partition::whole(),
            overwrite: false,
            key_column: "key".into(),
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        })
    }

    /// Keep (`kept` true) rows scoring at least `threshold`; default 0.5, as `aesthete score`.
    pub fn threshold(mut self, threshold: f32) -> Result<Self, Error> {
        if !threshold.is_finite() {
            return Err(Error::Config(format!("threshold {threshold} is not a finite number")));
        }
        self.threshold = threshold;
        Ok(self)
    }

    /// Rows written to the output table at a time (default 8192), and read and scored at a
    /// time up to 1024; memory per worker thread is about this many rows.
    pub fn batch_size(mut self, rows: usize) -> Result<Self, Error> {
        if rows == 0 {
            return Err(Error::Config("batch size must be at least 1".into()));
        }
        self.batch_size = rows;
        Ok(self)
    }

    /// This worker's part of a run split across machines (file `j` of the sorted list goes to
    /// worker `j % count`).
    pub fn partition(mut self, partition: Partition) -> Self {
        self.partition = partition;
        self
    }

    /// Redo files whose outputs are already complete.
    pub fn overwrite(mut self, overwrite: bool) -> Self {
        self.overwrite = overwrite;
        self
    }

    /// The column of clip-retrieval's `metadata_N.parquet` that holds the keys (default
    /// `key`).
    pub fn key_column(mut self, column: impl Into<String>) -> Result<Self, Error> {
        let column = column.into();
        if column.is_empty() {
            return Err(Error::Config("the key column name is empty".into()));
        }
        self.key_column = column;
        Ok(self)
    }

    /// Files scored at once, one per thread (default: the number of cores).
    pub fn threads(mut self, threads: usize) -> Self {
        self.threads = threads.max(1);
        self
    }

    /// The directory outputs go to.
    pub fn output_dir(&self) -> &Path {
        &self.output_dir
    }

    fn settings(&self) -> Settings {
        Settings {
            outputs: OutputsSetting::Rescore,
            selection: SelectionSetting::Threshold { threshold: self.threshold },
            save_embeddings: false,
            preprocess: None,
            key_column: Some(self.key_column.clone()),
            workers: crate::done::workers_of(self.partition),
            model: None,
        }
    }
}

/// Scores the stored embeddings that `config` names with `head` and writes one table per
/// input file. A row that cannot be scored (wrong width, a non-finite value, zero norm, no
/// embedding) is recorded with its error; a file that cannot be read (another embedding
/// width than the head's, no keys, an unsupported dtype) is reported in the summary, naming
/// it, and the other files go on.
pub fn rescore(
    config: &RescoreConfig,
    head: &AestheticHead,
    progress: &dyn Progress,
) -> Result<RunSummary, Error> {
    let started = Instant::now();
    let target = Target {
        dir: config.output_dir.clone(),
        tar: false,
        keep: Keep::AtLeast(config.threshold),
        settings: config.settings(),
        embedding_dim: None,
        stream_rows: Some(config.batch_size),
        publish: None,
    };
    let inputs = expand(&config.inputs)?.into_iter().map(Location::Local).collect();
    let scope = Scope { partition: config.partition, overwrite: config.overwrite };
    let plan = plan::plan_paths(inputs, scope, output_name, &target.dir, &target.settings, None)?;
    tracing::info!(
        todo = plan.todo.len(),
        skipped = plan.done.len(),
        run_files = plan.total_in_run,
        worker = config.partition.index(),
        workers = config.partition.count(),
        "planned rescore"
    );
    progress.started(plan.todo.len(), plan.done.len());

    let next = AtomicUsize::new(0);
    let totals = Mutex::new(Totals::default());
    let first_error: Mutex<Option<Error>> = Mutex::new(None);
    let threads = config.threads.min(plan.todo.len()).max(1);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                let mut work = Work::new(head.input_dim());
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    let Some(job) = plan.todo.get(index) else { break };
                    match rescore_file(config, head, &target, job, progress, &mut work) {
                        Ok((report, scored)) => {
                            totals.lock().expect("totals").add(&report, scored);
                            progress.shard_finished(&report);
                        }
                        Err(e) => {
                            first_error.lock().expect("error").get_or_insert(e);
                            // Stop handing out files: every later batch would fail the same way.
                            next.store(plan.todo.len(), Ordering::Relaxed);
                            break;
                        }
                    }
                }
            });
        }
    });
    if let Some(error) = first_error.into_inner().expect("error") {
        return Err(error);
    }
    let mut summary = RunSummary {
        shards: plan.todo.len() + plan.done.len(),
        skipped: plan.done.len(),
        ..RunSummary::default()
    };
    totals.into_inner().expect("totals").add_to(&mut summary);
    summary.failed_shards.sort_by(|a, b| a.input.cmp(&b.input));
    summary.elapsed = started.elapsed();
    Ok(summary)
}

/// Buffers a worker thread reuses from batch to batch and file to file.
struct Work {
    batch: Batch,
    /// The batch's scores, or why a row has none.
    scores: Vec<Result<f32, RowProblem>>,
}

impl Work {
    fn new(dim: usize) -> Self {
        Work { batch: Batch::new(dim), scores: Vec::new() }
    }
}

/// Scores one file into its outputs; returns its report and how many rows it scored.
fn rescore_file(
    config: &RescoreConfig,
    head: &AestheticHead,
    target: &Target,
    job: &ShardJob,
    progress: &dyn Progress,
    work: &mut Work,
) -> Result<(ShardReport, u64), Error> {
    let _span = tracing::debug_span!("rescore", file = %job.input).entered();
    let path = local_input(job);
    let mut source =
        match Source::open(path, head.input_dim(), &config.key_column, rows_per_read(config)) {
            Ok(source) => source,
            Err(reason) => {
                // Refused whole: nothing is written, and a rerun tries it again.
                tracing::warn!(file = %job.input, error = %reason, "file refused");
                let error = ShardError::Input(reason);
                let report = ShardReport {
                    input: job.input.clone(),
                    samples: 0,
                    kept: 0,
                    failed: 0,
                    error: Some(error),
                };
                return Ok((report, 0));
            }
        };
    let mut out = ShardOutput::open(target, job);
    let mut read_error = None;
    let Work { batch, scores } = work;
    loop {
        batch.clear();
        match source.read(batch, rows_per_read(config)) {
            Ok(0) => break,
            Ok(_) => {}
            Err(reason) => {
                read_error = Some(ShardError::Input(reason));
                break;
            }
        }
        head.score_rows(&batch.values, scores).map_err(|e| Error::Inference {
            images: batch.len(),
            shard: job.input.clone(),
            source: Box::new(e),
        })?;
        let mut failed = 0;
        for (row, scored) in scores.iter().enumerate() {
            let info = &mut batch.rows[row];
            let result = settle(info.size, info.problem.take(), *scored);
            if result.score().is_none() {
                failed += 1;
            }
            out.push_row(target, batch.key(row), &result);
        }
        progress.batch_scored(batch.len() - failed, failed);
    }
    Ok(out.finish(target, job, read_error))
}

/// Most rows read and scored at a time, whatever the batch size: 1024 rows of 768 `f32` are
/// 3 MiB, which stay in cache from the decoder to the head, where 8192 rows (25 MiB) went to
/// memory and back, and were allocated and page-faulted anew for every batch.
const MAX_ROWS_PER_READ: usize = 1024;

fn rows_per_read(config: &RescoreConfig) -> usize {
    config.batch_size.min(MAX_ROWS_PER_READ)
}

/// A row's result: the `problem` its source found, else its score or why it has none.
fn settle(
    size: Option<(u32, u32)>,
    problem: Option<String>,
    scored: Result<f32, RowProblem>,
) -> SampleResult {
    let problem = match (problem, scored) {
        (Some(problem), _) => problem,
        (None, Ok(score)) => return SampleResult::Scored { size, score, embedding: None },
        (None, Err(RowProblem::ZeroNorm)) => "embedding has zero norm".into(),
        (None, Err(_)) => "embedding has values that are not finite".into(),
    };
    SampleResult::Failed { size, error: SampleError::Recorded(problem) }
}

/// Every input file: [`aesthete_shards::expand_inputs`], with directories read as embedding
/// folders (a clip-retrieval output folder gives its `img_emb/*.npy`, any other directory
/// its `.parquet`, `.npy` and `.npz` files).
fn expand(inputs: &[String]) -> Result<Vec<PathBuf>, Error> {
    let folder = |dir: &Path| {
        if dir.join("img_emb").is_dir() { dir.join("img_emb") } else { dir.to_path_buf() }
    };
    expand_files(inputs, &DirFiles { extensions: &["parquet", "npy", "npz"], folder })
}

/// The file a rescore job reads: rescore takes local inputs only (its planning wraps them).
fn local_input(job: &ShardJob) -> &Path {
    job.input.as_local().expect("rescore plans local files only")
}

/// `dir/img_emb_0.npy` → `img_emb_0`; `scores/shard-000.parquet` → `shard-000`.
fn output_name(input: &Location) -> String {
    let file = input.file_name().map(|name| name.into_owned()).unwrap_or_default();
    let lower = file.to_ascii_lowercase();
    for suffix in [".parquet", ".npy", ".npz"] {
        if lower.ends_with(suffix) && lower.len() > suffix.len() {
            return file[..file.len() - suffix.len()].to_string();
        }
    }
    file
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_names_drop_embedding_suffixes() {
        assert_eq!(output_name(&Location::parse("a/img_emb/img_emb_3.npy")), "img_emb_3");
        assert_eq!(output_name(&Location::parse("s/shard-000.parquet")), "shard-000");
        assert_eq!(output_name(&Location::parse("x.NPZ")), "x");
    }

    #[test]
    fn clip_retrieval_metadata_sits_beside_img_emb() {
        assert_eq!(
            source::clip_retrieval_metadata(Path::new("out/img_emb/img_emb_12.npy")),
            Some(PathBuf::from("out/metadata/metadata_12.parquet"))
        );
        assert_eq!(source::clip_retrieval_metadata(Path::new("out/emb/img_emb_12.npy")), None);
    }

    /// Raw and normalized rows score the same; bad rows get their problem, and a problem the
    /// source found wins over the score.
    #[test]
    fn rows_are_checked_normalized_and_scored() {
        let head_path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../fixtures/head/tiny-linear.safetensors");
        let head = AestheticHead::load(&head_path).unwrap();
        let dim = head.input_dim();
        let row: Vec<f32> = (0..dim).map(|i| (i as f32 * 0.37).sin()).collect();
        let scaled: Vec<f32> = row.iter().map(|v| v * 40.0).collect();
        let mut nan = row.clone();
        nan[1] = f32::NAN;
        let values = [row.clone(), vec![0.0; dim], scaled, nan].concat();
        let mut scores = Vec::new();
        head.score_rows(&values, &mut scores).unwrap();
        let results: Vec<SampleResult> =
            scores.iter().map(|scored| settle(None, None, *scored)).collect();
        let (a, b) = (results[0].score().unwrap(), results[2].score().unwrap());
        assert!((a - b).abs() <= 1e-6, "{a} vs {b}");
        let error = |r: &SampleResult| match r {
            SampleResult::Failed { error, .. } => error.to_string(),
            SampleResult::Scored { .. } => panic!("scored"),
        };
        assert_eq!(error(&results[1]), "embedding has zero norm");
        assert!(error(&results[3]).contains("not finite"));
        let recorded = settle(Some((1, 2)), Some("a.jpg: corrupt".into()), scores[0]);
        assert_eq!(error(&recorded), "a.jpg: corrupt");
    }
}
