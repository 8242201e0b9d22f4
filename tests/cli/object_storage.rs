//! Shards in object storage: `aesthete filter` from and to an S3 server started here on
//! loopback (a real implementation that checks request signatures), and from plain HTTP.
use super::*;

use aesthete_store::testing::{RangeServer, S3Server};

/// An S3 server whose bucket `data` holds the four good fixture shards and `broken.tar` (whose
/// samples fail one by one) under `shards/`, with an empty bucket `out`.
struct Store {
    root: tempfile::TempDir,
    server: S3Server,
}

fn store() -> Store {
    let root = tempfile::tempdir().unwrap();
    let shards = root.path().join("data/shards");
    fs::create_dir_all(&shards).unwrap();
    fs::create_dir_all(root.path().join("out")).unwrap();
    for input in inputs() {
        fs::copy(&input, shards.join(input.file_name().unwrap())).unwrap();
    }
    let server = S3Server::start(root.path()).unwrap();
    Store { root, server }
}

fn inputs() -> Vec<PathBuf> {
    let mut inputs = good_shards();
    inputs.push(shard("broken.tar"));
    inputs
}

/// The `aesthete` command with `args` and `env` added (no worker variables).
fn aesthete_with(args: &[String], env: &[(String, String)]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_aesthete"));
    command.args(args).env_remove("SLURM_ARRAY_TASK_ID").env_remove("JOB_COMPLETION_INDEX");
    command.envs(env.iter().map(|(k, v)| (k, v)));
    command
}

/// `aesthete filter` with `env` added, from `inputs` into `output`.
fn filter(inputs: &[&str], output: &str, env: &[(String, String)]) -> Output {
    let mut args: Vec<String> = vec!["filter".into()];
    args.extend(inputs.iter().map(|s| s.to_string()));
    args.extend(["--output".into(), output.into(), "--threshold".into(), "5".into()]);
    args.extend(model_args());
    aesthete_with(&args, env).output().expect("running aesthete")
}

/// The same run on local files, for comparison.
fn local_outputs() -> BTreeMap<String, Vec<u8>> {
    let out = tempfile::tempdir().unwrap();
    let result = run_filter(&inputs(), out.path(), &["--threshold", "5"]);
    assert!(result.status.success(), "{}", stderr(&result));
    outputs(out.path())
}

#[test]
fn filter_from_s3_to_s3_equals_filter_on_local_files() {
    let s = store();
    let result = filter(&["s3://data/shards/*.tar"], "s3://out/run/", &s.server.env());
    assert!(result.status.success(), "{}", stderr(&result));
    let written = s.root.path().join("out/run");
    assert_eq!(outputs(&written), local_outputs());
    let records: Vec<String> =
        dir_contents(&written).into_keys().filter(|n| n.ends_with(".done.json")).collect();
    assert_eq!(records.len(), 5, "{records:?}");

    // A rerun finds every record in the store and does nothing.
    let again = filter(&["s3://data/shards/*.tar"], "s3://out/run/", &s.server.env());
    assert!(stderr(&again).contains("5 already complete, 0 processed"), "{}", stderr(&again));
    assert_eq!(outputs(&written), local_outputs());
}

#[test]
fn outputs_into_the_inputs_own_prefix_are_refused() {
    let s = store();
    let shards = s.root.path().join("data/shards");
    let before = dir_contents(&shards);
    let result = filter(&["s3://data/shards/*.tar"], "s3://data/shards/", &s.server.env());
    assert_eq!(result.status.code(), Some(2), "{}", stderr(&result));
    assert!(stderr(&result).contains("would replace the input"), "{}", stderr(&result));
    assert_eq!(dir_contents(&shards), before);
}

#[test]
fn a_run_stopped_part_way_resumes_to_the_same_objects() {
    let s = store();
    let result =
        filter(&["s3://data/shards/good-{000000..000003}.tar"], "s3://out/run", &s.server.env());
    assert!(result.status.success(), "{}", stderr(&result));
    let written = s.root.path().join("out/run");
    let whole = outputs(&written);
    // What a kill leaves: shard 1 uploaded but its record not; shard 2 with its tar only.
    fs::remove_file(written.join("good-000001.done.json")).unwrap();
    fs::remove_file(written.join("good-000002.done.json")).unwrap();
    fs::remove_file(written.join("good-000002.parquet")).unwrap();
    let result =
        filter(&["s3://data/shards/good-{000000..000003}.tar"], "s3://out/run", &s.server.env());
    assert!(stderr(&result).contains("2 already complete, 2 processed"), "{}", stderr(&result));
    assert_eq!(outputs(&written), whole);
}

#[test]
fn a_missing_object_fails_its_shard_and_the_others_go_on() {
    let s = store();
    let out = tempfile::tempdir().unwrap();
    let inputs = ["s3://data/shards/good-000000.tar", "s3://data/shards/missing.tar"];
    let result = filter(&inputs, &out.path().display().to_string(), &s.server.env());
    assert_eq!(result.status.code(), Some(1), "{}", stderr(&result));
    let message = stderr(&result);
    assert!(
        message.contains("s3://data/shards/missing.tar") && message.contains("does not exist"),
        "{message}"
    );
    assert!(out.path().join("good-000000.done.json").is_file());
}

