//! The streaming engine: read → decode + preprocess → embed + score → write, one thread per
//! stage (two for decoding, taking turns batch by batch over one decode pool) joined by
//! bounded channels, so memory stays flat however many shards there are and decoding
//! overlaps model compute.
use std::ops::ControlFlow;
use std::sync::Mutex;
use std::thread;

use aesthete_preprocess::{Preprocessor, is_image_extension};
use aesthete_shards::Member;
use aesthete_tensor::ImageBatch;
use crossbeam_channel::{Receiver, Sender, bounded};
use rayon::prelude::*;

use crate::outputs::{ShardOutput, Target, Totals};
use crate::plan::ShardJob;
use crate::record::{SampleError, SampleRecord, SampleResult, error_chain};
use crate::{Error, Models, Progress, RunConfig, ShardError};

/// What the reader sends on, in shard order.
enum ReadEvent {
    Sample { shard: usize, key: String, members: Vec<Member> },
    SampleError { shard: usize, key: String, error: SampleError },
    ShardEnd { shard: usize, error: Option<ShardError> },
}

/// One sample on its way through decode, model and writer.
struct Entry {
    shard: usize,
    key: String,
    members: Vec<Member>,
    /// Index of the image member.
    image: Option<usize>,
    state: State,
}

enum State {
    /// Has an image member, not yet preprocessed.
    Pending,
    /// Preprocessed into batch slot `slot`; the score arrives with the model stage.
    Decoded { slot: usize, size: (u32, u32) },
    /// Scored, or failed.
    Done(SampleResult),
}

enum Item {
    Entry(Entry),
    ShardEnd { shard: usize, error: Option<ShardError> },
}

struct PreparedBatch {
    images: ImageBatch,
    items: Vec<Item>,
}

impl AsRef<ImageBatch> for PreparedBatch {
    fn as_ref(&self) -> &ImageBatch {
        &self.images
    }
}

/// Most samples one batch carries, so that samples without images cannot pile up unbounded.
const ITEMS_PER_IMAGE_SLOT: usize = 4;

/// Streams `jobs` through the model and writes their outputs to `target`; returns what was
/// written.
pub(crate) fn stream(
    config: &RunConfig,
    models: &Models,
    progress: &dyn Progress,
    jobs: &[ShardJob],
    target: &Target,
) -> Result<Totals, Error> {
    if jobs.is_empty() {
        return Ok(Totals::default());
    }
    let batch_size = config.batch_size;
    let decode_pool = rayon::ThreadPoolBuilder::new()
        .num_threads(config.decode_threads)
        .thread_name(|i| format!("aesthete-decode-{i}"))
        .build()
        .map_err(|source| Error::ThreadPool { threads: config.decode_threads, source })?;

    let (read_tx, read_rx) = bounded::<ReadEvent>(batch_size * 2);
    // Two preparers, batch i prepared by preparer i % 2 (see `prepare_stage`); four image
    // buffers (`IMAGE_BUFFERS`).
    let (prep_tx, prep_rx): (Vec<_>, Vec<_>) =
        (0..PREPARERS).map(|_| bounded::<PreparedBatch>(1)).unzip();
    let (free_tx, free_rx) = bounded::<ImageBatch>(IMAGE_BUFFERS);
    let (scored_tx, scored_rx) = bounded::<Vec<Item>>(2);
    // In the memory the model's device copies from fastest (page-locked for a GPU), so that
    // decoding writes where the copy to the device reads.
    for _ in 0..IMAGE_BUFFERS {
        free_tx.send(models.clip.image_batch(batch_size)).expect("fresh channel");
    }
    let (turn_tx, turn_rx): (Vec<_>, Vec<_>) = (0..PREPARERS).map(|_| bounded::<()>(1)).unzip();
    turn_tx[0].send(()).expect("fresh channel");
    let preprocessors: Mutex<Vec<Preprocessor>> = Mutex::new(Vec::new());

    thread::scope(|scope| {
        let reader = thread::Builder::new()
            .name("aesthete-read".into())
            .spawn_scoped(scope, || read_stage(config, jobs, read_tx))
            .expect("spawning the reader thread");
        let preparers = prep_tx
            .into_iter()
            .zip(turn_rx)
            .enumerate()
            .map(|(i, (tx, my_turn))| {
                let turns = Turns { mine: my_turn, next: turn_tx[(i + 1) % PREPARERS].clone() };
                let (read_rx, free_rx) = (read_rx.clone(), free_rx.clone());
                let shared = Preparing {
                    config,
                    target,
                    models,
                    pool: &decode_pool,
                    preprocessors: &preprocessors,
                };
                thread::Builder::new()
                    .name(format!("aesthete-prepare-{i}"))
                    .spawn_scoped(scope, move || {
                        prepare_stage(&shared, turns, read_rx, free_rx, tx)
                    })
                    .expect("spawning a decode thread")
            })
            .collect::<Vec<_>>();
        drop((read_rx, free_rx, turn_tx));
        let writer = thread::Builder::new()
            .name("aesthete-write".into())
            .spawn_scoped(scope, || write_stage(jobs, target, progress, scored_rx))
            .expect("spawning the writer thread");

        let model_result = model_stage(config, models, jobs, progress, prep_rx, free_tx, scored_tx);

        reader.join().map_err(|_| Error::StageDied("read"))?;
        for preparer in preparers {
            preparer.join().map_err(|_| Error::StageDied("decode"))?;
        }
        let written = writer.join().map_err(|_| Error::StageDied("write"))?;
        model_result?;
        written
    })
}

