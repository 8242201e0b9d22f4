//! f32 multi-head self-attention of the CPU encoder, image by image and head by head:
//! `p = q · kᵀ` (q pre-scaled), a softmax over each row of `p`, then `p · v` into the head's
//! columns of the output.
//!
//! A head's two products run one of two ways, picked once per call ([`Products::detect`]):
//! - [`Products::Avx512`]: register-blocked kernels of our own (`avx512`) over the keys
//!   transposed and the values gathered into contiguous rows, each once per head;
//! - [`Products::Gemm`]: two `gemm` calls reading q, k and v in place through strides.
//!
//! At ViT-L/14's heads (257 tokens of 64) `gemm` ran `q · kᵀ` at about 98 and `p · v` at
//! about 149 GFLOP/s per Xeon core, against about 200 for its layer-sized products: with K
//! 64 deep, or the output 64 wide, its packing is paid for by few multiply-adds.

use std::sync::Mutex;

use rayon::prelude::*;

use super::{Dims, HeadOperands, Operands, SharedMut, Strided, bf16, grown, product};
use crate::ops::kernels;

#[cfg(target_arch = "x86_64")]
mod avx512;

/// How a head's two products run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Products {
    /// Kernels of our own on zmm registers (AVX-512F).
    #[cfg(target_arch = "x86_64")]
    Avx512,
    /// `gemm` calls, on every CPU and head size.
    Gemm,
}

impl Products {
    /// The fastest way this CPU runs heads of `head_dim`.
    pub(super) fn detect(head_dim: usize) -> Products {
        Products::available(head_dim)[0]
    }

    /// Every way this CPU runs heads of `head_dim`, fastest first.
    #[cfg_attr(
        not(target_arch = "x86_64"),
        allow(unused_variables, unused_mut, clippy::vec_init_then_push)
    )]
    fn available(head_dim: usize) -> Vec<Products> {
        let mut all = Vec::new();
        #[cfg(target_arch = "x86_64")]
        if avx512::available() && head_dim > 0 {
            all.push(Products::Avx512);
        }
        all.push(Products::Gemm);
        all
    }
}

/// Multi-head self-attention over the fused projection `qkv` (`n · s × 3h`: q pre-scaled,
/// then k, then v), writing each head's output into its columns of `out` (`n · s × h`). With
/// [`Operands::Bf16`] (`qkv` already rounded by the caller), each probability is rounded to
/// bf16 before `p · v`, as the packed bf16 attention rounds its operands. Each
/// task takes its thread's buffers from `heads_operands` (one per rayon thread; nothing
/// inside a task starts parallel work, so no thread wants its buffers twice at once).
pub(super) fn attention(
    qkv: &[f32],
    out: &mut [f32],
    heads_operands: &[Mutex<HeadOperands>],
    operands: Operands,
    d: &Dims,
) {
    attention_by(Products::detect(d.head_dim()), qkv, out, heads_operands, operands, d)
}

