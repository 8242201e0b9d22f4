//! Finding, checking and extracting the vision tensors of a Hugging Face CLIP checkpoint.
//!
//! Files are memory-mapped and only the tensors named by [`tensor_specs`] are ever read, so
//! the text tower of a full `CLIPModel` checkpoint stays on disk.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device};
use safetensors::Dtype as StDtype;

use crate::{ClipVisionConfig, Error};

const SINGLE_FILE: &str = "model.safetensors";
const INDEX_FILE: &str = "model.safetensors.index.json";

/// Name and shape of one tensor the vision tower reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TensorSpec {
    pub(crate) name: String,
    pub(crate) shape: Vec<usize>,
}

/// Every tensor the vision tower and projection read, named as in the Hugging Face checkpoint,
/// with the shape the config implies. `ClipVision::new` asks for exactly these.
pub(crate) fn tensor_specs(cfg: &ClipVisionConfig) -> Vec<TensorSpec> {
    let h = cfg.hidden_size;
    let mut specs = Vec::new();
    let mut push = |name: String, shape: &[usize]| {
        specs.push(TensorSpec { name, shape: shape.to_vec() });
    };
    let e = "vision_model.embeddings";
    push(format!("{e}.class_embedding"), &[h]);
    push(
        format!("{e}.patch_embedding.weight"),
        &[h, cfg.num_channels, cfg.patch_size, cfg.patch_size],
    );
    push(format!("{e}.position_embedding.weight"), &[cfg.num_positions(), h]);
    let norm = |push: &mut dyn FnMut(String, &[usize]), prefix: &str| {
        push(format!("{prefix}.weight"), &[h]);
        push(format!("{prefix}.bias"), &[h]);
    };
    norm(&mut push, "vision_model.pre_layrnorm");
    for i in 0..cfg.num_hidden_layers {
        let l = format!("vision_model.encoder.layers.{i}");
        for proj in ["k_proj", "v_proj", "q_proj", "out_proj"] {
            push(format!("{l}.self_attn.{proj}.weight"), &[h, h]);
            push(format!("{l}.self_attn.{proj}.bias"), &[h]);
        }
        norm(&mut push, &format!("{l}.layer_norm1"));
        push(format!("{l}.mlp.fc1.weight"), &[cfg.intermediate_size, h]);
        push(format!("{l}.mlp.fc1.bias"), &[cfg.intermediate_size]);
        push(format!("{l}.mlp.fc2.weight"), &[h, cfg.intermediate_size]);
        push(format!("{l}.mlp.fc2.bias"), &[h]);
        norm(&mut push, &format!("{l}.layer_norm2"));
    }
    norm(&mut push, "vision_model.post_layernorm");
    push("visual_projection.weight".to_string(), &[cfg.projection_dim, h]);
    specs
}

/// The memory-mapped safetensors files that hold the vision tensors of a model directory,
/// checked against the config.
pub(crate) struct Checkpoint {
    pub(crate) tensors: MmapedSafetensors,
    pub(crate) specs: Vec<TensorSpec>,
}

