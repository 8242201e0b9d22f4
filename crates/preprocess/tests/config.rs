//! `PreprocessConfig` from `preprocessor_config.json`.

use aesthete_preprocess::{Error, Filter, PreprocessConfig, ResizeTarget};

use crate::common::fixtures;

#[test]
fn vit_l14_json_equals_the_constructor() {
    let path = fixtures().join("configs/clip-vit-large-patch14.json");
    let config = PreprocessConfig::from_json_file(&path).unwrap();
    assert_eq!(config, PreprocessConfig::clip_vit_l14());
    assert_eq!(config.image_size(), 224);
    assert_eq!(config.rescale_factor, 0.00392156862745098);
}

/// The exact bytes `openai/clip-vit-large-patch14` has at the revision `fetch-models` pins: an
/// old form with integer `size`/`crop_size` and `feature_extractor_type`.
#[test]
fn the_pinned_openai_file_equals_the_constructor() {
    let path =
        fixtures().join("../clip/openai-clip-vit-large-patch14-32bd642/preprocessor_config.json");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("\"feature_extractor_type\"") && text.contains("\"size\": 224"));
    let config = PreprocessConfig::from_json_file(&path).unwrap();
    assert_eq!(config, PreprocessConfig::clip_vit_l14());
}

#[test]
fn dict_form_and_336() {
    let c = PreprocessConfig::from_json_file(&fixtures().join("configs/square-224.json")).unwrap();
    assert_eq!(c.resize, ResizeTarget::Exact { height: 224, width: 224 });
    let c = PreprocessConfig::from_json_file(
        &fixtures().join("configs/clip-vit-large-patch14-336.json"),
    )
    .unwrap();
    assert_eq!(c, PreprocessConfig::clip_vit_l14_336());
    let c = PreprocessConfig::from_json_str(
        r#"{"size": {"shortest_edge": 256}, "crop_size": {"height": 224, "width": 224},
            "resample": 2, "image_mean": 0.5, "image_std": [0.5, 0.5, 0.5],
            "do_normalize": false}"#,
    )
    .unwrap();
    assert_eq!(c.resize, ResizeTarget::ShortestEdge(256));
    assert_eq!(c.filter, Filter::Bilinear);
    assert_eq!(c.image_mean, [0.5; 3]);
    assert!(!c.do_normalize);
}

#[test]
fn malformed_configs_are_errors() {
    for (json, why) in [
        ("not json", "not json"),
        ("[1, 2]", "not an object"),
        (r#"{"crop_size": {"height": 224, "width": 200}}"#, "not square"),
        (r#"{"resample": 0}"#, "nearest"),
        (r#"{"size": 200, "crop_size": 224}"#, "crop larger than resize"),
        (r#"{"image_std": [0.2, 0.0, 0.2]}"#, "zero std"),
        (r#"{"image_mean": [0.2, 0.2]}"#, "two means"),
        (r#"{"do_center_crop": false}"#, "no crop"),
        (r#"{"size": -3}"#, "negative size"),
    ] {
        let e = PreprocessConfig::from_json_str(json).unwrap_err();
        assert!(matches!(e, Error::Config { .. }), "{why}: {e:?}");
    }
    let e = PreprocessConfig::from_json_file(std::path::Path::new("/nonexistent/config.json"))
        .unwrap_err();
    assert!(matches!(e, Error::Io { .. }), "{e:?}");
}
