//! Embeddings against transformers' `get_image_features` + L2 norm, in f32 on CPU.

use aesthete_clip::{Activation, ClipVisionConfig};
use aesthete_tensor::ImageBatch;

use crate::util::*;

#[test]
fn inputs_match_the_generator() {
    for name in FIXTURES {
        let dir = fixture(name);
        let reference = reference(&dir);
        let probe = reference["pixel_probe"].to_vec2::<f32>().unwrap();
        let sums = reference["pixel_sum"].to_vec1::<f64>().unwrap();
        let size = ClipVisionConfig::from_json_file(&dir.join("config.json")).unwrap().image_size;
        let pixels = pixel_values(probe.len(), size);
        for (n, (row, sum)) in probe.iter().zip(&sums).enumerate() {
            let image = &pixels[n * 3 * size * size..(n + 1) * 3 * size * size];
            assert_eq!(&image[..16], row.as_slice(), "{name} image {n}");
            let got: f64 = image.iter().map(|&v| f64::from(v)).sum();
            assert!((got - sum).abs() < 1e-6, "{name} image {n}: sum {got} != {sum}");
        }
    }
}

#[test]
fn fixtures_cover_the_config_variants() {
    let config = |name| ClipVisionConfig::from_json_file(&fixture(name).join("config.json"));
    let c224 = config("tiny-vit-224-768").unwrap();
    assert_eq!((c224.image_size, c224.patch_size, c224.projection_dim), (224, 32, 768));
    let gelu = config("tiny-gelu-28").unwrap();
    assert_eq!((gelu.hidden_act, gelu.layer_norm_eps), (Activation::Gelu, 1e-3));
    assert_eq!(config("tiny-vision-32").unwrap().projection_dim, 20);
}

#[test]
fn tiny_fixtures_match_transformers() {
    for name in FIXTURES {
        let dir = fixture(name);
        let model = load(&dir);
        let want = reference(&dir)["embeddings"].clone();
        let (n, dim) = want.dims2().unwrap();
        assert_eq!(dim, model.embedding_dim());
        let got = embed_reference_inputs(&model, n);
        let want = want.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_parity(name, &got, &want, dim);
    }
}

#[test]
fn batches_equal_single_images() {
    for name in FIXTURES {
        let model = load(&fixture(name));
        let s = model.image_size();
        let pixels = pixel_values(3, s);
        let mut batch = model.image_batch(3);
        for image in pixels.chunks_exact(3 * s * s) {
            batch.push_slot().copy_from_slice(image);
        }
        let all = model.embed(&batch).unwrap();
        assert_eq!(all.len(), 3);
        for (i, image) in pixels.chunks_exact(3 * s * s).enumerate() {
            let mut one = ImageBatch::with_capacity(1, s);
            one.push_slot().copy_from_slice(image);
            let single = model.embed(&one).unwrap();
            let (cos, diff) = compare(single.row(0), all.row(i), model.embedding_dim());
            assert!(cos >= 0.999_999 && diff <= 1e-6, "{name} image {i}: cos {cos}, |Δ| {diff}");
        }
    }
}

/// The batch a model hands out has its image size and the capacity asked for; on CPU its
/// values are a plain `Vec` (page-locked memory is for CUDA models).
#[test]
fn a_models_own_batch_fits_it() {
    let model = load(&fixture("tiny-vision-32"));
    let batch = model.image_batch(3);
    assert_eq!((batch.capacity(), batch.image_size(), batch.len()), (3, model.image_size(), 0));
    assert!(!batch.in_supplied_memory());
}

