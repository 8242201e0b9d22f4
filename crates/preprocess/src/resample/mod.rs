//! A port of Pillow's convolution resampler (`libImaging/Resample.c`, 8 bits per channel):
//! separable, horizontal pass first into an 8-bit intermediate, 22-bit fixed-point weights.
//! Only the output pixels inside the crop window are computed; each output pixel depends on
//! nothing else, so the window is bit-identical to cropping a full resize.
//!
//! With AVX2 both passes run on channel planes (`Resampler::resize_channels`), the horizontal
//! one on the source stored column by column; otherwise, and when only one pass is needed,
//! on interleaved RGB rows. Both routes compute the scalar code's integer sums.

use std::ops::Range;

use crate::config::Filter;
use crate::geometry::Window;
#[cfg(target_arch = "x86_64")]
use crate::pixels::Layout;
use crate::pixels::{LayoutRule, Pixels};

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
    /// The arguments of the last [`Coeffs::compute`]: the same again changes nothing.
    computed: Option<(usize, usize, Filter, usize, usize)>,
    /// The weights as the AVX2 vertical pass takes them: per output position,
    /// `ksize.div_ceil(2)` pairs of taps ([`avx2::tap_pair`]).
    #[cfg(target_arch = "x86_64")]
    pairs: Vec<(i32, i32)>,
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
        // A dataset's images often share a size.
        let args = (in_size, out_size, filter, start, count);
        if self.computed == Some(args) {
            return;
        }
        self.computed = Some(args);
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
        #[cfg(target_arch = "x86_64")]
        {
            self.pairs.clear();
            for k in self.weights.chunks_exact(ksize) {
                self.pairs.extend((0..ksize).step_by(2).map(|t| avx2::tap_pair(k, t)));
            }
        }
    }

    /// Output position `i`'s first input index, weights, and weights in pairs of taps.
    #[cfg(target_arch = "x86_64")]
    fn paired(&self, i: usize) -> (usize, &[i32], &[(i32, i32)]) {
        let (first, n) = self.bounds[i];
        let per = self.ksize.div_ceil(2);
        (first, &self.weights[i * self.ksize..][..n], &self.pairs[i * per..][..n.div_ceil(2)])
    }

    /// Input indices `first..last` that the window reads.
    fn input_range(&self) -> (usize, usize) {
        let first = self.bounds.iter().map(|b| b.0).min().unwrap_or(0);
        let last = self.bounds.iter().map(|b| b.0 + b.1).max().unwrap_or(0);
        (first, last)
    }
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
    #[cfg(target_arch = "x86_64")]
    channels: ChannelScratch,
    /// The source interleaved, where it came in channel planes and the interleaved route
    /// runs (a decoder and [`layout_rule`] disagreeing; not expected).
    interleaved: Vec<u8>,
}

/// Buffers of the channel-plane route ([`Resampler::resize_channels`]).
#[cfg(target_arch = "x86_64")]
#[derive(Debug, Default)]
struct ChannelScratch {
    /// A band of source rows, per channel, column by column.
    columns: Vec<u8>,
    /// The horizontal pass's output for that band, per channel, column by column.
    lines: Vec<u8>,
    /// The horizontal pass's output, per channel, row by row: the vertical pass's input.
    planes: Vec<u8>,
    /// One output row per channel.
    rows: [Vec<u8>; 3],
}

/// Source rows per band of the channel-plane route: a band's columns (3 x 541 x 128 bytes for
/// the usual 0.5 MP crop) stay in the L2 cache while the horizontal pass reads them.
#[cfg(target_arch = "x86_64")]
const BAND: usize = 128;

/// The layout rule of this resampler's channel-plane route: with AVX2, both passes run on
/// channel planes. A decoder that writes channel planes for exactly these images saves the
/// resampler splitting interleaved pixels.
pub(crate) fn layout_rule() -> LayoutRule {
    #[cfg(target_arch = "x86_64")]
    if avx2::available() {
        return LayoutRule::ChannelsWhenBothAxesResize;
    }
    LayoutRule::Rgb
}

