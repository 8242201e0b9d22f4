//! JPEG through libjpeg-turbo (as vendored by `mozjpeg-sys`), set up as Pillow sets it up:
//! accurate integer IDCT and fancy upsampling (libjpeg's defaults), CMYK read with Adobe's
//! inverted polarity. For the common colour layouts, the stages after entropy decoding are
//! ours (`coefficients`, `idct`, `ycc`), with libjpeg's formulas.

mod coefficients;
mod idct;
mod libjpeg;
mod ycc;

use std::ffi::c_int;

use mozjpeg_sys::{
    J_COLOR_SPACE, JERR_ARITH_NOTIMPL, JERR_CONVERSION_NOTIMPL, JERR_INPUT_EMPTY,
    JERR_NO_BACKING_STORE, JERR_NOTIMPL, JERR_OUT_OF_MEMORY, JWRN_JPEG_EOF,
};

pub(crate) use self::coefficients::Planes;
use self::coefficients::Wanted;
use self::libjpeg::{Abort, Decompressor};
use super::{Hint, RgbImage, cmyk_to_rgb, gray_to_rgb};
use crate::pixels::Layout;
use crate::{Error, ImageFormat, Limits};

const FORMAT: ImageFormat = ImageFormat::Jpeg;

/// Whether this CPU runs our AVX2 upsampling and color conversion (checked once per process
/// by std); without it the portable versions run.
fn avx2_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    return is_x86_feature_detected!("avx2");
    #[cfg(not(target_arch = "x86_64"))]
    return false;
}

/// What the JPEG header says, read before anything large is allocated.
pub(crate) struct Decoded {
    pub width: u32,
    pub height: u32,
}

/// Decodes `bytes` into `out` as RGB8.
///
/// Everything is always entropy-decoded, so truncation is caught as PIL catches it. With
/// [`Hint::Region`], or [`Hint::Scale`] at 1/2 or 1/4, YCbCr JPEGs in the common chroma layouts
/// go through their DCT coefficients and our own transforms on just the blocks the plan reads
/// (see `coefficients`). Otherwise libjpeg's scanline decoder runs, downscaling by n/8 for
/// [`Hint::Scale`] and, with a plan, skipping the IDCT, upsampling and color conversion outside
/// the region (with a margin).
pub(crate) fn decode(
    bytes: &[u8],
    limits: &Limits,
    hint: Hint,
    out: &mut RgbImage,
    scratch: &mut Vec<u8>,
    planes: &mut Planes,
) -> Result<Decoded, Error> {
    let mut jpeg = Decompressor::new(bytes, limits.max_alloc).map_err(|a| map_abort(a, limits))?;
    jpeg.read_header().map_err(|a| map_abort(a, limits))?;
    let (width, height) = (jpeg.info().image_width, jpeg.info().image_height);
    limits.check_pixels(width, height)?;
    match decode_pixels(&mut jpeg, limits, hint, out, scratch, planes) {
        Ok(()) => Ok(Decoded { width, height }),
        Err(Failure::Jpeg(abort)) => Err(map_abort(abort, limits)),
        Err(Failure::Ours(err)) => Err(err),
    }
}

/// Why decoding stopped: libjpeg's error, or ours.
enum Failure {
    Jpeg(Abort),
    Ours(Error),
}

impl From<Abort> for Failure {
    fn from(abort: Abort) -> Self {
        Failure::Jpeg(abort)
    }
}

impl From<Error> for Failure {
    fn from(err: Error) -> Self {
        Failure::Ours(err)
    }
}

fn map_abort(abort: Abort, limits: &Limits) -> Error {
    let code = abort.code;
    if code == JWRN_JPEG_EOF as c_int || code == JERR_INPUT_EMPTY as c_int {
        Error::Truncated { format: FORMAT }
    } else if code == JERR_NO_BACKING_STORE as c_int || code == JERR_OUT_OF_MEMORY as c_int {
        Error::AllocationLimit { needed: 0, max_alloc: limits.max_alloc }
    } else if code == JERR_ARITH_NOTIMPL as c_int
        || code == JERR_NOTIMPL as c_int
        || code == JERR_CONVERSION_NOTIMPL as c_int
    {
        Error::unsupported(FORMAT, abort.message)
    } else {
        Error::corrupt(FORMAT, abort.message)
    }
}

/// For the AVX2 unit tests: true, with a one-line reason, on a CPU without AVX2.
#[cfg(all(test, target_arch = "x86_64"))]
fn skip_without_avx2() -> bool {
    if !avx2_available() {
        eprintln!("skipped: this CPU has no AVX2");
    }
    !avx2_available()
}

/// DCT scaling `n` (of n/8) for fast mode: the smallest of 1/8, 1/4, 1/2 (libjpeg-turbo's
/// fast reduced IDCTs) whose scaled short side (libjpeg rounds up) still covers `target`;
/// else 8, no scaling.
fn dct_scale(width: u32, height: u32, target: u32) -> usize {
    let short = width.min(height) as u64;
    [1, 2, 4, 8].into_iter().find(|&n| (short * n as u64).div_ceil(8) >= target as u64).unwrap_or(8)
}

