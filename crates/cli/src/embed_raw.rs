//! `aesthete embed-raw`: preprocessed pixels in, embeddings out, no shards; the GPU device
//! check (`cargo xtask gpu-bundle`) uses it for parity against PyTorch and for model-only
//! throughput. Hidden from `--help`.
use std::io::Write;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::Instant;

use aesthete_clip::{ClipVision, DType};
use anyhow::{Context, bail};
use clap::Args;

use crate::args::DTypeArg;

#[derive(Debug, Args)]
pub struct EmbedRawArgs {
    /// The CLIP model directory.
    #[arg(long, value_name = "DIR")]
    pub clip: PathBuf,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[arg(long, value_enum, default_value_t = DTypeArg::F32)]
    pub dtype: DTypeArg,
    /// Preprocessed images as little-endian f32, (n, 3, size, size) in a row.
    #[arg(long, value_name = "FILE")]
    pub pixels: PathBuf,
    /// Where the normalized embeddings go, little-endian f32 (n, projection_dim).
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// An aesthetic head (safetensors) to score the embeddings with.
    #[arg(long, value_name = "FILE", requires = "scores")]
    pub head: Option<PathBuf>,
    /// Where the scores go, little-endian f32, one per image.
    #[arg(long, value_name = "FILE", requires = "head")]
    pub scores: Option<PathBuf>,
    /// Images per model call.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Also time this many calls of --batch-size images (cycling through the pixels) after
    /// one warm-up call, and print the rate as one JSON line.
    #[arg(long, default_value_t = 0)]
    pub repeat: usize,
}

pub fn run(args: EmbedRawArgs) -> anyhow::Result<()> {
    let device = aesthete_clip::parse_device(&args.device)
        .with_context(|| format!("--device {}", args.device))?;
    let dtype: DType = args.dtype.into();
    let clip = ClipVision::load(&args.clip, &device, dtype)
        .with_context(|| format!("loading {}", args.clip.display()))?;
    let bytes = std::fs::read(&args.pixels)
        .with_context(|| format!("reading {}", args.pixels.display()))?;
    let size = clip.image_size();
    let image = 3 * size * size;
    if bytes.is_empty() || bytes.len() % (4 * image) != 0 {
        bail!(
            "{}: {} bytes is not a whole number of {size}×{size} f32 images",
            args.pixels.display(),
            bytes.len()
        );
    }
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let pixels: Vec<f32> =
        bytes.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
    let n = pixels.len() / image;
    let batch_of = |first: usize, len: usize| {
        let mut batch = clip.image_batch(len);
        for i in 0..len {
            let at = (first + i) % n;
            batch.push_slot().copy_from_slice(&pixels[at * image..(at + 1) * image]);
        }
        batch
    };
    let head = match &args.head {
        Some(path) => Some(
            aesthete_head::AestheticHead::load(path)
                .with_context(|| format!("loading {}", path.display()))?,
        ),
        None => None,
    };
    if args.output.is_some() || head.is_some() {
        let (mut out, mut scores) = (Vec::new(), Vec::new());
        for first in (0..n).step_by(args.batch_size) {
            let embeddings = clip.embed(&batch_of(first, args.batch_size.min(n - first)))?;
            out.extend(embeddings.as_slice().iter().flat_map(|v| v.to_le_bytes()));
            if let Some(head) = &head {
                scores.extend(head.score(&embeddings)?.iter().flat_map(|v| v.to_le_bytes()));
            }
        }
        let write = |path: &PathBuf, bytes: Vec<u8>| {
            std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
        };
        if let Some(output) = &args.output {
            write(output, out)?;
        }
        if let Some(path) = &args.scores {
            write(path, scores)?;
        }
    }
    if args.repeat > 0 {
        let batch = batch_of(0, args.batch_size);
        clip.embed(&batch)?;
        // As the pipeline runs the model: on CUDA each call's copy in overlaps the call before.
        let mut failed = None;
        let start = Instant::now();
        clip.embed_each(std::iter::repeat_n(&batch, args.repeat), |_, embedded| match embedded {
            Ok(_) => ControlFlow::Continue(()),
            Err(e) => {
                failed = Some(e);
                ControlFlow::Break(())
            }
        });
        let seconds = start.elapsed().as_secs_f64();
        if let Some(e) = failed {
            return Err(e.into());
        }
        let rate = (args.repeat * args.batch_size) as f64 / seconds;
        writeln!(
            std::io::stdout(),
            "{{\"device\": \"{device}\", \"dtype\": \"{}\", \"batch\": {}, \"calls\": {}, \"seconds\": {seconds:.4}, \"images_per_second\": {rate:.2}}}",
            dtype.as_str(),
            args.batch_size,
            args.repeat
        )?;
    }
    Ok(())
}
