//! Parity with transformers' `CLIPImageProcessor` (4.x, PIL), end to end from file bytes.
//!
//! Each fixture is a named test. Exact cases must reproduce the reference crop bit for bit
//! (its SHA-256 is in `cases.json`), which with `levels_match_transformers` makes the f32
//! tensor bit-identical (max |Δ| = 0). BMP and TIFF are held to a measured bound instead.

use std::io::Read;
use std::path::PathBuf;

use aesthete_preprocess::{Mode, PreprocessConfig, PreprocessOptions, Preprocessor, RgbImage};

use crate::common::{
    Case, cases, fixtures, level_table, read, reference_levels, sha256_hex, to_levels,
};

fn case(test_name: &str) -> &'static Case {
    cases()
        .values()
        .find(|c| c.name.replace('-', "_") == test_name)
        .unwrap_or_else(|| panic!("no fixture case {test_name} in cases.json"))
}

fn engine(case: &Case, mode: Mode) -> Preprocessor {
    let config = PreprocessConfig::from_json_file(&fixtures().join(&case.config)).unwrap();
    Preprocessor::new(config, PreprocessOptions::new().mode(mode)).unwrap()
}

/// Runs a case; returns our tensor and our crop as CHW levels.
fn run(case: &Case, mode: Mode) -> (Vec<f32>, Vec<u8>) {
    let mut engine = engine(case, mode);
    let mut out = vec![f32::NAN; engine.output_len()];
    let info = engine
        .preprocess(&read(&case.image), &mut out)
        .unwrap_or_else(|e| panic!("{}: {e}", case.name));
    assert_eq!((info.width, info.height), case.source_size, "{}", case.name);
    let levels = to_levels(&out, &level_table(&case.config));
    (out, levels)
}

/// The reference crop as levels, from the committed PNG or, when debugging, from the
/// directory `generate.py --debug-dir` wrote.
fn reference(case: &Case) -> Option<Vec<u8>> {
    if let Some(rel) = &case.reference {
        return Some(reference_levels(&fixtures().join(rel)));
    }
    let dir = std::env::var_os("AESTHETE_PREPROCESS_DEBUG_REFS")?;
    let path = PathBuf::from(dir).join(format!("{}.png", case.name));
    path.exists().then(|| reference_levels(&path))
}

/// Largest and mean absolute difference in 8-bit levels, and the pixel count that differs.
fn level_delta(ours: &[u8], theirs: &[u8]) -> (u8, f64, usize) {
    let mut max = 0;
    let mut sum = 0u64;
    let mut n = 0;
    for (&a, &b) in ours.iter().zip(theirs) {
        let d = a.abs_diff(b);
        max = max.max(d);
        sum += d as u64;
        n += (d != 0) as usize;
    }
    (max, sum as f64 / ours.len() as f64, n)
}

fn check_exact(test_name: &str) {
    let case = case(test_name);
    let (_, levels) = run(case, Mode::Exact);
    if sha256_hex(&levels) == case.crop_sha256 {
        if let Some(theirs) = reference(case) {
            assert_eq!(levels, theirs, "{}: hash matches but PNG differs", case.name);
        }
        return;
    }
    let detail = match reference(case) {
        Some(theirs) => {
            let (max, mean, n) = level_delta(&levels, &theirs);
            format!("max |delta| {max} levels, mean {mean:.4}, {n} values differ")
        }
        None => "set AESTHETE_PREPROCESS_DEBUG_REFS for details".to_owned(),
    };
    panic!("{}: crop differs from transformers' ({detail})", case.name);
}

/// BMP and TIFF: the `image` crate decodes them; parity is measured, not demanded.
fn check_measured(test_name: &str, max_levels: u8) {
    let case = case(test_name);
    let (_, levels) = run(case, Mode::Exact);
    let theirs = reference(case).expect("measured cases keep their reference PNG");
    let (max, mean, n) = level_delta(&levels, &theirs);
    assert!(
        max <= max_levels,
        "{}: max |delta| {max} levels over the bound {max_levels} (mean {mean:.4}, {n} differ)",
        case.name
    );
}

