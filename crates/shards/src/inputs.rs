use std::fs;
use std::path::{Component, Path, PathBuf};

use crate::Error;

/// Brace expansion stops with an error beyond this many paths per input.
const MAX_EXPANSION: usize = 1_000_000;
/// Brace groups expanded per input, at most.
const MAX_BRACE_GROUPS: usize = 64;

/// Expands user inputs into a sorted, de-duplicated list of shard paths.
///
/// Each input is, in order of precedence:
///
/// | input | meaning |
/// |---|---|
/// | `@shards.lst` | a list file, whatever its name |
/// | `shards.txt`, `shards.list` | an existing file with a `.txt` or `.list` suffix is a list file |
/// | `dir/` | a directory: its `.tar`, `.tar.gz` and `.tgz` files (any case, not hidden, not recursive) |
/// | `data/*.tar`, `**/x-?.tgz` | a glob (`*`, `?`, `[...]`, `**`); `*` does not match a leading dot; matched directories are expanded as above |
/// | `data-{000000..000099}.tar` | brace expansion as WebDataset and Python's `braceexpand` do it: numeric ranges keep zero padding (width of the longer end), `{a,b}` lists, `{0..10..2}` steps, nesting; the results are then read as paths or globs |
/// | anything else | a file, taken as given whatever its suffix |
///
/// A list file holds one input per line; blank lines and lines starting with `#` are
/// skipped; relative lines are relative to the list file's directory; lines may use
/// braces, globs and directories but are never list files themselves.
///
/// A missing file is [`Error::NotFound`]; a glob, directory or list file that yields no
/// shard is [`Error::NoMatch`]; a malformed pattern is [`Error::Pattern`].
///
/// The result is sorted by path component, each compared bytewise (so zero-padded
/// numbers sort numerically), with `.` components removed and duplicates dropped.
/// Symbolic links are not resolved: `a.tar` and `link-to-a.tar` are both kept.
pub fn expand_inputs<S: AsRef<str>>(inputs: &[S]) -> Result<Vec<PathBuf>, Error> {
    let mut out = Vec::new();
    for input in inputs {
        let input = input.as_ref();
        match input.strip_prefix('@') {
            Some(list) => expand_list(Path::new(list), &mut out)?,
            None => expand_input(input, None, true, &mut out)?,
        }
    }
    let mut out: Vec<PathBuf> = out.iter().map(|p| normalize(p)).collect();
    out.sort();
    out.dedup();
    Ok(out)
}

/// Expands one input (braces, then glob, directory, list or file). `base` is the list
/// file's directory for relative inputs read from a list.
fn expand_input(
    input: &str,
    base: Option<&Path>,
    allow_list: bool,
    out: &mut Vec<PathBuf>,
) -> Result<(), Error> {
    let mut expanded = Vec::new();
    expand_braces_into(input, &mut expanded)
        .map_err(|reason| Error::Pattern { pattern: input.to_owned(), reason })?;
    for candidate in expanded {
        let base = base.filter(|_| Path::new(&candidate).is_relative());
        if candidate.contains(['*', '?', '[']) {
            let pattern = match base {
                Some(base) => {
                    let base = base.to_str().ok_or_else(|| Error::Pattern {
                        pattern: candidate.clone(),
                        reason: "list file directory is not utf-8".into(),
                    })?;
                    format!("{}/{candidate}", glob::Pattern::escape(base))
                }
                None => candidate.clone(),
            };
            expand_glob(&pattern, out)?;
            continue;
        }
        let path = match base {
            Some(base) => base.join(&candidate),
            None => PathBuf::from(&candidate),
        };
        let metadata = fs::metadata(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::NotFound { path: path.clone() },
            _ => Error::io(&path, e),
        })?;
        if metadata.is_dir() {
            expand_dir(&path, out)?;
        } else if allow_list && is_list(&path) {
            expand_list(&path, out)?;
        } else {
            out.push(path);
        }
    }
    Ok(())
}

fn is_list(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("txt") || e.eq_ignore_ascii_case("list"))
}

