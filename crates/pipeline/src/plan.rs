//! Which shards a run (or this worker of it) processes, where their outputs go, and which are
//! already done.
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use aesthete_preprocess::{Limits, Mode, PreprocessOptions};

use crate::{Error, Outputs, RunConfig, Selection};

/// One input shard and the outputs it maps to.
#[derive(Debug, Clone)]
pub(crate) struct ShardJob {
    /// The input shard.
    pub input: PathBuf,
    /// `NAME` of the outputs (`NAME.tar`, `NAME.parquet`, `NAME.done.json`).
    pub name: String,
}

impl ShardJob {
    pub fn tar_path(&self, dir: &Path) -> PathBuf {
        dir.join(format!("{}.tar", self.name))
    }
    pub fn table_path(&self, dir: &Path) -> PathBuf {
        dir.join(format!("{}.parquet", self.name))
    }
    pub fn record_path(&self, dir: &Path) -> PathBuf {
        dir.join(format!("{}.done.json", self.name))
    }
}

/// The shards of this worker, split into those to run and those already complete.
#[derive(Debug)]
pub(crate) struct Plan {
    pub todo: Vec<ShardJob>,
    pub done: Vec<(ShardJob, CompletionRecord)>,
    /// Shards of the whole run (all workers).
    pub total_in_run: usize,
}

/// The settings that shape a shard's outputs; a rerun with other settings must not mix them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct OutputSettings {
    pub outputs: String,
    pub selection: String,
    pub save_embeddings: bool,
    pub preprocess: String,
}

impl OutputSettings {
    pub fn of(config: &RunConfig) -> Self {
        OutputSettings {
            outputs: match config.outputs {
                Outputs::FilterAndScore => "filter".into(),
                Outputs::ScoresOnly => "score".into(),
            },
            selection: selection_setting(config.selection),
            save_embeddings: config.save_embeddings,
            preprocess: preprocess_setting(&config.preprocess),
        }
    }

    fn difference(&self, other: &OutputSettings) -> Option<String> {
        let mut parts = Vec::new();
        if self.outputs != other.outputs {
            parts.push(format!("outputs {} vs {}", other.outputs, self.outputs));
        }
        if self.selection != other.selection {
            parts.push(format!("selection {} vs {}", other.selection, self.selection));
        }
        if self.save_embeddings != other.save_embeddings {
            parts.push(format!(
                "save embeddings {} vs {}",
                other.save_embeddings, self.save_embeddings
            ));
        }
        if self.preprocess != other.preprocess {
            parts.push(format!("preprocess {} vs {}", other.preprocess, self.preprocess));
        }
        (!parts.is_empty()).then(|| parts.join(", "))
    }
}

/// The selection as completion records store it. Spelled out here, not taken from `Debug`, so
/// that no formatting change can invalidate existing output directories; the spelling is the
/// one records have always had (`Threshold(5.0)`, `KeepTop(0.1)`).
fn selection_setting(selection: Selection) -> String {
    match selection {
        Selection::Threshold(t) => format!("Threshold({t:?})"),
        Selection::KeepTop(f) => format!("KeepTop({f:?})"),
    }
}

/// The preprocessing options as completion records store them, spelled out for the same
/// reason and in the same spelling as ever.
fn preprocess_setting(options: &PreprocessOptions) -> String {
    let mode = match options.get_mode() {
        Mode::Exact => "Exact",
        Mode::Fast => "Fast",
    };
    let Limits { max_pixels, max_alloc } = options.get_limits();
    format!(
        "PreprocessOptions {{ mode: {mode}, limits: Limits {{ max_pixels: {max_pixels}, max_alloc: {max_alloc} }} }}"
    )
}

/// Written last, after a shard's outputs are in place: its presence means they are whole.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct CompletionRecord {
    pub aesthete_version: String,
    pub input: PathBuf,
    pub settings: OutputSettings,
    /// `complete`, or `incomplete` when the input was cut off or unreadable part way (its
    /// salvaged outputs are kept, and a rerun tries it again).
    pub status: String,
    pub samples: u64,
    pub kept: u64,
    pub failed: u64,
    pub error: Option<String>,
}

impl CompletionRecord {
    pub const COMPLETE: &'static str = "complete";
    pub const INCOMPLETE: &'static str = "incomplete";
}

