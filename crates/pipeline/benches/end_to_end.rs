//! End-to-end images/s of the pipeline against model-only images/s, same batch size and dtype.
//!
//! `cargo bench -p aesthete-pipeline --bench end_to_end`. Two models:
//! - `vit_l14`: random weights of the real ViT-L/14 shape (written to a temporary model
//!   directory), the figure that matters: end to end should be ≥ 0.95 × model only, i.e.
//!   decoding is hidden behind the model. Four batches of 4, so that decoding the next batch
//!   can overlap the model (one batch cannot show it). Slow: about 40 s per iteration on 2
//!   cores. `AESTHETE_BENCH_SKIP_VIT_L=1` skips it.
//! - `tiny`: the tiny fixture CLIP, where the model costs almost nothing, so the figure is the
//!   pipeline's own ceiling (read, decode, preprocess, write) in the steady state a long run
//!   is in: 64 batches of 32, the default batch size. A run's fixed costs (filling and
//!   draining the stages, starting threads, first touching its image buffers, committing
//!   files) were a fifth of the figure at 8 batches of 8, and 3% of it at 16 batches of 32
//!   (`aesthete filter` on 512 of these samples: 737-744 images/s; on 2,048: 762-767).
//!   Beside it, `preprocess_one_core`: the same images decoded and preprocessed on one
//!   thread, so that `cargo xtask bench` can hold the pipeline to cores × one core's rate
//!   (feeding a GPU), and `preprocess_all_cores`: the same on every core at once, each with
//!   its own preprocessor, to show how far the cores themselves scale.
use std::path::{Path, PathBuf};

use aesthete_clip::{ClipVisionConfig, DType, Device};
use aesthete_pipeline::{ModelPaths, Models, NoProgress, RunConfig, Selection};
use aesthete_preprocess::{PreprocessOptions, Preprocessor};
use aesthete_shards::{Sample, ShardWriter};
use aesthete_tensor::ImageBatch;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

/// JPEG photos from the preprocessing fixtures (0.27 MP and 1 MP, alternating).
fn photos() -> Vec<Vec<u8>> {
    let dir = fixtures().join("preprocess/images");
    ["rocket.jpg", "retina_large_1000.jpg"]
        .iter()
        .map(|name| std::fs::read(dir.join(name)).expect("fixture photo"))
        .collect()
}

/// One shard of `images` samples (a JPEG and a caption each) in `dir`.
fn write_shard(dir: &Path, images: usize) -> PathBuf {
    let photos = photos();
    let path = dir.join("bench-000000.tar");
    let mut writer = ShardWriter::create(&path).unwrap();
    for i in 0..images {
        let sample = Sample::new(format!("{i:06}"))
            .with("jpg", photos[i % photos.len()].clone())
            .with("txt", format!("caption {i}").into_bytes());
        writer.write_sample(&sample).unwrap();
    }
    writer.commit().unwrap();
    path
}

/// A model directory with random ViT-L/14 weights and the fixtures' preprocessing config.
fn random_vit_l14(dir: &Path) -> PathBuf {
    let model_dir = dir.join("vit-l14");
    aesthete_clip::write_random_model(&model_dir, &ClipVisionConfig::vit_large_patch14()).unwrap();
    std::fs::copy(
        fixtures().join("clip/tiny-vit-224-768/preprocessor_config.json"),
        model_dir.join("preprocessor_config.json"),
    )
    .unwrap();
    model_dir
}

/// Distinct preprocessed batches the model-only benchmark holds (308 MB at 32 images each).
const MODEL_ONLY_BATCHES: usize = 16;

/// Model only and end to end on `batches` batches of `batch` images.
fn bench_model(c: &mut Criterion, name: &str, clip_dir: &Path, batch_size: usize, batches: usize) {
    let images = batch_size * batches;
    let tmp = tempfile::tempdir().unwrap();
    let shard = write_shard(tmp.path(), images);
    let paths = ModelPaths {
        clip_dir: clip_dir.to_path_buf(),
        head_file: fixtures().join("pipeline/head-768.safetensors"),
    };
    let models = Models::load(&paths, &Device::Cpu, DType::F32).unwrap();

    // Model only: the same images, preprocessed once, in batches of `batch_size`; at most
    // `MODEL_ONLY_BATCHES` distinct ones, taken in turn (the photos repeat anyway).
    let mut pre =
        Preprocessor::new(models.preprocess_config().clone(), PreprocessOptions::default())
            .unwrap();
    let photos = photos();
    let distinct = images.min(batch_size * MODEL_ONLY_BATCHES);
    let mut batches = Vec::new();
    let mut batch = ImageBatch::with_capacity(batch_size, pre.image_size());
    for i in 0..distinct {
        pre.preprocess(&photos[i % photos.len()], batch.push_slot()).unwrap();
        if batch.is_full() || i + 1 == distinct {
            batches.push(std::mem::replace(
                &mut batch,
                ImageBatch::with_capacity(batch_size, pre.image_size()),
            ));
        }
    }

    let mut group = c.benchmark_group(format!("pipeline_{name}_f32_cpu"));
    group.sample_size(10);
    group.throughput(Throughput::Elements(images as u64));
    if name == "tiny" {
        let mut slot = vec![0f32; pre.output_len()];
        group.bench_function(BenchmarkId::new("preprocess_one_core", batch_size), |b| {
            b.iter(|| {
                for i in 0..images {
                    pre.preprocess(&photos[i % photos.len()], &mut slot).unwrap();
                }
            })
        });
        let config = models.preprocess_config().clone();
        group.bench_function(BenchmarkId::new("preprocess_all_cores", batch_size), |b| {
            use rayon::prelude::*;
            b.iter(|| {
                (0..images).into_par_iter().for_each_init(
                    || {
                        let options = PreprocessOptions::default();
                        let pre = Preprocessor::new(config.clone(), options).unwrap();
                        let slot = vec![0f32; pre.output_len()];
                        (pre, slot)
                    },
                    |(pre, slot), i| {
                        pre.preprocess(&photos[i % photos.len()], slot).unwrap();
                    },
                )
            })
        });
    }
    group.bench_function(BenchmarkId::new("model_only", batch_size), |b| {
        b.iter(|| {
            for batch in batches.iter().cycle().take(images.div_ceil(batch_size)) {
                let embeddings = models.clip().embed(batch).unwrap();
                models.head().score(&embeddings).unwrap();
            }
        })
    });
    let out = tmp.path().join("out");
    let config = RunConfig::new([shard.display().to_string()], &out)
        .unwrap()
        .selection(Selection::Threshold(5.0))
        .unwrap()
        .batch_size(batch_size)
        .unwrap()
        .overwrite(true);
    group.bench_function(BenchmarkId::new("end_to_end", batch_size), |b| {
        b.iter(|| aesthete_pipeline::run(&config, &models, &NoProgress).unwrap())
    });
    group.finish();
}

fn end_to_end(c: &mut Criterion) {
    bench_model(c, "tiny", &fixtures().join("clip/tiny-vit-224-768"), 32, 64);
    if std::env::var_os("AESTHETE_BENCH_SKIP_VIT_L").is_none() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = random_vit_l14(tmp.path());
        bench_model(c, "vit_l14", &dir, 4, 4);
    }
}

criterion_group!(benches, end_to_end);
criterion_main!(benches);