fn expand_list(list: &Path, out: &mut Vec<PathBuf>) -> Result<(), Error> {
    let text = fs::read_to_string(list).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::NotFound { path: list.to_owned() },
        _ => Error::io(list, e),
    })?;
    let base = list.parent().filter(|p| !p.as_os_str().is_empty());
    let before = out.len();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        expand_input(line, base, false, out)?;
    }
    if out.len() == before {
        return Err(Error::NoMatch { pattern: format!("@{}", list.display()) });
    }
    Ok(())
}

fn expand_glob(pattern: &str, out: &mut Vec<PathBuf>) -> Result<(), Error> {
    let options = glob::MatchOptions { require_literal_leading_dot: true, ..Default::default() };
    let paths = glob::glob_with(pattern, options)
        .map_err(|e| Error::Pattern { pattern: pattern.to_owned(), reason: e.msg.to_owned() })?;
    let before = out.len();
    for path in paths {
        let path = path.map_err(|e| {
            let path = e.path().to_owned();
            Error::io(path, e.into())
        })?;
        if path.is_dir() {
            expand_dir_into(&path, out)?;
        } else {
            out.push(path);
        }
    }
    if out.len() == before {
        return Err(Error::NoMatch { pattern: pattern.to_owned() });
    }
    Ok(())
}

fn expand_dir(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), Error> {
    let before = out.len();
    expand_dir_into(dir, out)?;
    if out.len() == before {
        return Err(Error::NoMatch { pattern: dir.display().to_string() });
    }
    Ok(())
}

/// Adds a directory's shard files (not recursive, not hidden).
fn expand_dir_into(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), Error> {
    for entry in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let path = entry.path();
        if is_shard_name(name) && !name.starts_with('.') && path.is_file() {
            out.push(path);
        }
    }
    Ok(())
}

fn normalize(path: &Path) -> PathBuf {
    let normal: PathBuf = path.components().filter(|c| *c != Component::CurDir).collect();
    if normal.as_os_str().is_empty() { PathBuf::from(".") } else { normal }
}

/// Brace expansion in the manner of Python's `braceexpand`, as [`expand_inputs`] does it:
/// numeric ranges keep zero padding, `{a,b}` lists, `{0..10..2}` steps, nesting. A brace
/// without a matching close, or whose content is neither a list nor a range, is kept
/// literally. For inputs that are not local paths (object-store URLs).
///
/// ```
/// let names = aesthete_shards::expand_braces("s3://b/x-{08..10}.tar")?;
/// assert_eq!(names, ["s3://b/x-08.tar", "s3://b/x-09.tar", "s3://b/x-10.tar"]);
/// # Ok::<(), aesthete_shards::Error>(())
/// ```
pub fn expand_braces(pattern: &str) -> Result<Vec<String>, Error> {
    let mut out = Vec::new();
    expand_braces_into(pattern, &mut out)
        .map_err(|reason| Error::Pattern { pattern: pattern.to_owned(), reason })?;
    Ok(out)
}

/// Whether a file name ends in a shard suffix (`.tar`, `.tar.gz`, `.tgz`, any case): what a
/// directory or listing yields as shards.
pub fn is_shard_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    [".tar", ".tar.gz", ".tgz"].iter().any(|s| lower.ends_with(s))
}

fn expand_braces_into(pattern: &str, out: &mut Vec<String>) -> Result<(), String> {
    expand_braces_at(pattern, out, 0)
}

fn expand_braces_at(pattern: &str, out: &mut Vec<String>, depth: usize) -> Result<(), String> {
    if depth > MAX_BRACE_GROUPS {
        return Err(format!("more than {MAX_BRACE_GROUPS} brace groups"));
    }
    let bytes = pattern.as_bytes();
    let mut search = 0;
    while let Some(open) = pattern[search..].find('{').map(|i| i + search) {
        let Some(close) = matching_close(bytes, open) else { break };
        let content = &pattern[open + 1..close];
        let parts = split_top_level(content);
        let alternatives = if parts.len() > 1 {
            parts.into_iter().map(str::to_owned).collect()
        } else if let Some(range) = range(content)? {
            range
        } else {
            search = open + 1;
            continue;
        };
        let (prefix, suffix) = (&pattern[..open], &pattern[close + 1..]);
        for alternative in alternatives {
            expand_braces_at(&format!("{prefix}{alternative}{suffix}"), out, depth + 1)?;
            if out.len() > MAX_EXPANSION {
                return Err(format!("expands to more than {MAX_EXPANSION} paths"));
            }
        }
        return Ok(());
    }
    out.push(pattern.to_owned());
    Ok(())
}