/// Batches embedded one after another come back in order, each with what `embed` gives
/// it, a batch of the wrong image size with its error in its place; a break stops the run.
#[test]
fn embed_each_hands_batches_back_in_order() {
    let model = load(&fixture("tiny-vision-32"));
    let s = model.image_size();
    let pixels = pixel_values(5, s);
    let mut batches = Vec::new();
    for (tag, images) in [(0, 2), (1, 0), (2, 3)] {
        let mut batch = model.image_batch(3);
        for image in pixels.chunks_exact(3 * s * s).skip(tag).take(images) {
            batch.push_slot().copy_from_slice(image);
        }
        batches.push(batch);
    }
    batches.insert(2, ImageBatch::with_capacity(1, s + 1));
    let want: Vec<_> = batches.iter().map(|b| model.embed(b).map(|e| e.into_vec())).collect();
    let mut got = Vec::new();
    model.embed_each(&batches, |batch, embedded| {
        got.push((batch.len(), embedded.map(|e| e.into_vec())));
        std::ops::ControlFlow::Continue(())
    });
    assert_eq!(got.len(), 4);
    for (i, ((len, got), want)) in got.iter().zip(&want).enumerate() {
        assert_eq!(*len, batches[i].len());
        match (got, want) {
            (Ok(got), Ok(want)) => assert_eq!(got, want, "batch {i}"),
            (Err(got), Err(want)) => assert_eq!(got.to_string(), want.to_string()),
            _ => panic!("batch {i}: {got:?} against {want:?}"),
        }
    }
    let mut seen = 0;
    model.embed_each(&batches, |_, _| {
        seen += 1;
        std::ops::ControlFlow::Break(())
    });
    assert_eq!(seen, 1);
}

#[test]
fn empty_batch_gives_no_embeddings() {
    let model = load(&fixture("tiny-vision-32"));
    let batch = ImageBatch::with_capacity(2, 32);
    let e = model.embed(&batch).unwrap();
    assert!(e.is_empty());
    assert_eq!(e.dim(), 20);
}

#[test]
fn portable_path_matches_transformers() {
    // The second implementation, in candle operations, held to the same bar.
    for name in FIXTURES {
        let dir = fixture(name);
        let model = load(&dir);
        let want = reference(&dir)["embeddings"].clone();
        let (n, dim) = want.dims2().unwrap();
        let s = model.image_size();
        let pixels = candle_core::Tensor::from_vec(
            pixel_values(n, s),
            (n, 3, s, s),
            &candle_core::Device::Cpu,
        )
        .unwrap();
        let got = model
            .forward_tensor_candle_ops(&pixels)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let want = want.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_parity(&format!("{name} (portable)"), &got, &want, dim);
    }
}

#[test]
fn model_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<aesthete_clip::ClipVision>();
}

/// A CPU model in f16 built through the candle door (no CPU encoder runs f16) computes with
/// candle's operations, near transformers in f32: f16 keeps 11 significant bits, so the bar
/// is a cosine of 0.999, not parity's.
#[test]
fn an_f16_model_built_through_candle_runs_candle_operations() {
    let dir = fixture("tiny-vision-32");
    let config = ClipVisionConfig::from_json_file(&dir.join("config.json")).unwrap();
    // SAFETY: the fixture file is not modified while mapped.
    let vb = unsafe {
        aesthete_clip::candle::VarBuilder::from_mmaped_safetensors(
            &[dir.join("model.safetensors")],
            candle_core::DType::F16,
            &candle_core::Device::Cpu,
        )
    }
    .unwrap();
    let model = aesthete_clip::ClipVision::from_var_builder(vb, &config).unwrap();
    let want = reference(&dir)["embeddings"].clone();
    let (n, dim) = want.dims2().unwrap();
    let s = model.image_size();
    let pixels =
        candle_core::Tensor::from_vec(pixel_values(n, s), (n, 3, s, s), &candle_core::Device::Cpu)
            .unwrap();
    let got = model.forward_tensor(&pixels).unwrap().flatten_all().unwrap().to_vec1::<f32>();
    let want = want.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let (cos, _) = compare(&got.unwrap(), &want, dim);
    assert!(cos >= 0.999, "f16 through candle: cosine {cos}");
}