/// Lists, partitions and checks the outputs of the run's shards.
pub(crate) fn plan(config: &RunConfig) -> Result<Plan, Error> {
    let mut inputs = aesthete_shards::expand_inputs(&config.inputs).map_err(Error::Inputs)?;
    inputs.sort();
    inputs.dedup();
    let total_in_run = inputs.len();

    let mut names: BTreeMap<String, PathBuf> = BTreeMap::new();
    let mut jobs = Vec::new();
    for (position, input) in inputs.into_iter().enumerate() {
        let name = output_name(&input);
        if let Some(first) = names.get(&name) {
            return Err(Error::OutputNameClash { name, first: first.clone(), second: input });
        }
        names.insert(name.clone(), input.clone());
        if config.partition.owns(position) {
            jobs.push(ShardJob { input, name });
        }
    }

    prepare_output_dir(&config.output_dir)?;
    let settings = OutputSettings::of(config);
    let temporaries = temporaries(&config.output_dir)?;
    let mut plan = Plan { todo: Vec::new(), done: Vec::new(), total_in_run };
    for job in jobs {
        let record_path = job.record_path(&config.output_dir);
        let record = if config.overwrite { None } else { read_record(&record_path)? };
        match record {
            Some(record) if record.status == CompletionRecord::COMPLETE => {
                if let Some(difference) = settings.difference(&record.settings) {
                    return Err(Error::SettingsChanged { path: record_path, difference });
                }
                plan.done.push((job, record));
            }
            _ => {
                remove_stale_temporaries(&config.output_dir, &temporaries, &job)?;
                plan.todo.push(job);
            }
        }
    }
    Ok(plan)
}

/// Removes what a killed run left of `job`'s outputs: temporary files that were never renamed
/// into place (`.NAME.tar.*.tmp`, `.NAME.parquet.*.tmp`, `.NAME.done.json.*.tmp`), from the
/// `temporaries` found in `dir`.
fn remove_stale_temporaries(
    dir: &Path,
    temporaries: &[String],
    job: &ShardJob,
) -> Result<(), Error> {
    let outputs = ["tar", "parquet", "done.json"].map(|ext| format!("{}.{ext}", job.name));
    for name in temporaries {
        if outputs.iter().any(|dest| aesthete_atomic::is_temporary_name(name, dest)) {
            tracing::debug!(file = %name, "removing a temporary file left by an interrupted run");
            let path = dir.join(name);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(Error::Output { path, source }),
            }
        }
    }
    Ok(())
}

/// Names of the hidden `*.tmp` files in `dir`.
fn temporaries(dir: &Path) -> Result<Vec<String>, Error> {
    let err = |source| Error::Output { path: dir.to_path_buf(), source };
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).map_err(err)? {
        let name = entry.map_err(err)?.file_name();
        if let Some(name) = name.to_str().filter(|n| n.starts_with('.') && n.ends_with(".tmp")) {
            names.push(name.to_string());
        }
    }
    Ok(names)
}

/// `data/shard-000.tar.gz` → `shard-000`.
pub(crate) fn output_name(input: &Path) -> String {
    let file = input.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
    let lower = file.to_ascii_lowercase();
    for suffix in [".tar.gz", ".tgz", ".tar"] {
        if lower.ends_with(suffix) && lower.len() > suffix.len() {
            return file[..file.len() - suffix.len()].to_string();
        }
    }
    file
}

fn prepare_output_dir(dir: &Path) -> Result<(), Error> {
    let err = |source| Error::Output { path: dir.to_path_buf(), source };
    fs::create_dir_all(dir).map_err(err)?;
    // Fail now, not after an hour of scoring, when nothing can be written there.
    let probe = dir.join(format!(".aesthete-write-probe-{}", std::process::id()));
    fs::write(&probe, b"").map_err(err)?;
    fs::remove_file(&probe).map_err(err)?;
    Ok(())
}

fn read_record(path: &Path) -> Result<Option<CompletionRecord>, Error> {
    match fs::read(path) {
        Ok(bytes) => match serde_json::from_slice(&bytes) {
            Ok(record) => Ok(Some(record)),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "unreadable completion record; redoing the shard");
                Ok(None)
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Error::Output { path: path.to_path_buf(), source }),
    }
}

/// Writes `record` to `path` atomically.
pub(crate) fn write_record(path: &Path, record: &CompletionRecord) -> std::io::Result<()> {
    let mut bytes = serde_json::to_vec_pretty(record).map_err(std::io::Error::other)?;
    bytes.push(b'\n');
    aesthete_atomic::write(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The settings strings that completion records of earlier versions hold: a rerun over
    /// their output directories must find its settings unchanged.
    #[test]
    fn settings_are_spelled_as_records_have_always_had_them() {
        assert_eq!(selection_setting(Selection::Threshold(5.0)), "Threshold(5.0)");
        assert_eq!(selection_setting(Selection::Threshold(0.5)), "Threshold(0.5)");
        assert_eq!(selection_setting(Selection::KeepTop(0.1)), "KeepTop(0.1)");
        assert_eq!(
            preprocess_setting(&PreprocessOptions::default()),
            "PreprocessOptions { mode: Exact, limits: Limits { max_pixels: 178956970, max_alloc: 1073741824 } }"
        );
        let fast = PreprocessOptions::default().mode(Mode::Fast);
        assert!(preprocess_setting(&fast).starts_with("PreprocessOptions { mode: Fast, "));
    }

    #[test]
    fn output_names_drop_tar_suffixes() {
        assert_eq!(output_name(Path::new("a/b/shard-001.tar")), "shard-001");
        assert_eq!(output_name(Path::new("x.TAR.GZ")), "x");
        assert_eq!(output_name(Path::new("x.tgz")), "x");
        assert_eq!(output_name(Path::new("weird")), "weird");
    }
}
