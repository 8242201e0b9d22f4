//! Peak resident memory of `aesthete filter` against the number of input shards.
//!
//! The pipeline's queues are bounded, so memory must not grow with the number of shards. This
//! builds the release binary, runs it over 8, 256 and 2048 (`--quick`: 8, 64, 512) copies of
//! the fixture shards (hard links where the file system allows) with the tiny fixture CLIP (the model costs almost nothing, so what is
//! measured is the pipeline: read, decode, batch, write) and reads each process's peak RSS
//! from the kernel when it exits (`wait4`'s `ru_maxrss`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use aesthete_shards::{ReadOptions, ShardReader};
use anyhow::{Context, bail};

/// Fixture shards copied to make the dataset, cycled.
const SOURCE_SHARDS: [&str; 4] =
    ["good-000000.tar", "good-000001.tar", "good-000002.tar", "good-000003.tar"];
/// The model the runs use.
const CLIP_DIR: &str = "fixtures/clip/tiny-vit-224-768";
/// Its head.
const HEAD_FILE: &str = "fixtures/pipeline/head-768.safetensors";

/// One `aesthete filter` run.
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryRun {
    /// Input shards.
    pub shards: usize,
    /// Samples in them.
    pub samples: usize,
    /// Peak resident set size of the process, in bytes.
    pub peak_rss: u64,
    /// Wall time of the run, in seconds.
    pub seconds: f64,
}

/// What was run and what it measured.
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryReport {
    /// The build command.
    pub build: String,
    /// One filter command, with `N` for the shard count.
    pub command: String,
    /// One run per shard count.
    pub runs: Vec<MemoryRun>,
    /// One large object streamed from the loopback S3 server.
    pub stream: Option<StreamRun>,
}

/// `aesthete-store`'s `stream_object` example: one object read to the end.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamRun {
    /// The command.
    pub command: String,
    /// Bytes streamed.
    pub bytes: u64,
    /// Seconds the stream took.
    pub seconds: f64,
    /// Peak resident set size of the process (its S3 server included), in bytes.
    pub peak_rss: u64,
}

/// Builds the CLI and measures its peak RSS over growing numbers of shards.
pub fn measure(
    root: &Path,
    target: &Path,
    cargo: &str,
    quick: bool,
) -> anyhow::Result<MemoryReport> {
    let counts: &[usize] = if quick { &[8, 64, 512] } else { &[8, 256, 2048] };
    let build_args =
        ["build", "--release", "-p", "aesthete", "--bin", "aesthete"].map(String::from);
    let build = super::run_cargo(cargo, root, &build_args)?;
    let binary = target.join("release").join(format!("aesthete{}", std::env::consts::EXE_SUFFIX));

    let work = target.join("bench-memory");
    let shards_dir = work.join("shards");
    let max = counts.iter().copied().max().unwrap_or(0);
    let shards = make_shards(root, &shards_dir, max)?;
    let samples_per_source = SOURCE_SHARDS
        .iter()
        .map(|name| count_samples(&root.join("fixtures/pipeline/shards").join(name)))
        .collect::<anyhow::Result<Vec<_>>>()?;

    let mut runs = Vec::new();
    for &n in counts {
        let list = work.join(format!("shards-{n}.txt"));
        let lines: Vec<String> = shards[..n].iter().map(|p| p.display().to_string()).collect();
        std::fs::write(&list, lines.join("\n") + "\n")
            .with_context(|| format!("cannot write {}", list.display()))?;
        let output = work.join(format!("out-{n}"));
        if output.exists() {
            std::fs::remove_dir_all(&output)
                .with_context(|| format!("cannot remove {}", output.display()))?;
        }
        let mut command = Command::new(&binary);
        command
            .arg("filter")
            .arg(format!("@{}", list.display()))
            .arg("--output")
            .arg(&output)
            .args(["--clip", CLIP_DIR, "--head", HEAD_FILE, "--quiet"])
            .current_dir(root);
        eprintln!("bench: aesthete filter over {n} shards");
        let started = Instant::now();
        let peak_rss = run_for_peak_rss(&mut command)?;
        let seconds = started.elapsed().as_secs_f64();
        let samples = (0..n).map(|i| samples_per_source[i % SOURCE_SHARDS.len()]).sum();
        runs.push(MemoryRun { shards: n, samples, peak_rss, seconds });
    }
    // The binary as the report names it: relative to the workspace, or under the target dir.
    let shown = match binary.strip_prefix(root) {
        Ok(relative) => relative.display().to_string(),
        Err(_) => "$CARGO_TARGET_DIR/release/aesthete".to_owned(),
    };
    let command = format!(
        "{shown} filter @shards-N.txt --output out-N --clip {CLIP_DIR} --head {HEAD_FILE} --quiet"
    );
    let stream = Some(stream_object(root, target, cargo, 1024)?);
    Ok(MemoryReport { build, command, runs, stream })
}