/// The decode proper, after the header.
fn decode_pixels(
    jpeg: &mut Decompressor<'_>,
    limits: &Limits,
    hint: Hint,
    out: &mut RgbImage,
    scratch: &mut Vec<u8>,
    planes: &mut Planes,
) -> Result<(), Failure> {
    let (width, height) = (jpeg.info().image_width, jpeg.info().image_height);
    // Exact mode's region, and fast mode, through the coefficients where the layout allows
    // (a full decode stays on libjpeg's scanline route, the reference the tests hold the
    // coefficient route to).
    let route = match hint {
        Hint::Region(plan, _) => Some((Some(plan), 8)),
        // At 1/8 libjpeg's scanline route is faster: its entropy decoder skips storing the
        // AC coefficients that a DC-only IDCT does not read.
        Hint::Scale(target, plan) => {
            Some((plan, dct_scale(width, height, target))).filter(|&(_, scale)| scale > 1)
        }
        Hint::Full => None,
    };
    if let Some((plan, scale)) = route
        && let Some(kind) = coefficients::supported(jpeg, scale)
    {
        // Channel planes where the resampler's channel route will read them.
        let layout = match hint {
            Hint::Region(plan, rule) => {
                rule.layout(&plan.window(width, height), width as usize, height as usize)
            }
            _ => Layout::Rgb,
        };
        let wanted = Wanted { plan, layout };
        return coefficients::decode(jpeg, kind, scale, wanted, limits, out, planes);
    }
    let (color_space, channels) = match jpeg.info().num_components {
        1 => (J_COLOR_SPACE::JCS_GRAYSCALE, 1),
        3 => (J_COLOR_SPACE::JCS_RGB, 3),
        4 => (J_COLOR_SPACE::JCS_CMYK, 4),
        n => return Err(Error::unsupported(FORMAT, format!("{n} color components")).into()),
    };
    let scale = match hint {
        Hint::Scale(target, _) => dct_scale(width, height, target),
        _ => 8,
    };
    jpeg.set_output(color_space, scale as u32);
    let (w, h) = jpeg.start()?;
    // Full decode unless a region leaves enough out to be worth it.
    let [mut x0, mut x1, mut y0, mut y1] = [0, w as usize, 0, h as usize];
    let rows = if let Hint::Region(plan, _) | Hint::Scale(_, Some(plan)) = hint {
        // Fancy upsampling treats the edges of a cropped region as image edges; a margin of
        // one iMCU (at most 16 pixels) keeps the pixels we read identical to a full decode.
        const MARGIN: usize = 16;
        let [rx0, rx1, ry0, ry1] = plan.source_region(w, h);
        y0 = ry0.saturating_sub(MARGIN);
        y1 = (ry1 + MARGIN).min(h as usize);
        let (cx0, cx1) = (rx0.saturating_sub(MARGIN), (rx1 + MARGIN).min(w as usize));
        if cx1 - cx0 < w as usize * 7 / 8 {
            let (start, span) = jpeg.crop_scanline(cx0, cx1 - cx0)?;
            (x0, x1) = (start, start + span);
        }
        out.reset_stale(w, h, limits)?
    } else {
        out.reset(w, h, limits)?
    };
    let stride = w as usize * 3;
    let span = x1 - x0;
    skip(jpeg, y0)?;
    scratch.clear();
    scratch.resize(span * channels, 0);
    for row in rows.chunks_exact_mut(stride).skip(y0).take(y1 - y0) {
        let row = &mut row[x0 * 3..x1 * 3];
        let target = if channels == 3 { &mut row[..] } else { &mut scratch[..] };
        if !jpeg.read_scanline(target)? {
            return Err(Error::Truncated { format: FORMAT }.into());
        }
        if channels == 1 {
            gray_to_rgb(scratch, row);
        } else if channels == 4 {
            // Pillow reads CMYK JPEGs as "CMYK;I": Adobe's inverted polarity.
            for v in scratch.iter_mut() {
                *v = 255 - *v;
            }
            cmyk_to_rgb(scratch, row);
        }
    }
    // Entropy-decode the rest so that a truncated file fails as it does in PIL. (Skipping to
    // the very bottom would mark the end as reached without reading it, so the last row is
    // read.)
    let rest = h as usize - y1;
    if rest > 0 {
        skip(jpeg, rest - 1)?;
        if !jpeg.read_scanline(scratch)? {
            return Err(Error::Truncated { format: FORMAT }.into());
        }
    }
    jpeg.finish()?;
    Ok(())
}

