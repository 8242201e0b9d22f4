//! Throughput of `ClipVision::forward` at the real ViT-L/14 shape (random weights), f32 on CPU.
//!
//! `cargo bench -p aesthete-clip --bench vit`; batch sizes from `AESTHETE_BENCH_BATCHES`
//! (default `1,4`; 16 is slow on 2 cores); `AESTHETE_BENCH_PORTABLE=1` also times the
//! candle-ops path. Compare with `fixtures/clip/bench_torch.py`.

use std::collections::HashMap;

use aesthete_clip::{ClipVision, ClipVisionConfig, DType, Device, VarBuilder};
use candle_core::Tensor;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

fn random_vit_l14() -> ClipVision {
    let config = ClipVisionConfig::vit_large_patch14();
    let dev = Device::Cpu;
    let mut tensors = HashMap::new();
    for (name, shape) in config.checkpoint_tensors() {
        let t = if name.contains("norm") && name.ends_with(".weight") {
            Tensor::ones(shape, DType::F32, &dev)
        } else {
            Tensor::randn(0f32, 0.02, shape, &dev)
        };
        tensors.insert(name, t.unwrap());
    }
    ClipVision::new(VarBuilder::from_tensors(tensors, DType::F32, &dev), &config).unwrap()
}

fn batches() -> Vec<usize> {
    let spec = std::env::var("AESTHETE_BENCH_BATCHES").unwrap_or_else(|_| "1,4".to_string());
    spec.split(',')
        .map(|s| s.trim().parse().expect("AESTHETE_BENCH_BATCHES: comma-separated sizes"))
        .collect()
}

fn forward(c: &mut Criterion) {
    let model = random_vit_l14();
    let mut group = c.benchmark_group("clip_vit_l14_f32_cpu");
    group.sample_size(10);
    for n in batches() {
        let pixels = Tensor::randn(0f32, 1.0, (n, 3, 224, 224), &Device::Cpu).unwrap();
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new("forward", n), &pixels, |b, pixels| {
            b.iter(|| model.forward(pixels).unwrap())
        });
        if std::env::var_os("AESTHETE_BENCH_PORTABLE").is_some() {
            // The candle-ops path (what CUDA runs), for comparison.
            group.bench_with_input(BenchmarkId::new("forward_portable", n), &pixels, |b, p| {
                b.iter(|| model.forward_portable(p).unwrap())
            });
        }
    }
    group.finish();
}

criterion_group!(benches, forward);
criterion_main!(benches);
