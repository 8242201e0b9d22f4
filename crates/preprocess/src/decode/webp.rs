use std::io::Cursor;

use image_webp::{DecodingError, WebPDecoder};

use super::{RgbImage, drop_alpha, io_error};
use crate::{Error, ImageFormat, Limits};

const FORMAT: ImageFormat = ImageFormat::Webp;

fn map(e: DecodingError, limits: &Limits) -> Error {
    match e {
        DecodingError::IoError(e) => io_error(FORMAT, &e),
        DecodingError::MemoryLimitExceeded => {
            Error::AllocationLimit { needed: 0, max_alloc: limits.max_alloc }
        }
        DecodingError::UnsupportedFeature(f) => Error::unsupported(FORMAT, f),
        other => Error::corrupt(FORMAT, other),
    }
}

/// Lossy, lossless and animated WebP (first frame, on a transparent-black canvas as libwebp's
/// `WebPAnimDecoder`, which Pillow uses, draws it); alpha is dropped, not composited.
pub(super) fn decode(
    bytes: &[u8],
    limits: &Limits,
    out: &mut RgbImage,
    scratch: &mut Vec<u8>,
) -> Result<(u32, u32), Error> {
    let mut decoder = WebPDecoder::new(Cursor::new(bytes)).map_err(|e| map(e, limits))?;
    let (width, height) = decoder.dimensions();
    limits.check_pixels(width, height)?;
    decoder.set_memory_limit(usize::try_from(limits.max_alloc).unwrap_or(usize::MAX));
    if decoder.is_animated() {
        decoder.set_background_color([0, 0, 0, 0]).map_err(|e| map(e, limits))?;
    }
    let channels = if decoder.has_alpha() { 4 } else { 3 };
    let size = width as u64 * height as u64 * channels as u64;
    if channels == 3 {
        limits.check_alloc(size)?;
        let rgb = out.reset(width, height, limits)?;
        decoder.read_image(rgb).map_err(|e| map(e, limits))?;
    } else {
        limits.check_alloc(size + width as u64 * height as u64 * 3)?;
        scratch.clear();
        scratch.resize(size as usize, 0);
        decoder.read_image(scratch).map_err(|e| map(e, limits))?;
        let rgb = out.reset(width, height, limits)?;
        drop_alpha(scratch, 4, rgb);
    }
    Ok((width, height))
}
