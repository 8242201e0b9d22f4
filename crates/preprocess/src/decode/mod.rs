//! Decoding any supported format to RGB8 the way PIL's `Image.open(..).convert("RGB")` does.

mod gif;
mod jpeg;
mod other;
mod png;
mod webp;

use crate::geometry::Plan;
use crate::pixels::{LayoutRule, Pixels};
use crate::{Error, ImageFormat, ImageInfo, Limits};

/// What the engine will do with the pixels, so a decoder may skip work.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Hint {
    /// Decode everything.
    Full,
    /// Fast mode: a JPEG may be downscaled by libjpeg (DCT domain) as far as its short side
    /// stays at least this long; with a plan, as for [`Hint::Region`], only the pixels under
    /// the plan's crop window (of the downscaled image) will be read.
    Scale(u32, Option<Plan>),
    /// Exact mode: only the source pixels under this plan's crop window will be read, so a
    /// JPEG may leave the rest of the buffer stale (all data is still entropy-decoded, so
    /// errors are the same) and write channel planes where the rule, chosen by the engine for
    /// its resampler, says so; the only hint that allows them.
    Region(Plan, LayoutRule),
}

/// An 8-bit RGB image in a buffer that is reused from one decode to the next.
#[derive(Debug, Clone, Default)]
pub struct RgbImage {
    width: u32,
    height: u32,
    /// The pixels in `data[..len]`; `data` keeps the length of the largest image decoded
    /// into it, so that a larger image after a smaller one is not zero-filled first.
    data: Vec<u8>,
    len: usize,
    /// Whether `data` holds three channel planes instead of interleaved pixels: only for
    /// images the engine decodes for its own use ([`RgbImage::reset_stale_channels`]).
    channels: bool,
}

impl RgbImage {
    /// An empty image; the first decode sizes the buffer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Wraps interleaved RGB8 pixels; `None` when the length is not `width * height * 3`.
    pub fn from_raw(width: u32, height: u32, data: Vec<u8>) -> Option<Self> {
        (data.len() as u64 == width as u64 * height as u64 * 3).then_some(RgbImage {
            width,
            height,
            len: data.len(),
            data,
            channels: false,
        })
    }

    /// Width in pixels.
    pub fn width(&self) -> u32 {
        self.width
    }

    /// Height in pixels.
    pub fn height(&self) -> u32 {
        self.height
    }

    /// Interleaved RGB8 pixels, row by row, `width * height * 3` bytes.
    pub fn as_raw(&self) -> &[u8] {
        // Channel planes never leave the engine.
        debug_assert!(!self.channels, "an engine-internal image in channel planes");
        &self.data[..self.len]
    }

    /// The pixels in their layout.
    pub(crate) fn pixels(&self) -> Pixels<'_> {
        if !self.channels {
            return Pixels::Rgb(&self.data[..self.len]);
        }
        let plane = self.width as usize * self.height as usize;
        let (r, rest) = self.data[..self.len].split_at(plane);
        let (g, b) = rest.split_at(plane);
        Pixels::Channels([r, g, &b[..plane]])
    }

    /// Resizes the buffer for a `width` x `height` image after checking the allocation limit,
    /// and returns it.
    pub(crate) fn reset(
        &mut self,
        width: u32,
        height: u32,
        limits: &Limits,
    ) -> Result<&mut [u8], Error> {
        let data = self.reset_stale(width, height, limits)?;
        data.fill(0);
        Ok(data)
    }

    /// As [`RgbImage::reset`] but without zeroing: pixels of earlier images may remain.
    pub(crate) fn reset_stale(
        &mut self,
        width: u32,
        height: u32,
        limits: &Limits,
    ) -> Result<&mut [u8], Error> {
        let len = width as u64 * height as u64 * 3;
        limits.check_alloc(len)?;
        self.width = width;
        self.height = height;
        self.channels = false;
        self.len = len as usize;
        if self.data.len() < self.len {
            self.data.resize(self.len, 0);
        }
        Ok(&mut self.data[..self.len])
    }

    /// As [`RgbImage::reset_stale`], for the image in three channel planes (red, green,
    /// blue, each row by row), returned in that order.
    pub(crate) fn reset_stale_channels(
        &mut self,
        width: u32,
        height: u32,
        limits: &Limits,
    ) -> Result<[&mut [u8]; 3], Error> {
        let plane = width as usize * height as usize;
        self.reset_stale(width, height, limits)?;
        self.channels = true;
        let (r, rest) = self.data[..self.len].split_at_mut(plane);
        let (g, b) = rest.split_at_mut(plane);
        Ok([r, g, b])
    }
}

/// Decodes images to RGB8 as PIL's `convert("RGB")` does, reusing its scratch buffers.
#[derive(Debug, Default)]
pub struct Decoder {
    limits: Limits,
    scratch: Vec<u8>,
    jpeg: jpeg::Planes,
}

