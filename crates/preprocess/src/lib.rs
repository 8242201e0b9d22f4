//! Image decoding and CLIP preprocessing, bit-exact with transformers' CLIPImageProcessor.
#![deny(missing_docs)]
