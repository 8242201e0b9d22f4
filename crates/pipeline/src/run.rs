//! The streaming engine: read → decode + preprocess → embed + score → write, one thread per
//! stage joined by bounded channels, so memory stays flat however many shards there are and
//! decoding overlaps model compute.
use std::sync::Mutex;
use std::thread;
use std::time::Instant;

use aesthete_preprocess::{Preprocessor, is_image_extension};
use aesthete_shards::{Member, ShardReader, ShardWriter};
use aesthete_tensor::ImageBatch;
use crossbeam_channel::{Receiver, Sender, bounded};
use rayon::prelude::*;

use crate::plan::{self, CompletionRecord, OutputSettings, ShardJob};
use crate::table::{Row, TableBuilder};
use crate::{Error, Models, Outputs, Progress, RunConfig, RunSummary, Selection, ShardReport};

/// What the reader sends on, in shard order.
enum ReadEvent {
    Sample { shard: usize, key: String, members: Vec<Member> },
    SampleError { shard: usize, key: String, error: String },
    ShardEnd { shard: usize, error: Option<String> },
}

/// One sample on its way through decode, model and writer.
pub(crate) struct Entry {
    pub shard: usize,
    pub key: String,
    pub members: Vec<Member>,
    pub image: Option<usize>,
    pub outcome: Outcome,
}

pub(crate) enum Outcome {
    /// Has an image member, not yet preprocessed.
    Pending,
    /// Preprocessed into batch slot `slot`; the score arrives with the model stage.
    Decoded {
        slot: usize,
        size: (u32, u32),
    },
    Scored {
        size: (u32, u32),
        score: f32,
        embedding: Option<Vec<f32>>,
    },
    Failed {
        size: Option<(u32, u32)>,
        error: String,
    },
}

enum Item {
    Entry(Entry),
    ShardEnd { shard: usize, error: Option<String> },
}

struct PreparedBatch {
    images: ImageBatch,
    items: Vec<Item>,
}

/// Most samples one batch carries, so that samples without images cannot pile up unbounded.
const ITEMS_PER_IMAGE_SLOT: usize = 4;

/// Runs the pipeline described by `config` with `models`.
pub fn run(
    config: &RunConfig,
    models: &Models,
    progress: &dyn Progress,
) -> Result<RunSummary, Error> {
    let started = Instant::now();
    let plan = plan::plan(config)?;
    tracing::info!(
        todo = plan.todo.len(),
        skipped = plan.done.len(),
        run_shards = plan.total_in_run,
        worker = config.partition.index(),
        workers = config.partition.count(),
        "planned"
    );
    progress.started(plan.todo.len(), plan.done.len());
    let mut summary = RunSummary {
        shards: plan.todo.len() + plan.done.len(),
        skipped: plan.done.len(),
        ..RunSummary::default()
    };
    match config.selection {
        Selection::Threshold(threshold) => {
            let keep = move |score: f32| score >= threshold;
            stream(config, models, progress, &plan.todo, &keep, &mut summary)?;
        }
        Selection::KeepTop(fraction) => {
            crate::keep_top::run(config, models, progress, &plan, fraction, &mut summary)?;
        }
    }
    summary.elapsed = started.elapsed();
    Ok(summary)
}

