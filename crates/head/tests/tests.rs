//! aesthete-head's integration tests: tiny fixture heads in both layouts and formats, the
//! real LAION head's parity with PyTorch (skipped with a reason when absent), and errors.

mod support {
    use std::path::{Path, PathBuf};

    use aesthete_tensor::NormalizedEmbeddings;

    pub const REAL_HEAD: &str = "sac+logos+ava1-l14-linearMSE.pth";

    pub fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/head")
    }

    pub fn reference() -> serde_json::Value {
        let text = std::fs::read_to_string(fixtures().join("reference.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    pub fn floats(value: &serde_json::Value) -> Vec<f32> {
        value.as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect()
    }

    pub fn usize_of(value: &serde_json::Value) -> usize {
        value.as_u64().unwrap() as usize
    }

    /// `unit_vectors` of fixtures/head/generate.py, value for value.
    pub fn unit_vectors(seed: u64, n: usize, dim: usize) -> NormalizedEmbeddings {
        let mut data = Vec::with_capacity(n * dim);
        let mut row = vec![0f64; dim];
        let mut k: u64 = 0;
        for _ in 0..n {
            for v in row.iter_mut() {
                k += 1;
                let mut z = seed.wrapping_add(k.wrapping_mul(0x9E37_79B9_7F4A_7C15));
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                z ^= z >> 31;
                let u = (z >> 11) as f64 * 2f64.powi(-53);
                *v = 2.0 * u - 1.0;
            }
            let norm = row.iter().fold(0.0, |acc, v| acc + v * v).sqrt();
            data.extend(row.iter().map(|v| (v / norm) as f32));
        }
        NormalizedEmbeddings::from_normalized(data, dim).unwrap()
    }

    /// The real head in ../shared/models, or `None` after printing why the test skips.
    /// With `AESTHETE_REQUIRE_MODELS=1` a missing head fails the test instead.
    pub fn real_head(test: &str) -> Option<PathBuf> {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/models").join(REAL_HEAD);
        if path.exists() {
            return Some(path);
        }
        if std::env::var("AESTHETE_REQUIRE_MODELS").is_ok_and(|v| v == "1") {
            panic!("{test}: {} is absent and AESTHETE_REQUIRE_MODELS=1", path.display());
        }
        println!("skipping {test}: {} is absent", path.display());
        None
    }

    pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
    }
}

mod generator {
    use crate::support::*;

    /// The Rust port of the fixture generator must draw exactly the vectors Python drew.
    #[test]
    fn matches_the_python_generator() {
        let g = &reference()["generator"];
        let (seed, n, dim) = (g["seed"].as_u64().unwrap(), usize_of(&g["n"]), usize_of(&g["dim"]));
        let e = unit_vectors(seed, n, dim);
        assert_eq!(&e.row(0)[..4], &floats(&g["probe_first"])[..]);
        assert_eq!(&e.row(n - 1)[..4], &floats(&g["probe_last"])[..]);
    }
}

mod tiny {
    use aesthete_head::{AestheticHead, HeadKind, convert_pth_to_safetensors};

    use crate::support::*;

    /// PyTorch computes five f32 layers, the folded head one; both land within a few ulps.
    const TOLERANCE: f32 = 1e-5;

    fn check(name: &str, ext: &str, kind: HeadKind) {
        let case = &reference()[name];
        let head = AestheticHead::load(&fixtures().join(format!("{name}.{ext}"))).unwrap();
        assert_eq!(head.kind(), kind);
        assert_eq!(head.input_dim(), usize_of(&case["dim"]));
        let e =
            unit_vectors(case["seed"].as_u64().unwrap(), usize_of(&case["n"]), head.input_dim());
        let scores = head.score(&e).unwrap();
        let diff = max_abs_diff(&scores, &floats(&case["scores"]));
        assert!(diff <= TOLERANCE, "{name}.{ext}: max |Δ| {diff} > {TOLERANCE}");
    }

