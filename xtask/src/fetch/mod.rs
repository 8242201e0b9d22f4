//! `cargo xtask fetch-models`: download the pinned models, verify them, convert them into
//! the model directory the CLI reads.
//!
//! Layout of the model directory (`--dir`, else the first of
//! [`aesthete_pipeline::default_model_dirs`]: `$AESTHETE_MODELS`, else
//! `~/.local/share/aesthete/models`, where the CLI looks too):
//!
//! ```text
//! <dir>/clip-vit-large-patch14/config.json               from the hub, as is
//! <dir>/clip-vit-large-patch14/preprocessor_config.json  from the hub, as is
//! <dir>/clip-vit-large-patch14/model.safetensors         vision tower + visual_projection (f32 or f16)
//! <dir>/aesthetic-head.safetensors                       the LAION head, converted from .pth
//!                                                        (or copied, if published as safetensors)
//! <dir>/downloads/clip-vit-large-patch14/…               the hub files, verified
//! <dir>/downloads/sac+logos+ava1-l14-linearMSE.pth       the head, verified
//! <dir>/.fetch-models.json                               what the outputs were converted from
//! ```
//!
//! Every run verifies the downloads (hashing them) and converts again only when a source's
//! hash or the dtype changed, so a second run transfers and writes nothing.

mod download;
mod pins;

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde_json::json;

pub use download::{Check, Fetched, PinMismatch, sha256_file};
pub use pins::{HEAD_NAME, Manifest, Pin};

use download::Source;

/// Name of the CLIP directory in the model directory (what `aesthete-pipeline` looks for).
pub const CLIP_DIR: &str = aesthete_pipeline::CLIP_DIR_NAME;
/// Name of the converted head in the model directory (what `aesthete-pipeline` looks for).
pub const HEAD_FILE: &str = aesthete_pipeline::HEAD_FILE_NAME;
/// The hub used when `HF_ENDPOINT` is not set.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";
const STAMP: &str = ".fetch-models.json";

/// Precision of the converted CLIP weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    /// As published.
    F32,
    /// Half the size; for GPUs.
    F16,
}

impl Dtype {
    fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::F16 => "f16",
        }
    }
}

impl std::str::FromStr for Dtype {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        match s {
            "f32" => Ok(Dtype::F32),
            "f16" => Ok(Dtype::F16),
            _ => bail!("--dtype takes f32 or f16, not `{s}`"),
        }
    }
}

/// Where the head comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeadSource {
    /// The manifest's URL.
    Pinned,
    /// Another URL (`--head-url`).
    Url(String),
    /// A local copy (`--head-file`), verified like a download.
    File(PathBuf),
}

/// What `fetch-models` does.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// The model directory.
    pub dir: PathBuf,
    /// Precision of the converted CLIP weights.
    pub dtype: Dtype,
    /// Hub endpoint, without a trailing slash.
    pub endpoint: String,
    /// Where the head comes from.
    pub head: HeadSource,
    /// Files and their pins.
    pub manifest: Manifest,
}

impl FetchOptions {
    /// Defaults: `dir` where the CLI looks first ([`default_model_dir`]), f32, the hub from
    /// `HF_ENDPOINT` or huggingface.co, the pinned head and the committed pins.
    pub fn from_env() -> anyhow::Result<Self> {
        Ok(FetchOptions {
            dir: default_model_dir()?,
            dtype: Dtype::F32,
            endpoint: std::env::var("HF_ENDPOINT").unwrap_or_else(|_| DEFAULT_ENDPOINT.to_owned()),
            head: HeadSource::Pinned,
            manifest: Manifest::committed(),
        })
    }
}

/// The first directory the CLI looks in for models: `$AESTHETE_MODELS`, else the per-user
/// data directory (`$XDG_DATA_HOME/aesthete/models`, `~/.local/share/aesthete/models`).
pub fn default_model_dir() -> anyhow::Result<PathBuf> {
    aesthete_pipeline::default_model_dirs(|name| std::env::var_os(name))
        .into_iter()
        .next()
        .context("neither AESTHETE_MODELS nor HOME is set: pass --dir")
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Files transferred (or copied) this run.
    pub transferred: Vec<PathBuf>,
    /// HTTP requests made.
    pub requests: usize,
    /// Outputs (re)written this run.
    pub converted: Vec<PathBuf>,
}

/// Makes `dest` a verified download of `url`: resumes `dest.part`, checks the sha256
/// against `pin`, renames; does nothing when `dest` is already verified. The building block
/// of [`fetch_models`], public for tests.
pub fn download(url: &str, dest: &Path, pin: &Pin) -> anyhow::Result<Fetched> {
    download::fetch(&download::agent(), Source::Url(url), dest, pin)
}

