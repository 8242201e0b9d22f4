//! Scoring throughput of the folded linear head and the relu head at LAION's sizes.

use aesthete_head::AestheticHead;
use aesthete_tensor::NormalizedEmbeddings;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

/// Writes a random head of the reference shape (768→1024→128→64→16→1) in `kind`'s layout.
fn head(dir: &std::path::Path, relu: bool) -> AestheticHead {
    use candle_core::{DType, Device, Tensor};
    let indices = if relu { [0, 3, 6, 9, 11] } else { [0, 2, 4, 6, 7] };
    let widths = [768, 1024, 128, 64, 16, 1];
    let mut tensors = std::collections::HashMap::new();
    for (k, i) in indices.iter().enumerate() {
        let scale = 1.0 / (widths[k] as f64).sqrt();
        let w = (Tensor::randn(0f32, 1.0, (widths[k + 1], widths[k]), &Device::Cpu).unwrap()
            * scale)
            .unwrap();
        tensors.insert(format!("layers.{i}.weight"), w);
        tensors.insert(
            format!("layers.{i}.bias"),
            Tensor::zeros(widths[k + 1], DType::F32, &Device::Cpu).unwrap(),
        );
    }
    let path = dir.join(if relu { "relu.safetensors" } else { "linear.safetensors" });
    candle_core::safetensors::save(&tensors, &path).unwrap();
    AestheticHead::load(&path).unwrap()
}

fn embeddings(n: usize) -> NormalizedEmbeddings {
    let data = (0..n * 768).map(|i| ((i * 7919 % 1000) as f32) - 500.0).collect();
    NormalizedEmbeddings::normalize(data, 768).unwrap()
}

fn score(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let mut group = c.benchmark_group("score");
    for (name, relu) in [("linear", false), ("relu", true)] {
        let head = head(dir.path(), relu);
        for n in [32, 4096] {
            let e = embeddings(n);
            group.throughput(Throughput::Elements(n as u64));
            group.bench_with_input(BenchmarkId::new(name, n), &e, |b, e| {
                b.iter(|| head.score(e).unwrap())
            });
        }
    }
    group.finish();
}

criterion_group!(benches, score);
criterion_main!(benches);
