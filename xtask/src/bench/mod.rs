//! `cargo xtask bench`: run the criterion benches, compare CLIP with PyTorch where torch is
//! installed and with the machine's matrix-multiply ceiling, measure the CLI's peak memory
//! against the number of shards ([`memory`]), and write `BENCHMARKS.md` with the machine,
//! the command and the units.

pub mod memory;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

use anyhow::{Context, bail};
use serde_json::Value;

/// `(name on the command line, package, bench target)` of every criterion bench.
pub const BENCHES: [(&str, &str, &str); 7] = [
    ("shards", "aesthete-shards", "read"),
    ("preprocess", "aesthete-preprocess", "preprocess"),
    ("clip", "aesthete-clip", "vit"),
    ("head", "aesthete-head", "score"),
    ("pipeline", "aesthete-pipeline", "end_to_end"),
    ("rescore", "aesthete-pipeline", "rescore"),
    ("store", "aesthete-store", "read"),
];

/// The name that selects the peak-memory runs of [`memory`].
pub const MEMORY: &str = "memory";

/// Of [`VIT_L14_FLOP_PER_IMAGE`], the linear layers' matrix products (q, k, v and out
/// projections 4·d², MLP 2·d·4d, over 24 layers of 257 tokens): what
/// `products_f32_cpu/vit_l14/BATCH` and `torch-products` time alone, per image.
pub const VIT_L14_PRODUCT_FLOP_PER_IMAGE: f64 = {
    let (layers, d, mlp, tokens) = (24.0, 1024.0, 4096.0, 257.0);
    layers * 2.0 * tokens * (4.0 * d * d + 2.0 * d * mlp)
};

/// Multiply-adds ×2 of one ViT-L/14 forward at 224 pixels: the linear layers' products
/// ([`VIT_L14_PRODUCT_FLOP_PER_IMAGE`]), attention scores and mixing (2·257·d per token, 24
/// layers), and the patch embedding (256 patches × 588 inputs × d). Layer norms, softmax and
/// the projection are left out (under 0.1%).
pub const VIT_L14_FLOP_PER_IMAGE: f64 = {
    let (layers, d, tokens) = (24.0, 1024.0, 257.0);
    VIT_L14_PRODUCT_FLOP_PER_IMAGE + layers * 4.0 * tokens * tokens * d + 2.0 * 256.0 * 588.0 * d
};

/// Of [`VIT_L14_FLOP_PER_IMAGE`], what aesthete-clip's CPU encoder does not compute: the
/// last layer's output projection and MLP for the 256 patch tokens, whose outputs
/// `get_image_features` never reads (it pools the class token).
pub const VIT_L14_FLOP_SKIPPED_PER_IMAGE: f64 = {
    let (d, mlp, patches) = (1024.0, 4096.0, 256.0);
    2.0 * patches * (d * d + 2.0 * d * mlp)
};

/// The PyTorch comparison script, written with the CLIP crate. Contract: run as
/// `python3 SCRIPT --threads N --batches 1,4 --compile --sgemm --bf16 --products
/// --min-seconds S`, it prints one JSON object per line: `{"system", "batch", "images_per_s" |
/// "error"}` for transformers `CLIPVisionModelWithProjection` at the ViT-L/14 shape
/// (`torch-eager`, `torch-compile`, `torch-autocast-bf16`, `torch-bf16-weights`), `{"system",
/// "n", "gflops"}` for the matrix-multiply peaks (`torch-sgemm`, `torch-bf16-gemm`), and
/// `{"system": "torch-products", "batch", "gflops"}` for one forward's f32 products alone.
pub const TORCH_SCRIPT: &str = "fixtures/clip/bench_torch.py";

/// The environment variable the `vit` bench reads its batch sizes from.
pub const BATCHES_ENV: &str = "AESTHETE_BENCH_BATCHES";

/// The ViT-L/14 batch sizes both aesthete-clip and PyTorch measure: `$AESTHETE_BENCH_BATCHES`
/// when set (`AESTHETE_BENCH_BATCHES=1,4,16 cargo xtask bench --quick clip`), else 1 and 4 in
/// a quick run and 1, 4 and 16 in a full one.
pub fn vit_batches(quick: bool) -> String {
    match std::env::var(BATCHES_ENV) {
        Ok(batches) if !batches.trim().is_empty() => batches,
        _ => if quick { "1,4" } else { "1,4,16" }.to_string(),
    }
}

/// What to run.
#[derive(Debug, Clone, Default)]
pub struct BenchOptions {
    /// Short warm-up and measurement times, for a smoke run.
    pub quick: bool,
    /// Names from [`BENCHES`], or [`MEMORY`], to run; all when empty.
    pub only: Vec<String>,
}

/// One measured benchmark.
#[derive(Debug, Clone, PartialEq)]
pub struct Measurement {
    /// `group/function/parameter`, as criterion names it.
    pub id: String,
    /// Mean time per iteration in nanoseconds.
    pub mean_ns: f64,
    /// Elements or bytes per iteration, if the bench declared a throughput.
    pub throughput: Option<(f64, &'static str)>,
}

/// Runs the selected benches and writes `BENCHMARKS.md` under `root`.
pub fn run(root: &Path, opts: &BenchOptions) -> anyhow::Result<()> {
    for name in &opts.only {
        if name != MEMORY && !BENCHES.iter().any(|(n, ..)| n == name) {
            let mut names: Vec<_> = BENCHES.iter().map(|(n, ..)| *n).collect();
            names.push(MEMORY);
            bail!("bench: unknown bench `{name}` (known: {})", names.join(", "));
        }
    }
    let selected = |name: &str| opts.only.is_empty() || opts.only.iter().any(|n| n == name);
    let started = SystemTime::now();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut commands = Vec::new();
    let mut peaks_before = Vec::new();
    for (name, package, bench) in BENCHES {
        if !selected(name) {
            continue;
        }
        let dir = if package == "aesthete" {
            "cli".to_owned()
        } else {
            package.trim_start_matches("aesthete-").to_owned()
        };
        if !root.join("crates").join(&dir).join("benches").join(format!("{bench}.rs")).exists() {
            eprintln!("bench: skipping {name}: crates/{dir}/benches/{bench}.rs does not exist yet");
            continue;
        }
        let mut args = vec!["bench".to_owned(), "-p".into(), package.into()];
        if package == "aesthete-store" {
            // Its bench reads from the loopback S3 server of the `testing` feature.
            args.extend(["--features".to_owned(), "testing".to_owned()]);
        }
        args.extend(["--bench".to_owned(), bench.into(), "--".into()]);
        if opts.quick {
            args.extend(
                ["--warm-up-time", "1", "--measurement-time", "2", "--sample-size", "10"]
                    .map(String::from),
            );
        }
        // Both sides of the PyTorch comparison measure the same batches.
        let batches = vit_batches(opts.quick);
        let env = if name == "clip" { vec![(BATCHES_ENV, batches.as_str())] } else { vec![] };
        if name == "clip" {
            // The matmul peaks just before aesthete's CLIP benches, and again after them
            // with PyTorch's models: the host's speed drifts between the two.
            peaks_before = torch_peaks_before(root)?;
        }
        commands.push(run_cargo_with(&cargo, root, &env, &args)?);
        if name == "preprocess" {
            // The optional SIMD build of libjpeg-turbo, where nasm can build it.
            if command_line("nasm", &["-v"]).is_some() {
                let mut simd = args.clone();
                simd.splice(3..3, ["--features".to_owned(), "simd".to_owned()]);
                commands.push(run_cargo(&cargo, root, &simd)?);
            } else {
                eprintln!("bench: no SIMD build of aesthete-preprocess: nasm is not installed");
            }
        }
    }
    let measurements = collect(&target.join("criterion"), started)?;
    let mut torch = peaks_before;
    if selected("clip") {
        torch.extend(torch_comparison(root, opts.quick)?);
    }
    let memory = if selected(MEMORY) {
        Some(memory::measure(root, &target, &cargo, opts.quick)?)
    } else {
        None
    };
    let text = report(&commands, &measurements, &torch, memory.as_ref());
    let out = root.join("BENCHMARKS.md");
    std::fs::write(&out, text).with_context(|| format!("cannot write {}", out.display()))?;
    eprintln!("bench: wrote {} ({} measurements)", out.display(), measurements.len());
    Ok(())
}

/// Runs `cargo ARGS` in `root`; returns the command line as the report shows it.
pub(crate) fn run_cargo(cargo: &str, root: &Path, args: &[String]) -> anyhow::Result<String> {
    run_cargo_with(cargo, root, &[], args)
}

/// Runs `cargo ARGS` in `root` with the variables `env` set; returns the command line, the
/// variables first, as the report shows it.
fn run_cargo_with(
    cargo: &str,
    root: &Path,
    env: &[(&str, &str)],
    args: &[String],
) -> anyhow::Result<String> {
    let vars: String = env.iter().map(|(k, v)| format!("{k}={v} ")).collect();
    let command = format!("{vars}cargo {}", args.join(" "));
    eprintln!("bench: {command}");
    let status = Command::new(cargo)
        .args(args)
        .envs(env.iter().copied())
        .current_dir(root)
        .status()
        .context("cannot run cargo")?;
    if !status.success() {
        bail!("`{command}` failed ({status})");
    }
    Ok(command)
}

/// Every benchmark under `criterion_dir` whose results were written after `since`.
pub fn collect(criterion_dir: &Path, since: SystemTime) -> anyhow::Result<Vec<Measurement>> {
    let mut found = Vec::new();
    let mut stack = vec![criterion_dir.to_owned()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                if path.file_name().is_some_and(|n| n == "new") {
                    if let Some(m) = read_measurement(&path, since)? {
                        found.push(m);
                    }
                } else {
                    stack.push(path);
                }
            }
        }
    }
    found.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(found)
}