/// Streams a `mib` MiB object from the loopback S3 server (the `stream_object` example) and
/// reads the process's peak RSS.
fn stream_object(root: &Path, target: &Path, cargo: &str, mib: usize) -> anyhow::Result<StreamRun> {
    let build_args = [
        "build",
        "--release",
        "-p",
        "aesthete-store",
        "--features",
        "testing",
        "--example",
        "stream_object",
    ]
    .map(String::from);
    super::run_cargo(cargo, root, &build_args)?;
    let example = target
        .join("release/examples")
        .join(format!("stream_object{}", std::env::consts::EXE_SUFFIX));
    let mut command = Command::new(&example);
    command.arg(mib.to_string()).stdout(std::process::Stdio::piped());
    eprintln!("bench: streaming a {mib} MiB object from the loopback S3 server");
    let (peak_rss, stdout) = run_for_peak_rss_and_output(&mut command)?;
    let line: serde_json::Value = serde_json::from_str(stdout.trim())
        .with_context(|| format!("stream_object printed {stdout:?}"))?;
    Ok(StreamRun {
        command: format!(
            "cargo run --release -p aesthete-store --features testing --example stream_object -- {mib}"
        ),
        bytes: line["bytes"].as_u64().context("stream_object: no bytes")?,
        seconds: line["seconds"].as_f64().context("stream_object: no seconds")?,
        peak_rss,
    })
}

/// `count` copies of the fixture shards under `dir`, named `data-000000.tar` onwards.
fn make_shards(root: &Path, dir: &Path, count: usize) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    (0..count)
        .map(|i| {
            let from =
                root.join("fixtures/pipeline/shards").join(SOURCE_SHARDS[i % SOURCE_SHARDS.len()]);
            let to = dir.join(format!("data-{i:06}.tar"));
            if !to.exists() {
                std::fs::copy(&from, &to).with_context(|| {
                    format!("cannot copy {} to {}", from.display(), to.display())
                })?;
            }
            Ok(to)
        })
        .collect()
}

/// Samples in a shard, as aesthete-shards groups its members.
fn count_samples(shard: &Path) -> anyhow::Result<usize> {
    let reader = ShardReader::open(shard, ReadOptions::default())?;
    let mut samples = 0;
    for sample in reader {
        sample?;
        samples += 1;
    }
    Ok(samples)
}

/// Runs `command` to completion and returns its peak RSS in bytes.
fn run_for_peak_rss(command: &mut Command) -> anyhow::Result<u64> {
    run_for_peak_rss_and_output(command).map(|(peak, _)| peak)
}

/// Runs `command` to completion and returns its peak RSS in bytes and what it wrote to its
/// stdout, when that was piped.
#[cfg(unix)]
fn run_for_peak_rss_and_output(command: &mut Command) -> anyhow::Result<(u64, String)> {
    let mut child = command.spawn().with_context(|| format!("cannot start {command:?}"))?;
    let mut stdout = String::new();
    if let Some(mut out) = child.stdout.take() {
        std::io::Read::read_to_string(&mut out, &mut stdout).context("reading its output")?;
    }
    let pid = child.id() as libc::pid_t;
    let mut status: libc::c_int = 0;
    // SAFETY: `rusage` is plain old data that wait4 fills in; the child is ours and has not
    // been waited for (std never reaps it behind our back: we never call `wait` on it).
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let waited = loop {
        // SAFETY: valid pointers to locals, a pid of our own child.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if r == -1 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        break r;
    };
    if waited != pid {
        bail!("cannot wait for aesthete: {}", std::io::Error::last_os_error());
    }
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        bail!("{command:?} failed (wait status {status}); run it by hand");
    }
    // Linux reports ru_maxrss in KiB (macOS in bytes).
    let scale = if cfg!(target_os = "macos") { 1 } else { 1024 };
    Ok((usage.ru_maxrss as u64 * scale, stdout))
}

#[cfg(not(unix))]
fn run_for_peak_rss_and_output(_command: &mut Command) -> anyhow::Result<(u64, String)> {
    bail!("peak RSS is measured with wait4, which this platform lacks")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_the_samples_of_a_fixture_shard() {
        let root = crate::workspace_root();
        // good-000000.tar: 18 members, an image, a caption and a JSON record per sample.
        let n = count_samples(&root.join("fixtures/pipeline/shards/good-000000.tar")).unwrap();
        assert_eq!(n, 6);
    }

    #[cfg(unix)]
    #[test]
    fn peak_rss_of_a_child_that_allocates() {
        // A child that touches 64 MiB: `dd` with a 64 MiB block size.
        let mut command = Command::new("dd");
        command.args(["if=/dev/zero", "of=/dev/null", "bs=64M", "count=1", "status=none"]);
        let rss = run_for_peak_rss(&mut command).unwrap();
        assert!(rss >= 64 << 20, "peak RSS {rss} bytes");
        assert!(rss < 256 << 20, "peak RSS {rss} bytes");
    }
}
