use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use aesthete_atomic::{AtomicFile, Pending, WritebackFile};
use flate2::write::GzEncoder;

use crate::Error;
use crate::sample::{Sample, split_name};

/// Names this long or longer are rejected: readers cap GNU long names and pax headers.
const MAX_NAME_LEN: usize = 1 << 20;
/// Names this long or longer are stored with a GNU long-name entry, as GNU tar does.
const NAME_FIELD_LEN: usize = 100;

/// Writes samples to a new shard, atomically.
///
/// Samples go to a temporary file (`.{name}.XXXXXX.tmp`) in the destination directory.
/// [`commit`](ShardWriter::commit) flushes it, syncs it to disk and renames it to the
/// final path, replacing any file there; a writer dropped without committing removes its
/// temporary file and leaves nothing under the final name.
///
/// The output is deterministic: the same samples give byte-identical shards. Members are
/// regular files with mtime 0, mode `0o644`, uid and gid 0 and empty user and group
/// names, in GNU tar format; names of 100 bytes or more use a GNU long-name entry.
/// A final path ending in `.gz` or `.tgz` (any case) is gzip-compressed.
pub struct ShardWriter {
    final_path: PathBuf,
    /// `None` once an earlier write failed.
    out: Option<Output>,
    pending: Pending,
    last_key: Option<String>,
    samples: u64,
}

enum Output {
    Plain(BufWriter<WritebackFile>),
    Gzip(GzEncoder<BufWriter<WritebackFile>>),
}

impl Output {
    fn writer(&mut self) -> &mut dyn Write {
        match self {
            Output::Plain(w) => w,
            Output::Gzip(w) => w,
        }
    }

    fn finish(self) -> io::Result<File> {
        let buffered = match self {
            Output::Plain(w) => w,
            Output::Gzip(w) => w.finish()?,
        };
        Ok(buffered.into_inner().map_err(io::IntoInnerError::into_error)?.into_inner())
    }
}

impl ShardWriter {
    /// Starts a shard that [`commit`](ShardWriter::commit) will move to `final_path`.
    pub fn create(final_path: impl AsRef<Path>) -> Result<ShardWriter, Error> {
        let final_path = final_path.as_ref();
        let (file, pending) =
            AtomicFile::create(final_path).map_err(|e| Error::io(final_path, e))?.into_parts();
        let buffered = BufWriter::with_capacity(256 * 1024, WritebackFile::new(file));
        let lower = final_path.to_string_lossy().to_ascii_lowercase();
        let out = if lower.ends_with(".gz") || lower.ends_with(".tgz") {
            Output::Gzip(GzEncoder::new(buffered, flate2::Compression::default()))
        } else {
            Output::Plain(buffered)
        };
        tracing::debug!(
            shard = %final_path.display(),
            temp = %pending.temp_path().display(),
            "writing shard"
        );
        Ok(ShardWriter {
            final_path: final_path.to_owned(),
            out: Some(out),
            pending,
            last_key: None,
            samples: 0,
        })
    }

    /// The path the shard will have once committed.
    pub fn path(&self) -> &Path {
        &self.final_path
    }

    /// Samples written so far.
    pub fn samples(&self) -> u64 {
        self.samples
    }

    /// Appends a sample's members in order.
    ///
    /// Every member name must be safe ([`Error::UnsafeName`]) and have the sample's key
    /// ([`Error::KeyMismatch`]), and the key must differ from the previous sample's
    /// ([`Error::RepeatedKey`]), so that a reader groups the members back into the same
    /// sample. These checks happen before anything is written: a refused sample leaves
    /// the shard as it was. A sample without members writes nothing. After an I/O error
    /// the shard can no longer be committed.
    pub fn write_sample(&mut self, sample: &Sample) -> Result<(), Error> {
        for member in &sample.members {
            check_name(&member.name)?;
            if split_name(&member.name).0 != sample.key {
                return Err(Error::KeyMismatch {
                    key: sample.key.clone(),
                    member: member.name.clone(),
                });
            }
        }
        if sample.members.is_empty() {
            return Ok(());
        }
        if self.last_key.as_deref() == Some(sample.key.as_str()) {
            return Err(Error::RepeatedKey { key: sample.key.clone() });
        }
        let Some(out) = self.out.as_mut() else {
            return Err(Error::WriterFailed { path: self.final_path.clone() });
        };
        let written =
            sample.members.iter().try_for_each(|m| write_member(out.writer(), &m.name, &m.data));
        if let Err(e) = written {
            self.out = None;
            return Err(Error::io(&self.final_path, e));
        }
        self.last_key = Some(sample.key.clone());
        self.samples += 1;
        Ok(())
    }

