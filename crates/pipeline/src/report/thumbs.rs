//! The gallery's pictures: a second pass over the shards that decodes only the chosen
//! samples' images, each shrunk to fit a square and inlined as a base64 JPEG `data:` URI.
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use aesthete_preprocess::{Decoder, Limits, RgbImage, is_image_extension};
use aesthete_shards::{Member, ReadOptions, ShardReader};
use base64::Engine as _;
use image::codecs::jpeg::JpegEncoder;
use image::{ExtendedColorType, ImageBuffer, Rgb};
use rayon::prelude::*;

use crate::record::error_chain;

/// Quality of the inlined JPEGs: small files, no visible blocks at thumbnail size.
const JPEG_QUALITY: u8 = 80;

/// A picture, ready to inline.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Thumbnail {
    pub width: u32,
    pub height: u32,
    /// `data:image/jpeg;base64,...`
    pub data_uri: String,
}

/// What became of each chosen sample's picture, by table index and key.
pub(crate) type Pictures = HashMap<(usize, String), Result<Thumbnail, String>>;

/// Pictures of the samples in `wanted` (keys by table index), read from `shards[table]`,
/// shards in parallel. A shard is read until its last wanted key; a key that cannot be
/// pictured gets the reason.
pub(crate) fn pictures(
    wanted: &BTreeMap<usize, Vec<String>>,
    shards: &[Option<PathBuf>],
    size: u32,
) -> Pictures {
    wanted
        .par_iter()
        .filter_map(|(&table, keys)| shards[table].as_deref().map(|shard| (table, shard, keys)))
        .flat_map_iter(|(table, shard, keys)| {
            from_shard(shard, keys, size).into_iter().map(move |(key, r)| ((table, key), r))
        })
        .collect()
}

/// The pictures of `keys` from one shard.
fn from_shard(
    shard: &Path,
    keys: &[String],
    size: u32,
) -> Vec<(String, Result<Thumbnail, String>)> {
    let _span = tracing::debug_span!("thumbnails", shard = %shard.display()).entered();
    let mut left: HashMap<&str, ()> = keys.iter().map(|k| (k.as_str(), ())).collect();
    let mut out = Vec::with_capacity(keys.len());
    let mut decoder = Decoder::new(Limits::default());
    let mut image = RgbImage::new();
    let mut stopped = None;
    match ShardReader::open(shard, ReadOptions::default()) {
        Err(e) => stopped = Some(error_chain(&e)),
        Ok(reader) => {
            for item in reader {
                if left.is_empty() {
                    break;
                }
                match item {
                    Ok(sample) => {
                        if left.remove(sample.key()).is_some() {
                            let picture =
                                thumbnail(sample.members(), &mut decoder, &mut image, size);
                            out.push((sample.key().to_string(), picture));
                        }
                    }
                    Err(e) => match e.skipped_sample_key() {
                        Some(key) => {
                            if left.remove(key).is_some() {
                                out.push((key.to_string(), Err(error_chain(&e))));
                            }
                        }
                        None => {
                            stopped = Some(error_chain(&e));
                            break;
                        }
                    },
                }
            }
        }
    }
    let reason = match stopped {
        Some(error) => format!("not read from the shard: {error}"),
        None => format!("not in the shard {}", shard.display()),
    };
    let mut missing: Vec<&str> = left.into_keys().collect();
    missing.sort_unstable();
    if !missing.is_empty() {
        tracing::warn!(shard = %shard.display(), samples = missing.len(), %reason, "no thumbnails");
    }
    out.extend(missing.into_iter().map(|key| (key.to_string(), Err(reason.clone()))));
    out
}

