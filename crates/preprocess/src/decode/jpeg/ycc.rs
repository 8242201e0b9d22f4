//! libjpeg's "fancy" chroma upsampling (`h2v1_fancy_upsample`, `h2v2_fancy_upsample` in
//! `jdsample.c`) and YCbCr → RGB conversion (`ycc_rgb_convert` in `jdcolor.c`), for runs of
//! output columns: the same integer formulas, so the same bytes.
//!
//! Upsampling is a triangle filter: each output sample weighs its nearest chroma sample 3/4
//! and the next nearest 1/4, first across rows (h2v2 only: `3 · near + far`), then across
//! columns, with libjpeg's rounding biases; chroma outside the image repeats the edge sample.

/// libjpeg's `FIX(x)` at 16 bits (`SCALEBITS`).
const fn fix(x: f64) -> i32 {
    (x * 65536.0 + 0.5) as i32
}

const CR_R: i32 = fix(1.40200);
const CB_B: i32 = fix(1.77200);
const CR_G: i32 = fix(0.71414);
const CB_G: i32 = fix(0.34414);
const ONE_HALF: i32 = 1 << 15;

/// How a chroma component is upsampled to the luma grid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Upsample {
    /// Full resolution (4:4:4).
    None,
    /// Half width (4:2:2).
    H2V1,
    /// Half width and height (4:2:0).
    H2V2,
}

impl Upsample {
    /// Rounding biases for even and odd outputs and the final shift of the column pass.
    fn rounding(self) -> (i16, i16, u32) {
        match self {
            Upsample::H2V2 => (8, 7, 4),
            _ => (1, 2, 2),
        }
    }
}

/// Column sums of the columns the output needs, with one edge-replicated neighbor each side.
///
/// `sums[i]` is the (row-weighted) sample of chroma column `c0 - 1 + i`, for `i` in
/// `0..=c1 - c0 + 1`, where chroma columns `c0..c1` cover the output; index `-1` and `n`
/// repeat columns `0` and `n - 1`.
fn column_sums(near: &[u8], far: &[u8], kind: Upsample, c0: usize, c1: usize, sums: &mut Vec<i16>) {
    let n = near.len();
    sums.clear();
    let first = c0.saturating_sub(1);
    let last = (c1 + 1).min(n);
    if c0 == 0 {
        sums.push(0); // Replaced by column 0 below.
    }
    match kind {
        Upsample::H2V2 => sums.extend(
            near[first..last].iter().zip(&far[first..last]).map(|(&a, &b)| 3 * a as i16 + b as i16),
        ),
        _ => sums.extend(near[first..last].iter().map(|&a| a as i16)),
    }
    if c0 == 0 {
        sums[0] = sums[1];
    }
    if c1 == n {
        sums.push(sums[sums.len() - 1]);
    }
}

/// Upsampled chroma for output columns `2 · c0 .. 2 · c1` from `sums` (of [`column_sums`]),
/// portable version: `out[2i]` and `out[2i + 1]` for chroma column `c0 + i`.
fn interleave_scalar(sums: &[i16], kind: Upsample, out: &mut [u8]) {
    let (even_bias, odd_bias, shift) = kind.rounding();
    for (w, pair) in sums.windows(3).zip(out.chunks_exact_mut(2)) {
        let this = 3 * w[1];
        pair[0] = ((this + w[0] + even_bias) >> shift) as u8;
        pair[1] = ((this + w[2] + odd_bias) >> shift) as u8;
    }
}

/// One YCbCr sample to RGB, as `ycc_rgb_convert` computes it.
#[inline]
fn ycc_to_rgb(y: u8, cb: u8, cr: u8) -> [u8; 3] {
    let (y, cb, cr) = (y as i32, cb as i32 - 128, cr as i32 - 128);
    let r = y + ((CR_R * cr + ONE_HALF) >> 16);
    let g = y + ((-CR_G * cr - CB_G * cb + ONE_HALF) >> 16);
    let b = y + ((CB_B * cb + ONE_HALF) >> 16);
    [r, g, b].map(|v| v.clamp(0, 255) as u8)
}

/// Where a row of converted pixels goes.
pub(super) enum RowOut<'a> {
    /// Interleaved RGB, three bytes per pixel.
    Rgb(&'a mut [u8]),
    /// Red, green and blue, one slice each.
    Channels([&'a mut [u8]; 3]),
}

impl RowOut<'_> {
    /// Pixels it holds.
    fn len(&self) -> usize {
        match self {
            RowOut::Rgb(rgb) => rgb.len() / 3,
            RowOut::Channels(c) => c.iter().map(|c| c.len()).min().unwrap_or(0),
        }
    }

    /// Its pixels from `i` on.
    #[cfg(target_arch = "x86_64")]
    fn skip(&mut self, i: usize) -> RowOut<'_> {
        match self {
            RowOut::Rgb(rgb) => RowOut::Rgb(&mut rgb[3 * i..]),
            RowOut::Channels([r, g, b]) => {
                RowOut::Channels([&mut r[i..], &mut g[i..], &mut b[i..]])
            }
        }
    }
}

