//! Runs the whole pipeline from code: the fixture shards through the tiny fixture CLIP and
//! head, keeping samples that score at least 5, into a temporary directory:
//! `cargo run -p aesthete-pipeline --example run_pipeline [OUTPUT_DIR]`.
use aesthete_pipeline::{DType, Device, ModelPaths, Models, NoProgress, RunConfig, Selection};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures");
    let out = std::env::args().nth(1).unwrap_or_else(|| {
        std::env::temp_dir().join("aesthete-example").to_string_lossy().into_owned()
    });
    let config = RunConfig::new([format!("{fixtures}/pipeline/shards/good-*.tar")], &out)?
        .selection(Selection::Threshold(5.0))?
        .overwrite(true);
    let paths = ModelPaths {
        clip_dir: format!("{fixtures}/clip/tiny-vit-224-768").into(),
        head_file: format!("{fixtures}/pipeline/head-768.safetensors").into(),
    };
    let models = Models::load(&paths, &Device::Cpu, DType::F32)?;
    let summary = aesthete_pipeline::run(&config, &models, &NoProgress)?;
    println!(
        "{} shards, {} samples, {} kept, {} failed; outputs in {out}",
        summary.shards, summary.samples, summary.kept, summary.failed_samples
    );
    Ok(())
}
