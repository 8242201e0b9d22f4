//! Which shards a run (or this worker of it) processes, where their outputs go, and which are
//! already done.
use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

use aesthete_shards::{ReadOptions, ShardReader};
use aesthete_store::{Location, Stores};

use crate::done::{self, DoneRecord, OutputsSetting, Settings, Status};
use crate::publish::Publish;
use crate::{Error, RunConfig};

/// One input shard and the outputs it maps to.
#[derive(Debug, Clone)]
pub(crate) struct ShardJob {
    /// The input shard.
    pub input: Location,
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

    /// A reader of the input shard, a file or an object streamed as it downloads.
    pub fn open(
        &self,
        stores: &Stores,
        options: ReadOptions,
    ) -> Result<ShardReader<Box<dyn std::io::Read + Send>>, aesthete_store::Error> {
        let reader = stores.open(&self.input)?;
        Ok(ShardReader::new(reader, self.input.to_string(), options))
    }
}

/// The shards of this worker, split into those to run and those already complete.
#[derive(Debug)]
pub(crate) struct Plan {
    pub todo: Vec<ShardJob>,
    pub done: Vec<(ShardJob, DoneRecord)>,
    /// Shards of the whole run (all workers).
    pub total_in_run: usize,
}

/// Lists and partitions the run's shards and checks their outputs in `dir` against
/// `settings`: a shard with a complete record of the same settings is done. With `publish`,
/// the records are the object store's, fetched into `dir` first.
pub(crate) fn plan(
    config: &RunConfig,
    dir: &Path,
    settings: &Settings,
    publish: Option<&Publish>,
) -> Result<Plan, Error> {
    let inputs = config.stores_ref().expand(&config.inputs).map_err(Error::Inputs)?;
    let this = Scope { partition: config.partition, overwrite: config.overwrite };
    plan_paths(inputs, this, output_name, dir, settings, publish)
}

/// Which part of a run this worker does, and whether complete outputs are redone.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Scope {
    pub partition: crate::Partition,
    pub overwrite: bool,
}

/// [`plan`] for a list of input files, whose outputs are named by `name`.
pub(crate) fn plan_paths(
    mut inputs: Vec<Location>,
    scope: Scope,
    name: fn(&Location) -> String,
    dir: &Path,
    settings: &Settings,
    publish: Option<&Publish>,
) -> Result<Plan, Error> {
    inputs.sort();
    inputs.dedup();
    let total_in_run = inputs.len();

    let mut names: BTreeMap<String, Location> = BTreeMap::new();
    let mut jobs = Vec::new();
    let mut others = Vec::new();
    for (position, input) in inputs.into_iter().enumerate() {
        let name = name(&input);
        if let Some(first) = names.get(&name) {
            return Err(Error::OutputNameClash { name, first: first.clone(), second: input });
        }
        names.insert(name.clone(), input.clone());
        let job = ShardJob { input, name };
        if scope.partition.owns(position) { jobs.push(job) } else { others.push(job) }
    }

    refuse_outputs_over_inputs(jobs.iter().chain(&others), dir, settings, publish)?;
    prepare_output_dir(dir)?;
    if !scope.overwrite {
        check_workers(dir, jobs.iter().chain(&others), settings, publish)?;
    }
    let temporaries = temporaries(dir)?;
    let mut plan = Plan { todo: Vec::new(), done: Vec::new(), total_in_run };
    for job in jobs {
        let record_path = job.record_path(dir);
        if let (Some(publish), false) = (publish, scope.overwrite) {
            publish.fetch_record(&job, dir)?;
        }
        let record = if scope.overwrite { None } else { done::read(&record_path)? };
        match record {
            Some(record) if record.status == Status::Complete => {
                if let Some(difference) = settings.difference(&record.settings) {
                    return Err(Error::SettingsChanged { path: record_path, difference });
                }
                plan.done.push((job, record));
            }
            _ => {
                remove_stale_temporaries(dir, &temporaries, &job)?;
                plan.todo.push(job);
            }
        }
    }
    Ok(plan)
}

/// Refuses a split run whose worker count is not the one its first completion record with a
/// count holds (records of every worker's shards are looked at: a worker resubmitted with
/// another count may own none of the shards done so far). Complete and incomplete records
/// alike count: both were written by a worker of the run.
fn check_workers<'a>(
    dir: &Path,
    jobs: impl Iterator<Item = &'a ShardJob>,
    settings: &Settings,
    publish: Option<&Publish>,
) -> Result<(), Error> {
    if settings.workers.is_none() {
        return Ok(());
    }
    for job in jobs {
        if let Some(publish) = publish {
            if !publish.has_record(job) {
                continue;
            }
            publish.fetch_record(job, dir)?;
        }
        let path = job.record_path(dir);
        let Some(record) = done::read(&path)? else { continue };
        if record.settings.workers.is_none() {
            continue;
        }
        return match settings.workers_differ(&record.settings) {
            Some((recorded, now)) => Err(Error::WorkersChanged { path, recorded, now }),
            None => Ok(()),
        };
    }
    Ok(())
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

/// Refuses a run that would write one of its outputs over one of its inputs (`-o` the
/// inputs' own directory or prefix, `--staging-dir` theirs): the input would be replaced
/// while it is read, and a rerun would read the replacement.
fn refuse_outputs_over_inputs<'a>(
    jobs: impl Iterator<Item = &'a ShardJob>,
    dir: &Path,
    settings: &Settings,
    publish: Option<&Publish>,
) -> Result<(), Error> {
    let dir = dir.canonicalize().ok();
    let tar = settings.outputs == OutputsSetting::Filter;
    // Whether a local input's directory is the output directory, resolved once per directory
    // (a run's inputs mostly share a few).
    let mut in_dir: HashMap<&Path, bool> = HashMap::new();
    for job in jobs {
        let in_output_dir = match (&job.input, &dir) {
            (Location::Local(path), Some(dir)) => {
                let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
                let parent = parent.unwrap_or(Path::new("."));
                *in_dir
                    .entry(parent)
                    .or_insert_with(|| parent.canonicalize().is_ok_and(|p| p == *dir))
            }
            _ => false,
        };
        let outputs = ["tar", "parquet", "done.json"]
            .into_iter()
            .filter(|&ext| tar || ext != "tar")
            .map(|ext| format!("{}.{ext}", job.name));
        let over = |output: &String| match &job.input {
            Location::Local(path) => in_output_dir && path.file_name() == Some(output.as_ref()),
            Location::Url(_) => publish.is_some_and(|p| p.location_of(output) == job.input),
        };
        if let Some(output) = outputs.into_iter().find(over) {
            return Err(Error::Config(format!(
                "the output {output} would replace the input {}; choose another output directory",
                job.input
            )));
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

/// `data/shard-000.tar.gz` (or `s3://b/data/shard-000.tar.gz`) → `shard-000`.
pub(crate) fn output_name(input: &Location) -> String {
    let file = input.file_name().map(|name| name.into_owned()).unwrap_or_default();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_names_drop_tar_suffixes() {
        assert_eq!(output_name(&Location::parse("a/b/shard-001.tar")), "shard-001");
        assert_eq!(output_name(&Location::parse("x.TAR.GZ")), "x");
        assert_eq!(output_name(&Location::parse("x.tgz")), "x");
        assert_eq!(output_name(&Location::parse("weird")), "weird");
        assert_eq!(output_name(&Location::parse("s3://b/d/s-7.tar")), "s-7");
    }
}
