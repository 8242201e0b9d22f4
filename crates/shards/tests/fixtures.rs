//! Shards written by Python's webdataset and GNU tar (fixtures/shards, made by generate.py),
//! compared with how Python's webdataset reads them.

use std::collections::BTreeMap;

use aesthete_shards::{Error, ReadOptions, Sample, ShardReader};
use serde_json::Value;

use crate::util::fixtures;

fn expected() -> Value {
    let text = std::fs::read_to_string(fixtures().join("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn read(dir: &str, name: &str) -> Vec<Result<Sample, Error>> {
    let path = fixtures().join(dir).join(name);
    ShardReader::open(&path, ReadOptions::default()).unwrap().collect()
}

fn hex(data: &[u8]) -> String {
    data.iter().map(|b| format!("{b:02x}")).collect()
}

/// Our samples as webdataset presents them: key, lower-cased extension -> hex bytes.
fn as_webdataset(sample: &Sample) -> (String, BTreeMap<String, String>) {
    let members =
        sample.members().iter().map(|m| (m.extension().to_lowercase(), hex(&m.data))).collect();
    (sample.key().to_string(), members)
}

fn check_good(name: &str) {
    let expected = &expected()["good"][name];
    let samples: Vec<Sample> = read("good", name).into_iter().map(Result::unwrap).collect();

    let names: Vec<&str> =
        samples.iter().flat_map(|s| s.members().iter().map(|m| m.name.as_str())).collect();
    let want_names: Vec<&str> =
        expected["names"].as_array().unwrap().iter().map(|n| n.as_str().unwrap()).collect();
    assert_eq!(names, want_names, "member names of {name}");

    let ours: Vec<_> = samples.iter().map(as_webdataset).collect();
    let theirs: Vec<(String, BTreeMap<String, String>)> = expected["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let members = s["members"].as_object().unwrap();
            let members =
                members.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned())).collect();
            (s["key"].as_str().unwrap().to_owned(), members)
        })
        .collect();
    assert_eq!(ours, theirs, "samples of {name}");
}

macro_rules! good {
    ($($test:ident => $file:literal,)*) => {$(
        #[test]
        fn $test() {
            check_good($file);
        }
    )*};
}

good! {
    webdataset_tar => "webdataset.tar",
    webdataset_tar_gz => "webdataset.tar.gz",
    gnutar_gnu => "gnutar-gnu.tar",
    gnutar_ustar => "gnutar-ustar.tar",
    gnutar_posix => "gnutar-posix.tar",
}

fn check_bad(name: &str) {
    let expected = &expected()["bad"][name];
    let good: Vec<Sample> =
        read("good", "webdataset.tar").into_iter().map(Result::unwrap).collect();
    let mut items = read("bad", name);
    let last = items.pop().expect("at least the error");
    let oks: Vec<Sample> =
        items.into_iter().map(|r| r.expect("only the last item fails")).collect();
    assert_eq!(oks, good[..oks.len()], "samples before the error in {name}");
    if let Some(n) = expected["ok_samples"].as_u64() {
        assert_eq!(oks.len() as u64, n, "samples before the error in {name}");
    }
    let offset = expected["offset"].as_u64();
    match (expected["error"].as_str().unwrap(), last) {
        ("truncated", Err(Error::Truncated { shard, offset: at })) => {
            assert!(shard.ends_with(name));
            if let Some(offset) = offset {
                assert_eq!(at, offset);
            }
        }
        ("corrupt-header", Err(Error::CorruptHeader { shard, offset: at, reason })) => {
            assert!(shard.ends_with(name));
            assert_eq!(Some(at), offset);
            assert_eq!(reason, "checksum mismatch");
        }
        (kind, last) => panic!("{name}: expected {kind}, got {last:?}"),
    }
}

macro_rules! bad {
    ($($test:ident => $file:literal,)*) => {$(
        #[test]
        fn $test() {
            check_bad($file);
        }
    )*};
}

bad! {
    truncated_member => "truncated-member.tar",
    truncated_header => "truncated-header.tar",
    no_end_block => "no-end-block.tar",
    bad_checksum => "bad-checksum.tar",
    truncated_gz => "truncated.tar.gz",
}

#[test]
fn every_fixture_has_a_case() {
    let expected = expected();
    for dir in ["good", "bad"] {
        let mut on_disk: Vec<String> = std::fs::read_dir(fixtures().join(dir))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        on_disk.sort();
        let mut listed: Vec<&String> = expected[dir].as_object().unwrap().keys().collect();
        listed.sort();
        assert_eq!(listed, on_disk.iter().collect::<Vec<_>>(), "{dir}/ vs expected.json");
    }
}

#[test]
fn upper_case_extension_found_case_insensitively() {
    let samples: Vec<Sample> =
        read("good", "webdataset.tar").into_iter().map(Result::unwrap).collect();
    let s1 = samples.iter().find(|s| s.key() == "sample001").unwrap();
    let jpg = s1.member("jpg").unwrap();
    assert_eq!(jpg.name, "sample001.JPG");
    assert_eq!(jpg.extension(), "JPG");
    let s2 = samples.iter().find(|s| s.key() == "dir/sample002").unwrap();
    assert_eq!(s2.member("photo.jpg").unwrap().name, "dir/sample002.photo.jpg");
}
