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
use gemm::{Parallelism, gemm};
use rayon::prelude::*;

use super::Dims;
use crate::ops::kernels;

/// The weights outside the encoder layers, as f32 values read in place.
#[derive(Debug, Clone, Copy)]
pub(crate) struct OuterWeights<'a> {
    /// `patch_embedding.weight` as `(hidden, channels · patch²)`.
    pub(crate) patch: &'a [f32],
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
            self.patch.len(),
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

/// Writes the tokens of `n` images into `stream` (`n · s × hidden`): each image's class
/// token and patch products plus the positions, through `pre_layrnorm`. `flat` and
/// `embedded` are scratch (grown here).
pub(crate) fn tokens(
    pixels: &[f32],
    patches: &Patches,
    w: &OuterWeights<'_>,
    d: &Dims,
    scratch: [&mut super::AlignedF32; 2],
    stream: &mut [f32],
) -> Result<()> {
    w.check(d, patches)?;
    let (n, s, h, len) = (d.n, d.s, d.hidden, patches.len());
    let grid2 = patches.grid * patches.grid;
    let image_len = patches.channels * patches.size * patches.size;
    if pixels.len() != n * image_len || stream.len() != n * s * h {
        bail!("cpu encoder: {} pixel values for {n} images of {image_len}", pixels.len());
    }
    let [flat, embedded] = scratch;
    flat.grow(n * grid2 * len);
    embedded.grow(n * s * h);
    let flat = &mut flat.as_mut_slice()[..n * grid2 * len];
    let embedded = &mut embedded.as_mut_slice()[..n * s * h];
    flat.par_chunks_mut(grid2 * len)
        .enumerate()
        .for_each(|(image, out)| patches.flatten(pixels, image, out));
    for image in 0..n {
        let rows = &mut embedded[(image * s + 1) * h..][..grid2 * h];
        let a = &flat[image * grid2 * len..][..grid2 * len];
        // SAFETY: `rows` is grid² × h, `a` grid² × len, the weight h × len, all row-major
        // and in bounds (checked above); `rows` does not overlap the inputs.
        unsafe {
            gemm(
                grid2,
                h,
                len,
                rows.as_mut_ptr(),
                1,
                h as isize,
                false,
                a.as_ptr(),
                1,
                len as isize,
                w.patch.as_ptr(),
                len as isize,
                1,
                0.0,
                1.0,
                false,
                false,
                false,
                super::parallelism(),
            )
        }
    }
    stream.par_chunks_mut(h).zip(embedded.par_chunks_mut(h)).enumerate().with_min_len(16).for_each(
        |(row, (out, x))| {
            let token = row % s;
            if token == 0 {
                x.copy_from_slice(w.class);
            }
            x.iter_mut().zip(&w.position[token * h..][..h]).for_each(|(x, p)| *x += p);
            kernels::layer_norm(x, out, w.pre_norm[0], w.pre_norm[1], d.eps);
        },
    );
    Ok(())
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
        gemm(
            d.n,
            projection_dim,
            h,
            projected.as_mut_ptr(),
            1,
            projection_dim as isize,
            false,
            pooled.as_ptr(),
            1,
            h as isize,
            w.projection.as_ptr(),
            h as isize,
            1,
            0.0,
            1.0,
            false,
            false,
            false,
            Parallelism::None,
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
