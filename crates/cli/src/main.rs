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
            advise_dtype(device, *dtype);
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

/// One line at the start of a CPU run where the precision asked for is not the faster one
/// this CPU offers (see [`dtype_advice`]).
fn advise_dtype(device: &aesthete_clip::Device, dtype: aesthete_clip::DType) {
    if *device != aesthete_clip::Device::Cpu {
        return;
    }
    let Ok(kernel) = aesthete_clip::cpu_bf16_kernel() else { return };
    let rate = aesthete_clip::cpu_bf16_rate_against_f32().ok().flatten();
    match dtype_advice(kernel, rate, dtype) {
        Some(DtypeAdvice::Suggest(line)) => tracing::info!("{line}"),
        Some(DtypeAdvice::Warn(line)) => tracing::warn!("{line}"),
        None => {}
    }
}

/// What [`advise_dtype`] says.
#[derive(Debug, PartialEq)]
enum DtypeAdvice {
    /// bf16 is faster here: an f32 run (the default, for exact parity with transformers)
    /// says so, since a user would otherwise not know to ask.
    Suggest(String),
    /// bf16 was asked for where it is no faster than f32.
    Warn(String),
}

/// Whether bf16 is worth a line, for a CPU whose bf16 kernel is `kernel`, its instruction
/// doing `rate` × the f32 FMA's multiply-adds a second (`None`: AMX tiles, not timed). bf16
/// counts as faster on AMX (the ViT-L/14 model 4.4-5.1 × its f32 speed in `BENCHMARKS.md`) and
/// at a rate of 1.25 or more (Zen 5's AVX512-BF16 ran it 1.9-2.7 ×); where the encoder runs
/// bf16 products on f32 FMAs (`kernel` is [`aesthete_clip::CPU_BF16_ON_FMA`], which it chooses
/// under a rate of 1: a Xeon with AMX hidden, rate 0.5, where `vdpbf16ps` ran the model at
/// 0.65 × its f32 speed), bf16 is no faster than f32; nothing is said between.
fn dtype_advice(
    kernel: &str,
    rate: Option<f64>,
    dtype: aesthete_clip::DType,
) -> Option<DtypeAdvice> {
    const AGREEMENT: &str = "with scores within about 0.002 of f32 (the default, which matches \
                             transformers to rounding)";
    match (dtype, rate) {
        (aesthete_clip::DType::F32, None) => Some(DtypeAdvice::Suggest(format!(
            "this CPU has {kernel}: --dtype bf16 runs the CLIP model faster (about 4-5 x), {AGREEMENT}"
        ))),
        (aesthete_clip::DType::F32, Some(rate)) if rate >= 1.25 => {
            Some(DtypeAdvice::Suggest(format!(
                "this CPU has {kernel}, whose bf16 multiply-adds run at {rate:.1} x the f32 rate: \
                 --dtype bf16 runs the CLIP model faster (about 2 x on AMD Zen 5), {AGREEMENT}"
            )))
        }
        (aesthete_clip::DType::BF16, Some(rate)) if kernel == aesthete_clip::CPU_BF16_ON_FMA => {
            Some(DtypeAdvice::Warn(format!(
                "this CPU's AVX512-BF16 does bf16 multiply-adds at {rate:.2} x its f32 rate (it has \
             no AMX), so --dtype bf16 runs its products on f32 FMAs ({kernel}): no faster than \
             f32, the default, which matches transformers to rounding"
            )))
        }
        _ => None,
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

#[cfg(test)]
mod tests {
    use super::{DtypeAdvice, dtype_advice};
    use aesthete_clip::DType;

    #[test]
    fn bf16_is_suggested_where_faster_and_warned_against_where_slower() {
        let said = |rate, dtype| dtype_advice("K", rate, dtype);
        // AMX (not timed): f32 runs hear of bf16; bf16 runs hear nothing.
        assert!(
            matches!(said(None, DType::F32), Some(DtypeAdvice::Suggest(l)) if l.contains("4-5 x"))
        );
        assert_eq!(said(None, DType::BF16), None);
        // A bf16 instruction that issues as fast as an FMA (rate 2).
        assert!(
            matches!(said(Some(2.0), DType::F32), Some(DtypeAdvice::Suggest(l)) if l.contains("2.0 x the f32 rate"))
        );
        assert_eq!(said(Some(2.0), DType::BF16), None);
        // At half the f32 rate, where the encoder takes the FMAs: no suggestion, and a
        // warning when bf16 is asked for.
        let on_fma = |dtype| dtype_advice(aesthete_clip::CPU_BF16_ON_FMA, Some(0.5), dtype);
        assert_eq!(on_fma(DType::F32), None);
        assert!(
            matches!(on_fma(DType::BF16), Some(DtypeAdvice::Warn(l)) if l.contains("0.50 x its f32 rate") && l.contains("no faster than f32"))
        );
        // Between 1 and 1.25: nothing either way.
        assert_eq!(said(Some(1.1), DType::F32), None);
        assert_eq!(said(Some(1.1), DType::BF16), None);
    }
}