impl Resampler {
    /// Resizes the RGB8 image `src` (`width` x `height`) to `win.out_width` x `win.out_height`
    /// as `PIL.Image.resize` does and hands each row of the window to `emit`, in the layout
    /// its route produced.
    pub(crate) fn resize_window(
        &mut self,
        src: Pixels<'_>,
        width: usize,
        height: usize,
        filter: Filter,
        win: Window,
        mut emit: impl FnMut(usize, Pixels<'_>),
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
        #[cfg(target_arch = "x86_64")]
        if layout_rule().layout(&win, width, height) == Layout::Channels {
            // SAFETY: the CPU has AVX2.
            unsafe { self.resize_channels(src, width, win.width, &mut emit) };
            return;
        }
        if need_h {
            // The interleaved horizontal pass's own weight layout.
            self.pass.prepare(&self.horizontal);
        }
        let src = src.interleaved(&mut self.interleaved);
        let mut emit_rgb = |y: usize, row: &[u8]| emit(y, Pixels::Rgb(row));
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
                    &mut emit_rgb,
                );
            }
            (true, false) => {
                self.row.clear();
                self.row.resize(row_len, 0);
                for y in 0..win.height {
                    let src_row = &src[(win.top + y) * width * 3..][..width * 3];
                    self.pass.row(src_row, &self.horizontal, &mut self.row);
                    emit_rgb(y, &self.row);
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
                &mut emit_rgb,
            ),
            (false, false) => {
                for y in 0..win.height {
                    emit_rgb(y, &src[(win.top + y) * width * 3 + win.left * 3..][..row_len]);
                }
            }
        }
    }

    /// Both passes with AVX2 on channel planes, the same sums as the interleaved passes.
    ///
    /// The horizontal pass runs on the source stored column by column, where it has the
    /// vertical pass's shape: an output column is a weighted sum of whole source columns,
    /// sixteen rows per register with the weights broadcast ([`avx2::vertical_row`]), instead
    /// of short dot products over interleaved pixels. Bands of [`BAND`] source rows are split
    /// into channel columns, resampled, and transposed back into row-major channel planes,
    /// which the vertical pass reads as usual. The weights are in `self.horizontal` and
    /// `self.vertical` already.
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn resize_channels(
        &mut self,
        src: Pixels<'_>,
        width: usize,
        window_width: usize,
        emit: &mut impl FnMut(usize, Pixels<'_>),
    ) {
        let (x0, x1) = self.horizontal.input_range();
        let (first, last) = self.vertical.input_range();
        let (cols, rows, w) = (x1 - x0, last - first, window_width);
        let h = &self.horizontal;
        let scratch = &mut self.channels;
        grow(&mut scratch.planes, 3 * rows * w);
        for band_start in (first..last).step_by(BAND) {
            let band = BAND.min(last - band_start);
            // Whole registers per column; the padding lanes are computed and never read.
            let lines = band.next_multiple_of(16);
            grow(&mut scratch.columns, 3 * cols * lines);
            grow(&mut scratch.lines, 3 * w * lines);
            // SAFETY (here and below): the CPU has AVX2.
            match src {
                Pixels::Rgb(src) => unsafe {
                    avx2::channel_columns(
                        src,
                        width * 3,
                        x0,
                        cols,
                        band_start,
                        band,
                        lines,
                        &mut scratch.columns,
                    );
                },
                Pixels::Channels(planes) => {
                    for (plane, columns) in
                        planes.iter().zip(scratch.columns.chunks_exact_mut(cols * lines))
                    {
                        let band_rows = &plane[band_start * width + x0..];
                        unsafe { avx2::transpose(band_rows, width, band, cols, columns, lines) };
                    }
                }
            }
            for ((columns, out), plane) in scratch
                .columns
                .chunks_exact(cols * lines)
                .zip(scratch.lines.chunks_exact_mut(w * lines))
                .take(3)
                .zip(scratch.planes.chunks_exact_mut(rows * w))
            {
                for (i, line) in out.chunks_exact_mut(lines).enumerate() {
                    let (xmin, k, pairs) = h.paired(i);
                    unsafe {
                        avx2::vertical_row(columns, (xmin - x0) * lines, lines, k, pairs, line)
                    };
                }
                let at = (band_start - first) * w;
                unsafe { avx2::transpose(out, lines, w, band, &mut plane[at..], w) };
            }
        }
        let v = &self.vertical;
        for row in &mut scratch.rows {
            row.resize(w, 0);
        }
        for y in 0..v.bounds.len() {
            let (ymin, k, pairs) = v.paired(y);
            for (plane, row) in scratch.planes.chunks_exact(rows * w).zip(&mut scratch.rows) {
                unsafe { avx2::vertical_row(plane, (ymin - first) * w, w, k, pairs, row) };
            }
            let [r, g, b] = &scratch.rows;
            emit(y, Pixels::Channels([r, g, b]));
        }
    }
}

