//! Malformed input (`fixtures/preprocess/bad/`): each file must give its typed error, never a
//! panic, and oversized headers must be refused before any pixel buffer is allocated.

use aesthete_preprocess::{
    Decoder, Error, ImageFormat, Limits, Mode, PreprocessConfig, PreprocessOptions, Preprocessor,
    RgbImage,
};

use crate::common::read;

fn preprocess(bytes: &[u8]) -> Result<(), Error> {
    let mut engine =
        Preprocessor::new(PreprocessConfig::clip_vit_l14(), PreprocessOptions::new()).unwrap();
    let mut out = vec![0f32; engine.output_len()];
    engine.preprocess(bytes, &mut out).map(|_| ())
}

fn truncated(format: ImageFormat) -> impl Fn(&Error) -> bool {
    move |e| matches!(e, Error::Truncated { format: f } if *f == format)
}

fn corrupt(format: ImageFormat) -> impl Fn(&Error) -> bool {
    move |e| matches!(e, Error::Corrupt { format: f, .. } if *f == format)
}

fn too_large(e: &Error) -> bool {
    matches!(e, Error::TooLarge { .. })
}

fn unknown(e: &Error) -> bool {
    matches!(e, Error::UnknownFormat)
}

fn expect(file: &str, check: impl Fn(&Error) -> bool) {
    match preprocess(&read(&format!("bad/{file}"))) {
        Ok(()) => panic!("{file}: decoded without error"),
        Err(e) => {
            assert!(check(&e), "{file}: unexpected error {e:?}");
            // Messages are lowercase, without a trailing period.
            let msg = e.to_string();
            assert!(!msg.ends_with('.'), "{file}: {msg}");
            assert_eq!(
                msg.chars().next().map(|c| c.is_lowercase() || c.is_ascii_digit()),
                Some(true),
                "{file}: {msg}"
            );
        }
    }
}

#[test]
fn truncated_jpeg() {
    expect("truncated.jpg", truncated(ImageFormat::Jpeg));
}

#[test]
fn truncated_jpeg_header() {
    expect("truncated_header.jpg", truncated(ImageFormat::Jpeg));
}

#[test]
fn jpeg_magic_only() {
    expect("jpeg_magic_only.jpg", truncated(ImageFormat::Jpeg));
}

#[test]
fn truncated_png() {
    expect("truncated.png", truncated(ImageFormat::Png));
}

#[test]
fn corrupt_png() {
    expect("corrupt.png", corrupt(ImageFormat::Png));
}

#[test]
fn truncated_gif() {
    expect("truncated.gif", |e| truncated(ImageFormat::Gif)(e) || corrupt(ImageFormat::Gif)(e));
}

#[test]
fn truncated_webp() {
    expect("truncated.webp", |e| truncated(ImageFormat::Webp)(e) || corrupt(ImageFormat::Webp)(e));
}

#[test]
fn huge_png_header_is_refused() {
    expect("huge_100000x100000.png", too_large);
}

#[test]
fn huge_jpeg_header_is_refused() {
    expect("huge_65000x65000.jpg", too_large);
}

#[test]
fn empty_bytes() {
    expect("empty.jpg", unknown);
}

#[test]
fn text_bytes() {
    expect("text.jpg", unknown);
}

/// The huge headers fail on the header check with the default allocation limit raised out of
/// the way, so the pixel limit alone stops them before allocation.
#[test]
fn pixel_limit_applies_before_allocation() {
    let mut decoder = Decoder::new(Limits::default().max_alloc(u64::MAX));
    let mut image = RgbImage::new();
    for file in ["huge_100000x100000.png", "huge_65000x65000.jpg"] {
        let e = decoder.decode(&read(&format!("bad/{file}")), &mut image).unwrap_err();
        assert!(too_large(&e), "{file}: {e:?}");
    }
    assert_eq!(image.as_raw().len(), 0);
}

#[test]
fn custom_limits_refuse_ordinary_images() {
    let jpeg = read("images/astronaut_q90_420.jpg");
    let mut image = RgbImage::new();
    let e = Decoder::new(Limits::default().max_pixels(1000)).decode(&jpeg, &mut image).unwrap_err();
    assert!(matches!(e, Error::TooLarge { width: 256, height: 256, max_pixels: 1000 }), "{e:?}");
    for file in [
        "images/astronaut_q90_420.jpg",
        "images/chelsea_rgb.png",
        "images/chelsea.gif",
        "images/astronaut_lossy.webp",
        "images/chelsea_24bit.bmp",
        "images/chelsea_rgb.tif",
    ] {
        let e = Decoder::new(Limits::default().max_alloc(10_000))
            .decode(&read(file), &mut image)
            .unwrap_err();
        assert!(matches!(e, Error::AllocationLimit { .. }), "{file}: {e:?}");
    }
}

/// Every prefix length and many byte flips of one file per format: errors, never panics.
#[test]
fn mutated_files_never_panic() {
    let files = [
        "images/astronaut_q90_420.jpg",
        "images/retina_progressive.jpg",
        "images/coffee_cmyk.jpg",
        "images/camera_gray.png",
        "images/coffee_palette4.png",
        "images/chelsea.gif",
        "images/astronaut_lossy.webp",
        "images/coffee_lossless.webp",
        "images/chelsea_24bit.bmp",
        "images/coffee_lzw.tif",
    ];
    let mut decoder = Decoder::new(Limits::default().max_alloc(64 << 20));
    let mut image = RgbImage::new();
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for file in files {
        let bytes = read(file);
        let step = (bytes.len() / 97).max(1);
        for len in (0..bytes.len()).step_by(step) {
            let _ = decoder.decode(&bytes[..len], &mut image);
        }
        for _ in 0..150 {
            let mut m = bytes.clone();
            for _ in 0..1 + next() % 4 {
                let i = (next() % m.len() as u64) as usize;
                m[i] = next() as u8;
            }
            let _ = decoder.decode(&m, &mut image);
        }
    }
}

#[test]
fn fast_mode_reports_the_same_errors() {
    let mut engine = Preprocessor::new(
        PreprocessConfig::clip_vit_l14(),
        PreprocessOptions::new().mode(Mode::Fast),
    )
    .unwrap();
    let mut out = vec![0f32; engine.output_len()];
    let e = engine.preprocess(&read("bad/truncated.jpg"), &mut out).unwrap_err();
    assert!(truncated(ImageFormat::Jpeg)(&e), "{e:?}");
    let e = engine.preprocess(&read("bad/huge_65000x65000.jpg"), &mut out).unwrap_err();
    assert!(too_large(&e), "{e:?}");
}

/// Exact mode only IDCTs the rows under the crop, but still reads the whole scan: a file
/// truncated below the crop fails as it does in PIL (without LOAD_TRUNCATED_IMAGES).
#[test]
fn truncation_below_the_crop_is_still_an_error() {
    let bytes = read("images/motorcycle_tall_411x271.jpg");
    for cut in [2, 50, 400] {
        let e = preprocess(&bytes[..bytes.len() - cut]).unwrap_err();
        assert!(truncated(ImageFormat::Jpeg)(&e), "cut {cut}: {e:?}");
    }
}
