//! What the writer writes, the reader reads back unchanged.

use std::io::Read;

use aesthete_shards::{Member, ReadOptions, Sample, ShardReader, ShardWriter};

use crate::util::{bytes, raw_tar, read_ok, write, write_named};

fn varied_samples() -> Vec<Sample> {
    let long_dir = format!("{}/", "d".repeat(150));
    vec![
        Sample::new("plain").with("jpg", bytes(100_000, 1)).with("txt", "caption"),
        Sample::new("multidot").with("photo.jpg", bytes(10, 2)),
        Sample::new("x".repeat(95)).with("jpg", bytes(3, 3)), // name of 99 bytes
        Sample::new("x".repeat(96)).with("jpg", bytes(3, 4)), // 100 bytes
        Sample::new("x".repeat(97)).with("jpg", bytes(3, 5)), // 101 bytes
        Sample::new(format!("{long_dir}deep")).with("json", "{}").with("JPEG", bytes(700, 6)),
        Sample::new("déjà vu/ünïcode").with("txt", "été"),
        Sample::new("empty").with("txt", ""),
        Sample::from_parts("noext", vec![Member::new("noext", "bare")]),
        Sample::new("dir.with.dots/k").with("cls", "7"),
    ]
}

#[test]
fn tar_round_trip() {
    let samples = varied_samples();
    assert_eq!(read_ok(&write(&samples)), samples);
}

#[test]
fn tar_gz_round_trip() {
    let samples = varied_samples();
    let gz = write_named(&samples, "out.tar.gz");
    assert_eq!(&gz[..2], [0x1f, 0x8b]);
    assert_eq!(read_ok(&gz), samples);
    // .tgz too, and gzip is detected by content, not name
    let tgz = write_named(&samples, "out.TGZ");
    assert_eq!(gz, tgz);
}

#[test]
fn open_detects_gzip_by_content() {
    let samples = varied_samples();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("misnamed.tar");
    std::fs::write(&path, write_named(&samples, "x.tar.gz")).unwrap();
    let read: Vec<Sample> =
        ShardReader::open(&path, ReadOptions::default()).unwrap().map(Result::unwrap).collect();
    assert_eq!(read, samples);
}

#[test]
fn open_missing_file_is_io_error() {
    let err = ShardReader::open("/nonexistent/x.tar", ReadOptions::default()).unwrap_err();
    assert!(matches!(err, aesthete_shards::Error::Io { ref path, .. } if path.ends_with("x.tar")));
}

#[test]
fn non_file_entries_are_skipped() {
    use tar::EntryType::*;
    let tar = raw_tar(&[
        (b"d/", Directory, b""),
        (b"a.jpg", Regular, b"1"),
        (b"a.lnk", Symlink, b""),
        (b"a/", Directory, b""),
        (b"a.txt", Regular, b"2"),
        (b"old-dir/", Regular, b""), // v7-style directory: regular type, trailing slash
        (b"b.txt", Continuous, b"3"),
        (b"fifo", Fifo, b""),
    ]);
    let samples = read_ok(&tar);
    assert_eq!(
        samples,
        vec![Sample::new("a").with("jpg", "1").with("txt", "2"), Sample::new("b").with("txt", "3")]
    );
}

/// One pax record, `"<len> <key>=<value>\n"` with `len` counting itself.
fn pax(key: &str, value: &str) -> Vec<u8> {
    let body = format!(" {key}={value}\n");
    let mut len = body.len() + 1;
    while len.to_string().len() + body.len() != len {
        len = len.to_string().len() + body.len();
    }
    format!("{len}{body}").into_bytes()
}

#[test]
fn pax_sparse_files_are_skipped_as_old_gnu_sparse_files_are() {
    use tar::EntryType::*;
    // As `tar --format=posix -S` stores a file with holes (sparse format 1.0): pax records
    // naming the file, then a regular entry under a placeholder name holding its map and
    // pieces, which read as a file would make a sample of their own.
    let records = [
        pax("GNU.sparse.major", "1"),
        pax("GNU.sparse.minor", "0"),
        pax("GNU.sparse.name", "s.bin"),
        pax("GNU.sparse.realsize", "1048576"),
    ]
    .concat();
    let tar = raw_tar(&[
        (b"a.jpg", Regular, b"1"),
        (b"a.txt", Regular, b"2"),
        (b"./PaxHeaders/s.bin", XHeader, &records),
        (b"./GNUSparseFile.7/s.bin", Regular, &[b'1'; 1536]),
        (b"s.txt", Regular, b"3"),
    ]);
    let samples = read_ok(&tar);
    assert_eq!(
        samples,
        vec![Sample::new("a").with("jpg", "1").with("txt", "2"), Sample::new("s").with("txt", "3")]
    );
}

#[test]
fn old_style_directory_with_regular_type_zero() {
    // typeflag '\0' (pre-POSIX regular file) with a trailing slash is a directory
    let mut header = crate::util::raw_header(b"dir/", 0, tar::EntryType::Regular);
    header.as_old_mut().linkflag = [0];
    header.set_cksum();
    let mut tar = header.as_bytes().to_vec();
    tar.extend(write(&[Sample::new("k").with("txt", "x")]));
    assert_eq!(read_ok(&tar), vec![Sample::new("k").with("txt", "x")]);
}

#[test]
fn sample_offsets_point_at_headers() {
    let samples = varied_samples();
    let tar = write(&samples);
    let mut reader = ShardReader::new(&tar[..], "x", ReadOptions::default());
    while let Some(sample) = reader.next() {
        let sample = sample.unwrap();
        let at = reader.sample_offset() as usize;
        // re-reading from that offset starts with this very sample
        let again = ShardReader::new(&tar[at..], "x", ReadOptions::default()).next();
        assert_eq!(again.unwrap().unwrap(), sample);
    }
}

#[test]
fn reader_and_writer_are_send() {
    fn send<T: Send>() {}
    send::<ShardReader<Box<dyn Read + Send>>>();
    send::<ShardReader<std::fs::File>>();
    send::<ShardWriter>();
    send::<aesthete_shards::Error>();
}
