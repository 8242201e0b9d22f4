//! aesthete-store against real protocol servers on loopback: an S3 implementation that checks
//! signatures (s3s) and a plain HTTP range server.
use std::io::Read;
use std::path::Path;

use aesthete_store::testing::{RangeServer, S3Server};
use aesthete_store::{Error, Location, RetryPolicy, Stores};

/// A deterministic object of `len` bytes.
fn object(len: usize) -> Vec<u8> {
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

fn quick_retries() -> RetryPolicy {
    RetryPolicy {
        retries: 5,
        first_backoff: std::time::Duration::from_millis(10),
        max_backoff: std::time::Duration::from_millis(50),
    }
}

struct Fixture {
    _root: tempfile::TempDir,
    server: S3Server,
    stores: Stores,
}

fn s3() -> Fixture {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir(root.path().join("bucket")).unwrap();
    let server = S3Server::start(root.path()).unwrap();
    let stores = Stores::with_options(server.options()).unwrap().retry(quick_retries());
    Fixture { _root: root, server, stores }
}

fn put(stores: &Stores, url: &str, bytes: &[u8]) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("upload");
    std::fs::write(&file, bytes).unwrap();
    stores.put_file(&file, &Location::parse(url)).unwrap();
}

fn read_all(stores: &Stores, url: &str) -> Result<Vec<u8>, std::io::Error> {
    let mut reader = stores.open(&Location::parse(url)).map_err(std::io::Error::other)?;
    let mut bytes = Vec::new();
    reader.read_to_end(&mut bytes)?;
    Ok(bytes)
}

#[test]
fn objects_round_trip_small_and_multipart() {
    let f = s3();
    // 40 MiB goes up as a multipart upload of 16 MiB parts.
    for (name, len) in [("empty", 0), ("small.tar", 100_000), ("large.tar", 40 << 20)] {
        let bytes = object(len);
        let url = format!("s3://bucket/dir/{name}");
        put(&f.stores, &url, &bytes);
        assert_eq!(read_all(&f.stores, &url).unwrap(), bytes, "{name}");
        assert_eq!(f.stores.read(&Location::parse(&url)).unwrap(), Some(bytes), "{name}");
    }
    assert_eq!(f.stores.read(&Location::parse("s3://bucket/dir/none")).unwrap(), None);
}

#[test]
fn a_cut_connection_resumes_from_the_byte_reached() {
    let f = s3();
    let bytes = object(3 << 20);
    put(&f.stores, "s3://bucket/shard.tar", &bytes);
    f.server.cut_responses(3, 700_000);
    assert_eq!(read_all(&f.stores, "s3://bucket/shard.tar").unwrap(), bytes);
    assert_eq!(f.server.cuts_left(), 0, "the proxy cut three responses");
}

#[test]
fn a_store_that_never_answers_fails_naming_the_url() {
    let f = s3();
    put(&f.stores, "s3://bucket/shard.tar", &object(3 << 20));
    // Every connection cut before its first byte: no progress, so the retries run out
    // (a read that gets further each time keeps going: its retry count restarts).
    f.server.cut_responses(1000, 0);
    let Err(err) = read_all(&f.stores, "s3://bucket/shard.tar") else {
        panic!("read despite every connection being cut")
    };
    assert!(err.to_string().contains("s3://bucket/shard.tar"), "{err}");
    // The first try and the policy's retries, not retries of retries (36 connections here
    // when the reader also retried each request the client had retried).
    let tries = 1000 - f.server.cuts_left();
    assert!(tries <= quick_retries().retries + 1, "{tries} connections");
}

#[test]
fn missing_objects_and_wrong_credentials_are_permanent_errors() {
    let f = s3();
    put(&f.stores, "s3://bucket/a.tar", b"x");
    match f.stores.open(&Location::parse("s3://bucket/missing.tar")) {
        Err(Error::NotFound { url }) => assert_eq!(url, "s3://bucket/missing.tar"),
        other => panic!("{:?}", other.map(|_| ())),
    }
    let options = f
        .server
        .env_with_secret("wrong")
        .into_iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v))
        .collect();
    let denied = Stores::with_options(options).unwrap().retry(quick_retries());
    match denied.open(&Location::parse("s3://bucket/a.tar")) {
        Err(e @ Error::Denied { .. }) => {
            let text = e.to_string();
            assert!(text.contains("s3://bucket/a.tar") && !text.contains("wrong"), "{text}");
        }
        other => panic!("{:?}", other.map(|_| ())),
    }
}

