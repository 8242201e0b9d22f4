//! The forward pass around the encoder layers, over the CPU encoder's reused buffers: pixels to
//! tokens (patch embedding, class token, positions, `pre_layrnorm`) and class tokens to
//! embeddings (`post_layernorm`, projection, L2 norm).
//!
//! The same arithmetic as the candle operations in `model.rs` (`Embeddings::forward` and the
//! end of `forward_with`), in the same order: patch products, then the positions added, then
//! the norm. Written out because candle's versions allocate a fresh tensor for each of about
//! ten steps, an image's worth of floats each (at batch 32, 32 MiB a step that the kernel
//! zeroes page by page), which cost more than a small model's encoder layers.

use candle_core::{Result, bail};
use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
use super::SharedMut;
use super::{Dims, Order, Strided, product};
use crate::ops::kernels;

#[cfg(target_arch = "x86_64")]
mod avx512;

/// The weights outside the encoder layers, as f32 values read in place.
#[derive(Debug, Clone, Copy)]
pub(crate) struct OuterWeights<'a> {
    /// `patch_embedding.weight` as `(hidden, channels · patch²)`, in either order (CPU
    /// models hold it transposed, [`Order::Columns`]).
    pub(crate) patch: (&'a [f32], Order),
    pub(crate) class: &'a [f32],
    /// `(tokens, hidden)`.
    pub(crate) position: &'a [f32],
    pub(crate) pre_norm: [&'a [f32]; 2],
    pub(crate) post_norm: [&'a [f32]; 2],
    /// `visual_projection.weight`, `(projection_dim, hidden)`.
    pub(crate) projection: &'a [f32],
    pub(crate) projection_dim: usize,
}

/// How pixels cut into patches: `(n, channels, size, size)` images, `grid × grid` patches of
/// `patch × patch` (pixels past the last whole patch are ignored, as by the strided
/// convolution).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Patches {
    pub(crate) channels: usize,
    pub(crate) size: usize,
    pub(crate) patch: usize,
    pub(crate) grid: usize,
}

impl Patches {
    /// Values of one flattened patch, in the order of the convolution's weight (channel,
    /// row, column).
    fn len(&self) -> usize {
        self.channels * self.patch * self.patch
    }

    /// Writes image `image`'s patches, row after row of the grid, into `out` (`grid² ×
    /// len()`).
    fn flatten(&self, pixels: &[f32], image: usize, out: &mut [f32]) {
        let (c, s, p, g) = (self.channels, self.size, self.patch, self.grid);
        let image = &pixels[image * c * s * s..][..c * s * s];
        for (at, row) in out.chunks_exact_mut(self.len()).enumerate() {
            let (gy, gx) = (at / g, at % g);
            for (ch, plane) in row.chunks_exact_mut(p * p).enumerate() {
                for (py, dst) in plane.chunks_exact_mut(p).enumerate() {
                    let from = ch * s * s + (gy * p + py) * s + gx * p;
                    dst.copy_from_slice(&image[from..from + p]);
                }
            }
        }
    }
}

impl OuterWeights<'_> {
    fn check(&self, d: &Dims, patches: &Patches) -> Result<()> {
        let h = d.hidden;
        let got = [
            self.patch.0.len(),
            self.class.len(),
            self.position.len(),
            self.pre_norm[0].len(),
            self.pre_norm[1].len(),
            self.post_norm[0].len(),
            self.post_norm[1].len(),
            self.projection.len(),
        ];
        let expect = [h * patches.len(), h, d.s * h, h, h, h, h, self.projection_dim * h];
        if got != expect || d.s != patches.grid * patches.grid + 1 {
            bail!("cpu encoder: embedding weights do not match hidden {h} and {} tokens", d.s);
        }
        Ok(())
    }
}

/// How the patch products run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PatchProducts {
    /// Straight from the pixels, on zmm registers (`avx512`: AVX-512F, the weight held
    /// transposed).
    #[cfg(target_arch = "x86_64")]
    Avx512,
    /// Each image's patches flattened, then one `gemm` call, on every CPU and weight order.
    Gemm,
}

