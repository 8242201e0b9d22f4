//! Image decoding and CLIP preprocessing, bit-exact with transformers' `CLIPImageProcessor`.
//!
//! A [`Preprocessor`] is a reusable engine: give it the bytes of a JPEG, PNG, WebP, GIF, BMP
//! or TIFF file and a caller-owned `&mut [f32]` slot of length `3 * S * S`, and it writes the
//! CHW tensor that `CLIPImageProcessor` (transformers 4.x, on PIL) would produce:
//! `convert("RGB")`, bicubic resize of the short side to `S`, floor-offset center crop,
//! rescale by 1/255 and normalize with CLIP's mean and std.
//!
//! - [`PreprocessConfig`] holds the numbers of a `preprocessor_config.json`
//!   ([`PreprocessConfig::clip_vit_l14`] for ViT-L/14, 336-pixel variants from their JSON).
//! - [`PreprocessOptions`] picks the [`Mode`] (bit-exact [`Mode::Exact`] or [`Mode::Fast`])
//!   and the [`Limits`] enforced on untrusted headers before allocation.
//! - [`Error`] says whose fault a failure is: the bytes, this crate, the limits or the caller.
//! - [`Decoder`] and [`RgbImage`] are the lower layer: PIL-equivalent decoding to RGB8.
//!
//! ```
//! use aesthete_preprocess::{PreprocessConfig, PreprocessOptions, Preprocessor};
//!
//! let mut engine = Preprocessor::new(PreprocessConfig::clip_vit_l14(), PreprocessOptions::new())?;
//! let mut batch = vec![0f32; 2 * engine.output_len()];
//! // A 1x1 black GIF.
//! let gif = b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff,\x00\x00\x00\x00\
//!             \x01\x00\x01\x00\x00\x02\x02D\x01\x00;";
//! let n = engine.output_len();
//! let info = engine.preprocess(gif, &mut batch[n..])?;
//! assert_eq!((info.width, info.height), (1, 1));
//! assert!((batch[n] - (0.0 - 0.48145466) / 0.26862954).abs() < 1e-6);
//! # Ok::<(), aesthete_preprocess::Error>(())
//! ```
#![deny(missing_docs)]

mod config;
mod decode;
mod engine;
mod error;
mod format;
mod geometry;
mod options;
mod pixels;
mod resample;

/// A xorshift64 step: deterministic noise for the crate's unit tests.
#[cfg(test)]
fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// Fixture JPEGs (path and bytes) for the crate's unit tests.
#[cfg(test)]
fn fixture_jpegs() -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/preprocess/images");
    let mut found: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "jpg"))
        .map(|path| {
            let bytes = std::fs::read(&path).unwrap();
            (path, bytes)
        })
        .collect();
    found.sort();
    found
}

pub use config::{CLIP_MEAN, CLIP_STD, Filter, PreprocessConfig, ResizeTarget};
pub use decode::{Decoder, RgbImage};
pub use engine::Preprocessor;
pub use error::Error;
pub use format::{ImageFormat, ImageInfo, is_image_extension};
pub use options::{Limits, Mode, PreprocessOptions};

/// The crate README's examples, compiled and run as doctests so they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