#[test]
fn urls_expand_by_braces_globs_and_prefixes() {
    let f = s3();
    for name in [
        "d/a-01.tar",
        "d/a-02.tar",
        "d/a-03.tgz",
        "d/b-01.tar",
        "d/sub/a-04.tar",
        "d/.hidden.tar",
        "d/notes.txt",
    ] {
        put(&f.stores, &format!("s3://bucket/{name}"), b"x");
    }
    let expand = |inputs: &[&str]| -> Vec<String> {
        let inputs: Vec<String> = inputs.iter().map(|s| s.to_string()).collect();
        f.stores.expand(&inputs).unwrap().iter().map(ToString::to_string).collect()
    };
    assert_eq!(
        expand(&["s3://bucket/d/a-{01..02}.tar"]),
        ["s3://bucket/d/a-01.tar", "s3://bucket/d/a-02.tar"]
    );
    assert_eq!(
        expand(&["s3://bucket/d/a-*"]),
        ["s3://bucket/d/a-01.tar", "s3://bucket/d/a-02.tar", "s3://bucket/d/a-03.tgz"]
    );
    assert_eq!(
        expand(&["s3://bucket/d/**/a-*.tar"]),
        ["s3://bucket/d/a-01.tar", "s3://bucket/d/a-02.tar", "s3://bucket/d/sub/a-04.tar"]
    );
    assert_eq!(
        expand(&["s3://bucket/d/"]),
        [
            "s3://bucket/d/a-01.tar",
            "s3://bucket/d/a-02.tar",
            "s3://bucket/d/a-03.tgz",
            "s3://bucket/d/b-01.tar"
        ]
    );
    let missing: Vec<String> = vec!["s3://bucket/d/z-*.tar".into()];
    assert!(matches!(f.stores.expand(&missing), Err(Error::NoMatch { .. })));

    // A list file mixing URLs and local paths (relative to the list file).
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("local.tar"), b"x").unwrap();
    let list = dir.path().join("shards.lst");
    std::fs::write(&list, "# shards\ns3://bucket/d/b-01.tar\nlocal.tar\n").unwrap();
    let got = expand(&[&format!("@{}", list.display())]);
    assert_eq!(
        got,
        [dir.path().join("local.tar").display().to_string(), "s3://bucket/d/b-01.tar".into()]
    );
}

#[test]
fn names_with_url_syntax_in_them_reach_the_store_whole() {
    let f = s3();
    let dir = Location::parse("s3://bucket/odd/");
    let names = ["a#1.tar", "b?2.tar", "c%203.tar", "d 4.tar"];
    for (i, name) in names.iter().enumerate() {
        put(&f.stores, &dir.join(name).to_string(), &object(100 + i));
    }
    // The store holds each key as named (s3s keeps them as file names), no two in one.
    for name in names {
        assert!(f._root.path().join("bucket/odd").join(name).is_file(), "{name}");
    }
    let mut listed = f.stores.names_in(&dir).unwrap();
    listed.sort();
    assert_eq!(listed, names);
    for pattern in ["s3://bucket/odd/", "s3://bucket/odd/*.tar"] {
        let expanded = f.stores.expand(&[pattern.to_string()]).unwrap();
        assert_eq!(expanded.len(), names.len(), "{pattern}: {expanded:?}");
        for location in expanded {
            let name = location.file_name().unwrap().into_owned();
            let i = names.iter().position(|n| *n == name).expect("a listed name");
            assert_eq!(read_all(&f.stores, &location.to_string()).unwrap(), object(100 + i));
        }
    }
}

#[test]
fn https_objects_stream_from_a_range_server() {
    let root = tempfile::tempdir().unwrap();
    let bytes = object(2 << 20);
    std::fs::create_dir(root.path().join("data")).unwrap();
    std::fs::write(root.path().join("data/x.tar"), &bytes).unwrap();
    let server = RangeServer::start(root.path()).unwrap();
    let stores = Stores::with_options(Vec::new()).unwrap().retry(quick_retries());
    let url = format!("{}/data/x.tar", server.base());
    assert_eq!(read_all(&stores, &url).unwrap(), bytes);
    match stores.open(&Location::parse(&format!("{}/data/none.tar", server.base()))) {
        Err(Error::NotFound { .. }) => {}
        other => panic!("{:?}", other.map(|_| ())),
    }
}

#[test]
fn local_paths_go_through_the_same_door() {
    let dir = tempfile::tempdir().unwrap();
    let stores = Stores::with_options(Vec::new()).unwrap();
    let src = dir.path().join("src.bin");
    std::fs::write(&src, object(1000)).unwrap();
    let dest = Location::Local(dir.path().join("out/copy.bin"));
    std::fs::create_dir(dir.path().join("out")).unwrap();
    stores.put_file(&src, &dest).unwrap();
    let mut back = Vec::new();
    stores.open(&dest).unwrap().read_to_end(&mut back).unwrap();
    assert_eq!(back, object(1000));
    assert!(Path::new(&dir.path().join("out/copy.bin")).is_file());
}
