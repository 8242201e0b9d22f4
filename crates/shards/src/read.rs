use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::iter::FusedIterator;
use std::path::{Path, PathBuf};

use flate2::bufread::GzDecoder;

use crate::Error;
use crate::header::{self, BLOCK};
use crate::sample::{Member, Sample, split_name};

/// Largest GNU long name or pax extended header accepted, in bytes.
const MAX_META_SIZE: u64 = 1 << 20;
/// Capacity of the buffer in front of the source; member data larger than this is read
/// straight into the member's `Vec`.
const BUF_CAPACITY: usize = 128 * 1024;

/// Limits and settings for [`ShardReader`].
///
/// ```
/// use aesthete_shards::ReadOptions;
/// let options = ReadOptions::default().max_member_size(64 << 20);
/// # let _ = options;
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadOptions {
    max_member_size: u64,
    max_sample_size: u64,
}

impl Default for ReadOptions {
    fn default() -> ReadOptions {
        ReadOptions { max_member_size: 256 << 20, max_sample_size: 1 << 30 }
    }
}

impl ReadOptions {
    /// Largest member accepted, in bytes (default 256 MiB). A larger member makes its
    /// sample an [`Error::MemberTooLarge`]; its data is skipped, never allocated.
    pub fn max_member_size(mut self, bytes: u64) -> ReadOptions {
        self.max_member_size = bytes;
        self
    }

    /// Largest sample accepted, counting the lengths of all member names and data
    /// (default 1 GiB). A larger sample is an [`Error::SampleTooLarge`].
    pub fn max_sample_size(mut self, bytes: u64) -> ReadOptions {
        self.max_sample_size = bytes;
        self
    }
}

/// A streaming reader of WebDataset samples from a `.tar` or `.tar.gz` stream.
///
/// Gzip is detected from the first two bytes (`1f 8b`), never from a file name (and
/// concatenated gzip members are read as one stream). Regular files are grouped into
/// [`Sample`]s; directories, links, devices, FIFOs, sparse files and names ending in `/`
/// are skipped. ustar (with its name prefix), GNU long names and pax `path`/`size`
/// records are understood. Input is buffered internally: pass a bare `File` or stdin.
/// The reader is `Send` when `R` is.
///
/// The iterator yields:
/// - `Ok(sample)` for each complete sample;
/// - `Err` for a sample that breaks a limit ([`Error::MemberTooLarge`],
///   [`Error::SampleTooLarge`]) or has a non-UTF-8 name ([`Error::NonUtf8Name`]); its
///   data is skipped and iteration continues;
/// - a final `Err` when the shard is cut off ([`Error::Truncated`]), has a corrupt header
///   ([`Error::CorruptHeader`]) or cannot be read ([`Error::Read`]). The sample in
///   progress at that point is dropped, since it may be missing members, and the
///   iterator then ends.
///
/// A shard must end with the end-of-archive block (as every tar writer does); a stream
/// that stops at a header boundary without it counts as truncated. Nothing after the
/// end-of-archive block is read, except that a gzip stream is read to its end so that
/// its checksum is verified.
pub struct ShardReader<R> {
    source: Source<R>,
    shard: PathBuf,
    options: ReadOptions,
    /// Bytes of the tar stream consumed so far.
    offset: u64,
    /// Header of the next sample's first member, read while finishing the previous sample.
    pending: Option<Entry>,
    sample_offset: u64,
    state: State,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Reading,
    /// The end-of-archive block was read; the gzip trailer may still need checking.
    AtEnd,
    Done,
}

/// A regular file's header, positioned before its data.
struct Entry {
    name: String,
    key_len: usize,
    utf8: bool,
    size: u64,
    /// Offset of the entry's first header block (including extended headers).
    offset: u64,
}

impl Entry {
    fn key(&self) -> &str {
        &self.name[..self.key_len]
    }
}

impl ShardReader<Box<dyn Read + Send>> {
    /// Opens a shard file; gzip is detected from its content.
    pub fn open(path: impl AsRef<Path>, options: ReadOptions) -> Result<Self, Error> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        Ok(ShardReader::new(Box::new(file) as Box<dyn Read + Send>, path, options))
    }
}

impl<R: Read> ShardReader<R> {
    /// Reads shard `shard` (a name used in errors, e.g. its path or `-` for stdin) from
    /// `reader`. Nothing is read until the first call to `next`.
    pub fn new(reader: R, shard: impl Into<PathBuf>, options: ReadOptions) -> Self {
        ShardReader {
            source: Source::Undetected(Some(reader)),
            shard: shard.into(),
            options,
            offset: 0,
            pending: None,
            sample_offset: 0,
            state: State::Reading,
        }
    }

