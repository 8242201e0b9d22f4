//! Property tests of the WebDataset grouping rule and of robustness on damaged input.

use aesthete_shards::{Error, Member, ReadOptions, Sample, ShardReader};
use proptest::prelude::*;
use proptest::sample::select;

use crate::util::{raw_tar, read_ok, read_with, write};

/// The key by a different formulation of the rule: strip the longest suffix that starts
/// with a dot and contains no slash.
fn model_key(name: &str) -> &str {
    let cut = name
        .char_indices()
        .filter(|&(i, c)| c == '.' && !name[i..].contains('/'))
        .map(|(i, _)| i)
        .next();
    cut.map_or(name, |i| &name[..i])
}

fn member_name() -> impl Strategy<Value = String> {
    (
        select(vec!["", "d/", "d.x/", "é/", "a/"]),
        select(vec!["a", "b", "A", "", "a b"]),
        select(vec![".jpg", ".JPG", ".photo.jpg", ".txt", "", ".", ".tar.gz"]),
    )
        .prop_map(|(d, s, e)| format!("{d}{s}{e}"))
        .prop_filter("a file name", |n| !n.is_empty() && !n.ends_with('/'))
}

fn members() -> impl Strategy<Value = Vec<(String, Vec<u8>)>> {
    prop::collection::vec((member_name(), prop::collection::vec(any::<u8>(), 0..700)), 0..12)
}

fn samples() -> impl Strategy<Value = Vec<Sample>> {
    let key = (
        select(vec!["", "dir/", "x.y/", "ü/", "deep/er/"]),
        select(vec!["k", "K", "k2"]),
        0..3usize,
    )
        .prop_map(|(d, s, long)| format!("{d}{}{s}", "l".repeat(long * 70)));
    let sample = (
        key,
        prop::collection::vec((select(vec!["jpg", "txt", "photo.JPG", "json"]), 0..600usize), 1..4),
    )
        .prop_map(|(key, members)| {
            let members = members
                .into_iter()
                .map(|(ext, n)| {
                    Member::new(format!("{key}.{ext}"), crate::util::bytes(n, n as u64))
                })
                .collect();
            Sample::from_parts(key, members)
        });
    prop::collection::vec(sample, 0..8).prop_map(|mut samples| {
        samples.dedup_by(|a, b| a.key() == b.key());
        samples
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn consecutive_members_with_one_key_form_one_sample(members in members()) {
        let entries: Vec<(&[u8], tar::EntryType, &[u8])> = members
            .iter()
            .map(|(n, d)| (n.as_bytes(), tar::EntryType::Regular, d.as_slice()))
            .collect();
        let samples = read_ok(&raw_tar(&entries));

        // nothing lost, nothing reordered, names and bytes as written
        let flat: Vec<(String, Vec<u8>)> = samples
            .iter()
            .flat_map(|s| s.members().iter().map(|m| (m.name.clone(), m.data.clone())))
            .collect();
        prop_assert_eq!(&flat, &members);

        for sample in &samples {
            prop_assert!(!sample.members().is_empty());
            for m in sample.members() {
                prop_assert_eq!(model_key(&m.name), sample.key());
                prop_assert_eq!(format!("{}{}{}", m.key(), if m.name.len() > m.key().len() { "." } else { "" }, m.extension()), m.name.clone());
            }
        }
        for pair in samples.windows(2) {
            prop_assert_ne!(pair[0].key(), pair[1].key());
        }
        let mut runs: Vec<&str> = members.iter().map(|(n, _)| model_key(n)).collect();
        runs.dedup();
        prop_assert_eq!(samples.len(), runs.len());
    }

    #[test]
    fn written_samples_read_back_unchanged(samples in samples()) {
        let gz = crate::util::gzip(&write(&samples));
        prop_assert_eq!(read_ok(&write(&samples)), samples.clone());
        prop_assert_eq!(read_ok(&gz), samples);
    }

    #[test]
    fn damaged_shards_never_panic(
        samples in samples(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
        cut in any::<prop::sample::Index>(),
        fix_checksums in any::<bool>(),
    ) {
        let mut tar = write(&samples);
        let headers = header_blocks(&tar);
        for (at, byte) in edits {
            let i = at.index(tar.len());
            tar[i] = byte;
        }
        if fix_checksums {
            for &h in &headers {
                set_checksum(&mut tar[h..h + 512]);
            }
        }
        let cut = cut.index(tar.len() + 1);
        let items = read_with(&tar[..cut], ReadOptions::default().max_member_size(1 << 20));
        prop_assert!(items.len() <= tar.len() / 512 + 1);
        if let Some((_, before)) = items.split_last() {
            for item in before {
                prop_assert!(matches!(
                    item,
                    Ok(_) | Err(Error::MemberTooLarge { .. } | Error::SampleTooLarge { .. } | Error::NonUtf8Name { .. })
                ), "{:?}", item);
            }
        }
    }
}

/// Offsets of the blocks whose checksum is valid: the headers of a freshly written shard.
fn header_blocks(tar: &[u8]) -> Vec<usize> {
    (0..tar.len() / 512)
        .map(|b| b * 512)
        .filter(|&o| {
            let block = &tar[o..o + 512];
            let mut copy = block.to_vec();
            set_checksum(&mut copy);
            block.iter().any(|&b| b != 0) && copy == block
        })
        .collect()
}

fn set_checksum(block: &mut [u8]) {
    block[148..156].fill(b' ');
    let sum: u32 = block.iter().map(|&b| u32::from(b)).sum();
    block[148..156].copy_from_slice(format!("{sum:07o}\0").as_bytes());
}

#[test]
fn model_agrees_on_examples() {
    for (name, key) in
        [("a/b/img001.photo.jpg", "a/b/img001"), ("a.b/c", "a.b/c"), ("x", "x"), ("d/.h", "d/")]
    {
        assert_eq!(model_key(name), key);
        assert_eq!(aesthete_shards::split_name(name).0, key);
    }
}

#[test]
fn reader_stops_after_fatal_error_even_with_trailing_samples() {
    let tar = write(&crate::util::small_samples());
    let mut bad = tar.clone();
    bad[0] ^= 1;
    let mut reader = ShardReader::new(&bad[..], "x", ReadOptions::default());
    assert!(matches!(reader.next(), Some(Err(Error::CorruptHeader { offset: 0, .. }))));
    assert!(reader.next().is_none());
}
