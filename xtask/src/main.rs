//! `cargo xtask`: aesthete's own tooling. Run `cargo xtask help`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use xtask::{bench, fetch, fixtures, gpu_bundle, gpu_test, report_screenshot};

/// Each task's usage: what `cargo xtask TASK --help` prints, and `cargo xtask help` lists.
const TASKS: [(&str, &str); 6] = [
    (
        "fetch-models",
        "\
  fetch-models [--dir DIR] [--dtype f32|f16] [--head-url URL | --head-file PATH] [--pins FILE]
      download openai/clip-vit-large-patch14 and the LAION head at pinned versions, refuse
      any file whose size or sha256 is not the pinned one, convert them into DIR (default:
      $AESTHETE_MODELS, else ~/.local/share/aesthete/models, where `aesthete` looks).
      The hub is $HF_ENDPOINT or https://huggingface.co. --pins FILE pins other files
      (JSON: every file with its sha256 and size; see xtask/src/fetch/pins.rs).
",
    ),
    (
        "fixtures",
        "\
  fixtures [FOLDER...]
      regenerate fixtures/ (or only FOLDER: shards, preprocess, clip, head, pipeline) with
      the committed Python generators; `pip install -r fixtures/requirements.txt` first
",
    ),
    (
        "bench",
        "\
  bench [--quick] [CRATE...]
      run the criterion benches (shards, preprocess, clip, head, pipeline) and write
      BENCHMARKS.md
",
    ),
    (
        "gpu-test",
        "\
  gpu-test
      run the CUDA integration tests (skips with a reason without a GPU and its driver)
",
    ),
    (
        "gpu-bundle",
        "\
  gpu-bundle [--out DIR]
      write the GPU device check (default: target/gpu-bundle, at most 40 MiB): the stripped
      binary, fixture models and shards, the real LAION head, photo-sized JPEGs, check.py; on
      a machine with the NVIDIA driver and PyTorch: bash DIR/run.sh --out RESULTS
",
    ),
    (
        "report-screenshot",
        "\
  report-screenshot
      regenerate docs/report.png: the fixture shards scored with the tiny test models, the
      `aesthete report` page of them, rendered by headless chromium at 1280x1800
",
    ),
];

fn help() -> String {
    let tasks: String = TASKS.iter().map(|(_, usage)| *usage).collect();
    format!(
        "usage: cargo xtask <task> [options]\n       cargo xtask <task> --help\n\ntasks:\n{tasks}"
    )
}

fn usage(task: &str) -> String {
    let found = TASKS.iter().find(|(name, _)| *name == task).map(|(_, usage)| *usage);
    format!("usage: cargo xtask {}", found.unwrap_or_default().trim_start())
}

fn main() -> ExitCode {
    match run(std::env::args().skip(1).collect()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Vec<String>) -> anyhow::Result<()> {
    let Some((task, rest)) = args.split_first() else {
        eprint!("{}", help());
        bail!("no task given");
    };
    if TASKS.iter().any(|(name, _)| name == task) && rest.iter().any(|a| a == "--help" || a == "-h")
    {
        print!("{}", usage(task));
        return Ok(());
    }
    let mut rest = rest.iter().cloned();
    match task.as_str() {
        "fetch-models" => {
            let mut opts = fetch::FetchOptions::from_env()?;
            while let Some(flag) = rest.next() {
                let mut value = || rest.next().with_context(|| format!("{flag} needs a value"));
                match flag.as_str() {
                    "--dir" => opts.dir = PathBuf::from(value()?),
                    "--dtype" => opts.dtype = value()?.parse()?,
                    "--head-url" => opts.head = fetch::HeadSource::Url(value()?),
                    "--head-file" => opts.head = fetch::HeadSource::File(PathBuf::from(value()?)),
                    "--pins" => {
                        let path = value()?;
                        let text = std::fs::read_to_string(&path)
                            .with_context(|| format!("cannot read {path}"))?;
                        opts.manifest = fetch::Manifest::from_json(&text)
                            .with_context(|| format!("in {path}"))?;
                    }
                    _ => {
                        bail!("fetch-models: unknown option `{flag}`\n\n{}", usage("fetch-models"))
                    }
                }
            }
            let summary = fetch::fetch_models(&opts)?;
            eprintln!(
                "models ready in {} ({} file(s) fetched, {} output(s) converted)",
                opts.dir.display(),
                summary.transferred.len(),
                summary.converted.len()
            );
            Ok(())
        }
        "fixtures" => fixtures::regenerate(&xtask::workspace_root(), &rest.collect::<Vec<_>>()),
        "bench" => {
            let mut opts = bench::BenchOptions::default();
            for arg in rest {
                match arg.as_str() {
                    "--quick" => opts.quick = true,
                    flag if flag.starts_with('-') => {
                        bail!("bench: unknown option `{flag}`\n\n{}", usage("bench"))
                    }
                    name => opts.only.push(name.to_owned()),
                }
            }
            bench::run(&xtask::workspace_root(), &opts)
        }
        "report-screenshot" => {
            if let Some(extra) = rest.next() {
                bail!("report-screenshot: unknown argument `{extra}`");
            }
            report_screenshot::run(&xtask::workspace_root())
        }
        "gpu-test" => {
            if let Some(extra) = rest.next() {
                bail!("gpu-test: unknown argument `{extra}`");
            }
            gpu_test::run(&xtask::workspace_root())
        }
        "gpu-bundle" => {
            let root = xtask::workspace_root();
            let mut out = gpu_bundle::default_dir(&root);
            while let Some(flag) = rest.next() {
                match flag.as_str() {
                    "--out" => out = PathBuf::from(rest.next().context("--out needs a value")?),
                    _ => bail!("gpu-bundle: unknown option `{flag}`\n\n{}", usage("gpu-bundle")),
                }
            }
            gpu_bundle::run(&root, &out)
        }
        "help" | "--help" | "-h" => {
            match rest.next() {
                Some(task) if TASKS.iter().any(|(name, _)| *name == task) => {
                    print!("{}", usage(&task))
                }
                Some(other) => bail!("unknown task `{other}`\n\n{}", help()),
                None => print!("{}", help()),
            }
            Ok(())
        }
        other => bail!("unknown task `{other}`\n\n{}", help()),
    }
}