    /// The shard name given at construction.
    pub fn shard(&self) -> &Path {
        &self.shard
    }

    /// Offset in the tar stream of the first header of the sample most recently yielded
    /// (as `Ok` or as a per-sample `Err`). For `.tar.gz` this counts decompressed bytes.
    pub fn sample_offset(&self) -> u64 {
        self.sample_offset
    }

    /// Reads the next sample. The outer `Err` is fatal; the inner one is per sample.
    fn next_sample(&mut self) -> Result<Option<Result<Sample, Error>>, Error> {
        let mut entry = match self.pending.take() {
            Some(entry) => entry,
            None => match self.next_entry()? {
                Some(entry) => entry,
                None => {
                    self.state = State::AtEnd;
                    return Ok(None);
                }
            },
        };
        self.sample_offset = entry.offset;
        let mut sample = Sample::new(entry.key());
        let mut error = None;
        let mut total = 0u64;
        loop {
            if error.is_none() {
                error = self.check(&entry, &sample.key, &mut total);
                if error.is_some() {
                    sample.members = Vec::new();
                }
            }
            if error.is_some() {
                self.skip_data(entry.size)?;
            } else {
                let data = self.read_data(entry.size)?;
                sample.members.push(Member { name: entry.name, data });
            }
            match self.next_entry()? {
                Some(next) if next.key() == sample.key => entry = next,
                Some(next) => {
                    self.pending = Some(next);
                    break;
                }
                None => {
                    self.state = State::AtEnd;
                    break;
                }
            }
        }
        Ok(Some(match error {
            Some(error) => Err(error),
            None => Ok(sample),
        }))
    }

    /// Checks an entry against the limits, updating the sample's running total.
    fn check(&self, entry: &Entry, key: &str, total: &mut u64) -> Option<Error> {
        if !entry.utf8 {
            return Some(Error::NonUtf8Name {
                shard: self.shard.clone(),
                offset: entry.offset,
                name: entry.name.clone(),
            });
        }
        if entry.size > self.options.max_member_size || usize::try_from(entry.size).is_err() {
            return Some(Error::MemberTooLarge {
                shard: self.shard.clone(),
                key: key.to_owned(),
                member: entry.name.clone(),
                size: entry.size,
                limit: self.options.max_member_size,
            });
        }
        *total = total.saturating_add(entry.size).saturating_add(entry.name.len() as u64);
        if *total > self.options.max_sample_size {
            return Some(Error::SampleTooLarge {
                shard: self.shard.clone(),
                key: key.to_owned(),
                limit: self.options.max_sample_size,
            });
        }
        None
    }

    /// Reads headers up to the next regular file, or `None` at the end-of-archive block.
    fn next_entry(&mut self) -> Result<Option<Entry>, Error> {
        let mut long_name: Option<Vec<u8>> = None;
        let mut pax = header::Pax::default();
        let mut first_offset = None;
        let mut block = [0u8; BLOCK];
        loop {
            let offset = self.offset;
            first_offset.get_or_insert(offset);
            self.read_block(&mut block)?;
            if block.iter().all(|&b| b == 0) {
                return Ok(None);
            }
            let h = header::parse(&block).map_err(|e| self.corrupt(offset, e.0))?;
            match h.typeflag {
                b'L' => {
                    let mut name = self.read_meta(h.size, offset)?;
                    if let Some(nul) = name.iter().position(|&b| b == 0) {
                        name.truncate(nul);
                    }
                    long_name = Some(name);
                }
                b'x' => {
                    let data = self.read_meta(h.size, offset)?;
                    header::parse_pax(&data, &mut pax).map_err(|e| self.corrupt(offset, e.0))?;
                }
                b'K' | b'g' => self.skip_data(h.size)?,
                b'0' | 0 | b'7' => {
                    let size = pax.size.unwrap_or(h.size);
                    let name = match (pax.path.take(), long_name.take()) {
                        (Some(path), _) => path,
                        (None, Some(long)) => long,
                        (None, None) => h.name(&block),
                    };
                    if pax.sparse {
                        // A sparse file in a pax format, skipped as old GNU ones are.
                        self.skipped(offset, b'S');
                        self.skip_data(size)?;
                    } else if name.ends_with(b"/") {
                        // Not a file name. Typeflag NUL is an old-style directory, without
                        // data (as Python's tarfile reads it).
                        self.skipped(offset, h.typeflag);
                        if h.typeflag != 0 {
                            self.skip_data(size)?;
                        }
                    } else {
                        return Ok(Some(entry(name, size, first_offset.unwrap_or(offset))));
                    }
                }
                // Links, devices, directories and FIFOs carry no data, whatever their size
                // field says (as Python's tarfile reads them).
                b'1'..=b'6' => self.skipped(offset, h.typeflag),
                b'S' => {
                    // Old GNU sparse file: extension blocks follow while the flag is set.
                    let mut extended = block[482] != 0;
                    while extended {
                        self.read_block(&mut block)?;
                        extended = block[504] != 0;
                    }
                    self.skipped(offset, h.typeflag);
                    self.skip_data(h.size)?;
                }
                _ => {
                    self.skipped(offset, h.typeflag);
                    self.skip_data(pax.size.unwrap_or(h.size))?;
                }
            }
            if !matches!(h.typeflag, b'L' | b'x') {
                long_name = None;
                pax = header::Pax::default();
                first_offset = None;
            }
        }
    }

