use fast_image_resize as fir;

use crate::config::ResizeTarget;
use crate::decode::{Decoder, Hint, RgbImage};
use crate::geometry::Plan;
use crate::pixels::Pixels;
use crate::resample::{Resampler, layout_rule};
use crate::{Error, ImageInfo, Mode, PreprocessConfig, PreprocessOptions};

/// The reusable engine: decodes, resizes, crops and normalizes into caller-owned slots.
///
/// It owns every scratch buffer, so after the first few images the hot path does not allocate
/// (buffers grow to the largest image seen). One per thread; it is `Send`.
#[derive(Debug)]
pub struct Preprocessor {
    config: PreprocessConfig,
    options: PreprocessOptions,
    decoder: Decoder,
    image: RgbImage,
    resampler: Resampler,
    fast: fir::Resizer,
    crop: Vec<u8>,
    /// `lut[c][v]`: the output float for channel `c` and 8-bit value `v`.
    lut: Box<[[f32; 256]; 3]>,
}

impl Preprocessor {
    /// An engine for `config`, which must pass [`PreprocessConfig::validate`] (configs from
    /// [`PreprocessConfig::from_json_str`] and the constructors always do); the error is
    /// validation's.
    pub fn new(config: PreprocessConfig, options: PreprocessOptions) -> Result<Self, Error> {
        config.validate()?;
        let lut = lookup_table(&config);
        Ok(Preprocessor {
            decoder: Decoder::new(options.limits),
            config,
            options,
            image: RgbImage::new(),
            resampler: Resampler::default(),
            fast: fir::Resizer::new(),
            crop: Vec::new(),
            lut,
        })
    }

    /// The config in force.
    pub fn config(&self) -> &PreprocessConfig {
        &self.config
    }

    /// The options in force.
    pub fn options(&self) -> PreprocessOptions {
        self.options
    }

    /// Side `S` of the square output.
    pub fn image_size(&self) -> usize {
        self.config.image_size()
    }

    /// Floats per image: `3 * S * S`.
    pub fn output_len(&self) -> usize {
        3 * self.image_size() * self.image_size()
    }

    /// Decodes `bytes` (format sniffed from the magic bytes, not from a file name) and writes
    /// the CHW f32 tensor into `out`, whose length must be [`Preprocessor::output_len`].
    ///
    /// On error `out` may hold partial data.
    pub fn preprocess(&mut self, bytes: &[u8], out: &mut [f32]) -> Result<ImageInfo, Error> {
        self.check_out(out)?;
        let hint = match self.options.mode {
            Mode::Exact => Hint::Region(self.plan(), layout_rule()),
            Mode::Fast => Hint::Scale(self.min_decode_short_side(), Some(self.plan())),
        };
        let mut image = std::mem::take(&mut self.image);
        let result = self.decoder.decode_inner(bytes, hint, &mut image).and_then(|info| {
            self.finish(&image, info.width, info.height, out).map_err(|e| match e {
                Error::ZeroSized { .. } => Error::ZeroSized { format: Some(info.format) },
                other => other,
            })?;
            Ok(info)
        });
        self.image = image;
        result
    }

    /// Resizes, crops and normalizes an already decoded RGB8 image into `out`.
    pub fn preprocess_rgb(&mut self, image: &RgbImage, out: &mut [f32]) -> Result<(), Error> {
        self.check_out(out)?;
        self.finish(image, image.width(), image.height(), out)
    }

    /// Decodes `bytes` to RGB8 into `image` (a buffer reused across calls) without resizing,
    /// as PIL's `Image.open(..).convert("RGB")` would.
    pub fn decode(&mut self, bytes: &[u8], image: &mut RgbImage) -> Result<ImageInfo, Error> {
        self.decoder.decode(bytes, image)
    }

    fn plan(&self) -> Plan {
        Plan { resize: self.config.resize, crop: self.config.crop_size, filter: self.config.filter }
    }

    fn check_out(&self, out: &[f32]) -> Result<(), Error> {
        if out.len() != self.output_len() {
            return Err(Error::OutputLength { expected: self.output_len(), actual: out.len() });
        }
        Ok(())
    }

    /// Short side a DCT-downscaled JPEG must keep in fast mode: the resize target, so the
    /// cubic filter never upscales.
    fn min_decode_short_side(&self) -> u32 {
        match self.config.resize {
            ResizeTarget::ShortestEdge(e) => e,
            ResizeTarget::Exact { height, width } => height.max(width),
        }
    }