fn attention_by(
    products: Products,
    qkv: &[f32],
    out: &mut [f32],
    heads_operands: &[Mutex<HeadOperands>],
    operands: Operands,
    d: &Dims,
) {
    let (s, h, heads, hd) = (d.s, d.hidden, d.heads, d.head_dim());
    let stride = 3 * h;
    // Inside a head's task: nothing here may start parallel work (see `HeadOperands`).
    let softmax = |p: &mut [f32]| {
        kernels::softmax_rows(p, s);
        if operands == Operands::Bf16 {
            bf16::round_in_place(p, bf16::Threads::This);
        }
    };
    assert!(qkv.len() == d.rows() * stride && out.len() == d.rows() * h);
    assert!(!heads_operands.is_empty(), "no attention operands");
    let out = SharedMut(out.as_mut_ptr());
    (0..d.n * heads).into_par_iter().for_each(move |task| {
        let out = out;
        let mut ops = HeadOperands::of_this_thread(heads_operands);
        let ops = &mut *ops;
        let (image, head) = (task / heads, task % heads);
        let head_qkv = &qkv[image * s * stride + head * hd..];
        // This head's s rows of q, k and v: hd values each, rows `stride` apart.
        let (q, k, v) = (head_qkv, &head_qkv[h..], &head_qkv[2 * h..]);
        let p = grown(&mut ops.scores, s * s);
        let dst = out.0.wrapping_add(image * s * h + head * hd);
        match products {
            #[cfg(target_arch = "x86_64")]
            Products::Avx512 => {
                let row = avx512::keys_row(s);
                ops.keys.resize(hd * row, 0.0);
                // Sixteen keys at a time: their rows stay in L1 while each of hd output rows
                // gets one cache line of them.
                for j0 in (0..s).step_by(16) {
                    let block = (s - j0).min(16);
                    for (d, keys) in ops.keys.chunks_exact_mut(row).enumerate() {
                        for (j, x) in keys[j0..j0 + block].iter_mut().enumerate() {
                            *x = k[(j0 + j) * stride + d];
                        }
                    }
                }
                // The padding past the s keys must be zero: its columns are summed, not stored.
                ops.keys.chunks_exact_mut(row).for_each(|keys| keys[s..].fill(0.0));
                // SAFETY: the CPU has AVX-512F (`Products::available`); q's s rows of hd lie
                // in `qkv` (the assert above), `keys` holds hd rows of `row`, `p` is s × s.
                unsafe {
                    avx512::scores(q.as_ptr(), stride, ops.keys.as_ptr(), s, hd, p.as_mut_ptr())
                };
                softmax(p);
                ops.values.clear();
                head_rows(v, stride, s, hd).for_each(|value| ops.values.extend_from_slice(value));
                // SAFETY: as above; `values` holds s rows of hd; rows
                // `image · s ..` and columns `head · hd ..` of `out` (n · s × h, inside it by
                // the assert above) belong to this task alone.
                unsafe { avx512::values(p.as_ptr(), s, ops.values.as_ptr(), hd, dst, h) };
            }
            Products::Gemm => {
                // SAFETY: q, k and v address rows `image · s .. (image + 1) · s` and columns
                // `head · hd .. (head + 1) · hd` of their third of `qkv`, inside it by the
                // assert above; `p` is this task's own `s × s` buffer.
                unsafe {
                    // p = q · kᵀ
                    product(
                        (s, s, hd),
                        Strided::rows(p.as_mut_ptr(), s),
                        Strided::rows(q.as_ptr(), stride),
                        Strided::columns(k.as_ptr(), stride),
                        false,
                    );
                }
                softmax(p);
                // SAFETY: as above; the output block (same rows, this head's columns of
                // `out`) belongs to this task alone.
                unsafe {
                    // out = p · v
                    product(
                        (s, hd, s),
                        Strided::rows(dst, h),
                        Strided::rows(p.as_ptr(), s),
                        Strided::rows(v.as_ptr(), stride),
                        false,
                    );
                }
            }
        }
    });
}

