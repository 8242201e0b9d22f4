use std::path::{Path, PathBuf};

use aesthete_clip::{ClipVision, DType, Device};
use aesthete_head::AestheticHead;
use aesthete_preprocess::PreprocessConfig;

use crate::Error;

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
}

/// Loaded models: preprocessing settings, the CLIP image tower and the aesthetic head.
pub struct Models {
    pub(crate) preprocess: PreprocessConfig,
    pub(crate) clip: ClipVision,
    pub(crate) head: AestheticHead,
    pub(crate) description: String,
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
        let description = format!(
            "clip={} head={} device={device:?} dtype={dtype:?}",
            paths.clip_dir.display(),
            paths.head_file.display()
        );
        tracing::info!(%description, "models loaded");
        Ok(Models { preprocess, clip, head, description })
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
}
