//! `cargo xtask fixtures`: regenerate everything under `fixtures/` with the committed
//! generators. Tests read the generated files and never need Python.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};

/// The generators, in the order they run (later ones may read earlier outputs).
pub const GENERATORS: [&str; 6] = [
    "fixtures/shards/generate.py",
    "fixtures/preprocess/generate.py",
    "fixtures/clip/generate.py",
    "fixtures/head/generate.py",
    "fixtures/pipeline/generate.py",
    "fixtures/rescore/generate.py",
];

/// Python modules the generators import (`fixtures/requirements.txt` installs them).
pub const MODULES: [&str; 8] =
    ["torch", "transformers", "webdataset", "PIL", "numpy", "safetensors", "skimage", "pyarrow"];

/// The Python interpreter: `$PYTHON`, or `python3`.
pub fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

/// Modules of [`MODULES`] that `python` cannot import.
pub fn missing_modules(python: &str) -> anyhow::Result<Vec<String>> {
    let script = format!(
        "import importlib.util as u\nfor m in {MODULES:?}:\n    if u.find_spec(m) is None: print(m)\n"
    );
    let out = Command::new(python)
        .args(["-c", &script])
        .output()
        .with_context(|| format!("cannot run `{python}`; install Python 3 or set $PYTHON"))?;
    if !out.status.success() {
        bail!("`{python}` failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect())
}

/// Runs every generator that exists under `root` (or only those of the folders named in
/// `only`, such as `head`), after checking the Python modules.
pub fn regenerate(root: &Path, only: &[String]) -> anyhow::Result<()> {
    for name in only {
        if !GENERATORS.iter().any(|g| folder(g) == name) {
            bail!(
                "fixtures: unknown folder `{name}` (known: shards, preprocess, clip, head, pipeline)"
            );
        }
    }
    let python = python();
    let missing = missing_modules(&python)?;
    if !missing.is_empty() {
        bail!(
            "`{python}` lacks {}; install them with `pip install -r fixtures/requirements.txt`",
            missing.join(", ")
        );
    }
    for generator in GENERATORS {
        if !only.is_empty() && !only.iter().any(|n| n == folder(generator)) {
            continue;
        }
        let path = root.join(generator);
        if !path.exists() {
            eprintln!("skipping {generator}: it does not exist yet");
            continue;
        }
        eprintln!("running {generator}");
        let status = Command::new(&python)
            .arg(&path)
            .current_dir(root)
            .status()
            .with_context(|| format!("cannot run {generator}"))?;
        if !status.success() {
            bail!("{generator} failed ({status})");
        }
    }
    Ok(())
}

/// `fixtures/head/generate.py` → `head`.
fn folder(generator: &str) -> &str {
    generator.split('/').nth(1).unwrap_or_default()
}