/// The `s` rows of `hd` values from `m` on, rows `stride` apart.
#[cfg(target_arch = "x86_64")]
fn head_rows(m: &[f32], stride: usize, s: usize, hd: usize) -> impl Iterator<Item = &[f32]> {
    m.chunks(stride).take(s).map(move |row| &row[..hd])
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::{Products, attention_by};
    use crate::Activation;
    use crate::cpu::{Dims, HeadOperands, Operands, bf16};

    /// Each way to run the products this CPU has, against an f64 reference of the same
    /// attention, at token counts and head sizes that are not multiples of the kernels'
    /// blocks (8 and 6 rows, 48 and 64 columns), ViT-L/14's own among them; with f32
    /// operands, and with bf16 ones (q, k and v rounded before, the probabilities rounded
    /// inside: the reference takes the rounded q, k and v, and the bound grows by what
    /// rounding each probability can move the output, 2^-8 relatively each: half a bf16
    /// unit in the last place).
    #[test]
    fn every_way_matches_a_scalar_reference() {
        #[cfg(target_arch = "x86_64")]
        if !std::arch::is_x86_feature_detected!("avx512f") {
            eprintln!(
                "every_way_matches_a_scalar_reference: skipped the AVX-512 kernels: this CPU lacks AVX-512F"
            );
        }
        for (n, s, heads, hd) in [
            (2, 1, 2, 16),
            (1, 5, 3, 16),
            (2, 17, 2, 32),
            (1, 50, 1, 80),
            (1, 257, 2, 64),
            (1, 9, 2, 24),
            (2, 50, 4, 8),
        ] {
            let h = heads * hd;
            let d = Dims {
                n,
                s,
                hidden: h,
                heads,
                intermediate: 4 * h,
                eps: 1e-5,
                act: Activation::QuickGelu,
            };
            // Values in [-1, 1): scores of a few units, a softmax far from uniform.
            let qkv: Vec<f32> =
                crate::cpu::random(n * s * 3 * h, 7).iter().map(|v| v * 2.0).collect();
            let mut rounded = qkv.clone();
            bf16::round_in_place(&mut rounded, bf16::Threads::All);
            for (operands, qkv) in [(Operands::F32, &qkv), (Operands::Bf16, &rounded)] {
                let want = reference(qkv, &d);
                let widen = match operands {
                    Operands::F32 => 0.0,
                    Operands::Bf16 => 2f64.powi(-8),
                };
                for products in Products::available(hd) {
                    for threads in [1, 3] {
                        let pool =
                            rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                        let buffers: Vec<Mutex<HeadOperands>> =
                            (0..threads).map(|_| Default::default()).collect();
                        let mut got = vec![f32::NAN; n * s * h];
                        pool.install(|| {
                            attention_by(products, qkv, &mut got, &buffers, operands, &d)
                        });
                        for (at, (got, w)) in got.iter().zip(&want).enumerate() {
                            let (want, bound) = (w.value, w.bound + widen * w.scale);
                            let diff = (f64::from(*got) - want).abs();
                            assert!(
                                diff <= bound,
                                "{products:?} {operands:?}, {threads} threads, n {n} s {s} \
                                 heads {heads} hd {hd}, token {} column {}: {got} against \
                                 {want} (bound {bound})",
                                at / h,
                                at % h
                            );
                        }
                        if operands == Operands::Bf16 {
                            // The probabilities really were rounded.
                            let mut unrounded = vec![f32::NAN; n * s * h];
                            pool.install(|| {
                                let f32_operands = Operands::F32;
                                attention_by(
                                    products,
                                    qkv,
                                    &mut unrounded,
                                    &buffers,
                                    f32_operands,
                                    &d,
                                )
                            });
                            assert!(
                                s == 1 || got != unrounded,
                                "{products:?}, n {n} s {s}: rounding the probabilities changed nothing"
                            );
                        }
                    }
                }
            }
        }
    }

    /// One output of the reference attention.
    #[derive(Debug, Clone, Copy)]
    struct Reference {
        value: f64,
        /// What an f32 computation may be off by.
        bound: f64,
        /// Σ p |v|: what the output sums.
        scale: f64,
    }

    /// Each output of the attention in f64, with the bound on an f32 computation's error: the
    /// scores' summation error (at most (hd + 1) · eps · Σ|q k| each) moves each probability
    /// by at most twice that relatively (its exp, and the sum it is divided by); exp, the
    /// division and the sum over s probabilities add (2 s + 8) · eps relatively; all of it
    /// scaled by Σ p |v|, what the output sums.
    fn reference(qkv: &[f32], d: &Dims) -> Vec<Reference> {
        let (s, h, hd) = (d.s, d.hidden, d.head_dim());
        let eps = f64::from(f32::EPSILON);
        let at = |image: usize, token: usize, third: usize, head: usize, c: usize| {
            f64::from(qkv[(image * s + token) * 3 * h + third * h + head * hd + c])
        };
        let mut out = vec![Reference { value: 0.0, bound: 0.0, scale: 0.0 }; d.rows() * h];
        for image in 0..d.n {
            for head in 0..d.heads {
                for i in 0..s {
                    let terms = |j: usize| {
                        (0..hd).map(move |c| at(image, i, 0, head, c) * at(image, j, 1, head, c))
                    };
                    let scores: Vec<f64> = (0..s).map(|j| terms(j).sum()).collect();
                    let magnitude =
                        (0..s).map(|j| terms(j).map(f64::abs).sum::<f64>()).fold(0.0, f64::max);
                    let max = scores.iter().copied().fold(f64::MIN, f64::max);
                    let e: Vec<f64> = scores.iter().map(|x| (x - max).exp()).collect();
                    let sum: f64 = e.iter().sum();
                    let relative =
                        2.0 * (hd + 1) as f64 * eps * magnitude + (2 * s + 8) as f64 * eps;
                    for c in 0..hd {
                        let value = |j: usize| at(image, j, 2, head, c);
                        let want: f64 = (0..s).map(|j| e[j] / sum * value(j)).sum();
                        let scale: f64 = (0..s).map(|j| e[j] / sum * value(j).abs()).sum();
                        out[(image * s + i) * h + head * hd + c] =
                            Reference { value: want, bound: relative * scale, scale };
                    }
                }
            }
        }
        out
    }
}
