//! Parity at the real ViT-L/14 shape, against a random model that transformers builds.
//!
//! Needs Python with torch and transformers; skipped (with a printed reason) without them,
//! unless `AESTHETE_REQUIRE_PYTHON=1`. `AESTHETE_PYTHON` picks the interpreter;
//! `AESTHETE_VIT_L14_DIR` names a directory `make_vit_l14.py` already wrote, to skip Python.
//! Writes 1.2 GB to a temporary directory and takes minutes on 2 cores, so it is ignored by
//! default: `cargo test -p aesthete-clip -- --ignored vit_l14`.

use std::process::Command;

use crate::util::*;

fn python() -> String {
    std::env::var("AESTHETE_PYTHON").unwrap_or_else(|_| "python3".to_string())
}

fn python_unavailable() -> Option<String> {
    let out = Command::new(python()).args(["-c", "import transformers, torch"]).output();
    match out {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(format!(
            "`{} -c \"import transformers, torch\"` failed: {}",
            python(),
            String::from_utf8_lossy(&o.stderr).lines().last().unwrap_or("")
        )),
        Err(e) => Some(format!("cannot run `{}`: {e}", python())),
    }
}

#[test]
#[ignore = "builds a 1.2 GB random ViT-L/14 with transformers: minutes on 2 cores"]
fn vit_l14_matches_transformers() {
    if let Some(dir) = std::env::var_os("AESTHETE_VIT_L14_DIR") {
        return check(std::path::Path::new(&dir));
    }
    if let Some(reason) = python_unavailable() {
        if std::env::var("AESTHETE_REQUIRE_PYTHON").is_ok_and(|v| v == "1") {
            panic!("AESTHETE_REQUIRE_PYTHON=1 but {reason}");
        }
        eprintln!("skipping vit_l14_matches_transformers: {reason}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let script = fixture("make_vit_l14.py");
    let status = Command::new(python()).arg(&script).arg(dir.path()).status().unwrap();
    assert!(status.success(), "{} failed", script.display());
    check(dir.path());
}

/// Parity with the config transformers wrote, then again with the exact `config.json` of
/// `openai/clip-vit-large-patch14` at the pinned revision (its old form, a `CLIPModel` config
/// with legacy `*_config_dict` keys) over the same weights.
fn check(dir: &std::path::Path) {
    let want = reference(dir)["embeddings"].clone();
    let want = want.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let model = load(dir);
    assert_eq!(model.config(), &aesthete_clip::ClipVisionConfig::vit_large_patch14());
    assert_parity("random ViT-L/14", &embed_reference_inputs(&model, 2), &want, 768);

    let pinned = tempfile::tempdir().unwrap();
    let config = fixture("openai-clip-vit-large-patch14-32bd642").join("config.json");
    std::fs::copy(config, pinned.path().join("config.json")).unwrap();
    // A second name for the 1.2 GB of weights, not a copy (same file system as `dir` unless
    // AESTHETE_VIT_L14_DIR points elsewhere; then it is copied).
    let weights = pinned.path().join("model.safetensors");
    if std::fs::hard_link(dir.join("model.safetensors"), &weights).is_err() {
        std::fs::copy(dir.join("model.safetensors"), &weights).unwrap();
    }
    let model = load(pinned.path());
    assert_eq!(model.config(), &aesthete_clip::ClipVisionConfig::vit_large_patch14());
    let got = embed_reference_inputs(&model, 2);
    assert_parity("random ViT-L/14, openai's pinned config.json", &got, &want, 768);
}
