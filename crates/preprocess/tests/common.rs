//! Fixture loading shared by the topic modules.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde_json::Value;

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/preprocess")
}

pub fn read(rel: &str) -> Vec<u8> {
    let path = fixtures().join(rel);
    std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// One entry of `cases.json`.
#[derive(Debug, Clone)]
pub struct Case {
    pub name: String,
    pub image: String,
    pub config: String,
    pub crop_sha256: String,
    pub source_size: (u32, u32),
    pub reference: Option<String>,
    pub tensor: Option<String>,
}

pub fn cases() -> &'static HashMap<String, Case> {
    static CASES: OnceLock<HashMap<String, Case>> = OnceLock::new();
    CASES.get_or_init(|| {
        let v: Value = serde_json::from_slice(&read("cases.json")).expect("cases.json");
        v["cases"]
            .as_array()
            .expect("cases")
            .iter()
            .map(|c| {
                let s = |k: &str| c[k].as_str().map(str::to_owned);
                let size = &c["source_size"];
                let case = Case {
                    name: s("name").unwrap(),
                    image: s("image").unwrap(),
                    config: s("config").unwrap(),
                    crop_sha256: s("crop_sha256").unwrap(),
                    source_size: (
                        size[0].as_u64().unwrap() as u32,
                        size[1].as_u64().unwrap() as u32,
                    ),
                    reference: s("reference"),
                    tensor: s("tensor"),
                };
                (case.name.clone(), case)
            })
            .collect()
    })
}

/// transformers' float for each 8-bit level, per channel (`references/levels_<config>.f32`).
pub fn level_table(config_rel: &str) -> Vec<[f32; 256]> {
    let stem = Path::new(config_rel).file_stem().unwrap().to_str().unwrap();
    // The square config shares ViT-L/14's numbers.
    let stem = if stem == "square-224" { "clip-vit-large-patch14" } else { stem };
    let bytes = read(&format!("references/levels_{stem}.f32"));
    let floats: Vec<f32> =
        bytes.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
    floats.chunks_exact(256).map(|c| c.try_into().unwrap()).collect()
}

/// Recovers the 8-bit CHW crop behind a normalized tensor (the tables are injective).
pub fn to_levels(tensor: &[f32], table: &[[f32; 256]]) -> Vec<u8> {
    let plane = tensor.len() / 3;
    let maps: Vec<HashMap<u32, u8>> =
        table.iter().map(|t| (0..256).map(|v| (t[v].to_bits(), v as u8)).collect()).collect();
    tensor
        .iter()
        .enumerate()
        .map(|(i, x)| {
            *maps[i / plane]
                .get(&x.to_bits())
                .unwrap_or_else(|| panic!("output {x} at {i} is not a transformers level"))
        })
        .collect()
}

/// A reference crop PNG (HWC RGB8) as CHW levels.
pub fn reference_levels(path: &Path) -> Vec<u8> {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let decoder = png::Decoder::new(std::io::BufReader::new(file));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!(info.color_type, png::ColorType::Rgb);
    let plane = (info.width * info.height) as usize;
    let mut chw = vec![0u8; plane * 3];
    for (i, px) in buf[..plane * 3].chunks_exact(3).enumerate() {
        for c in 0..3 {
            chw[c * plane + i] = px[c];
        }
    }
    chw
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}
