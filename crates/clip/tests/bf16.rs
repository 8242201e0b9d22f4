//! The CPU encoder in bf16 (bf16 operands, f32 sums) against transformers in f32, and its
//! refusal on CPUs without bf16 matrix instructions.

use aesthete_clip::{ClipVision, DType, Device, Error};

use crate::util::*;

/// Smallest cosine of a bf16 embedding against f32 (transformers' or ours): the bar,
/// what PyTorch's bf16 modes reach (autocast ≥ 0.99999, bf16 weights ≥ 0.9999). bf16 keeps 8
/// significant bits, so each product carries a relative error up to 2^-8; sums over K
/// average it down, and the embeddings measured here are printed beside the bar.
const BF16_MIN_COSINE: f64 = 0.9999;

/// The model in bf16 on this CPU, or `None` (with the one-line reason) where it has no bf16
/// matrix instructions.
fn load_bf16(name: &str) -> Option<ClipVision> {
    match aesthete_clip::cpu_bf16_kernel() {
        Ok(_) => Some(ClipVision::load(&fixture(name), &Device::Cpu, DType::BF16).unwrap()),
        Err(why) => {
            eprintln!("skipped the cpu bf16 encoder: {why}");
            None
        }
    }
}

#[test]
fn bf16_matches_transformers_f32() {
    for name in FIXTURES {
        let Some(model) = load_bf16(name) else { return };
        assert_eq!(model.dtype(), DType::BF16);
        let dir = fixture(name);
        let want = reference(&dir)["embeddings"].clone();
        let (n, dim) = want.dims2().unwrap();
        let want = want.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let got = embed_reference_inputs(&model, n);
        let ours = embed_reference_inputs(&load(&dir), n);
        let (cos, diff) = compare(&got, &want, dim);
        let (cos_ours, _) = compare(&got, &ours, dim);
        eprintln!(
            "{name} bf16 on {}: min cosine {cos:.8} against transformers f32 (max |Δ| \
             {diff:.3e}), {cos_ours:.8} against ours in f32",
            aesthete_clip::cpu_bf16_kernel().unwrap()
        );
        assert!(cos >= BF16_MIN_COSINE, "{name}: cosine {cos} < {BF16_MIN_COSINE}");
        assert!(cos_ours >= BF16_MIN_COSINE, "{name}: cosine {cos_ours} < {BF16_MIN_COSINE}");
        // bf16 really ran: rounding the operands moves the embedding off f32.
        assert!(diff > 0.0, "{name}: bf16 gave exactly the f32 embedding");
    }
}

#[test]
fn bf16_batches_equal_single_images() {
    let Some(model) = load_bf16("tiny-vit-224-768") else { return };
    let n = 3;
    let all = embed_reference_inputs(&model, n);
    let s = model.image_size();
    let dim = model.embedding_dim();
    let pixels = pixel_values(n, s);
    for (i, image) in pixels.chunks_exact(3 * s * s).enumerate() {
        let one = candle_core::Tensor::from_slice(image, (1, 3, s, s), &candle_core::Device::Cpu)
            .unwrap();
        let single =
            model.forward_tensor(&one).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let (cos, diff) = compare(&single, &all[i * dim..(i + 1) * dim], dim);
        assert!(cos >= 0.999_999 && diff <= 1e-6, "image {i}: cos {cos}, |Δ| {diff}");
    }
}

#[test]
fn bf16_on_cpu_runs_or_says_which_instructions_are_missing() {
    let result = ClipVision::load(&fixture("tiny-vision-32"), &Device::Cpu, DType::BF16);
    match aesthete_clip::cpu_bf16_kernel() {
        Ok(kernel) => {
            eprintln!("this CPU runs bf16 on {kernel}");
            result.unwrap();
        }
        Err(_) => {
            let err = result.unwrap_err();
            assert!(matches!(err, Error::UnsupportedDtype { dtype: DType::BF16, .. }), "{err:?}");
            let text = err.to_string();
            assert!(text.contains("AMX-BF16") && text.contains("AVX512-BF16"), "{text}");
        }
    }
    let f16 = ClipVision::load(&fixture("tiny-vision-32"), &Device::Cpu, DType::F16).unwrap_err();
    assert!(matches!(f16, Error::UnsupportedDtype { dtype: DType::F16, .. }), "{f16:?}");
}

#[test]
fn bf16_has_no_portable_path() {
    let Some(model) = load_bf16("tiny-vision-32") else { return };
    let pixels = candle_core::Tensor::zeros(
        (1, 3, 32, 32),
        candle_core::DType::F32,
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let err = model.forward_tensor_candle_ops(&pixels).unwrap_err();
    assert!(err.to_string().contains("its own products only"), "{err}");
}

/// bf16 against f32 at the real ViT-L/14 shape, random weights (no Python needed).
#[test]
#[ignore = "builds a 1.2 GB random ViT-L/14: a minute on 2 cores"]
fn vit_l14_bf16_matches_f32() {
    let Ok(kernel) = aesthete_clip::cpu_bf16_kernel() else {
        eprintln!("skipped vit_l14_bf16_matches_f32: this CPU has no bf16 kernel");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let config = aesthete_clip::ClipVisionConfig::vit_large_patch14();
    aesthete_clip::write_random_model(dir.path(), &config).unwrap();
    let n = 3;
    let f32_rows = embed_reference_inputs(&load(dir.path()), n);
    let bf16 = ClipVision::load(dir.path(), &Device::Cpu, DType::BF16).unwrap();
    let bf16_rows = embed_reference_inputs(&bf16, n);
    let (cos, diff) = compare(&bf16_rows, &f32_rows, config.projection_dim);
    eprintln!("ViT-L/14 bf16 on {kernel} against f32: min cosine {cos:.8}, max |Δ| {diff:.3e}");
    assert!(cos >= BF16_MIN_COSINE, "cosine {cos} < {BF16_MIN_COSINE}");
}