    fn skipped(&self, offset: u64, typeflag: u8) {
        tracing::debug!(
            shard = %self.shard.display(),
            offset,
            typeflag = %typeflag.escape_ascii(),
            "skipping tar entry that is not a regular file"
        );
    }

    fn corrupt(&self, offset: u64, reason: &'static str) -> Error {
        Error::CorruptHeader { shard: self.shard.clone(), offset, reason }
    }

    fn truncated(&self) -> Error {
        Error::Truncated { shard: self.shard.clone(), offset: self.offset }
    }

    fn read_block(&mut self, block: &mut [u8; BLOCK]) -> Result<(), Error> {
        if self.read_full(block, false)? < BLOCK {
            return Err(self.truncated());
        }
        Ok(())
    }

    /// Reads an extended header's data (GNU long name, pax records) and its padding.
    fn read_meta(&mut self, size: u64, offset: u64) -> Result<Vec<u8>, Error> {
        if size > MAX_META_SIZE {
            return Err(self.corrupt(offset, "extended header over 1 MiB"));
        }
        self.read_data(size)
    }

    /// Reads `size` bytes of member data and the padding after it. The caller has
    /// checked `size` against the limits.
    fn read_data(&mut self, size: u64) -> Result<Vec<u8>, Error> {
        let len = usize::try_from(size).map_err(|_| self.truncated())?;
        let mut data = vec![0u8; len];
        if self.read_full(&mut data, true)? < len {
            return Err(self.truncated());
        }
        self.skip(padding(size))?;
        Ok(data)
    }

    /// Skips `size` bytes of member data and the padding after it, without allocating.
    fn skip_data(&mut self, size: u64) -> Result<(), Error> {
        self.skip(size.saturating_add(padding(size)))
    }

    fn skip(&mut self, n: u64) -> Result<(), Error> {
        let copied = io::copy(&mut (&mut self.source).take(n), &mut io::sink());
        match copied {
            Ok(copied) => {
                self.offset += copied;
                if copied < n { Err(self.truncated()) } else { Ok(()) }
            }
            // `io::copy` does not say how far it got; the offset is where the skip began.
            Err(e) => Err(self.read_error(e)),
        }
    }

    /// Fills `buf` as far as the input allows; returns the bytes read. `large` lets big
    /// reads bypass the internal buffer, saving a copy.
    fn read_full(&mut self, buf: &mut [u8], large: bool) -> Result<usize, Error> {
        let mut filled = 0;
        while filled < buf.len() {
            let rest = &mut buf[filled..];
            let read = if large { self.source.read_large(rest) } else { self.source.read(rest) };
            match read {
                Ok(0) => break,
                Ok(n) => {
                    filled += n;
                    self.offset += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.read_error(e)),
            }
        }
        Ok(filled)
    }

    fn read_error(&self, source: io::Error) -> Error {
        if source.kind() == io::ErrorKind::UnexpectedEof {
            // A gzip stream cut short.
            return self.truncated();
        }
        Error::Read { shard: self.shard.clone(), offset: self.offset, source }
    }

    /// After the end-of-archive block, reads a gzip stream to its end to verify its
    /// checksum.
    fn finish(&mut self) -> Result<(), Error> {
        if let Source::Gzip(_) = self.source {
            match io::copy(&mut self.source, &mut io::sink()) {
                Ok(n) => self.offset += n,
                Err(e) => return Err(self.read_error(e)),
            }
        }
        Ok(())
    }
}

fn entry(name: Vec<u8>, size: u64, offset: u64) -> Entry {
    let (name, utf8) = match String::from_utf8(name) {
        Ok(name) => (name, true),
        Err(e) => (String::from_utf8_lossy(e.as_bytes()).into_owned(), false),
    };
    let key_len = split_name(&name).0.len();
    Entry { name, key_len, utf8, size, offset }
}

