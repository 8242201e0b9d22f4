//! Command-line flags, parsed raw by clap and then validated into the pipeline's config.
use std::path::PathBuf;

use aesthete_clip::{DType, Device};
use aesthete_pipeline::{
    HEAD_FILE_NAME, ModelPaths, Outputs, Partition, ReportConfig, RescoreConfig, RunConfig,
    Selection,
};
use aesthete_preprocess::{Mode, PreprocessOptions};
use aesthete_shards::ReadOptions;
use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};

/// Score and filter WebDataset image shards by aesthetic quality (CLIP ViT-L/14 + the LAION
/// improved aesthetic predictor).
#[derive(Debug, Parser)]
#[command(name = "aesthete", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// More log output (-v: debug, -vv: trace).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Only warnings and errors; no progress bar.
    #[arg(short, long, global = true)]
    pub quiet: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Score every sample and write the kept ones into new shards, with a Parquet table of
    /// scores per shard.
    Filter(FilterArgs),
    /// Score every sample and write only the Parquet tables (`kept` says whether the sample
    /// passes the selection).
    Score(FilterArgs),
    /// Score stored CLIP embeddings with the aesthetic head, without images or the encoder:
    /// aesthete tables written with --save-embeddings, clip-retrieval's img_emb/*.npy with
    /// metadata/*.parquet, .npy files with NAME.keys.txt, .npz files with `keys`. Writes the
    /// same NAME.parquet tables as `aesthete score`.
    Rescore(RescoreArgs),
    /// Look before choosing a threshold: one self-contained HTML page from score tables, with
    /// the score histogram against LAION-2B's reference shares, the samples kept at each
    /// threshold, sample pictures per score bucket (with --shards) and failures by kind.
    Report(ReportArgs),
    /// Preprocessed pixels from a file in, embeddings out, with an optional timing loop; for
    /// the GPU device check.
    #[command(hide = true)]
    EmbedRaw(crate::embed_raw::EmbedRawArgs),
    /// Writes a CLIP ViT-L/14 vision tower with random weights (config.json,
    /// model.safetensors) into DIR; for the GPU device check, where no weights can be fetched.
    #[command(hide = true)]
    WriteRandomModel {
        /// The directory to write.
        dir: std::path::PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct FilterArgs {
    #[command(flatten)]
    pub run: RunArgs,
    /// Keep samples scoring at least this (1–10 scale; real images score about 4 to 7, so the
    /// reference default 0.5 keeps nearly everything; 5 keeps about a quarter of LAION).
    #[arg(long, default_value_t = 0.5, conflicts_with = "keep_top")]
    pub threshold: f32,
    /// Instead of a threshold, keep this fraction of the best samples over the whole run
    /// (0 < FRACTION <= 1).
    #[arg(long, value_name = "FRACTION")]
    pub keep_top: Option<f32>,
    /// Take the scores from the tables an earlier `score` or `filter` run over the same
    /// shards wrote into DIR (DIR/NAME.parquet for NAME.tar) instead of running the models:
    /// a new --threshold or --keep-top at the speed of copying the tars, with the same outputs
    /// as a fresh run. No model is loaded. A shard whose table is missing or holds other
    /// samples fails. DIR may not be the output directory.
    #[arg(long, value_name = "DIR")]
    pub scores: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Input shards: files, directories, globs, brace ranges (`data-{000000..000099}.tar`),
    /// list files (@FILE) of paths or URLs, or object-store URLs (s3://, gs://, az://,
    /// https://) with the same patterns; credentials from AWS_*, GOOGLE_*, AZURE_*.
    #[arg(required = true, value_name = "INPUT")]
    pub inputs: Vec<String>,
    /// Directory for the outputs (NAME.tar, NAME.parquet, NAME.done.json per input shard), or
    /// an object-store prefix (s3://bucket/out/, gs://, az://).
    #[arg(short, long, value_name = "DIR")]
    pub output: String,
    /// Where outputs bound for an object store are written before they are uploaded (default:
    /// the system's temporary directory); room for a few shards' outputs.
    #[arg(long, value_name = "DIR")]
    pub staging_dir: Option<PathBuf>,
    /// Images per model call.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Store each sample's normalized CLIP embedding in the Parquet table.
    #[arg(long)]
    pub save_embeddings: bool,
    /// Redo shards whose outputs are already complete.
    #[arg(long)]
    pub overwrite: bool,
    #[command(flatten)]
    pub workers: WorkerArgs,
    /// Model directory filled by `cargo xtask fetch-models` (default: $AESTHETE_MODELS, else
    /// the first of ~/.local/share/aesthete/models ($XDG_DATA_HOME) and aesthete/models in
    /// $XDG_DATA_DIRS that holds the models).
    #[arg(long, env = "AESTHETE_MODELS", value_name = "DIR")]
    pub models: Option<PathBuf>,
    /// CLIP model directory (Hugging Face layout); overrides --models.
    #[arg(long, value_name = "DIR", requires = "head")]
    pub clip: Option<PathBuf>,
    /// Aesthetic head file (.safetensors or .pth); overrides --models.
    #[arg(long, value_name = "FILE", requires = "clip")]
    pub head: Option<PathBuf>,
    /// Device for the CLIP model: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Model precision: f32; bf16 on GPU and on CPUs with AMX-BF16 or AVX512-BF16; f16 on GPU.
    #[arg(long, value_enum, default_value_t = DTypeArg::F32)]
    pub dtype: DTypeArg,
    /// Image preprocessing: exact (bit-exact with transformers' CLIPImageProcessor) or fast.
    #[arg(long, value_enum, default_value_t = ModeArg::Exact)]
    pub preprocess: ModeArg,
    /// Threads decoding images while the model runs (default: all cores).
    #[arg(long, value_name = "N")]
    pub decode_threads: Option<usize>,
    /// Largest tar member read into memory, in MiB; larger ones fail their sample.
    #[arg(long, default_value_t = 256, value_name = "MIB")]
    pub max_member_mib: u64,
}

#[derive(Debug, Args)]
pub struct RescoreArgs {
    /// Embedding files (.parquet, .npy, .npz), directories (a clip-retrieval output folder
    /// gives its img_emb/*.npy), globs, brace ranges or list files of paths.
    #[arg(required = true, value_name = "INPUT")]
    pub inputs: Vec<String>,
    /// Directory for the outputs (NAME.parquet, NAME.done.json per input file).
    #[arg(short, long, value_name = "DIR")]
    pub output: PathBuf,
    /// `kept` is true for rows scoring at least this (1–10 scale).
    #[arg(long, default_value_t = 0.5)]
    pub threshold: f32,
    /// Aesthetic head file (.safetensors or .pth); overrides --models.
    #[arg(long, value_name = "FILE")]
    pub head: Option<PathBuf>,
    /// Model directory filled by `cargo xtask fetch-models`; only its head is read (default:
    /// $AESTHETE_MODELS, else the usual model directories, as for `score`).
    #[arg(long, env = "AESTHETE_MODELS", value_name = "DIR")]
    pub models: Option<PathBuf>,
    /// Column of clip-retrieval's metadata_N.parquet holding the keys.
    #[arg(long, default_value = "key", value_name = "NAME")]
    pub key_column: String,
    /// Rows written to each output table at a time, per thread (read and scored up to 1024
    /// at a time).
    #[arg(long, default_value_t = 8192, value_name = "ROWS")]
    pub batch_size: usize,
    /// Files scored at once (default: all cores).
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Redo files whose outputs are already complete.
    #[arg(long)]
    pub overwrite: bool,
    #[command(flatten)]
    pub workers: WorkerArgs,
}

/// A rescore run, validated.
pub struct RescorePlan {
    pub config: RescoreConfig,
    pub head: PathBuf,
}

impl RescoreArgs {
    pub fn into_plan(self, env: &WorkerEnv) -> anyhow::Result<RescorePlan> {
        let partition = partition(self.workers.shard_index, self.workers.num_shards, env)?;
        let mut config = RescoreConfig::new(self.inputs, self.output)?
            .threshold(self.threshold)?
            .batch_size(self.batch_size)?
            .key_column(self.key_column)?
            .partition(partition)
            .overwrite(self.overwrite);
        if let Some(threads) = self.threads {
            config = config.threads(threads);
        }
        let head = match (self.head, self.models) {
            (Some(head), _) => head,
            (None, Some(dir)) => ModelPaths::in_dir(&dir).head_file,
            (None, None) => {
                let tried = aesthete_pipeline::default_model_dirs(|name| std::env::var_os(name));
                let found = tried.iter().map(|d| d.join(HEAD_FILE_NAME)).find(|f| f.is_file());
                found.with_context(|| {
                    let tried: Vec<_> = tried.iter().map(|d| d.display().to_string()).collect();
                    format!(
                        "no aesthetic head found (looked for {HEAD_FILE_NAME} in {}); pass --head FILE or --models DIR, or run `cargo xtask fetch-models`",
                        tried.join(", ")
                    )
                })?
            }
        };
        Ok(RescorePlan { config, head })
    }
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Score tables (NAME.parquet, as score, filter and rescore write them): files,
    /// directories (every .parquet in one), globs, brace ranges or list files of paths.
    #[arg(required = true, value_name = "TABLE")]
    pub tables: Vec<String>,
    /// The shards the tables were made from, for pictures: NAME.parquet is matched with
    /// NAME.tar or NAME.tar.gz. Files, directories, globs, brace ranges or list files; takes
    /// values up to the next flag.
    #[arg(long, num_args = 1.., value_name = "SHARD")]
    pub shards: Vec<String>,
    /// The HTML file to write.
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,
    /// Samples shown per score bucket (at most 100).
    #[arg(long, default_value_t = 12, value_name = "N")]
    pub thumbnails_per_bucket: usize,
    /// Largest side of a thumbnail, in pixels (16 to 512).
    #[arg(long, default_value_t = 160, value_name = "PIXELS")]
    pub thumbnail_size: u32,
    /// Also show the share kept at this threshold (repeatable); every half point from 3 to 8
    /// is always shown.
    #[arg(long = "threshold", value_name = "T")]
    pub thresholds: Vec<f32>,
}

impl TryFrom<ReportArgs> for ReportConfig {
    type Error = anyhow::Error;

    fn try_from(args: ReportArgs) -> anyhow::Result<ReportConfig> {
        Ok(ReportConfig::new(args.tables, args.output)?
            .shards(args.shards)
            .thumbnails_per_bucket(args.thumbnails_per_bucket)?
            .thumbnail_size(args.thumbnail_size)?
            .thresholds(args.thresholds)?)
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum DTypeArg {
    F32,
    F16,
    Bf16,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ModeArg {
    Exact,
    Fast,
}

/// How a run is split across machines: `filter`, `score` and `rescore` share these flags.
#[derive(Debug, Clone, Copy, Args)]
pub struct WorkerArgs {
    /// This worker's index when a run is split across machines (default: from
    /// SLURM_ARRAY_TASK_ID or JOB_COMPLETION_INDEX).
    #[arg(long, value_name = "I", requires = "num_shards")]
    pub shard_index: Option<usize>,
    /// Number of workers the run is split across; every worker of a run, resubmitted or not,
    /// needs the same (default: the size of a whole Slurm array, --array=0-N; required with
    /// JOB_COMPLETION_INDEX and with a partial or stepped Slurm array).
    #[arg(long, value_name = "N")]
    pub num_shards: Option<usize>,
}

/// Everything a run needs, validated.
pub struct RunPlan {
    pub config: RunConfig,
    pub scores: ScoreSource,
}

/// Where a run's scores come from.
pub enum ScoreSource {
    /// The models, run on the images.
    Models { paths: ModelPaths, device: Device, dtype: DType },
    /// The tables of an earlier run, in this directory (`--scores`).
    Tables(PathBuf),
}

/// Environment variables that choose a worker's part of a run.
pub struct WorkerEnv {
    pub slurm_task_id: Option<String>,
    pub slurm_task_min: Option<String>,
    pub slurm_task_max: Option<String>,
    pub slurm_task_count: Option<String>,
    pub job_completion_index: Option<String>,
}

impl WorkerEnv {
    pub fn from_process() -> Self {
        let var = |name| std::env::var(name).ok().filter(|v| !v.is_empty());
        WorkerEnv {
            slurm_task_id: var("SLURM_ARRAY_TASK_ID"),
            slurm_task_min: var("SLURM_ARRAY_TASK_MIN"),
            slurm_task_max: var("SLURM_ARRAY_TASK_MAX"),
            slurm_task_count: var("SLURM_ARRAY_TASK_COUNT"),
            job_completion_index: var("JOB_COMPLETION_INDEX"),
        }
    }
}

impl RunArgs {
    /// The run's plan; with `scores`, from the tables there, and no model is looked for.
    pub fn into_plan(
        self,
        outputs: Outputs,
        selection: Selection,
        scores: Option<PathBuf>,
        env: &WorkerEnv,
    ) -> anyhow::Result<RunPlan> {
        let partition = partition(self.workers.shard_index, self.workers.num_shards, env)?;
        let preprocess = PreprocessOptions::default().mode(match self.preprocess {
            ModeArg::Exact => Mode::Exact,
            ModeArg::Fast => Mode::Fast,
        });
        let read = ReadOptions::default().max_member_size(self.max_member_mib * 1024 * 1024);
        let mut config = RunConfig::new(self.inputs, self.output)?
            .outputs(outputs)
            .selection(selection)?
            .batch_size(self.batch_size)?
            .partition(partition)
            .overwrite(self.overwrite)
            .save_embeddings(self.save_embeddings)
            .preprocess_options(preprocess)
            .read_options(read);
        if let Some(dir) = self.staging_dir {
            config = config.staging_dir(dir);
        }
        if let Some(threads) = self.decode_threads {
            config = config.decode_threads(threads);
        }
        if let Some(dir) = scores {
            return Ok(RunPlan { config, scores: ScoreSource::Tables(dir) });
        }
        let models = match (self.clip, self.head, self.models) {
            (Some(clip_dir), Some(head_file), _) => ModelPaths { clip_dir, head_file },
            (_, _, Some(dir)) => ModelPaths::in_dir(&dir),
            _ => ModelPaths::find_default()?,
        };
        let device = aesthete_clip::parse_device(&self.device)
            .with_context(|| format!("--device {}", self.device))?;
        let dtype: DType = self.dtype.into();
        aesthete_clip::check_dtype(&device, dtype)
            .with_context(|| format!("--dtype {} --device {}", dtype.as_str(), self.device))?;
        Ok(RunPlan { config, scores: ScoreSource::Models { paths: models, device, dtype } })
    }
}

impl From<DTypeArg> for DType {
    fn from(dtype: DTypeArg) -> DType {
        match dtype {
            DTypeArg::F32 => DType::F32,
            DTypeArg::F16 => DType::F16,
            DTypeArg::Bf16 => DType::BF16,
        }
    }
}

impl FilterArgs {
    pub fn into_plan(self, outputs: Outputs, env: &WorkerEnv) -> anyhow::Result<RunPlan> {
        let selection = match self.keep_top {
            Some(fraction) => Selection::KeepTop(fraction),
            None => Selection::Threshold(self.threshold),
        };
        self.run.into_plan(outputs, selection, self.scores, env)
    }
}

/// This worker's part: the flags, else Slurm's array variables, else a Kubernetes Indexed
/// Job's index with `--num-shards`, else the whole run.
///
/// Under Slurm the worker is `SLURM_ARRAY_TASK_ID` itself (arrays numbered from 0, one task per
/// worker) and the count is `--num-shards`, or, without it, the size of the submitted array
/// when that array is whole (`--array=0-N`, so `SLURM_ARRAY_TASK_MIN` is 0 and
/// `SLURM_ARRAY_TASK_COUNT` is `SLURM_ARRAY_TASK_MAX + 1`). A partial or stepped resubmission
/// (`--array=0,2`, `--array=1`, `--array=0-15:4`) does not say how many workers the run has,
/// so it needs `--num-shards`; the count is also written into the completion records, which
/// refuse a worker whose count differs.
fn partition(
    index: Option<usize>,
    count: Option<usize>,
    env: &WorkerEnv,
) -> anyhow::Result<Partition> {
    let parse = |name: &str, value: &str| -> anyhow::Result<usize> {
        value.trim().parse().with_context(|| format!("{name}={value:?} is not a whole number"))
    };
    if let Some(index) = index {
        let count = count.context("--shard-index needs --num-shards")?;
        return Ok(Partition::new(index, count)?);
    }
    if let Some(id) = &env.slurm_task_id {
        let id = parse("SLURM_ARRAY_TASK_ID", id)?;
        let count = match count {
            Some(count) => count,
            None => whole_slurm_array(env, &parse)?,
        };
        if id >= count {
            bail!(
                "SLURM_ARRAY_TASK_ID {id} is not one of the run's {count} workers (0..{count}); number the array's tasks from 0, one per worker (--array=0-{}), or pass the run's --num-shards",
                count - 1
            );
        }
        return Ok(Partition::new(id, count)?);
    }
    if let Some(index) = &env.job_completion_index {
        let index = parse("JOB_COMPLETION_INDEX", index)?;
        let count = count
            .context("JOB_COMPLETION_INDEX is set: pass --num-shards with the Job's completions")?;
        return Ok(Partition::new(index, count)?);
    }
    match count {
        Some(1) | None => Ok(Partition::whole()),
        Some(n) => bail!(
            "--num-shards {n} needs --shard-index (or SLURM_ARRAY_TASK_ID / JOB_COMPLETION_INDEX)"
        ),
    }
}

/// The worker count of a Slurm array submitted whole (`--array=0-N`): `N + 1`.
fn whole_slurm_array(
    env: &WorkerEnv,
    parse: &dyn Fn(&str, &str) -> anyhow::Result<usize>,
) -> anyhow::Result<usize> {
    let var = |name: &str, value: &Option<String>| match value {
        Some(v) => parse(name, v),
        None => bail!("SLURM_ARRAY_TASK_ID is set but not {name}; pass --num-shards"),
    };
    let min = var("SLURM_ARRAY_TASK_MIN", &env.slurm_task_min)?;
    let max = var("SLURM_ARRAY_TASK_MAX", &env.slurm_task_max)?;
    let tasks = var("SLURM_ARRAY_TASK_COUNT", &env.slurm_task_count)?;
    if min != 0 || max.checked_add(1) != Some(tasks) {
        bail!(
            "this Slurm array ({tasks} tasks from {min} to {max}) is not a whole array numbered from 0, so it does not say how many workers the run has; pass --num-shards with the size of the whole array (as when resubmitting some tasks, e.g. --array=0,2)"
        );
    }
    Ok(tasks)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(slurm: Option<(&str, &str)>, k8s: Option<&str>) -> WorkerEnv {
        WorkerEnv {
            slurm_task_id: slurm.map(|s| s.0.to_string()),
            slurm_task_min: slurm.map(|_| "0".to_string()),
            slurm_task_max: slurm
                .map(|s| (s.1.parse::<usize>().unwrap().saturating_sub(1)).to_string()),
            slurm_task_count: slurm.map(|s| s.1.to_string()),
            job_completion_index: k8s.map(str::to_string),
        }
    }

    /// The array variables as Slurm sets them for one task of a submitted array.
    fn slurm(id: usize, submitted: &[usize]) -> WorkerEnv {
        let (min, max) = (submitted.iter().min().unwrap(), submitted.iter().max().unwrap());
        WorkerEnv {
            slurm_task_id: Some(id.to_string()),
            slurm_task_min: Some(min.to_string()),
            slurm_task_max: Some(max.to_string()),
            slurm_task_count: Some(submitted.len().to_string()),
            job_completion_index: None,
        }
    }

    #[test]
    fn flags_win_over_environment() {
        let p = partition(Some(1), Some(4), &env(Some(("3", "8")), Some("2"))).unwrap();
        assert_eq!((p.index(), p.count()), (1, 4));
    }

    #[test]
    fn a_whole_slurm_array_sets_the_partition() {
        for id in 0..3 {
            let p = partition(None, None, &slurm(id, &[0, 1, 2])).unwrap();
            assert_eq!((p.index(), p.count()), (id, 3));
        }
    }

    #[test]
    fn resubmitted_slurm_tasks_keep_the_run_s_partition() {
        // `--array=0,2` and `--array=1` of a 3-worker run, and `--array=0-15:4` of 16: the
        // submission does not say the count, so it must be given, and then the task id is the
        // worker.
        for (id, submitted, count) in
            [(2, &[0, 2][..], 3), (1, &[1][..], 3), (8, &[0, 4, 8, 12][..], 16)]
        {
            let err = partition(None, None, &slurm(id, submitted)).unwrap_err();
            assert!(err.to_string().contains("--num-shards"), "{err}");
            let p = partition(None, Some(count), &slurm(id, submitted)).unwrap();
            assert_eq!((p.index(), p.count()), (id, count));
        }
    }

    #[test]
    fn slurm_arrays_numbered_from_1_are_refused_clearly() {
        // `--array=1-4`: task 4 is not one of 4 workers 0..4.
        let err = partition(None, None, &slurm(4, &[1, 2, 3, 4])).unwrap_err();
        assert!(err.to_string().contains("--num-shards"), "{err}");
        let err = partition(None, Some(4), &slurm(4, &[1, 2, 3, 4])).unwrap_err();
        assert!(err.to_string().contains("number the array's tasks from 0"), "{err}");
    }

    #[test]
    fn kubernetes_index_needs_a_count() {
        let err = partition(None, None, &env(None, Some("2"))).unwrap_err();
        assert!(err.to_string().contains("--num-shards"), "{err}");
        let p = partition(None, Some(5), &env(None, Some("2"))).unwrap();
        assert_eq!((p.index(), p.count()), (2, 5));
    }

    #[test]
    fn out_of_range_index_is_refused() {
        assert!(partition(Some(4), Some(4), &env(None, None)).is_err());
        assert!(partition(None, Some(3), &env(None, None)).is_err());
        assert_eq!(partition(None, None, &env(None, None)).unwrap(), Partition::whole());
    }
}