    #[test]
    fn linear_pth() {
        check("tiny-linear", "pth", HeadKind::Linear);
    }

    #[test]
    fn linear_safetensors() {
        check("tiny-linear", "safetensors", HeadKind::Linear);
    }

    #[test]
    fn relu_pth() {
        check("tiny-relu", "pth", HeadKind::Relu);
    }

    #[test]
    fn relu_safetensors() {
        check("tiny-relu", "safetensors", HeadKind::Relu);
    }

    #[test]
    fn converted_pth_scores_like_the_pth() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["tiny-linear", "tiny-relu"] {
            let src = fixtures().join(format!("{name}.pth"));
            let dst = dir.path().join(format!("{name}.safetensors"));
            convert_pth_to_safetensors(&src, &dst).unwrap();
            assert!(!dir.path().join(format!("{name}.safetensors.part")).exists());

            let (a, b) = (AestheticHead::load(&src).unwrap(), AestheticHead::load(&dst).unwrap());
            assert_eq!(a.kind(), b.kind());
            let e = unit_vectors(3, 10, a.input_dim());
            assert_eq!(a.score(&e).unwrap(), b.score(&e).unwrap(), "{name}");

            // Same names, shapes and values as the safetensors file torch wrote.
            let ours = candle_core::safetensors::load(&dst, &candle_core::Device::Cpu).unwrap();
            let theirs = candle_core::safetensors::load(
                fixtures().join(format!("{name}.safetensors")),
                &candle_core::Device::Cpu,
            )
            .unwrap();
            let mut names: Vec<_> = ours.keys().collect();
            names.sort();
            let mut expected: Vec<_> = theirs.keys().collect();
            expected.sort();
            assert_eq!(names, expected);
            for (key, t) in &theirs {
                let o = &ours[key];
                assert_eq!(o.dims(), t.dims(), "{key}");
                let diff = (o - t).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap();
                assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0, "{key}");
            }
        }
    }

    #[test]
    fn a_batch_scores_like_its_rows() {
        for name in ["tiny-linear", "tiny-relu"] {
            let head =
                AestheticHead::load(&fixtures().join(format!("{name}.safetensors"))).unwrap();
            let e = unit_vectors(11, 33, head.input_dim());
            let batch = head.score(&e).unwrap();
            for (i, row) in e.rows().enumerate() {
                let one = aesthete_tensor::NormalizedEmbeddings::from_normalized(
                    row.to_vec(),
                    head.input_dim(),
                )
                .unwrap();
                let single = head.score(&one).unwrap()[0];
                // Matrix kernels may sum in another order for another batch size.
                assert!(
                    (single - batch[i]).abs() <= 1e-6,
                    "{name} row {i}: {single} vs {}",
                    batch[i]
                );
            }
        }
    }

    #[test]
    fn an_empty_batch_has_no_scores() {
        let head = AestheticHead::load(&fixtures().join("tiny-relu.pth")).unwrap();
        let e = aesthete_tensor::NormalizedEmbeddings::from_normalized(Vec::new(), 16).unwrap();
        assert!(head.score(&e).unwrap().is_empty());
    }
}

mod real {
    use aesthete_head::{AestheticHead, HeadKind, convert_pth_to_safetensors};

    use crate::support::*;

    /// The bound for parity with PyTorch; measured differences are about 1e-6.
    const TOLERANCE: f32 = 1e-5;

    fn reference_scores() -> (aesthete_tensor::NormalizedEmbeddings, Vec<f32>) {
        let r = &reference()["real"];
        let bytes = std::fs::read(fixtures().join(r["scores"].as_str().unwrap())).unwrap();
        let scores: Vec<f32> =
            bytes.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
        assert_eq!(scores.len(), usize_of(&r["n"]));
        (unit_vectors(r["seed"].as_u64().unwrap(), usize_of(&r["n"]), usize_of(&r["dim"])), scores)
    }

