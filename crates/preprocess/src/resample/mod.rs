//! A port of Pillow's convolution resampler (`libImaging/Resample.c`, 8 bits per channel):
//! separable, horizontal pass first into an 8-bit intermediate, 22-bit fixed-point weights.
//! Only the output pixels inside the crop window are computed; each output pixel depends on
//! nothing else, so the window is bit-identical to cropping a full resize.

use crate::config::Filter;

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

/// Reusable state for [`resize_window`].
#[derive(Debug, Default)]
pub(crate) struct Resampler {
    horizontal: Coeffs,
    vertical: Coeffs,
    tmp: Vec<u8>,
    acc: Vec<i32>,
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
        }
        if need_v {
            self.vertical.compute(height, win.out_height, filter, win.top, win.height);
        }
        match (need_h, need_v) {
            (true, true) => {
                let (first, last) = self.vertical.input_range();
                self.tmp.clear();
                self.tmp.resize((last - first) * row_len, 0);
                for (y, out) in (first..last).zip(self.tmp.chunks_exact_mut(row_len)) {
                    horizontal_row(&src[y * width * 3..][..width * 3], &self.horizontal, out);
                }
                vertical(
                    &self.tmp,
                    row_len,
                    0,
                    first,
                    &self.vertical,
                    row_len,
                    &mut self.acc,
                    &mut self.row,
                    &mut emit,
                );
            }
            (true, false) => {
                self.row.clear();
                self.row.resize(row_len, 0);
                for y in 0..win.height {
                    let src_row = &src[(win.top + y) * width * 3..][..width * 3];
                    horizontal_row(src_row, &self.horizontal, &mut self.row);
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
                &mut self.acc,
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
        let taps = &src[xmin * 3..][..n * 3];
        let (mut r, mut g, mut b) = (HALF, HALF, HALF);
        for (p, &w) in taps.chunks_exact(3).zip(&k[..n]) {
            r += p[0] as i32 * w;
            g += p[1] as i32 * w;
            b += p[2] as i32 * w;
        }
        px[0] = clip8(r);
        px[1] = clip8(g);
        px[2] = clip8(b);
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
    acc: &mut Vec<i32>,
    row: &mut Vec<u8>,
    emit: &mut impl FnMut(usize, &[u8]),
) {
    acc.clear();
    acc.resize(row_len, 0);
    row.clear();
    row.resize(row_len, 0);
    for (y, (&(ymin, n), k)) in c.bounds.iter().zip(c.weights.chunks_exact(c.ksize)).enumerate() {
        acc.fill(HALF);
        for (t, &w) in k[..n].iter().enumerate() {
            let start = (ymin + t - row_base) * stride + col_off;
            let line = &src[start..start + row_len];
            for (a, &p) in acc.iter_mut().zip(line) {
                *a += p as i32 * w;
            }
        }
        for (o, &a) in row.iter_mut().zip(acc.iter()) {
            *o = clip8(a);
        }
        emit(y, row);
    }
}