impl Checkpoint {
    /// Maps the weight files of `dir` that hold vision tensors (shards holding only text
    /// tensors are not even opened) and checks each tensor's presence, shape and dtype.
    pub(crate) fn open(dir: &Path, cfg: &ClipVisionConfig) -> Result<Self, Error> {
        let specs = tensor_specs(cfg);
        let single = dir.join(SINGLE_FILE);
        let index = dir.join(INDEX_FILE);
        let files: Vec<PathBuf> = if single.is_file() {
            vec![single]
        } else if index.is_file() {
            let map = read_index(&index)?;
            let mut files = BTreeSet::new();
            for spec in &specs {
                match map.get(&spec.name) {
                    Some(file) => files.insert(dir.join(file)),
                    None => {
                        return Err(Error::MissingTensor { name: spec.name.clone(), path: index });
                    }
                };
            }
            files.into_iter().collect()
        } else {
            let hint = if dir.join("pytorch_model.bin").exists() {
                "; pytorch_model.bin is not read: convert it to safetensors first"
            } else {
                ""
            };
            return Err(Error::NoWeights { dir: dir.to_path_buf(), hint });
        };
        for file in &files {
            tracing::debug!(file = %file.display(), "memory-mapping checkpoint file");
        }
        // SAFETY: the files are mapped read-only for the duration of the load; every tensor
        // read is copied out of the mapping. Like every mmap-based loader this relies on
        // nobody truncating the checkpoint while it loads.
        let tensors =
            unsafe { MmapedSafetensors::multi(&files) }.map_err(|source| Error::Safetensors {
                path: files.first().cloned().unwrap_or_default(),
                source: source.into(),
            })?;
        let location = if files.len() == 1 { files[0].clone() } else { index };
        for spec in &specs {
            let view = tensors.get(&spec.name).map_err(|_| Error::MissingTensor {
                name: spec.name.clone(),
                path: location.clone(),
            })?;
            if view.shape() != spec.shape.as_slice() {
                return Err(Error::TensorShape {
                    name: spec.name.clone(),
                    expected: spec.shape.clone(),
                    actual: view.shape().to_vec(),
                });
            }
            if !matches!(view.dtype(), StDtype::F32 | StDtype::F16 | StDtype::BF16) {
                return Err(Error::TensorDtype {
                    name: spec.name.clone(),
                    dtype: format!("{:?}", view.dtype()),
                });
            }
        }
        Ok(Checkpoint { tensors, specs })
    }
}

#[derive(serde::Deserialize)]
struct Index {
    weight_map: HashMap<String, String>,
}

fn read_index(path: &Path) -> Result<HashMap<String, String>, Error> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
    let index: Index = serde_json::from_str(&text)
        .map_err(|source| Error::Json { path: path.to_path_buf(), source })?;
    Ok(index.weight_map)
}

/// Writes a vision-only checkpoint: `vision_model.*` and `visual_projection.weight` (optionally
/// cast to `dtype`: f32, f16 or bf16) into `dst_dir/model.safetensors`, and copies
/// `config.json` and, when present, `preprocessor_config.json`.
///
/// Only the needed tensors are read from `src_dir`, through a memory map, one at a time; the
/// text tower is never loaded. The result loads with [`ClipVision::load`](crate::ClipVision::load)
/// and gives the same embeddings (exactly, without a cast).
pub fn extract_vision_tower(
    src_dir: &Path,
    dst_dir: &Path,
    dtype: Option<crate::DType>,
) -> Result<(), Error> {
    let target = dtype.map(|dtype| match dtype {
        crate::DType::F32 => StDtype::F32,
        crate::DType::F16 => StDtype::F16,
        crate::DType::BF16 => StDtype::BF16,
    });
    let cfg = ClipVisionConfig::from_json_file(&src_dir.join("config.json"))?;
    let checkpoint = Checkpoint::open(src_dir, &cfg)?;
    std::fs::create_dir_all(dst_dir)
        .map_err(|source| Error::Io { path: dst_dir.to_path_buf(), source })?;
    if same_dir(src_dir, dst_dir) {
        return Err(Error::Io {
            path: dst_dir.to_path_buf(),
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "destination is the source directory",
            ),
        });
    }
    let mut views = Vec::with_capacity(checkpoint.specs.len());
    for spec in &checkpoint.specs {
        let view = checkpoint.tensors.get(&spec.name)?;
        views.push((spec.name.clone(), LazyTensor { view, target, name: &spec.name }));
    }
    let dst = dst_dir.join(SINGLE_FILE);
    let io = |source| Error::Io { path: dst.clone(), source };
    let pending = aesthete_atomic::Pending::create(&dst).map_err(io)?;
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(views, Some(metadata), pending.temp_path()).map_err(|e| {
        Error::Io { path: dst.clone(), source: std::io::Error::other(e.to_string()) }
    })?;
    pending.commit_written().map_err(io)?;
    for (name, required) in [("config.json", true), ("preprocessor_config.json", false)] {
        let src = src_dir.join(name);
        if !required && !src.exists() {
            tracing::warn!(file = %src.display(), "no preprocessor config to copy");
            continue;
        }
        std::fs::copy(&src, dst_dir.join(name))
            .map_err(|source| Error::Io { path: src.clone(), source })?;
    }
    tracing::info!(src = %src_dir.display(), dst = %dst.display(), ?dtype, "extracted vision tower");
    Ok(())
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// A tensor of the source checkpoint, converted only when the writer asks for its bytes, so
/// that at most one converted tensor is in memory at a time.
struct LazyTensor<'a> {
    view: safetensors::tensor::TensorView<'a>,
    target: Option<StDtype>,
    name: &'a str,
}