fn matching_close(bytes: &[u8], open: usize) -> Option<usize> {
    let mut depth = 0usize;
    for (i, &b) in bytes.iter().enumerate().skip(open) {
        match b {
            b'{' => depth += 1,
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

fn split_top_level(content: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0usize, 0);
    for (i, b) in content.bytes().enumerate() {
        match b {
            b'{' => depth += 1,
            b'}' => depth = depth.saturating_sub(1),
            b',' if depth == 0 => {
                parts.push(&content[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&content[start..]);
    parts
}

/// `start..end` or `start..end..step` over integers, zero-padded to the longer end when
/// either end has a leading zero. `Ok(None)` when `content` is not a range.
fn range(content: &str) -> Result<Option<Vec<String>>, String> {
    let ends: Vec<&str> = content.split("..").collect();
    let is_int = |s: &str| {
        let digits = s.strip_prefix('-').unwrap_or(s);
        !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
    };
    if !(2..=3).contains(&ends.len()) || !ends.iter().all(|s| is_int(s)) {
        return Ok(None);
    }
    let parse = |s: &str| s.parse::<i64>().map_err(|_| format!("range bound {s} is too large"));
    let (start, end) = (parse(ends[0])?, parse(ends[1])?);
    let step = match ends.get(2) {
        Some(s) => parse(s)?.unsigned_abs().max(1),
        None => 1,
    };
    let padded = ends[..2]
        .iter()
        .any(|s| *s != "0" && *s != "-0" && (s.starts_with('0') || s.starts_with("-0")));
    let width = if padded { ends[0].len().max(ends[1].len()) } else { 0 };
    let count = (start.abs_diff(end) / step).checked_add(1);
    let Some(count) = count.filter(|&count| count <= MAX_EXPANSION as u64) else {
        return Err(format!("range {content} has more than {MAX_EXPANSION} values"));
    };
    let values = (0..count).map(|i| {
        let offset = (i * step) as i128;
        let value = if start <= end { start as i128 + offset } else { start as i128 - offset };
        format!("{value:0width$}")
    });
    Ok(Some(values.collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn braces(pattern: &str) -> Vec<String> {
        let mut out = Vec::new();
        expand_braces_into(pattern, &mut out).unwrap();
        out
    }

    #[test]
    fn brace_expansion() {
        assert_eq!(braces("d-{000..002}.tar"), ["d-000.tar", "d-001.tar", "d-002.tar"]);
        assert_eq!(braces("{8..11}"), ["8", "9", "10", "11"]);
        assert_eq!(braces("{08..10}"), ["08", "09", "10"]);
        assert_eq!(braces("{3..1}"), ["3", "2", "1"]);
        assert_eq!(braces("{0..6..3}"), ["0", "3", "6"]);
        assert_eq!(braces("{-1..1}"), ["-1", "0", "1"]);
        assert_eq!(braces("{a,b}/{1..2}"), ["a/1", "a/2", "b/1", "b/2"]);
        assert_eq!(braces("x{a,{b,c}d}"), ["xa", "xbd", "xcd"]);
        assert_eq!(braces("{a}{b,c}"), ["{a}b", "{a}c"]);
        assert_eq!(braces("{a..b}"), ["{a..b}"]);
        assert_eq!(braces("no{brace"), ["no{brace"]);
        assert_eq!(braces("}{"), ["}{"]);
        let mut out = Vec::new();
        assert!(expand_braces_into("{0..9999999}", &mut out).is_err());
        // The whole i64 span: its count overflows u64 by one.
        let whole = "{-9223372036854775808..9223372036854775807}";
        assert!(expand_braces_into(whole, &mut Vec::new()).is_err());
        assert!(expand_braces_into("{0..999}{0..9999}", &mut Vec::new()).is_err());
        assert!(expand_braces_into(&"{a,b}".repeat(100), &mut Vec::new()).is_err());
        assert_eq!(braces(&"{a}".repeat(1000)).len(), 1);
    }
}