/// A row of YCbCr samples to RGB, portable version.
fn convert_scalar(y: &[u8], cb: &[u8], cr: &[u8], out: RowOut<'_>) {
    let pixels = y.iter().zip(cb).zip(cr).map(|((&y, &cb), &cr)| ycc_to_rgb(y, cb, cr));
    match out {
        RowOut::Rgb(rgb) => {
            for (px, rgb) in rgb.chunks_exact_mut(3).zip(pixels) {
                px.copy_from_slice(&rgb);
            }
        }
        RowOut::Channels([r, g, b]) => {
            for (((r, g), b), [pr, pg, pb]) in r.iter_mut().zip(g).zip(b).zip(pixels) {
                (*r, *g, *b) = (pr, pg, pb);
            }
        }
    }
}

/// Reusable buffers for [`RowConverter::row`].
#[derive(Debug, Default)]
pub(super) struct RowConverter {
    sums: Vec<i16>,
    chroma: [Vec<u8>; 2],
}

/// The chroma of one output row: the sample rows a component contributes.
pub(super) struct ChromaRows<'a> {
    /// The nearest chroma row (for 4:2:0, the row at `y / 2`), whole width.
    pub near: &'a [u8],
    /// The next nearest row (4:2:0 only; otherwise ignored).
    pub far: &'a [u8],
}

