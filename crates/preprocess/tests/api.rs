//! The public surface: extensions, sniffing, slots.

use aesthete_preprocess::{
    Error, ImageFormat, Mode, PreprocessConfig, PreprocessOptions, Preprocessor, RgbImage,
    is_image_extension,
};

use crate::common::read;

#[test]
fn image_extensions() {
    for ext in ["jpg", "JPEG", "png", "webp", "gif", "bmp", "tif", "TIFF", "photo.jpg", "a.b.Png"] {
        assert!(is_image_extension(ext), "{ext}");
    }
    for ext in ["json", "txt", "cls", "", "jpg.json", "jpgx"] {
        assert!(!is_image_extension(ext), "{ext}");
    }
}

#[test]
fn format_is_sniffed_not_named() {
    let cases = [
        ("images/rocket.jpg", ImageFormat::Jpeg),
        ("images/chelsea_rgb.png", ImageFormat::Png),
        ("images/astronaut_lossy.webp", ImageFormat::Webp),
        ("images/chelsea.gif", ImageFormat::Gif),
        ("images/chelsea_24bit.bmp", ImageFormat::Bmp),
        ("images/chelsea_rgb.tif", ImageFormat::Tiff),
    ];
    let mut engine =
        Preprocessor::new(PreprocessConfig::clip_vit_l14(), PreprocessOptions::new()).unwrap();
    let mut out = vec![0f32; engine.output_len()];
    for (file, format) in cases {
        let bytes = read(file);
        assert_eq!(ImageFormat::sniff(&bytes), Some(format), "{file}");
        assert_eq!(engine.preprocess(&bytes, &mut out).unwrap().format, format);
    }
}

#[test]
fn output_slot_length_is_checked() {
    let mut engine =
        Preprocessor::new(PreprocessConfig::clip_vit_l14(), PreprocessOptions::new()).unwrap();
    assert_eq!(engine.output_len(), 3 * 224 * 224);
    assert_eq!(engine.image_size(), 224);
    let mut short = vec![0f32; 10];
    let e = engine.preprocess(&read("images/rocket.jpg"), &mut short).unwrap_err();
    assert!(matches!(e, Error::OutputLength { expected: 150528, actual: 10 }), "{e:?}");
}

#[test]
fn engine_is_send_and_reusable() {
    fn assert_send<T: Send>() {}
    assert_send::<Preprocessor>();
    let mut engine =
        Preprocessor::new(PreprocessConfig::clip_vit_l14(), PreprocessOptions::new()).unwrap();
    let n = engine.output_len();
    let mut batch = vec![0f32; 2 * n];
    let (a, b) = batch.split_at_mut(n);
    engine.preprocess(&read("images/rocket.jpg"), a).unwrap();
    engine.preprocess(&read("images/chelsea_rgb.png"), b).unwrap();
    let mut again = vec![0f32; n];
    engine.preprocess(&read("images/rocket.jpg"), &mut again).unwrap();
    assert_eq!(&batch[..n], &again[..], "scratch reuse must not change results");
}

/// An image without pixels is its own error, not a corrupt file of some format.
#[test]
fn an_image_without_pixels_is_zero_sized() {
    let mut engine =
        Preprocessor::new(PreprocessConfig::clip_vit_l14(), PreprocessOptions::new()).unwrap();
    let mut out = vec![0f32; engine.output_len()];
    let empty = aesthete_preprocess::RgbImage::new();
    let err = engine.preprocess_rgb(&empty, &mut out).unwrap_err();
    assert!(matches!(err, Error::ZeroSized { format: None }), "{err:?}");
    assert_eq!(err.to_string(), "the image has no pixels (zero width or height)");
}

/// Fast mode's crop box is the window scaled to the source: at sizes where that product
/// rounds past the last pixel (1 ulp), it must be clamped, not refused. Every size from 224
/// to 1,400 in steps of 3, in both orientations; found failing at 899×1105 JPEGs.
#[test]
fn fast_mode_takes_every_source_size() {
    let mut engine = Preprocessor::new(
        PreprocessConfig::clip_vit_l14(),
        PreprocessOptions::new().mode(Mode::Fast),
    )
    .unwrap();
    let mut out = vec![0f32; engine.output_len()];
    for long in (224..1400u32).step_by(3) {
        for (w, h) in [(224, long), (long, 224), (899, long), (long, 899)] {
            let image =
                RgbImage::from_raw(w, h, vec![128; (w * h * 3) as usize]).expect("a whole image");
            engine
                .preprocess_rgb(&image, &mut out)
                .unwrap_or_else(|e| panic!("fast mode refused {w}×{h}: {e}"));
        }
    }
}