/// Makes `buffer` at least `len` long. Scratch buffers only grow: shrinking and growing
/// again would zero the regrown part every time (a band shorter than the last, a smaller
/// image between two large ones).
#[cfg(target_arch = "x86_64")]
fn grow(buffer: &mut Vec<u8>, len: usize) {
    if buffer.len() < len {
        buffer.resize(len, 0);
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
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
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
            unsafe { avx2::horizontal_row(src, c, &self.packed, out) };
            return;
        }
        horizontal_row(src, c, out);
    }

    /// Rows `rows` of the image `src` (rows of `stride` bytes) into consecutive rows of `out`.
    fn rows(&self, src: &[u8], stride: usize, rows: Range<usize>, c: &Coeffs, out: &mut [u8]) {
        let row_len = out.len() / rows.len().max(1);
        if row_len == 0 {
            return;
        }
        for (y, out) in rows.zip(out.chunks_exact_mut(row_len)) {
            self.row(&src[y * stride..][..stride], c, out);
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
            unsafe { avx2::vertical_row(src, first, stride, &k[..n], c.paired(y).2, row) };
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

    /// The window of a resize by the scalar passes alone, as interleaved RGB rows.
    fn scalar_resize(
        src: &[u8],
        width: usize,
        height: usize,
        filter: Filter,
        win: Window,
    ) -> Vec<u8> {
        let (mut h, mut v) = (Coeffs::default(), Coeffs::default());
        h.compute(width, win.out_width, filter, win.left, win.width);
        v.compute(height, win.out_height, filter, win.top, win.height);
        let mut rows = vec![0; height * win.width * 3];
        for (y, out) in rows.chunks_exact_mut(win.width * 3).enumerate() {
            horizontal_row(&src[y * width * 3..][..width * 3], &h, out);
        }
        let mut window = vec![0; win.height * win.width * 3];
        for ((&(ymin, n), k), out) in v
            .bounds
            .iter()
            .zip(v.weights.chunks_exact(v.ksize))
            .zip(window.chunks_exact_mut(win.width * 3))
        {
            vertical_scalar(&rows, ymin * win.width * 3, win.width * 3, &k[..n], out);
        }
        window
    }

    /// [`Resampler::resize_window`] (the channel-plane route where the CPU has AVX2) equals
    /// the scalar passes byte for byte: down- and upscales, several bands of rows, column and
    /// window counts that are not multiples of 16, crop windows anywhere, saturating pixels,
    /// sizes coming back after others, and sources in interleaved and in channel layout.
    #[test]
    fn resize_window_gives_the_scalar_bytes() {
        if !avx2_present() {
            eprintln!(
                "resize_window_gives_the_scalar_bytes: no AVX2, so the channel route is skipped"
            );
        }
        let cases = [
            // (source width, height, resized width, height, window left, top, width, height)
            (944, 531, 398, 224, 87, 0, 224, 224),
            (531, 944, 224, 398, 0, 87, 224, 224),
            (1500, 1000, 504, 336, 84, 0, 336, 336),
            (300, 700, 224, 522, 0, 149, 224, 224),
            (37, 50, 224, 302, 0, 39, 224, 224),
            (1000, 260, 861, 224, 318, 0, 224, 224),
            (333, 517, 101, 157, 5, 13, 37, 91),
            (20, 20, 7, 9, 0, 0, 7, 9),
            // One pass, or none: the interleaved route.
            (944, 224, 398, 224, 87, 0, 224, 224),
            (224, 531, 224, 224, 0, 0, 224, 224),
            (50, 40, 50, 40, 3, 2, 30, 20),
        ];
        // One resampler throughout, as an engine keeps it: weights and buffers of one size
        // must not leak into the next.
        let mut resampler = Resampler::default();
        for (case, &(width, height, out_width, out_height, left, top, w, h)) in
            cases.iter().chain(&cases[..2]).enumerate()
        {
            let mut src = noise(width * height * 3, case as u64 + 11);
            for (i, p) in src.iter_mut().enumerate().take(width * height) {
                *p = if (i / 7 + i / (width * 3)) % 2 == 0 { 0 } else { 255 };
            }
            let win = Window { out_width, out_height, left, top, width: w, height: h };
            // The same source in channel planes, as the JPEG decoder may write it.
            let planes: Vec<Vec<u8>> =
                (0..3).map(|c| src.iter().skip(c).step_by(3).copied().collect()).collect();
            let channels = Pixels::Channels([&planes[0], &planes[1], &planes[2]]);
            for (filter, source) in [Filter::Bicubic, Filter::Bilinear, Filter::Lanczos]
                .into_iter()
                .flat_map(|f| [(f, Pixels::Rgb(&src)), (f, channels)])
            {
                let expected = scalar_resize(&src, width, height, filter, win);
                let mut got = vec![0; expected.len()];
                resampler.resize_window(source, width, height, filter, win, |y, row| {
                    let out = &mut got[y * w * 3..][..w * 3];
                    match row {
                        Pixels::Rgb(row) => out.copy_from_slice(row),
                        Pixels::Channels(rows) => {
                            for (x, px) in out.chunks_exact_mut(3).enumerate() {
                                px.copy_from_slice(&[rows[0][x], rows[1][x], rows[2][x]]);
                            }
                        }
                    }
                });
                let first = got.iter().zip(&expected).position(|(a, b)| a != b);
                assert!(
                    first.is_none(),
                    "{width}x{height} -> {out_width}x{out_height}, window {w}x{h} at ({left}, \
                     {top}), {filter:?}, {layout}: first difference at byte {first:?}",
                    layout = if matches!(source, Pixels::Rgb(_)) { "rgb" } else { "channels" }
                );
            }
        }
    }

    fn avx2_present() -> bool {
        #[cfg(target_arch = "x86_64")]
        return avx2::available();
        #[cfg(not(target_arch = "x86_64"))]
        return false;
    }

    /// The AVX2 transposes equal the plain loops, with sizes that are not multiples of 16.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn transposes_move_every_byte() {
        if !avx2::available() {
            eprintln!("skipped: this CPU has no AVX2");
            return;
        }
        for (case, &(rows, cols)) in
            [(16, 16), (37, 70), (128, 224), (5, 3), (64, 17)].iter().enumerate()
        {
            let (src_stride, dst_stride) = (cols + 3, rows + 5);
            let src = noise(rows * src_stride, case as u64 + 21);
            let mut got = vec![0; cols * dst_stride];
            // SAFETY: the CPU has AVX2.
            unsafe { avx2::transpose(&src, src_stride, rows, cols, &mut got, dst_stride) };
            for i in 0..rows {
                for j in 0..cols {
                    assert_eq!(
                        got[j * dst_stride + i],
                        src[i * src_stride + j],
                        "{rows}x{cols} at ({i}, {j})"
                    );
                }
            }
            // Channel columns of pixels x0.. of rows y0.. of an RGB image `cols` + 9 wide.
            let (width, x0, y0) = (cols + 9, 4, 2);
            let image = noise((rows + y0) * width * 3, case as u64 + 31);
            let lines = rows.next_multiple_of(16);
            let mut columns = vec![0; 3 * cols * lines];
            // SAFETY: the CPU has AVX2.
            unsafe {
                avx2::channel_columns(&image, width * 3, x0, cols, y0, rows, lines, &mut columns)
            };
            for c in 0..3 {
                for x in 0..cols {
                    for y in 0..rows {
                        assert_eq!(
                            columns[(c * cols + x) * lines + y],
                            image[(y0 + y) * width * 3 + (x0 + x) * 3 + c],
                            "{rows}x{cols}: channel {c} at ({x}, {y})"
                        );
                    }
                }
            }
        }
    }

    /// The runtime-chosen pass equals the scalar one, byte for byte, for every filter,
    /// downscales and upscales, full rows and windows, extreme pixels included.
    #[test]
    fn every_horizontal_pass_gives_the_scalar_bytes() {
        if !avx2_present() {
            eprintln!("skipped every_horizontal_pass_gives_the_scalar_bytes: this CPU has no AVX2");
            return;
        }
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