    #[test]
    fn pth_matches_pytorch() {
        let Some(path) = real_head("pth_matches_pytorch") else { return };
        let head = AestheticHead::load(&path).unwrap();
        assert_eq!(head.kind(), HeadKind::Linear);
        assert_eq!(head.input_dim(), 768);
        let (e, expected) = reference_scores();
        let scores = head.score(&e).unwrap();
        let diff = max_abs_diff(&scores, &expected);
        println!("real head on {} unit vectors: max |Δ| vs PyTorch {diff:e}", scores.len());
        assert!(diff <= TOLERANCE, "max |Δ| {diff} > {TOLERANCE}");
    }

    /// The real head on the embeddings transformers made for the tiny CLIP fixture.
    #[test]
    fn fixture_embeddings_match_pytorch() {
        let Some(path) = real_head("fixture_embeddings_match_pytorch") else { return };
        let case = &reference()["real"]["fixture_embeddings"];
        let file = fixtures().join("../..").join(case["file"].as_str().unwrap());
        let tensors = candle_core::safetensors::load(&file, &candle_core::Device::Cpu).unwrap();
        let t = &tensors[case["tensor"].as_str().unwrap()];
        let (n, dim) = t.dims2().unwrap();
        let data = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let e = aesthete_tensor::NormalizedEmbeddings::from_normalized(data, dim).unwrap();
        let scores = AestheticHead::load(&path).unwrap().score(&e).unwrap();
        assert_eq!(scores.len(), n);
        let diff = max_abs_diff(&scores, &floats(&case["scores"]));
        assert!(diff <= TOLERANCE, "max |Δ| {diff} > {TOLERANCE}");
    }

    #[test]
    fn converted_matches_pytorch() {
        let Some(path) = real_head("converted_matches_pytorch") else { return };
        let dir = tempfile::tempdir().unwrap();
        let dst = dir.path().join("head.safetensors");
        convert_pth_to_safetensors(&path, &dst).unwrap();
        let head = AestheticHead::load(&dst).unwrap();
        let (e, expected) = reference_scores();
        let scores = head.score(&e).unwrap();
        assert_eq!(scores, AestheticHead::load(&path).unwrap().score(&e).unwrap());
        let diff = max_abs_diff(&scores, &expected);
        assert!(diff <= TOLERANCE, "max |Δ| {diff} > {TOLERANCE}");
    }
}

mod errors {
    use std::collections::HashMap;
    use std::path::{Path, PathBuf};

    use aesthete_head::{AestheticHead, Error, convert_pth_to_safetensors};
    use candle_core::{Device, Tensor};

    use crate::support::*;

    fn tiny_tensors() -> HashMap<String, Tensor> {
        candle_core::safetensors::load(fixtures().join("tiny-linear.safetensors"), &Device::Cpu)
            .unwrap()
    }

    fn save(dir: &Path, tensors: &HashMap<String, Tensor>) -> PathBuf {
        let path = dir.join("head.safetensors");
        candle_core::safetensors::save(tensors, &path).unwrap();
        path
    }

    fn load_err(tensors: HashMap<String, Tensor>) -> (PathBuf, Error, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let path = save(dir.path(), &tensors);
        let err = AestheticHead::load(&path).unwrap_err();
        (path, err, dir)
    }

    #[test]
    fn wrong_input_dim() {
        let head = AestheticHead::load(&fixtures().join("tiny-linear.pth")).unwrap();
        let e = unit_vectors(1, 2, 768);
        let err = head.score(&e).unwrap_err();
        assert!(matches!(err, Error::InputDim { expected: 16, actual: 768 }), "{err:?}");
        assert_eq!(err.to_string(), "embeddings have 768 values, the head takes 16");
    }

    #[test]
    fn missing_file() {
        let err = AestheticHead::load(Path::new("/nonexistent/head.pth")).unwrap_err();
        assert!(matches!(err, Error::Io { .. }), "{err:?}");
        assert!(err.to_string().contains("/nonexistent/head.pth"));
    }

