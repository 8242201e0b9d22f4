//! Completion records (`NAME.done.json`): written last, after a shard's outputs are in place,
//! so that their presence means the outputs are whole, and holding the settings that shaped
//! them, so that a rerun with other settings cannot mix outputs.
//!
//! Records carry a `record_version`. Version 2 (this one) is typed throughout. Version 1,
//! written by aesthete 0.1 before records had a version, spelled its settings as strings
//! (`"Threshold(5.0)"`); those are read and understood, so earlier output directories resume.
//! A record from a newer aesthete is refused, naming the file, rather than guessed at.
use std::fmt;
use std::fs;
use std::path::Path;

use serde::{Deserialize, Serialize};

use aesthete_preprocess::{Limits, Mode, PreprocessOptions};

use crate::{Error, Outputs, Partition, RunConfig, Selection};

/// The record version this build writes.
pub(crate) const RECORD_VERSION: u32 = 2;

/// A completion record as this build writes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct DoneRecord {
    pub record_version: u32,
    pub aesthete_version: String,
    /// The input's path or URL, as the run named it.
    pub input: String,
    pub settings: Settings,
    pub status: Status,
    pub samples: u64,
    pub kept: u64,
    pub failed: u64,
    pub error: Option<String>,
}

/// Whether the shard was read whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Status {
    /// Every sample is in the outputs; a rerun skips the shard.
    Complete,
    /// The input was cut off or unreadable part way: the salvaged outputs are kept, and a
    /// rerun tries the shard again.
    Incomplete,
}

/// The settings that shape a shard's outputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Settings {
    pub outputs: OutputsSetting,
    pub selection: SelectionSetting,
    pub save_embeddings: bool,
    /// How images were decoded; `None` for `rescore`, which decodes none. A record without it
    /// is written only by `rescore`; an aesthete before it reads such a record as unreadable
    /// and redoes the file, so the record version stays 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preprocess: Option<PreprocessSetting>,
    /// `rescore` from clip-retrieval output: the metadata column the keys come from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_column: Option<String>,
    /// How many workers the run is split across, when more than one. Not one of the settings
    /// [`Settings::difference`] compares: [`Settings::workers_differ`] checks it, so that a
    /// worker resubmitted with another count is refused with its own message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<usize>,
    /// The models that scored the samples; `None` where none did (`filter --scores`,
    /// `rescore`), for models a caller built itself, and in records written before it, which
    /// a run with any models therefore accepts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelSetting>,
}

/// Which models scored a shard, so that a rerun with other weights or another precision
/// cannot mix its scores with theirs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ModelSetting {
    /// The precision of the CLIP model (`f32`, `bf16`, `f16`).
    pub dtype: String,
    /// CRC-32 of the CLIP model's `config.json` and weights and of the head's file, in hex:
    /// the same files wherever they are, other weights seen without hashing a gigabyte
    /// cryptographically at every start.
    pub files_crc32: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum OutputsSetting {
    /// Tar and table.
    Filter,
    /// Table only.
    Score,
    /// Table only, scored from stored embeddings (`aesthete rescore`).
    Rescore,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "rule", rename_all = "kebab-case")]