impl PatchProducts {
    /// Every way this CPU runs the patch products of a weight in `order`, fastest first.
    #[cfg_attr(
        not(target_arch = "x86_64"),
        allow(unused_variables, unused_mut, clippy::vec_init_then_push)
    )]
    fn available(order: Order) -> Vec<PatchProducts> {
        let mut all = Vec::new();
        #[cfg(target_arch = "x86_64")]
        if avx512::available() && order == Order::Columns {
            all.push(PatchProducts::Avx512);
        }
        all.push(PatchProducts::Gemm);
        all
    }
}

/// Writes the tokens of `n` images into `stream` (`n · s × hidden`): each image's class
/// token and patch products plus the positions, through `pre_layrnorm`. `flat` and
/// `products` are scratch (grown here).
pub(crate) fn tokens(
    pixels: &[f32],
    patches: &Patches,
    w: &OuterWeights<'_>,
    d: &Dims,
    scratch: [&mut super::AlignedF32; 2],
    stream: &mut [f32],
) -> Result<()> {
    let way = PatchProducts::available(w.patch.1)[0];
    tokens_by(way, pixels, patches, w, d, scratch, stream)
}

/// [`tokens`], its patch products run `way`.
fn tokens_by(
    way: PatchProducts,
    pixels: &[f32],
    patches: &Patches,
    w: &OuterWeights<'_>,
    d: &Dims,
    scratch: [&mut super::AlignedF32; 2],
    stream: &mut [f32],
) -> Result<()> {
    w.check(d, patches)?;
    let (n, s, h) = (d.n, d.s, d.hidden);
    let grid2 = patches.grid * patches.grid;
    let image_len = patches.channels * patches.size * patches.size;
    if pixels.len() != n * image_len || stream.len() != n * s * h {
        bail!("cpu encoder: {} pixel values for {n} images of {image_len}", pixels.len());
    }
    let [flat, products] = scratch;
    products.grow(n * grid2 * h);
    let products = &mut products.as_mut_slice()[..n * grid2 * h];
    match way {
        #[cfg(target_arch = "x86_64")]
        PatchProducts::Avx512 => {
            // One task per image and block of 48 hidden columns: batch 1 of ViT-L/14 in 22
            // tasks, not one (the other cores idled through it, 2% of a bf16 forward).
            let (weight, blocks) = (w.patch.0, avx512::column_blocks(h));
            let out = SharedMut(products.as_mut_ptr());
            (0..n * blocks).into_par_iter().for_each(move |task| {
                let out = out;
                let (image, block) = (task / blocks, task % blocks);
                // SAFETY: the CPU has AVX-512F (`available`); the image is `image_len`
                // pixels, the weight `len × h` (its order checked by `available`, its length
                // by `check`), the image's products `grid2` rows of h, all in bounds; each
                // task writes its own columns of its own image's rows, and `products`
                // overlaps no input.
                unsafe {
                    avx512::patch_products(
                        pixels[image * image_len..].as_ptr(),
                        *patches,
                        weight.as_ptr(),
                        h,
                        block,
                        out.0.add(image * grid2 * h),
                    )
                }
            });
        }
        PatchProducts::Gemm => flattened_products(pixels, patches, w.patch, h, flat, products),
    }
    stream.par_chunks_mut(h).enumerate().with_min_len(16).for_each_init(
        || vec![0f32; h],
        |x, (row, out)| {
            let (image, token) = (row / s, row % s);
            let before = match token {
                0 => w.class,
                _ => &products[(image * grid2 + token - 1) * h..][..h],
            };
            let position = &w.position[token * h..][..h];
            x.iter_mut().zip(before.iter().zip(position)).for_each(|(x, (v, p))| *x = v + p);
            kernels::layer_norm(x, out, w.pre_norm[0], w.pre_norm[1], d.eps);
        },
    );
    Ok(())
}

