//! Resumable, verified downloads: `FILE.part`, HTTP `Range`, sha256, rename.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};

use super::pins::Pin;

/// Transfers tried per file before giving up; each retry resumes where the last one stopped.
const ATTEMPTS: usize = 3;

/// What a pin checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// The sha256 of the whole file.
    Sha256,
    /// The file's length in bytes.
    Size,
    /// The length a server announced (`Content-Length`, or the total of `Content-Range`),
    /// refused before the body is read.
    AnnouncedSize,
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Check::Sha256 => "sha256",
            Check::Size => "size",
            Check::AnnouncedSize => "announced size",
        })
    }
}

/// A download (or copy) that is not what its pin says: refused, and nothing left under the
/// final name or as a part file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinMismatch {
    /// Where the file would have gone.
    pub file: PathBuf,
    /// Where it came from (URL or path).
    pub source: String,
    /// What differed.
    pub check: Check,
    /// The pinned value (hex digest, or bytes).
    pub expected: String,
    /// What arrived.
    pub actual: String,
}

impl fmt::Display for PinMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = if self.check == Check::Sha256 { "" } else { " bytes" };
        write!(
            f,
            "{} mismatch for {}: expected {}{unit}, got {}{unit} (from {}); nothing was kept, \
             check the source or the pins",
            self.check,
            self.file.display(),
            self.expected,
            self.actual,
            self.source
        )
    }
}

impl std::error::Error for PinMismatch {}

/// What a call to `fetch` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// The verified file's sha256.
    pub sha256: String,
    /// Whether anything was transferred (false when a verified file was already there).
    pub transferred: bool,
    /// HTTP requests made.
    pub requests: usize,
}

/// The agent every download uses: no gzip (ranges must mean bytes on disk), redirects
/// followed (the hub redirects to its CDN, keeping the `Range` header).
pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_recv_response(Some(Duration::from_secs(120)))
        .user_agent(concat!("aesthete-xtask/", env!("CARGO_PKG_VERSION")))
        .build()
        .into()
}

/// Where a file comes from.
pub enum Source<'a> {
    /// Downloaded over HTTP(S).
    Url(&'a str),
    /// Copied from a local file.
    File(&'a Path),
}

impl fmt::Display for Source<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Url(url) => f.write_str(url),
            Source::File(path) => write!(f, "{}", path.display()),
        }
    }
}

