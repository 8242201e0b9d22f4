//! Decode + preprocess per core, on JPEGs of about 0.5 MP and 6 MP.
//!
//! The JPEGs are made here: a real photo from the fixtures (`rocket.jpg`, 640x427) upscaled
//! to 944x531 and 3000x2000 with light deterministic noise for texture, encoded as baseline
//! 4:2:0 JPEG at quality 90. Single thread; throughput in images per second.
//!
//! `cargo bench -p aesthete-preprocess --bench preprocess` measures the default build (plain C
//! libjpeg-turbo); with `--features simd` (needs nasm) the groups are `jpeg_simd_*`.

use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use aesthete_preprocess::{
    Decoder, Limits, Mode, PreprocessConfig, PreprocessOptions, Preprocessor, RgbImage,
};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use fast_image_resize as fir;

fn photo() -> RgbImage {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/preprocess/images/rocket.jpg");
    let bytes = std::fs::read(path).expect("fixture rocket.jpg");
    let mut image = RgbImage::new();
    Decoder::new(Limits::default()).decode(&bytes, &mut image).unwrap();
    image
}

fn jpeg(src: &RgbImage, width: u32, height: u32) -> Vec<u8> {
    let from =
        fir::images::ImageRef::new(src.width(), src.height(), src.as_raw(), fir::PixelType::U8x3)
            .unwrap();
    let mut to = fir::images::Image::new(width, height, fir::PixelType::U8x3);
    fir::Resizer::new().resize(&from, &mut to, None).unwrap();
    let mut pixels = to.into_vec();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for p in &mut pixels {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        *p = p.saturating_add((state % 9) as u8).saturating_sub(4);
    }
    let mut c = mozjpeg::Compress::new(mozjpeg::ColorSpace::JCS_RGB);
    c.set_fastest_defaults();
    c.set_size(width as usize, height as usize);
    c.set_quality(90.0);
    c.set_chroma_sampling_pixel_sizes((2, 2), (2, 2));
    let mut c = c.start_compress(Vec::new()).unwrap();
    c.write_scanlines(&pixels).unwrap();
    c.finish().unwrap()
}

fn bench(c: &mut Criterion) {
    let src = photo();
    let sizes = [("0.5MP", 944, 531), ("6MP", 3000, 2000)];
    for (label, w, h) in sizes {
        let bytes = jpeg(&src, w, h);
        // The SIMD build (`--features simd`, libjpeg-turbo's nasm code) is named apart.
        let build = if cfg!(feature = "simd") { "_simd" } else { "" };
        let mut group = c.benchmark_group(format!("jpeg{build}_{label}_{w}x{h}"));
        group.throughput(Throughput::Elements(1));
        if label == "6MP" {
            group.sample_size(10);
        }
        for (name, mode) in [("exact", Mode::Exact), ("fast", Mode::Fast)] {
            let mut engine = Preprocessor::new(
                PreprocessConfig::clip_vit_l14(),
                PreprocessOptions::new().mode(mode),
            )
            .unwrap();
            let mut out = vec![0f32; engine.output_len()];
            group.bench_function(name, |b| {
                b.iter(|| engine.preprocess(black_box(&bytes), &mut out).unwrap())
            });
        }
        let mut decoder = Decoder::new(Limits::default());
        let mut image = RgbImage::new();
        group.bench_function("decode_only", |b| {
            b.iter(|| decoder.decode(black_box(&bytes), &mut image).unwrap())
        });
        group.finish();
    }
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
}

criterion_group! { name = benches; config = config(); targets = bench }
criterion_main!(benches);
