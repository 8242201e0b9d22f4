//! Inputs to locations: local paths as aesthete-shards expands them; URLs with brace ranges,
//! globs over listed prefixes, and `prefix/` for every shard directly under it; `@list` files
//! that may mix both.
use std::path::Path;

use crate::{Error, Location, Stores};

impl Stores {
    /// Expands user inputs into a sorted, de-duplicated list of locations: local inputs as
    /// [`aesthete_shards::expand_inputs`] reads them (first, in its order), then URLs, sorted:
    ///
    /// | input | meaning |
    /// |---|---|
    /// | `s3://b/laion/{00000..41455}.tar` | brace expansion, each URL taken as given (a missing object fails when it is read) |
    /// | `s3://b/laion/*.tar`, `gs://b/**/x-?.tgz` | a glob over the objects under the literal prefix before it; `*` does not cross `/` |
    /// | `s3://b/laion/` | every `.tar`, `.tar.gz` and `.tgz` directly under the prefix |
    /// | `@shards.lst` | a local list file: one input a line (`#` comments), URLs and paths mixed |
    pub fn expand(&self, inputs: &[String]) -> Result<Vec<Location>, Error> {
        let mut local: Vec<String> = Vec::new();
        let mut urls: Vec<Location> = Vec::new();
        for input in inputs {
            match input.strip_prefix('@') {
                Some(list) if list_has_urls(Path::new(list))? => {
                    let base = Path::new(list).parent().filter(|p| !p.as_os_str().is_empty());
                    for line in list_lines(Path::new(list))? {
                        if Location::is_url(&line) {
                            self.expand_url(&line, &mut urls)?;
                        } else {
                            let path = match base {
                                Some(base) if Path::new(&line).is_relative() => base.join(&line),
                                _ => line.into(),
                            };
                            local.push(path.to_string_lossy().into_owned());
                        }
                    }
                }
                _ if Location::is_url(input) => self.expand_url(input, &mut urls)?,
                _ => local.push(input.clone()),
            }
        }
        let mut out: Vec<Location> = if local.is_empty() {
            Vec::new()
        } else {
            aesthete_shards::expand_inputs(&local)?.into_iter().map(Location::Local).collect()
        };
        urls.sort();
        urls.dedup();
        out.extend(urls);
        Ok(out)
    }

    fn expand_url(&self, pattern: &str, out: &mut Vec<Location>) -> Result<(), Error> {
        let Location::Url(pattern) = Location::parse(pattern) else {
            unreachable!("called for URLs only")
        };
        for url in aesthete_shards::expand_braces(&pattern)? {
            let after_host = url.find("://").map_or(0, |i| i + 3);
            let path_start = url[after_host..].find('/').map_or(url.len(), |i| after_host + i);
            let first_glob = url[path_start..].find(['*', '?', '[']).map(|i| path_start + i);
            let before = out.len();
            if let Some(first_glob) = first_glob {
                let dir_end = url[..first_glob].rfind('/').map_or(path_start, |i| i + 1);
                let glob = glob::Pattern::new(&url).map_err(|e| {
                    Error::Inputs(aesthete_shards::Error::Pattern {
                        pattern: url.clone(),
                        reason: e.msg.into(),
                    })
                })?;
                let options = glob::MatchOptions {
                    require_literal_separator: true,
                    require_literal_leading_dot: true,
                    ..Default::default()
                };
                for listed in self.list(&url[..dir_end])? {
                    if glob.matches_with(&listed, options) {
                        out.push(Location::Url(listed));
                    }
                }
            } else if url.ends_with('/') {
                for listed in self.list(&url)? {
                    let rest = &listed[url.len().min(listed.len())..];
                    let name = rest.rsplit('/').next().unwrap_or(rest);
                    let direct = listed.starts_with(&url) && !rest.contains('/');
                    if direct && !name.starts_with('.') && aesthete_shards::is_shard_name(name) {
                        out.push(Location::Url(listed));
                    }
                }
            } else {
                out.push(Location::Url(url));
                continue;
            }
            if out.len() == before {
                return Err(Error::NoMatch { pattern: url });
            }
        }
        Ok(())
    }
}

fn list_lines(list: &Path) -> Result<Vec<String>, Error> {
    let text = std::fs::read_to_string(list)
        .map_err(|source| Error::Io { path: list.to_path_buf(), source })?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect())
}

fn list_has_urls(list: &Path) -> Result<bool, Error> {
    Ok(list_lines(list)?.iter().any(|line| Location::is_url(line)))
}