fn read_measurement(new_dir: &Path, since: SystemTime) -> anyhow::Result<Option<Measurement>> {
    let estimates = new_dir.join("estimates.json");
    let Ok(modified) = std::fs::metadata(&estimates).and_then(|m| m.modified()) else {
        return Ok(None);
    };
    if modified < since {
        return Ok(None);
    }
    let read = |p: &Path| -> anyhow::Result<Value> {
        let text =
            std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?;
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", p.display()))
    };
    let est = read(&estimates)?;
    let bench = read(&new_dir.join("benchmark.json"))?;
    let mean_ns = est["mean"]["point_estimate"].as_f64().context("estimates.json without mean")?;
    let id = bench["full_id"].as_str().unwrap_or("?").to_owned();
    let throughput = match &bench["throughput"] {
        Value::Object(t) => t.iter().next().and_then(|(kind, n)| {
            let unit = match kind.as_str() {
                "Bytes" | "BytesDecimal" => "bytes",
                "Elements" => "elements",
                _ => return None,
            };
            n.as_f64().map(|n| (n, unit))
        }),
        _ => None,
    };
    Ok(Some(Measurement { id, mean_ns, throughput }))
}

/// The lines of [`TORCH_SCRIPT`] (fp32 and bf16 images/s of the PyTorch CLIP, and the matmul
/// peaks), when python3 has torch and transformers.
fn torch_comparison(root: &Path, quick: bool) -> anyhow::Result<Vec<Value>> {
    let seconds = if quick { "5" } else { "20" };
    let batches = vit_batches(quick);
    let args = [
        "--batches",
        &batches,
        "--compile",
        "--sgemm",
        "--bf16",
        "--products",
        "--min-seconds",
        seconds,
    ];
    run_torch_script(root, &args)
}

/// The matmul peak lines of [`TORCH_SCRIPT`] alone (`--peaks-only`), each marked
/// `"when": "before"`: measured just before aesthete's CLIP benches.
fn torch_peaks_before(root: &Path) -> anyhow::Result<Vec<Value>> {
    let args = ["--sgemm", "--bf16", "--peaks-only", "--min-seconds", "5"];
    let mut lines = run_torch_script(root, &args)?;
    for line in &mut lines {
        line["when"] = Value::from("before");
    }
    Ok(lines)
}

