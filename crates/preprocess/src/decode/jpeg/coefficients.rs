//! The region route for YCbCr JPEGs: libjpeg entropy-decodes the whole file to DCT
//! coefficients (`jpeg_read_coefficients`), then only the blocks under the region go through
//! our inverse DCT (SSE2 on x86-64), upsampling and color conversion (AVX2 where the CPU has
//! it); portable versions elsewhere; the same integer formulas as libjpeg's C code, so the
//! same bytes as its scanline route.

use mozjpeg_sys::J_COLOR_SPACE;

use super::idct;
use super::libjpeg::Decompressor;
use super::ycc::{ChromaRows, RowConverter, RowOut, Upsample};
use super::{FORMAT, Failure};
use crate::decode::RgbImage;
use crate::geometry::Plan;
use crate::pixels::Layout;
use crate::{Error, Limits};

/// Buffers reused from one JPEG to the next.
#[derive(Debug, Default)]
pub(crate) struct Planes {
    /// Samples of each component at its own resolution (only the needed blocks written).
    samples: [Vec<u8>; 3],
    converter: RowConverter,
}

/// What [`decode`] writes: the pixels `plan`'s window reads (without a plan, all), in
/// `layout`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Wanted {
    pub plan: Option<Plan>,
    pub layout: Layout,
}

/// One component's geometry.
#[derive(Debug, Clone, Copy)]
struct Component {
    /// Output pixels per sample across and down (1 or 2).
    h: usize,
    v: usize,
    /// Samples per row and rows (libjpeg's `downsampled_width` / `downsampled_height`).
    width: usize,
    height: usize,
    /// Bytes per row of the sample buffer (whole blocks).
    stride: usize,
}

/// The chroma layout this route handles at DCT scaling `scale` / 8, from the header; `None`
/// sends the image down libjpeg's scanline route (grayscale, CMYK, RGB, 4:4:0, 4:1:1, images
/// too narrow for fancy upsampling, 4:2:2 when downscaled).
pub(super) fn supported(jpeg: &Decompressor<'_>, scale: usize) -> Option<Upsample> {
    let cinfo = jpeg.info();
    if cinfo.num_components != 3 || cinfo.jpeg_color_space != J_COLOR_SPACE::JCS_YCbCr {
        return None;
    }
    let comps = jpeg.components();
    if comps[1..].iter().any(|c| (c.h_samp_factor, c.v_samp_factor) != (1, 1)) {
        return None;
    }
    let kind = match (comps[0].h_samp_factor, comps[0].v_samp_factor) {
        (1, 1) => Upsample::None,
        (2, 1) if scale == 8 => Upsample::H2V1,
        (2, 2) => Upsample::H2V2,
        _ => return None,
    };
    // libjpeg upsamples chroma 2 samples wide or less by replication, not the triangle.
    let chroma_width = (cinfo.image_width as usize).div_ceil(2);
    if scale == 8 && kind != Upsample::None && chroma_width <= 2 {
        return None;
    }
    Some(kind)
}

