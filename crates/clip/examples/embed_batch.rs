//! Embeds a batch of (here constant) preprocessed images with a CLIP vision tower:
//! `cargo run -p aesthete-clip --example embed_batch [MODEL_DIR] [cpu|cuda]`.
use aesthete_clip::{ClipVision, DType, parse_device};
use aesthete_tensor::ImageBatch;

fn main() -> Result<(), aesthete_clip::Error> {
    let mut args = std::env::args().skip(1);
    let dir = args.next().unwrap_or_else(|| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/clip/tiny-vit-224-768").into()
    });
    let device = parse_device(&args.next().unwrap_or_else(|| "cpu".into()))?;
    let model = ClipVision::load(std::path::Path::new(&dir), &device, DType::F32)?;
    let mut batch = ImageBatch::with_capacity(4, model.image_size());
    for i in 0..4 {
        batch.push_slot().fill(i as f32 * 0.25 - 0.5);
    }
    let embeddings = model.embed(&batch)?;
    for (i, row) in embeddings.rows().enumerate() {
        println!("image {i}: {} values, first {:.5}", row.len(), row[0]);
    }
    Ok(())
}
