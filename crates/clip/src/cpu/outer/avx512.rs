//! The patch embedding on AVX-512F, read straight from the pixels: no flattened copy of the
//! patches and no packed copy of the weight.
//!
//! Along a row of the patch grid, the `p` pixels that one patch takes from one row of one
//! channel lie together, and the next patch's follow them; so a block of up to 8 patches of
//! a grid row reads, for each value `(channel, row, column)` of a patch, its 8 pixels `p`
//! apart. The weight is held transposed (`len × hidden`, the order CPU models keep it in),
//! so for each such value one row of it gives the sums of up to 48 hidden columns in 3 zmm
//! registers: 8 × 3 blocks of sums, 24 registers. Where one grid row's block takes at
//! most 14 of them (small models: 16 hidden columns, or 32 on a grid of 7), a block takes
//! the same patches of two grid rows, so that each weight row loaded serves twice the
//! patches (the tiny fixture model's patch products took 56 against 71 µs an image so).
//! The weight's rows for a block of columns (the whole patch length, 113 KiB at ViT-L/14,
//! 384 KiB at the tiny fixture) stay in L2 while every patch block of the image runs over
//! them; one grid row's pixels (37 KiB at ViT-L/14) stay in L1.
//!
//! Every output sums its products in the order of the patch values (channel, row, column:
//! the convolution weight's), one fused multiply-add after another from zero, so it does not
//! depend on the block it fell in.

use std::arch::x86_64::{
    __mmask16, _mm512_fmadd_ps, _mm512_mask_storeu_ps, _mm512_maskz_loadu_ps, _mm512_set1_ps,
    _mm512_setzero_ps,
};

use super::Patches;

/// f32 lanes of one zmm register.
const LANES: usize = 16;
/// Patches of one block: 8 × [`VECTORS`] accumulators.
const BLOCK_PATCHES: usize = 8;
/// Hidden columns of one block, in zmm registers.
const VECTORS: usize = 3;
/// Most sums of a block of one grid row's patches that run two grid rows at once (2 × 14
/// of the 32 zmm registers, leaving the weight's and the broadcast pixel's).
const PAIRED_SUMS: usize = 14;

/// Whether this CPU has AVX-512F.
pub(super) fn available() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
}

/// The operands of [`patch_products`].
#[derive(Clone, Copy)]
struct Operands {
    image: *const f32,
    geometry: Patches,
    weight: *const f32,
    hidden: usize,
    out: *mut f32,
}

/// Column blocks of [`patch_products`] for a hidden size: 48 columns each, the last
/// perhaps fewer.
pub(super) fn column_blocks(hidden: usize) -> usize {
    hidden.div_ceil(VECTORS * LANES)
}

/// Columns `48 block ..` (up to 48, at most to `hidden`) of `out (grid² × hidden,
/// row-major) = patches of one image · weight`: `image` is `channels × size × size` pixels,
/// `weight` the patch weight transposed, `len × hidden` row-major (`Order::Columns` values
/// of the `hidden × len` convolution weight). The other columns of `out` are not touched.
///
/// # Safety
/// [`available`] returned true, `block < column_blocks(hidden)`; the three buffers hold what
/// those shapes address, and `out` overlaps neither input.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn patch_products(
    image: *const f32,
    geometry: Patches,
    weight: *const f32,
    hidden: usize,
    block: usize,
    out: *mut f32,
) {
    let at = Operands { image, geometry, weight, hidden, out };
    let g = geometry.grid;
    let c = block * VECTORS * LANES;
    let vectors = (hidden - c).div_ceil(LANES).min(VECTORS);
    // Two grid rows a block where their sums fit the registers.
    let rows_at_once = if g.min(BLOCK_PATCHES) * vectors <= PAIRED_SUMS { 2 } else { 1 };
    for gy in (0..g).step_by(rows_at_once) {
        let rows = (g - gy).min(rows_at_once);
        for gx in (0..g).step_by(BLOCK_PATCHES) {
            // SAFETY: patches (gy .. gy + rows, gx ..) and columns c .. lie in the operands,
            // as the caller promises; lanes past `hidden` are neither read nor stored.
            unsafe {
                let patches = (g - gx).min(BLOCK_PATCHES);
                if rows == 2 {
                    at.patches_of::<2>(gy, gx, c, patches, vectors)
                } else {
                    at.patches_of::<1>(gy, gx, c, patches, vectors)
                }
            }
        }
    }
}