pub(crate) enum SelectionSetting {
    /// `kept` is `score >= threshold`.
    Threshold { threshold: f32 },
    /// `kept` marks the best `fraction` of the worker's samples.
    KeepTop { fraction: f32 },
    /// Scores for a later cut: nothing is kept (keep-top's first pass).
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PreprocessSetting {
    pub mode: ModeSetting,
    pub max_pixels: u64,
    pub max_alloc: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum ModeSetting {
    Exact,
    Fast,
}

impl Settings {
    /// The settings of `config`'s final outputs.
    pub fn of(config: &RunConfig) -> Self {
        Settings {
            outputs: match config.outputs {
                Outputs::FilterAndScore => OutputsSetting::Filter,
                Outputs::ScoresOnly => OutputsSetting::Score,
            },
            selection: match config.selection {
                Selection::Threshold(threshold) => SelectionSetting::Threshold { threshold },
                Selection::KeepTop(fraction) => SelectionSetting::KeepTop { fraction },
            },
            save_embeddings: config.save_embeddings,
            preprocess: Some(PreprocessSetting::of(&config.preprocess)),
            key_column: None,
            workers: workers_of(config.partition),
            model: None,
        }
    }

    /// These settings with the models that score the samples.
    pub fn scored_by(self, model: Option<ModelSetting>) -> Self {
        Settings { model, ..self }
    }

    /// The settings of score tables made for a later cut (keep-top's first pass): they do not
    /// depend on the fraction, so a rerun with another fraction reuses them.
    pub fn scores_for_cut(config: &RunConfig) -> Self {
        Settings {
            outputs: OutputsSetting::Score,
            selection: SelectionSetting::None,
            ..Settings::of(config)
        }
    }

    /// The worker counts of this run and of `recorded`, when both are split and the counts
    /// differ: workers of one run must agree on it, or some shards belong to no worker. A
    /// whole run (one worker) may finish what a split run left, and the other way round.
    pub fn workers_differ(&self, recorded: &Settings) -> Option<(usize, usize)> {
        match (self.workers, recorded.workers) {
            (Some(now), Some(then)) if now != then => Some((then, now)),
            _ => None,
        }
    }

    /// What differs between `self` (this run) and `recorded`, or `None`.
    pub fn difference(&self, recorded: &Settings) -> Option<String> {
        let mut parts = Vec::new();
        if self.outputs != recorded.outputs {
            parts.push(format!("outputs {} vs {}", recorded.outputs, self.outputs));
        }
        if self.selection != recorded.selection {
            parts.push(format!("selection {} vs {}", recorded.selection, self.selection));
        }
        if self.save_embeddings != recorded.save_embeddings {
            parts.push(format!(
                "save embeddings {} vs {}",
                recorded.save_embeddings, self.save_embeddings
            ));
        }
        if self.preprocess != recorded.preprocess {
            let show = |p: &Option<PreprocessSetting>| {
                p.as_ref().map_or_else(|| "none".to_string(), ToString::to_string)
            };
            parts.push(format!(
                "preprocess {} vs {}",
                show(&recorded.preprocess),
                show(&self.preprocess)
            ));
        }
        if let (Some(now), Some(then)) = (&self.model, &recorded.model)
            && now != then
        {
            parts.push(format!("models {then} vs {now}"));
        }
        if self.key_column != recorded.key_column {
            let show = |c: &Option<String>| c.clone().unwrap_or_else(|| "none".to_string());
            parts.push(format!(
                "key column {} vs {}",
                show(&recorded.key_column),
                show(&self.key_column)
            ));
        }
        (!parts.is_empty()).then(|| parts.join(", "))
    }
}

impl PreprocessSetting {
    fn of(options: &PreprocessOptions) -> Self {
        // A limit added to `Limits` belongs in the record too (and in `record_version`).
        let Limits { max_pixels, max_alloc, .. } = options.get_limits();
        PreprocessSetting {
            mode: match options.get_mode() {
                Mode::Exact => ModeSetting::Exact,
                Mode::Fast => ModeSetting::Fast,
            },
            max_pixels,
            max_alloc,
        }
    }
}

impl fmt::Display for OutputsSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OutputsSetting::Filter => "filter",
            OutputsSetting::Score => "score",
            OutputsSetting::Rescore => "rescore",
        })
    }
}

impl fmt::Display for SelectionSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SelectionSetting::Threshold { threshold } => write!(f, "threshold {threshold}"),
            SelectionSetting::KeepTop { fraction } => write!(f, "keep-top {fraction}"),
            SelectionSetting::None => f.write_str("none"),
        }
    }
}

impl fmt::Display for ModelSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (files crc32 {})", self.dtype, self.files_crc32)
    }
}

impl fmt::Display for PreprocessSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mode = match self.mode {
            ModeSetting::Exact => "exact",
            ModeSetting::Fast => "fast",
        };
        write!(f, "{mode}, max pixels {}, max alloc {}", self.max_pixels, self.max_alloc)
    }
}

/// What a record says of `partition`: its worker count when the run is split.
pub(crate) fn workers_of(partition: Partition) -> Option<usize> {
    (partition.count() > 1).then_some(partition.count())
}