/// The sample's image (its first member with an image extension, as scoring takes it), shrunk
/// to fit `size` x `size` (never enlarged) and encoded.
fn thumbnail(
    members: &[Member],
    decoder: &mut Decoder,
    image: &mut RgbImage,
    size: u32,
) -> Result<Thumbnail, String> {
    let member = members
        .iter()
        .find(|m| is_image_extension(m.extension()))
        .ok_or_else(|| "the sample has no image member".to_string())?;
    decoder
        .decode(&member.data, image)
        .map_err(|e| format!("{}: {}", member.name, error_chain(&e)))?;
    let (width, height) = (image.width(), image.height());
    let full: ImageBuffer<Rgb<u8>, &[u8]> =
        ImageBuffer::from_raw(width, height, image.as_raw()).expect("decoded RGB8 pixels");
    let (w, h) = fit(width, height, size);
    let small;
    let pixels: &[u8] = if (w, h) == (width, height) {
        image.as_raw()
    } else {
        small = image::imageops::thumbnail(&full, w, h);
        small.as_raw()
    };
    let mut jpeg = Vec::new();
    JpegEncoder::new_with_quality(&mut jpeg, JPEG_QUALITY)
        .encode(pixels, w, h, ExtendedColorType::Rgb8)
        .map_err(|e| format!("encoding the thumbnail: {e}"))?;
    let mut data_uri = String::from("data:image/jpeg;base64,");
    base64::engine::general_purpose::STANDARD.encode_string(&jpeg, &mut data_uri);
    Ok(Thumbnail { width: w, height: h, data_uri })
}

/// `width` x `height` shrunk to fit `size` x `size`, keeping the aspect ratio (at least 1 px).
fn fit(width: u32, height: u32, size: u32) -> (u32, u32) {
    let longest = width.max(height);
    if longest <= size {
        return (width, height);
    }
    let scale = |side: u32| {
        ((u64::from(side) * u64::from(size) + u64::from(longest) / 2) / u64::from(longest)).max(1)
            as u32
    };
    (scale(width), scale(height))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pictures_fit_the_square_without_enlarging() {
        assert_eq!(fit(4000, 3000, 160), (160, 120));
        assert_eq!(fit(90, 250, 160), (58, 160));
        assert_eq!(fit(100, 100, 160), (100, 100));
        assert_eq!(fit(10_000, 1, 160), (160, 1));
    }

    /// The fixture shard's chosen samples come back decodable JPEGs of the fitted size; keys
    /// it lacks and samples without images say why.
    #[test]
    fn chosen_samples_are_pictured_from_their_shard() {
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/pipeline/shards");
        let shards =
            vec![Some(fixtures.join("good-000000.tar")), Some(fixtures.join("broken.tar")), None];
        let wanted = BTreeMap::from([
            (0, vec!["000003".to_string(), "000005".to_string(), "nope".to_string()]),
            (1, vec!["b0001".to_string(), "b0002".to_string()]),
            (2, vec!["x".to_string()]),
        ]);
        let pictures = pictures(&wanted, &shards, 64);
        assert_eq!(pictures.len(), 5, "{:?}", pictures.keys());
        for (key, (w, h)) in [("000003", (250, 90)), ("000005", (120, 160))] {
            let thumb = pictures[&(0, key.to_string())].as_ref().unwrap();
            assert_eq!((thumb.width, thumb.height), fit(w, h, 64), "{key}");
            let b64 = thumb.data_uri.strip_prefix("data:image/jpeg;base64,").unwrap();
            let jpeg = base64::engine::general_purpose::STANDARD.decode(b64).unwrap();
            let mut image = RgbImage::new();
            Decoder::new(Limits::default()).decode(&jpeg, &mut image).unwrap();
            assert_eq!((image.width(), image.height()), (thumb.width, thumb.height));
        }
        assert!(pictures[&(0, "nope".into())].as_ref().unwrap_err().contains("not in the shard"));
        assert!(pictures[&(1, "b0001".into())].as_ref().unwrap_err().contains("b0001.jpg"));
        assert!(pictures[&(1, "b0002".into())].as_ref().unwrap_err().contains("no image"));
    }
}
