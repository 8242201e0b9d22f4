//! An object read as it downloads: a task on the stores' runtime fetches it into a bounded
//! channel; a dropped connection is resumed from the byte reached, on the same version.
use std::io::Read;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{GetOptions, GetRange, ObjectStore};
use tokio::sync::mpsc;

use crate::{Error, RetryPolicy};

/// Chunks (as the HTTP client delivers them, typically up to 64 KiB) fetched ahead of the
/// reader, at most: memory per open object does not grow with its size.
pub const READ_AHEAD_CHUNKS: usize = 32;

/// A [`Read`] over an object being downloaded.
pub(crate) struct ObjectReader {
    chunks: mpsc::Receiver<Result<Bytes, Error>>,
    current: Bytes,
    done: bool,
    /// Keeps the fetching task's runtime alive as long as the reader.
    _runtime: Arc<tokio::runtime::Runtime>,
}

impl ObjectReader {
    /// Starts fetching `path` from `client`; the first answer (found, denied, not found) is
    /// waited for, so that such errors come from `open`, not from the first read.
    pub(crate) fn open(
        runtime: &Arc<tokio::runtime::Runtime>,
        client: Arc<dyn ObjectStore>,
        path: ObjectPath,
        url: &str,
        retry: RetryPolicy,
    ) -> Result<ObjectReader, Error> {
        let (tx, mut rx) = mpsc::channel(READ_AHEAD_CHUNKS);
        let url = url.to_string();
        runtime.spawn(fetch(client, path, url, retry, tx));
        // The first message is the first chunk or the error that stopped the first request.
        let first = rx.blocking_recv();
        let (current, done) = match first {
            None => (Bytes::new(), true),
            Some(Err(e)) => return Err(e),
            Some(Ok(chunk)) => (chunk, false),
        };
        Ok(ObjectReader { chunks: rx, current, done, _runtime: runtime.clone() })
    }
}

impl Read for ObjectReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            if self.done {
                return Ok(0);
            }
            match self.chunks.blocking_recv() {
                None => self.done = true,
                Some(Ok(chunk)) => self.current = chunk,
                Some(Err(e)) => {
                    self.done = true;
                    return Err(e.into_io());
                }
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

/// Fetches the object into `tx`, resuming from the byte reached when a body fails part way
/// (pinned to the first answer's ETag, so that a resumed read cannot mix versions), until it
/// ends, a request fails (the client retries requests itself), the last resumption, or the
/// reader is dropped.
async fn fetch(
    client: Arc<dyn ObjectStore>,
    path: ObjectPath,
    url: String,
    retry: RetryPolicy,
    tx: mpsc::Sender<Result<Bytes, Error>>,
) {
    let mut offset = 0u64;
    let mut etag: Option<String> = None;
    let mut failures = 0;
    // The first message goes out even for an empty object, so that `open` does not wait.
    let mut sent_any = false;
    loop {
        let options = GetOptions {
            range: (offset > 0).then_some(GetRange::Offset(offset)),
            if_match: etag.clone(),
            ..GetOptions::default()
        };
        let error = match client.get_opts(&path, options).await {
            // The client has already retried the request itself, by the same policy: trying
            // again here would multiply the tries (an endpoint that never answers held each
            // shard for an hour), and what it refused for good (a 4xx) stays refused.
            Err(e) => {
                let _ = tx.send(Err(Error::from_store(&url, "read", e))).await;
                return;
            }
            Ok(result) => {
                if etag.is_none() {
                    etag = result.meta.e_tag.clone();
                }
                let size = result.meta.size;
                let mut stream = result.into_stream();
                let mut error = None;
                while let Some(chunk) = stream.next().await {
                    match chunk {
                        Ok(chunk) => {
                            offset += chunk.len() as u64;
                            failures = 0;
                            sent_any = true;
                            if tx.send(Ok(chunk)).await.is_err() {
                                return; // the reader is gone
                            }
                        }
                        Err(e) => {
                            error = Some(Error::from_store(&url, "read", e));
                            break;
                        }
                    }
                }
                match error {
                    Some(error) => error,
                    None if offset >= size => {
                        if !sent_any {
                            let _ = tx.send(Ok(Bytes::new())).await;
                        }
                        return;
                    }
                    // The body ended early without an error: the connection was cut.
                    None => Error::Store {
                        url: url.clone(),
                        operation: "read",
                        source: object_store::Error::Generic {
                            store: "read",
                            source: format!("the body ended at byte {offset} of {size}").into(),
                        },
                    },
                }
            }
        };
        failures += 1;
        if !error.is_transient() || failures > retry.retries {
            let _ = tx.send(Err(error)).await;
            return;
        }
        tracing::warn!(url = %url, offset, attempt = failures, error = %error, "read interrupted; resuming");
        tokio::time::sleep(retry.backoff(failures)).await;
    }
}
