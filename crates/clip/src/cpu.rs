//! The encoder layers on CPU in f32, as direct `gemm` calls over buffers reused across layers
//! and calls.
//!
//! Same arithmetic as the candle path in `model.rs`, minus its per-op tensors: biases and
//! residuals are accumulated by the matrix products themselves, q, k and v are read from the
//! fused projection in place through strides, each head's output is written straight into
//! its columns, and softmax and the activation run in place. On 2 cores the allocations and
//! passes this saves are about a quarter of the time the candle path takes.

use candle_core::{CpuStorage, Layout, Result, Storage, Tensor, bail};
use gemm::{Parallelism, gemm};
use rayon::prelude::*;

use crate::Activation;
use crate::ops::kernels;

/// Sizes of one forward pass.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Dims {
    /// Images.
    pub(crate) n: usize,
    /// Tokens per image.
    pub(crate) s: usize,
    pub(crate) hidden: usize,
    pub(crate) heads: usize,
    pub(crate) intermediate: usize,
    pub(crate) eps: f32,
    pub(crate) act: Activation,
}

impl Dims {
    fn rows(&self) -> usize {
        self.n * self.s
    }

    fn head_dim(&self) -> usize {
        self.hidden / self.heads
    }
}

/// Scratch buffers, grown on demand and kept for the next call.
#[derive(Default)]
pub(crate) struct Workspace {
    normed: Vec<f32>,
    qkv: Vec<f32>,
    attn: Vec<f32>,
    mlp: Vec<f32>,
    scores: Vec<f32>,
}

impl std::fmt::Debug for Workspace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let floats = self.normed.len()
            + self.qkv.len()
            + self.attn.len()
            + self.mlp.len()
            + self.scores.len();
        f.debug_struct("Workspace").field("floats", &floats).finish()
    }
}

impl Workspace {
    fn fit(&mut self, d: &Dims) {
        let m = d.rows();
        grow(&mut self.normed, m * d.hidden);
        grow(&mut self.qkv, m * 3 * d.hidden);
        grow(&mut self.attn, m * d.hidden);
        grow(&mut self.mlp, m * d.intermediate);
        grow(&mut self.scores, d.n * d.heads * d.s * d.s);
    }
}

fn grow(v: &mut Vec<f32>, len: usize) {
    if v.len() < len {
        v.resize(len, 0.0);
    }
}

/// The tensors of one encoder layer, in the order [`run_layer`] reads them: layer_norm1
/// weight and bias, fused qkv weight `(3h, h)` and bias, out_proj weight and bias,
/// layer_norm2 weight and bias, fc1 weight and bias, fc2 weight and bias.
pub(crate) type LayerTensors<'a> = [&'a Tensor; 12];

/// Runs encoder layers over the residual stream `x` (`n · s × hidden`, row-major) in place.
pub(crate) fn run_layers<'a>(
    x: &mut [f32],
    layers: impl Iterator<Item = LayerTensors<'a>>,
    dims: &Dims,
    ws: &mut Workspace,
) -> Result<()> {
    if x.len() != dims.rows() * dims.hidden {
        bail!("residual stream has {} values, expected {}", x.len(), dims.rows() * dims.hidden);
    }
    ws.fit(dims);
    for tensors in layers {
        let guards = tensors.map(|t| t.storage_and_layout());
        let mut w = [&[][..]; 12];
        for (slot, (storage, layout)) in w.iter_mut().zip(&guards) {
            *slot = f32_data(storage, layout)?;
        }
        run_layer(x, &w, dims, ws)?;
    }
    Ok(())
}

fn f32_data<'a>(storage: &'a Storage, layout: &Layout) -> Result<&'a [f32]> {
    match (storage, layout.contiguous_offsets()) {
        (Storage::Cpu(CpuStorage::F32(v)), Some((start, end))) => Ok(&v[start..end]),
        _ => bail!("cpu encoder needs contiguous f32 weights on the cpu"),
    }
}