/// Skips `n` scanlines (entropy decoding only, no IDCT); fewer is truncation.
fn skip(jpeg: &mut Decompressor<'_>, n: usize) -> Result<(), Failure> {
    if n > 0 && jpeg.skip_scanlines(n)? != n {
        return Err(Error::Truncated { format: FORMAT }.into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Filter, ResizeTarget};
    use crate::geometry::Plan;
    use crate::pixels::{LayoutRule, Pixels};

    /// JPEGs made here: every chroma layout (4:4:4, 4:2:2, 4:2:0, and 4:4:0, which takes
    /// the scanline route), baseline and progressive, odd sizes, noise and smooth gradients.
    fn generated_jpegs() -> Vec<(String, Vec<u8>)> {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut found = Vec::new();
        let sizes = [(5, 3), (6, 9), (9, 7), (17, 33), (33, 17), (100, 61), (250, 251), (643, 19)];
        for (i, &(w, h)) in sizes.iter().enumerate() {
            let pixels: Vec<u8> = (0..w * h * 3)
                .map(|p| {
                    crate::xorshift(&mut state);
                    let (x, y) = ((p / 3) % w, (p / 3) / w);
                    let smooth = ((x * 255 / w + y * 128 / h + p % 3 * 60) % 256) as u8;
                    // Every other image is noise, which drives the transforms to their limits.
                    if i % 2 == 0 { (state >> 32) as u8 } else { smooth }
                })
                .collect();
            // Baseline with standard or optimized Huffman tables, and progressive.
            for (sampling, progressive, optimize, quality) in [
                ((1, 1), false, false, 95.0),
                ((2, 1), true, true, 75.0),
                ((2, 2), false, false, 90.0),
                ((2, 2), false, true, 60.0),
                ((2, 2), true, true, 100.0),
                ((1, 2), false, false, 85.0),
            ] {
                let mut c = mozjpeg::Compress::new(mozjpeg::ColorSpace::JCS_RGB);
                // libjpeg-turbo's defaults (baseline) rather than mozjpeg's.
                c.set_fastest_defaults();
                c.set_size(w, h);
                c.set_quality(quality);
                c.set_chroma_sampling_pixel_sizes(sampling, sampling);
                c.set_optimize_coding(optimize);
                if progressive {
                    c.set_progressive_mode();
                }
                let mut c = c.start_compress(Vec::new()).unwrap();
                c.write_scanlines(&pixels).unwrap();
                let name = format!(
                    "{w}x{h} {sampling:?} progressive={progressive} optimize={optimize} q{quality}"
                );
                found.push((name, c.finish().unwrap()));
            }
        }
        found
    }

    /// A region decode (the coefficient route where it applies, else cropped columns and
    /// skipped rows) equals libjpeg's full decode wherever the window reads, for every fixture
    /// and generated JPEG and several crop geometries.
    #[test]
    fn region_decode_matches_full_decode() {
        let limits = Limits::default();
        let (mut scratch, mut planes) = (Vec::new(), Planes::default());
        let (mut tested, mut in_channels, mut interleaved) = (0, 0, Vec::new());
        let fixtures = crate::fixture_jpegs()
            .into_iter()
            .map(|(path, bytes)| (path.display().to_string(), bytes));
        for (name, bytes) in fixtures.chain(generated_jpegs()) {
            let mut full = RgbImage::new();
            decode(&bytes, &limits, Hint::Full, &mut full, &mut scratch, &mut planes).unwrap();
            for (resize, crop) in [
                (ResizeTarget::ShortestEdge(224), 224),
                (ResizeTarget::ShortestEdge(336), 336),
                (ResizeTarget::ShortestEdge(64), 32),
                (ResizeTarget::Exact { height: 100, width: 48 }, 40),
                (ResizeTarget::Exact { height: 3, width: 2 }, 1),
            ] {
                for rule in [LayoutRule::Rgb, LayoutRule::ChannelsWhenBothAxesResize] {
                    let plan = Plan { resize, crop, filter: Filter::Bicubic };
                    let mut region = RgbImage::new();
                    let hint = Hint::Region(plan, rule);
                    decode(&bytes, &limits, hint, &mut region, &mut scratch, &mut planes).unwrap();
                    let (w, h) = (full.width(), full.height());
                    assert_eq!((region.width(), region.height()), (w, h));
                    in_channels += matches!(region.pixels(), Pixels::Channels(_)) as usize;
                    let [x0, x1, y0, y1] = plan.source_region(w, h);
                    // Interleaved whether the region came in channel planes or not.
                    let region = region.pixels().interleaved(&mut interleaved);
                    for y in y0..y1 {
                        let span = (y * w as usize + x0) * 3..(y * w as usize + x1) * 3;
                        assert!(
                            full.as_raw()[span.clone()] == region[span],
                            "{name}: row {y} differs ({resize:?}, crop {crop}, {rule:?})"
                        );
                    }
                    tested += 1;
                }
            }
        }
        assert!(tested >= 580, "only {tested} decodes compared");
        // Both layouts are compared, whatever the CPU.
        assert!(in_channels > 100, "{in_channels} in channel planes");
        assert!(tested - in_channels >= 40, "{} interleaved", tested - in_channels);
    }
}
