//! Progress on the terminal: a bar when stderr is a terminal, log lines otherwise.
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aesthete_pipeline::{Progress, ShardReport};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How often progress is logged when no bar is drawn.
const LOG_EVERY: Duration = Duration::from_secs(30);

pub struct TerminalProgress {
    bar: Option<ProgressBar>,
    started: Instant,
    images: AtomicU64,
    failed: AtomicU64,
    shards_done: AtomicU64,
    shards_todo: AtomicU64,
    last_log: Mutex<Instant>,
}

impl TerminalProgress {
    /// A bar if `draw` and stderr is a terminal, log lines otherwise.
    pub fn new(draw: bool) -> Self {
        use std::io::IsTerminal;
        let bar = (draw && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(
                    "{bar:30} {pos}/{len} shards  {msg}  [{elapsed_precise}, ETA {eta}]",
                )
                .expect("valid progress template"),
            );
            bar
        });
        TerminalProgress {
            bar,
            started: Instant::now(),
            images: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            shards_done: AtomicU64::new(0),
            shards_todo: AtomicU64::new(0),
            last_log: Mutex::new(Instant::now()),
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }

    fn rate(&self) -> f64 {
        let secs = self.started.elapsed().as_secs_f64();
        if secs > 0.0 { self.images.load(Ordering::Relaxed) as f64 / secs } else { 0.0 }
    }

    fn message(&self) -> String {
        format!(
            "{} images, {} failed, {:.1} images/s",
            self.images.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            self.rate()
        )
    }
}

impl Progress for TerminalProgress {
    fn started(&self, todo: usize, skipped: usize) {
        self.shards_todo.store(todo as u64, Ordering::Relaxed);
        if let Some(bar) = &self.bar {
            bar.set_length(todo as u64);
        }
        if skipped > 0 {
            tracing::info!("{skipped} shards already complete; {todo} to do");
        }
    }

    fn batch_scored(&self, images: usize, failed: usize) {
        self.images.fetch_add(images as u64, Ordering::Relaxed);
        self.failed.fetch_add(failed as u64, Ordering::Relaxed);
        match &self.bar {
            Some(bar) => bar.set_message(self.message()),
            None => {
                let mut last = self.last_log.lock().expect("progress clock");
                if last.elapsed() >= LOG_EVERY {
                    *last = Instant::now();
                    tracing::info!(
                        "{}/{} shards, {}",
                        self.shards_done.load(Ordering::Relaxed),
                        self.shards_todo.load(Ordering::Relaxed),
                        self.message()
                    );
                }
            }
        }
    }

    fn shard_finished(&self, report: &ShardReport) {
        self.shards_done.fetch_add(1, Ordering::Relaxed);
        if let Some(bar) = &self.bar {
            bar.inc(1);
        }
        if let Some(error) = &report.error {
            let line = format!("shard {}: {error}", report.input);
            match &self.bar {
                Some(bar) => bar.suspend(|| tracing::warn!("{line}")),
                None => tracing::warn!("{line}"),
            }
        }
    }
}
