//! Outputs bound for an object store: each shard's files are written whole into a local
//! staging directory of the run's own, as for a local output directory, then uploaded in the
//! order that keeps the guarantees of a local run: `NAME.tar`, `NAME.parquet`, and
//! `NAME.done.json` last, each object appearing whole or not at all. A run resumes from the
//! records the store holds.
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use aesthete_store::{Location, Stores};

use crate::plan::ShardJob;
use crate::record::error_chain;
use crate::{Error, RunConfig, ShardError};

/// Where a run writes its outputs: straight into a local directory, or into a staging
/// directory whose finished files are uploaded to an object-store prefix.
pub(crate) struct OutputPlace {
    /// The local directory shard outputs are written into.
    pub dir: PathBuf,
    /// Where finished outputs go from `dir`, for an object-store output.
    pub publish: Option<Publish>,
    /// Removed when the run ends.
    _staging: Option<tempfile::TempDir>,
}

impl OutputPlace {
    /// The place for `config`'s outputs; for an object-store prefix, a fresh staging directory
    /// and one listing of the completion records the prefix holds.
    pub fn prepare(config: &RunConfig) -> Result<OutputPlace, Error> {
        let prefix = match &config.output_dir {
            Location::Local(dir) => {
                return Ok(OutputPlace { dir: dir.clone(), publish: None, _staging: None });
            }
            url @ Location::Url(_) => url.clone(),
        };
        let base = config.staging.clone().unwrap_or_else(std::env::temp_dir);
        let staging = tempfile::Builder::new()
            .prefix("aesthete-staging-")
            .tempdir_in(&base)
            .map_err(|source| Error::Output { path: base.clone(), source })?;
        let stores = config.stores_arc();
        let records = stores
            .names_in(&prefix)
            .map_err(Error::Store)?
            .into_iter()
            .filter(|name| name.ends_with(".done.json"))
            .collect();
        tracing::debug!(prefix = %prefix, staging = %staging.path().display(), "outputs are staged, then uploaded");
        Ok(OutputPlace {
            dir: staging.path().to_path_buf(),
            publish: Some(Publish { stores, prefix, records: Arc::new(records) }),
            _staging: Some(staging),
        })
    }
}

/// The object-store prefix finished outputs are uploaded to.
#[derive(Clone)]
pub(crate) struct Publish {
    stores: Arc<Stores>,
    prefix: Location,
    /// Names of the completion records the prefix held when the run started.
    records: Arc<HashSet<String>>,
}

impl Publish {
    /// Where the file `name` of the staging directory is uploaded to.
    pub fn location_of(&self, name: &str) -> Location {
        self.prefix.join(name)
    }

    /// Whether the store held `name`'s record when the run started.
    pub fn has_record(&self, job: &ShardJob) -> bool {
        self.records.contains(&record_name(job))
    }

    /// Copies `job`'s completion record from the store into `dir` (the run's fresh staging
    /// directory), where planning reads it, when the store has one.
    pub fn fetch_record(&self, job: &ShardJob, dir: &Path) -> Result<(), Error> {
        let local = job.record_path(dir);
        if !self.has_record(job) {
            return Ok(());
        }
        let remote = self.location_of(&record_name(job));
        match self.stores.read(&remote).map_err(Error::Store)? {
            Some(bytes) => aesthete_atomic::write(&local, &bytes)
                .map_err(|source| Error::Output { path: local, source }),
            None => Ok(()),
        }
    }

    /// Uploads `job`'s finished outputs from `dir`: the tar (when `tar`), the table, then the
    /// completion record; removes the local tar and table, keeping the small record. When an
    /// upload fails the local record goes too, so that the shard is redone.
    pub fn upload(&self, job: &ShardJob, dir: &Path, tar: bool) -> Result<(), ShardError> {
        let mut files = Vec::new();
        if tar {
            files.push(job.tar_path(dir));
        }
        files.push(job.table_path(dir));
        files.push(job.record_path(dir));
        for file in &files {
            let name = file.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            let dest = self.location_of(name);
            if let Err(e) = self.stores.put_file(file, &dest) {
                let _ = std::fs::remove_file(job.record_path(dir));
                return Err(ShardError::Output {
                    path: dest.to_string().into(),
                    reason: error_chain(&e),
                });
            }
        }
        for file in &files[..files.len() - 1] {
            let _ = std::fs::remove_file(file);
        }
        Ok(())
    }
}

fn record_name(job: &ShardJob) -> String {
    format!("{}.done.json", job.name)
}
