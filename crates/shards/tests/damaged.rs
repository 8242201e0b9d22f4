//! Truncated and corrupt shards: complete samples first, then one typed error, then the end.

use std::io::Cursor;

use aesthete_shards::{Error, ReadOptions, Sample, ShardReader};

use crate::util::{Trickle, gzip, read_all, small_samples, write};

/// Offsets (first header) of each sample, read back from a valid shard.
fn sample_offsets(tar: &[u8]) -> Vec<u64> {
    let mut reader = ShardReader::new(tar, "x", ReadOptions::default());
    let mut offsets = Vec::new();
    while let Some(sample) = reader.next() {
        sample.unwrap();
        offsets.push(reader.sample_offset());
    }
    offsets
}

#[test]
fn every_cut_yields_complete_samples_then_truncated() {
    let samples = small_samples();
    let tar = write(&samples);
    let offsets = sample_offsets(&tar);
    // A sample is known complete once the next sample's header (one block: names are
    // short) has been read, or the end-of-archive block for the last sample.
    let end_block = tar.len() as u64 - 1024;
    let ready: Vec<u64> = offsets[1..].iter().map(|o| o + 512).chain([end_block + 512]).collect();
    for cut in 0..(end_block + 512) as usize {
        let items = read_all(&tar[..cut]);
        let (last, oks) = items.split_last().expect("an error at least");
        let oks: Vec<&Sample> = oks.iter().map(|r| r.as_ref().unwrap()).collect();
        let want = ready.iter().filter(|&&r| r <= cut as u64).count();
        assert_eq!(oks.len(), want, "cut at {cut}");
        assert!(oks.iter().zip(&samples).all(|(a, b)| *a == b), "cut at {cut}");
        match last {
            Err(Error::Truncated { shard, offset }) => {
                assert_eq!(*offset, cut as u64, "cut at {cut}");
                assert_eq!(shard.to_str(), Some("mem.tar"));
            }
            other => panic!("cut at {cut}: {other:?}"),
        }
    }
    // One end-of-archive block is enough, as for GNU tar and Python's tarfile.
    for cut in (end_block + 512) as usize..=tar.len() {
        let read: Vec<Sample> = read_all(&tar[..cut]).into_iter().map(Result::unwrap).collect();
        assert_eq!(read, samples, "cut at {cut}");
    }
}

#[test]
fn truncated_gzip() {
    let samples = small_samples();
    let gz = gzip(&write(&samples));
    for cut in (0..gz.len()).step_by(7) {
        let items = read_all(&gz[..cut]);
        let (last, oks) = items.split_last().unwrap();
        for (ok, want) in oks.iter().zip(&samples) {
            assert_eq!(ok.as_ref().unwrap(), want, "cut at {cut}");
        }
        assert!(matches!(last, Err(Error::Truncated { .. })), "cut at {cut}: {last:?}");
    }
    // gzip trailer missing: all samples, then the stream is reported truncated
    let items = read_all(&gz[..gz.len() - 4]);
    assert_eq!(items.len(), samples.len() + 1);
    assert!(matches!(items.last(), Some(Err(Error::Truncated { .. }))));
}

#[test]
fn bytes_after_the_gzip_stream_are_ignored_as_gzip_ignores_them() {
    let samples = small_samples();
    let gz = gzip(&write(&samples));
    for tail in [vec![0u8; 512], b"not gzip".to_vec()] {
        let padded = [gz.clone(), tail].concat();
        let items: Vec<Sample> = read_all(&padded).into_iter().map(Result::unwrap).collect();
        assert_eq!(items, samples);
    }
}

#[test]
fn a_shard_in_several_gzip_members_reads_whole() {
    let samples = small_samples();
    let tar = write(&samples);
    // Cut mid-member and mid-header, as concatenated `.gz` files (and pigz -i) are.
    for cut in [700, tar.len() / 2, tar.len() - 1000] {
        let gz = [gzip(&tar[..cut]), gzip(&tar[cut..])].concat();
        let items: Vec<Sample> = read_all(&gz).into_iter().map(Result::unwrap).collect();
        assert_eq!(items, samples, "cut at {cut}");
    }
}

#[test]
fn corrupt_gzip_checksum_is_a_read_error() {
    let samples = small_samples();
    let mut gz = gzip(&write(&samples));
    let crc = gz.len() - 8;
    gz[crc] ^= 0xff;
    let items = read_all(&gz);
    assert_eq!(items.len(), samples.len() + 1);
    assert!(matches!(items.last(), Some(Err(Error::Read { .. }))), "{:?}", items.last());
}

#[test]
fn any_flipped_header_byte_is_a_corrupt_header() {
    let samples = small_samples();
    let tar = write(&samples);
    let offsets = sample_offsets(&tar);
    let header = offsets[2] as usize;
    for i in 0..512 {
        let mut bad = tar.clone();
        bad[header + i] ^= 0x01;
        let items = read_all(&bad);
        // sample 1 is in progress when sample 2's header turns out corrupt: it is dropped,
        // since the corrupt header might have been one of its members
        assert_eq!(items.len(), 2, "byte {i}");
        assert_eq!(items[0].as_ref().unwrap(), &samples[0]);
        match &items[1] {
            Err(Error::CorruptHeader { offset, .. }) => assert_eq!(*offset, header as u64),
            other => panic!("byte {i}: {other:?}"),
        }
    }
}

#[test]
fn empty_input_is_truncated() {
    let items = read_all(&[]);
    assert!(matches!(items[..], [Err(Error::Truncated { offset: 0, .. })]), "{items:?}");
    assert!(read_all(&[0; 1024]).is_empty());
    assert!(read_all(&[0; 512]).is_empty());
}

#[test]
fn reader_is_fused_after_an_error() {
    let tar = write(&small_samples());
    let mut reader = ShardReader::new(&tar[..700], "x", ReadOptions::default());
    assert!(matches!(reader.next(), Some(Err(Error::Truncated { .. }))));
    assert!(reader.next().is_none());
    assert!(reader.next().is_none());
}

#[test]
fn short_reads_give_the_same_result() {
    let samples = small_samples();
    let tar = write(&samples);
    for input in [tar.clone(), gzip(&tar)] {
        for chunk in [1, 3, 511, 4096] {
            let reader = Trickle { inner: Cursor::new(&input), chunk };
            let read: Vec<Sample> = ShardReader::new(reader, "pipe", ReadOptions::default())
                .map(Result::unwrap)
                .collect();
            assert_eq!(read, samples, "chunk {chunk}");
        }
    }
}

#[test]
fn garbage_never_panics() {
    // Headers with valid checksums but absurd fields are covered by the property tests;
    // here: text, random bytes and a gzip of random bytes.
    let inputs: Vec<Vec<u8>> = vec![
        b"hello world, this is not a tar file".to_vec(),
        crate::util::bytes(5000, 7),
        gzip(&crate::util::bytes(5000, 8)),
        vec![0x1f],
        vec![0x1f, 0x8b],
    ];
    for input in inputs {
        let items = read_all(&input);
        assert_eq!(items.len(), 1, "{items:?}");
        assert!(items[0].is_err());
    }
}