    fn finish(
        &mut self,
        image: &RgbImage,
        src_width: u32,
        src_height: u32,
        out: &mut [f32],
    ) -> Result<(), Error> {
        let (w, h) = (image.width() as usize, image.height() as usize);
        if w == 0 || h == 0 {
            return Err(Error::ZeroSized { format: None });
        }
        // Sizes come from the source dimensions even when a JPEG was DCT-downscaled.
        let win = self.plan().window(src_width, src_height);
        let (out_width, out_height) = (win.out_width, win.out_height);
        let s = self.image_size();
        let plane = s * s;
        let lut = &self.lut;
        let mut emit = |y: usize, row: Pixels<'_>| {
            let (r, rest) = out.split_at_mut(plane);
            let (g, b) = rest.split_at_mut(plane);
            let line = y * s..(y + 1) * s;
            let (r, g, b) = (&mut r[line.clone()], &mut g[line.clone()], &mut b[line]);
            let [lut_r, lut_g, lut_b] = &**lut;
            // Indexing 256-entry tables by bytes needs no bounds checks, nor do the zipped
            // outputs.
            match row {
                Pixels::Rgb(row) => {
                    for (((r, g), b), px) in r.iter_mut().zip(g).zip(b).zip(row.chunks_exact(3)) {
                        *r = lut_r[px[0] as usize];
                        *g = lut_g[px[1] as usize];
                        *b = lut_b[px[2] as usize];
                    }
                }
                Pixels::Channels(rows) => {
                    for ((out, lut), row) in
                        [r, g, b].into_iter().zip([lut_r, lut_g, lut_b]).zip(rows)
                    {
                        for (o, &v) in out.iter_mut().zip(row) {
                            *o = lut[v as usize];
                        }
                    }
                }
            }
        };
        match self.options.mode {
            Mode::Exact => {
                self.resampler.resize_window(
                    image.pixels(),
                    w,
                    h,
                    self.config.filter,
                    win,
                    &mut emit,
                );
            }
            Mode::Fast => {
                // The window in source coordinates (of the possibly downscaled decode).
                let sx = w as f64 / out_width as f64;
                let sy = h as f64 / out_height as f64;
                let src = fir::images::ImageRef::new(
                    w as u32,
                    h as u32,
                    image.as_raw(),
                    fir::PixelType::U8x3,
                )
                .map_err(|e| Error::config(format!("fast resize: {e}")))?;
                self.crop.clear();
                self.crop.resize(plane * 3, 0);
                let mut dst = fir::images::Image::from_slice_u8(
                    s as u32,
                    s as u32,
                    &mut self.crop,
                    fir::PixelType::U8x3,
                )
                .map_err(|e| Error::config(format!("fast resize: {e}")))?;
                // In real numbers the box ends inside the source; in f64 `(left + s) · sx` can
                // land an ulp past its edge, which fast_image_resize refuses: clamp it.
                let (left, top) = (win.left as f64 * sx, win.top as f64 * sy);
                let width = (s as f64 * sx).min(w as f64 - left);
                let height = (s as f64 * sy).min(h as f64 - top);
                let options = fir::ResizeOptions::new()
                    .resize_alg(fir::ResizeAlg::Convolution(fir::FilterType::CatmullRom))
                    .crop(left, top, width, height);
                self.fast
                    .resize(&src, &mut dst, &options)
                    .map_err(|e| Error::config(format!("fast resize: {e}")))?;
                for (y, row) in self.crop.chunks_exact(s * 3).enumerate() {
                    emit(y, Pixels::Rgb(row));
                }
            }
        }
        Ok(())
    }
}

/// transformers' arithmetic for every 8-bit value: `rescale` multiplies in f64 and rounds to
/// f32; `normalize` computes `(x - mean) / std` in f32 with mean and std rounded to f32.
fn lookup_table(config: &PreprocessConfig) -> Box<[[f32; 256]; 3]> {
    let mut lut = Box::new([[0f32; 256]; 3]);
    for (c, table) in lut.iter_mut().enumerate() {
        for (v, out) in table.iter_mut().enumerate() {
            let mut x = if config.do_rescale {
                (v as f64 * config.rescale_factor) as f32
            } else {
                v as f32
            };
            if config.do_normalize {
                x = (x - config.image_mean[c]) / config.image_std[c];
            }
            *out = x;
        }
    }
    lut
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fast mode decodes only the crop window of a DCT-downscaled JPEG; the tensor is the one
    /// that resizing the whole downscaled image gives, for every fixture JPEG.
    #[test]
    fn fast_mode_region_decode_changes_nothing() {
        let mut tested = 0;
        for (path, bytes) in crate::fixture_jpegs() {
            for config in [PreprocessConfig::clip_vit_l14(), PreprocessConfig::clip_vit_l14_336()] {
                let mut p =
                    Preprocessor::new(config, PreprocessOptions::new().mode(Mode::Fast)).unwrap();
                let mut region = vec![0f32; p.output_len()];
                p.preprocess(&bytes, &mut region).unwrap();

                let mut whole = RgbImage::new();
                let hint = Hint::Scale(p.min_decode_short_side(), None);
                let info = p.decoder.decode_inner(&bytes, hint, &mut whole).unwrap();
                let mut expected = vec![0f32; p.output_len()];
                p.finish(&whole, info.width, info.height, &mut expected).unwrap();
                assert!(
                    region == expected,
                    "{}: fast mode differs with a region decode",
                    path.display()
                );
                tested += 1;
            }
        }
        assert!(tested >= 20, "only {tested} images compared");
    }
}
