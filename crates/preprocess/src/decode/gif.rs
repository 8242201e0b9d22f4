use std::num::NonZeroU64;

use gif::{ColorOutput, DecodeOptions, MemoryLimit};

use super::RgbImage;
use crate::{Error, ImageFormat, Limits};

const FORMAT: ImageFormat = ImageFormat::Gif;

fn map(e: gif::DecodingError, limits: &Limits) -> Error {
    match e {
        gif::DecodingError::UnexpectedEof => Error::Truncated { format: FORMAT },
        gif::DecodingError::Io(e) => super::io_error(FORMAT, &e),
        gif::DecodingError::MemoryLimit | gif::DecodingError::OutOfMemory => {
            Error::AllocationLimit { needed: 0, max_alloc: limits.max_alloc }
        }
        other => Error::corrupt(FORMAT, other),
    }
}

/// The first frame as PIL loads it: a canvas of the logical screen (grown to hold the frame)
/// filled with the frame's transparent index, or index 0, the frame pasted at its offset, then
/// mapped through the local or global palette. Entries a short palette lacks read as PIL's
/// default gray ramp `(i, i, i)`; transparency is dropped.
pub(super) fn decode(
    bytes: &[u8],
    limits: &Limits,
    out: &mut RgbImage,
) -> Result<(u32, u32), Error> {
    let mut options = DecodeOptions::new();
    options.set_color_output(ColorOutput::Indexed);
    options.set_memory_limit(match NonZeroU64::new(limits.max_alloc) {
        Some(max) => MemoryLimit::Bytes(max),
        None => MemoryLimit::Bytes(NonZeroU64::MIN),
    });
    let mut decoder = options.read_info(bytes).map_err(|e| map(e, limits))?;
    let (screen_w, screen_h) = (decoder.width() as u32, decoder.height() as u32);
    limits.check_pixels(screen_w.max(1), screen_h.max(1))?;
    let mut palette = [0u8; 768];
    for (i, px) in palette.chunks_exact_mut(3).enumerate() {
        px.fill(i as u8);
    }
    let global: Option<Vec<u8>> = decoder.global_palette().map(<[u8]>::to_vec);
    let frame = decoder
        .read_next_frame()
        .map_err(|e| map(e, limits))?
        .ok_or_else(|| Error::corrupt(FORMAT, "no image in file"))?;
    if let Some(p) = frame.palette.as_deref().or(global.as_deref()) {
        let n = p.len().min(768) / 3 * 3;
        palette[..n].copy_from_slice(&p[..n]);
    }
    let (left, top) = (frame.left as u32, frame.top as u32);
    let (fw, fh) = (frame.width as u32, frame.height as u32);
    let width = screen_w.max(left + fw);
    let height = screen_h.max(top + fh);
    limits.check_pixels(width, height)?;
    let fill = frame.transparent.unwrap_or(0) as usize;
    let rgb = out.reset(width, height, limits)?;
    let background = [palette[fill * 3], palette[fill * 3 + 1], palette[fill * 3 + 2]];
    for px in rgb.chunks_exact_mut(3) {
        px.copy_from_slice(&background);
    }
    let stride = width as usize * 3;
    for (y, src_row) in frame.buffer.chunks_exact(fw.max(1) as usize).enumerate() {
        let row = &mut rgb[(top as usize + y) * stride..][..stride];
        let dst = &mut row[left as usize * 3..][..fw as usize * 3];
        for (px, &i) in dst.chunks_exact_mut(3).zip(src_row) {
            let i = i as usize * 3;
            px.copy_from_slice(&palette[i..i + 3]);
        }
    }
    Ok((width, height))
}
