//! Limits on untrusted sizes and per-sample errors that let iteration continue.

use std::io::{self, Read};

use aesthete_shards::{Error, ReadOptions, Sample, ShardReader};

use crate::alloc_counter::peak_during;
use crate::util::{raw_header, raw_tar, read_with, write};

#[test]
fn oversized_member_fails_its_sample_only() {
    let samples = vec![
        Sample::new("a").with("jpg", vec![1; 10]),
        Sample::new("b").with("txt", "ok").with("jpg", vec![2; 1001]).with("json", "{}"),
        Sample::new("c").with("jpg", vec![3; 1000]),
    ];
    let tar = write(&samples);
    let items = read_with(&tar, ReadOptions::default().max_member_size(1000));
    assert_eq!(items.len(), 3);
    assert_eq!(items[0].as_ref().unwrap(), &samples[0]);
    match &items[1] {
        Err(Error::MemberTooLarge { shard, key, member, size, limit }) => {
            assert_eq!(shard.to_str(), Some("mem.tar"));
            assert_eq!((key.as_str(), member.as_str()), ("b", "b.jpg"));
            assert_eq!((*size, *limit), (1001, 1000));
        }
        other => panic!("{other:?}"),
    }
    // exactly at the limit is fine
    assert_eq!(items[2].as_ref().unwrap(), &samples[2]);
}

#[test]
fn oversized_member_is_skipped_without_allocating() {
    // A 300 MiB member over the default 256 MiB limit, streamed from a generator.
    let size = 300u64 << 20;
    let header = raw_header(b"big.jpg", size, tar::EntryType::Regular);
    let after = write(&[Sample::new("next").with("txt", "still here")]);
    let input = io::Cursor::new(header.as_bytes().to_vec())
        .chain(io::repeat(0).take(size))
        .chain(io::Cursor::new(after));
    let (items, peak) = peak_during(|| {
        ShardReader::new(input, "big.tar", ReadOptions::default()).collect::<Vec<_>>()
    });
    assert!(peak < 8 << 20, "peak allocation {peak} bytes");
    assert_eq!(items.len(), 2);
    assert!(
        matches!(&items[0], Err(Error::MemberTooLarge { size: s, limit, .. }) if *s == size && *limit == 256 << 20),
        "{:?}",
        items[0]
    );
    assert_eq!(items[1].as_ref().unwrap().member("txt").unwrap().data, b"still here");
}

#[test]
fn oversized_sample_fails_its_sample_only() {
    let samples = vec![
        Sample::new("a").with("1", vec![0; 400]).with("2", vec![0; 400]).with("3", vec![0; 400]),
        Sample::new("b").with("1", vec![0; 400]),
    ];
    let tar = write(&samples);
    let items = read_with(&tar, ReadOptions::default().max_sample_size(1000));
    assert!(
        matches!(&items[..], [Err(Error::SampleTooLarge { key, limit: 1000, .. }), Ok(b)] if key == "a" && *b == samples[1]),
        "{items:?}"
    );
}

#[test]
fn non_utf8_name_fails_its_sample_only() {
    let tar = raw_tar(&[
        (b"a.txt", tar::EntryType::Regular, b"1"),
        (b"b\xff.txt", tar::EntryType::Regular, b"2"),
        (b"b\xff.jpg", tar::EntryType::Regular, b"3"),
        (b"c.txt", tar::EntryType::Regular, b"4"),
    ]);
    let items = read_with(&tar, ReadOptions::default());
    assert_eq!(items.len(), 3, "{items:?}");
    assert_eq!(items[0].as_ref().unwrap().key(), "a");
    match &items[1] {
        Err(Error::NonUtf8Name { name, offset, .. }) => {
            assert_eq!(name, "b\u{fffd}.txt");
            assert_eq!(*offset, 1024);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(items[2].as_ref().unwrap().key(), "c");
}

#[test]
fn huge_extended_header_is_corrupt() {
    let tar = raw_tar(&[(b"././@LongLink", tar::EntryType::GNULongName, &[b'a'; 2 << 20])]);
    let items = read_with(&tar, ReadOptions::default());
    assert!(matches!(&items[..], [Err(Error::CorruptHeader { offset: 0, .. })]), "{items:?}");
}

#[test]
fn messages_name_their_context() {
    let e = Error::MemberTooLarge {
        shard: "s/x.tar".into(),
        key: "k".into(),
        member: "k.jpg".into(),
        size: 10,
        limit: 5,
    };
    assert_eq!(
        e.to_string(),
        "member k.jpg of sample k in shard s/x.tar is 10 bytes, over the limit of 5"
    );
    let e = Error::Truncated { shard: "x.tar".into(), offset: 7 };
    assert_eq!(e.to_string(), "shard x.tar is truncated at byte 7");
}