    /// Finishes the archive, syncs it and renames it to the final path.
    pub fn commit(mut self) -> Result<(), Error> {
        let Some(mut out) = self.out.take() else {
            return Err(Error::WriterFailed { path: self.final_path.clone() });
        };
        let io = |e| Error::io(&self.final_path, e);
        out.writer().write_all(&[0; 2 * 512]).map_err(io)?;
        let file = out.finish().map_err(io)?;
        let ShardWriter { final_path, pending, samples, .. } = self;
        pending.commit(file).map_err(|e| Error::io(&final_path, e))?;
        tracing::debug!(shard = %final_path.display(), samples, "committed shard");
        Ok(())
    }
}

impl std::fmt::Debug for ShardWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardWriter")
            .field("final_path", &self.final_path)
            .field("samples", &self.samples)
            .finish_non_exhaustive()
    }
}

fn check_name(name: &str) -> Result<(), Error> {
    let reason = if name.is_empty() {
        "empty name"
    } else if name.starts_with('/') {
        "absolute path"
    } else if name.split('/').any(|c| c == "..") {
        "contains a `..` component"
    } else if name.ends_with('/') {
        "names a directory"
    } else if name.contains('\0') {
        "contains a nul byte"
    } else if name.len() >= MAX_NAME_LEN {
        "longer than 1 MiB"
    } else {
        return Ok(());
    };
    Err(Error::UnsafeName { name: name.to_owned(), reason })
}

fn write_member(out: &mut dyn Write, name: &str, data: &[u8]) -> io::Result<()> {
    let name = name.as_bytes();
    if name.len() >= NAME_FIELD_LEN {
        let mut long = header(name.len() as u64 + 1, tar::EntryType::GNULongName);
        set_name(&mut long, b"././@LongLink");
        out.write_all(long.as_bytes())?;
        out.write_all(name)?;
        out.write_all(&[0])?;
        pad(out, name.len() as u64 + 1)?;
    }
    let mut h = header(data.len() as u64, tar::EntryType::Regular);
    set_name(&mut h, &name[..name.len().min(NAME_FIELD_LEN)]);
    out.write_all(h.as_bytes())?;
    out.write_all(data)?;
    pad(out, data.len() as u64)
}

fn header(size: u64, kind: tar::EntryType) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_size(size);
    h.set_entry_type(kind);
    h
}

/// Stores `name` (at most 100 bytes) verbatim and updates the checksum.
fn set_name(h: &mut tar::Header, name: &[u8]) {
    h.as_old_mut().name[..name.len()].copy_from_slice(name);
    h.set_cksum();
}

fn pad(out: &mut dyn Write, size: u64) -> io::Result<()> {
    let rem = (size % 512) as usize;
    if rem == 0 { Ok(()) } else { out.write_all(&[0; 512][rem..]) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a.jpg", "a/b/c.d.e", "./x.jpg", "a..b.jpg", "...jpg", &"x".repeat(300)] {
            check_name(ok).unwrap();
        }
        for bad in ["", "/etc/passwd", "../x.jpg", "a/../b.jpg", "a/..", "dir/", "a\0.jpg"] {
            assert!(matches!(check_name(bad), Err(Error::UnsafeName { .. })), "{bad:?}");
        }
    }
}