/// Downloads, verifies and converts; see the [module docs](self) for the layout.
pub fn fetch_models(opts: &FetchOptions) -> anyhow::Result<Summary> {
    let m = &opts.manifest;
    let agent = download::agent();
    let downloads = opts.dir.join("downloads");
    let mut summary = Summary::default();
    let mut note = |dest: &Path, f: &Fetched| {
        summary.requests += f.requests;
        if f.transferred {
            summary.transferred.push(dest.to_owned());
        }
    };

    let clip_src = downloads.join(CLIP_DIR);
    let endpoint = opts.endpoint.trim_end_matches('/');
    let mut clip_hashes = serde_json::Map::new();
    for pin in &m.clip_files {
        let url = format!("{endpoint}/{}/resolve/{}/{}", m.clip_repo, m.clip_revision, pin.name);
        let dest = clip_src.join(&pin.name);
        let fetched = download::fetch(&agent, Source::Url(&url), &dest, pin)?;
        note(&dest, &fetched);
        clip_hashes.insert(pin.name.clone(), fetched.sha256.into());
    }

    let head_src = downloads.join(&m.head.name);
    let source = match &opts.head {
        HeadSource::Pinned => Source::Url(&m.head_url),
        HeadSource::Url(url) => Source::Url(url),
        HeadSource::File(path) => Source::File(path),
    };
    let head = download::fetch(&agent, source, &head_src, &m.head)?;
    note(&head_src, &head);

    // Convert what changed since the last conversion.
    let stamp_path = opts.dir.join(STAMP);
    let old: serde_json::Value = fs::read_to_string(&stamp_path)
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or_default();
    let clip_stamp = json!({ "sources": clip_hashes, "dtype": opts.dtype.name() });
    let head_stamp = json!({ "source": head.sha256 });

    let clip_dst = opts.dir.join(CLIP_DIR);
    if old["clip"] != clip_stamp || !clip_dst.join("model.safetensors").exists() {
        eprintln!(
            "converting {} → {} ({})",
            clip_src.display(),
            clip_dst.display(),
            opts.dtype.name()
        );
        convert_clip(&clip_src, &clip_dst, opts.dtype)?;
        summary.converted.push(clip_dst);
    }
    let head_dst = opts.dir.join(HEAD_FILE);
    if old["head"] != head_stamp || !head_dst.exists() {
        eprintln!("converting {} → {}", head_src.display(), head_dst.display());
        convert_head(&head_src, &head_dst)?;
        summary.converted.push(head_dst);
    }
    let stamp = json!({ "clip": clip_stamp, "head": head_stamp });
    if stamp != old {
        let text = serde_json::to_string_pretty(&stamp)? + "\n";
        aesthete_atomic::write(&stamp_path, text.as_bytes())
            .with_context(|| format!("cannot write {}", stamp_path.display()))?;
    }
    Ok(summary)
}

/// A `.pth` head is converted; a head published as safetensors already (such as the hub's
/// `ttj/sac-logos-ava1-l14-linearMSE`) is checked by loading it, then copied.
fn convert_head(src: &Path, dst: &Path) -> anyhow::Result<()> {
    let mut magic = [0u8; 4];
    fs::File::open(src)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
        .with_context(|| format!("cannot read {}", src.display()))?;
    if magic == *b"PK\x03\x04" {
        return aesthete_head::convert_pth_to_safetensors(src, dst)
            .with_context(|| format!("cannot convert {}", src.display()));
    }
    aesthete_head::AestheticHead::load(src)
        .with_context(|| format!("{} is not a usable head", src.display()))?;
    let copy = || -> std::io::Result<()> {
        let mut out = aesthete_atomic::AtomicFile::create(dst)?;
        std::io::copy(&mut fs::File::open(src)?, out.file_mut())?;
        out.commit()
    };
    copy().with_context(|| format!("cannot copy {} to {}", src.display(), dst.display()))
}

/// The vision tower and projection of the downloaded CLIP model, with its config files.
fn convert_clip(src: &Path, dst: &Path, dtype: Dtype) -> anyhow::Result<()> {
    fs::create_dir_all(dst).with_context(|| format!("cannot create {}", dst.display()))?;
    // Stale configs from an earlier revision go; the extractor may write its own.
    for name in ["config.json", "preprocessor_config.json"] {
        let _ = fs::remove_file(dst.join(name));
    }
    let dtype = match dtype {
        Dtype::F32 => None,
        Dtype::F16 => Some(aesthete_clip::DType::F16),
    };
    aesthete_clip::extract_vision_tower(src, dst, dtype)
        .with_context(|| format!("cannot extract the vision tower of {}", src.display()))?;
    for name in ["config.json", "preprocessor_config.json"] {
        let to = dst.join(name);
        if !to.exists() {
            fs::copy(src.join(name), &to)
                .with_context(|| format!("cannot copy {name} to {}", dst.display()))?;
        }
    }
    Ok(())
}