impl RowConverter {
    /// Writes RGB for output columns `x0..x0 + luma.len()` into `out`: `luma` is that span of
    /// the Y row, `chroma` the Cb and Cr rows that the output row reads.
    pub(super) fn row(
        &mut self,
        luma: &[u8],
        x0: usize,
        kind: Upsample,
        chroma: [ChromaRows<'_>; 2],
        out: RowOut<'_>,
    ) {
        let len = luma.len();
        let x1 = x0 + len;
        let simd = super::avx2_available();
        let mut planes: [&[u8]; 2] = [&[], &[]];
        for ((rows, buffer), plane) in chroma.iter().zip(&mut self.chroma).zip(&mut planes) {
            if kind == Upsample::None {
                *plane = &rows.near[x0..x1];
                continue;
            }
            let (c0, c1) = (x0 / 2, (x1 - 1) / 2 + 1);
            column_sums(rows.near, rows.far, kind, c0, c1, &mut self.sums);
            let produced = 2 * (c1 - c0);
            // The AVX2 pass writes whole blocks of 32 and reads sums past the end.
            buffer.resize(produced.next_multiple_of(32), 0);
            #[cfg(target_arch = "x86_64")]
            if simd {
                self.sums.resize(self.sums.len().next_multiple_of(16) + 16, 0);
                // SAFETY: the CPU has AVX2; the buffers are padded as the function needs.
                unsafe { avx2::interleave(&self.sums, kind, c1 - c0, buffer) };
            }
            if !simd {
                interleave_scalar(&self.sums, kind, &mut buffer[..produced]);
            }
            *plane = &buffer[x0 - 2 * c0..][..len];
        }
        assert!(out.len() >= len);
        #[cfg(target_arch = "x86_64")]
        if simd {
            // SAFETY: the CPU has AVX2.
            unsafe { avx2::convert(luma, planes[0], planes[1], out) };
            return;
        }
        convert_scalar(luma, planes[0], planes[1], out);
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{CB_B, CB_G, CR_G, CR_R, ONE_HALF, RowOut, Upsample};

    /// [`super::interleave_scalar`] for `count` chroma columns, 16 at a time; `sums` is padded
    /// to read 16 past `count + 2`, `out` to write a multiple of 32 bytes.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn interleave(sums: &[i16], kind: Upsample, count: usize, out: &mut [u8]) {
        let (even_bias, odd_bias, shift) = kind.rounding();
        let blocks = count.div_ceil(16);
        assert!(sums.len() >= blocks * 16 + 2 && out.len() >= blocks * 32);
        // Per 128-bit lane: bytes 0..8 are even outputs, 8..16 odd; interleave them.
        let zip = _mm256_setr_epi8(
            0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15, //
            0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15,
        );
        let (even_bias, odd_bias) = (_mm256_set1_epi16(even_bias), _mm256_set1_epi16(odd_bias));
        let shift = _mm_cvtsi32_si128(shift as i32);
        for block in 0..blocks {
            let i = block * 16;
            // SAFETY: the assert keeps the loads (sums i..i + 18) and the store inside.
            unsafe {
                let load = |at: usize| _mm256_loadu_si256(sums.as_ptr().add(at).cast());
                let (prev, this, next) = (load(i), load(i + 1), load(i + 2));
                let this3 = _mm256_add_epi16(_mm256_add_epi16(this, this), this);
                let even = _mm256_sra_epi16(
                    _mm256_add_epi16(_mm256_add_epi16(this3, prev), even_bias),
                    shift,
                );
                let odd = _mm256_sra_epi16(
                    _mm256_add_epi16(_mm256_add_epi16(this3, next), odd_bias),
                    shift,
                );
                let bytes = _mm256_shuffle_epi8(_mm256_packus_epi16(even, odd), zip);
                _mm256_storeu_si256(out.as_mut_ptr().add(i * 2).cast(), bytes);
            }
        }
    }

    /// Byte shuffles that scatter 16 samples of one channel into 48 interleaved RGB bytes:
    /// `MASKS[chunk][channel]` for output bytes `16 · chunk..16 · chunk + 16`.
    const MASKS: [[[i8; 16]; 3]; 3] = {
        let mut masks = [[[-1i8; 16]; 3]; 3];
        let mut byte = 0;
        while byte < 48 {
            masks[byte / 16][byte % 3][byte % 16] = (byte / 3) as i8;
            byte += 1;
        }
        masks
    };

    /// [`super::convert_scalar`] with AVX2, 16 pixels at a time in 16-bit lanes (`y.len()`
    /// pixels):
    /// `(c · x + 2^15) >> 16` for a constant `c` outside the 16-bit range is split as
    /// `k · x + ((c - k · 2^16) · x + 2^15) >> 16`, whose second term is the high half of a
    /// 16-bit product plus the top bit of its low half.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn convert(y: &[u8], cb: &[u8], cr: &[u8], mut out: RowOut<'_>) {
        let len = y.len();
        assert!(cb.len() >= len && cr.len() >= len && out.len() >= len);
        let center = _mm256_set1_epi16(128);
        let cr_r = _mm256_set1_epi16((CR_R - 65536) as i16);
        let cb_b = _mm256_set1_epi16((CB_B - 131072) as i16);
        // Green: -CR_G = -65536 + (65536 - CR_G).
        let g_weights = _mm256_set1_epi32(((65536 - CR_G) & 0xffff) | ((-CB_G) << 16));
        let half = _mm256_set1_epi32(ONE_HALF);
        // (c · x + 2^15) >> 16 for a 16-bit c: high half + bit 15 of the low half.
        let scaled = |x: __m256i, c: __m256i| {
            _mm256_add_epi16(
                _mm256_mulhi_epi16(x, c),
                _mm256_srli_epi16::<15>(_mm256_mullo_epi16(x, c)),
            )
        };
        // SAFETY: each mask is 16 bytes.
        let masks = MASKS.map(|chunk| chunk.map(|m| unsafe { _mm_loadu_si128(m.as_ptr().cast()) }));
        let blocks = len / 16;
        for block in 0..blocks {
            let i = block * 16;
            // SAFETY: the assert keeps 16 samples at `i` and 48 bytes at `3 i` inside.
            unsafe {
                let load =
                    |s: &[u8]| _mm256_cvtepu8_epi16(_mm_loadu_si128(s.as_ptr().add(i).cast()));
                let luma = load(y);
                let cb = _mm256_sub_epi16(load(cb), center);
                let cr = _mm256_sub_epi16(load(cr), center);
                let r = _mm256_add_epi16(luma, _mm256_add_epi16(cr, scaled(cr, cr_r)));
                let b = _mm256_add_epi16(
                    luma,
                    _mm256_add_epi16(_mm256_add_epi16(cb, cb), scaled(cb, cb_b)),
                );
                // (cr, cb) pairs: pixels 0..4 and 8..12 in `lo`, 4..8 and 12..16 in `hi`.
                let (lo, hi) = (_mm256_unpacklo_epi16(cr, cb), _mm256_unpackhi_epi16(cr, cb));
                let g_lo = _mm256_srai_epi32::<16>(_mm256_add_epi32(
                    _mm256_madd_epi16(lo, g_weights),
                    half,
                ));
                let g_hi = _mm256_srai_epi32::<16>(_mm256_add_epi32(
                    _mm256_madd_epi16(hi, g_weights),
                    half,
                ));
                let g =
                    _mm256_add_epi16(luma, _mm256_sub_epi16(_mm256_packs_epi32(g_lo, g_hi), cr));
                // Saturate to bytes; the permute brings each channel's 16 bytes together.
                let narrow = |v: __m256i| {
                    _mm256_castsi256_si128(_mm256_permute4x64_epi64::<0b00_00_10_00>(
                        _mm256_packus_epi16(v, v),
                    ))
                };
                let channels = [narrow(r), narrow(g), narrow(b)];
                match &mut out {
                    RowOut::Rgb(rgb) => {
                        for (chunk, masks) in masks.iter().enumerate() {
                            let mut bytes = _mm_setzero_si128();
                            for (channel, mask) in channels.iter().zip(masks) {
                                bytes = _mm_or_si128(bytes, _mm_shuffle_epi8(*channel, *mask));
                            }
                            let at = rgb.as_mut_ptr().add(3 * i + 16 * chunk);
                            _mm_storeu_si128(at.cast(), bytes);
                        }
                    }
                    RowOut::Channels(planes) => {
                        for (plane, channel) in planes.iter_mut().zip(channels) {
                            _mm_storeu_si128(plane.as_mut_ptr().add(i).cast(), channel);
                        }
                    }
                }
            }
        }
        let done = blocks * 16;
        super::convert_scalar(&y[done..], &cb[done..], &cr[done..], out.skip(done));
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    /// The AVX2 conversion equals the scalar one on every (Y, Cb, Cr) triple.
    #[test]
    fn every_ycc_triple_converts_as_libjpeg() {
        if crate::decode::jpeg::skip_without_avx2() {
            return;
        }
        let mut y = Vec::with_capacity(1 << 16);
        let mut c = Vec::with_capacity(1 << 16);
        for luma in 0..=255u8 {
            for chroma in 0..=255u8 {
                y.push(luma);
                c.push(chroma);
            }
        }
        let (mut expected, mut got) = (vec![0; 3 << 16], vec![0; 3 << 16]);
        let mut channels = vec![0; 3 << 16];
        for cr in 0..=255u8 {
            // Cb runs over every value, Cr is fixed per round, so every triple appears.
            let crs = vec![cr; 1 << 16];
            convert_scalar(&y, &c, &crs, RowOut::Rgb(&mut expected));
            // SAFETY: AVX2 checked above.
            unsafe { avx2::convert(&y, &c, &crs, RowOut::Rgb(&mut got)) };
            assert!(got == expected, "Cr = {cr}");
            // The same pixels into channel planes (lengths not a multiple of 16: the tail).
            let (r, rest) = channels.split_at_mut(1 << 16);
            let (g, b) = rest.split_at_mut(1 << 16);
            let n = (1 << 16) - 5;
            // SAFETY: AVX2 checked above.
            unsafe { avx2::convert(&y[..n], &c, &crs, RowOut::Channels([r, g, b])) };
            for (i, px) in expected.chunks_exact(3).take(n).enumerate() {
                assert_eq!([r[i], g[i], b[i]], px, "Cr = {cr}, pixel {i} in channels");
            }
        }
        // The scalar version is libjpeg's table formula.
        assert_eq!(ycc_to_rgb(128, 128, 128), [128, 128, 128]);
        assert_eq!(ycc_to_rgb(128, 0, 255), [255, 81, 0]);
    }

    /// The AVX2 column pass equals the scalar one for both kinds, every width and offset.
    #[test]
    fn upsampling_passes_agree() {
        if crate::decode::jpeg::skip_without_avx2() {
            return;
        }
        let near: Vec<u8> = (0..200u32).map(|i| (i * 97 % 256) as u8).collect();
        let far: Vec<u8> = (0..200u32).map(|i| (i * 31 % 256) as u8).collect();
        let mut sums = Vec::new();
        for kind in [Upsample::H2V1, Upsample::H2V2] {
            for n in [3, 17, 64, 200] {
                for (c0, c1) in [(0, n), (1, n), (0, n - 1), (n / 3, n / 2 + 1)] {
                    column_sums(&near[..n], &far[..n], kind, c0, c1, &mut sums);
                    let count = c1 - c0;
                    let mut expected = vec![0; 2 * count];
                    interleave_scalar(&sums, kind, &mut expected);
                    sums.resize(sums.len().next_multiple_of(16) + 16, 0);
                    let mut got = vec![0; (2 * count).next_multiple_of(32)];
                    // SAFETY: AVX2 checked above; buffers padded.
                    unsafe { avx2::interleave(&sums, kind, count, &mut got) };
                    assert_eq!(got[..2 * count], expected[..], "{kind:?} n={n} {c0}..{c1}");
                }
            }
        }
    }
}