impl LazyTensor<'_> {
    fn out_dtype(&self) -> StDtype {
        self.target.unwrap_or(self.view.dtype())
    }

    fn converted(&self) -> candle_core::Result<Vec<u8>> {
        let src = candle_core::safetensors::Load::load(&self.view, &Device::Cpu)?;
        let flat = src.flatten_all()?;
        let bytes = match self.out_dtype() {
            StDtype::F32 => le_bytes(&flat.to_dtype(DType::F32)?.to_vec1::<f32>()?),
            StDtype::F16 => le_bytes(&flat.to_dtype(DType::F16)?.to_vec1::<half::f16>()?),
            StDtype::BF16 => le_bytes(&flat.to_dtype(DType::BF16)?.to_vec1::<half::bf16>()?),
            other => candle_core::bail!("cannot convert `{}` to {other:?}", self.name),
        };
        Ok(bytes)
    }
}

trait LeBytes: Copy {
    const SIZE: usize;
    fn write(self, out: &mut Vec<u8>);
}

macro_rules! le_bytes_impl {
    ($($t:ty),*) => {$(
        impl LeBytes for $t {
            const SIZE: usize = std::mem::size_of::<$t>();
            fn write(self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
        }
    )*};
}
le_bytes_impl!(f32, half::f16, half::bf16);

fn le_bytes<T: LeBytes>(values: &[T]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() * T::SIZE);
    values.iter().for_each(|v| v.write(&mut out));
    out
}

impl safetensors::View for LazyTensor<'_> {
    fn dtype(&self) -> StDtype {
        self.out_dtype()
    }

    fn shape(&self) -> &[usize] {
        self.view.shape()
    }

    fn data(&self) -> Cow<'_, [u8]> {
        if self.out_dtype() == self.view.dtype() {
            return Cow::Borrowed(self.view.data());
        }
        // `View::data` cannot fail; every dtype reaching here was checked to be a float type
        // candle converts, so a failure is a bug.
        match self.converted() {
            Ok(bytes) => Cow::Owned(bytes),
            Err(e) => panic!("converting tensor `{}` failed: {e}", self.name),
        }
    }

    fn data_len(&self) -> usize {
        self.view.shape().iter().product::<usize>() * self.out_dtype().bitsize() / 8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_are_unique_and_count_matches() {
        let cfg = ClipVisionConfig::vit_large_patch14();
        let specs = tensor_specs(&cfg);
        let names: BTreeSet<_> = specs.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names.len(), specs.len());
        // 3 embeddings + 2×2 outer norms + 16 per layer + projection.
        assert_eq!(specs.len(), 3 + 4 + 16 * 24 + 1);
        let params: usize = specs.iter().map(|s| s.shape.iter().product::<usize>()).sum();
        // ViT-L/14: 303,179,776 in the vision tower plus 786,432 in the projection.
        assert_eq!(params, 303_966_208);
    }
}
