use std::io::Cursor;

use png::{BitDepth, ColorType, Transformations};

use super::{RgbImage, drop_alpha, gray_to_rgb, io_error};
use crate::{Error, ImageFormat, Limits};

const FORMAT: ImageFormat = ImageFormat::Png;

fn map(e: png::DecodingError, limits: &Limits) -> Error {
    match e {
        png::DecodingError::IoError(e) => io_error(FORMAT, &e),
        png::DecodingError::LimitsExceeded => {
            Error::AllocationLimit { needed: 0, max_alloc: limits.max_alloc }
        }
        other => Error::corrupt(FORMAT, other),
    }
}

pub(super) fn decode(
    bytes: &[u8],
    limits: &Limits,
    out: &mut RgbImage,
    scratch: &mut Vec<u8>,
) -> Result<(u32, u32), Error> {
    let png_limits = png::Limits { bytes: usize::try_from(limits.max_alloc).unwrap_or(usize::MAX) };
    let mut decoder = png::Decoder::new_with_limits(Cursor::new(bytes), png_limits);
    let header = decoder.read_header_info().map_err(|e| map(e, limits))?;
    let (width, height) = (header.width, header.height);
    let source_color = header.color_type;
    // Checked on the IHDR, before anything image-sized is allocated.
    limits.check_pixels(width, height)?;
    // Palettes and low bit depths are expanded to 8 bits (scaled as PIL's `L;1`/`L;2`/`L;4`
    // unpackers do); 16-bit samples stay 16-bit so that PIL's handling can be copied below.
    decoder.set_transformations(Transformations::EXPAND);
    let mut reader = decoder.read_info().map_err(|e| map(e, limits))?;
    let (color, depth) = reader.output_color_type();
    let size = reader
        .output_buffer_size()
        .ok_or(Error::AllocationLimit { needed: u64::MAX, max_alloc: limits.max_alloc })?;
    limits.check_alloc(size as u64 + width as u64 * height as u64 * 3)?;
    scratch.clear();
    scratch.resize(size, 0);
    let info = reader.next_frame(scratch).map_err(|e| map(e, limits))?;
    let src = &scratch[..info.buffer_size()];
    let rgb = out.reset(width, height, limits)?;
    let channels = color.samples();
    match depth {
        BitDepth::Eight => match color {
            ColorType::Grayscale => gray_to_rgb(src, rgb),
            ColorType::GrayscaleAlpha => {
                for (px, s) in rgb.chunks_exact_mut(3).zip(src.chunks_exact(2)) {
                    px.copy_from_slice(&[s[0]; 3]);
                }
            }
            ColorType::Rgb => rgb.copy_from_slice(src),
            ColorType::Rgba => drop_alpha(src, 4, rgb),
            ColorType::Indexed => {
                return Err(Error::unsupported(FORMAT, "unexpanded palette"));
            }
        },
        BitDepth::Sixteen => {
            // PIL opens 16-bit gray as "I;16" and converts it to RGB by clipping at 255;
            // 16-bit gray+alpha and color are unpacked as "LA;16B"/"RGB;16B"/"RGBA;16B",
            // which keep the high byte.
            let clip = source_color == ColorType::Grayscale;
            for (px, s) in rgb.chunks_exact_mut(3).zip(src.chunks_exact(channels * 2)) {
                let sample = |i: usize| {
                    if clip {
                        u16::from_be_bytes([s[2 * i], s[2 * i + 1]]).min(255) as u8
                    } else {
                        s[2 * i]
                    }
                };
                if channels <= 2 {
                    px.copy_from_slice(&[sample(0); 3]);
                } else {
                    px.copy_from_slice(&[sample(0), sample(1), sample(2)]);
                }
            }
        }
        other => {
            return Err(Error::unsupported(FORMAT, format!("bit depth {other:?} after expansion")));
        }
    }
    Ok((width, height))
}
