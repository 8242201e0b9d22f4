//! Throughput of `ClipVision::forward` at the real ViT-L/14 shape (random weights) on CPU, in
//! f32 and, where the CPU has AMX-BF16 or AVX512-BF16, in bf16.
//!
//! `cargo bench -p aesthete-clip --bench vit`; batch sizes from `AESTHETE_BENCH_BATCHES`
//! (default `1,4`; 16 is slow on 2 cores); `AESTHETE_BENCH_PORTABLE=1` also times the
//! candle-ops path. Compare with `fixtures/clip/bench_torch.py`.
//!
//! `products_f32_cpu/vit_l14/BATCH` times the forward pass's f32 matrix products alone,
//! through the encoder's own product (compare `bench_torch.py --products`).
//!
//! `sgemm_f32_cpu/gemm/2048` measures the machine's f32 matrix-multiply peak through the gemm
//! crate the CPU encoder calls (throughput in FLOP/s, as "elements"): with PyTorch's own sgemm
//! peak, `cargo xtask bench` turns it into the ceiling for ViT-L/14 images/s on this machine.

use aesthete_clip::{ClipVision, ClipVisionConfig, DType, Device};
use candle_core::Tensor;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

fn random_vit_l14(dtype: DType) -> ClipVision {
    let dir = tempfile::tempdir().unwrap();
    aesthete_clip::write_random_model(dir.path(), &ClipVisionConfig::vit_large_patch14()).unwrap();
    ClipVision::load(dir.path(), &Device::Cpu, dtype).unwrap()
}

fn batches() -> Vec<usize> {
    let spec = std::env::var("AESTHETE_BENCH_BATCHES").unwrap_or_else(|_| "1,4".to_string());
    spec.split(',')
        .map(|s| s.trim().parse().expect("AESTHETE_BENCH_BATCHES: comma-separated sizes"))
        .collect()
}

fn forward(c: &mut Criterion) {
    forward_in(c, DType::F32);
    match aesthete_clip::cpu_bf16_kernel() {
        Ok(_) => forward_in(c, DType::BF16),
        Err(why) => eprintln!("clip_vit_l14_bf16_cpu skipped: {why}"),
    }
}

fn forward_in(c: &mut Criterion, dtype: DType) {
    // Written and loaded once, by the group's first bench that runs, so that a filter
    // leaving the group out costs nothing.
    let model = std::cell::OnceCell::new();
    let model = || model.get_or_init(|| random_vit_l14(dtype));
    let mut group = c.benchmark_group(format!("clip_vit_l14_{}_cpu", dtype.as_str()));
    group.sample_size(10);
    for n in batches() {
        let pixels = Tensor::randn(0f32, 1.0, (n, 3, 224, 224), &candle_core::Device::Cpu).unwrap();
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new("forward", n), &pixels, |b, pixels| {
            let model = model();
            b.iter(|| model.forward_tensor(pixels).unwrap())
        });
        if dtype == DType::F32 && std::env::var_os("AESTHETE_BENCH_PORTABLE").is_some() {
            // The candle-ops path (what CUDA runs), for comparison.
            group.bench_with_input(BenchmarkId::new("forward_portable", n), &pixels, |b, p| {
                let model = model();
                b.iter(|| model.forward_tensor_candle_ops(p).unwrap())
            });
        }
    }
    group.finish();
}

/// `C = A · B` for square f32 matrices, on every thread, as the encoder's linear layers run.
fn sgemm_peak(c: &mut Criterion) {
    const N: usize = 2048;
    let a: Vec<f32> = (0..N * N).map(|i| (i % 7) as f32 * 0.25).collect();
    let b: Vec<f32> = (0..N * N).map(|i| (i % 5) as f32 * 0.5).collect();
    let mut out = vec![0f32; N * N];
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut group = c.benchmark_group("sgemm_f32_cpu");
    group.sample_size(10);
    group.throughput(Throughput::Elements(2 * (N as u64).pow(3)));
    group.bench_function(BenchmarkId::new("gemm", N), |bench| {
        bench.iter(|| {
            // SAFETY: three row-major N × N matrices, `out` distinct from the inputs.
            unsafe {
                gemm::gemm(
                    N,
                    N,
                    N,
                    out.as_mut_ptr(),
                    1,
                    N as isize,
                    false,
                    a.as_ptr(),
                    1,
                    N as isize,
                    b.as_ptr(),
                    1,
                    N as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::Rayon(threads),
                )
            }
        })
    });
    group.finish();
}

/// The matrix products of one ViT-L/14 forward pass alone, through the encoder's own
/// [`aesthete_clip::cpu_matmul_f32`]: each layer's four (q, k and v fused, the out
/// projection, fc1, fc2) at `batch · 257` rows, each stored over its output (the encoder adds
/// the out projection's and fc2's into the residual stream instead), over every layer's own
/// weights (1.2 GB, so
/// that they stream from memory as the model's do). Throughput in FLOP (as "elements"):
/// `cargo xtask bench` sets it beside PyTorch's `F.linear` at the same shapes and beside the
/// forward pass, to tell the products' speed from the rest's.
fn products(c: &mut Criterion) {
    let config = ClipVisionConfig::vit_large_patch14();
    let (h, i) = (config.hidden_size, config.intermediate_size);
    let tokens = config.num_positions();
    // (k, n) of `x (rows × k) · Wᵀ (k × n)`, in the order a layer runs them.
    let shapes = [(h, 3 * h), (h, h), (h, i), (i, h)];
    // Made once, by the group's first bench that runs, so that a filter leaving the group
    // out costs nothing.
    let weights = std::cell::OnceCell::new();
    let weights = || -> &Vec<Vec<Vec<f32>>> {
        weights.get_or_init(|| {
            (0..config.num_hidden_layers)
                .map(|layer| {
                    let value = |j: usize| ((j + layer) % 13) as f32 * 0.01 - 0.06;
                    shapes.iter().map(|&(k, n)| (0..k * n).map(value).collect()).collect()
                })
                .collect()
        })
    };
    let mut group = c.benchmark_group("products_f32_cpu");
    group.sample_size(10);
    for batch in batches() {
        let rows = batch * tokens;
        let flop: usize =
            shapes.iter().map(|&(k, n)| 2 * rows * k * n).sum::<usize>() * config.num_hidden_layers;
        group.throughput(Throughput::Elements(flop as u64));
        // Both written here, so that no page of them is first touched inside the timing.
        let x: Vec<f32> = (0..rows * i).map(|j| (j % 7) as f32 * 0.1).collect();
        let mut out = vec![1f32; rows * i];
        group.bench_function(BenchmarkId::new("vit_l14", batch), |b| {
            let weights = weights();
            b.iter(|| {
                for layer in weights {
                    for (&(k, n), w) in shapes.iter().zip(layer) {
                        let (x, out) = (&x[..rows * k], &mut out[..rows * n]);
                        aesthete_clip::cpu_matmul_f32(out, x, w, (rows, n, k));
                    }
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, sgemm_peak, products, forward);
criterion_main!(benches);
