//! A port of Pillow's convolution resampler (`libImaging/Resample.c`, 8 bits per channel):
//! separable, horizontal pass first into an 8-bit intermediate, 22-bit fixed-point weights.
//! Only the output pixels inside the crop window are computed; each output pixel depends on
//! nothing else, so the window is bit-identical to cropping a full resize.

use std::ops::Range;

use crate::config::Filter;

#[cfg(target_arch = "x86_64")]
mod avx2;

const PRECISION_BITS: u32 = 32 - 8 - 2;
const HALF: i32 = 1 << (PRECISION_BITS - 1);

impl Filter {
    pub(crate) fn support(self) -> f64 {
        match self {
            Filter::Box => 0.5,
            Filter::Bilinear | Filter::Hamming => 1.0,
            Filter::Bicubic => 2.0,
            Filter::Lanczos => 3.0,
        }
    }

    fn eval(self, x: f64) -> f64 {
        fn sinc(x: f64) -> f64 {
            if x == 0.0 {
                1.0
            } else {
                let x = x * std::f64::consts::PI;
                x.sin() / x
            }
        }
        match self {
            Filter::Box => {
                if x > -0.5 && x <= 0.5 {
                    1.0
                } else {
                    0.0
                }
            }
            Filter::Bilinear => {
                let x = x.abs();
                if x < 1.0 { 1.0 - x } else { 0.0 }
            }
            Filter::Hamming => {
                let x = x.abs();
                if x == 0.0 {
                    1.0
                } else if x >= 1.0 {
                    0.0
                } else {
                    let x = x * std::f64::consts::PI;
                    x.sin() / x * (0.54 + 0.46 * x.cos())
                }
            }
            Filter::Bicubic => {
                const A: f64 = -0.5;
                let x = x.abs();
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
            Filter::Lanczos => {
                if (-3.0..3.0).contains(&x) {
                    sinc(x) * sinc(x / 3.0)
                } else {
                    0.0
                }
            }
        }
    }
}

/// Fixed-point weights of one pass, for a window of output positions.
#[derive(Debug, Default)]
pub(crate) struct Coeffs {
    /// Taps per output position (Pillow's `ksize`).
    ksize: usize,
    /// First input index and tap count per output position.
    bounds: Vec<(usize, usize)>,
    /// `ksize` weights per output position.
    weights: Vec<i32>,
    /// Float weights before rounding (scratch).
    float: Vec<f64>,
}

impl Coeffs {
    /// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for output positions
    /// `start..start + count` of an `in_size` → `out_size` resize.
    pub(crate) fn compute(
        &mut self,
        in_size: usize,
        out_size: usize,
        filter: Filter,
        start: usize,
        count: usize,
    ) {
        let scale = in_size as f64 / out_size as f64;
        let filterscale = scale.max(1.0);
        let support = filter.support() * filterscale;
        let ksize = support.ceil() as usize * 2 + 1;
        self.ksize = ksize;
        self.bounds.clear();
        self.weights.clear();
        self.weights.resize(ksize * count, 0);
        self.float.clear();
        self.float.resize(ksize, 0.0);
        let ss = 1.0 / filterscale;
        for (i, xx) in (start..start + count).enumerate() {
            let center = (xx as f64 + 0.5) * scale;
            // C's `(int)` truncates toward zero; negative values clamp to 0 either way.
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let n = xmax.saturating_sub(xmin);
            let mut ww = 0.0;
            for x in 0..n {
                let w = filter.eval(((x + xmin) as f64 - center + 0.5) * ss);
                self.float[x] = w;
                ww += w;
            }
            let k = &mut self.weights[i * ksize..][..ksize];
            for (k, &w) in k.iter_mut().zip(&self.float[..n]) {
                let mut w = w;
                if ww != 0.0 {
                    w /= ww;
                }
                let scaled = w * (1u32 << PRECISION_BITS) as f64;
                *k = if w < 0.0 { (-0.5 + scaled) as i32 } else { (0.5 + scaled) as i32 };
            }
            self.bounds.push((xmin, n));
        }
    }

