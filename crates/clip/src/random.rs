//! Models of a real shape with random weights, for benchmarks and throughput tests.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::{ClipVisionConfig, Error};

/// Writes a vision tower of `config`'s shape with random weights into `dir` (created if
/// needed): `config.json` and `model.safetensors` (f32), which [`ClipVision::load`] reads.
/// Weights are normal with standard deviation 0.02, layer-norm weights 1, as a freshly
/// initialised model; only the shape is meant to matter (benchmarks), so there is no seed.
///
/// [`ClipVision::load`]: crate::ClipVision::load
pub fn write_random_model(dir: &Path, config: &ClipVisionConfig) -> Result<(), Error> {
    config.validate()?;
    std::fs::create_dir_all(dir).map_err(|source| Error::Io { path: dir.to_owned(), source })?;
    let mut tensors = HashMap::new();
    for (name, shape) in config.checkpoint_tensors() {
        let t = if name.contains("norm") && name.ends_with(".weight") {
            Tensor::ones(shape, DType::F32, &Device::Cpu)?
        } else {
            Tensor::randn(0f32, 0.02, shape, &Device::Cpu)?
        };
        tensors.insert(name, t);
    }
    let weights = dir.join("model.safetensors");
    let io = |source| Error::Io { path: weights.clone(), source };
    let pending = aesthete_atomic::Pending::create(&weights).map_err(io)?;
    candle_core::safetensors::save(&tensors, pending.temp_path())?;
    pending.commit_written().map_err(io)?;
    let config_path = dir.join("config.json");
    let json = serde_json::to_vec_pretty(config).expect("a config serializes");
    aesthete_atomic::write(&config_path, &json)
        .map_err(|source| Error::Io { path: config_path, source })
}