    #[test]
    fn unknown_format() {
        let dir = tempfile::tempdir().unwrap();
        let text = dir.path().join("head.pth");
        std::fs::write(&text, "not a model").unwrap();
        let err = AestheticHead::load(&text).unwrap_err();
        assert!(matches!(err, Error::UnknownFormat { .. }), "{err:?}");
        assert!(err.to_string().starts_with(&format!("{} is neither", text.display())), "{err}");

        let legacy = dir.path().join("legacy.pth");
        std::fs::write(&legacy, [0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20])
            .unwrap();
        let err = AestheticHead::load(&legacy).unwrap_err();
        assert!(err.to_string().contains("legacy pre-1.6 format"), "{err}");
    }

    #[test]
    fn missing_tensor() {
        let mut t = tiny_tensors();
        t.remove("layers.4.bias");
        let (path, err, _dir) = load_err(t);
        assert!(
            matches!(&err, Error::MissingTensor { name, .. } if name == "layers.4.bias"),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            format!("{}: tensor `layers.4.bias` is missing", path.display())
        );
    }

    #[test]
    fn shape_that_does_not_chain() {
        let mut t = tiny_tensors();
        let w = t["layers.2.weight"].t().unwrap().contiguous().unwrap();
        t.insert("layers.2.weight".into(), w);
        let (_, err, _dir) = load_err(t);
        assert!(
            matches!(&err, Error::Shape { name, actual, .. } if name == "layers.2.weight" && actual == &[32, 8]),
            "{err:?}"
        );
        assert!(
            err.to_string().contains(
                "has shape [32, 8], expected [_, 32] (the previous layer has 32 outputs)"
            ),
            "{err}"
        );
    }

    #[test]
    fn last_layer_must_give_one_score() {
        let mut t = tiny_tensors();
        t.insert(
            "layers.7.weight".into(),
            Tensor::zeros((2, 4), candle_core::DType::F32, &Device::Cpu).unwrap(),
        );
        let (_, err, _dir) = load_err(t);
        assert!(matches!(&err, Error::Shape { name, .. } if name == "layers.7.weight"), "{err:?}");
    }

    #[test]
    fn unknown_layout() {
        let t: HashMap<String, Tensor> = tiny_tensors()
            .into_iter()
            .map(|(k, v)| (k.replace("layers.7.", "layers.8."), v))
            .collect();
        let (_, err, _dir) = load_err(t);
        assert!(
            matches!(&err, Error::UnknownLayout { indices, .. } if indices == &[0, 2, 4, 6, 8]),
            "{err:?}"
        );
    }

    #[test]
    fn unexpected_tensor() {
        let mut t = tiny_tensors();
        t.insert(
            "layers.0.running_mean".into(),
            Tensor::zeros(32, candle_core::DType::F32, &Device::Cpu).unwrap(),
        );
        let (_, err, _dir) = load_err(t);
        assert!(
            matches!(&err, Error::UnexpectedTensor { name, .. } if name == "layers.0.running_mean"),
            "{err:?}"
        );
    }

    #[test]
    fn non_finite_weight() {
        let mut t = tiny_tensors();
        let b = Tensor::new(&[0f32, f32::NAN, 0.0, 0.0], &Device::Cpu).unwrap();
        t.insert("layers.6.bias".into(), b);
        let (_, err, _dir) = load_err(t);
        assert!(
            matches!(&err, Error::NonFinite { name, .. } if name == "layers.6.bias"),
            "{err:?}"
        );
    }

    #[test]
    fn convert_takes_only_pth() {
        let dir = tempfile::tempdir().unwrap();
        let dst = dir.path().join("out.safetensors");
        let err = convert_pth_to_safetensors(&fixtures().join("tiny-relu.safetensors"), &dst)
            .unwrap_err();
        assert!(matches!(err, Error::UnknownFormat { .. }), "{err:?}");
        assert!(!dst.exists());
    }
}