/// Decodes the [`Wanted`] pixels into `out` (sized for the whole image, the rest left
/// stale); `jpeg` has read the header and passed [`supported`] with `kind` and `scale`.
///
/// At `scale` 8 the output is exact; below, it is the image downscaled by `scale` / 8 in the
/// DCT domain (libjpeg's output size, rounded up), every component decoded straight onto the
/// output grid by reduced IDCTs (4:2:0 chroma at twice the luma's reduced size), so nothing
/// is upsampled.
pub(super) fn decode(
    jpeg: &mut Decompressor<'_>,
    kind: Upsample,
    scale: usize,
    Wanted { plan, layout }: Wanted,
    limits: &Limits,
    out: &mut RgbImage,
    planes: &mut Planes,
) -> Result<(), Failure> {
    let (width, height) = (jpeg.info().image_width as usize, jpeg.info().image_height as usize);
    let (out_width, out_height) = ((width * scale).div_ceil(8), (height * scale).div_ceil(8));
    let [x0, x1, y0, y1] = match plan {
        Some(plan) => plan.source_region(out_width as u32, out_height as u32),
        None => [0, out_width, 0, out_height],
    };
    jpeg.read_coefficients()?;
    let info = jpeg.info();
    let (max_h, max_v) = (info.max_h_samp_factor as usize, info.max_v_samp_factor as usize);
    let mut comps = [None; 3];
    for (ci, comp) in comps.iter_mut().enumerate() {
        let info = &jpeg.components()[ci];
        let (hf, vf) = (info.h_samp_factor as usize, info.v_samp_factor as usize);
        let (width_in_blocks, height_in_blocks) =
            (info.width_in_blocks as usize, info.height_in_blocks as usize);
        // Samples per block edge, and the component's grid.
        let (size, c) = if scale == 8 {
            let c = Component {
                h: max_h / hf,
                v: max_v / vf,
                width: (width * hf).div_ceil(max_h),
                height: (height * vf).div_ceil(max_v),
                stride: width_in_blocks * 8,
            };
            (8, c)
        } else {
            let size = scale * max_h / hf;
            let stride = width_in_blocks * size;
            (size, Component { h: 1, v: 1, width: out_width, height: out_height, stride })
        };
        let Some(table) = jpeg.quant_table(ci) else {
            return Err(Error::corrupt(FORMAT, "missing quantization table").into());
        };
        // libjpeg's ISLOW_MULT_TYPE is a short.
        let quant: [i16; 64] = table.map(|q| q as i16);
        // Samples the region reads, with the upsampling filter's neighbors.
        let (sx0, sx1) = (x0 / c.h, (x1 - 1) / c.h + 1);
        let (sy0, sy1) = (y0 / c.v, (y1 - 1) / c.v + 1);
        let (sx0, sx1) = (sx0.saturating_sub(c.h - 1), (sx1 + c.h - 1).min(c.width));
        let (sy0, sy1) = (sy0.saturating_sub(c.v - 1), (sy1 + c.v - 1).min(c.height));
        let samples = &mut planes.samples[ci];
        let len = c.stride * height_in_blocks * size;
        limits.check_alloc(len as u64)?;
        if samples.len() < len {
            samples.resize(len, 0);
        }
        let reduced = (size < 8).then(|| idct::Reduced::new(size));
        for by in sy0 / size..sy1.div_ceil(size) {
            let blocks = jpeg.block_row(ci, by)?;
            let band = &mut samples[by * size * c.stride..][..size * c.stride];
            for bx in sx0 / size..sx1.div_ceil(size) {
                let (block, at) = (&blocks[bx], &mut band[bx * size..]);
                match &reduced {
                    None => idct::idct(block, &quant, at, c.stride),
                    Some(r) => r.transform(block, &quant, at, c.stride),
                }
            }
        }
        *comp = Some(c);
    }
    let [luma, cb, cr] = comps.map(|c| c.expect("three components"));
    let kind = if scale == 8 { kind } else { Upsample::None };
    let (w, h) = (out_width as u32, out_height as u32);
    let [luma_samples, cb_samples, cr_samples] = &planes.samples;
    // The whole image, sliced into rows below.
    let mut image = match layout {
        Layout::Rgb => RowOut::Rgb(out.reset_stale(w, h, limits)?),
        Layout::Channels => RowOut::Channels(out.reset_stale_channels(w, h, limits)?),
    };
    for y in y0..y1 {
        let line = &luma_samples[y * luma.stride + x0..][..x1 - x0];
        let at = y * out_width + x0;
        let row = match &mut image {
            RowOut::Rgb(rgb) => RowOut::Rgb(&mut rgb[at * 3..][..(x1 - x0) * 3]),
            RowOut::Channels(c) => {
                RowOut::Channels(c.each_mut().map(|c| &mut c[at..x1 + y * out_width]))
            }
        };
        let chroma = [chroma_rows(cb_samples, cb, y), chroma_rows(cr_samples, cr, y)];
        planes.converter.row(line, x0, kind, chroma, row);
    }
    jpeg.finish()?;
    Ok(())
}

/// The chroma rows output row `y` reads from a component's samples: for 4:2:0 the nearest
/// row and the one above (even `y`) or below (odd `y`), clamped to the image.
fn chroma_rows(samples: &[u8], c: Component, y: usize) -> ChromaRows<'_> {
    let row = |r: usize| &samples[r * c.stride..][..c.width];
    let near = y / c.v;
    let far = if c.v == 1 {
        near
    } else if y.is_multiple_of(2) {
        near.saturating_sub(1)
    } else {
        (near + 1).min(c.height - 1)
    };
    ChromaRows { near: row(near), far: row(far) }
}
