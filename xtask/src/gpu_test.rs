//! `cargo xtask gpu-test`: the CUDA integration tests, which CI never runs. They need a GPU
//! and the NVIDIA driver; cuBLAS and NVRTC (`libcublas.so.13`, `libnvrtc.so.13`) are loaded
//! at run time from the library path, and no CUDA toolkit is needed to build.
//!
//! GPU tests are named `gpu_*` and marked
//! `#[ignore = "needs a CUDA GPU; run cargo xtask gpu-test"]`; this task builds the packages
//! that have a `cuda` feature with it enabled and runs exactly those tests.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};

/// Packages whose GPU tests run, when their manifest declares a `cuda` feature.
pub const PACKAGES: [(&str, &str); 3] = [
    ("aesthete-clip", "crates/clip"),
    ("aesthete-pipeline", "crates/pipeline"),
    ("aesthete", "crates/cli"),
];

/// Why GPU tests cannot run here, or `None` when they can.
pub fn skip_reason() -> Option<String> {
    match Command::new("nvidia-smi").arg("-L").output() {
        Ok(out) if out.status.success() && !out.stdout.is_empty() => {}
        Ok(_) => return Some("nvidia-smi found no GPU".to_owned()),
        Err(_) => return Some("no NVIDIA driver (nvidia-smi not found)".to_owned()),
    }
    None
}

/// Runs the `gpu_*` tests of [`PACKAGES`] with `--features cuda`, or prints why not.
pub fn run(root: &Path) -> anyhow::Result<()> {
    if let Some(reason) = skip_reason() {
        println!("gpu-test: skipped: {reason}");
        return Ok(());
    }
    let mut packages = Vec::new();
    for (package, dir) in PACKAGES {
        let manifest = std::fs::read_to_string(root.join(dir).join("Cargo.toml"))
            .with_context(|| format!("cannot read {dir}/Cargo.toml"))?;
        if manifest
            .lines()
            .any(|l| l.trim_start().starts_with("cuda =") || l.trim_start().starts_with("cuda="))
        {
            packages.push(package);
        } else {
            eprintln!("gpu-test: {package} has no `cuda` feature yet; leaving it out");
        }
    }
    if packages.is_empty() {
        bail!("no package has a `cuda` feature");
    }
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()));
    cmd.current_dir(root).args(["test", "--release"]);
    for package in &packages {
        cmd.args(["-p", package]);
    }
    let features: Vec<String> = packages.iter().map(|p| format!("{p}/cuda")).collect();
    cmd.args(["--features", &features.join(",")]).args(["--", "--ignored", "gpu_"]);
    eprintln!("gpu-test: {cmd:?}");
    let status = cmd.status().context("cannot run cargo")?;
    if !status.success() {
        bail!("GPU tests failed ({status})");
    }
    Ok(())
}
