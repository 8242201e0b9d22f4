//! Broken checkpoints and inputs are errors that say what is wrong.

use aesthete_clip::{ClipVision, DType, Device, Error};
use aesthete_tensor::ImageBatch;
use candle_core::Tensor;

use crate::util::*;

fn load_err(dir: &std::path::Path) -> Error {
    match ClipVision::load(dir, &Device::Cpu, DType::F32) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => e,
    }
}

#[test]
fn missing_tensor_is_named() {
    let dir = copy_fixture("tiny-vit-224-768");
    let name = "vision_model.encoder.layers.1.mlp.fc2.bias";
    rewrite_safetensors(&dir.path().join("model.safetensors"), |t| {
        t.remove(name).unwrap();
    });
    let err = load_err(dir.path());
    assert!(matches!(&err, Error::MissingTensor { name: n, .. } if n == name), "{err:?}");
    assert!(err.to_string().contains(name), "{err}");
}

#[test]
fn config_asking_for_more_layers_than_stored_is_a_missing_tensor() {
    let dir = copy_fixture("tiny-vision-32");
    let config = std::fs::read_to_string(dir.path().join("config.json")).unwrap();
    let config = config.replace("\"num_hidden_layers\": 3", "\"num_hidden_layers\": 4");
    std::fs::write(dir.path().join("config.json"), config).unwrap();
    let err = load_err(dir.path());
    assert!(err.to_string().contains("vision_model.encoder.layers.3."), "{err}");
}

#[test]
fn misshaped_tensor_names_expected_and_actual() {
    let dir = copy_fixture("tiny-vit-224-768");
    let name = "vision_model.post_layernorm.weight";
    rewrite_safetensors(&dir.path().join("model.safetensors"), |t| {
        t.insert(
            name.to_string(),
            Tensor::ones(31, candle_core::DType::F32, &candle_core::Device::Cpu).unwrap(),
        );
    });
    let err = load_err(dir.path());
    match &err {
        Error::TensorShape { name: n, expected, actual } => {
            assert_eq!(
                (n.as_str(), expected.as_slice(), actual.as_slice()),
                (name, &[32][..], &[31][..])
            );
        }
        other => panic!("{other:?}"),
    }
    let message = err.to_string();
    assert!(
        message.contains(name) && message.contains("[31]") && message.contains("[32]"),
        "{message}"
    );
}

#[test]
fn integer_tensor_is_refused() {
    let dir = copy_fixture("tiny-vision-32");
    let name = "vision_model.pre_layrnorm.bias";
    rewrite_safetensors(&dir.path().join("model.safetensors"), |t| {
        t.insert(
            name.to_string(),
            Tensor::zeros(24, candle_core::DType::U8, &candle_core::Device::Cpu).unwrap(),
        );
    });
    let err = load_err(dir.path());
    assert!(matches!(&err, Error::TensorDtype { name: n, .. } if n == name), "{err:?}");
}

#[test]
fn bad_config_is_refused() {
    let dir = copy_fixture("tiny-gelu-28");
    let path = dir.path().join("config.json");
    let config = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, config.replace("\"hidden_act\": \"gelu\"", "\"hidden_act\": \"swish\""))
        .unwrap();
    let err = load_err(dir.path());
    assert!(matches!(&err, Error::Config { field: "hidden_act", .. }), "{err:?}");
    assert!(err.to_string().contains("swish"), "{err}");

    std::fs::write(&path, "{ not json").unwrap();
    assert!(matches!(load_err(dir.path()), Error::Json { .. }));

    std::fs::remove_file(&path).unwrap();
    assert!(matches!(load_err(dir.path()), Error::Io { path: p, .. } if p == path));
}

#[test]
fn directory_without_safetensors_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(fixture("tiny-vision-32").join("config.json"), dir.path().join("config.json"))
        .unwrap();
    std::fs::write(dir.path().join("pytorch_model.bin"), b"pickle").unwrap();
    let err = load_err(dir.path());
    assert!(matches!(&err, Error::NoWeights { .. }), "{err:?}");
    assert!(err.to_string().contains("convert it to safetensors"), "{err}");
}

#[test]
fn corrupt_safetensors_is_refused() {
    let dir = copy_fixture("tiny-vision-32");
    std::fs::write(dir.path().join("model.safetensors"), b"\x10\0\0\0\0\0\0\0{garbage").unwrap();
    assert!(matches!(load_err(dir.path()), Error::Safetensors { .. }));
}

#[test]
fn cpu_refuses_f16() {
    let err = ClipVision::load(&fixture("tiny-vision-32"), &Device::Cpu, DType::F16).unwrap_err();
    assert!(matches!(err, Error::UnsupportedDtype { dtype: DType::F16, .. }), "{err:?}");
}

#[test]
fn wrong_image_size_is_refused() {
    let model = load(&fixture("tiny-vision-32"));
    let mut batch = ImageBatch::with_capacity(1, 28);
    batch.push_slot().fill(0.0);
    let err = model.embed(&batch).unwrap_err();
    assert!(matches!(err, Error::ImageSize { expected: 32, actual: 28 }), "{err:?}");
    let pixels =
        Tensor::zeros((1, 3, 28, 28), candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
    let err = model.forward_tensor(&pixels).unwrap_err();
    assert!(err.to_string().contains("expected (n, 3, 32, 32)"), "{err}");
}

#[test]
fn non_finite_output_is_an_error_not_an_embedding() {
    let model = load(&fixture("tiny-vision-32"));
    let mut batch = ImageBatch::with_capacity(1, 32);
    batch.push_slot().fill(f32::NAN);
    assert!(matches!(model.embed(&batch), Err(Error::Embeddings(_))));
}

#[test]
fn model_reads_exactly_the_checkpoint_tensors() {
    use std::collections::HashMap;

    use aesthete_clip::ClipVisionConfig;
    use aesthete_clip::candle::VarBuilder;

    let config =
        ClipVisionConfig::from_json_file(&fixture("tiny-vision-32").join("config.json")).unwrap();
    let all: HashMap<String, Tensor> = config
        .checkpoint_tensors()
        .into_iter()
        .map(|(name, shape)| {
            (name, Tensor::ones(shape, candle_core::DType::F32, &candle_core::Device::Cpu).unwrap())
        })
        .collect();
    let build = |tensors: HashMap<String, Tensor>| {
        ClipVision::from_var_builder(
            VarBuilder::from_tensors(tensors, candle_core::DType::F32, &candle_core::Device::Cpu),
            &config,
        )
    };
    build(all.clone()).expect("the listed tensors suffice");
    for name in all.keys() {
        let mut fewer = all.clone();
        fewer.remove(name);
        assert!(build(fewer).is_err(), "built without {name}");
    }
}