/// Streams `jobs` through the stages, writing their outputs with `keep` deciding the tar.
pub(crate) fn stream(
    config: &RunConfig,
    models: &Models,
    progress: &dyn Progress,
    jobs: &[ShardJob],
    keep: &(dyn Fn(f32) -> bool + Sync),
    summary: &mut RunSummary,
) -> Result<(), Error> {
    if jobs.is_empty() {
        return Ok(());
    }
    let batch_size = config.batch_size;
    let image_size = models.preprocess.image_size();
    let embedding_dim = config.save_embeddings.then(|| models.clip.embedding_dim());
    let decode_pool = rayon::ThreadPoolBuilder::new()
        .num_threads(config.decode_threads)
        .thread_name(|i| format!("aesthete-decode-{i}"))
        .build()
        .map_err(|source| Error::ThreadPool { threads: config.decode_threads, source })?;

    let (read_tx, read_rx) = bounded::<ReadEvent>(batch_size * 2);
    let (prep_tx, prep_rx) = bounded::<PreparedBatch>(1);
    let (free_tx, free_rx) = bounded::<ImageBatch>(3);
    let (scored_tx, scored_rx) = bounded::<Vec<Item>>(2);
    for _ in 0..3 {
        free_tx.send(ImageBatch::with_capacity(batch_size, image_size)).expect("fresh channel");
    }

    thread::scope(|scope| {
        let reader = thread::Builder::new()
            .name("aesthete-read".into())
            .spawn_scoped(scope, || read_stage(config, jobs, read_tx))
            .expect("spawning the reader thread");
        let preparer = thread::Builder::new()
            .name("aesthete-prepare".into())
            .spawn_scoped(scope, || {
                prepare_stage(config, models, &decode_pool, read_rx, free_rx, prep_tx)
            })
            .expect("spawning the decode thread");
        let writer = thread::Builder::new()
            .name("aesthete-write".into())
            .spawn_scoped(scope, || {
                write_stage(config, jobs, embedding_dim, keep, progress, scored_rx)
            })
            .expect("spawning the writer thread");

        let model_result = model_stage(config, models, jobs, progress, prep_rx, free_tx, scored_tx);

        reader.join().map_err(|_| Error::StageDied("read"))?;
        preparer.join().map_err(|_| Error::StageDied("decode"))?;
        let written = writer.join().map_err(|_| Error::StageDied("write"))?;
        model_result?;
        let written = written?;
        summary.processed += written.processed;
        summary.samples += written.samples;
        summary.images += written.images;
        summary.kept += written.kept;
        summary.failed_samples += written.failed_samples;
        summary.failed_shards.extend(written.failed_shards);
        Ok(())
    })
}

fn read_stage(config: &RunConfig, jobs: &[ShardJob], tx: Sender<ReadEvent>) {
    for (shard, job) in jobs.iter().enumerate() {
        let _span = tracing::debug_span!("read", shard = %job.input.display()).entered();
        let mut error = None;
        match ShardReader::open(&job.input, config.read) {
            Err(e) => error = Some(error_chain(&e)),
            Ok(reader) => {
                for item in reader {
                    let event = match item {
                        Ok(sample) => {
                            ReadEvent::Sample { shard, key: sample.key, members: sample.members }
                        }
                        Err(e) => match e.skipped_sample_key() {
                            Some(key) => ReadEvent::SampleError {
                                shard,
                                key: key.to_string(),
                                error: error_chain(&e),
                            },
                            None => {
                                error = Some(error_chain(&e));
                                break;
                            }
                        },
                    };
                    if tx.send(event).is_err() {
                        return;
                    }
                }
            }
        }
        if let Some(e) = &error {
            tracing::warn!(shard = %job.input.display(), error = %e, "shard not read whole");
        }
        if tx.send(ReadEvent::ShardEnd { shard, error }).is_err() {
            return;
        }
    }
}

fn prepare_stage(
    config: &RunConfig,
    models: &Models,
    pool: &rayon::ThreadPool,
    rx: Receiver<ReadEvent>,
    free: Receiver<ImageBatch>,
    tx: Sender<PreparedBatch>,
) {
    let preprocessors: Mutex<Vec<Preprocessor>> = Mutex::new(Vec::new());
    let max_items = config.batch_size * ITEMS_PER_IMAGE_SLOT;
    let keep_members = config.outputs == Outputs::FilterAndScore;
    loop {
        let mut items = Vec::new();
        let mut images = 0;
        let mut closed = false;
        while images < config.batch_size && items.len() < max_items {
            let Ok(event) = rx.recv() else {
                closed = true;
                break;
            };
            items.push(match event {
                ReadEvent::Sample { shard, key, members } => {
                    let image = members.iter().position(|m| is_image_extension(m.extension()));
                    let outcome = match image {
                        Some(_) => {
                            images += 1;
                            Outcome::Pending
                        }
                        None => Outcome::Failed { size: None, error: no_image_error(&members) },
                    };
                    Item::Entry(Entry { shard, key, members, image, outcome })
                }
                ReadEvent::SampleError { shard, key, error } => Item::Entry(Entry {
                    shard,
                    key,
                    members: Vec::new(),
                    image: None,
                    outcome: Outcome::Failed { size: None, error },
                }),
                ReadEvent::ShardEnd { shard, error } => Item::ShardEnd { shard, error },
            });
        }
        if items.is_empty() {
            return;
        }
        let Ok(mut batch) = free.recv() else { return };
        batch.clear();
        decode_batch(models, config, pool, &preprocessors, &mut items, &mut batch);
        if !keep_members {
            for item in &mut items {
                if let Item::Entry(entry) = item {
                    entry.members = Vec::new();
                }
            }
        }
        if tx.send(PreparedBatch { images: batch, items }).is_err() || closed {
            return;
        }
    }
}

