//! The committed pins: what `fetch-models` downloads, and the sha256 and size each file must
//! have. Every file is pinned; nothing is trusted on first use.
//!
//! Where the pins come from (keep this up to date when changing them):
//! - `CLIP_REVISION`: the commit of `openai/clip-vit-large-patch14` that holds
//!   `model.safetensors`. A revision pins the content: the hub serves the same bytes for it.
//! - The CLIP files' sha256 and sizes at that revision: the hub repository's git history
//!   (`config.json`, `preprocessor_config.json`) and the LFS pointer of `model.safetensors`
//!   (its `oid sha256:` and `size`). The two JSON files are also in
//!   `fixtures/clip/openai-clip-vit-large-patch14-32bd642/`, byte for byte, and a test holds
//!   them to these pins.
//! - The head's sha256 and size: `../shared/models/README.md` and the file itself; the same
//!   file is published by christophschuhmann/improved-aesthetic-predictor.

use anyhow::{Context, bail};
use serde_json::Value;

/// `openai/clip-vit-large-patch14`, pinned.
pub const CLIP_REPO: &str = "openai/clip-vit-large-patch14";
/// The pinned commit of [`CLIP_REPO`].
pub const CLIP_REVISION: &str = "32bd64288804d66eefd0ccbe215aa642df71cc41";
/// The files of [`CLIP_REPO`] at [`CLIP_REVISION`]: name, sha256, size in bytes.
pub const CLIP_FILES: [(&str, &str, u64); 3] = [
    ("config.json", "8a09b467700c58138c29d53c605b34ebc69beaadd13274a8a2af8ad2c2f4032a", 4_519),
    (
        "preprocessor_config.json",
        "910e70b3956ac9879ebc90b22fb3bc8a75b6a0677814500101a4c072bd7857bd",
        316,
    ),
    (
        "model.safetensors",
        "a2bf730a0c7debf160f7a6b50b3aaf3703e7e88ac73de7a314903141db026dcb",
        1_710_540_580,
    ),
];
/// Where the LAION head is published.
pub const HEAD_URL: &str = "https://github.com/christophschuhmann/improved-aesthetic-predictor/raw/main/sac+logos+ava1-l14-linearMSE.pth";
/// The LAION head's file name.
pub const HEAD_NAME: &str = "sac+logos+ava1-l14-linearMSE.pth";
/// The LAION head's sha256.
pub const HEAD_SHA256: &str = "21dd590f3ccdc646f0d53120778b296013b096a035a2718c9cb0d511bff0f1e0";
/// The LAION head's size in bytes.
pub const HEAD_SIZE: u64 = 3_714_759;

/// One file to download and what it must be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    /// File name (in the hub repository, or of the head).
    pub name: String,
    /// Expected sha256, lowercase hex.
    pub sha256: String,
    /// Expected size in bytes.
    pub size: u64,
}

impl Pin {
    /// A pin from its parts; `sha256` is checked to be 64 hex digits and lowercased.
    pub fn new(name: &str, sha256: &str, size: u64) -> anyhow::Result<Pin> {
        Ok(Pin { name: name.to_owned(), sha256: check_sha256(sha256)?, size })
    }
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
        let pin = |name: &str, sha256: &str, size| {
            Pin::new(name, sha256, size).expect("the committed pins are well formed")
        };
        Manifest {
            clip_repo: CLIP_REPO.to_owned(),
            clip_revision: CLIP_REVISION.to_owned(),
            clip_files: CLIP_FILES
                .iter()
                .map(|&(name, sha256, size)| pin(name, sha256, size))
                .collect(),
            head_url: HEAD_URL.to_owned(),
            head: pin(HEAD_NAME, HEAD_SHA256, HEAD_SIZE),
        }
    }

    /// Reads a manifest from JSON (`--pins FILE`), for other models, mirrors and tests. Every
    /// file needs its `sha256` and `size`:
    ///
    /// ```json
    /// {"clip": {"repo": "openai/clip-vit-large-patch14", "revision": "…",
    ///           "files": [{"name": "config.json", "sha256": "…", "size": 4519}, …]},
    ///  "head": {"url": "https://…", "name": "….pth", "sha256": "…", "size": 3714759}}
    /// ```
    pub fn from_json(text: &str) -> anyhow::Result<Self> {
        let v: Value = serde_json::from_str(text).context("pins are not valid JSON")?;
        let str_at = |v: &Value, key: &str| -> anyhow::Result<String> {
            v.get(key)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .with_context(|| format!("pins: `{key}` is missing or not a string"))
        };
        let pin = |v: &Value| -> anyhow::Result<Pin> {
            let name = str_at(v, "name")?;
            let sha256 = str_at(v, "sha256").with_context(|| format!("pins: file `{name}`"))?;
            let size = v
                .get("size")
                .and_then(Value::as_u64)
                .with_context(|| format!("pins: file `{name}` has no `size` in bytes"))?;
            Pin::new(&name, &sha256, size).with_context(|| format!("pins: file `{name}`"))
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
        bail!("`{s}` is not a sha256 (64 hex digits)");
    }
    Ok(s.to_ascii_lowercase())
}
