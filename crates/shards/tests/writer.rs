//! Writer: atomic commit, determinism, refused names.

use std::fs;

use aesthete_shards::{Error, Member, Sample, ShardWriter};

use crate::util::{read_ok, small_samples, write};

fn dir_entries(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> =
        fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    names
}

#[test]
fn output_is_deterministic() {
    let samples = small_samples();
    let first = write(&samples);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert_eq!(first, write(&samples));
}

#[test]
fn headers_are_normalized() {
    let long = format!("{}.jpg", "n".repeat(120));
    let sample = Sample::from_parts("n".repeat(120), vec![Member::new(&long, "x")]);
    let tar = write(&[small_samples().remove(0), sample]);
    let mut archive = tar::Archive::new(&tar[..]);
    let mut names = Vec::new();
    for entry in archive.entries().unwrap() {
        let entry = entry.unwrap();
        let h = entry.header();
        assert_eq!(h.mtime().unwrap(), 0);
        assert_eq!(h.mode().unwrap(), 0o644);
        assert_eq!((h.uid().unwrap(), h.gid().unwrap()), (0, 0));
        assert_eq!(h.username_bytes(), Some(&b""[..]));
        assert_eq!(h.groupname_bytes(), Some(&b""[..]));
        assert_eq!(h.entry_type(), tar::EntryType::Regular);
        names.push(entry.path().unwrap().to_str().unwrap().to_owned());
    }
    assert_eq!(names, ["s0.jpg", "s0.txt", long.as_str()]);
}

#[test]
fn commit_renames_into_place() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shard.tar");
    let mut writer = ShardWriter::create(&path).unwrap();
    writer.write_sample(&small_samples()[0]).unwrap();
    // only the temporary file exists before commit, hidden and named after the shard
    let entries = dir_entries(dir.path());
    assert_eq!(entries.len(), 1);
    assert!(entries[0].starts_with(".shard.tar.") && entries[0].ends_with(".tmp"), "{entries:?}");
    assert_eq!(writer.samples(), 1);
    writer.commit().unwrap();
    assert_eq!(dir_entries(dir.path()), ["shard.tar"]);
    assert_eq!(read_ok(&fs::read(&path).unwrap()), small_samples()[..1]);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & 0o600, 0o600, "{mode:o}");
    }
}

#[test]
fn dropped_writer_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shard.tar");
    let mut writer = ShardWriter::create(&path).unwrap();
    writer.write_sample(&small_samples()[0]).unwrap();
    drop(writer);
    assert!(dir_entries(dir.path()).is_empty());

    // an existing shard is untouched by an uncommitted writer, replaced by a committed one
    fs::write(&path, b"old").unwrap();
    let mut writer = ShardWriter::create(&path).unwrap();
    writer.write_sample(&small_samples()[0]).unwrap();
    drop(writer);
    assert_eq!(fs::read(&path).unwrap(), b"old");
    let mut writer = ShardWriter::create(&path).unwrap();
    writer.write_sample(&small_samples()[1]).unwrap();
    writer.commit().unwrap();
    assert_eq!(read_ok(&fs::read(&path).unwrap()), small_samples()[1..2]);
    assert_eq!(dir_entries(dir.path()), ["shard.tar"]);
}

#[test]
fn unsafe_names_are_refused_without_writing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shard.tar");
    let mut writer = ShardWriter::create(&path).unwrap();
    for (key, name) in [
        ("/etc/passwd", "/etc/passwd.jpg"),
        ("../up", "../up.jpg"),
        ("a/../b", "a/../b.jpg"),
        ("", ""),
    ] {
        let sample = Sample::from_parts(key, vec![Member::new(name, "x")]);
        match writer.write_sample(&sample) {
            Err(Error::UnsafeName { name: refused, .. }) => assert_eq!(refused, name),
            other => panic!("{name}: {other:?}"),
        }
    }
    // a refused sample writes nothing, even when its first members were fine
    let mixed =
        Sample::from_parts("m", vec![Member::new("m.jpg", "ok"), Member::new("m/../m.txt", "bad")]);
    assert!(matches!(writer.write_sample(&mixed), Err(Error::UnsafeName { .. })));
    writer.write_sample(&small_samples()[0]).unwrap();
    writer.commit().unwrap();
    assert_eq!(read_ok(&fs::read(&path).unwrap()), small_samples()[..1]);
}

#[test]
fn members_must_regroup_into_their_sample() {
    let dir = tempfile::tempdir().unwrap();
    let mut writer = ShardWriter::create(dir.path().join("s.tar")).unwrap();
    let wrong = Sample::from_parts("a", vec![Member::new("b.jpg", "x")]);
    assert!(matches!(
        writer.write_sample(&wrong),
        Err(Error::KeyMismatch { key, member }) if key == "a" && member == "b.jpg"
    ));
    let a = Sample::new("a").with("jpg", "1");
    writer.write_sample(&a).unwrap();
    assert!(matches!(writer.write_sample(&a), Err(Error::RepeatedKey { key }) if key == "a"));
    // an empty sample writes nothing and does not count
    writer.write_sample(&Sample::new("e")).unwrap();
    assert_eq!(writer.samples(), 1);
}

#[test]
fn create_in_missing_directory_fails() {
    let err = ShardWriter::create("/nonexistent-dir/x.tar").unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
}