impl Operands {
    #[target_feature(enable = "avx512f")]
    unsafe fn patches_of<const G: usize>(
        self,
        gy: usize,
        gx: usize,
        c: usize,
        patches: usize,
        vectors: usize,
    ) {
        // SAFETY: forwarded.
        unsafe {
            match patches {
                8 => self.block_of::<8, G>(gy, gx, c, vectors),
                7 => self.block_of::<7, G>(gy, gx, c, vectors),
                6 => self.block_of::<6, G>(gy, gx, c, vectors),
                5 => self.block_of::<5, G>(gy, gx, c, vectors),
                4 => self.block_of::<4, G>(gy, gx, c, vectors),
                3 => self.block_of::<3, G>(gy, gx, c, vectors),
                2 => self.block_of::<2, G>(gy, gx, c, vectors),
                _ => self.block_of::<1, G>(gy, gx, c, vectors),
            }
        }
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn block_of<const R: usize, const G: usize>(
        self,
        gy: usize,
        gx: usize,
        c: usize,
        vectors: usize,
    ) {
        // SAFETY: forwarded.
        unsafe {
            match vectors {
                3 => self.block::<R, G, 3>(gy, gx, c),
                2 => self.block::<R, G, 2>(gy, gx, c),
                _ => self.block::<R, G, 1>(gy, gx, c),
            }
        }
    }

    /// Patches `(gy .. gy + G, gx .. gx + R)`, hidden columns `c .. c + 16 V` (lanes past
    /// `hidden` masked off).
    #[target_feature(enable = "avx512f")]
    unsafe fn block<const R: usize, const G: usize, const V: usize>(
        self,
        gy: usize,
        gx: usize,
        c: usize,
    ) {
        let Patches { channels, size, patch: p, grid } = self.geometry;
        let h = self.hidden;
        let mut masks = [0 as __mmask16; V];
        for (v, mask) in masks.iter_mut().enumerate() {
            let lanes = h.saturating_sub(c + v * LANES).min(LANES);
            *mask = ((1u32 << lanes) - 1) as __mmask16;
        }
        // SAFETY: every address is inside the operands, as `patch_products`' caller promises.
        unsafe {
            let mut acc = [[[_mm512_setzero_ps(); V]; R]; G];
            // From one grid row's pixels to the next's.
            let next = p * size;
            let mut w = self.weight.add(c);
            for ch in 0..channels {
                for py in 0..p {
                    // Pixel row `gy · p + py` of the channel, from patch `gx`'s first column.
                    let row = self.image.add((ch * size + gy * p + py) * size + gx * p);
                    for px in 0..p {
                        let mut x = [_mm512_setzero_ps(); V];
                        for (v, x) in x.iter_mut().enumerate() {
                            *x = _mm512_maskz_loadu_ps(masks[v], w.add(v * LANES));
                        }
                        for (k, acc) in acc.iter_mut().enumerate() {
                            for (r, acc) in acc.iter_mut().enumerate() {
                                let a = _mm512_set1_ps(*row.add(k * next + r * p + px));
                                for (acc, x) in acc.iter_mut().zip(&x) {
                                    *acc = _mm512_fmadd_ps(a, *x, *acc);
                                }
                            }
                        }
                        w = w.add(h);
                    }
                }
            }
            for (k, acc) in acc.iter().enumerate() {
                for (r, acc) in acc.iter().enumerate() {
                    let dst = self.out.add(((gy + k) * grid + gx + r) * h + c);
                    for (v, acc) in acc.iter().enumerate() {
                        _mm512_mask_storeu_ps(dst.add(v * LANES), masks[v], *acc);
                    }
                }
            }
        }
    }
}