#[test]
fn wrong_credentials_stop_the_run_naming_the_url_and_not_the_secret() {
    let s = store();
    let env = s.server.env_with_secret("not-the-secret-42");
    let out = tempfile::tempdir().unwrap();
    let result = filter(&["s3://data/shards/good-000000.tar"], "s3://out/run/", &env);
    assert!(!result.status.success());
    let message = stderr(&result);
    assert!(message.contains("access denied") && message.contains("s3://out/run/"), "{message}");
    assert!(!message.contains("not-the-secret-42"), "{message}");
    // Reading with them fails the shard the same way, naming the input.
    let result =
        filter(&["s3://data/shards/good-000000.tar"], &out.path().display().to_string(), &env);
    assert_eq!(result.status.code(), Some(1), "{}", stderr(&result));
    let message = stderr(&result);
    assert!(
        message.contains("access denied") && message.contains("s3://data/shards/good-000000.tar"),
        "{message}"
    );
}

#[test]
fn connections_dropped_mid_shard_are_survived() {
    let s = store();
    // Every shard is 180 KB or more: the first three responses past 50 KB are cut there.
    s.server.cut_responses(3, 50_000);
    let out = tempfile::tempdir().unwrap();
    let result = filter(&["s3://data/shards/"], &out.path().display().to_string(), &s.server.env());
    assert!(result.status.success(), "{}", stderr(&result));
    assert_eq!(s.server.cuts_left(), 0, "three responses were cut");
    assert_eq!(outputs(out.path()), local_outputs());
}

#[test]
fn https_style_inputs_stream_from_a_range_server() {
    let server = RangeServer::start(&fixtures().join("pipeline/shards")).unwrap();
    let urls: Vec<String> = inputs()
        .iter()
        .map(|p| format!("{}/{}", server.base(), p.file_name().unwrap().to_str().unwrap()))
        .collect();
    let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
    let out = tempfile::tempdir().unwrap();
    let result = filter(&urls, &out.path().display().to_string(), &[]);
    assert!(result.status.success(), "{}", stderr(&result));
    assert_eq!(outputs(out.path()), local_outputs());
}

#[test]
fn workers_split_a_run_over_urls_as_over_paths() {
    let s = store();
    for index in ["0", "1"] {
        let env = s.server.env();
        let mut args: Vec<String> = vec!["filter".into(), "s3://data/shards/*.tar".into()];
        args.extend(["--output", "s3://out/split/", "--threshold", "5"].map(String::from));
        args.extend(["--shard-index", index, "--num-shards", "2"].map(String::from));
        args.extend(model_args());
        let result = aesthete_with(&args, &env).output().unwrap();
        assert!(result.status.success(), "worker {index}: {}", stderr(&result));
    }
    assert_eq!(outputs(&s.root.path().join("out/split")), local_outputs());
}

#[test]
fn a_killed_run_resumes_to_the_same_objects() {
    let s = store();
    // 32 shards, so that the run is still going when its first record appears.
    let many = s.root.path().join("data/many");
    fs::create_dir_all(&many).unwrap();
    let locals = tempfile::tempdir().unwrap();
    for i in 0..32 {
        let source = &good_shards()[i % 4];
        fs::copy(source, many.join(format!("s-{i:02}.tar"))).unwrap();
        fs::copy(source, locals.path().join(format!("s-{i:02}.tar"))).unwrap();
    }
    let written = s.root.path().join("out/killed");
    let records = || {
        fs::read_dir(&written).map_or(0, |d| {
            d.filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".done.json"))
                .count()
        })
    };
    let mut args: Vec<String> = vec!["filter".into(), "s3://data/many/".into()];
    args.extend(
        ["--output", "s3://out/killed/", "--threshold", "5", "--batch-size", "2", "--quiet"]
            .map(String::from),
    );
    args.extend(model_args());
    let mut child = aesthete_with(&args, &s.server.env()).spawn().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while records() == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let done_at_kill = records();
    assert!((1..32).contains(&done_at_kill), "killed with {done_at_kill} of 32 shards done");

    let result = aesthete_with(&args, &s.server.env()).output().unwrap();
    assert!(result.status.success(), "{}", stderr(&result));
    let local = tempfile::tempdir().unwrap();
    let inputs: Vec<PathBuf> =
        (0..32).map(|i| locals.path().join(format!("s-{i:02}.tar"))).collect();
    let reference = run_filter(&inputs, local.path(), &["--threshold", "5", "--batch-size", "2"]);
    assert!(reference.status.success(), "{}", stderr(&reference));
    assert_eq!(outputs(&written), outputs(local.path()));
}

#[test]
fn keep_top_into_s3_equals_keep_top_on_local_files() {
    let s = store();
    let mut args: Vec<String> = vec!["filter".into(), "s3://data/shards/*.tar".into()];
    args.extend(["--output", "s3://out/top/", "--keep-top", "0.4"].map(String::from));
    args.extend(model_args());
    let result = aesthete_with(&args, &s.server.env()).output().unwrap();
    assert!(result.status.success(), "{}", stderr(&result));
    let local = tempfile::tempdir().unwrap();
    let reference = run_filter(&inputs(), local.path(), &["--keep-top", "0.4"]);
    assert!(reference.status.success(), "{}", stderr(&reference));
    assert_eq!(outputs(&s.root.path().join("out/top")), outputs(local.path()));
    // Pass one's tables stay in the staging directory: only final outputs are in the store.
    assert!(!s.root.path().join("out/top/.aesthete-keep-top").exists());
}
