//! The committed pins: what `fetch-models` downloads and the sha256 each file must have.
//!
//! Where the pins come from (keep this up to date when changing them):
//! - `CLIP_REVISION`: the commit of `openai/clip-vit-large-patch14` that holds
//!   `model.safetensors`, as it appears in Hugging Face cache paths
//!   (`models--openai--clip-vit-large-patch14/snapshots/32bd6428…`) quoted in many public
//!   logs and scripts. A revision pins the content: the hub serves the same bytes for it
//!   forever.
//! - The head's sha256 and size: `../shared/models/README.md` and the file itself; the same
//!   file is published by christophschuhmann/improved-aesthetic-predictor.
//! - The CLIP files' sha256: not known here (the hub was unreachable when these pins were
//!   written). They are `None`: the first download records the hash it got in
//!   `<dir>/downloads/<file>.sha256` with a warning, and later runs verify against that
//!   record. Replace each `None` with the real value once known (the hub shows the LFS
//!   sha256 of `model.safetensors` on its file page).

use anyhow::{Context, bail};
use serde_json::Value;

/// `openai/clip-vit-large-patch14`, pinned.
pub const CLIP_REPO: &str = "openai/clip-vit-large-patch14";
/// The pinned commit of [`CLIP_REPO`].
pub const CLIP_REVISION: &str = "32bd64288804d66eefd0ccbe215aa642df71cc41";
/// Where the LAION head is published.
pub const HEAD_URL: &str = "https://github.com/christophschuhmann/improved-aesthetic-predictor/raw/main/sac+logos+ava1-l14-linearMSE.pth";
/// The LAION head's file name.
pub const HEAD_NAME: &str = "sac+logos+ava1-l14-linearMSE.pth";
/// The LAION head's sha256.
pub const HEAD_SHA256: &str = "21dd590f3ccdc646f0d53120778b296013b096a035a2718c9cb0d511bff0f1e0";
/// The LAION head's size in bytes.
pub const HEAD_SIZE: u64 = 3_714_759;

/// One file to download and what it must hash to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    /// File name (in the hub repository, or of the head).
    pub name: String,
    /// Expected sha256, lowercase hex; `None` trusts and records the first download.
    pub sha256: Option<String>,
    /// Expected size in bytes, when known.
    pub size: Option<u64>,
}

/// Everything `fetch-models` downloads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// Hub repository of the CLIP model, `owner/name`.
    pub clip_repo: String,
    /// Commit of `clip_repo` to download.
    pub clip_revision: String,
    /// `config.json`, `preprocessor_config.json`, `model.safetensors`.
    pub clip_files: Vec<Pin>,
    /// Default URL of the head (`--head-url` overrides it).
    pub head_url: String,
    /// The head file.
    pub head: Pin,
}

impl Manifest {
    /// The pins committed in this file.
    pub fn committed() -> Self {
        let unpinned = |name: &str| Pin { name: name.to_owned(), sha256: None, size: None };
        Manifest {
            clip_repo: CLIP_REPO.to_owned(),
            clip_revision: CLIP_REVISION.to_owned(),
            clip_files: vec![
                unpinned("config.json"),
                unpinned("preprocessor_config.json"),
                unpinned("model.safetensors"),
            ],
            head_url: HEAD_URL.to_owned(),
            head: Pin {
                name: HEAD_NAME.to_owned(),
                sha256: Some(HEAD_SHA256.to_owned()),
                size: Some(HEAD_SIZE),
            },
        }
    }

    /// Reads a manifest from JSON (`--pins FILE`), for mirrors and tests:
    ///
    /// ```json
    /// {"clip": {"repo": "openai/clip-vit-large-patch14", "revision": "…",
    ///           "files": [{"name": "config.json", "sha256": "…", "size": 4519}, …]},
    ///  "head": {"url": "https://…", "name": "….pth", "sha256": "…"}}
    /// ```
    pub fn from_json(text: &str) -> anyhow::Result<Self> {
        let v: Value = serde_json::from_str(text).context("pins are not valid JSON")?;
        let str_at = |v: &Value, key: &str| -> anyhow::Result<String> {
            v.get(key)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .with_context(|| format!("pins: `{key}` is missing"))
        };
        let pin = |v: &Value| -> anyhow::Result<Pin> {
            let sha256 = match v.get("sha256") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(check_sha256(s)?),
                Some(other) => bail!("pins: sha256 {other} is not a string"),
            };
            Ok(Pin {
                name: str_at(v, "name")?,
                sha256,
                size: v.get("size").and_then(Value::as_u64),
            })
        };
        let clip = v.get("clip").context("pins: `clip` is missing")?;
        let head = v.get("head").context("pins: `head` is missing")?;
        let clip_files = clip
            .get("files")
            .and_then(Value::as_array)
            .context("pins: `clip.files` is missing")?
            .iter()
            .map(pin)
            .collect::<anyhow::Result<_>>()?;
        Ok(Manifest {
            clip_repo: str_at(clip, "repo")?,
            clip_revision: str_at(clip, "revision")?,
            clip_files,
            head_url: str_at(head, "url")?,
            head: pin(head)?,
        })
    }
}

fn check_sha256(s: &str) -> anyhow::Result<String> {
    if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("pins: `{s}` is not a sha256 (64 hex digits)");
    }
    Ok(s.to_ascii_lowercase())
}
