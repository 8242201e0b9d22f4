use std::fmt;

/// Container formats this crate decodes, sniffed from magic bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ImageFormat {
    /// JPEG / JFIF, decoded with libjpeg-turbo.
    Jpeg,
    /// PNG.
    Png,
    /// WebP, lossy or lossless.
    Webp,
    /// GIF; only the first frame is used.
    Gif,
    /// Windows bitmap.
    Bmp,
    /// TIFF.
    Tiff,
}

/// What was decoded: the source image's size and format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ImageInfo {
    /// Source width in pixels.
    pub width: u32,
    /// Source height in pixels.
    pub height: u32,
    /// Format sniffed from the magic bytes.
    pub format: ImageFormat,
}

impl ImageFormat {
    /// Sniffs the format from the first bytes of a file; `None` when no signature matches.
    pub fn sniff(bytes: &[u8]) -> Option<ImageFormat> {
        let starts = |magic: &[u8]| bytes.starts_with(magic);
        if starts(&[0xFF, 0xD8, 0xFF]) {
            Some(ImageFormat::Jpeg)
        } else if starts(b"\x89PNG\r\n\x1a\n") {
            Some(ImageFormat::Png)
        } else if bytes.len() >= 12 && starts(b"RIFF") && &bytes[8..12] == b"WEBP" {
            Some(ImageFormat::Webp)
        } else if starts(b"GIF87a") || starts(b"GIF89a") {
            Some(ImageFormat::Gif)
        } else if starts(b"BM") {
            Some(ImageFormat::Bmp)
        } else if starts(b"II*\0") || starts(b"MM\0*") {
            Some(ImageFormat::Tiff)
        } else {
            None
        }
    }

    /// Lowercase name, as in error messages.
    pub fn name(self) -> &'static str {
        match self {
            ImageFormat::Jpeg => "jpeg",
            ImageFormat::Png => "png",
            ImageFormat::Webp => "webp",
            ImageFormat::Gif => "gif",
            ImageFormat::Bmp => "bmp",
            ImageFormat::Tiff => "tiff",
        }
    }
}

impl fmt::Display for ImageFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Whether a WebDataset member extension names an image this crate decodes.
///
/// Case-insensitive; multi-part extensions such as `"photo.jpg"` are judged by their last part.
/// Accepts `jpg jpeg png webp gif bmp tif tiff`.
///
/// ```
/// use aesthete_preprocess::is_image_extension;
/// assert!(is_image_extension("JPG"));
/// assert!(is_image_extension("left.webp"));
/// assert!(!is_image_extension("json"));
/// ```
pub fn is_image_extension(ext: &str) -> bool {
    let last = ext.rsplit('.').next().unwrap_or(ext);
    ["jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff"]
        .iter()
        .any(|known| last.eq_ignore_ascii_case(known))
}
