//! Where a shard or an output lives: a local path or an object-store URL.
use std::borrow::Cow;
use std::fmt;
use std::path::{Path, PathBuf};

/// URL schemes read as object stores; anything else is a local path.
const SCHEMES: [&str; 10] = [
    "s3://", "s3a://", "gs://", "az://", "adl://", "azure://", "abfs://", "abfss://", "http://",
    "https://",
];

/// A local path or an object-store URL (`s3://bucket/key`, `gs://`, `az://`, `abfs://`,
/// `https://`).
///
/// ```
/// use aesthete_store::Location;
///
/// let shard = Location::parse("s3://laion/part-{0..9}/00001.tar");
/// assert!(shard.is_remote());
/// assert_eq!(shard.file_name().as_deref(), Some("00001.tar"));
/// let out = Location::parse("out").join("00001.parquet");
/// assert_eq!(out.as_local(), Some(std::path::Path::new("out/00001.parquet")));
/// ```
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Location {
    /// A path on this machine.
    Local(PathBuf),
    /// An object URL, as given (its scheme lowercased).
    Url(String),
}

impl Location {
    /// Reads `text` as a URL when it starts with an object-store scheme, else as a path.
    pub fn parse(text: &str) -> Location {
        let lower = text.get(..8).unwrap_or(text).to_ascii_lowercase();
        match SCHEMES.iter().find(|s| lower.starts_with(*s)) {
            Some(scheme) => Location::Url(format!("{scheme}{}", &text[scheme.len()..])),
            None => Location::Local(PathBuf::from(text)),
        }
    }

    /// Whether `text` names an object-store URL.
    pub fn is_url(text: &str) -> bool {
        matches!(Location::parse(text), Location::Url(_))
    }

    /// Whether this is an object-store URL.
    pub fn is_remote(&self) -> bool {
        matches!(self, Location::Url(_))
    }

    /// The local path, when this is one.
    pub fn as_local(&self) -> Option<&Path> {
        match self {
            Location::Local(path) => Some(path),
            Location::Url(_) => None,
        }
    }

    /// The last component: the file or object name (a URL's percent-escapes decoded:
    /// `s3://b/a%231.tar` is `a#1.tar`).
    pub fn file_name(&self) -> Option<Cow<'_, str>> {
        match self {
            Location::Local(path) => path.file_name()?.to_str().map(Cow::Borrowed),
            Location::Url(url) => {
                let name = url.rsplit('/').next()?;
                if name.is_empty() || url.ends_with("://") {
                    return None;
                }
                Some(percent_encoding::percent_decode_str(name).decode_utf8_lossy())
            }
        }
    }

    /// `name` (a file or object name as it is, not URL-escaped) inside this directory or
    /// prefix.
    pub fn join(&self, name: &str) -> Location {
        match self {
            Location::Local(path) => Location::Local(path.join(name)),
            Location::Url(url) => {
                let sep = if url.ends_with('/') { "" } else { "/" };
                Location::Url(format!("{url}{sep}{}", escaped(name)))
            }
        }
    }
}

/// An object key as it stands in a URL: the characters a URL reads as its own syntax
/// percent-escaped (`%` an escape, `#` a fragment, `?` a query, `\` a separator in http
/// URLs), so that the store gets the key back whole; the URL parser escapes the rest itself
/// (spaces, quotes), and the store decodes them all.
pub(crate) fn escaped(key: &str) -> Cow<'_, str> {
    if !key.contains(['%', '#', '?', '\\']) {
        return Cow::Borrowed(key);
    }
    let mut out = String::with_capacity(key.len() + 8);
    for c in key.chars() {
        match c {
            '%' => out.push_str("%25"),
            '#' => out.push_str("%23"),
            '?' => out.push_str("%3F"),
            '\\' => out.push_str("%5C"),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Local(path) => path.display().fmt(f),
            Location::Url(url) => f.write_str(url),
        }
    }
}

impl From<PathBuf> for Location {
    fn from(path: PathBuf) -> Location {
        Location::Local(path)
    }
}

impl From<&PathBuf> for Location {
    fn from(path: &PathBuf) -> Location {
        Location::Local(path.clone())
    }
}

impl From<&Path> for Location {
    fn from(path: &Path) -> Location {
        Location::Local(path.to_path_buf())
    }
}

/// Parsed as [`Location::parse`] does.
impl From<&str> for Location {
    fn from(text: &str) -> Location {
        Location::parse(text)
    }
}

/// Parsed as [`Location::parse`] does.
impl From<&String> for Location {
    fn from(text: &String) -> Location {
        Location::parse(text)
    }
}

/// Parsed as [`Location::parse`] does.
impl From<String> for Location {
    fn from(text: String) -> Location {
        Location::parse(&text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemes_make_urls_and_the_rest_paths() {
        assert_eq!(Location::parse("S3://b/k.tar"), Location::Url("s3://b/k.tar".into()));
        let name = |text: &str| Location::parse(text).file_name().map(Cow::into_owned);
        assert_eq!(name("https://h/a/b.tar").as_deref(), Some("b.tar"));
        assert_eq!(name("abfss://c@a.dfs.core.windows.net/x").as_deref(), Some("x"));
        assert_eq!(Location::parse("s3:/no.tar"), Location::Local("s3:/no.tar".into()));
        assert_eq!(Location::parse("data/x.tar"), Location::Local("data/x.tar".into()));
        assert_eq!(Location::parse("s3://b/out/").join("x.tar").to_string(), "s3://b/out/x.tar");
        assert_eq!(Location::parse("s3://b/out").join("x.tar").to_string(), "s3://b/out/x.tar");
        assert_eq!(name("s3://b/dir/"), None);
    }

    #[test]
    fn names_with_url_syntax_in_them_round_trip() {
        for odd in ["a#1.tar", "b?.tar", "c%20d.tar", "e\\f g.tar", "plain.tar"] {
            let joined = Location::parse("s3://b/out/").join(odd);
            assert_eq!(joined.file_name().as_deref(), Some(odd), "{joined}");
            let url = url::Url::parse(&joined.to_string()).unwrap();
            assert_eq!((url.fragment(), url.query()), (None, None), "{joined}");
        }
        let joined = Location::parse("s3://b/out").join("a#1 %.tar");
        assert_eq!(joined.to_string(), "s3://b/out/a%231 %25.tar");
    }
}
