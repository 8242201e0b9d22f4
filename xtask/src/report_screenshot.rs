//! `cargo xtask report-screenshot`: `docs/report.png`, the README's picture of `aesthete
//! report`, made from the fixture shards scored with the tiny test models (so it needs no
//! download) and rendered by headless Chromium.
use std::path::Path;
use std::process::Command;

use aesthete_pipeline::{
    DType, Device, ModelPaths, Models, NoProgress, Outputs, ReportConfig, RunConfig,
};
use anyhow::{Context, bail};

/// The picture, relative to the workspace root.
pub const SCREENSHOT: &str = "docs/report.png";
/// The window it is taken in, `width,height`.
pub const WINDOW: &str = "1280,1800";
/// Largest picture committed.
const MAX_BYTES: u64 = 500 * 1024;

/// Scores the fixture shards into `target/report-screenshot/`, writes the report there and
/// takes its picture into [`SCREENSHOT`].
pub fn run(root: &Path) -> anyhow::Result<()> {
    let work = root.join("target/report-screenshot");
    if work.exists() {
        std::fs::remove_dir_all(&work).with_context(|| format!("clearing {}", work.display()))?;
    }
    let shards = root.join("fixtures/pipeline/shards");
    let scores = work.join("scores");
    let paths = ModelPaths {
        clip_dir: root.join("fixtures/clip/tiny-vit-224-768"),
        head_file: root.join("fixtures/pipeline/head-768.safetensors"),
    };
    let models = Models::load(&paths, &Device::Cpu, DType::F32)?;
    let config =
        RunConfig::new([shards.display().to_string()], &scores)?.outputs(Outputs::ScoresOnly);
    // truncated.tar is cut off on purpose: the run reports it and the page lists it.
    aesthete_pipeline::run(&config, &models, &NoProgress)?;

    let page = work.join("report.html");
    let report = ReportConfig::new([scores.display().to_string()], &page)?
        .shards([shards.display().to_string()]);
    let summary = aesthete_pipeline::report(&report)?;
    eprintln!("{}: {} bytes, {} pictures", page.display(), summary.bytes, summary.thumbnails);

    let picture = root.join(SCREENSHOT);
    std::fs::create_dir_all(picture.parent().expect("docs/"))?;
    let output = Command::new("chromium")
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"])
        .arg(format!("--user-data-dir={}", work.join("chromium-profile").display()))
        .arg(format!("--window-size={WINDOW}"))
        .arg(format!("--screenshot={}", picture.display()))
        .arg(format!("file://{}", page.display()))
        .output()
        .context("cannot run chromium (apt-get install chromium)")?;
    if !output.status.success() {
        bail!("chromium failed ({}): {}", output.status, String::from_utf8_lossy(&output.stderr));
    }
    let bytes = std::fs::metadata(&picture)?.len();
    eprintln!("{}: {bytes} bytes", picture.display());
    if bytes > MAX_BYTES {
        bail!("{} is {bytes} bytes, over the {MAX_BYTES} committed at most", picture.display());
    }
    Ok(())
}
