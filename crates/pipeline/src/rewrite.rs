//! Final outputs from stored score rows, with no model: keep-top's second pass and
//! `filter --scores DIR` ([`crate::refilter`]).
//!
//! The input shard is read again; each sample takes the row of the same key, in the same
//! order, from the shard's stored table; its members go to the final tar when the row's score
//! is kept. A table whose keys are not the shard's fails the shard, naming the first key
//! where they part.
use std::path::Path;

use crate::outputs::{ShardOutput, Target};
use crate::plan::ShardJob;
use crate::record::{SampleRecord, error_chain};
use crate::table::{self, StoredRow};
use crate::{Error, RunConfig, ShardError, ShardReport};

/// The lowest score among the best `fraction` of the scored rows of `tables` (`+inf` when
/// there are none): what `--keep-top` keeps is the rows scoring at least this.
pub(crate) fn cut_over<'a>(
    tables: impl IntoIterator<Item = &'a Path>,
    fraction: f32,
) -> Result<f32, Error> {
    let mut scores = Vec::new();
    for path in tables {
        let table = table::read(path)?;
        scores.extend(table.rows.iter().filter_map(|row| row.result.score()));
    }
    let cut = cut_for(&mut scores, fraction);
    tracing::info!(fraction, cut, scored = scores.len(), "keep-top cut");
    Ok(cut)
}

/// The lowest score among the best `fraction` of `scores` (`+inf` when there are none).
fn cut_for(scores: &mut [f32], fraction: f32) -> f32 {
    if scores.is_empty() {
        return f32::INFINITY;
    }
    scores.sort_by(|a, b| b.total_cmp(a));
    // The fraction as the decimal it was written as (`0.1`, not the f32's 0.100000001, which
    // kept 101 of 1,000), and a hair below the product, so that 5 × 0.4 (0.4 is not exact in
    // binary either) keeps 2, not 3.
    let fraction: f64 = fraction.to_string().parse().unwrap_or(f64::from(fraction));
    let keep = ((scores.len() as f64) * fraction - 1e-6).ceil().max(1.0) as usize;
    scores[keep.min(scores.len()) - 1]
}

/// Writes `job`'s final outputs into `target` from its input shard's members and `rows`, read
/// from `table`. A shard whose keys differ from the table's fails with an error naming both
/// files, the first differing key and `remedy`; what came before is kept, as for a shard cut
/// short. Returns the shard's report and how many rows had a score.
pub(crate) fn rewrite(
    config: &RunConfig,
    target: &Target,
    job: &ShardJob,
    table: &Path,
    rows: Vec<StoredRow>,
    remedy: &str,
) -> (ShardReport, u64) {
    let mut out = ShardOutput::open(target, job);
    let mut rows = rows.into_iter();
    let differ = |detail: String| {
        ShardError::Input(format!(
            "{} does not hold the samples of {}: {detail}; {remedy}",
            table.display(),
            job.input
        ))
    };
    let mut read_error = None;
    match job.open(config.stores_ref(), config.read) {
        Err(e) => read_error = Some(ShardError::Input(error_chain(&e))),
        Ok(reader) => {
            for item in reader {
                let (key, members) = match item {
                    Ok(sample) => sample.into_parts(),
                    Err(e) => match e.skipped_sample_key() {
                        Some(key) => (key.to_string(), Vec::new()),
                        None => {
                            read_error = Some(ShardError::Input(error_chain(&e)));
                            break;
                        }
                    },
                };
                let row = match rows.next() {
                    Some(row) if row.key == key => row,
                    Some(row) => {
                        let detail =
                            format!("the shard has sample {key} where the table has {}", row.key);
                        read_error = Some(differ(detail));
                        break;
                    }
                    None => {
                        read_error = Some(differ(format!("the table has no row for sample {key}")));
                        break;
                    }
                };
                out.push(target, job, SampleRecord { key, members, result: row.result });
            }
            if read_error.is_none()
                && let Some(extra) = rows.next()
            {
                let detail =
                    format!("the table has a row {} after the shard's last sample", extra.key);
                read_error = Some(differ(detail));
            }
        }
    }
    out.finish(target, job, read_error)
}

/// The report of a shard that failed before any of its outputs were written.
pub(crate) fn failed(job: &ShardJob, error: ShardError) -> ShardReport {
    tracing::warn!(shard = %job.input, %error, "shard failed");
    ShardReport { input: job.input.clone(), samples: 0, kept: 0, failed: 0, error: Some(error) }
}

#[cfg(test)]
mod tests {
    use super::cut_for;

    #[test]
    fn cut_keeps_the_best_fraction() {
        let mut scores = vec![1.0, 5.0, 3.0, 4.0, 2.0];
        assert_eq!(cut_for(&mut scores, 0.4), 4.0);
        assert_eq!(cut_for(&mut scores, 1.0), 1.0);
        assert_eq!(cut_for(&mut scores, 0.01), 5.0);
        assert_eq!(cut_for(&mut [], 0.5), f32::INFINITY);
        // Round fractions of round counts keep exactly that many.
        for (n, fraction, kept) in [
            (1000, 0.1, 100),
            (10_000, 0.1, 1000),
            (1000, 0.2, 200),
            (2000, 0.05, 100),
            (1_000_000, 0.3, 300_000),
        ] {
            let mut scores: Vec<f32> = (0..n).map(|i| i as f32).collect();
            let cut = cut_for(&mut scores, fraction);
            assert_eq!(scores.iter().filter(|&&s| s >= cut).count(), kept, "{fraction} of {n}");
        }
    }
}