    /// Input indices `first..last` that the window reads.
    fn input_range(&self) -> (usize, usize) {
        let first = self.bounds.iter().map(|b| b.0).min().unwrap_or(0);
        let last = self.bounds.iter().map(|b| b.0 + b.1).max().unwrap_or(0);
        (first, last)
    }
}

/// Input indices `first..last` that Pillow's weights for outputs `start..start + count` of an
/// `in_size` → `out_size` resize read (everything a window needs from the source).
pub(crate) fn input_span(
    in_size: usize,
    out_size: usize,
    filter: Filter,
    start: usize,
    count: usize,
) -> (usize, usize) {
    if in_size == out_size {
        return (start, start + count);
    }
    let scale = in_size as f64 / out_size as f64;
    let support = filter.support() * scale.max(1.0);
    let first_center = (start as f64 + 0.5) * scale;
    let last_center = ((start + count - 1) as f64 + 0.5) * scale;
    let first = ((first_center - support + 0.5) as i64).max(0) as usize;
    let last = ((last_center + support + 0.5) as i64).min(in_size as i64) as usize;
    (first, last.max(first))
}

#[inline]
fn clip8(v: i32) -> u8 {
    (v >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Reusable state for [`Resampler::resize_window`].
#[derive(Debug, Default)]
pub(crate) struct Resampler {
    horizontal: Coeffs,
    pass: HorizontalPass,
    vertical: Coeffs,
    tmp: Vec<u8>,
    row: Vec<u8>,
}

/// Where the window sits in the resized image.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Window {
    pub out_width: usize,
    pub out_height: usize,
    pub left: usize,
    pub top: usize,
    pub width: usize,
    pub height: usize,
}

impl Resampler {
    /// Resizes the RGB8 image `src` (`width` x `height`) to `win.out_width` x `win.out_height`
    /// as `PIL.Image.resize` does and hands each row of the window, as RGB8, to `emit`.
    pub(crate) fn resize_window(
        &mut self,
        src: &[u8],
        width: usize,
        height: usize,
        filter: Filter,
        win: Window,
        mut emit: impl FnMut(usize, &[u8]),
    ) {
        let need_h = win.out_width != width;
        let need_v = win.out_height != height;
        let row_len = win.width * 3;
        if need_h {
            self.horizontal.compute(width, win.out_width, filter, win.left, win.width);
            self.pass.prepare(&self.horizontal);
        }
        if need_v {
            self.vertical.compute(height, win.out_height, filter, win.top, win.height);
        }
        match (need_h, need_v) {
            (true, true) => {
                let (first, last) = self.vertical.input_range();
                self.tmp.clear();
                self.tmp.resize((last - first) * row_len, 0);
                self.pass.rows(src, width * 3, first..last, &self.horizontal, &mut self.tmp);
                vertical(
                    &self.tmp,
                    row_len,
                    0,
                    first,
                    &self.vertical,
                    row_len,
                    &mut self.row,
                    &mut emit,
                );
            }
            (true, false) => {
                self.row.clear();
                self.row.resize(row_len, 0);
                for y in 0..win.height {
                    let src_row = &src[(win.top + y) * width * 3..][..width * 3];
                    self.pass.row(src_row, &self.horizontal, &mut self.row);
                    emit(y, &self.row);
                }
            }
            (false, true) => vertical(
                src,
                width * 3,
                win.left * 3,
                0,
                &self.vertical,
                row_len,
                &mut self.row,
                &mut emit,
            ),
            (false, false) => {
                for y in 0..win.height {
                    emit(y, &src[(win.top + y) * width * 3 + win.left * 3..][..row_len]);
                }
            }
        }
    }
}

/// One row of Pillow's `ImagingResampleHorizontal_8bpc`, for the window's columns.
fn horizontal_row(src: &[u8], c: &Coeffs, out: &mut [u8]) {
    for ((&(xmin, n), k), px) in
        c.bounds.iter().zip(c.weights.chunks_exact(c.ksize)).zip(out.chunks_exact_mut(3))
    {
        horizontal_pixel(&src[xmin * 3..][..n * 3], &k[..n], px);
    }
}

/// One output pixel of the horizontal pass: `taps` RGB pixels against weights `k`.
#[inline]
fn horizontal_pixel(taps: &[u8], k: &[i32], px: &mut [u8]) {
    let (mut r, mut g, mut b) = (HALF, HALF, HALF);
    for (p, &w) in taps.chunks_exact(3).zip(k) {
        r += p[0] as i32 * w;
        g += p[1] as i32 * w;
        b += p[2] as i32 * w;
    }
    px[0] = clip8(r);
    px[1] = clip8(g);
    px[2] = clip8(b);
}

/// The horizontal pass over many rows: AVX2 where the CPU has it, else scalar.
#[derive(Debug, Default)]
struct HorizontalPass {
    /// Weights laid out for the AVX2 pass; empty when it does not run.
    packed: Vec<i16>,
}

impl HorizontalPass {
    /// Prepares for rows resampled with `c`.
    fn prepare(&mut self, c: &Coeffs) {
        self.packed.clear();
        #[cfg(target_arch = "x86_64")]
        if avx2::available() {
            avx2::pack(c, &mut self.packed);
        }
    }

    /// One row with the weights last given to [`HorizontalPass::prepare`].
    fn row(&self, src: &[u8], c: &Coeffs, out: &mut [u8]) {
        #[cfg(target_arch = "x86_64")]
        if !self.packed.is_empty() {
            // SAFETY: `packed` is only filled when the CPU has AVX2.
            unsafe { avx2::horizontal_rows([src], c, &self.packed, [out]) };
            return;
        }
        horizontal_row(src, c, out);
    }

    /// Rows `rows` of the image `src` (rows of `stride` bytes) into consecutive rows of `out`.
    fn rows(&self, src: &[u8], stride: usize, rows: Range<usize>, c: &Coeffs, out: &mut [u8]) {
        let row_len = out.len() / rows.len().max(1);
        let mut pairs = out.chunks_exact_mut(2 * row_len);
        let mut y = rows.start;
        for pair in &mut pairs {
            let (a, b) = pair.split_at_mut(row_len);
            let (src_a, src_b) = (&src[y * stride..][..stride], &src[(y + 1) * stride..][..stride]);
            #[cfg(target_arch = "x86_64")]
            if !self.packed.is_empty() {
                // SAFETY: `packed` is only filled when the CPU has AVX2.
                unsafe { avx2::horizontal_rows([src_a, src_b], c, &self.packed, [a, b]) };
                y += 2;
                continue;
            }
            horizontal_row(src_a, c, a);
            horizontal_row(src_b, c, b);
            y += 2;
        }
        let last = pairs.into_remainder();
        if !last.is_empty() {
            self.row(&src[y * stride..][..stride], c, last);
        }
    }
}

/// Pillow's `ImagingResampleVertical_8bpc` over rows of `src` (row `i` of `src` is input
/// row `row_base + i`), reading `row_len` bytes from byte `col_off` of each row.
#[allow(clippy::too_many_arguments)]
fn vertical(
    src: &[u8],
    stride: usize,
    col_off: usize,
    row_base: usize,
    c: &Coeffs,
    row_len: usize,
    row: &mut Vec<u8>,
    emit: &mut impl FnMut(usize, &[u8]),
) {
    row.clear();
    row.resize(row_len, 0);
    #[cfg(target_arch = "x86_64")]
    let simd = avx2::available();
    for (y, (&(ymin, n), k)) in c.bounds.iter().zip(c.weights.chunks_exact(c.ksize)).enumerate() {
        let first = (ymin - row_base) * stride + col_off;
        #[cfg(target_arch = "x86_64")]
        if simd {
            // SAFETY: the CPU has AVX2.
            unsafe { avx2::vertical_row(src, first, stride, &k[..n], row) };
            emit(y, row);
            continue;
        }
        vertical_scalar(src, first, stride, &k[..n], row);
        emit(y, row);
    }
}

/// One output row of the vertical pass: `out[i] = clip8(HALF + Σ_t line_t[i] · k[t])` where
/// line `t` is `src[first + t · stride..][..out.len()]`.
fn vertical_scalar(src: &[u8], first: usize, stride: usize, k: &[i32], out: &mut [u8]) {
    // In blocks, so that the sums stay on the stack and the inner loop vectorizes.
    const BLOCK: usize = 64;
    let mut acc = [0i32; BLOCK];
    for (b, out) in out.chunks_mut(BLOCK).enumerate() {
        let acc = &mut acc[..out.len()];
        acc.fill(HALF);
        for (t, &w) in k.iter().enumerate() {
            let line = &src[first + t * stride + b * BLOCK..][..out.len()];
            for (a, &p) in acc.iter_mut().zip(line) {
                *a += p as i32 * w;
            }
        }
        for (o, &a) in out.iter_mut().zip(acc.iter()) {
            *o = clip8(a);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic pseudo-random row of `len` bytes.
    fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut state = seed | 1;
        (0..len).map(|_| (crate::xorshift(&mut state) >> 24) as u8).collect()
    }

    /// The runtime-chosen pass equals the scalar one, byte for byte, for every filter,
    /// downscales and upscales, full rows and windows, extreme pixels included.
    #[test]
    fn every_horizontal_pass_gives_the_scalar_bytes() {
        let filters =
            [Filter::Box, Filter::Bilinear, Filter::Hamming, Filter::Bicubic, Filter::Lanczos];
        let sizes = [(944, 398), (531, 224), (3000, 336), (17, 224), (224, 224), (300, 7), (5, 3)];
        for (case, &(in_size, out_size)) in sizes.iter().enumerate() {
            let mut src = noise(in_size * 3, case as u64 + 1);
            // Saturation at both ends: runs of 0 and 255 make the negative lobes overshoot.
            for (i, p) in src.iter_mut().enumerate().take(in_size * 3 / 2) {
                *p = if (i / 9) % 2 == 0 { 0 } else { 255 };
            }
            for filter in filters {
                for (start, count) in [(0, out_size), (out_size / 4, out_size / 2)] {
                    if count == 0 {
                        continue;
                    }
                    let mut c = Coeffs::default();
                    c.compute(in_size, out_size, filter, start, count);
                    let mut expected = vec![0; count * 3];
                    horizontal_row(&src, &c, &mut expected);
                    let mut pass = HorizontalPass::default();
                    pass.prepare(&c);
                    let mut got = vec![0; count * 3];
                    pass.row(&src, &c, &mut got);
                    assert_eq!(
                        got, expected,
                        "{in_size} -> {out_size}, {filter:?}, window {start}+{count}"
                    );
                }
            }
        }
    }

    /// Both vertical passes (AVX2 where the CPU has it, and scalar) equal Pillow's sum, byte
    /// for byte: odd and even tap
    /// counts, rows with and without a tail past the last 16-byte block, saturating sums.
    #[test]
    fn every_vertical_pass_gives_the_scalar_bytes() {
        for (case, &(in_size, out_size)) in
            [(531, 224), (2000, 336), (100, 224), (7, 3)].iter().enumerate()
        {
            for filter in [Filter::Box, Filter::Bilinear, Filter::Bicubic, Filter::Lanczos] {
                for row_len in [672, 100, 16, 5] {
                    let mut src = noise(in_size * row_len, case as u64 + 7);
                    for (i, p) in src.iter_mut().enumerate().take(in_size * row_len / 3) {
                        *p = if (i / row_len / 2) % 2 == 0 { 0 } else { 255 };
                    }
                    let mut c = Coeffs::default();
                    c.compute(in_size, out_size, filter, 0, out_size);
                    let mut expected = Vec::new();
                    for (&(ymin, n), k) in c.bounds.iter().zip(c.weights.chunks_exact(c.ksize)) {
                        let mut row = vec![0; row_len];
                        for (i, o) in row.iter_mut().enumerate() {
                            let sum: i32 =
                                (0..n).map(|t| src[(ymin + t) * row_len + i] as i32 * k[t]).sum();
                            *o = clip8(HALF + sum);
                        }
                        expected.extend(row);
                    }
                    let mut got = Vec::new();
                    let mut row = Vec::new();
                    vertical(&src, row_len, 0, 0, &c, row_len, &mut row, &mut |_, r: &[u8]| {
                        got.extend_from_slice(r)
                    });
                    let what = format!("{in_size} -> {out_size}, {filter:?}, rows of {row_len}");
                    assert!(got == expected, "{what}");
                    let mut scalar = vec![0; expected.len()];
                    for ((&(ymin, n), k), out) in c
                        .bounds
                        .iter()
                        .zip(c.weights.chunks_exact(c.ksize))
                        .zip(scalar.chunks_exact_mut(row_len))
                    {
                        vertical_scalar(&src, ymin * row_len, row_len, &k[..n], out);
                    }
                    assert!(scalar == expected, "scalar: {what}");
                }
            }
        }
    }
}
