//! Errors, split by whose fault they are: the input (not found, not allowed), the store (a
//! transient failure that outlasted the retries), the local file system.
use std::path::PathBuf;

/// What went wrong, naming the URL or path.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The URL is not one this build reads (a scheme without a store, a malformed URL).
    #[error("{url} is not a URL aesthete can read: {reason}")]
    Url {
        /// The URL as given.
        url: String,
        /// Why.
        reason: String,
    },
    /// There is no such object.
    #[error("{url} does not exist")]
    NotFound {
        /// The URL.
        url: String,
    },
    /// The store refused the credentials or the request (HTTP 401 or 403).
    #[error("{url}: access denied ({reason}); check the credentials in the environment")]
    Denied {
        /// The URL.
        url: String,
        /// The store's answer.
        reason: String,
    },
    /// The object changed while it was read (its ETag no longer matches): the bytes read so
    /// far belong to another version.
    #[error("{url} changed while it was read")]
    Changed {
        /// The URL.
        url: String,
    },
    /// A request failed after every retry.
    #[error("{url}: {operation} failed")]
    Store {
        /// The URL.
        url: String,
        /// What was being done (`read`, `list`, `write`).
        operation: &'static str,
        /// The store client's error.
        #[source]
        source: object_store::Error,
    },
    /// A local input pattern (expanded by aesthete-shards).
    #[error(transparent)]
    Inputs(#[from] aesthete_shards::Error),
    /// A glob or listing that matched nothing.
    #[error("no shard matches {pattern}")]
    NoMatch {
        /// The pattern.
        pattern: String,
    },
    /// A local file.
    #[error("{path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The background runtime that talks to object stores could not start.
    #[error("starting the object-store runtime")]
    Runtime(#[source] std::io::Error),
}

impl Error {
    /// The error for `source` met while doing `operation` on `url`: not-found and denied
    /// answers become their own variants.
    pub(crate) fn from_store(
        url: &str,
        operation: &'static str,
        source: object_store::Error,
    ) -> Error {
        let url = url.to_string();
        match source {
            object_store::Error::NotFound { .. } => Error::NotFound { url },
            object_store::Error::PermissionDenied { source, .. }
            | object_store::Error::Unauthenticated { source, .. } => {
                let text = source.to_string();
                Error::Denied { url, reason: refusal(&text).unwrap_or(text) }
            }
            object_store::Error::Precondition { .. } => Error::Changed { url },
            // Some requests (listing) report a refusal as a generic error: its text is the
            // only place the status is.
            source => match refusal(&source.to_string()) {
                Some(reason) => Error::Denied { url, reason },
                None => Error::Store { url, operation, source },
            },
        }
    }

    /// Whether trying again may succeed (a dropped connection, a server error), as opposed
    /// to an answer that will not change (not found, denied, changed).
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Store { .. })
    }

    /// As an I/O error of the matching kind, for `Read` implementations.
    pub(crate) fn into_io(self) -> std::io::Error {
        use std::io::ErrorKind;
        let kind = match &self {
            Error::NotFound { .. } => ErrorKind::NotFound,
            Error::Denied { .. } => ErrorKind::PermissionDenied,
            _ => ErrorKind::Other,
        };
        std::io::Error::new(kind, self)
    }
}

/// `HTTP 403 SignatureDoesNotMatch` from an error text that holds a 401 or 403 answer (and
/// the store's error code, when its XML body is quoted).
fn refusal(text: &str) -> Option<String> {
    let status = ["401", "403"].into_iter().find(|code| {
        text.contains(&format!("{code} Forbidden"))
            || text.contains(&format!("{code} Unauthorized"))
    })?;
    let code = text
        .split_once("<Code>")
        .and_then(|(_, rest)| rest.split_once("</Code>"))
        .map(|(code, _)| format!(" {code}"))
        .unwrap_or_default();
    Some(format!("HTTP {status}{code}"))
}
