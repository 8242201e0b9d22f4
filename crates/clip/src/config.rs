use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::Error;

/// The activation between the two MLP layers of each encoder layer (`hidden_act`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Activation {
    /// `x · sigmoid(1.702 x)`, as OpenAI's CLIP checkpoints use (`quick_gelu`).
    #[serde(rename = "quick_gelu")]
    QuickGelu,
    /// Exact GELU with `erf` (`gelu`).
    #[serde(rename = "gelu")]
    Gelu,
    /// GELU with the tanh approximation (`gelu_new`, `gelu_pytorch_tanh`).
    #[serde(rename = "gelu_pytorch_tanh", alias = "gelu_new")]
    GeluTanh,
}

impl Activation {
    fn parse(name: &str) -> Result<Self, Error> {
        match name {
            "quick_gelu" => Ok(Activation::QuickGelu),
            "gelu" => Ok(Activation::Gelu),
            "gelu_new" | "gelu_pytorch_tanh" => Ok(Activation::GeluTanh),
            other => Err(Error::Config {
                field: "hidden_act",
                reason: format!(
                    "is `{other}`, expected quick_gelu, gelu, gelu_new or gelu_pytorch_tanh"
                ),
            }),
        }
    }
}

/// Sizes of a CLIP vision tower and its projection, as in transformers' `CLIPVisionConfig`.
///
/// Fields missing from a config file take transformers' defaults (ViT-B/32, projection 512).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ClipVisionConfig {
    /// Width of the transformer (`hidden_size`).
    pub hidden_size: usize,
    /// Width of each MLP (`intermediate_size`).
    pub intermediate_size: usize,
    /// Number of encoder layers.
    pub num_hidden_layers: usize,
    /// Number of attention heads; divides `hidden_size`.
    pub num_attention_heads: usize,
    /// Side of the (square) input image in pixels.
    pub image_size: usize,
    /// Side of each (square) patch in pixels.
    pub patch_size: usize,
    /// Number of input channels (3).
    pub num_channels: usize,
    /// MLP activation.
    pub hidden_act: Activation,
    /// Epsilon of every layer norm.
    pub layer_norm_eps: f64,
    /// Length of the projected embedding (`projection_dim`; for a full `CLIPModel` the
    /// top-level value, which is what sizes `visual_projection`).
    pub projection_dim: usize,
}

impl Default for ClipVisionConfig {
    /// transformers' `CLIPVisionConfig()` defaults: ViT-B/32 with a 512-d projection.
    fn default() -> Self {
        ClipVisionConfig {
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            image_size: 224,
            patch_size: 32,
            num_channels: 3,
            hidden_act: Activation::QuickGelu,
            layer_norm_eps: 1e-5,
            projection_dim: 512,
        }
    }
}

/// Optional fields as they appear in a config file.
#[derive(Deserialize)]
struct RawVision {
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    image_size: Option<usize>,
    patch_size: Option<usize>,
    num_channels: Option<usize>,
    hidden_act: Option<String>,
    layer_norm_eps: Option<f64>,
    projection_dim: Option<usize>,
    model_type: Option<String>,
}

impl ClipVisionConfig {
    /// ViT-B/32 as `openai/clip-vit-base-patch32` ships it.
    pub fn vit_base_patch32() -> Self {
        ClipVisionConfig::default()
    }

    /// ViT-B/16 as `openai/clip-vit-base-patch16` ships it.
    pub fn vit_base_patch16() -> Self {
        ClipVisionConfig { patch_size: 16, ..ClipVisionConfig::default() }
    }

    /// ViT-L/14 as `openai/clip-vit-large-patch14` ships it (768-d embeddings).
    pub fn vit_large_patch14() -> Self {
        ClipVisionConfig {
            hidden_size: 1024,
            intermediate_size: 4096,
            num_hidden_layers: 24,
            num_attention_heads: 16,
            patch_size: 14,
            projection_dim: 768,
            ..ClipVisionConfig::default()
        }
    }

    /// ViT-L/14 at 336 pixels as `openai/clip-vit-large-patch14-336` ships it.
    pub fn vit_large_patch14_336() -> Self {
        ClipVisionConfig { image_size: 336, ..ClipVisionConfig::vit_large_patch14() }
    }

    /// Reads a `config.json` of a `CLIPModel` or a `CLIPVisionModelWithProjection`.
    pub fn from_json_file(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
        Self::parse(&text, path)
    }

    /// Parses the text of a `config.json`: either a `CLIPModel` config (`vision_config` plus
    /// the top-level `projection_dim`) or a `CLIPVisionModelWithProjection` config.
    pub fn from_json_str(json: &str) -> Result<Self, Error> {
        Self::parse(json, Path::new("<string>"))
    }

