use crate::Error;

/// Exactness versus speed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Mode {
    /// Bit-exact with transformers' `CLIPImageProcessor` on PIL (max |Δ| = 0 for JPEG, PNG,
    /// WebP and GIF): JPEGs decoded as libjpeg-turbo decodes them (its entropy decoder, then its
    /// integer inverse DCT, fancy upsampling and color conversion, ours or its own) and a port
    /// of Pillow's resampler.
    #[default]
    Exact,
    /// `fast_image_resize` (Catmull-Rom, the same cubic as PIL's bicubic, SIMD at run time)
    /// and, for JPEGs at least twice the needed size, DCT-domain downscaling: at 1/2 and 1/4
    /// our reduced inverse DCTs (each output sample the mean of its cell of the block's
    /// low-frequency reconstruction, 4:2:0 chroma decoded straight onto the luma grid), at
    /// 1/8 libjpeg's.
    ///
    /// Not bit-exact. On the committed fixtures with kept references (JPEG, PNG, WebP, BMP,
    /// TIFF; 224 and 336; up- and downscaling) the output tensor differs from transformers'
    /// by at most 0.146 and on average by at most 0.0030 without DCT scaling; a 1000x1000 JPEG
    /// decoded at 1/4 gives max 0.165, mean 0.0078 (normalized units, where one 8-bit level
    /// is about 0.015). The test `parity::fast_mode_error_is_bounded` holds every case to
    /// max ≤ 0.25 and mean ≤ 0.01.
    Fast,
}

/// Limits on untrusted images, checked on the header before pixels are allocated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// Most pixels (width × height) an image may claim. Default 178,956,970, the size at which
    /// PIL raises `DecompressionBombError`.
    pub max_pixels: u64,
    /// Most bytes one decode may allocate for pixel buffers (the RGB8 image plus any native
    /// intermediate, and libjpeg's own pools). Default 1 GiB.
    pub max_alloc: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_pixels: 178_956_970, max_alloc: 1 << 30 }
    }
}

impl Limits {
    /// No limits beyond what the address space allows. Only for trusted input.
    pub fn none() -> Self {
        Limits { max_pixels: u64::MAX, max_alloc: u64::MAX }
    }

    /// Sets [`Limits::max_pixels`].
    pub fn max_pixels(mut self, max_pixels: u64) -> Self {
        self.max_pixels = max_pixels;
        self
    }

    /// Sets [`Limits::max_alloc`].
    pub fn max_alloc(mut self, max_alloc: u64) -> Self {
        self.max_alloc = max_alloc;
        self
    }

    pub(crate) fn check_pixels(&self, width: u32, height: u32) -> Result<(), Error> {
        let pixels = width as u64 * height as u64;
        if pixels > self.max_pixels {
            return Err(Error::TooLarge { width, height, max_pixels: self.max_pixels });
        }
        Ok(())
    }

    pub(crate) fn check_alloc(&self, bytes: u64) -> Result<(), Error> {
        if bytes > self.max_alloc {
            return Err(Error::AllocationLimit { needed: bytes, max_alloc: self.max_alloc });
        }
        Ok(())
    }
}

/// Options of a [`Preprocessor`](crate::Preprocessor): small, `Copy`, chainable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PreprocessOptions {
    pub(crate) mode: Mode,
    pub(crate) limits: Limits,
}

impl PreprocessOptions {
    /// Default options: [`Mode::Exact`], default [`Limits`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the mode.
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// Sets the limits.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// The mode in force.
    pub fn get_mode(&self) -> Mode {
        self.mode
    }

    /// The limits in force.
    pub fn get_limits(&self) -> Limits {
        self.limits
    }
}
