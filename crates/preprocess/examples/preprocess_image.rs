//! Decodes one image and preprocesses it exactly as CLIP's `CLIPImageProcessor` does:
//! `cargo run -p aesthete-preprocess --example preprocess_image [IMAGE]`.
use aesthete_preprocess::{PreprocessConfig, PreprocessOptions, Preprocessor};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args().nth(1).unwrap_or_else(|| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/preprocess/images/chelsea_rgb.png")
            .into()
    });
    let mut engine = Preprocessor::new(PreprocessConfig::clip_vit_l14(), PreprocessOptions::new())?;
    let mut pixels = vec![0f32; engine.output_len()];
    let info = engine.preprocess(&std::fs::read(&path)?, &mut pixels)?;
    let mean = pixels.iter().sum::<f32>() / pixels.len() as f32;
    println!(
        "{path}: {:?} {}×{} → 3×{s}×{s}, mean {mean:.4}",
        info.format,
        info.width,
        info.height,
        s = engine.image_size()
    );
    Ok(())
}