/// The patch products of `pixels` (`n` images) into `products` (`n · grid² × h`): each
/// image's patches flattened into `flat` (grown here), then one `gemm` call.
fn flattened_products(
    pixels: &[f32],
    patches: &Patches,
    (weight, order): (&[f32], Order),
    h: usize,
    flat: &mut super::AlignedF32,
    products: &mut [f32],
) {
    let (len, grid2) = (patches.len(), patches.grid * patches.grid);
    let n = products.len() / (grid2 * h);
    let images_per_part = n.div_ceil(rayon::current_num_threads().max(1)).max(1);
    let parts = n.div_ceil(images_per_part);
    flat.grow(parts * grid2 * len);
    let flat = &mut flat.as_mut_slice()[..parts * grid2 * len];
    // The patch products transposed, `productsᵀ (h × patches) = W (h × len) · aᵀ`, where
    // `gemm` reads the flattened patches in place (they and the products, row-major, are
    // column-major seen so; the weight is held transposed) and packs at most the weight:
    // `a · Wᵀ` had `gemm` pack `a`, as many values as the product reads, a tenth of the tiny
    // fixture model's time. Each thread takes a run of images, and flattens each just before
    // its product, into the same space, where the product reads it back from the cache: a
    // batch's flattened patches are as many values as its pixels, and flattened all at once
    // they went out to memory and back (the tiny model ran 2-7% faster at batch 32 so).
    flat.par_chunks_mut(grid2 * len)
        .zip(products.par_chunks_mut(images_per_part * grid2 * h))
        .enumerate()
        .for_each(|(part, (a, out))| {
            for (i, out) in out.chunks_exact_mut(grid2 * h).enumerate() {
                patches.flatten(pixels, part * images_per_part + i, a);
                // SAFETY: `out` is `grid2` rows of h, `a` `grid2` rows of len, the weight h
                // × len in its order, all in bounds (checked by the caller); `out` overlaps
                // no input.
                unsafe {
                    product(
                        (h, grid2, len),
                        Strided::columns(out.as_mut_ptr(), h),
                        order.transposed(weight.as_ptr(), h, len).t(),
                        Strided::columns(a.as_ptr(), len),
                        false,
                    )
                }
            }
        });
}