fn read_stage(config: &RunConfig, jobs: &[ShardJob], tx: Sender<ReadEvent>) {
    for (shard, job) in jobs.iter().enumerate() {
        let _span = tracing::debug_span!("read", shard = %job.input).entered();
        let mut error = None;
        match job.open(config.stores_ref(), config.read) {
            Err(e) => error = Some(ShardError::Input(error_chain(&e))),
            Ok(reader) => {
                for item in reader {
                    let event = match item {
                        Ok(sample) => {
                            let (key, members) = sample.into_parts();
                            ReadEvent::Sample { shard, key, members }
                        }
                        Err(e) => match e.skipped_sample_key() {
                            Some(key) => ReadEvent::SampleError {
                                shard,
                                key: key.to_string(),
                                error: SampleError::Unreadable(error_chain(&e)),
                            },
                            None => {
                                error = Some(ShardError::Input(error_chain(&e)));
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
            tracing::warn!(shard = %job.input, error = %e, "shard not read whole");
        }
        if tx.send(ReadEvent::ShardEnd { shard, error }).is_err() {
            return;
        }
    }
}

/// What both preparers share.
struct Preparing<'a> {
    config: &'a RunConfig,
    target: &'a Target,
    models: &'a Models,
    pool: &'a rayon::ThreadPool,
    preprocessors: &'a Mutex<Vec<Preprocessor>>,
}

/// A preparer's turn to gather the next batch's samples, handed on to the other preparer.
struct Turns {
    mine: Receiver<()>,
    next: Sender<()>,
}

/// Preparers, taking turns: each gathers a batch's samples, hands the turn on, then decodes
/// them on the shared pool while the other gathers and decodes the next batch, so that a
/// batch's last, slowest images do not leave decode threads idle; the model stage takes the
/// batches from the preparers in turn, in order.
const PREPARERS: usize = 2;

/// Image buffers in flight: one filling in each preparer, one in the model (on a GPU, still
/// computing while the model takes the next), one waiting.
const IMAGE_BUFFERS: usize = PREPARERS + 2;

fn prepare_stage(
    shared: &Preparing<'_>,
    turns: Turns,
    rx: Receiver<ReadEvent>,
    free: Receiver<ImageBatch>,
    tx: Sender<PreparedBatch>,
) {
    let Preparing { config, target, models, pool, preprocessors } = *shared;
    let max_items = config.batch_size * ITEMS_PER_IMAGE_SLOT;
    let keep_members = target.tar;
    loop {
        // The other preparer has left (its turn sender dropped) once the input ended.
        if turns.mine.recv().is_err() {
            return;
        }
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
                    let state = match image {
                        Some(_) => {
                            images += 1;
                            State::Pending
                        }
                        None => State::Done(SampleResult::Failed {
                            size: None,
                            error: SampleError::no_image(&members),
                        }),
                    };
                    Item::Entry(Entry { shard, key, members, image, state })
                }
                ReadEvent::SampleError { shard, key, error } => Item::Entry(Entry {
                    shard,
                    key,
                    members: Vec::new(),
                    image: None,
                    state: State::Done(SampleResult::Failed { size: None, error }),
                }),
                ReadEvent::ShardEnd { shard, error } => Item::ShardEnd { shard, error },
            });
        }
        // The other preparer may have left already; then this batch is the last.
        let _ = turns.next.send(());
        if items.is_empty() {
            return;
        }
        let Ok(mut batch) = free.recv() else { return };
        batch.clear();
        decode_batch(models, config, pool, preprocessors, &mut items, &mut batch);
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
            Item::Entry(e) if matches!(e.state, State::Pending) => Some(e),
            _ => None,
        })
        .collect();
    batch.set_len(pending.len());
    let image_len = batch.image_len();
    let results: Vec<Result<(u32, u32), SampleError>> = pool.install(|| {
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
                        .map_err(|e| SampleError::Image {
                            member: member.name.clone(),
                            reason: error_chain(&e),
                        })
                },
            )
            .collect()
    });
    // Compact: successful images move down into consecutive slots.
    let mut next_slot = 0;
    for (index, (entry, result)) in pending.iter_mut().zip(results).enumerate() {
        entry.state = match result {
            Ok(size) => {
                if index != next_slot {
                    let data = batch.as_mut_slice();
                    data.copy_within(
                        index * image_len..(index + 1) * image_len,
                        next_slot * image_len,
                    );
                }
                next_slot += 1;
                State::Decoded { slot: next_slot - 1, size }
            }
            Err(error) => {
                tracing::debug!(key = %entry.key, %error, "image failed");
                State::Done(SampleResult::Failed { size: None, error })
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
    rx: Vec<Receiver<PreparedBatch>>,
    free: Sender<ImageBatch>,
    tx: Sender<Vec<Item>>,
) -> Result<(), Error> {
    // Batch i comes from preparer i % PREPARERS; the first that has none left ends the run.
    // The model takes the next batch before the one before is back (on a GPU its copy in
    // overlaps that batch's compute), and hands each back in order.
    let in_turn = rx.iter().cycle().map_while(|rx| rx.recv().ok());
    let mut outcome = Ok(());
    models.clip.embed_each(in_turn, |PreparedBatch { images, mut items }, embedded| {
        let mut failed = 0;
        let scored = if images.is_empty() {
            None
        } else {
            let _span = tracing::debug_span!("score", images = images.len()).entered();
            let result = embedded.map_err(box_error).and_then(|embeddings| {
                let scores = models.head.score(&embeddings).map_err(box_error)?;
                Ok((embeddings, scores))
            });
            match result {
                Ok(scored) => Some(scored),
                Err(source) => {
                    let shard = first_shard(&items).map_or_else(
                        || aesthete_store::Location::Local(Default::default()),
                        |s| jobs[s].input.clone(),
                    );
                    outcome = Err(Error::Inference { images: images.len(), shard, source });
                    return ControlFlow::Break(());
                }
            }
        };
        let image_count = images.len();
        let _ = free.send(images);
        for item in &mut items {
            let Item::Entry(entry) = item else { continue };
            match entry.state {
                State::Decoded { slot, size } => {
                    let (embeddings, scores) = scored.as_ref().expect("a batch with images");
                    entry.state = State::Done(SampleResult::Scored {
                        size: Some(size),
                        score: scores[slot],
                        embedding: config.save_embeddings.then(|| embeddings.row(slot).to_vec()),
                    });
                }
                State::Done(SampleResult::Failed { .. }) => failed += 1,
                State::Done(SampleResult::Scored { .. }) => {}
                State::Pending => unreachable!("the decode stage settles every entry"),
            }
        }
        progress.batch_scored(image_count, failed);
        match tx.send(items) {
            Ok(()) => ControlFlow::Continue(()),
            Err(_) => ControlFlow::Break(()),
        }
    });
    outcome
}

fn write_stage(
    jobs: &[ShardJob],
    target: &Target,
    progress: &dyn Progress,
    rx: Receiver<Vec<Item>>,
) -> Result<Totals, Error> {
    let mut totals = Totals::default();
    let mut current: Option<(usize, ShardOutput)> = None;
    for items in rx {
        for item in items {
            match item {
                Item::Entry(entry) => {
                    let shard = entry.shard;
                    if current.as_ref().is_none_or(|(s, _)| *s != shard) {
                        current = Some((shard, ShardOutput::open(target, &jobs[shard])));
                    }
                    let (_, out) = current.as_mut().expect("just opened");
                    let State::Done(result) = entry.state else {
                        unreachable!("the model stage settles every decoded entry")
                    };
                    let record = SampleRecord { key: entry.key, members: entry.members, result };
                    out.push(target, &jobs[shard], record);
                }
                Item::ShardEnd { shard, error } => {
                    let out = match current.take() {
                        Some((s, out)) if s == shard => out,
                        other => {
                            current = other;
                            ShardOutput::open(target, &jobs[shard])
                        }
                    };
                    let (report, scored) = out.finish(target, &jobs[shard], error);
                    totals.add(&report, scored);
                    progress.shard_finished(&report);
                }
            }
        }
    }
    Ok(totals)
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

fn box_error<E: std::error::Error + Send + Sync + 'static>(
    e: E,
) -> Box<dyn std::error::Error + Send + Sync> {
    Box::new(e)
}