    fn parse(json: &str, path: &Path) -> Result<Self, Error> {
        let json_err = |source| Error::Json { path: PathBuf::from(path), source };
        let value: serde_json::Value = serde_json::from_str(json).map_err(json_err)?;
        let top_type = value.get("model_type").and_then(|v| v.as_str()).map(str::to_string);
        let (raw, projection_dim) = match value.get("vision_config") {
            Some(vision) => {
                if let Some(t) = top_type.as_deref().filter(|t| *t != "clip") {
                    return Err(unsupported_type(t, "clip"));
                }
                let raw: RawVision = serde_json::from_value(vision.clone()).map_err(json_err)?;
                let top_projection = value.get("projection_dim");
                let projection_dim = match top_projection {
                    None => None,
                    Some(v) => Some(v.as_u64().ok_or_else(|| Error::Config {
                        field: "projection_dim",
                        reason: format!("is {v}, expected a positive integer"),
                    })? as usize),
                };
                // CLIPModel sizes `visual_projection` with the top-level value (default 512),
                // whatever `vision_config.projection_dim` says.
                (raw, projection_dim.unwrap_or(512))
            }
            None => {
                let raw: RawVision = serde_json::from_value(value).map_err(json_err)?;
                let projection_dim = raw.projection_dim.unwrap_or(512);
                (raw, projection_dim)
            }
        };
        if let Some(t) = raw.model_type.as_deref().filter(|t| *t != "clip_vision_model") {
            return Err(unsupported_type(t, "clip_vision_model"));
        }
        let d = ClipVisionConfig::default();
        let config = ClipVisionConfig {
            hidden_size: raw.hidden_size.unwrap_or(d.hidden_size),
            intermediate_size: raw.intermediate_size.unwrap_or(d.intermediate_size),
            num_hidden_layers: raw.num_hidden_layers.unwrap_or(d.num_hidden_layers),
            num_attention_heads: raw.num_attention_heads.unwrap_or(d.num_attention_heads),
            image_size: raw.image_size.unwrap_or(d.image_size),
            patch_size: raw.patch_size.unwrap_or(d.patch_size),
            num_channels: raw.num_channels.unwrap_or(d.num_channels),
            hidden_act: match raw.hidden_act {
                Some(name) => Activation::parse(&name)?,
                None => d.hidden_act,
            },
            layer_norm_eps: raw.layer_norm_eps.unwrap_or(d.layer_norm_eps),
            projection_dim,
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks that the sizes describe a buildable model.
    pub fn validate(&self) -> Result<(), Error> {
        let positive = [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("image_size", self.image_size),
            ("patch_size", self.patch_size),
            ("num_channels", self.num_channels),
            ("projection_dim", self.projection_dim),
        ];
        for (field, value) in positive {
            if value == 0 {
                return Err(Error::Config { field, reason: "is 0".to_string() });
            }
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(Error::Config {
                field: "num_attention_heads",
                reason: format!(
                    "is {}, which does not divide hidden_size {}",
                    self.num_attention_heads, self.hidden_size
                ),
            });
        }
        if self.patch_size > self.image_size {
            return Err(Error::Config {
                field: "patch_size",
                reason: format!(
                    "is {}, larger than image_size {}",
                    self.patch_size, self.image_size
                ),
            });
        }
        if !(self.layer_norm_eps.is_finite() && self.layer_norm_eps > 0.0) {
            return Err(Error::Config {
                field: "layer_norm_eps",
                reason: format!("is {}, expected a positive number", self.layer_norm_eps),
            });
        }
        Ok(())
    }

    /// Every tensor the model reads, as `(checkpoint name, shape)`, in the order of the
    /// Hugging Face checkpoint: what a directory must hold for [`ClipVision::load`](crate::ClipVision::load).
    pub fn checkpoint_tensors(&self) -> Vec<(String, Vec<usize>)> {
        crate::checkpoint::tensor_specs(self).into_iter().map(|s| (s.name, s.shape)).collect()
    }

    /// Patches along each side of the image.
    pub fn grid_size(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// Tokens per image: one per patch plus the class token.
    pub fn num_positions(&self) -> usize {
        self.grid_size() * self.grid_size() + 1
    }

    /// Width of each attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}

fn unsupported_type(found: &str, expected: &str) -> Error {
    Error::Config { field: "model_type", reason: format!("is `{found}`, expected `{expected}`") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_model_takes_top_level_projection() {
        let json = r#"{"model_type": "clip", "projection_dim": 768,
            "vision_config": {"hidden_size": 1024, "projection_dim": 512, "patch_size": 14,
                              "intermediate_size": 4096, "num_hidden_layers": 24,
                              "num_attention_heads": 16}}"#;
        let c = ClipVisionConfig::from_json_str(json).unwrap();
        assert_eq!(c, ClipVisionConfig::vit_large_patch14());
    }

    #[test]
    fn clip_model_projection_defaults_to_512() {
        let c = ClipVisionConfig::from_json_str(r#"{"vision_config": {}}"#).unwrap();
        assert_eq!(c, ClipVisionConfig::vit_base_patch32());
    }

    #[test]
    fn vision_only_config() {
        let json = r#"{"model_type": "clip_vision_model", "projection_dim": 64,
                       "hidden_act": "gelu", "layer_norm_eps": 1e-3}"#;
        let c = ClipVisionConfig::from_json_str(json).unwrap();
        assert_eq!(c.projection_dim, 64);
        assert_eq!(c.hidden_act, Activation::Gelu);
        assert_eq!(c.layer_norm_eps, 1e-3);
        assert_eq!(c.num_positions(), 50);
    }

    #[test]
    fn bad_configs_name_the_field() {
        let cases = [
            (r#"{"hidden_act": "relu"}"#, "hidden_act"),
            (r#"{"hidden_size": 30, "num_attention_heads": 4}"#, "num_attention_heads"),
            (r#"{"patch_size": 0}"#, "patch_size"),
            (r#"{"image_size": 8, "patch_size": 16}"#, "patch_size"),
            (r#"{"model_type": "siglip_vision_model"}"#, "model_type"),
            (r#"{"model_type": "siglip", "vision_config": {}}"#, "model_type"),
            (r#"{"vision_config": {}, "projection_dim": "big"}"#, "projection_dim"),
        ];
        for (json, field) in cases {
            match ClipVisionConfig::from_json_str(json) {
                Err(Error::Config { field: f, .. }) => assert_eq!(f, field, "{json}"),
                other => panic!("{json}: {other:?}"),
            }
        }
        assert!(matches!(
            ClipVisionConfig::from_json_str(r#"{"hidden_size": -1}"#),
            Err(Error::Json { .. })
        ));
        assert!(matches!(ClipVisionConfig::from_json_str("not json"), Err(Error::Json { .. })));
    }
}