fn run_layer(x: &mut [f32], w: &[&[f32]; 12], d: &Dims, ws: &mut Workspace) -> Result<()> {
    let [ln1_w, ln1_b, qkv_w, qkv_b, out_w, out_b, ln2_w, ln2_b, fc1_w, fc1_b, fc2_w, fc2_b] = *w;
    let (m, h, i) = (d.rows(), d.hidden, d.intermediate);
    let expect = [h, h, 3 * h * h, 3 * h, h * h, h, h, h, i * h, i, h * i, h];
    if w.iter().zip(expect).any(|(s, len)| s.len() != len) {
        bail!("cpu encoder layer weights do not match hidden {h}, intermediate {i}");
    }
    let normed = &mut ws.normed[..m * h];
    let qkv = &mut ws.qkv[..m * 3 * h];
    let attn = &mut ws.attn[..m * h];
    let mlp = &mut ws.mlp[..m * i];
    let scores = &mut ws.scores[..d.n * d.heads * d.s * d.s];

    layer_norm(x, normed, ln1_w, ln1_b, h, d.eps);
    fill_rows(qkv, qkv_b);
    matmul_acc(qkv, normed, qkv_w, m, 3 * h, h);
    attention(qkv, attn, scores, d);
    add_rows(x, out_b);
    matmul_acc(x, attn, out_w, m, h, h);

    layer_norm(x, normed, ln2_w, ln2_b, h, d.eps);
    fill_rows(mlp, fc1_b);
    matmul_acc(mlp, normed, fc1_w, m, i, h);
    let act = match d.act {
        Activation::QuickGelu => kernels::quick_gelu,
        Activation::Gelu => kernels::gelu_erf,
        Activation::GeluTanh => kernels::gelu_tanh,
    };
    mlp.par_chunks_mut(16 * 1024).for_each(act);
    add_rows(x, fc2_b);
    matmul_acc(x, mlp, fc2_w, m, h, i);
    Ok(())
}

fn parallelism() -> Parallelism {
    match rayon::current_num_threads() {
        0 | 1 => Parallelism::None,
        n => Parallelism::Rayon(n),
    }
}

/// `dst (m × n) += a (m × k) · wᵀ` for `w` stored `n × k` row-major (a Linear weight).
fn matmul_acc(dst: &mut [f32], a: &[f32], w: &[f32], m: usize, n: usize, k: usize) {
    assert!(dst.len() == m * n && a.len() == m * k && w.len() == n * k);
    // SAFETY: the asserts above keep every access of the three row-major matrices in bounds;
    // `dst` is borrowed mutably and does not overlap the inputs.
    unsafe {
        gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            true,
            a.as_ptr(),
            1,
            k as isize,
            w.as_ptr(),
            k as isize,
            1,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism(),
        )
    }
}

fn fill_rows(dst: &mut [f32], row: &[f32]) {
    dst.par_chunks_mut(row.len()).with_min_len(16).for_each(|d| d.copy_from_slice(row));
}

fn add_rows(dst: &mut [f32], row: &[f32]) {
    dst.par_chunks_mut(row.len())
        .with_min_len(16)
        .for_each(|d| d.iter_mut().zip(row).for_each(|(d, r)| *d += r));
}

fn layer_norm(x: &[f32], out: &mut [f32], weight: &[f32], bias: &[f32], h: usize, eps: f32) {
    out.par_chunks_mut(h)
        .zip(x.par_chunks(h))
        .with_min_len(16)
        .for_each(|(o, x)| kernels::layer_norm(x, o, weight, bias, eps));
}

/// A pointer that rayon tasks writing disjoint parts of one buffer may share.
#[derive(Clone, Copy)]
struct SharedMut(*mut f32);
// SAFETY: every task writes a disjoint set of elements (its own head's columns of its own
// image's rows), and the buffer outlives the parallel loop.
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