/// Runs [`TORCH_SCRIPT`] on every core with `args`, and returns its JSON lines (none when
/// python3 lacks torch and transformers, or the script is missing).
fn run_torch_script(root: &Path, args: &[&str]) -> anyhow::Result<Vec<Value>> {
    let script = root.join(TORCH_SCRIPT);
    if !script.exists() {
        eprintln!("bench: no PyTorch comparison: {TORCH_SCRIPT} does not exist yet");
        return Ok(Vec::new());
    }
    let python = crate::fixtures::python();
    let has_torch = Command::new(&python)
        .args(["-c", "import torch, transformers"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_torch {
        eprintln!("bench: no PyTorch comparison: `{python}` cannot import torch and transformers");
        return Ok(Vec::new());
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).to_string();
    let args: Vec<&str> =
        ["--threads", threads.as_str()].into_iter().chain(args.iter().copied()).collect();
    eprintln!("bench: {python} {TORCH_SCRIPT} {}", args.join(" "));
    // torch.compile's cache in a directory of this run's own, removed here even when the
    // script crashes (where its own clean-up at exit never runs).
    let cache =
        std::env::temp_dir().join(format!("aesthete-bench-inductor-{}", std::process::id()));
    let out = Command::new(&python)
        .arg(&script)
        .args(args)
        .current_dir(root)
        .env("TORCHINDUCTOR_CACHE_DIR", &cache)
        .output();
    let _ = std::fs::remove_dir_all(&cache);
    let out = out.with_context(|| format!("cannot run {TORCH_SCRIPT}"))?;
    // Any failure is kept rather than fatal, a broken script's (an argparse error: nothing
    // printed) as well as a crash's: the report then says why it stopped, and aesthete's own
    // benches, which ran first, are not thrown away.
    let stopped = (!out.status.success()).then(|| {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("");
        format!("{}: {}", out.status, last.trim())
    });
    if let Some(why) = &stopped {
        eprintln!("bench: {TORCH_SCRIPT} stopped early ({why}); keeping what it printed");
    }
    script_lines(&String::from_utf8_lossy(&out.stdout), stopped)
}

/// The JSON lines of [`TORCH_SCRIPT`]'s output: `{"system", "batch", "images_per_s" |
/// "error", "threads"}`, `{"system": "torch-sgemm" | "torch-bf16-gemm", "n", "gflops"}` and
/// `{"system": "torch-products", "batch", "gflops"}`. Where the script `stopped` early (a
/// crash inside PyTorch: a stale torch.compile cache once ended it in glibc's "free():
/// invalid pointer"), the lines it printed are kept, and one more says why it stopped
/// ([`stopped_early`]), so that neither they nor aesthete's benches are lost.
fn script_lines(stdout: &str, stopped: Option<String>) -> anyhow::Result<Vec<Value>> {
    let mut lines = stdout
        .lines()
        .filter(|l| l.trim_start().starts_with('{'))
        .map(|l| {
            serde_json::from_str(l).with_context(|| format!("{TORCH_SCRIPT}: `{l}` is not JSON"))
        })
        .collect::<anyhow::Result<Vec<Value>>>()?;
    if let Some(why) = stopped {
        let why = format!("{why}, after {} lines", lines.len());
        lines.push(serde_json::json!({ "system": TORCH_SCRIPT, "stopped": why }));
    }
    Ok(lines)
}

/// A line [`run_torch_script`] adds when the script stopped early, saying why.
fn stopped_early(t: &Value) -> Option<&str> {
    t["stopped"].as_str()
}

fn report(
    commands: &[String],
    measurements: &[Measurement],
    torch: &[Value],
    memory: Option<&memory::MemoryReport>,
) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Benchmarks\n\nGenerated by `cargo xtask bench`; do not edit by hand.\n");
    let _ = writeln!(s, "- Date: {}", utc_date(SystemTime::now()));
    let _ = writeln!(s, "- Machine: {}", cpu_description());
    let _ = writeln!(s, "- CPU bf16 products: {}", bf16_route());
    let _ = writeln!(
        s,
        "- Rust: {}",
        command_line("rustc", &["-V"]).unwrap_or_else(|| "unknown".into())
    );
    for c in commands {
        let _ = writeln!(s, "- Command: `{c}`");
    }
    let _ = writeln!(
        s,
        "\nTime is criterion's mean per iteration; throughput divides the iteration's elements or bytes by it.\n"
    );
    let _ = writeln!(s, "| benchmark | mean time | throughput |\n|---|---:|---:|");
    for m in measurements {
        let throughput = m
            .throughput
            .map_or_else(|| "—".to_owned(), |(n, unit)| human_rate(n / (m.mean_ns * 1e-9), unit));
        let _ = writeln!(s, "| `{}` | {} | {throughput} |", m.id, human_time(m.mean_ns));
    }
    // `group/function/batch` -> images/s, for the comparisons below.
    let find = |group: &str, function: &str, batch: &str| {
        rate_of(measurements, &format!("{group}/{function}/{batch}"))
    };
    let pipelines: Vec<&Measurement> = measurements
        .iter()
        .filter(|m| m.id.starts_with("pipeline_") && m.id.contains("/end_to_end/"))
        .collect();
    if !pipelines.is_empty() {
        let _ = writeln!(s, "\n## End to end against the model alone\n");
        let _ = writeln!(
            s,
            "Same images, batch size and dtype; target: end to end ≥ 0.95 × model only.\n"
        );
        let _ = writeln!(s, "| model | end to end | model only | ratio |\n|---|---:|---:|---:|");
        for m in pipelines {
            let mut parts = m.id.split('/');
            let (group, _, batch) =
                (parts.next().unwrap_or(""), parts.next(), parts.next().unwrap_or(""));
            if let (Some(e2e), Some(model)) = (elements_per_s(m), find(group, "model_only", batch))
            {
                let _ = writeln!(
                    s,
                    "| `{group}` batch {batch} | {e2e:.2} images/s | {model:.2} images/s | {:.3} |",
                    e2e / model
                );
            }
        }
    }
    feeding_section(&mut s, measurements);
    let rescores: Vec<&Measurement> =
        measurements.iter().filter(|m| m.id.starts_with("rescore/")).collect();
    if !rescores.is_empty() {
        let _ = writeln!(s, "\n## Rescore from stored embeddings\n");
        let _ = writeln!(
            s,
            "`aesthete rescore` on aesthete's own Parquet tables (768 float32 values a row), read, normalized, scored and written; target: ≥ 1 million embeddings/s on 2 cores.\n"
        );
        let _ = writeln!(s, "| benchmark | embeddings/s |\n|---|---:|");
        for m in rescores {
            if let Some(rate) = elements_per_s(m) {
                let _ = writeln!(s, "| `{}` | {} |", m.id, human_rate(rate, "embeddings"));
            }
        }
    }
    let stopped: Vec<&str> = torch.iter().filter_map(stopped_early).collect();
    let models: Vec<&Value> = torch
        .iter()
        .filter(|t| !is_peak(t) && !is_products(t) && stopped_early(t).is_none())
        .collect();
    if !models.is_empty() || !stopped.is_empty() {
        let _ = writeln!(s, "\n## CLIP ViT-L/14 against PyTorch\n");
        for why in &stopped {
            let _ = writeln!(
                s,
                "**`{TORCH_SCRIPT}` stopped early** ({why}): the PyTorch figures in this file are the lines it printed before.\n"
            );
        }
    }
    if !models.is_empty() {
        let _ = writeln!(
            s,
            "transformers `CLIPVisionModelWithProjection`, random weights of the ViT-L/14 shape, same thread count, measured in the same run (`{TORCH_SCRIPT}`): fp32 eager (`torch-eager`) and `torch.compile` (`torch-compile`), and two bf16 modes, `torch.autocast(\"cpu\", torch.bfloat16)` over the fp32 model (`torch-autocast-bf16`) and the model with bf16 weights (`torch-bf16-weights`). Each row is compared with aesthete-clip at the same precision: fp32 with `{}`, bf16 with `{}`.\n",
            vit_group("f32"),
            vit_group("bf16"),
        );
        let _ = writeln!(
            s,
            "| system | batch | images/s | aesthete-clip precision | aesthete-clip images/s | ratio |\n|---|---:|---:|---|---:|---:|"
        );
        for t in models {
            let batch = t["batch"].as_u64().map_or_else(|| "?".to_owned(), |b| b.to_string());
            let system = t["system"].as_str().unwrap_or("?");
            let precision = torch_precision(system);
            let Some(theirs) = t["images_per_s"].as_f64() else {
                let error = t["error"].as_str().unwrap_or("no result");
                let _ = writeln!(s, "| {system} | {batch} | failed: {error} | {precision} | | |");
                continue;
            };
            match find(&vit_group(precision), "forward", &batch) {
                Some(ours) => {
                    let _ = writeln!(
                        s,
                        "| {system} | {batch} | {theirs:.3} | {precision} | {ours:.3} | {:.2}× |",
                        ours / theirs
                    );
                }
                None => {
                    let missing = not_measured(measurements, precision);
                    let _ = writeln!(
                        s,
                        "| {system} | {batch} | {theirs:.3} | {precision} | {missing} | |"
                    );
                }
            }
        }
    }
    let bf16_on_fma = aesthete_clip::cpu_bf16_kernel() == Ok(aesthete_clip::CPU_BF16_ON_FMA);
    ceiling_section(&mut s, measurements, torch, bf16_on_fma);
    store_section(&mut s, measurements, memory.and_then(|m| m.stream.as_ref()));
    if let Some(memory) = memory {
        memory_section(&mut s, memory);
    }
    s
}

/// Shard reads from the loopback S3 server against local files, and the peak memory of
/// streaming a large object.
fn store_section(s: &mut String, measurements: &[Measurement], stream: Option<&memory::StreamRun>) {
    let local = rate_of_bytes(measurements, "store_read/local/64MiB");
    let s3 = rate_of_bytes(measurements, "store_read/s3_loopback/64MiB");
    if local.is_none() && s3.is_none() && stream.is_none() {
        return;
    }
    let _ = writeln!(s, "\n## Reading shards from object storage\n");
    if let (Some(local), Some(s3)) = (local, s3) {
        let _ = writeln!(
            s,
            "`aesthete-store` streaming a 64 MiB shard in 1 MiB reads (`store_read`): from a local file, and from the S3 server the tests use (s3s over a directory, signed requests, in the same process, so the 2 cores serve and read at once; the server hashes each object it sends).\n"
        );
        let _ = writeln!(s, "| source | throughput | against local |\n|---|---:|---:|");
        let _ = writeln!(s, "| local file | {} | 1.00 |", human_rate(local, "bytes"));
        let _ = writeln!(s, "| S3 on loopback | {} | {:.3} |", human_rate(s3, "bytes"), s3 / local);
    }
    if let Some(run) = stream {
        let _ = writeln!(
            s,
            "\nStreaming one {} MiB object from that server to the end (`{}`): peak RSS {:.1} MiB for the whole process, server included; {} (bounded read-ahead: memory does not grow with the object).",
            run.bytes >> 20,
            run.command,
            run.peak_rss as f64 / f64::from(1 << 20),
            human_rate(run.bytes as f64 / run.seconds, "bytes"),
        );
    }
}

fn rate_of_bytes(measurements: &[Measurement], id: &str) -> Option<f64> {
    let m = measurements.iter().find(|m| m.id == id)?;
    m.throughput.filter(|t| t.1 == "bytes").map(|(n, _)| n / (m.mean_ns * 1e-9))
}

/// The pipeline with a model that costs almost nothing against what the cores could
/// preprocess: what a GPU, for which the encoder is no longer the bottleneck, would be fed.
fn feeding_section(s: &mut String, measurements: &[Measurement]) {
    let group = "pipeline_tiny_f32_cpu";
    // Images/s of the group's benchmark `name`, whatever its batch size.
    let rate = |name: &str| {
        let prefix = format!("{group}/{name}/");
        measurements.iter().find(|m| m.id.starts_with(&prefix)).and_then(elements_per_s)
    };
    let (Some(one_core), Some(pipeline)) = (rate("preprocess_one_core"), rate("end_to_end")) else {
        return;
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let _ = writeln!(s, "\n## Feeding the model\n");
    let _ = writeln!(
        s,
        "The pipeline with the tiny fixture CLIP (`{group}/end_to_end`, the model costs almost nothing) against the same images decoded and preprocessed on one thread (`{group}/preprocess_one_core`) times the {cores} cores; target ≥ 0.9.\n"
    );
    let _ = writeln!(
        s,
        "| pipeline | one core | cores × one core | ratio |\n|---:|---:|---:|---:|\n| {pipeline:.1} images/s | {one_core:.1} images/s | {:.1} images/s | {:.2} |",
        one_core * cores as f64,
        pipeline / (one_core * cores as f64)
    );
    // Whether the cores scale at all: the same preprocessing on every core at once.
    if let Some(all) = rate("preprocess_all_cores") {
        let _ = writeln!(
            s,
            "\nThe same preprocessing on all {cores} cores at once, each with its own preprocessor (`{group}/preprocess_all_cores`): {all:.1} images/s, {:.2} × one core; the pipeline reaches {:.2} of it.",
            all / one_core,
            pipeline / all
        );
    }
    // The tiny model is not free on a CPU: its own time, on the one thread a model this
    // small runs on, is work the cores do besides preprocessing (on a GPU they would not).
    if let Some(model) = rate("model_only") {
        let with_model = cores as f64 / (1.0 / one_core + 1.0 / model);
        let _ = writeln!(
            s,
            "\nThe tiny model itself runs at {model:.1} images/s on one thread (`{group}/model_only`): with its time added to one core's preprocessing, the cores could do {with_model:.1} images/s, and the pipeline reaches {:.2} of that (what it loses to its own stages, not to the model).",
            pipeline / with_model
        );
    }
}

/// Images (elements) per second of one measurement, if it declared elements.
fn elements_per_s(m: &Measurement) -> Option<f64> {
    m.throughput.filter(|t| t.1 == "elements").map(|(n, _)| n / (m.mean_ns * 1e-9))
}

/// Images (elements) per second of the measurement named `id`.
fn rate_of(measurements: &[Measurement], id: &str) -> Option<f64> {
    measurements.iter().find(|m| m.id == id).and_then(elements_per_s)
}

/// The criterion group of the aesthete-clip ViT-L/14 forward at `precision` (`f32`, `bf16`).
fn vit_group(precision: &str) -> String {
    format!("clip_vit_l14_{precision}_cpu")
}

/// The precision a [`TORCH_SCRIPT`] system runs in: the bf16 ones say so in their name.
fn torch_precision(system: &str) -> &'static str {
    if system.contains("bf16") { "bf16" } else { "f32" }
}

/// Whether a [`TORCH_SCRIPT`] line is a matrix-multiply peak (`torch-sgemm`,
/// `torch-bf16-gemm`) rather than a model measurement.
fn is_peak(t: &Value) -> bool {
    t["system"].as_str().is_some_and(|system| system.ends_with("gemm"))
}

/// Whether a [`TORCH_SCRIPT`] line times one forward's f32 products alone (`torch-products`).
fn is_products(t: &Value) -> bool {
    t["system"] == "torch-products"
}

/// What a table says where aesthete-clip has no measurement at `precision`: the `vit` bench
/// runs bf16 only on CPUs with a bf16 kernel, so f32 without bf16 means there is none.
fn not_measured(measurements: &[Measurement], precision: &str) -> &'static str {
    let has = |precision: &str| {
        let prefix = format!("{}/", vit_group(precision));
        measurements.iter().any(|m| m.id.starts_with(&prefix))
    };
    if precision == "bf16" && has("f32") && !has("bf16") {
        "not measured (no bf16 kernel on this CPU)"
    } else {
        "not measured"
    }
}