/// Decodes the batch's images in parallel into consecutive slots of `batch`; failed images
/// give their slot up.
fn decode_batch(
    models: &Models,
    config: &RunConfig,
    pool: &rayon::ThreadPool,
    preprocessors: &Mutex<Vec<Preprocessor>>,
    items: &mut [Item],
    batch: &mut ImageBatch,
) {
    let mut pending: Vec<&mut Entry> = items
        .iter_mut()
        .filter_map(|item| match item {
            Item::Entry(e) if matches!(e.outcome, Outcome::Pending) => Some(e),
            _ => None,
        })
        .collect();
    batch.set_len(pending.len());
    let image_len = batch.image_len();
    let results: Vec<Result<(u32, u32), String>> = pool.install(|| {
        batch
            .as_mut_slice()
            .par_chunks_mut(image_len)
            .zip(pending.par_iter())
            .map_init(
                || PooledPreprocessor::take(preprocessors, models, config),
                |pre, (slot, entry)| {
                    let member = &entry.members[entry.image.expect("entries with images")];
                    pre.get()
                        .preprocess(&member.data, slot)
                        .map(|info| (info.width, info.height))
                        .map_err(|e| format!("{}: {}", member.name, error_chain(&e)))
                },
            )
            .collect()
    });
    // Compact: successful images move down into consecutive slots.
    let mut next_slot = 0;
    for (index, (entry, result)) in pending.iter_mut().zip(results).enumerate() {
        entry.outcome = match result {
            Ok(size) => {
                if index != next_slot {
                    let data = batch.as_mut_slice();
                    data.copy_within(
                        index * image_len..(index + 1) * image_len,
                        next_slot * image_len,
                    );
                }
                next_slot += 1;
                Outcome::Decoded { slot: next_slot - 1, size }
            }
            Err(error) => {
                tracing::debug!(key = %entry.key, %error, "image failed");
                Outcome::Failed { size: None, error }
            }
        };
    }
    batch.set_len(next_slot);
}

/// A preprocessor borrowed from a shared pool for one rayon job, returned on drop, so that
/// scratch buffers are reused across images and batches.
struct PooledPreprocessor<'a> {
    pool: &'a Mutex<Vec<Preprocessor>>,
    inner: Option<Preprocessor>,
}

impl<'a> PooledPreprocessor<'a> {
    fn take(pool: &'a Mutex<Vec<Preprocessor>>, models: &Models, config: &RunConfig) -> Self {
        let reused = pool.lock().expect("preprocessor pool").pop();
        let inner = reused.unwrap_or_else(|| {
            Preprocessor::new(models.preprocess.clone(), config.preprocess)
                .expect("the preprocessing config was validated when the models were loaded")
        });
        PooledPreprocessor { pool, inner: Some(inner) }
    }

    fn get(&mut self) -> &mut Preprocessor {
        self.inner.as_mut().expect("present until drop")
    }
}

impl Drop for PooledPreprocessor<'_> {
    fn drop(&mut self) {
        if let (Some(inner), Ok(mut pool)) = (self.inner.take(), self.pool.lock()) {
            pool.push(inner);
        }
    }
}

