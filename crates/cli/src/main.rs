//! The aesthete command line: `aesthete filter`, `aesthete score` and `aesthete rescore` make
//! score tables; `aesthete report TABLES... [--shards SHARDS...] --output report.html` shows
//! them as one self-contained HTML page (histogram against LAION-2B, shares kept per
//! threshold, sample pictures per score bucket, failures by kind) to choose a threshold by.
use std::io::Write;
use std::process::ExitCode;

use aesthete_pipeline::{AestheticHead, Models, Outputs, ReportConfig, ReportSummary, RunSummary};
use anyhow::Context;
use clap::Parser;

mod args;
mod embed_raw;
mod progress;

use args::{Cli, Command, ScoreSource, WorkerEnv};
use progress::TerminalProgress;

// The binary chooses the allocator: the model allocates large short-lived tensors, which
// glibc's malloc maps and unmaps page by page.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose, cli.quiet);
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            if is_broken_pipe(&err) {
                return ExitCode::SUCCESS;
            }
            eprintln!("aesthete: {err:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let env = WorkerEnv::from_process();
    let plan = match cli.command {
        Command::Filter(args) => args.into_plan(Outputs::FilterAndScore, &env)?,
        Command::Score(args) => args.into_plan(Outputs::ScoresOnly, &env)?,
        Command::Rescore(args) => {
            let plan = args.into_plan(&env)?;
            let head = AestheticHead::load(&plan.head)
                .with_context(|| format!("loading the aesthetic head {}", plan.head.display()))?;
            let progress = TerminalProgress::new(!cli.quiet);
            let summary = aesthete_pipeline::rescore(&plan.config, &head, &progress);
            progress.finish();
            let summary = summary?;
            print_summary(&summary, "files", "embeddings")?;
            return Ok(if summary.is_success() { ExitCode::SUCCESS } else { ExitCode::FAILURE });
        }
        Command::Report(args) => {
            let config = ReportConfig::try_from(args)?;
            let summary = aesthete_pipeline::report(&config)?;
            print_report(&summary, &config)?;
            return Ok(ExitCode::SUCCESS);
        }
        Command::EmbedRaw(args) => {
            embed_raw::run(args)?;
            return Ok(ExitCode::SUCCESS);
        }
        Command::WriteRandomModel { dir } => {
            let config = aesthete_clip::ClipVisionConfig::vit_large_patch14();
            aesthete_clip::write_random_model(&dir, &config)
                .with_context(|| format!("writing a random ViT-L/14 into {}", dir.display()))?;
            return Ok(ExitCode::SUCCESS);
        }
    };
    let progress = TerminalProgress::new(!cli.quiet);
    let summary = match &plan.scores {
        ScoreSource::Models { paths, device, dtype } => {
            suggest_bf16(device, *dtype);
            let models = Models::load(paths, device, *dtype).context("loading models")?;
            aesthete_pipeline::run(&plan.config, &models, &progress)
        }
        ScoreSource::Tables(dir) => aesthete_pipeline::refilter(&plan.config, dir, &progress),
    };
    progress.finish();
    let summary = summary?;
    print_summary(&summary, "shards", "images")?;
    Ok(if summary.is_success() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// One line at the start of an f32 run on a CPU that has bf16 matrix instructions, which
/// a user would otherwise not know to ask for: f32 stays the default, for exact parity with
/// transformers.
fn suggest_bf16(device: &aesthete_clip::Device, dtype: aesthete_clip::DType) {
    if *device != aesthete_clip::Device::Cpu || dtype != aesthete_clip::DType::F32 {
        return;
    }
    if let Ok(kernel) = aesthete_clip::cpu_bf16_kernel() {
        // Speeds from BENCHMARKS.md: ViT-L/14 bf16 against f32 at batches 4 and 16 ran 4.4-5.1 x
        // on an AMX Xeon and 1.9-2.7 x on AVX512-BF16 (Zen 5); agreement from the README.
        tracing::info!(
            "this CPU has {kernel}: --dtype bf16 runs the CLIP model 2-5 x faster, with scores \
             within about 0.002 of f32 (the default, which matches transformers to rounding)"
        );
    }
}

/// The run's totals on stderr; `files` and `items` name what the run reads and scores.
fn print_summary(summary: &RunSummary, files: &str, items: &str) -> std::io::Result<()> {
    let mut err = std::io::stderr().lock();
    writeln!(
        err,
        "aesthete: {} {files} ({} already complete, {} processed, {} failed); {} samples, {} kept, {} failed; {:.2} {items}/s",
        summary.shards,
        summary.skipped,
        summary.processed,
        summary.failed_shards.len(),
        summary.samples,
        summary.kept,
        summary.failed_samples,
        summary.images_per_second(),
    )?;
    for failed in &summary.failed_shards {
        match &failed.error {
            Some(error) => {
                writeln!(err, "aesthete: failed {} {}: {error}", singular(files), failed.input)?
            }
            None => writeln!(err, "aesthete: failed {} {}", singular(files), failed.input)?,
        }
    }
    Ok(())
}

/// What the report holds, on stderr.
fn print_report(summary: &ReportSummary, config: &ReportConfig) -> std::io::Result<()> {
    let mut err = std::io::stderr().lock();
    write!(
        err,
        "aesthete: wrote {} ({} KiB): {} tables, {} samples ({} scored, {} failed); {} shown, {} with pictures",
        config.output().display(),
        summary.bytes.div_ceil(1024),
        summary.tables,
        summary.rows,
        summary.scored,
        summary.failed,
        summary.shown,
        summary.thumbnails,
    )?;
    if summary.missing_thumbnails > 0 {
        write!(err, ", {} pictures missing (see the page)", summary.missing_thumbnails)?;
    }
    writeln!(err)
}

fn singular(plural: &str) -> &str {
    plural.strip_suffix('s').unwrap_or(plural)
}

fn init_logging(verbose: u8, quiet: bool) {
    use tracing_subscriber::EnvFilter;
    let default = match (quiet, verbose) {
        (true, _) => "warn",
        (false, 0) => "info",
        (false, 1) => "debug",
        (false, _) => "trace",
    };
    let filter =
        EnvFilter::try_from_env("AESTHETE_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour_on_stderr())
        .with_target(false)
        .init();
}

/// Colour only on a terminal, and never with `NO_COLOR` set to anything but "" (no-color.org).
fn colour_on_stderr() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