/// ViT-L/14 images/s against what the machine's f32 and bf16 matmul peaks allow, with the
/// targets for each precision; bf16 also against the f32 ceiling where its products ran on
/// f32 FMAs (`bf16_on_fma`).
fn ceiling_section(
    s: &mut String,
    measurements: &[Measurement],
    torch: &[Value],
    bf16_on_fma: bool,
) {
    let gemm = rate_of(measurements, "sgemm_f32_cpu/gemm/2048");
    let torch_sgemm = TorchPeak::of(torch, "torch-sgemm");
    let f32_peak = gemm.into_iter().chain(torch_sgemm.as_ref().map(|p| p.mean)).reduce(f64::max);
    let bf16 = TorchPeak::of(torch, "torch-bf16-gemm");
    if f32_peak.is_none() && bf16.is_none() {
        return;
    }
    let gflops = |f: Option<f64>| {
        f.map_or_else(|| "not measured".to_owned(), |f| format!("{:.1} GFLOP/s", f / 1e9))
    };
    let torch_gflops = |p: &Option<TorchPeak>| match p {
        Some(p) => p.describe(),
        None => gflops(None),
    };
    let _ = writeln!(s, "\n## CLIP ViT-L/14 against the machine's ceiling\n");
    let _ = writeln!(
        s,
        "A ceiling is a matrix-multiply peak on square 2048 matrices, all cores, divided by the {:.1} GFLOP of one ViT-L/14 image. aesthete-clip leaves {:.1} GFLOP of them out ({:.1}%: the last layer's output projection and MLP for the patch tokens, which the pooled embedding never reads); the fractions below count images, so that work left out counts in them.",
        VIT_L14_FLOP_PER_IMAGE / 1e9,
        VIT_L14_FLOP_SKIPPED_PER_IMAGE / 1e9,
        100.0 * VIT_L14_FLOP_SKIPPED_PER_IMAGE / VIT_L14_FLOP_PER_IMAGE,
    );
    if let Some(peak) = f32_peak {
        let ceiling = peak / VIT_L14_FLOP_PER_IMAGE;
        let _ = writeln!(s, "\n### f32\n");
        let _ = writeln!(
            s,
            "f32 peak: gemm crate (`sgemm_f32_cpu/gemm/2048`) {}, PyTorch's BLAS (`torch-sgemm`) {}; the better allows {ceiling:.3} images/s.\n",
            gflops(gemm),
            torch_gflops(&torch_sgemm),
        );
        let _ = writeln!(
            s,
            "Target: aesthete-clip f32 ≥ 1.0 × PyTorch fp32 eager (`torch-eager`) and ≥ 0.85 × the f32 ceiling.\n"
        );
        ceiling_table(s, measurements, "f32", "f32", ceiling);
        products_table(s, measurements, torch, torch_sgemm.as_ref().map(|p| p.mean));
    }
    if let Some(peak) = &bf16 {
        let ceiling = peak.mean / VIT_L14_FLOP_PER_IMAGE;
        let _ = writeln!(s, "\n### bf16\n");
        let _ = writeln!(
            s,
            "bf16 peak: PyTorch's bf16 matrix multiply (`torch-bf16-gemm`) {}, which allows {ceiling:.3} images/s.\n",
            peak.describe(),
        );
        let _ = writeln!(
            s,
            "Target: aesthete-clip bf16 ≥ 1.0 × the faster of `torch-autocast-bf16` and `torch-bf16-weights`, and ≥ 0.5 × the bf16 ceiling.\n"
        );
        ceiling_table(s, measurements, "bf16", "bf16", ceiling);
    }
    if let (true, Some(peak)) = (bf16_on_fma, f32_peak) {
        let _ = writeln!(
            s,
            "\nOn this CPU the bf16 products ran on f32 FMAs (see \"CPU bf16 products\" above), which PyTorch's bf16 matrix multiply does not bound: the f32 ceiling does.\n"
        );
        ceiling_table(s, measurements, "bf16", "f32", peak / VIT_L14_FLOP_PER_IMAGE);
    }
}

