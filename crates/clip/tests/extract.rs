//! Text weights are never read; extracting the vision tower keeps the embeddings.

use std::collections::HashMap;
use std::path::Path;

use aesthete_clip::{ClipVision, DType, Device, extract_vision_tower};
use candle_core::Tensor;

use crate::util::*;

const FULL: &str = "tiny-vit-224-768";

fn reference_rows(name: &str) -> (Vec<f32>, usize) {
    let want = reference(&fixture(name))["embeddings"].clone();
    let dim = want.dim(1).unwrap();
    (want.flatten_all().unwrap().to_vec1::<f32>().unwrap(), dim)
}

fn is_vision(name: &str) -> bool {
    name.starts_with("vision_model.") || name == "visual_projection.weight"
}

/// Splits the full CLIPModel fixture into a vision shard and a text shard with an index, as
/// large checkpoints ship, then overwrites the text shard with bytes that are not safetensors.
fn sharded_with_garbage_text(dir: &Path) {
    let file = fixture(FULL).join("model.safetensors");
    let all = candle_core::safetensors::load(&file, &candle_core::Device::Cpu).unwrap();
    let (vision, text): (HashMap<_, _>, HashMap<_, _>) =
        all.into_iter().partition(|(name, _)| is_vision(name));
    assert!(text.keys().any(|n| n.starts_with("text_model.")), "fixture has text weights");
    let (a, b) = ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors");
    candle_core::safetensors::save(&vision, dir.join(a)).unwrap();
    candle_core::safetensors::save(&text, dir.join(b)).unwrap();
    let mut weight_map = serde_json::Map::new();
    for name in vision.keys() {
        weight_map.insert(name.clone(), a.into());
    }
    for name in text.keys() {
        weight_map.insert(name.clone(), b.into());
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    std::fs::write(dir.join(b), b"these are not the text weights you are looking for").unwrap();
    for f in ["config.json", "preprocessor_config.json"] {
        std::fs::copy(fixture(FULL).join(f), dir.join(f)).unwrap();
    }
}

#[test]
fn text_shard_is_never_opened() {
    let dir = tempfile::tempdir().unwrap();
    sharded_with_garbage_text(dir.path());
    let model = load(dir.path());
    let (want, dim) = reference_rows(FULL);
    assert_parity("sharded, garbage text shard", &embed_reference_inputs(&model, 3), &want, dim);
}

#[test]
fn garbage_text_tensors_do_not_matter() {
    let dir = copy_fixture(FULL);
    rewrite_safetensors(&dir.path().join("model.safetensors"), |tensors| {
        let text: Vec<String> = tensors.keys().filter(|n| !is_vision(n)).cloned().collect();
        assert!(!text.is_empty());
        for name in text {
            // Wrong dtype, wrong shape, not even a float: reading any of these would fail or
            // poison the output.
            tensors.insert(
                name,
                Tensor::zeros(7, candle_core::DType::U8, &candle_core::Device::Cpu).unwrap(),
            );
        }
    });
    let model = load(dir.path());
    let (want, dim) = reference_rows(FULL);
    assert_parity("garbage text tensors", &embed_reference_inputs(&model, 3), &want, dim);
}

#[test]
fn extracted_tower_gives_identical_embeddings() {
    let dst = tempfile::tempdir().unwrap();
    extract_vision_tower(&fixture(FULL), dst.path(), None).unwrap();
    let names: Vec<String> = candle_core::safetensors::load(
        dst.path().join("model.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap()
    .into_keys()
    .collect();
    assert!(names.iter().all(|n| is_vision(n)), "{names:?}");
    // 3 embeddings + 4 outer norm tensors + 16 per layer × 2 layers + projection.
    assert_eq!(names.len(), 3 + 4 + 32 + 1);
    for f in ["config.json", "preprocessor_config.json"] {
        assert_eq!(
            std::fs::read(fixture(FULL).join(f)).unwrap(),
            std::fs::read(dst.path().join(f)).unwrap(),
            "{f}"
        );
    }
    let original = embed_reference_inputs(&load(&fixture(FULL)), 3);
    let extracted = embed_reference_inputs(&load(dst.path()), 3);
    assert_eq!(original, extracted);
}

#[test]
fn extracting_from_shards_skips_the_text_shard() {
    let src = tempfile::tempdir().unwrap();
    sharded_with_garbage_text(src.path());
    let dst = tempfile::tempdir().unwrap();
    extract_vision_tower(src.path(), dst.path(), None).unwrap();
    let (want, dim) = reference_rows(FULL);
    assert_parity(
        "extracted from shards",
        &embed_reference_inputs(&load(dst.path()), 3),
        &want,
        dim,
    );
}

#[test]
fn f16_extraction_is_close() {
    let dst = tempfile::tempdir().unwrap();
    extract_vision_tower(&fixture(FULL), dst.path(), Some(DType::F16)).unwrap();
    let tensors = candle_core::safetensors::load(
        dst.path().join("model.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    assert!(tensors.values().all(|t| t.dtype() == candle_core::DType::F16));
    // f16 weights computed in f32 on CPU.
    let model = ClipVision::load(dst.path(), &Device::Cpu, DType::F32).unwrap();
    let (want, dim) = reference_rows(FULL);
    let (cos, diff) = compare(&embed_reference_inputs(&model, 3), &want, dim);
    eprintln!("f16 extraction: min cosine {cos:.7}, max |Δ| {diff:.3e}");
    assert!(cos >= 0.9999 && diff <= 2e-3, "cos {cos}, |Δ| {diff}");
}

#[test]
fn extracting_onto_itself_is_refused() {
    let dir = copy_fixture("tiny-vision-32");
    let before = std::fs::read(dir.path().join("model.safetensors")).unwrap();
    assert!(extract_vision_tower(dir.path(), dir.path(), Some(DType::F16)).is_err());
    assert_eq!(before, std::fs::read(dir.path().join("model.safetensors")).unwrap());
}

#[test]
fn extracting_a_broken_checkpoint_writes_nothing() {
    let src = copy_fixture("tiny-vision-32");
    rewrite_safetensors(&src.path().join("model.safetensors"), |t| {
        t.remove("visual_projection.weight").unwrap();
    });
    let dst = tempfile::tempdir().unwrap();
    let err = extract_vision_tower(src.path(), dst.path(), None).unwrap_err();
    assert!(err.to_string().contains("visual_projection.weight"), "{err}");
    assert!(!dst.path().join("model.safetensors").exists());
}
