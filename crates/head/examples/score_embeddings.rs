//! Scores L2-normalized embeddings with an aesthetic head:
//! `cargo run -p aesthete-head --example score_embeddings [HEAD.safetensors]`.
use aesthete_head::AestheticHead;
use aesthete_tensor::NormalizedEmbeddings;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args().nth(1).unwrap_or_else(|| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/pipeline/head-768.safetensors").into()
    });
    let head = AestheticHead::load(std::path::Path::new(&path))?;
    // Two directions in the head's input space; `normalize` gives them unit length.
    let dim = 768;
    let rows: Vec<f32> = (0..2 * dim).map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0).collect();
    let embeddings = NormalizedEmbeddings::normalize(rows, dim)?;
    for (i, score) in head.score(&embeddings)?.iter().enumerate() {
        println!("embedding {i}: score {score:.4}");
    }
    Ok(())
}