/// One of PyTorch's matmul peaks (FLOP/s): measured once, or just before aesthete's CLIP
/// benches and again after them, when the ceiling is their mean (the host's speed drifts,
/// by up to a third within the hour on a shared Xeon; the mean is the linear estimate for
/// the time between, when aesthete's benches ran).
struct TorchPeak {
    mean: f64,
    before: Option<f64>,
    after: Option<f64>,
}

impl TorchPeak {
    fn of(torch: &[Value], system: &str) -> Option<TorchPeak> {
        let peak = |before: bool| {
            torch
                .iter()
                .filter(|t| t["system"] == system && (t["when"] == "before") == before)
                .find_map(|t| t["gflops"].as_f64())
                .map(|g| g * 1e9)
        };
        let (before, after) = (peak(true), peak(false));
        let mean = match (before, after) {
            (Some(b), Some(a)) => (a + b) / 2.0,
            (b, a) => a.or(b)?,
        };
        Some(TorchPeak { mean, before, after })
    }

    fn describe(&self) -> String {
        match (self.before, self.after) {
            (Some(b), Some(a)) => format!(
                "{:.1} GFLOP/s (the mean of {:.1} just before aesthete's benches and {:.1} after them)",
                self.mean / 1e9,
                b / 1e9,
                a / 1e9
            ),
            _ => format!("{:.1} GFLOP/s", self.mean / 1e9),
        }
    }
}

/// aesthete-clip images/s at `precision` against `ceiling`, batch by batch.
/// aesthete-clip's `precision` forward against the `ceiling` (images/s) of the
/// `ceiling_precision` matmul peak, batch by batch.
fn ceiling_table(
    s: &mut String,
    measurements: &[Measurement],
    precision: &str,
    ceiling_precision: &str,
    ceiling: f64,
) {
    let rows: Vec<(&str, f64)> = ["1", "4", "8", "16"]
        .into_iter()
        .filter_map(|batch| {
            rate_of(measurements, &format!("{}/forward/{batch}", vit_group(precision)))
                .map(|ours| (batch, ours))
        })
        .collect();
    if rows.is_empty() {
        let _ =
            writeln!(s, "aesthete-clip {precision}: {}.", not_measured(measurements, precision));
        return;
    }
    let _ = writeln!(
        s,
        "| batch | aesthete-clip {precision} images/s | {ceiling_precision} ceiling images/s | fraction of ceiling |\n|---:|---:|---:|---:|"
    );
    for (batch, ours) in rows {
        let _ = writeln!(s, "| {batch} | {ours:.3} | {ceiling:.3} | {:.2} |", ours / ceiling);
    }
}

/// One f32 forward's matrix products alone, batch by batch: aesthete-clip's against
/// PyTorch's at the same shapes, PyTorch's against its own 2048² `torch_peak` (FLOP/s), and
/// the share of aesthete-clip's forward time its products take at that rate: where the f32
/// ceiling goes.
fn products_table(
    s: &mut String,
    measurements: &[Measurement],
    torch: &[Value],
    torch_peak: Option<f64>,
) {
    let theirs = |batch: &str| {
        torch
            .iter()
            .filter(|t| is_products(t) && t["batch"].as_u64() == batch.parse().ok())
            .find_map(|t| t["gflops"].as_f64())
            .map(|g| g * 1e9)
    };
    let ours = |batch: &str| rate_of(measurements, &format!("products_f32_cpu/vit_l14/{batch}"));
    let batches: Vec<&str> = ["1", "4", "8", "16"]
        .into_iter()
        .filter(|batch| ours(batch).is_some() || theirs(batch).is_some())
        .collect();
    if batches.is_empty() {
        return;
    }
    // What the encoder computes of them: the skipped patch rows of the last layer are products.
    let products_per_image = VIT_L14_PRODUCT_FLOP_PER_IMAGE - VIT_L14_FLOP_SKIPPED_PER_IMAGE;
    let _ = writeln!(s, "\n#### The products alone\n");
    let _ = writeln!(
        s,
        "One forward pass's f32 matrix products alone ({:.1} GFLOP an image: each layer's four, at batch · 257 rows, over every layer's own weights): aesthete-clip's (`products_f32_cpu/vit_l14/BATCH`, the encoder's own `cpu_matmul_f32`) against PyTorch's `F.linear` (`torch-products`), PyTorch's against its own 2048² peak (`torch-sgemm` above), and the share of aesthete-clip's f32 forward time that its products ({:.1} GFLOP an image) take at aesthete-clip's rate; the rest is attention, norms, activations and adds. That share divides two figures timed minutes apart, so the host's drift moves it by a tenth or more (0.74 once at batch 1, where `perf` gave the products 90% of the samples).\n",
        VIT_L14_PRODUCT_FLOP_PER_IMAGE / 1e9,
        products_per_image / 1e9,
    );
    let _ = writeln!(
        s,
        "| batch | aesthete-clip GFLOP/s | PyTorch GFLOP/s | aesthete-clip ÷ PyTorch | PyTorch ÷ its 2048² peak | products' share of the forward |\n|---:|---:|---:|---:|---:|---:|"
    );
    let gflops = |f: Option<f64>| f.map_or_else(|| "—".to_owned(), |f| format!("{:.1}", f / 1e9));
    let ratio = |r: Option<f64>| r.map_or_else(|| "—".to_owned(), |r| format!("{r:.2}"));
    for batch in batches {
        let (ours, theirs) = (ours(batch), theirs(batch));
        let forward = rate_of(measurements, &format!("{}/forward/{batch}", vit_group("f32")));
        let share = ours.zip(forward).map(|(ours, forward)| products_per_image / ours * forward);
        let _ = writeln!(
            s,
            "| {batch} | {} | {} | {} | {} | {} |",
            gflops(ours),
            gflops(theirs),
            ratio(ours.zip(theirs).map(|(o, t)| o / t)),
            ratio(theirs.zip(torch_peak).map(|(t, peak)| t / peak)),
            ratio(share),
        );
    }
}

/// Peak RSS of `aesthete filter` over growing numbers of shards.
fn memory_section(s: &mut String, memory: &memory::MemoryReport) {
    let _ = writeln!(s, "\n## Peak memory against the number of shards\n");
    let _ = writeln!(
        s,
        "`{}`, then `{}` (tiny fixture CLIP, default batch 32 and queues; peak RSS from the kernel when the process exits). Target: flat in the number of shards.\n",
        memory.build, memory.command
    );
    let _ = writeln!(s, "| shards | samples | peak RSS | wall time |\n|---:|---:|---:|---:|");
    for run in &memory.runs {
        let _ = writeln!(
            s,
            "| {} | {} | {:.1} MiB | {:.1} s |",
            run.shards,
            run.samples,
            run.peak_rss as f64 / f64::from(1 << 20),
            run.seconds
        );
    }
}

/// A rate with three significant digits, bytes in decimal multiples.
fn human_rate(per_second: f64, unit: &str) -> String {
    let (value, unit) = match unit {
        "bytes" if per_second >= 1e9 => (per_second / 1e9, "GB".to_owned()),
        "bytes" if per_second >= 1e6 => (per_second / 1e6, "MB".to_owned()),
        "bytes" if per_second >= 1e3 => (per_second / 1e3, "kB".to_owned()),
        unit if per_second >= 1e9 => (per_second / 1e9, format!("G{unit}")),
        unit if per_second >= 1e6 => (per_second / 1e6, format!("M{unit}")),
        unit => (per_second, unit.to_owned()),
    };
    let decimals = match value.abs() {
        v if v >= 100.0 => 0,
        v if v >= 10.0 => 1,
        v if v >= 1.0 => 2,
        _ => 3,
    };
    format!("{value:.decimals$} {unit}/s")
}

fn human_time(ns: f64) -> String {
    match ns {
        ns if ns >= 1e9 => format!("{:.3} s", ns / 1e9),
        ns if ns >= 1e6 => format!("{:.3} ms", ns / 1e6),
        ns if ns >= 1e3 => format!("{:.3} µs", ns / 1e3),
        ns => format!("{ns:.1} ns"),
    }
}

