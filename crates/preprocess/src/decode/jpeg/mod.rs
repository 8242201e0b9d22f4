//! JPEG through libjpeg-turbo (as vendored by `mozjpeg-sys`), set up as Pillow sets it up:
//! accurate integer IDCT and fancy upsampling (libjpeg's defaults), CMYK read with Adobe's
//! inverted polarity. For the common colour layouts, the stages after entropy decoding are
//! ours (`coefficients`, `idct`, `ycc`), with libjpeg's formulas.

mod coefficients;
mod idct;
mod ycc;

use std::ffi::{CStr, c_int, c_ulong};
use std::mem;
use std::panic::{self, AssertUnwindSafe};

use mozjpeg_sys::*;

pub(crate) use self::coefficients::Planes;
use self::coefficients::{Layout, Wanted};
use super::{Hint, RgbImage, cmyk_to_rgb, gray_to_rgb};
use crate::resample::channel_route;
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

/// Payload carried from libjpeg's `error_exit` to our `catch_unwind`.
struct Abort {
    code: c_int,
    message: String,
}

fn message(cinfo: &mut jpeg_common_struct) -> String {
    let buffer = [0u8; 80];
    // SAFETY: `err` is the manager installed by `jpeg_std_error`; `format_message` writes a
    // NUL-terminated string of at most JMSG_LENGTH_MAX (80) bytes.
    unsafe {
        if let Some(format) = (*cinfo.err).format_message {
            format(cinfo, &buffer);
        }
    }
    CStr::from_bytes_until_nul(&buffer)
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

unsafe extern "C-unwind" fn error_exit(cinfo: &mut jpeg_common_struct) {
    // SAFETY: libjpeg passes the struct whose `err` we installed.
    let code = unsafe { (*cinfo.err).msg_code };
    let message = message(cinfo);
    // `resume_unwind` skips the panic hook: nothing is printed, the unwind is caught below.
    panic::resume_unwind(Box::new(Abort { code, message }))
}

unsafe extern "C-unwind" fn emit_message(cinfo: &mut jpeg_common_struct, level: c_int) {
    if level >= 0 {
        return; // trace messages
    }
    // SAFETY: as in `error_exit`.
    let err = unsafe { &mut *cinfo.err };
    // Running out of data is an error for Pillow (without LOAD_TRUNCATED_IMAGES) and for us;
    // other corrupt-data warnings are tolerated by both.
    if err.msg_code == JWRN_JPEG_EOF as c_int {
        panic::resume_unwind(Box::new(Abort {
            code: JWRN_JPEG_EOF as c_int,
            message: String::new(),
        }));
    }
    err.num_warnings += 1;
    tracing::trace!(warning = %message(cinfo), "libjpeg warning");
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
    // SAFETY: zeroed structs are the documented starting state before jpeg_std_error and
    // jpeg_create_decompress; both live on this stack frame until jpeg_destroy_decompress.
    let mut err: jpeg_error_mgr = unsafe { mem::zeroed() };
    let mut cinfo: jpeg_decompress_struct = unsafe { mem::zeroed() };
    // libjpeg reads the manager through `cinfo.common.err`, so it is only touched through
    // that one pointer from here on.
    let err_ptr: *mut jpeg_error_mgr = &mut err;
    // SAFETY: err_ptr points to `err`, alive for the whole function.
    unsafe {
        jpeg_std_error(&mut *err_ptr);
        (*err_ptr).error_exit = Some(error_exit);
        (*err_ptr).emit_message = Some(emit_message);
        cinfo.common.err = err_ptr;
    }

    let result = panic::catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: cinfo was prepared above; `bytes` outlives the decompressor.
        unsafe {
            jpeg_create_decompress(&mut cinfo);
            jpeg_mem_src(&mut cinfo, bytes.as_ptr(), bytes.len() as c_ulong);
            run(&mut cinfo, limits, hint, out, scratch, planes)
        }
    }));
    // SAFETY: frees libjpeg's pools whether decoding finished or unwound; a zeroed (never
    // created) struct has a null `mem` and is skipped by libjpeg.
    unsafe { jpeg_destroy_decompress(&mut cinfo) };
    match result {
        Ok(r) => r,
        Err(payload) => match payload.downcast::<Abort>() {
            Ok(abort) => Err(map_abort(*abort, limits)),
            Err(other) => panic::resume_unwind(other),
        },
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
#[cfg(test)]
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

/// The decode proper; may unwind out through `error_exit`.
unsafe fn run(
    cinfo: &mut jpeg_decompress_struct,
    limits: &Limits,
    hint: Hint,
    out: &mut RgbImage,
    scratch: &mut Vec<u8>,
    planes: &mut Planes,
) -> Result<Decoded, Error> {
    // SAFETY (whole body): cinfo is a created decompressor with a memory source.
    unsafe {
        // Bound libjpeg's own allocations (progressive coefficient buffers and the like);
        // exceeding it raises JERR_NO_BACKING_STORE.
        (*cinfo.common.mem).max_memory_to_use = limits.max_alloc.min(c_long_max()) as _;
        jpeg_read_header(cinfo, 1);
        let (width, height) = (cinfo.image_width, cinfo.image_height);
        limits.check_pixels(width, height)?;
        // Exact mode's region, and fast mode, through the coefficients where the layout allows
        // (a full decode stays on libjpeg's scanline route, the reference the tests hold the
        // coefficient route to).
        let route = match hint {
            Hint::Region(plan) => Some((Some(plan), 8)),
            // At 1/8 libjpeg's scanline route is faster: its entropy decoder skips storing the
            // AC coefficients that a DC-only IDCT does not read.
            Hint::Scale(target, plan) => {
                Some((plan, dct_scale(width, height, target))).filter(|&(_, scale)| scale > 1)
            }
            Hint::Full => None,
        };
        if let Some((plan, scale)) = route
            && let Some(kind) = coefficients::supported(cinfo, scale)
        {
            // Channel planes where the resampler's channel route will read them.
            let layout = match hint {
                Hint::Region(plan)
                    if channel_route(
                        &plan.window(width, height),
                        width as usize,
                        height as usize,
                    ) =>
                {
                    Layout::Channels
                }
                _ => Layout::Rgb,
            };
            let wanted = Wanted { plan, layout };
            coefficients::decode(cinfo, kind, scale, wanted, limits, out, planes)?;
            return Ok(Decoded { width, height });
        }
        let channels = match cinfo.num_components {
            1 => {
                cinfo.out_color_space = J_COLOR_SPACE::JCS_GRAYSCALE;
                1
            }
            3 => {
                cinfo.out_color_space = J_COLOR_SPACE::JCS_RGB;
                3
            }
            4 => {
                cinfo.out_color_space = J_COLOR_SPACE::JCS_CMYK;
                4
            }
            n => return Err(Error::unsupported(FORMAT, format!("{n} color components"))),
        };
        if let Hint::Scale(target, _) = hint {
            cinfo.scale_num = dct_scale(width, height, target) as _;
            cinfo.scale_denom = 8;
        }
        jpeg_start_decompress(cinfo);
        let (w, h) = (cinfo.output_width, cinfo.output_height);
        // Full decode unless a region leaves enough out to be worth it.
        let [mut x0, mut x1, mut y0, mut y1] = [0, w as usize, 0, h as usize];
        let rows = if let Hint::Region(plan) | Hint::Scale(_, Some(plan)) = hint {
            // Fancy upsampling treats the edges of a cropped region as image edges; a margin
            // of one iMCU (at most 16 pixels) keeps the pixels we read identical to a full
            // decode.
            const MARGIN: usize = 16;
            let [rx0, rx1, ry0, ry1] = plan.source_region(w, h);
            y0 = ry0.saturating_sub(MARGIN);
            y1 = (ry1 + MARGIN).min(h as usize);
            let (cx0, cx1) = (rx0.saturating_sub(MARGIN), (rx1 + MARGIN).min(w as usize));
            if cx1 - cx0 < w as usize * 7 / 8 {
                let mut xoffset = cx0 as JDIMENSION;
                let mut width = (cx1 - cx0) as JDIMENSION;
                jpeg_crop_scanline(cinfo, &mut xoffset, &mut width);
                x0 = xoffset as usize;
                x1 = x0 + width as usize;
            }
            out.reset_stale(w, h, limits)?
        } else {
            out.reset(w, h, limits)?
        };
        let stride = w as usize * 3;
        let span = x1 - x0;
        skip(cinfo, y0)?;
        scratch.clear();
        scratch.resize(span * channels, 0);
        for row in rows.chunks_exact_mut(stride).skip(y0).take(y1 - y0) {
            let row = &mut row[x0 * 3..x1 * 3];
            let target = if channels == 3 { row.as_mut_ptr() } else { scratch.as_mut_ptr() };
            let mut ptr = target;
            if jpeg_read_scanlines(cinfo, &mut ptr, 1) != 1 {
                return Err(Error::Truncated { format: FORMAT });
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
        // Entropy-decode the rest so that a truncated file fails as it does in PIL. (Skipping
        // to the very bottom would mark the end as reached without reading it, so the last
        // row is read.)
        let rest = h as usize - y1;
        if rest > 0 {
            skip(cinfo, rest - 1)?;
            let mut ptr = scratch.as_mut_ptr();
            if jpeg_read_scanlines(cinfo, &mut ptr, 1) != 1 {
                return Err(Error::Truncated { format: FORMAT });
            }
        }
        jpeg_finish_decompress(cinfo);
        Ok(Decoded { width, height })
    }
}

/// Skips `n` scanlines (entropy decoding only, no IDCT).
unsafe fn skip(cinfo: &mut jpeg_decompress_struct, n: usize) -> Result<(), Error> {
    if n > 0 {
        // SAFETY: called between jpeg_start_decompress and jpeg_finish_decompress.
        let skipped = unsafe { jpeg_skip_scanlines(cinfo, n as JDIMENSION) };
        if skipped as usize != n {
            return Err(Error::Truncated { format: FORMAT });
        }
    }
    Ok(())
}

fn c_long_max() -> u64 {
    std::ffi::c_long::MAX as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Filter, ResizeTarget};
    use crate::decode::Pixels;
    use crate::engine::Plan;

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
                let plan = Plan { resize, crop, filter: Filter::Bicubic };
                let mut region = RgbImage::new();
                let hint = Hint::Region(plan);
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
                        "{name}: row {y} differs ({resize:?}, crop {crop})"
                    );
                }
                tested += 1;
            }
        }
        assert!(tested >= 290, "only {tested} decodes compared");
        // Both layouts are compared (channel planes only where the CPU has AVX2).
        assert!(in_channels > 100 || !avx2_available(), "{in_channels} in channel planes");
        assert!(tested - in_channels >= 40, "{} interleaved", tested - in_channels);
    }
}