fn model_stage(
    config: &RunConfig,
    models: &Models,
    jobs: &[ShardJob],
    progress: &dyn Progress,
    rx: Receiver<PreparedBatch>,
    free: Sender<ImageBatch>,
    tx: Sender<Vec<Item>>,
) -> Result<(), Error> {
    for PreparedBatch { images, mut items } in rx {
        let mut failed = 0;
        let scored = if images.is_empty() {
            None
        } else {
            let _span = tracing::debug_span!("score", images = images.len()).entered();
            let result = models.clip.embed(&images).map_err(box_error).and_then(|embeddings| {
                let scores = models.head.score(&embeddings).map_err(box_error)?;
                Ok((embeddings, scores))
            });
            match result {
                Ok(scored) => Some(scored),
                Err(source) => {
                    let shard = first_shard(&items)
                        .map_or_else(Default::default, |s| jobs[s].input.clone());
                    return Err(Error::Inference { images: images.len(), shard, source });
                }
            }
        };
        let image_count = images.len();
        let _ = free.send(images);
        for item in &mut items {
            let Item::Entry(entry) = item else { continue };
            match entry.outcome {
                Outcome::Decoded { slot, size } => {
                    let (embeddings, scores) = scored.as_ref().expect("a batch with images");
                    entry.outcome = Outcome::Scored {
                        size,
                        score: scores[slot],
                        embedding: config.save_embeddings.then(|| embeddings.row(slot).to_vec()),
                    };
                }
                Outcome::Failed { .. } => failed += 1,
                Outcome::Scored { .. } => {}
                Outcome::Pending => unreachable!("the decode stage settles every entry"),
            }
        }
        progress.batch_scored(image_count, failed);
        if tx.send(items).is_err() {
            break;
        }
    }
    Ok(())
}

#[derive(Default)]
pub(crate) struct Written {
    pub processed: usize,
    pub samples: u64,
    pub images: u64,
    pub kept: u64,
    pub failed_samples: u64,
    pub failed_shards: Vec<ShardReport>,
}

/// Outputs of the shard being written.
pub(crate) struct ShardOutput {
    tar: Option<ShardWriter>,
    table: TableBuilder,
    report: ShardReport,
    write_error: Option<String>,
}

fn write_stage(
    config: &RunConfig,
    jobs: &[ShardJob],
    embedding_dim: Option<usize>,
    keep: &(dyn Fn(f32) -> bool + Sync),
    progress: &dyn Progress,
    rx: Receiver<Vec<Item>>,
) -> Result<Written, Error> {
    let mut written = Written::default();
    let mut current: Option<(usize, ShardOutput)> = None;
    let settings = OutputSettings::of(config);
    for items in rx {
        for item in items {
            match item {
                Item::Entry(entry) => {
                    let shard = entry.shard;
                    if current.as_ref().is_none_or(|(s, _)| *s != shard) {
                        current = Some((shard, open_output(config, &jobs[shard], embedding_dim)));
                    }
                    let (_, out) = current.as_mut().expect("just opened");
                    write_entry(out, entry, keep, &mut written);
                }
                Item::ShardEnd { shard, error } => {
                    let out = match current.take() {
                        Some((s, out)) if s == shard => out,
                        other => {
                            current = other;
                            open_output(config, &jobs[shard], embedding_dim)
                        }
                    };
                    let report = finish_output(config, &jobs[shard], &settings, out, error);
                    written.processed += 1;
                    if report.error.is_some() {
                        written.failed_shards.push(report.clone());
                    }
                    progress.shard_finished(&report);
                }
            }
        }
    }
    Ok(written)
}

pub(crate) fn open_output(
    config: &RunConfig,
    job: &ShardJob,
    embedding_dim: Option<usize>,
) -> ShardOutput {
    let mut write_error = None;
    let tar = match config.outputs {
        Outputs::ScoresOnly => None,
        Outputs::FilterAndScore => match ShardWriter::create(job.tar_path(&config.output_dir)) {
            Ok(w) => Some(w),
            Err(e) => {
                write_error = Some(error_chain(&e));
                None
            }
        },
    };
    ShardOutput {
        tar,
        table: TableBuilder::new(embedding_dim),
        report: ShardReport {
            input: job.input.clone(),
            samples: 0,
            kept: 0,
            failed: 0,
            error: None,
        },
        write_error,
    }
}

