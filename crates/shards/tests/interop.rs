//! Shards written here, read by Python's webdataset and by GNU tar.
//!
//! Skipped with a one-line note when python3 with webdataset, or GNU tar, is missing,
//! unless AESTHETE_REQUIRE_PYTHON=1.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use aesthete_shards::{Sample, ShardWriter};

use crate::util::bytes;

fn samples() -> Vec<Sample> {
    vec![
        Sample::new("s000").with("jpg", bytes(2000, 1)).with("txt", "a caption").with("json", "{}"),
        Sample::new("s001").with("JPG", bytes(512, 2)).with("cls", "3"),
        Sample::new(format!("{}/s002", "long-directory-name".repeat(8)))
            .with("photo.jpg", bytes(33, 3)),
        Sample::new("y".repeat(150)).with("webp", bytes(100, 4)).with("txt", ""),
        Sample::new("déjà/vu").with("txt", "été"),
    ]
}

/// `true` when the tool works; otherwise prints why and returns `false`, or panics when
/// AESTHETE_REQUIRE_PYTHON=1.
fn available(program: &str, args: &[&str], what: &str) -> bool {
    let ok = Command::new(program).args(args).output().is_ok_and(|o| o.status.success());
    if !ok {
        if std::env::var("AESTHETE_REQUIRE_PYTHON").as_deref() == Ok("1") {
            panic!("{what} is required (AESTHETE_REQUIRE_PYTHON=1) but not available");
        }
        println!("skipping: {what} not available");
    }
    ok
}

fn write_shard(dir: &Path, name: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    let mut writer = ShardWriter::create(&path).unwrap();
    for sample in samples() {
        writer.write_sample(&sample).unwrap();
    }
    writer.commit().unwrap();
    path
}

const READ_WITH_WEBDATASET: &str = r#"
import json, sys, webdataset as wds
out = []
for s in wds.WebDataset(sys.argv[1], shardshuffle=False, empty_check=False):
    out.append({"key": s["__key__"], "members": {k: v.hex() for k, v in s.items() if not k.startswith("__")}})
print(json.dumps(out))
"#;

#[test]
fn python_webdataset_reads_our_shards() {
    if !available("python3", &["-c", "import webdataset"], "python3 with webdataset") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for name in ["ours.tar", "ours.tar.gz"] {
        let path = write_shard(dir.path(), name);
        let output = Command::new("python3")
            .args(["-c", READ_WITH_WEBDATASET, path.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let theirs: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        let theirs = theirs.as_array().unwrap();
        let ours = samples();
        assert_eq!(theirs.len(), ours.len(), "{name}");
        for (t, o) in theirs.iter().zip(&ours) {
            assert_eq!(t["key"].as_str().unwrap(), o.key());
            let members: BTreeMap<String, String> = t["members"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                .collect();
            let want: BTreeMap<String, String> = o
                .members()
                .iter()
                .map(|m| {
                    let hex = m.data.iter().map(|b| format!("{b:02x}")).collect();
                    (m.extension().to_lowercase(), hex)
                })
                .collect();
            assert_eq!(members, want, "{name}: {}", o.key());
        }
    }
}

#[test]
fn gnu_tar_reads_our_shards() {
    if !available("tar", &["--version"], "GNU tar") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = write_shard(dir.path(), "ours.tar");
    let tar = |args: &[&str]| {
        let output = Command::new("tar").args(args).arg(&path).env("TZ", "UTC").output().unwrap();
        assert!(
            output.status.success(),
            "tar {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            output.stderr.is_empty(),
            "tar {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        output.stdout
    };
    let listed = String::from_utf8(tar(&["-tf"])).unwrap();
    let want: Vec<String> =
        samples().iter().flat_map(|s| s.members().iter().map(|m| m.name.clone())).collect();
    assert_eq!(listed.lines().collect::<Vec<_>>(), want);

    for member in samples().iter().flat_map(|s| s.members().to_vec()) {
        let output = Command::new("tar").arg("-xOf").arg(&path).arg(&member.name).output().unwrap();
        assert!(output.status.success(), "{}", member.name);
        assert_eq!(output.stdout, member.data, "{}", member.name);
    }

    let verbose = String::from_utf8(tar(&["--numeric-owner", "-tvf"])).unwrap();
    for line in verbose.lines() {
        assert!(line.starts_with("-rw-r--r-- 0/0 "), "{line}");
        assert!(line.contains(" 1970-01-01 00:00 "), "{line}");
    }
}
