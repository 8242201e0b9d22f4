use std::path::Path;

use serde_json::Value;

use crate::Error;

/// How the image is resized before the center crop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResizeTarget {
    /// Scale so the short side is this long; the long side becomes
    /// `int(edge * long / short)` (truncated), as transformers computes it.
    ShortestEdge(u32),
    /// Resize to exactly this size, ignoring the aspect ratio.
    Exact {
        /// Output height.
        height: u32,
        /// Output width.
        width: u32,
    },
}

/// PIL resampling filters a config may name (`"resample"`, PIL's integer codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    /// `Image.LANCZOS` (1).
    Lanczos,
    /// `Image.BILINEAR` (2).
    Bilinear,
    /// `Image.BICUBIC` (3), CLIP's.
    Bicubic,
    /// `Image.BOX` (4).
    Box,
    /// `Image.HAMMING` (5).
    Hamming,
}

/// The numbers of a Hugging Face `preprocessor_config.json` for a CLIP-style image processor.
///
/// The crop must be square; resizing is always done (`do_resize`, `do_center_crop` must be true
/// or absent). `do_convert_rgb` is always honoured as true: every image is converted to RGB as
/// PIL's `convert("RGB")` does.
#[derive(Debug, Clone, PartialEq)]
pub struct PreprocessConfig {
    /// The resize step.
    pub resize: ResizeTarget,
    /// Resampling filter.
    pub filter: Filter,
    /// Side of the square center crop, the model's input size.
    pub crop_size: u32,
    /// Whether pixels are multiplied by `rescale_factor`.
    pub do_rescale: bool,
    /// Rescale factor, applied in f64 then rounded to f32 as transformers does.
    pub rescale_factor: f64,
    /// Whether `(x - mean) / std` is applied (in f32).
    pub do_normalize: bool,
    /// Per-channel mean (RGB).
    pub image_mean: [f32; 3],
    /// Per-channel standard deviation (RGB).
    pub image_std: [f32; 3],
}

/// OpenAI CLIP's normalization mean.
pub const CLIP_MEAN: [f64; 3] = [0.48145466, 0.4578275, 0.40821073];
/// OpenAI CLIP's normalization standard deviation.
pub const CLIP_STD: [f64; 3] = [0.26862954, 0.26130258, 0.27577711];

impl Default for PreprocessConfig {
    fn default() -> Self {
        Self::clip_vit_l14()
    }
}

impl PreprocessConfig {
    /// The config of `openai/clip-vit-large-patch14` (224 pixels).
    pub fn clip_vit_l14() -> Self {
        Self::clip(224)
    }

    /// The config of `openai/clip-vit-large-patch14-336` (336 pixels).
    pub fn clip_vit_l14_336() -> Self {
        Self::clip(336)
    }

    fn clip(size: u32) -> Self {
        PreprocessConfig {
            resize: ResizeTarget::ShortestEdge(size),
            filter: Filter::Bicubic,
            crop_size: size,
            do_rescale: true,
            rescale_factor: 1.0 / 255.0,
            do_normalize: true,
            image_mean: CLIP_MEAN.map(|v| v as f32),
            image_std: CLIP_STD.map(|v| v as f32),
        }
    }

    /// Side of the square output, the crop size.
    pub fn image_size(&self) -> usize {
        self.crop_size as usize
    }

