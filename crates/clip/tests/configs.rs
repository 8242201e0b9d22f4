//! The exact `config.json` of `openai/clip-vit-large-patch14` at the revision
//! `cargo xtask fetch-models` pins (an old form: legacy `text_config_dict` and
//! `vision_config_dict` beside `vision_config`) reads as ViT-L/14.

use aesthete_clip::ClipVisionConfig;

use crate::util::fixture;

#[test]
fn the_pinned_openai_config_reads_as_vit_l14() {
    let path = fixture("openai-clip-vit-large-patch14-32bd642").join("config.json");
    let text = std::fs::read_to_string(&path).unwrap();
    // The old form is what this test is about: fail loudly if the fixture was "modernised".
    assert!(text.contains("\"vision_config_dict\"") && text.contains("\"text_config_dict\""));
    let config = ClipVisionConfig::from_json_file(&path).unwrap();
    assert_eq!(config, ClipVisionConfig::vit_large_patch14());
}