/// `CPU model (N cores)` from /proc/cpuinfo, where it exists.
pub fn cpu_description() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        info.lines()
            .find(|l| l.split(':').next().is_some_and(|k| k.trim() == name))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_owned())
    };
    let model = field("model name").unwrap_or_else(|| std::env::consts::ARCH.to_owned());
    let family = match (field("cpu family"), field("model")) {
        (Some(f), Some(m)) => format!(", family {f} model {m}"),
        _ => String::new(),
    };
    format!(
        "{model}{family} ({cores} cores available); instruction sets: {}",
        instruction_sets(&field("flags").unwrap_or_default())
    )
}

/// How aesthete-clip runs bf16 products on this CPU, decided here by the rule the bench binary
/// applies (a `vdpbf16ps` rate timed within a hair of 1 could fall the other side there):
/// the route's name, with the bf16 instruction's rate against the f32 FMA where it was timed.
fn bf16_route() -> String {
    match (aesthete_clip::cpu_bf16_kernel(), aesthete_clip::cpu_bf16_rate_against_f32()) {
        (Ok(route), Ok(Some(rate))) => {
            format!(
                "{route} (AVX512-BF16's `vdpbf16ps` timed at {rate:.2} × the f32 FMA's multiply-adds a second)"
            )
        }
        (Ok(route), _) => route.to_owned(),
        (Err(why), _) => format!("none ({why})"),
    }
}

/// Which of the instruction sets the kernels dispatch on this CPU has, from its `/proc/cpuinfo`
/// flags: `AVX2+FMA yes, AVX-512F no, ...`.
pub fn instruction_sets(flags: &str) -> String {
    let has = |flag: &str| flags.split_whitespace().any(|f| f == flag);
    [
        ("AVX2+FMA", has("avx2") && has("fma")),
        ("AVX-512F", has("avx512f")),
        ("AVX512-BF16", has("avx512_bf16")),
        ("AMX-BF16", has("amx_bf16") && has("amx_tile")),
    ]
    .iter()
    .map(|(name, yes)| format!("{name} {}", if *yes { "yes" } else { "no" }))
    .collect::<Vec<_>>()
    .join(", ")
}

