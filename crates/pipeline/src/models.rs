use std::ffi::OsString;
use std::path::{Path, PathBuf};

use aesthete_clip::{ClipVision, DType, Device};
use aesthete_head::AestheticHead;
use aesthete_preprocess::PreprocessConfig;

use crate::Error;
use crate::done::ModelSetting;

/// Name of the CLIP directory inside a model directory filled by `cargo xtask fetch-models`.
pub const CLIP_DIR_NAME: &str = "clip-vit-large-patch14";
/// Name of the head file inside a model directory filled by `cargo xtask fetch-models`.
pub const HEAD_FILE_NAME: &str = "aesthetic-head.safetensors";

/// Where the models of a run live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelPaths {
    /// A Hugging Face CLIP directory: `config.json`, `preprocessor_config.json`, safetensors.
    pub clip_dir: PathBuf,
    /// The aesthetic head, `.safetensors` or `.pth`.
    pub head_file: PathBuf,
}

impl ModelPaths {
    /// The layout `cargo xtask fetch-models` writes: `DIR/clip-vit-large-patch14/` and
    /// `DIR/aesthetic-head.safetensors`.
    pub fn in_dir(dir: &Path) -> Self {
        ModelPaths { clip_dir: dir.join(CLIP_DIR_NAME), head_file: dir.join(HEAD_FILE_NAME) }
    }

    /// The models in the first of [`default_model_dirs`] that holds both, for a run that names
    /// no model directory; the error lists every directory tried.
    pub fn find_default() -> Result<Self, Error> {
        let tried = default_model_dirs(|name| std::env::var_os(name));
        tried
            .iter()
            .map(|dir| ModelPaths::in_dir(dir))
            .find(|paths| paths.clip_dir.join("config.json").is_file() && paths.head_file.is_file())
            .ok_or(Error::ModelsNotFound { tried })
    }
}

/// The model directories looked in when none is given, in order, from the environment
/// (`var` reads a variable): `$AESTHETE_MODELS` alone when it is set; otherwise the per-user
/// data directory `$XDG_DATA_HOME/aesthete/models` (`~/.local/share/aesthete/models` without
/// it), then `aesthete/models` in each of `$XDG_DATA_DIRS` (`/usr/local/share:/usr/share`
/// without it), for models installed for every user. `cargo xtask fetch-models` writes to the
/// first.
pub fn default_model_dirs(var: impl Fn(&str) -> Option<OsString>) -> Vec<PathBuf> {
    let set = |name: &str| var(name).filter(|v| !v.is_empty());
    if let Some(dir) = set("AESTHETE_MODELS") {
        return vec![PathBuf::from(dir)];
    }
    let suffix = Path::new("aesthete").join("models");
    let mut dirs = Vec::new();
    // The XDG base directory spec ignores relative paths.
    let absolute = |p: PathBuf| Some(p).filter(|p| p.is_absolute());
    let home_data = set("XDG_DATA_HOME")
        .map(PathBuf::from)
        .and_then(absolute)
        .or_else(|| set("HOME").map(|home| Path::new(&home).join(".local").join("share")));
    dirs.extend(home_data.map(|d| d.join(&suffix)));
    let system = set("XDG_DATA_DIRS").unwrap_or_else(|| "/usr/local/share:/usr/share".into());
    dirs.extend(std::env::split_paths(&system).filter_map(absolute).map(|d| d.join(&suffix)));
    dirs
}

/// Loaded models: preprocessing settings, the CLIP image tower and the aesthetic head.
pub struct Models {
    pub(crate) preprocess: PreprocessConfig,
    pub(crate) clip: ClipVision,
    pub(crate) head: AestheticHead,
    pub(crate) description: String,
    /// What completion records say of these models: `None` for models a caller built.
    setting: Option<ModelSetting>,
}

impl Models {
    /// Loads the models at `paths` onto `device` in `dtype` and checks that they fit together.
    pub fn load(paths: &ModelPaths, device: &Device, dtype: DType) -> Result<Self, Error> {
        if !paths.clip_dir.join("config.json").is_file() {
            return Err(Error::ModelMissing {
                what: "clip model (config.json)",
                path: paths.clip_dir.clone(),
            });
        }
        if !paths.head_file.is_file() {
            return Err(Error::ModelMissing {
                what: "aesthetic head",
                path: paths.head_file.clone(),
            });
        }
        let preprocessor_config = paths.clip_dir.join("preprocessor_config.json");
        if !preprocessor_config.is_file() {
            return Err(Error::ModelMissing {
                what: "clip preprocessor_config.json",
                path: preprocessor_config,
            });
        }
        let preprocess = PreprocessConfig::from_json_file(&preprocessor_config)?;
        let clip = ClipVision::load(&paths.clip_dir, device, dtype)?;
        let head = AestheticHead::load(&paths.head_file)?;
        let description = format!(
            "clip={} head={} device={device:?} dtype={dtype:?}",
            paths.clip_dir.display(),
            paths.head_file.display()
        );
        let mut models = Models::checked(preprocess, clip, head, description)?;
        let files_crc32 = files_crc32(paths)?;
        models.setting = Some(ModelSetting { dtype: dtype_name(dtype), files_crc32 });
        tracing::info!(description = %models.description, "models loaded");
        Ok(models)
    }