/// Makes `dest` a verified copy of `source`, doing nothing when it already is one.
///
/// A transfer goes to `dest.part` and resumes from its length with a `Range` request (a
/// server answering 200 instead of 206 is read from the start). A server announcing another
/// length than `pin.size` is refused before its body is read, and no more than `pin.size`
/// bytes are written. The finished file must have `pin.size` bytes and `pin.sha256`;
/// otherwise it is deleted and the error is a [`PinMismatch`].
pub fn fetch(
    agent: &ureq::Agent,
    source: Source<'_>,
    dest: &Path,
    pin: &Pin,
) -> anyhow::Result<Fetched> {
    // Records that earlier versions kept for files they trusted on first use mean nothing now.
    let _ = fs::remove_file(with_suffix(dest, ".sha256"));
    if dest.exists() {
        let size = fs::metadata(dest).with_context(|| format!("cannot read {}", dest.display()))?;
        let actual = if size.len() == pin.size { Some(sha256_file(dest)?) } else { None };
        if actual.as_deref() == Some(pin.sha256.as_str()) {
            return Ok(Fetched { sha256: pin.sha256.clone(), transferred: false, requests: 0 });
        }
        eprintln!(
            "warning: {} is not the pinned file ({} bytes{}); fetching it again",
            dest.display(),
            size.len(),
            actual.map(|a| format!(", sha256 {a}")).unwrap_or_default()
        );
        fs::remove_file(dest).with_context(|| format!("cannot remove {}", dest.display()))?;
    }
    if let Some(parent) = dest.parent() {
        fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }

    let part = with_suffix(dest, ".part");
    let refuse = |check: Check, expected: String, actual: String| {
        let _ = fs::remove_file(&part);
        anyhow::Error::new(PinMismatch {
            file: dest.to_owned(),
            source: source.to_string(),
            check,
            expected,
            actual,
        })
    };
    let requests = match source {
        Source::Url(url) => transfer(agent, url, &part, pin, &refuse)?,
        Source::File(path) => {
            let len = fs::metadata(path)
                .with_context(|| format!("cannot read {}", path.display()))?
                .len();
            if len != pin.size {
                return Err(refuse(Check::Size, pin.size.to_string(), len.to_string()));
            }
            fs::copy(path, &part)
                .with_context(|| format!("cannot copy {} to {}", path.display(), part.display()))?;
            eprintln!("{}: copied from {}", pin.name, path.display());
            0
        }
    };

    let size =
        fs::metadata(&part).with_context(|| format!("cannot read {}", part.display()))?.len();
    if size != pin.size {
        return Err(refuse(Check::Size, pin.size.to_string(), size.to_string()));
    }
    let actual = sha256_file(&part)?;
    if actual != pin.sha256 {
        return Err(refuse(Check::Sha256, pin.sha256.clone(), actual));
    }
    fs::rename(&part, dest)
        .with_context(|| format!("cannot rename {} to {}", part.display(), dest.display()))?;
    Ok(Fetched { sha256: actual, transferred: true, requests })
}

/// Downloads `url` into `part`, resuming and retrying; returns the number of requests.
/// `refuse` deletes the part and makes the error for a length that is not the pin's.
fn transfer(
    agent: &ureq::Agent,
    url: &str,
    part: &Path,
    pin: &Pin,
    refuse: &dyn Fn(Check, String, String) -> anyhow::Error,
) -> anyhow::Result<usize> {
    let mut requests = 0;
    let mut failures = Vec::new();
    while failures.len() < ATTEMPTS {
        let mut offset = fs::metadata(part).map(|m| m.len()).unwrap_or(0);
        if offset >= pin.size {
            // As long as the file or longer: nothing to resume.
            fs::remove_file(part).with_context(|| format!("cannot remove {}", part.display()))?;
            offset = 0;
        }
        let mut request = agent.get(url);
        if offset > 0 {
            request = request.header("Range", format!("bytes={offset}-"));
        }
        requests += 1;
        let response = match request.call() {
            Ok(response) => response,
            Err(ureq::Error::StatusCode(416)) if offset > 0 => {
                fs::remove_file(part)
                    .with_context(|| format!("cannot remove {}", part.display()))?;
                failures.push(format!("range {offset}- not satisfiable; starting over"));
                continue;
            }
            Err(ureq::Error::StatusCode(code)) => bail!("{url}: HTTP status {code}"),
            Err(e) => {
                failures.push(format!("{e}"));
                continue;
            }
        };
        let status = response.status().as_u16();
        let header = |name: &str| {
            response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
        };
        let length = header("content-length").and_then(|v| v.parse::<u64>().ok());
        let start = match status {
            206 => {
                let range =
                    header("content-range").context("206 response without Content-Range")?;
                let (start, total) = parse_content_range(&range)
                    .with_context(|| format!("{url}: bad Content-Range `{range}`"))?;
                if start != offset {
                    bail!("{url}: asked for bytes from {offset}, got a range from {start}");
                }
                if let Some(total) = total.filter(|&t| t != pin.size) {
                    return Err(refuse(
                        Check::AnnouncedSize,
                        pin.size.to_string(),
                        total.to_string(),
                    ));
                }
                start
            }
            200 => {
                if offset > 0 {
                    eprintln!("{}: the server ignored the range request; starting over", pin.name);
                }
                0
            }
            code => bail!("{url}: unexpected HTTP status {code}"),
        };
        if let Some(length) = length.filter(|&l| start + l != pin.size) {
            return Err(refuse(
                Check::AnnouncedSize,
                pin.size.to_string(),
                (start + length).to_string(),
            ));
        }
        let mut file = OpenOptions::new()
            .create(true)
            .write(true)
            .append(start > 0)
            .truncate(start == 0)
            .open(part)
            .with_context(|| format!("cannot open {}", part.display()))?;
        if start > 0 {
            eprintln!("{}: resuming at {start} bytes", pin.name);
        }
        // One byte past the pin tells a body longer than announced from an exact one.
        let mut body = response.into_body().into_reader().take(pin.size - start + 1);
        match copy_with_progress(&mut body, &mut file, start, pin.size, &pin.name) {
            Ok(done) if done > pin.size => {
                return Err(refuse(
                    Check::Size,
                    pin.size.to_string(),
                    format!("more than {}", pin.size),
                ));
            }
            Ok(done) if done == pin.size => {
                file.sync_all().with_context(|| format!("cannot write {}", part.display()))?;
                return Ok(requests);
            }
            Ok(done) => failures.push(format!("transfer ended at {done} of {} bytes", pin.size)),
            Err(CopyError::Write(e)) => {
                return Err(e).with_context(|| format!("cannot write {}", part.display()));
            }
            Err(CopyError::Read(e, done)) => {
                failures.push(format!("transfer interrupted at {done} bytes: {e}"))
            }
        }
        eprintln!("{}: {}", pin.name, failures.last().expect("just pushed"));
    }
    bail!(
        "{url}: {ATTEMPTS} attempts failed ({}); run again to resume from {}",
        failures.join("; "),
        part.display()
    )
}