fn command_line(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// `YYYY-MM-DD` in UTC (Howard Hinnant's civil-from-days).
fn utc_date(t: SystemTime) -> String {
    let days = t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs() / 86_400) as i64;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Criterion's on-disk layout, as `cargo bench` leaves it, read back into the report.
    #[test]
    fn reads_criterion_output_into_a_report() {
        let dir = tempfile::tempdir().unwrap();
        let new = dir.path().join("score/linear/4096/new");
        std::fs::create_dir_all(&new).unwrap();
        std::fs::write(
            new.join("estimates.json"),
            r#"{"mean":{"point_estimate":2048000.0},"median":{"point_estimate":2000000.0}}"#,
        )
        .unwrap();
        std::fs::write(
            new.join("benchmark.json"),
            r#"{"group_id":"score","function_id":"linear","value_str":"4096","throughput":{"Elements":4096},"full_id":"score/linear/4096","directory_name":"score/linear/4096"}"#,
        )
        .unwrap();
        let since = SystemTime::now() - std::time::Duration::from_secs(60);
        let found = collect(dir.path(), since).unwrap();
        assert_eq!(
            found,
            [Measurement {
                id: "score/linear/4096".into(),
                mean_ns: 2_048_000.0,
                throughput: Some((4096.0, "elements"))
            }]
        );
        let text =
            report(&["cargo bench -p aesthete-head --bench score --".into()], &found, &[], None);
        assert!(text.contains("| `score/linear/4096` | 2.048 ms | 2.00 Melements/s |"), "{text}");
        assert!(text.contains("- Command: `cargo bench -p aesthete-head --bench score --`"));

        // Results older than the run are left out.
        assert!(
            collect(dir.path(), SystemTime::now() + std::time::Duration::from_secs(60))
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn dates() {
        assert_eq!(utc_date(SystemTime::UNIX_EPOCH), "1970-01-01");
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_709_208_000); // 2024-02-29 12:00
        assert_eq!(utc_date(t), "2024-02-29");
    }

    /// The feeding section holds the tiny-model pipeline to cores × one core's preprocessing.
    #[test]
    fn report_holds_the_pipeline_to_the_cores_preprocessing_rate() {
        let m = measured;
        let found = [
            m("pipeline_tiny_f32_cpu/preprocess_one_core/8", 0.4e9, 64.0),
            m("pipeline_tiny_f32_cpu/end_to_end/8", 0.1e9, 64.0),
        ];
        let text = report(&[], &found, &[], None);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let want = format!(
            "| 640.0 images/s | 160.0 images/s | {:.1} images/s | {:.2} |",
            160.0 * cores,
            640.0 / (160.0 * cores)
        );
        assert!(text.contains("## Feeding the model") && text.contains(&want), "{text}");
        assert!(!text.contains("The tiny model itself"), "{text}");
        // With the model alone, what the cores could do with its time added.
        let with_model =
            [&found[..], &[m("pipeline_tiny_f32_cpu/model_only/8", 0.05e9, 64.0)]].concat();
        let text = report(&[], &with_model, &[], None);
        let could = cores / (1.0 / 160.0 + 1.0 / 1280.0);
        let want =
            format!("could do {could:.1} images/s, and the pipeline reaches {:.2}", 640.0 / could);
        assert!(
            text.contains("runs at 1280.0 images/s on one thread") && text.contains(&want),
            "{text}"
        );
        // With every core preprocessing at once, how far the cores scale.
        let all_cores =
            [&found[..], &[m("pipeline_tiny_f32_cpu/preprocess_all_cores/8", 0.25e9, 64.0)]]
                .concat();
        let text = report(&[], &all_cores, &[], None);
        assert!(
            text.contains(": 256.0 images/s, 1.60 × one core; the pipeline reaches 2.50 of it."),
            "{text}"
        );
        // Without the one-core figure there is no section.
        assert!(!report(&[], &found[1..], &[], None).contains("Feeding"));
    }

    /// The comparison sections pair our measurements with PyTorch's and with the model alone.
    #[test]
    fn report_compares_with_torch_and_the_model_alone() {
        let m = measured;
        let found = [
            m("clip_vit_l14_f32_cpu/forward/4", 4e9, 4.0),
            m("pipeline_vit_l14_f32_cpu/end_to_end/8", 8.4e9, 8.0),
            m("pipeline_vit_l14_f32_cpu/model_only/8", 8e9, 8.0),
        ];
        let torch: Vec<Value> = vec![
            serde_json::json!({"system": "torch-eager", "batch": 4, "images_per_s": 0.5, "threads": 2}),
            serde_json::json!({"system": "torch-compile", "batch": 1, "error": "no compiler"}),
        ];
        let text = report(&[], &found, &torch, None);
        assert!(text.contains("| torch-eager | 4 | 0.500 | f32 | 1.000 | 2.00× |"), "{text}");
        assert!(text.contains("| torch-compile | 1 | failed: no compiler | f32 | | |"), "{text}");
        assert!(
            text.contains(
                "| `pipeline_vit_l14_f32_cpu` batch 8 | 0.95 images/s | 1.00 images/s | 0.952 |"
            ),
            "{text}"
        );
    }

    /// The issue's figure: 162 GFLOP per ViT-L/14 image.
    #[test]
    fn vit_l14_costs_162_gflop() {
        assert!((VIT_L14_FLOP_PER_IMAGE / 1e9 - 162.0).abs() < 0.5, "{VIT_L14_FLOP_PER_IMAGE}");
    }

    /// The ceiling takes the better of the two matmul peaks; memory runs become a table.
    #[test]
    fn report_states_the_ceiling_and_the_memory_runs() {
        let m = measured;
        // 81 GFLOP/s from gemm, 162 GFLOP/s from torch: ceiling 1 image/s.
        let found = [
            m("clip_vit_l14_f32_cpu/forward/4", 5e9, 4.0),
            m("sgemm_f32_cpu/gemm/2048", 1e9, VIT_L14_FLOP_PER_IMAGE / 2.0),
        ];
        let torch = vec![serde_json::json!({
            "system": "torch-sgemm", "n": 2048, "gflops": VIT_L14_FLOP_PER_IMAGE / 1e9
        })];
        let memory = memory::MemoryReport {
            build: "cargo build --release -p aesthete --bin aesthete".into(),
            command: "aesthete filter @shards-N.txt".into(),
            runs: vec![memory::MemoryRun {
                shards: 4,
                samples: 24,
                peak_rss: 100 << 20,
                seconds: 1.25,
            }],
            stream: None,
        };
        let text = report(&[], &found, &torch, Some(&memory));
        assert!(text.contains("| 4 | 0.800 | 1.000 | 0.80 |"), "{text}");
        assert!(!text.contains("| torch-sgemm |"), "{text}");
        assert!(text.contains("| 4 | 24 | 100.0 MiB | 1.2 s |"), "{text}");
        // No PyTorch model lines: no PyTorch table; no bf16 peak: no bf16 ceiling.
        assert!(!text.contains("## CLIP ViT-L/14 against PyTorch"), "{text}");
        assert!(!text.contains("### bf16"), "{text}");
    }

    /// Object-store reads against local ones, and the streaming run's peak memory.
    #[test]
    fn report_compares_object_store_reads_with_local_ones() {
        let bytes = |id: &str, mean_ns: f64| Measurement {
            id: id.into(),
            mean_ns,
            throughput: Some((64.0 * 1048576.0, "bytes")),
        };
        let found =
            [bytes("store_read/local/64MiB", 0.1e9), bytes("store_read/s3_loopback/64MiB", 0.4e9)];
        let memory = memory::MemoryReport {
            build: String::new(),
            command: String::new(),
            runs: Vec::new(),
            stream: Some(memory::StreamRun {
                command: "stream_object -- 1024".into(),
                bytes: 1 << 30,
                seconds: 10.0,
                peak_rss: 15 << 20,
            }),
        };
        let text = report(&[], &found, &[], Some(&memory));
        assert!(text.contains("| local file | 671 MB/s | 1.00 |"), "{text}");
        assert!(text.contains("| S3 on loopback | 168 MB/s | 0.250 |"), "{text}");
        assert!(text.contains("1024 MiB object") && text.contains("peak RSS 15.0 MiB"), "{text}");
    }

    /// A measurement of `n` elements an iteration taking `mean_ns`.
    fn measured(id: &str, mean_ns: f64, n: f64) -> Measurement {
        Measurement { id: id.into(), mean_ns, throughput: Some((n, "elements")) }
    }

    /// The products alone are most of the forward's operations, and what remains is its
    /// attention, patch embedding and the skipped patch rows of the last layer.
    #[test]
    fn the_products_are_most_of_vit_l14() {
        let products = VIT_L14_PRODUCT_FLOP_PER_IMAGE / 1e9;
        assert!((products - 155.2).abs() < 0.1, "{products}");
        let attention = 24.0 * 4.0 * 257.0 * 257.0 * 1024.0 / 1e9;
        let patches = 2.0 * 256.0 * 588.0 * 1024.0 / 1e9;
        let total = VIT_L14_FLOP_PER_IMAGE / 1e9;
        assert!((products + attention + patches - total).abs() < 1e-9, "{total}");
        assert!(products / total > 0.95, "{products} of {total}");
    }

    /// The products alone: aesthete-clip's against PyTorch's, PyTorch's against the peak,
    /// and their share of the forward; PyTorch's products line is no model row.
    #[test]
    fn report_sets_the_products_beside_pytorch_and_the_forward() {
        let m = measured;
        let per_image = VIT_L14_PRODUCT_FLOP_PER_IMAGE - VIT_L14_FLOP_SKIPPED_PER_IMAGE;
        let found = [
            // Products at 4 images' worth of products a second (batch 4, one per second);
            // the forward at 2 images/s: the products take half its time.
            m("products_f32_cpu/vit_l14/4", 1e9, 4.0 * per_image),
            m("clip_vit_l14_f32_cpu/forward/4", 2e9, 4.0),
            m("products_f32_cpu/vit_l14/16", 1e9, 3e11),
        ];
        let ours_gflops = 4.0 * per_image / 1e9;
        let torch: Vec<Value> = vec![
            serde_json::json!({"system": "torch-sgemm", "n": 2048, "gflops": 400.0}),
            serde_json::json!({"system": "torch-products", "batch": 4, "gflops": ours_gflops / 0.8}),
            serde_json::json!({"system": "torch-products", "batch": 1, "gflops": 300.0}),
            serde_json::json!({"system": "torch-eager", "batch": 4, "images_per_s": 1.0}),
        ];
        let text = report(&[], &found, &torch, None);
        let products = text.split_once("#### The products alone").expect(&text).1;
        let theirs = ours_gflops / 0.8;
        let row =
            format!("| 4 | {ours_gflops:.1} | {theirs:.1} | 0.80 | {:.2} | 0.50 |", theirs / 400.0);
        assert!(products.contains(&row), "{row} not in {text}");
        assert!(products.contains("| 1 | — | 300.0 | — | 0.75 | — |"), "{text}");
        assert!(products.contains("| 16 | 300.0 | — | — | — | — |"), "{text}");
        assert!(!text.contains("| torch-products |"), "{text}");
        assert!(text.contains("| torch-eager | 4 | 1.000 | f32 | 2.000 | 2.00× |"), "{text}");
    }

    /// A PyTorch script that crashed keeps the lines it printed, and the report says where
    /// it stopped, with no model row for the line that says so.
    #[test]
    fn a_torch_script_that_stopped_early_keeps_its_lines() {
        let stdout = "torch prints this\n{\"system\": \"torch-eager\", \"batch\": 4, \"images_per_s\": 1.5}\n";
        let why = "signal: 6 (SIGABRT): free(): invalid pointer".to_owned();
        let lines = script_lines(stdout, Some(why)).unwrap();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert_eq!(lines[0]["system"], "torch-eager");
        assert_eq!(
            stopped_early(&lines[1]),
            Some("signal: 6 (SIGABRT): free(): invalid pointer, after 1 lines")
        );
        let found = [measured("clip_vit_l14_f32_cpu/forward/4", 2e9, 4.0)];
        let text = report(&[], &found, &lines, None);
        let note = format!("**`{TORCH_SCRIPT}` stopped early** (signal: 6 (SIGABRT)");
        let pytorch = text.split_once("## CLIP ViT-L/14 against PyTorch").expect(&text).1;
        assert!(pytorch.contains(&note), "{text}");
        // Stopped before it printed anything: the section holds the note alone.
        let nothing = script_lines("", Some("exit status: 2: error: bad args".into())).unwrap();
        let text = report(&[], &found, &nothing, None);
        let pytorch = text.split_once("## CLIP ViT-L/14 against PyTorch").expect(&text).1;
        assert!(
            pytorch.contains("stopped early** (exit status: 2: error: bad args, after 0 lines)")
        );
        assert!(!pytorch.contains("| system |"), "{text}");
        let text = report(&[], &found, &lines, None);
        assert!(text.contains("| torch-eager | 4 | 1.500 | f32 | 2.000 | 1.33× |"), "{text}");
        assert!(!text.contains(&format!("| {TORCH_SCRIPT} |")), "{text}");
        // A script that ran to its end adds nothing; a line that is not JSON is an error.
        assert_eq!(script_lines(stdout, None).unwrap().len(), 1);
        assert!(script_lines("{not json", None).is_err());
    }

    /// The bf16 PyTorch modes are compared with aesthete-clip bf16, the fp32 ones with f32,
    /// and the bf16 peak gives its own ceiling.
    #[test]
    fn report_compares_bf16_with_bf16() {
        let m = measured;
        let found = [
            m("clip_vit_l14_bf16_cpu/forward/1", 0.5e9, 1.0),
            m("clip_vit_l14_bf16_cpu/forward/16", 4e9, 16.0),
            m("clip_vit_l14_f32_cpu/forward/1", 1e9, 1.0),
            m("clip_vit_l14_f32_cpu/forward/16", 16e9, 16.0),
        ];
        // 8 images/s of ViT-L/14 in bf16 GFLOP/s: bf16 ceiling 8 images/s.
        let torch: Vec<Value> = vec![
            serde_json::json!({"system": "torch-sgemm", "n": 2048, "gflops": VIT_L14_FLOP_PER_IMAGE / 1e9}),
            serde_json::json!({"system": "torch-bf16-gemm", "n": 2048, "gflops": 8.0 * VIT_L14_FLOP_PER_IMAGE / 1e9}),
            serde_json::json!({"system": "torch-eager", "batch": 16, "images_per_s": 0.5}),
            serde_json::json!({"system": "torch-autocast-bf16", "batch": 1, "images_per_s": 1.0}),
            serde_json::json!({"system": "torch-bf16-weights", "batch": 16, "images_per_s": 8.0}),
            serde_json::json!({"system": "torch-bf16-weights", "batch": 4, "images_per_s": 3.0}),
        ];
        let text = report(&[], &found, &torch, None);
        assert!(text.contains("| torch-eager | 16 | 0.500 | f32 | 1.000 | 2.00× |"), "{text}");
        assert!(
            text.contains("| torch-autocast-bf16 | 1 | 1.000 | bf16 | 2.000 | 2.00× |"),
            "{text}"
        );
        assert!(
            text.contains("| torch-bf16-weights | 16 | 8.000 | bf16 | 4.000 | 0.50× |"),
            "{text}"
        );
        assert!(
            text.contains("| torch-bf16-weights | 4 | 3.000 | bf16 | not measured | |"),
            "{text}"
        );
        assert!(!text.contains("| torch-bf16-gemm |"), "{text}");
        assert!(text.contains("fp32 eager") && text.contains("two bf16 modes"), "{text}");

        let (f32_part, bf16_part) = text.split_once("### bf16").expect(&text);
        assert!(f32_part.contains("| batch | aesthete-clip f32 images/s | f32 ceiling images/s |"));
        assert!(f32_part.contains("| 16 | 1.000 | 1.000 | 1.00 |"), "{text}");
        assert!(f32_part.contains("(`sgemm_f32_cpu/gemm/2048`) not measured, PyTorch's BLAS (`torch-sgemm`) 162.0 GFLOP/s;"), "{text}");
        assert!(
            f32_part.contains(
                "≥ 1.0 × PyTorch fp32 eager (`torch-eager`) and ≥ 0.85 × the f32 ceiling"
            )
        );
        assert!(
            bf16_part.contains("(`torch-bf16-gemm`) 1296.2 GFLOP/s, which allows 8.000 images/s"),
            "{text}"
        );
        assert!(
            bf16_part.contains("| batch | aesthete-clip bf16 images/s | bf16 ceiling images/s |")
        );
        assert!(bf16_part.contains("| 1 | 2.000 | 8.000 | 0.25 |"), "{text}");
        assert!(bf16_part.contains("| 16 | 4.000 | 8.000 | 0.50 |"), "{text}");
        // Where the bf16 products ran on f32 FMAs, bf16 is set against the f32 ceiling too.
        for on_fma in [false, true] {
            let mut s = String::new();
            ceiling_section(&mut s, &found, &torch, on_fma);
            let against_f32 = s.split_once("ran on f32 FMAs").map(|(_, rest)| rest);
            assert_eq!(against_f32.is_some(), on_fma, "{s}");
            if let Some(rest) = against_f32 {
                let header = "| batch | aesthete-clip bf16 images/s | f32 ceiling images/s |";
                assert!(rest.contains(header), "{s}");
                assert!(rest.contains("| 16 | 4.000 | 1.000 | 4.00 |"), "{s}");
            }
        }
        assert!(!bf16_part.contains("| 4 |"), "{text}");
        assert!(bf16_part.contains("≥ 1.0 × the faster of `torch-autocast-bf16` and `torch-bf16-weights`, and ≥ 0.5 × the bf16 ceiling"));
    }

    /// Peaks measured before aesthete's benches and after them: the ceiling is their mean,
    /// and the report names both.
    #[test]
    fn bracketed_peaks_give_their_mean() {
        let found = [Measurement {
            id: "clip_vit_l14_bf16_cpu/forward/4".into(),
            mean_ns: 1e9,
            throughput: Some((4.0, "elements")),
        }];
        let flop = VIT_L14_FLOP_PER_IMAGE / 1e9;
        let torch: Vec<Value> = vec![
            serde_json::json!({"system": "torch-bf16-gemm", "n": 2048, "gflops": 6.0 * flop, "when": "before"}),
            serde_json::json!({"system": "torch-bf16-gemm", "n": 2048, "gflops": 10.0 * flop}),
        ];
        let text = report(&[], &found, &torch, None);
        assert!(text.contains("| 4 | 4.000 | 8.000 | 0.50 |"), "{text}");
        let named = format!(
            "{:.1} GFLOP/s (the mean of {:.1} just before aesthete's benches and {:.1} after them)",
            8.0 * flop,
            6.0 * flop,
            10.0 * flop
        );
        assert!(text.contains(&named), "{text}");
    }

    /// On a CPU without a bf16 kernel the bench has only the f32 group, and the bf16 rows say why.
    #[test]
    fn report_says_when_the_cpu_has_no_bf16_kernel() {
        let found = [Measurement {
            id: "clip_vit_l14_f32_cpu/forward/1".into(),
            mean_ns: 1e9,
            throughput: Some((1.0, "elements")),
        }];
        let torch: Vec<Value> = vec![
            serde_json::json!({"system": "torch-bf16-gemm", "n": 2048, "gflops": 100.0}),
            serde_json::json!({"system": "torch-autocast-bf16", "batch": 1, "images_per_s": 0.25}),
        ];
        let text = report(&[], &found, &torch, None);
        assert!(
            text.contains(
                "| torch-autocast-bf16 | 1 | 0.250 | bf16 | not measured (no bf16 kernel on this CPU) | |"
            ),
            "{text}"
        );
        assert!(text.contains("aesthete-clip bf16: not measured (no bf16 kernel on this CPU)."));
        // Without the f32 group either, the bench did not run: no reason is guessed.
        let text = report(&[], &[], &torch, None);
        assert!(text.contains("| torch-autocast-bf16 | 1 | 0.250 | bf16 | not measured | |"));
    }

    /// The vit bench and the PyTorch script are asked for the same batches.
    #[test]
    fn both_sides_measure_the_same_batches() {
        assert_eq!(vit_batches(false), "1,4,16");
        assert_eq!(vit_batches(true), "1,4");
    }

    #[test]
    fn rates_keep_three_significant_digits() {
        assert_eq!(human_rate(0.4141, "elements"), "0.414 elements/s");
        assert_eq!(human_rate(138.12, "elements"), "138 elements/s");
        assert_eq!(human_rate(3_512_750_845.7, "bytes"), "3.51 GB/s");
        assert_eq!(human_rate(187_834_092.7, "bytes"), "188 MB/s");
        assert_eq!(human_rate(68_846_638_074.0, "elements"), "68.8 Gelements/s");
        assert_eq!(human_rate(1_167_620.0, "elements"), "1.17 Melements/s");
    }

    #[test]
    fn instruction_sets_read_cpuinfo_flags() {
        let zen1 = "fpu sse2 avx fma avx2 bmi2 sha_ni";
        assert_eq!(
            super::instruction_sets(zen1),
            "AVX2+FMA yes, AVX-512F no, AVX512-BF16 no, AMX-BF16 no"
        );
        let sapphire = "avx2 fma avx512f avx512_bf16 amx_bf16 amx_tile amx_int8";
        assert_eq!(
            super::instruction_sets(sapphire),
            "AVX2+FMA yes, AVX-512F yes, AVX512-BF16 yes, AMX-BF16 yes"
        );
        // A flag's prefix is not the flag.
        assert!(super::instruction_sets("avx512fp16 fma").contains("AVX-512F no"));
    }
}