pub(crate) fn write_entry(
    out: &mut ShardOutput,
    entry: Entry,
    keep: &(dyn Fn(f32) -> bool + Sync),
    written: &mut Written,
) {
    let (score, size, error, embedding) = match &entry.outcome {
        Outcome::Scored { size, score, embedding } => {
            (Some(*score), Some(*size), None, embedding.as_deref())
        }
        Outcome::Failed { size, error } => (None, *size, Some(error.as_str()), None),
        Outcome::Decoded { .. } | Outcome::Pending => {
            unreachable!("the model stage scores every decoded entry")
        }
    };
    let kept = score.is_some_and(keep);
    out.table.push(&Row { key: &entry.key, score, kept, error, size, embedding });
    out.report.samples += 1;
    written.samples += 1;
    if score.is_some() {
        written.images += 1;
    }
    if error.is_some() {
        out.report.failed += 1;
        written.failed_samples += 1;
    }
    if kept {
        out.report.kept += 1;
        written.kept += 1;
        if let (Some(tar), None) = (&mut out.tar, &out.write_error) {
            let sample = aesthete_shards::Sample { key: entry.key, members: entry.members };
            if let Err(e) = tar.write_sample(&sample) {
                out.write_error = Some(error_chain(&e));
            }
        }
    }
}

pub(crate) fn finish_output(
    config: &RunConfig,
    job: &ShardJob,
    settings: &OutputSettings,
    mut out: ShardOutput,
    read_error: Option<String>,
) -> ShardReport {
    let dir = &config.output_dir;
    let mut write_error = out.write_error.take();
    if write_error.is_none()
        && let Some(tar) = out.tar.take()
        && let Err(e) = tar.commit()
    {
        write_error = Some(error_chain(&e));
    }
    if write_error.is_none()
        && let Err(e) = out.table.write(&job.table_path(dir))
    {
        write_error = Some(format!("writing {}: {e}", job.table_path(dir).display()));
    }
    let mut report = out.report;
    report.error = match (read_error, &write_error) {
        (_, Some(w)) => Some(w.clone()),
        (r, None) => r,
    };
    if write_error.is_none() {
        let record = CompletionRecord {
            aesthete_version: env!("CARGO_PKG_VERSION").to_string(),
            input: job.input.clone(),
            settings: settings.clone(),
            status: if report.error.is_none() {
                CompletionRecord::COMPLETE.into()
            } else {
                CompletionRecord::INCOMPLETE.into()
            },
            samples: report.samples,
            kept: report.kept,
            failed: report.failed,
            error: report.error.clone(),
        };
        if let Err(e) = plan::write_record(&job.record_path(dir), &record) {
            report.error = Some(format!("writing {}: {e}", job.record_path(dir).display()));
        }
    }
    if let Some(error) = &report.error {
        tracing::warn!(shard = %job.input.display(), %error, "shard failed");
    } else {
        tracing::info!(shard = %job.input.display(), samples = report.samples, kept = report.kept, failed = report.failed, "shard done");
    }
    report
}

fn first_shard(items: &[Item]) -> Option<usize> {
    items
        .iter()
        .map(|item| match item {
            Item::Entry(e) => e.shard,
            Item::ShardEnd { shard, .. } => *shard,
        })
        .next()
}

fn no_image_error(members: &[Member]) -> String {
    let names: Vec<&str> = members.iter().map(|m| m.extension()).collect();
    format!("no image member (members: {})", names.join(", "))
}

fn box_error<E: std::error::Error + Send + Sync + 'static>(
    e: E,
) -> Box<dyn std::error::Error + Send + Sync> {
    Box::new(e)
}

/// `error: cause: cause`, the way `{:#}` prints an anyhow chain.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