enum CopyError {
    Read(io::Error, u64),
    Write(io::Error),
}

/// Copies `body` to the end of `file`, printing a line at every 10% when the size is known;
/// returns the file's length.
fn copy_with_progress(
    body: &mut impl Read,
    file: &mut File,
    start: u64,
    total: u64,
    name: &str,
) -> Result<u64, CopyError> {
    let mut buf = vec![0u8; 1 << 16];
    let mut done = start;
    let decile = |n: u64| (total > 0).then(|| n.min(total) * 10 / total);
    let mut shown = decile(done);
    loop {
        let n = match body.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyError::Read(e, done)),
        };
        file.write_all(&buf[..n]).map_err(CopyError::Write)?;
        done += n as u64;
        if decile(done) > shown {
            shown = decile(done);
            eprintln!("{name}: {:>3}% ({} of {})", done * 100 / total, human(done), human(total));
        }
    }
    Ok(done)
}

/// `bytes START-END/TOTAL` → `(START, Some(TOTAL))`; `*` as total → `None`.
fn parse_content_range(value: &str) -> Option<(u64, Option<u64>)> {
    let rest = value.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (start, _end) = range.split_once('-')?;
    let total = if total == "*" { None } else { Some(total.parse().ok()?) };
    Some((start.parse().ok()?, total))
}

fn human(bytes: u64) -> String {
    const MB: f64 = 1e6;
    if bytes as f64 >= 1e9 {
        format!("{:.2} GB", bytes as f64 / 1e9)
    } else if bytes as f64 >= MB {
        format!("{:.1} MB", bytes as f64 / MB)
    } else {
        format!("{bytes} B")
    }
}

/// `path` with `suffix` appended to its file name.
pub fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// The sha256 of a file, lowercase hex.
pub fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let mut file = File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut hasher = Sha256::new();
    io::copy(&mut file, &mut hasher).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range() {
        assert_eq!(parse_content_range("bytes 100-199/200"), Some((100, Some(200))));
        assert_eq!(parse_content_range("bytes 0-9/*"), Some((0, None)));
        assert_eq!(parse_content_range("items 0-9/10"), None);
    }
}
