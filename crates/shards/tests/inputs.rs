//! Expanding user inputs into shard lists.

use std::fs;
use std::path::{Path, PathBuf};

use aesthete_shards::{Error, expand_inputs};

/// A directory with shards data-000000..3.tar, x.tgz, y.TAR.GZ, a hidden shard, a
/// non-shard file and a subdirectory.
fn tree() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for name in ["data-000000.tar", "data-000001.tar", "data-000002.tar", "data-000003.tar"] {
        fs::write(dir.path().join(name), b"").unwrap();
    }
    for name in ["x.tgz", "y.TAR.GZ", ".hidden.tar", "notes.md", "b.tar"] {
        fs::write(dir.path().join(name), b"").unwrap();
    }
    fs::create_dir_all(dir.path().join("sub/deeper")).unwrap();
    fs::write(dir.path().join("sub/z.tar"), b"").unwrap();
    fs::write(dir.path().join("sub/deeper/w.tar"), b"").unwrap();
    dir
}

fn names(root: &Path, paths: &[PathBuf]) -> Vec<String> {
    paths.iter().map(|p| p.strip_prefix(root).unwrap().to_str().unwrap().to_owned()).collect()
}

fn s(root: &Path, rest: &str) -> String {
    format!("{}/{rest}", root.display())
}

#[test]
fn brace_range_keeps_padding() {
    let t = tree();
    let root = t.path();
    let paths = expand_inputs(&[s(root, "data-{000001..000003}.tar")]).unwrap();
    assert_eq!(names(root, &paths), ["data-000001.tar", "data-000002.tar", "data-000003.tar"]);
    let paths = expand_inputs(&[s(root, "{data-000000,b}.tar")]).unwrap();
    assert_eq!(names(root, &paths), ["b.tar", "data-000000.tar"]);
}

#[test]
fn brace_range_with_missing_shard_is_an_error() {
    let t = tree();
    let err = expand_inputs(&[s(t.path(), "data-{000000..000004}.tar")]).unwrap_err();
    assert!(
        matches!(&err, Error::NotFound { path } if path.ends_with("data-000004.tar")),
        "{err:?}"
    );
    assert!(err.to_string().ends_with("data-000004.tar does not exist"));
}

#[test]
fn directory_lists_its_shards() {
    let t = tree();
    let root = t.path();
    let paths = expand_inputs(&[root.to_str().unwrap()]).unwrap();
    assert_eq!(
        names(root, &paths),
        [
            "b.tar",
            "data-000000.tar",
            "data-000001.tar",
            "data-000002.tar",
            "data-000003.tar",
            "x.tgz",
            "y.TAR.GZ"
        ]
    );
    let empty = root.join("empty");
    fs::create_dir(&empty).unwrap();
    assert!(matches!(expand_inputs(&[empty.to_str().unwrap()]), Err(Error::NoMatch { .. })));
}

#[test]
fn globs() {
    let t = tree();
    let root = t.path();
    let paths = expand_inputs(&[s(root, "data-*.tar"), s(root, "sub/**/*.tar")]).unwrap();
    assert_eq!(
        names(root, &paths),
        [
            "data-000000.tar",
            "data-000001.tar",
            "data-000002.tar",
            "data-000003.tar",
            "sub/deeper/w.tar",
            "sub/z.tar"
        ]
    );
    // `*` skips hidden files; a glob that matches nothing says so
    let err = expand_inputs(&[s(root, "*.nothing")]).unwrap_err();
    assert!(matches!(&err, Error::NoMatch { pattern } if pattern.ends_with("*.nothing")));
    assert!(err.to_string().ends_with("*.nothing matches no shard"), "{err}");
    let hidden = expand_inputs(&[s(root, "*hidden*")]).unwrap_err();
    assert!(matches!(hidden, Error::NoMatch { .. }));
    assert!(matches!(expand_inputs(&[s(root, "[.tar")]), Err(Error::Pattern { .. })));
}

#[test]
fn list_files() {
    let t = tree();
    let root = t.path();
    let list = "# shards\n\ndata-{000000..000001}.tar\n  sub  \n/nonexistent-but-commented\n";
    let list = list.replace("/nonexistent-but-commented", "#/nonexistent");
    fs::write(root.join("shards.txt"), &list).unwrap();
    fs::write(root.join("shards.lst"), &list).unwrap();
    let want = ["data-000000.tar", "data-000001.tar", "sub/z.tar"];
    // a .txt file is a list; lines are relative to the list's directory
    assert_eq!(names(root, &expand_inputs(&[s(root, "shards.txt")]).unwrap()), want);
    // @ makes any file a list
    let at = format!("@{}", s(root, "shards.lst"));
    assert_eq!(names(root, &expand_inputs(&[at]).unwrap()), want);
    // without @, another suffix is a shard path like any other
    assert_eq!(names(root, &expand_inputs(&[s(root, "shards.lst")]).unwrap()), ["shards.lst"]);

    fs::write(root.join("empty.txt"), "# nothing\n").unwrap();
    assert!(matches!(expand_inputs(&[s(root, "empty.txt")]), Err(Error::NoMatch { .. })));
    fs::write(root.join("bad.txt"), "missing.tar\n").unwrap();
    assert!(matches!(
        expand_inputs(&[s(root, "bad.txt")]),
        Err(Error::NotFound { path }) if path == root.join("missing.tar")
    ));
    assert!(matches!(expand_inputs(&["@/nonexistent/list"]), Err(Error::NotFound { .. })));
}

#[test]
fn sorted_and_deduplicated() {
    let t = tree();
    let root = t.path();
    let paths = expand_inputs(&[
        s(root, "x.tgz"),
        s(root, "./b.tar"),
        s(root, "b.tar"),
        s(root, "{b,x}.t*"),
        s(root, "sub/../b.tar"),
    ])
    .unwrap();
    // `..` is not resolved (it could cross a symlink): sub/../b.tar stays distinct
    assert_eq!(names(root, &paths), ["b.tar", "sub/../b.tar", "x.tgz"]);
}

#[test]
fn explicit_file_of_any_name_is_kept_and_missing_file_is_an_error() {
    let t = tree();
    let root = t.path();
    assert_eq!(names(root, &expand_inputs(&[s(root, "notes.md")]).unwrap()), ["notes.md"]);
    let err = expand_inputs(&[s(root, "nope.tar")]).unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err:?}");
    assert!(expand_inputs::<&str>(&[]).unwrap().is_empty());
}

#[test]
fn runaway_brace_expansion_is_refused() {
    let err = expand_inputs(&["x-{0..99999999}.tar"]).unwrap_err();
    assert!(matches!(err, Error::Pattern { .. }), "{err:?}");
}
