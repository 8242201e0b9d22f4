//! Helpers shared by the test modules.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use aesthete_clip::{ClipVision, DType, Device};
use candle_core::Tensor;

/// `fixtures/clip/<name>`.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/clip").join(name)
}

/// Names of the committed tiny fixtures.
pub const FIXTURES: [&str; 3] = ["tiny-vit-224-768", "tiny-gelu-28", "tiny-vision-32"];

/// The deterministic pseudo-random pixels of `generate.py`'s `pixel_values`, NCHW.
pub fn pixel_values(num_images: usize, image_size: usize) -> Vec<f32> {
    let len = 3 * image_size * image_size;
    let mut out = Vec::with_capacity(num_images * len);
    for n in 0..num_images as u64 {
        for i in 0..len as u64 {
            let mask = 0xFFFF_FFFF_u64;
            let mut h = (i.wrapping_mul(2_654_435_761) + n * 40503 + 12345) & mask;
            h ^= h >> 15;
            h = h.wrapping_mul(2_246_822_519) & mask;
            h ^= h >> 13;
            out.push((h >> 8) as f32 * 2f32.powi(-22) - 2.0);
        }
    }
    out
}

/// The tensors of `reference.safetensors` in a fixture directory.
pub fn reference(dir: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(dir.join("reference.safetensors"), &candle_core::Device::Cpu)
        .unwrap()
}

/// Loads a fixture model on CPU in f32.
pub fn load(dir: &Path) -> ClipVision {
    ClipVision::load(dir, &Device::Cpu, DType::F32)
        .unwrap_or_else(|e| panic!("loading {}: {e:#?}", dir.display()))
}

/// Row-wise comparison: (smallest cosine similarity, largest absolute difference).
pub fn compare(got: &[f32], want: &[f32], dim: usize) -> (f64, f64) {
    assert_eq!(got.len(), want.len(), "different lengths");
    let mut min_cos = f64::INFINITY;
    let mut max_diff = 0.0f64;
    for (g, w) in got.chunks_exact(dim).zip(want.chunks_exact(dim)) {
        let dot: f64 = g.iter().zip(w).map(|(&a, &b)| f64::from(a) * f64::from(b)).sum();
        let ng: f64 = g.iter().map(|&a| f64::from(a).powi(2)).sum::<f64>().sqrt();
        let nw: f64 = w.iter().map(|&a| f64::from(a).powi(2)).sum::<f64>().sqrt();
        min_cos = min_cos.min(dot / (ng * nw));
        for (&a, &b) in g.iter().zip(w) {
            max_diff = max_diff.max((f64::from(a) - f64::from(b)).abs());
        }
    }
    (min_cos, max_diff)
}

/// Largest |Δ| of an f32 embedding against transformers': measured up to 1.1e-7 on the tiny
/// fixtures and 1.6e-7 at ViT-L/14 (normalized values, so a few ulps). The bound leaves 6x for
/// the summation order of other matrix kernels (AVX-512's blocking is not AVX2's).
pub const PARITY_MAX_DIFF: f64 = 1e-6;
/// Smallest cosine: differences of 1e-7 per value leave 1 - cosine near 1e-13.
pub const PARITY_MIN_COSINE: f64 = 1.0 - 1e-9;

/// The f32 parity bar: [`PARITY_MIN_COSINE`] and [`PARITY_MAX_DIFF`].
pub fn assert_parity(what: &str, got: &[f32], want: &[f32], dim: usize) {
    let (cos, diff) = compare(got, want, dim);
    eprintln!("{what}: min cosine {cos:.12}, max |Δ| {diff:.3e}");
    assert!(cos >= PARITY_MIN_COSINE, "{what}: cosine {cos} < {PARITY_MIN_COSINE}");
    assert!(diff <= PARITY_MAX_DIFF, "{what}: max |Δ| {diff} > {PARITY_MAX_DIFF}");
}

/// Runs `model` on `num_images` of the reference inputs, returning the host f32 rows.
pub fn embed_reference_inputs(model: &ClipVision, num_images: usize) -> Vec<f32> {
    let s = model.image_size();
    let pixels = Tensor::from_vec(
        pixel_values(num_images, s),
        (num_images, 3, s, s),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    model.forward_tensor(&pixels).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// Rewrites `file` as a safetensors file with `edit` applied to its tensor map.
pub fn rewrite_safetensors(file: &Path, edit: impl FnOnce(&mut HashMap<String, Tensor>)) {
    let mut tensors = candle_core::safetensors::load(file, &candle_core::Device::Cpu).unwrap();
    edit(&mut tensors);
    candle_core::safetensors::save(&tensors, file).unwrap();
}

/// Copies a fixture into a fresh temporary directory.
pub fn copy_fixture(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture(name)).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    dir
}
