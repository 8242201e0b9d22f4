//! `cargo xtask gpu-bundle`: a folder that checks the CUDA path on a GPU machine with no Rust
//! and no network, in one short run (`bash run.sh --out DIR`).
//!
//! It holds the stripped release binary (whose CUDA encoder loads the driver, cuBLAS and
//! NVRTC at run time, so no toolkit was needed to build it), the tiny fixture CLIP model, the
//! 768-wide fixture head, the real LAION head (from `../shared/models` or `fetch-models`), the
//! fixture shards, one shard of photo-sized JPEGs made by `xtask/gpu_bundle/make_photos.py`,
//! and `check.py` (see its docstring for the steps).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

/// The folder's size limit: what one device call can carry.
pub const MAX_BYTES: u64 = 40 << 20;

/// Photo-sized JPEGs in the bundle's one photo shard (about 185 KB each), which the check
/// copies to make its end-to-end input: as many as fit beside the binary, the fixtures and the
/// LAION head under [`MAX_BYTES`].
const PHOTOS: usize = 28;

/// The real LAION head, for the check's bf16 and f16 score parity: the bound (|Δ| ≤
/// 0.02) is on LAION's 1-10 scale, which the random fixture head does not have (on this
/// head, a random ViT-L/14's bf16 scores moved 0.017-0.032 from f32 on the CPU; on the real
/// one, 0.004-0.009). `../shared/models` beside the checkout, else the converted head that
/// `cargo xtask fetch-models` wrote.
fn real_head(root: &Path) -> anyhow::Result<PathBuf> {
    let shared = root.join("../shared/models").join(crate::fetch::HEAD_NAME);
    if shared.is_file() {
        return Ok(shared);
    }
    let fetched = crate::fetch::default_model_dir()
        .map(|dir| dir.join(crate::fetch::HEAD_FILE))
        .unwrap_or_default();
    if fetched.is_file() {
        return Ok(fetched);
    }
    bail!(
        "the bundle needs the real LAION head for its score parity: neither {} nor {} exists \
         (run `cargo xtask fetch-models`)",
        shared.display(),
        fetched.display()
    )
}

/// Where the bundle goes unless `--out` says otherwise.
pub fn default_dir(root: &Path) -> PathBuf {
    root.join("target/gpu-bundle")
}

fn run_ok(cmd: &mut Command, what: &str) -> anyhow::Result<()> {
    eprintln!("gpu-bundle: {what}");
    let status = cmd.status().with_context(|| format!("cannot start: {what}"))?;
    if !status.success() {
        bail!("{what}: {status}");
    }
    Ok(())
}

fn copy(from: &Path, to: &Path) -> anyhow::Result<()> {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::copy(from, to)
        .with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
    Ok(())
}

fn size_of(dir: &Path) -> std::io::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() { size_of(&entry.path())? } else { meta.len() };
    }
    Ok(total)
}

/// Builds the binary and writes the bundle into `out` (replacing it).
pub fn run(root: &Path, out: &Path) -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    run_ok(
        Command::new(&cargo).current_dir(root).args([
            "build",
            "--release",
            "--locked",
            "-p",
            "aesthete",
        ]),
        "cargo build --release -p aesthete (the default features include the CUDA encoder)",
    )?;
    if out.exists() {
        std::fs::remove_dir_all(out).with_context(|| format!("cannot clear {}", out.display()))?;
    }
    std::fs::create_dir_all(out)?;
    run_ok(
        Command::new("strip")
            .arg("-o")
            .arg(out.join("aesthete"))
            .arg(root.join("target/release/aesthete")),
        "strip the binary",
    )?;
    let tiny = root.join("fixtures/clip/tiny-vit-224-768");
    for name in ["config.json", "model.safetensors", "preprocessor_config.json"] {
        copy(&tiny.join(name), &out.join("models/tiny-vit-224-768").join(name))?;
    }
    copy(
        &root.join("fixtures/pipeline/head-768.safetensors"),
        &out.join("models/head-768.safetensors"),
    )?;
    let laion = real_head(root)?;
    let ext = laion.extension().and_then(|e| e.to_str()).unwrap_or("pth");
    copy(&laion, &out.join(format!("models/laion-head.{ext}")))?;
    for entry in std::fs::read_dir(root.join("fixtures/pipeline/shards"))? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
        if name.starts_with("good-") && name.ends_with(".tar") {
            copy(&path, &out.join("shards").join(name))?;
        }
    }
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_owned());
    std::fs::create_dir_all(out.join("photos"))?;
    run_ok(
        Command::new(&python)
            .arg(root.join("xtask/gpu_bundle/make_photos.py"))
            .arg(out.join("photos/photos-000000.tar"))
            .arg(PHOTOS.to_string()),
        &format!("{python} xtask/gpu_bundle/make_photos.py (needs numpy and pillow)"),
    )?;
    copy(&root.join("xtask/gpu_bundle/check.py"), &out.join("check.py"))?;
    std::fs::write(
        out.join("run.sh"),
        "#!/usr/bin/env bash\n# The aesthete GPU device check: see check.py.\nset -euo pipefail\ncd \"$(dirname \"$0\")\"\nexec python3 check.py \"$@\"\n",
    )?;
    let bytes = size_of(out)?;
    if bytes > MAX_BYTES {
        bail!(
            "the bundle is {} MiB, over the {} MiB a device call carries",
            bytes >> 20,
            MAX_BYTES >> 20
        );
    }
    eprintln!(
        "gpu-bundle: {} ({:.1} MiB); on the GPU machine: bash {}/run.sh --out DIR",
        out.display(),
        bytes as f64 / (1 << 20) as f64,
        out.display()
    );
    Ok(())
}