/// Reads the record at `path`: `None` when there is none or it is not a record (it is redone,
/// with a warning); an error when it comes from a newer aesthete or says nothing clear.
pub(crate) fn read(path: &Path) -> Result<Option<DoneRecord>, Error> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(Error::Output { path: path.to_path_buf(), source }),
    };
    let redo = |error: &dyn std::fmt::Display| {
        tracing::warn!(path = %path.display(), %error, "unreadable completion record; redoing the shard");
        Ok(None)
    };
    let value: serde_json::Value = match serde_json::from_slice(&bytes) {
        Ok(value) => value,
        Err(e) => return redo(&e),
    };
    let version = match value.get("record_version") {
        None => 1,
        Some(v) => match v.as_u64() {
            Some(v) => v,
            None => return redo(&"record_version is not a number"),
        },
    };
    let record = match version {
        1 => serde_json::from_value::<legacy::RecordV1>(value)
            .map_err(|e| e.to_string())
            .and_then(legacy::RecordV1::upgrade),
        2 => serde_json::from_value::<DoneRecord>(value).map_err(|e| e.to_string()),
        newer => {
            return Err(Error::RecordVersion {
                path: path.to_path_buf(),
                version: newer,
                supported: RECORD_VERSION,
            });
        }
    };
    match record {
        Ok(record) => Ok(Some(record)),
        Err(e) => redo(&e),
    }
}

/// Writes `record` to `path` atomically.
pub(crate) fn write(path: &Path, record: &DoneRecord) -> std::io::Result<()> {
    let mut bytes = serde_json::to_vec_pretty(record).map_err(std::io::Error::other)?;
    bytes.push(b'\n');
    aesthete_atomic::write(path, &bytes)
}

/// Version 1: settings spelled as `Debug` once printed them.
mod legacy {
    use super::*;

    #[derive(Deserialize)]
    pub(super) struct RecordV1 {
        aesthete_version: String,
        input: String,
        settings: SettingsV1,
        status: String,
        samples: u64,
        kept: u64,
        failed: u64,
        error: Option<String>,
    }

    #[derive(Deserialize)]
    struct SettingsV1 {
        outputs: String,
        selection: String,
        save_embeddings: bool,
        preprocess: String,
    }

    impl RecordV1 {
        pub(super) fn upgrade(self) -> Result<DoneRecord, String> {
            let s = self.settings;
            let outputs = match s.outputs.as_str() {
                "filter" => OutputsSetting::Filter,
                "score" => OutputsSetting::Score,
                other => return Err(format!("unknown outputs {other:?}")),
            };
            let status = match self.status.as_str() {
                "complete" => Status::Complete,
                "incomplete" => Status::Incomplete,
                other => return Err(format!("unknown status {other:?}")),
            };
            Ok(DoneRecord {
                record_version: 1,
                aesthete_version: self.aesthete_version,
                input: self.input,
                settings: Settings {
                    outputs,
                    selection: selection(&s.selection)?,
                    save_embeddings: s.save_embeddings,
                    preprocess: Some(preprocess(&s.preprocess)?),
                    key_column: None,
                    workers: None,
                    model: None,
                },
                status,
                samples: self.samples,
                kept: self.kept,
                failed: self.failed,
                error: self.error,
            })
        }
    }

    /// `Threshold(5.0)`, `KeepTop(0.1)`; keep-top's first pass wrote `Threshold(inf)`, which
    /// keeps nothing, as [`SelectionSetting::None`] does.
    fn selection(text: &str) -> Result<SelectionSetting, String> {
        let number = |inner: &str| {
            inner.parse::<f32>().map_err(|_| format!("unreadable selection {text:?}"))
        };
        if let Some(inner) = text.strip_prefix("Threshold(").and_then(|t| t.strip_suffix(')')) {
            let threshold = number(inner)?;
            return Ok(if threshold == f32::INFINITY {
                SelectionSetting::None
            } else {
                SelectionSetting::Threshold { threshold }
            });
        }
        if let Some(inner) = text.strip_prefix("KeepTop(").and_then(|t| t.strip_suffix(')')) {
            return Ok(SelectionSetting::KeepTop { fraction: number(inner)? });
        }
        Err(format!("unreadable selection {text:?}"))
    }