/// Multi-head self-attention over the fused projection `qkv` (`n · s × 3h`: q pre-scaled,
/// then k, then v), writing each head's output into its columns of `out` (`n · s × h`).
fn attention(qkv: &[f32], out: &mut [f32], scores: &mut [f32], d: &Dims) {
    let (s, h, heads, hd) = (d.s, d.hidden, d.heads, d.head_dim());
    let stride = 3 * h;
    assert!(qkv.len() == d.rows() * stride && out.len() == d.rows() * h);
    assert!(scores.len() == d.n * heads * s * s);
    let out = SharedMut(out.as_mut_ptr());
    scores.par_chunks_mut(s * s).enumerate().for_each(move |(task, p)| {
        let out = out;
        let (image, head) = (task / heads, task % heads);
        let base = image * s * stride + head * hd;
        let q = qkv[base..].as_ptr();
        let k = qkv[base + h..].as_ptr();
        let v = qkv[base + 2 * h..].as_ptr();
        // SAFETY: q, k and v address rows `image · s .. (image + 1) · s` and columns
        // `head · hd .. (head + 1) · hd` of their third of `qkv`, inside it by the assert
        // above; `p` is this task's own `s × s` block; the output block (same rows, same
        // columns of `out`) belongs to this task alone.
        unsafe {
            // p = q · kᵀ
            gemm(
                s,
                s,
                hd,
                p.as_mut_ptr(),
                1,
                s as isize,
                false,
                q,
                1,
                stride as isize,
                k,
                stride as isize,
                1,
                0.0,
                1.0,
                false,
                false,
                false,
                Parallelism::None,
            );
        }
        p.chunks_exact_mut(s).for_each(kernels::softmax);
        // SAFETY: as above.
        unsafe {
            // out = p · v
            gemm(
                s,
                hd,
                s,
                out.0.add(image * s * h + head * hd),
                1,
                h as isize,
                false,
                p.as_ptr(),
                1,
                s as isize,
                v,
                1,
                stride as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                Parallelism::None,
            );
        }
    });
}

#[cfg(test)]
mod tests {
    /// `matmul_acc` (the `gemm` crate, AVX-512F, AVX2+FMA or portable kernels as this CPU
    /// has them) against a plain f64 triple loop, on shapes that are not multiples of any
    /// kernel's tile, K included.
    #[test]
    fn matmul_matches_a_scalar_reference() {
        #[cfg(target_arch = "x86_64")]
        eprintln!(
            "matmul_matches_a_scalar_reference: gemm runs its {} kernels here",
            if std::arch::is_x86_feature_detected!("avx512f") {
                "AVX-512F"
            } else if std::arch::is_x86_feature_detected!("avx2") {
                "AVX2+FMA"
            } else {
                "baseline"
            }
        );
        let mut state = 0x1234_5678_9abc_def0u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        };
        for (m, n, k) in [(1, 1, 1), (5, 3, 7), (17, 33, 65), (257, 48, 31), (64, 1031, 97)] {
            let a: Vec<f32> = (0..m * k).map(|_| next()).collect();
            let w: Vec<f32> = (0..n * k).map(|_| next()).collect();
            let init: Vec<f32> = (0..m * n).map(|_| next()).collect();
            let mut got = init.clone();
            super::matmul_acc(&mut got, &a, &w, m, n, k);
            for i in 0..m {
                for j in 0..n {
                    let products =
                        (0..k).map(|t| f64::from(a[i * k + t]) * f64::from(w[j * k + t]));
                    let c = f64::from(init[i * n + j]);
                    let want = c + products.clone().sum::<f64>();
                    let magnitude = c.abs() + products.map(f64::abs).sum::<f64>();
                    // The forward error bound of any order of f32 summation of k + 1 terms
                    // (fused or not): (k + 1) · eps · Σ|terms|.
                    let bound = (k + 1) as f64 * f64::from(f32::EPSILON) * magnitude;
                    let diff = (f64::from(got[i * n + j]) - want).abs();
                    assert!(diff <= bound, "{m}x{n}x{k} at ({i}, {j}): {diff} > {bound}");
                }
            }
        }
    }
}