    /// Reads a `preprocessor_config.json`.
    pub fn from_json_file(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| Error::Io { path: path.to_owned(), source })?;
        Self::from_json_str(&text)
    }

    /// Parses the text of a `preprocessor_config.json`.
    ///
    /// Absent keys take `CLIPImageProcessor`'s defaults. Both the old form (`"size": 224`,
    /// `"crop_size": 224`) and the dict form (`{"shortest_edge": 224}`,
    /// `{"height": 224, "width": 224}`) are read.
    pub fn from_json_str(s: &str) -> Result<Self, Error> {
        let v: Value =
            serde_json::from_str(s).map_err(|e| Error::config(format!("not json: {e}")))?;
        let obj = v.as_object().ok_or_else(|| Error::config("top level is not an object"))?;
        let mut cfg = Self::clip_vit_l14();

        let flag = |key: &str| -> Result<bool, Error> {
            match obj.get(key) {
                None | Some(Value::Null) => Ok(true),
                Some(Value::Bool(b)) => Ok(*b),
                Some(other) => Err(Error::config(format!("{key} is not a bool: {other}"))),
            }
        };
        if !flag("do_resize")? {
            return Err(Error::config("do_resize false is not supported"));
        }
        if !flag("do_center_crop")? {
            return Err(Error::config("do_center_crop false is not supported"));
        }
        cfg.do_rescale = flag("do_rescale")?;
        cfg.do_normalize = flag("do_normalize")?;

        if let Some(size) = obj.get("size") {
            cfg.resize = match size {
                Value::Number(_) => ResizeTarget::ShortestEdge(uint(size, "size")?),
                Value::Object(m) => {
                    if let Some(edge) = m.get("shortest_edge") {
                        ResizeTarget::ShortestEdge(uint(edge, "size.shortest_edge")?)
                    } else if let (Some(h), Some(w)) = (m.get("height"), m.get("width")) {
                        ResizeTarget::Exact {
                            height: uint(h, "size.height")?,
                            width: uint(w, "size.width")?,
                        }
                    } else {
                        return Err(Error::config(
                            "size has neither shortest_edge nor height and width",
                        ));
                    }
                }
                other => return Err(Error::config(format!("size is malformed: {other}"))),
            };
        }
        if let Some(crop) = obj.get("crop_size") {
            cfg.crop_size = match crop {
                Value::Number(_) => uint(crop, "crop_size")?,
                Value::Object(m) => {
                    let h = uint(m.get("height").unwrap_or(&Value::Null), "crop_size.height")?;
                    let w = uint(m.get("width").unwrap_or(&Value::Null), "crop_size.width")?;
                    if h != w {
                        return Err(Error::config(format!("crop {w}x{h} is not square")));
                    }
                    h
                }
                other => return Err(Error::config(format!("crop_size is malformed: {other}"))),
            };
        }
        if let Some(r) = obj.get("resample") {
            cfg.filter = match r.as_u64() {
                Some(1) => Filter::Lanczos,
                Some(2) => Filter::Bilinear,
                Some(3) => Filter::Bicubic,
                Some(4) => Filter::Box,
                Some(5) => Filter::Hamming,
                _ => return Err(Error::config(format!("resample {r} is not supported"))),
            };
        }
        if let Some(f) = obj.get("rescale_factor") {
            cfg.rescale_factor =
                f.as_f64().ok_or_else(|| Error::config("rescale_factor is not a number"))?;
        }
        if let Some(m) = obj.get("image_mean") {
            cfg.image_mean = triple(m, "image_mean")?;
        }
        if let Some(s) = obj.get("image_std") {
            cfg.image_std = triple(s, "image_std")?;
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks that the numbers make sense: nonzero sizes, a crop that fits inside the resized
    /// image, nonzero finite std.
    pub fn validate(&self) -> Result<(), Error> {
        if self.crop_size == 0 || self.crop_size > 4096 {
            return Err(Error::config(format!("crop size {} is outside 1..=4096", self.crop_size)));
        }
        match self.resize {
            ResizeTarget::ShortestEdge(edge) => {
                if edge < self.crop_size {
                    return Err(Error::config(format!(
                        "shortest edge {edge} is smaller than the crop {}",
                        self.crop_size
                    )));
                }
                if edge > 8192 {
                    return Err(Error::config(format!("shortest edge {edge} is over 8192")));
                }
            }
            ResizeTarget::Exact { height, width } => {
                if height < self.crop_size || width < self.crop_size {
                    return Err(Error::config(format!(
                        "resize {width}x{height} is smaller than the crop {}",
                        self.crop_size
                    )));
                }
                if height > 8192 || width > 8192 {
                    return Err(Error::config(format!("resize {width}x{height} is over 8192")));
                }
            }
        }
        if !self.rescale_factor.is_finite() {
            return Err(Error::config("rescale_factor is not finite"));
        }
        if self.image_std.iter().chain(&self.image_mean).any(|v| !v.is_finite())
            || self.image_std.contains(&0.0)
        {
            return Err(Error::config("image_mean or image_std is not finite or std is zero"));
        }
        Ok(())
    }
}

fn uint(v: &Value, key: &str) -> Result<u32, Error> {
    v.as_u64()
        .and_then(|n| u32::try_from(n).ok())
        .filter(|&n| n > 0)
        .ok_or_else(|| Error::config(format!("{key} is not a positive integer: {v}")))
}

fn triple(v: &Value, key: &str) -> Result<[f32; 3], Error> {
    let malformed = || Error::config(format!("{key} is not a list of 3 numbers: {v}"));
    match v {
        // transformers repeats a scalar over the channels.
        Value::Number(n) => {
            let x = n.as_f64().ok_or_else(malformed)? as f32;
            Ok([x; 3])
        }
        Value::Array(a) if a.len() == 3 => {
            let mut out = [0f32; 3];
            for (o, x) in out.iter_mut().zip(a) {
                // numpy's `np.array(mean, dtype=float32)`: parse as f64, round to nearest f32.
                *o = x.as_f64().ok_or_else(malformed)? as f32;
            }
            Ok(out)
        }
        _ => Err(malformed()),
    }
}