/// Each image's embedding from the encoder's output `stream`: its class token through
/// `post_layernorm` and the projection, scaled to unit L2 norm; `n × projection_dim` values.
pub(crate) fn embeddings(stream: &[f32], w: &OuterWeights<'_>, d: &Dims) -> Vec<f32> {
    let (h, projection_dim) = (d.hidden, w.projection_dim);
    let mut pooled = vec![0f32; d.n * h];
    for (image, out) in pooled.chunks_exact_mut(h).enumerate() {
        let class = &stream[image * d.s * h..][..h];
        kernels::layer_norm(class, out, w.post_norm[0], w.post_norm[1], d.eps);
    }
    let mut projected = vec![0f32; d.n * projection_dim];
    // SAFETY: `projected` is n × projection_dim, `pooled` n × h, the weight projection_dim ×
    // h, all row-major and in bounds; `projected` does not overlap the inputs.
    unsafe {
        product(
            (d.n, projection_dim, h),
            Strided::rows(projected.as_mut_ptr(), projection_dim),
            Strided::rows(pooled.as_ptr(), h),
            Strided::columns(w.projection.as_ptr(), h),
            false,
        )
    }
    for row in projected.chunks_exact_mut(projection_dim) {
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        row.iter_mut().for_each(|v| *v /= norm);
    }
    projected
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tokens against a plain f64 reference (the strided convolution by its definition,
    /// the class token, the positions, the layer norm), each way this CPU runs the patch
    /// products, with the patch weight in either order and the images split among 1, 2 and 4
    /// threads: hidden sizes and patch lengths that are not multiples of a vector, grid rows
    /// longer than one block of patches, pixels past the last whole patch.
    #[test]
    fn tokens_match_a_scalar_reference() {
        #[cfg(target_arch = "x86_64")]
        if !avx512::available() {
            eprintln!(
                "tokens_match_a_scalar_reference: skipped the AVX-512 patch products: this CPU lacks AVX-512F"
            );
        }
        for (geometry, h) in [
            (Patches { channels: 3, size: 11, patch: 3, grid: 3 }, 5),
            (Patches { channels: 3, size: 29, patch: 3, grid: 9 }, 53),
            (Patches { channels: 2, size: 20, patch: 2, grid: 10 }, 16),
        ] {
            let Patches { channels, size, patch: p, grid } = geometry;
            let (n, len, grid2) = (3, geometry.len(), grid * grid);
            let s = grid2 + 1;
            let image_len = channels * size * size;
            let value = |i: usize, scale: f32| ((i * 37 % 101) as f32 / 101.0 - 0.5) * scale;
            let pixels: Vec<f32> = (0..n * image_len).map(|i| value(i, 2.0)).collect();
            let patch: Vec<f32> = (0..h * len).map(|i| value(i + 7, 0.3)).collect();
            let class: Vec<f32> = (0..h).map(|i| value(i + 3, 1.0)).collect();
            let position: Vec<f32> = (0..s * h).map(|i| value(i + 11, 0.5)).collect();
            let gamma: Vec<f32> = (0..h).map(|i| 1.0 + value(i, 0.2)).collect();
            let beta: Vec<f32> = (0..h).map(|i| value(i + 5, 0.2)).collect();
            let eps = 1e-5;
            let mut want = vec![0f64; n * s * h];
            for image in 0..n {
                for token in 0..s {
                    let mut x = vec![0f64; h];
                    for (o, x) in x.iter_mut().enumerate() {
                        *x = position[token * h + o] as f64;
                        if token == 0 {
                            *x += class[o] as f64;
                            continue;
                        }
                        let (gy, gx) = ((token - 1) / grid, (token - 1) % grid);
                        for ch in 0..channels {
                            for (py, px) in (0..p * p).map(|i| (i / p, i % p)) {
                                let pixel = pixels[image * image_len
                                    + ch * size * size
                                    + (gy * p + py) * size
                                    + gx * p
                                    + px];
                                let weight = patch[o * len + ch * p * p + py * p + px];
                                *x += pixel as f64 * weight as f64;
                            }
                        }
                    }
                    let mean = x.iter().sum::<f64>() / h as f64;
                    let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / h as f64;
                    for o in 0..h {
                        let normed = (x[o] - mean) / (var + eps as f64).sqrt();
                        want[(image * s + token) * h + o] =
                            normed * gamma[o] as f64 + beta[o] as f64;
                    }
                }
            }
            let transposed: Vec<f32> = (0..len * h).map(|i| patch[(i % h) * len + i / h]).collect();
            for (weight, order) in [(&patch, Order::Rows), (&transposed, Order::Columns)] {
                for way in PatchProducts::available(order) {
                    for threads in [1, 2, 4] {
                        let w = OuterWeights {
                            patch: (weight, order),
                            class: &class,
                            position: &position,
                            pre_norm: [&gamma, &beta],
                            post_norm: [&gamma, &beta],
                            projection: &patch[..4 * h],
                            projection_dim: 4,
                        };
                        let d = Dims {
                            n,
                            s,
                            hidden: h,
                            heads: 1,
                            intermediate: 4,
                            eps,
                            act: crate::Activation::QuickGelu,
                        };
                        let mut scratch = [super::super::AlignedF32::default(), Default::default()];
                        let [flat, products] = &mut scratch;
                        let mut got = vec![f32::NAN; n * s * h];
                        let pool =
                            rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                        pool.install(|| {
                            tokens_by(way, &pixels, &geometry, &w, &d, [flat, products], &mut got)
                        })
                        .unwrap();
                        for (i, (got, want)) in got.iter().zip(&want).enumerate() {
                            assert!(
                                (*got as f64 - want).abs() < 1e-4,
                                "{way:?}, {order:?} on {threads} threads, hidden {h}, grid {grid}, \
                                 token value {i}: {got} against {want}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// Flattening against the definition: patch `(gy, gx)`, value `(ch, py, px)` is pixel
    /// `(ch, gy · p + py, gx · p + px)`, on a size that leaves pixels past the last patch.
    #[test]
    fn patches_flatten_in_the_convolution_weight_order() {
        let geometry = Patches { channels: 3, size: 11, patch: 3, grid: 3 };
        let pixels: Vec<f32> = (0..2 * 3 * 11 * 11).map(|i| i as f32).collect();
        let mut out = vec![0f32; 9 * geometry.len()];
        geometry.flatten(&pixels, 1, &mut out);
        for gy in 0..3 {
            for gx in 0..3 {
                for ch in 0..3 {
                    for py in 0..3 {
                        for px in 0..3 {
                            let got = out[(gy * 3 + gx) * 27 + ch * 9 + py * 3 + px];
                            let want = pixels[363 + ch * 121 + (gy * 3 + py) * 11 + gx * 3 + px];
                            assert_eq!(got, want, "patch ({gy}, {gx}) value ({ch}, {py}, {px})");
                        }
                    }
                }
            }
        }
    }
}
