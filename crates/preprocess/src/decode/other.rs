//! BMP and TIFF through the `image` crate. Not bit-exact with PIL by contract (the parity
//! tests measure and bound the difference), though 8-bit data decodes identically.

use std::io::Cursor;

use image::error::LimitErrorKind;
use image::{ColorType, ImageDecoder, ImageError};

use super::{RgbImage, drop_alpha, gray_to_rgb};
use crate::{Error, ImageFormat, Limits};

fn map(format: ImageFormat, e: ImageError, limits: &Limits) -> Error {
    match e {
        ImageError::IoError(e) => super::io_error(format, &e),
        ImageError::Limits(l) => match l.kind() {
            LimitErrorKind::DimensionError => {
                Error::TooLarge { width: 0, height: 0, max_pixels: limits.max_pixels }
            }
            _ => Error::AllocationLimit { needed: 0, max_alloc: limits.max_alloc },
        },
        ImageError::Unsupported(u) => Error::unsupported(format, u),
        other => Error::corrupt(format, other),
    }
}

pub(super) fn decode(
    format: ImageFormat,
    bytes: &[u8],
    limits: &Limits,
    out: &mut RgbImage,
    scratch: &mut Vec<u8>,
) -> Result<(u32, u32), Error> {
    let cursor = Cursor::new(bytes);
    let decoder: Box<dyn ImageDecoder> = match format {
        ImageFormat::Bmp => Box::new(
            image::codecs::bmp::BmpDecoder::new(cursor).map_err(|e| map(format, e, limits))?,
        ),
        _ => Box::new(
            image::codecs::tiff::TiffDecoder::new(cursor).map_err(|e| map(format, e, limits))?,
        ),
    };
    decode_with(format, decoder, limits, out, scratch)
}

fn decode_with(
    format: ImageFormat,
    mut decoder: Box<dyn ImageDecoder + '_>,
    limits: &Limits,
    out: &mut RgbImage,
    scratch: &mut Vec<u8>,
) -> Result<(u32, u32), Error> {
    let (width, height) = decoder.dimensions();
    limits.check_pixels(width, height)?;
    let mut image_limits = image::Limits::default();
    image_limits.max_alloc = Some(limits.max_alloc);
    decoder.set_limits(image_limits).map_err(|e| map(format, e, limits))?;
    let color = decoder.color_type();
    let total = decoder.total_bytes();
    limits.check_alloc(total + width as u64 * height as u64 * 3)?;
    scratch.clear();
    scratch.resize(total as usize, 0);
    decoder.read_image_boxed(scratch).map_err(|e| map(format, e, limits))?;
    let rgb = out.reset(width, height, limits)?;
    let u16s = |i: usize| u16::from_ne_bytes([scratch[2 * i], scratch[2 * i + 1]]);
    match color {
        ColorType::L8 => gray_to_rgb(scratch, rgb),
        ColorType::La8 => {
            for (px, s) in rgb.chunks_exact_mut(3).zip(scratch.chunks_exact(2)) {
                px.copy_from_slice(&[s[0]; 3]);
            }
        }
        ColorType::Rgb8 => rgb.copy_from_slice(scratch),
        ColorType::Rgba8 => drop_alpha(scratch, 4, rgb),
        // PIL clips "I;16" at 255 when converting to RGB.
        ColorType::L16 | ColorType::La16 => {
            let step = if color == ColorType::L16 { 1 } else { 2 };
            for (i, px) in rgb.chunks_exact_mut(3).enumerate() {
                px.fill(u16s(i * step).min(255) as u8);
            }
        }
        // PIL unpacks 16-bit color keeping the high byte.
        ColorType::Rgb16 | ColorType::Rgba16 => {
            let step = if color == ColorType::Rgb16 { 3 } else { 4 };
            for (i, px) in rgb.chunks_exact_mut(3).enumerate() {
                for (c, o) in px.iter_mut().enumerate() {
                    *o = (u16s(i * step + c) >> 8) as u8;
                }
            }
        }
        other => {
            return Err(Error::unsupported(format, format!("{other:?} pixels")));
        }
    }
    Ok((width, height))
}