fn padding(size: u64) -> u64 {
    (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64
}

impl<R: Read> Iterator for ShardReader<R> {
    type Item = Result<Sample, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.state {
            State::Done => return None,
            State::AtEnd => {
                self.state = State::Done;
                return self.finish().err().map(Err);
            }
            State::Reading => {}
        }
        match self.next_sample() {
            Ok(Some(sample)) => Some(sample),
            Ok(None) => self.next(),
            Err(error) => {
                self.state = State::Done;
                self.pending = None;
                Some(Err(error))
            }
        }
    }
}

impl<R: Read> FusedIterator for ShardReader<R> {}

impl<R> std::fmt::Debug for ShardReader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardReader")
            .field("shard", &self.shard)
            .field("options", &self.options)
            .field("offset", &self.offset)
            .finish_non_exhaustive()
    }
}

/// The byte source: undecided until the first read, then plain or gzip.
enum Source<R> {
    Undetected(Option<R>),
    Plain(BufReader<Prefixed<R>>),
    Gzip(BufReader<GzMembers<Prefixed<R>>>),
}

impl<R: Read> Source<R> {
    /// Reads up to two bytes, the length of the gzip magic number.
    fn detect(reader: &mut R) -> io::Result<([u8; 2], u8)> {
        let mut head = [0; 2];
        let mut len = 0;
        while len < head.len() {
            match reader.read(&mut head[len..]) {
                Ok(0) => break,
                Ok(n) => len += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok((head, len as u8))
    }
}

/// Reads at least this long go straight from the source into the caller's buffer once
/// the internal buffer is drained.
const DIRECT_READ_MIN: usize = 16 * 1024;

impl<R: Read> Source<R> {
    /// Like `read`, but copies straight into `buf` when the internal buffer is empty and
    /// `buf` is large.
    fn read_large(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        fn bypass<R: Read>(reader: &mut BufReader<R>, buf: &mut [u8]) -> io::Result<usize> {
            if reader.buffer().is_empty() && buf.len() >= DIRECT_READ_MIN {
                reader.get_mut().read(buf)
            } else {
                reader.read(buf)
            }
        }
        match self {
            Source::Plain(r) => bypass(r, buf),
            Source::Gzip(r) => bypass(r, buf),
            Source::Undetected(_) => self.read(buf),
        }
    }
}

impl<R: Read> Read for Source<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Source::Plain(r) => r.read(buf),
            Source::Gzip(r) => r.read(buf),
            Source::Undetected(reader) => {
                let Some(mut inner) = reader.take() else {
                    return Err(io::Error::other("shard source lost after a failed read"));
                };
                let (head, len) = Source::detect(&mut inner)?;
                let gzip = len == 2 && head == [0x1f, 0x8b];
                let source = Prefixed { head, pos: 0, len, inner };
                *self = if gzip {
                    Source::Gzip(BufReader::with_capacity(BUF_CAPACITY, GzMembers::new(source)))
                } else {
                    Source::Plain(BufReader::with_capacity(BUF_CAPACITY, source))
                };
                self.read(buf)
            }
        }
    }
}

/// Bytes of compressed input read at a time.
const GZ_INPUT_CAPACITY: usize = 32 * 1024;

/// A gzip stream's members one after another, as `gzip -d` reads them: the data ends where
/// the input does, or where what follows a whole member does not begin as a member does
/// (the zeros some writers pad a file with; a multi-member decoder read them as a broken
/// header and failed a shard whose every byte had arrived).
struct GzMembers<R> {
    /// `None` once the last member has ended.
    member: Option<GzDecoder<BufReader<R>>>,
}

impl<R: Read> GzMembers<R> {
    fn new(input: R) -> Self {
        let input = BufReader::with_capacity(GZ_INPUT_CAPACITY, input);
        GzMembers { member: Some(GzDecoder::new(input)) }
    }
}

impl<R: Read> Read for GzMembers<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while let Some(member) = &mut self.member {
            let n = member.read(buf)?;
            if n > 0 || buf.is_empty() {
                return Ok(n);
            }
            // The member has ended, its checksum checked: another follows where the next
            // byte is gzip's first.
            let mut input = self.member.take().expect("the member just read").into_inner();
            if input.fill_buf()?.first() == Some(&0x1f) {
                self.member = Some(GzDecoder::new(input));
            }
        }
        Ok(0)
    }
}

/// A reader that replays the bytes consumed by format detection first.
struct Prefixed<R> {
    head: [u8; 2],
    pos: u8,
    len: u8,
    inner: R,
}

impl<R: Read> Read for Prefixed<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos < self.len {
            let rest = &self.head[usize::from(self.pos)..usize::from(self.len)];
            let n = rest.len().min(buf.len());
            buf[..n].copy_from_slice(&rest[..n]);
            self.pos += n as u8;
            return Ok(n);
        }
        self.inner.read(buf)
    }
}