    /// `PreprocessOptions { mode: Exact, limits: Limits { max_pixels: N, max_alloc: M } }`.
    fn preprocess(text: &str) -> Result<PreprocessSetting, String> {
        let unreadable = || format!("unreadable preprocessing settings {text:?}");
        let field = |name: &str| {
            let start = text.find(&format!("{name}: ")).ok_or_else(unreadable)? + name.len() + 2;
            let rest = &text[start..];
            let end = rest.find([',', ' ', '}']).unwrap_or(rest.len());
            Ok::<_, String>(&rest[..end])
        };
        let mode = match field("mode")? {
            "Exact" => ModeSetting::Exact,
            "Fast" => ModeSetting::Fast,
            _ => return Err(unreadable()),
        };
        let number = |name: &str| field(name)?.parse::<u64>().map_err(|_| unreadable());
        Ok(PreprocessSetting {
            mode,
            max_pixels: number("max_pixels")?,
            max_alloc: number("max_alloc")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(selection: Selection, preprocess: PreprocessOptions) -> RunConfig {
        RunConfig::new(["x.tar"], "out")
            .unwrap()
            .selection(selection)
            .unwrap()
            .preprocess_options(preprocess)
    }

    fn read_text(text: &str) -> Result<Option<DoneRecord>, Error> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.done.json");
        fs::write(&path, text).unwrap();
        read(&path)
    }

    /// A record aesthete 0.1 wrote (before records had a version), as it wrote it.
    const V1: &str = r#"{
  "aesthete_version": "0.1.0",
  "input": "data/x.tar",
  "settings": {
    "outputs": "filter",
    "selection": "Threshold(5.0)",
    "save_embeddings": false,
    "preprocess": "PreprocessOptions { mode: Exact, limits: Limits { max_pixels: 178956970, max_alloc: 1073741824 } }"
  },
  "status": "complete",
  "samples": 6,
  "kept": 2,
  "failed": 1,
  "error": null
}"#;

    #[test]
    fn version_1_records_are_understood() {
        let record = read_text(V1).unwrap().expect("a record");
        assert_eq!(record.record_version, 1);
        assert_eq!(record.status, Status::Complete);
        assert_eq!((record.samples, record.kept, record.failed), (6, 2, 1));
        let same = Settings::of(&config(Selection::Threshold(5.0), PreprocessOptions::default()));
        assert_eq!(same.difference(&record.settings), None);
        let other = Settings::of(&config(Selection::Threshold(5.5), PreprocessOptions::default()));
        assert!(other.difference(&record.settings).unwrap().contains("selection"));
        let fast = Settings::of(&config(
            Selection::Threshold(5.0),
            PreprocessOptions::default().mode(Mode::Fast),
        ));
        assert!(fast.difference(&record.settings).unwrap().contains("preprocess"));

        let keep_top = V1.replace("Threshold(5.0)", "KeepTop(0.1)");
        let record = read_text(&keep_top).unwrap().unwrap();
        assert_eq!(record.settings.selection, SelectionSetting::KeepTop { fraction: 0.1 });
        let first_pass = V1.replace("Threshold(5.0)", "Threshold(inf)").replace("filter", "score");
        let record = read_text(&first_pass).unwrap().unwrap();
        let scores = Settings::scores_for_cut(&config(
            Selection::KeepTop(0.3),
            PreprocessOptions::default(),
        ));
        assert_eq!(scores.difference(&record.settings), None);
    }

    #[test]
    fn records_round_trip_and_newer_ones_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.done.json");
        for threshold in [0.5f32, 5.0, 5.1, 4.9999995, 1e-7, 6.0000005] {
            let record = DoneRecord {
                record_version: RECORD_VERSION,
                aesthete_version: "9.9.9".into(),
                input: "a/x.tar".into(),
                settings: Settings::of(&config(
                    Selection::Threshold(threshold),
                    PreprocessOptions::default(),
                )),
                status: Status::Incomplete,
                samples: 3,
                kept: 1,
                failed: 0,
                error: Some("cut off".into()),
            };
            write(&path, &record).unwrap();
            assert_eq!(read(&path).unwrap().as_ref(), Some(&record), "{threshold}");
        }
        let text = fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("\"rule\": \"threshold\"") && text.contains("\"incomplete\""),
            "{text}"
        );

        let newer = text.replace("\"record_version\": 2", "\"record_version\": 3");
        match read_text(&newer) {
            Err(Error::RecordVersion { version: 3, supported: 2, .. }) => {}
            other => panic!("{other:?}"),
        }
        assert!(read_text("{ not json").unwrap().is_none());
        assert!(read_text(&V1.replace("Threshold(5.0)", "Sometimes")).unwrap().is_none());
    }

    /// Thresholds survive the JSON round trip bit for bit (they are compared exactly).
    #[test]
    fn every_kind_of_f32_threshold_round_trips() {
        let mut bits = 0x9E37_79B9u32;
        for _ in 0..200_000 {
            bits ^= bits << 13;
            bits ^= bits >> 17;
            bits ^= bits << 5;
            let value = f32::from_bits(bits);
            if !value.is_finite() {
                continue;
            }
            let setting = SelectionSetting::Threshold { threshold: value };
            let text = serde_json::to_string(&setting).unwrap();
            let back: SelectionSetting = serde_json::from_str(&text).unwrap();
            assert_eq!(back, setting, "{text}");
        }
    }
}
