//! Input lists of files that are not shards (embedding files, score tables): what
//! [`aesthete_shards::expand_inputs`] reads, except that a directory gives its files of the
//! caller's extensions rather than its tars.
use std::path::{Path, PathBuf};

use crate::Error;

/// What a directory given as input holds for the caller.
pub(crate) struct DirFiles<'a> {
    /// Extensions of the files taken (lowercase, without the dot).
    pub extensions: &'a [&'a str],
    /// Where in a directory given as input to look: the directory itself, or a folder
    /// inside it.
    pub folder: fn(&Path) -> PathBuf,
}

/// Every input file, sorted: directories read by `dir`, everything else by
/// [`aesthete_shards::expand_inputs`]. A directory holding none of the files is an error.
pub(crate) fn expand_files(inputs: &[String], dir: &DirFiles<'_>) -> Result<Vec<PathBuf>, Error> {
    let mut files = Vec::new();
    let mut rest = Vec::new();
    for input in inputs {
        let path = Path::new(input);
        if !path.is_dir() {
            rest.push(input.as_str());
            continue;
        }
        let folder = (dir.folder)(path);
        let err = |source| Error::Output { path: folder.clone(), source };
        let before = files.len();
        for entry in std::fs::read_dir(&folder).map_err(err)? {
            let file = entry.map_err(err)?.path();
            let extension =
                file.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
            if file.is_file() && dir.extensions.contains(&extension.as_str()) {
                files.push(file);
            }
        }
        if files.len() == before {
            let names: Vec<String> = dir.extensions.iter().map(|e| format!(".{e}")).collect();
            return Err(Error::Config(format!(
                "{} holds no {} files",
                folder.display(),
                names.join(", ")
            )));
        }
    }
    if !rest.is_empty() {
        files.extend(aesthete_shards::expand_inputs(&rest).map_err(|e| Error::Inputs(e.into()))?);
    }
    files.sort();
    files.dedup();
    Ok(files)
}