macro_rules! exact_cases {
    ($($name:ident),* $(,)?) => {
        $(#[test] fn $name() { check_exact(stringify!($name)); })*
        const EXACT: &[&str] = &[$(stringify!($name)),*];
    };
}

macro_rules! measured_cases {
    ($($name:ident <= $bound:expr),* $(,)?) => {
        $(#[test] fn $name() { check_measured(stringify!($name), $bound); })*
        const MEASURED: &[&str] = &[$(stringify!($name)),*];
    };
}

exact_cases! {
    // JPEG
    astronaut_odd_333x257_jpg, astronaut_progressive_444_jpg, astronaut_q90_420_jpg,
    astronaut_tiny_17x9_jpg, camera_gray_jpg, chelsea_exact_224x224_jpg, chelsea_exif_rotated_jpg,
    chelsea_q80_422_jpg, chelsea_wide_600x130_jpg, coffee_224x300_jpg,
    coffee_224x300_jpg_square224, coffee_300x224_jpg, coffee_300x224_jpg_square224,
    coffee_cmyk_jpg, coffee_q85_444_jpg, coffee_small_101x67_jpg,
    coffee_small_101x67_jpg_336, hubble_q75_420_jpg,
    motorcycle_tall_411x271_jpg, noise_q95_420_jpg, retina_progressive_jpg, retina_large_1000_jpg, rocket_jpg,
    // PNG
    astronaut_rgba_png, camera_gray1_trns_png, camera_gray2_png, camera_gray_png,
    camera_gray_png_336, camera_la16_png, camera_la_png,
    chelsea_palette_trns_png, chelsea_rgb_png, coffee_palette4_png, coffee_palette_png,
    coffee_rgb16_png, coffee_rgba16_png, gradient_gray16_png, logo_rgba_png,
    // WebP
    astronaut_lossy_alpha_webp, astronaut_lossy_webp, chelsea_lossy_odd_301x199_webp,
    coffee_animated_webp, coffee_lossless_webp, logo_lossless_alpha_webp,
    // GIF
    astronaut_animated_gif, chelsea_gif, chelsea_gif_336,
    chelsea_gif_square224, coffee_transparent_gif, no_time_for_that_tiny_gif,
}

measured_cases! {
    camera_gray_bmp <= 0, chelsea_24bit_bmp <= 0, coffee_8bit_palette_bmp <= 0,
    astronaut_rgba_tif <= 0, camera_gray_tif <= 0, chelsea_rgb_tif <= 0, coffee_lzw_tif <= 0,
    gradient_gray16_tif <= 0,
}

#[test]
fn every_fixture_case_has_a_test() {
    for case in cases().values() {
        let name = case.name.replace('-', "_");
        assert!(
            EXACT.contains(&name.as_str()) || MEASURED.contains(&name.as_str()),
            "fixture case {} has no test: add it to exact_cases! or measured_cases!",
            case.name
        );
    }
    assert_eq!(EXACT.len() + MEASURED.len(), cases().len());
}

/// The normalization arithmetic: every level of every channel against the floats
/// transformers produced (a crop-sized image takes no resize, so this is rescale + normalize
/// alone).
#[test]
fn levels_match_transformers() {
    for (config, rel) in [
        (PreprocessConfig::clip_vit_l14(), "configs/clip-vit-large-patch14.json"),
        (PreprocessConfig::clip_vit_l14_336(), "configs/clip-vit-large-patch14-336.json"),
    ] {
        let table = level_table(rel);
        let from_json = PreprocessConfig::from_json_file(&fixtures().join(rel)).unwrap();
        assert_eq!(from_json, config, "{rel}");
        let s = config.image_size();
        let mut engine = Preprocessor::new(config, PreprocessOptions::new()).unwrap();
        let mut pixels = vec![0u8; s * s * 3];
        for (i, px) in pixels.chunks_exact_mut(3).enumerate() {
            for (c, v) in px.iter_mut().enumerate() {
                *v = ((i + 85 * c) % 256) as u8;
            }
        }
        let image = RgbImage::from_raw(s as u32, s as u32, pixels.clone()).unwrap();
        let mut out = vec![0f32; engine.output_len()];
        engine.preprocess_rgb(&image, &mut out).unwrap();
        for c in 0..3 {
            for i in 0..s * s {
                let level = pixels[i * 3 + c] as usize;
                assert_eq!(
                    out[c * s * s + i].to_bits(),
                    table[c][level].to_bits(),
                    "{rel}: channel {c} level {level}"
                );
            }
        }
    }
}

/// One full f32 tensor from transformers, compared bit for bit.
#[test]
fn full_tensor_is_bit_identical() {
    let with_tensor: Vec<&Case> = cases().values().filter(|c| c.tensor.is_some()).collect();
    assert!(!with_tensor.is_empty());
    for case in with_tensor {
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(&read(case.tensor.as_ref().unwrap())[..])
            .read_to_end(&mut raw)
            .unwrap();
        let theirs: Vec<f32> =
            raw.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
        let (ours, _) = run(case, Mode::Exact);
        assert_eq!(ours.len(), theirs.len());
        let max = ours.iter().zip(&theirs).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(
            ours.iter().zip(&theirs).all(|(a, b)| a.to_bits() == b.to_bits()),
            "{}: max |delta| {max}",
            case.name
        );
    }
}

/// Fast mode's error against the reference, bounded as `Mode::Fast`'s docs state.
#[test]
fn fast_mode_error_is_bounded() {
    // Measured worst: max 0.165, mean 0.0078, both on the DCT-scaled JPEG (see `Mode::Fast`).
    const MAX: f32 = 0.25;
    const MEAN: f64 = 0.01;
    let mut worst = (0f32, 0f64, String::new());
    for case in cases().values().filter(|c| c.reference.is_some()) {
        let table = level_table(&case.config);
        let theirs = reference(case).unwrap();
        let (ours, _) = {
            let mut engine = engine(case, Mode::Fast);
            let mut out = vec![0f32; engine.output_len()];
            engine.preprocess(&read(&case.image), &mut out).unwrap();
            (out, ())
        };
        let plane = ours.len() / 3;
        let (mut max, mut sum) = (0f32, 0f64);
        for (i, (&a, &level)) in ours.iter().zip(&theirs).enumerate() {
            let d = (a - table[i / plane][level as usize]).abs();
            max = max.max(d);
            sum += d as f64;
        }
        let mean = sum / ours.len() as f64;
        eprintln!("fast {}: max {max:.4} mean {mean:.5}", case.name);
        assert!(max <= MAX && mean <= MEAN, "{}: fast mode max {max} mean {mean}", case.name);
        if max > worst.0 {
            worst = (max, mean, case.name.clone());
        }
    }
    eprintln!("fast mode worst case: {worst:?}");
}