    /// Models already loaded, for a caller that built or loaded them itself; checks that they
    /// fit together (embedding width, image size) as [`Models::load`] does.
    pub fn new(
        preprocess: PreprocessConfig,
        clip: ClipVision,
        head: AestheticHead,
    ) -> Result<Self, Error> {
        let description =
            format!("models given by the caller ({}-d embeddings)", clip.embedding_dim());
        Models::checked(preprocess, clip, head, description)
    }

    fn checked(
        preprocess: PreprocessConfig,
        clip: ClipVision,
        head: AestheticHead,
        description: String,
    ) -> Result<Self, Error> {
        if clip.embedding_dim() != head.input_dim() {
            return Err(Error::DimensionMismatch {
                clip: clip.embedding_dim(),
                head: head.input_dim(),
            });
        }
        if preprocess.image_size() != clip.image_size() {
            return Err(Error::ImageSizeMismatch {
                preprocess: preprocess.image_size(),
                clip: clip.image_size(),
            });
        }
        Ok(Models { preprocess, clip, head, description, setting: None })
    }

    /// Preprocessing settings of the CLIP model.
    pub fn preprocess_config(&self) -> &PreprocessConfig {
        &self.preprocess
    }

    /// The CLIP image tower.
    pub fn clip(&self) -> &ClipVision {
        &self.clip
    }

    /// The aesthetic head.
    pub fn head(&self) -> &AestheticHead {
        &self.head
    }

    /// Which files were loaded, onto which device and in which precision.
    pub fn description(&self) -> &str {
        &self.description
    }

    /// What completion records say of these models.
    pub(crate) fn setting(&self) -> Option<ModelSetting> {
        self.setting.clone()
    }
}

/// `f32`, `bf16`, `f16`.
fn dtype_name(dtype: DType) -> String {
    format!("{dtype:?}").to_ascii_lowercase()
}

/// CRC-32 in hex of the files that make the models, in a fixed order: the CLIP directory's
/// `config.json` and its `*.safetensors` files by name, then the head's file.
fn files_crc32(paths: &ModelPaths) -> Result<String, Error> {
    let mut weights: Vec<PathBuf> = std::fs::read_dir(&paths.clip_dir)
        .and_then(|entries| entries.map(|e| e.map(|e| e.path())).collect())
        .map_err(|source| Error::ModelRead { path: paths.clip_dir.clone(), source })?;
    weights.retain(|p| p.extension().is_some_and(|e| e == "safetensors"));
    weights.sort();
    let files = std::iter::once(paths.clip_dir.join("config.json"))
        .chain(weights)
        .chain(std::iter::once(paths.head_file.clone()));
    let mut hasher = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    for path in files {
        let read_error = |source| Error::ModelRead { path: path.clone(), source };
        let mut file = std::fs::File::open(&path).map_err(read_error)?;
        loop {
            match std::io::Read::read(&mut file, &mut buf) {
                Ok(0) => break,
                Ok(n) => hasher.update(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(read_error(e)),
            }
        }
    }
    Ok(format!("{:08x}", hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
    }

    /// Models a caller loaded itself are checked as [`Models::load`] checks them.
    #[test]
    fn models_from_loaded_parts_must_fit_together() {
        let clip_dir = fixtures().join("clip/tiny-vit-224-768");
        let preprocess =
            PreprocessConfig::from_json_file(&clip_dir.join("preprocessor_config.json")).unwrap();
        let clip = || ClipVision::load(&clip_dir, &Device::Cpu, DType::F32).unwrap();
        let head = AestheticHead::load(&fixtures().join("pipeline/head-768.safetensors")).unwrap();
        let models = Models::new(preprocess.clone(), clip(), head).unwrap();
        assert_eq!(models.clip().embedding_dim(), models.head().input_dim());

        let narrow = AestheticHead::load(&fixtures().join("head/tiny-linear.safetensors")).unwrap();
        assert_ne!(narrow.input_dim(), 768, "the fixture must be another width");
        let err = Models::new(preprocess, clip(), narrow).err().expect("widths differ");
        assert!(matches!(err, Error::DimensionMismatch { clip: 768, .. }), "{err:?}");
    }

    #[test]
    fn default_model_dirs_follow_xdg() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |name: &str| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| OsString::from(v))
        };
        assert_eq!(
            default_model_dirs(env(&[("HOME", "/home/u")])),
            [
                PathBuf::from("/home/u/.local/share/aesthete/models"),
                PathBuf::from("/usr/local/share/aesthete/models"),
                PathBuf::from("/usr/share/aesthete/models"),
            ]
        );
        assert_eq!(
            default_model_dirs(env(&[
                ("HOME", "/home/u"),
                ("XDG_DATA_HOME", "/data"),
                ("XDG_DATA_DIRS", "/opt/share:relative")
            ])),
            [PathBuf::from("/data/aesthete/models"), PathBuf::from("/opt/share/aesthete/models")]
        );
        assert_eq!(
            default_model_dirs(env(&[("AESTHETE_MODELS", "m"), ("HOME", "/home/u")])),
            [PathBuf::from("m")]
        );
        // An empty variable counts as unset.
        assert_eq!(
            default_model_dirs(env(&[("AESTHETE_MODELS", ""), ("XDG_DATA_DIRS", "/s")])),
            [PathBuf::from("/s/aesthete/models")]
        );
    }
}