impl Decoder {
    /// A decoder that enforces `limits`.
    pub fn new(limits: Limits) -> Self {
        Decoder { limits, scratch: Vec::new(), jpeg: jpeg::Planes::default() }
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Decodes `bytes` (format sniffed from the magic bytes) into `out`.
    ///
    /// Pixels match `PIL.Image.open(bytes).convert("RGB")`: alpha is dropped, not composited;
    /// EXIF orientation is ignored; 16-bit grayscale is clipped at 255, other 16-bit data keeps
    /// its high byte; palettes are mapped; CMYK uses PIL's formula; GIF and WebP give their
    /// first frame.
    pub fn decode(&mut self, bytes: &[u8], out: &mut RgbImage) -> Result<ImageInfo, Error> {
        self.decode_inner(bytes, Hint::Full, out)
    }

    /// As [`Decoder::decode`], with a [`Hint`] (`out` may then be smaller than the source or
    /// partly stale; [`ImageInfo`] gives the source size).
    pub(crate) fn decode_inner(
        &mut self,
        bytes: &[u8],
        hint: Hint,
        out: &mut RgbImage,
    ) -> Result<ImageInfo, Error> {
        let format = ImageFormat::sniff(bytes).ok_or(Error::UnknownFormat)?;
        let limits = &self.limits;
        let (width, height) = match format {
            ImageFormat::Jpeg => {
                let d = jpeg::decode(bytes, limits, hint, out, &mut self.scratch, &mut self.jpeg)?;
                (d.width, d.height)
            }
            ImageFormat::Png => png::decode(bytes, limits, out, &mut self.scratch)?,
            ImageFormat::Gif => gif::decode(bytes, limits, out)?,
            ImageFormat::Webp => webp::decode(bytes, limits, out, &mut self.scratch)?,
            ImageFormat::Bmp | ImageFormat::Tiff => {
                other::decode(format, bytes, limits, out, &mut self.scratch)?
            }
        };
        Ok(ImageInfo { width, height, format })
    }
}

/// Gray to RGB by replication (PIL's `L` → `RGB`).
pub(crate) fn gray_to_rgb(gray: &[u8], rgb: &mut [u8]) {
    for (px, &g) in rgb.chunks_exact_mut(3).zip(gray) {
        px.copy_from_slice(&[g, g, g]);
    }
}

/// PIL's `CMYK` → `RGB` (`cmyk2rgb` in Convert.c): `255 - k - c * (255 - k) / 255`, rounded.
pub(crate) fn cmyk_to_rgb(cmyk: &[u8], rgb: &mut [u8]) {
    for (px, c) in rgb.chunks_exact_mut(3).zip(cmyk.chunks_exact(4)) {
        let nk = 255 - c[3] as u32;
        for (o, &v) in px.iter_mut().zip(&c[..3]) {
            *o = (nk - muldiv255(v as u32, nk)) as u8;
        }
    }
}

/// PIL's `MULDIV255`: `a * b / 255` rounded, computed with shifts.
fn muldiv255(a: u32, b: u32) -> u32 {
    let t = a * b + 128;
    ((t >> 8) + t) >> 8
}

/// Copies the first three of every `channels` bytes (drops alpha, as `convert("RGB")` does).
pub(crate) fn drop_alpha(src: &[u8], channels: usize, rgb: &mut [u8]) {
    for (px, s) in rgb.chunks_exact_mut(3).zip(src.chunks_exact(channels)) {
        px.copy_from_slice(&s[..3]);
    }
}

fn io_error(format: ImageFormat, e: &std::io::Error) -> Error {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        Error::Truncated { format }
    } else {
        Error::corrupt(format, e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A buffer reused for a smaller and then a larger image shows each image's own length,
    /// and `reset` zeroes what `reset_stale` may leave stale.
    #[test]
    fn a_reused_image_buffer_holds_each_image_whole() {
        let limits = Limits::default();
        let mut image = RgbImage::new();
        image.reset_stale(4, 3, &limits).unwrap().fill(7);
        assert_eq!(image.as_raw().len(), 36);
        image.reset_stale(2, 1, &limits).unwrap().fill(9);
        assert_eq!(image.as_raw(), &[9; 6]);
        let planes = image.reset_stale_channels(3, 2, &limits).unwrap();
        assert_eq!(planes.map(|p| p.len()), [6, 6, 6]);
        image.reset_stale(4, 3, &limits).unwrap();
        assert_eq!(image.as_raw().len(), 36);
        assert_eq!(image.reset(4, 3, &limits).unwrap(), &[0; 36]);
        assert_eq!((image.width(), image.height(), image.as_raw()), (4, 3, &[0u8; 36][..]));
    }
}
