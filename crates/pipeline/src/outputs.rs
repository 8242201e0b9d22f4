//! A shard's outputs: `NAME.tar` with the kept samples, `NAME.parquet` with every sample's
//! row, and `NAME.done.json`, written last.
use std::path::PathBuf;

use aesthete_shards::ShardWriter;

use crate::done::{self, DoneRecord, Settings, Status};
use crate::plan::ShardJob;
use crate::record::{SampleRecord, SampleResult, error_chain};
use crate::table::{Row, TableBuilder};
use crate::{RunSummary, ShardError, ShardReport};

/// Where and how a pass writes its shards' outputs.
pub(crate) struct Target {
    pub dir: PathBuf,
    /// Whether `NAME.tar` with the kept samples is written.
    pub tar: bool,
    pub keep: Keep,
    /// What the completion records hold.
    pub settings: Settings,
    /// The width of the table's `embedding` column, when there is one.
    pub embedding_dim: Option<usize>,
    /// Rows per record batch when tables are written as they fill (`rescore`, whose files can
    /// hold millions of rows); `None` writes each table whole when its shard ends.
    pub stream_rows: Option<usize>,
    /// Where finished outputs go from `dir` (an object-store output; `dir` is then staging).
    pub publish: Option<crate::publish::Publish>,
}

/// Which scored samples are kept.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Keep {
    /// `score >= cut`.
    AtLeast(f32),
    /// None: score tables for a cut made later.
    Nothing,
}

impl Keep {
    fn keeps(self, score: Option<f32>) -> bool {
        match (self, score) {
            (Keep::AtLeast(cut), Some(score)) => score >= cut,
            _ => false,
        }
    }
}

/// The outputs of one shard, filled sample by sample.
pub(crate) struct ShardOutput {
    tar: Option<ShardWriter>,
    table: TableBuilder,
    report: ShardReport,
    scored: u64,
    write_error: Option<ShardError>,
}

impl ShardOutput {
    pub fn open(target: &Target, job: &ShardJob) -> Self {
        let mut write_error = None;
        let tar = if target.tar {
            let path = job.tar_path(&target.dir);
            match ShardWriter::create(&path) {
                Ok(w) => Some(w),
                Err(e) => {
                    write_error = Some(ShardError::Output { path, reason: error_chain(&e) });
                    None
                }
            }
        } else {
            None
        };
        ShardOutput {
            tar,
            table: match target.stream_rows {
                Some(rows) => TableBuilder::new(target.embedding_dim)
                    .streaming(&job.table_path(&target.dir), rows),
                None => TableBuilder::new(target.embedding_dim),
            },
            report: ShardReport {
                input: job.input.clone(),
                samples: 0,
                kept: 0,
                failed: 0,
                error: None,
            },
            scored: 0,
            write_error,
        }
    }

    /// Adds `record`'s row, and its members to the tar when it is kept.
    pub fn push(&mut self, target: &Target, job: &ShardJob, record: SampleRecord) {
        let kept = self.push_row(target, &record.key, &record.result);
        if kept && let (Some(tar), None) = (&mut self.tar, &self.write_error) {
            let sample = aesthete_shards::Sample::from_parts(record.key, record.members);
            if let Err(e) = tar.write_sample(&sample) {
                let path = job.tar_path(&target.dir);
                self.write_error = Some(ShardError::Output { path, reason: error_chain(&e) });
            }
        }
    }

    /// Adds the table row of sample `key` and counts it; returns whether it is kept.
    pub fn push_row(&mut self, target: &Target, key: &str, result: &SampleResult) -> bool {
        let score = result.score();
        let kept = target.keep.keeps(score);
        let error;
        let row = match result {
            SampleResult::Scored { size, score, embedding } => Row {
                key,
                score: Some(*score),
                kept,
                error: None,
                size: *size,
                embedding: embedding.as_deref(),
            },
            SampleResult::Failed { size, error: failure } => {
                error = failure.to_string();
                Row { key, score: None, kept, error: Some(&error), size: *size, embedding: None }
            }
        };
        self.table.push(&row);
        self.report.samples += 1;
        match score {
            Some(_) => self.scored += 1,
            None => self.report.failed += 1,
        }
        if kept {
            self.report.kept += 1;
        }
        kept
    }

    /// Commits the tar and the table, then writes the completion record: `complete` when
    /// there is no `read_error`. Returns the shard's report and how many samples it scored.
    pub fn finish(
        mut self,
        target: &Target,
        job: &ShardJob,
        read_error: Option<ShardError>,
    ) -> (ShardReport, u64) {
        let dir = &target.dir;
        let mut write_error = self.write_error.take();
        if write_error.is_none()
            && let Some(tar) = self.tar.take()
            && let Err(e) = tar.commit()
        {
            write_error =
                Some(ShardError::Output { path: job.tar_path(dir), reason: error_chain(&e) });
        }
        if write_error.is_none()
            && let Err(e) = self.table.write(&job.table_path(dir))
        {
            write_error =
                Some(ShardError::Output { path: job.table_path(dir), reason: e.to_string() });
        }
        let mut report = self.report;
        let written = write_error.is_none();
        report.error = write_error.or(read_error);
        if written {
            let record = DoneRecord {
                record_version: done::RECORD_VERSION,
                aesthete_version: env!("CARGO_PKG_VERSION").to_string(),
                input: job.input.to_string(),
                settings: target.settings.clone(),
                status: if report.error.is_none() { Status::Complete } else { Status::Incomplete },
                samples: report.samples,
                kept: report.kept,
                failed: report.failed,
                error: report.error.as_ref().map(ToString::to_string),
            };
            if let Err(e) = done::write(&job.record_path(dir), &record) {
                report.error =
                    Some(ShardError::Output { path: job.record_path(dir), reason: e.to_string() });
            } else if let Some(publish) = &target.publish
                && let Err(error) = publish.upload(job, dir, target.tar)
            {
                report.error = Some(error);
            }
        }
        if let Some(error) = &report.error {
            tracing::warn!(shard = %job.input, %error, "shard failed");
        } else {
            tracing::info!(shard = %job.input, samples = report.samples, kept = report.kept, failed = report.failed, "shard done");
        }
        (report, self.scored)
    }
}

/// What a pass wrote, added up shard by shard.
#[derive(Default)]
pub(crate) struct Totals {
    processed: usize,
    samples: u64,
    scored: u64,
    kept: u64,
    failed_samples: u64,
    failed_shards: Vec<ShardReport>,
}

impl Totals {
    pub fn add(&mut self, report: &ShardReport, scored: u64) {
        self.processed += 1;
        self.samples += report.samples;
        self.scored += scored;
        self.kept += report.kept;
        self.failed_samples += report.failed;
        if report.error.is_some() {
            self.failed_shards.push(report.clone());
        }
    }

    /// Adds these totals to `summary`, for a pass that ran the model.
    pub fn add_to(self, summary: &mut RunSummary) {
        summary.images += self.scored;
        self.add_rewritten_to(summary);
    }

    /// Adds these totals to `summary` but for the images, for a pass that rewrote outputs from
    /// scores made before (keep-top's second pass).
    pub fn add_rewritten_to(self, summary: &mut RunSummary) {
        summary.processed += self.processed;
        summary.samples += self.samples;
        summary.kept += self.kept;
        summary.failed_samples += self.failed_samples;
        summary.failed_shards.extend(self.failed_shards);
    }

    pub fn scored(&self) -> u64 {
        self.scored
    }

    pub fn failed_shards(&self) -> &[ShardReport] {
        &self.failed_shards
    }
}
