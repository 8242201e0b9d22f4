//! One client per bucket, container or host, made from the environment's credentials, and a
//! small runtime that drives them for callers that are not async.
use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{
    BackoffConfig, ClientOptions, ObjectStore, ObjectStoreExt, ObjectStoreScheme, PutPayload,
    RetryConfig, WriteMultipart,
};
use url::Url;

use crate::location::escaped;
use crate::{Error, Location, ObjectReader};

/// Environment variable prefixes read for each kind of store (credentials, region,
/// endpoint, ...). Values are handed to the store clients and never logged.
const ENV_PREFIXES: [(&str, &str); 3] = [("s3", "AWS_"), ("gs", "GOOGLE_"), ("az", "AZURE_")];

/// Objects of at most this size are written with one PUT; larger ones as a multipart upload
/// of parts this size, completed only once every part is in.
const PART_SIZE: usize = 16 * 1024 * 1024;

/// How requests are retried.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Tries after the first, for each request and for each resumption of a read.
    pub retries: usize,
    /// The first wait; each next one doubles, up to `max_backoff`.
    pub first_backoff: Duration,
    /// The longest wait between tries.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            retries: 10,
            first_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(15),
        }
    }
}

impl RetryPolicy {
    /// The wait before try number `attempt` (1 for the first retry).
    pub(crate) fn backoff(&self, attempt: usize) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(30) as u32);
        self.first_backoff.saturating_mul(factor).min(self.max_backoff)
    }

    fn client_config(&self) -> RetryConfig {
        RetryConfig {
            backoff: BackoffConfig {
                init_backoff: self.first_backoff,
                max_backoff: self.max_backoff,
                base: 2.0,
            },
            max_retries: self.retries,
            retry_timeout: Duration::from_secs(300),
        }
    }
}

/// Local files and object stores behind one door: [`Stores::open`] streams an input,
/// [`Stores::read`] and [`Stores::put_file`] move whole objects, [`Stores::expand`] lists
/// inputs. Clients are made on first use, one per bucket, container or host, from the
/// environment: `AWS_*` (with `AWS_ENDPOINT_URL` for S3-compatible stores, `AWS_PROFILE` from
/// `~/.aws/credentials` and `~/.aws/config`), `GOOGLE_*` (`GOOGLE_APPLICATION_CREDENTIALS`),
/// `AZURE_*` (`AZURE_STORAGE_ACCOUNT_NAME`, `AZURE_STORAGE_ACCOUNT_KEY`, ...).
pub struct Stores {
    /// Started by the first object-store request: runs over local files start no threads.
    runtime: OnceLock<Arc<tokio::runtime::Runtime>>,
    clients: Mutex<HashMap<String, Arc<dyn ObjectStore>>>,
    options: Vec<(String, String)>,
    retry: RetryPolicy,
    allow_http: bool,
}

impl std::fmt::Debug for Stores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Options hold credentials: only their names are shown.
        let names: Vec<&str> = self.options.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("Stores").field("options", &names).field("retry", &self.retry).finish()
    }
}

impl Stores {
    /// Stores configured from this process's environment.
    pub fn from_env() -> Result<Stores, Error> {
        let mut options: Vec<(String, String)> = std::env::vars()
            .filter(|(k, _)| ENV_PREFIXES.iter().any(|(_, prefix)| k.starts_with(prefix)))
            .map(|(k, v)| (k.to_ascii_lowercase(), v))
            .collect();
        if let Ok(profile) = std::env::var("AWS_PROFILE") {
            crate::profile::add_profile(&profile, &mut options);
        }
        Stores::with_options(options)
    }

    /// Stores configured by `options` alone (`aws_access_key_id`, `aws_endpoint_url`,
    /// `google_service_account`, `azure_storage_account_name`, ... as the environment
    /// variables of the same names, lowercased), not the environment.
    pub fn with_options(options: Vec<(String, String)>) -> Result<Stores, Error> {
        let allow_http = options
            .iter()
            .any(|(k, v)| k.ends_with("allow_http") && v.eq_ignore_ascii_case("true"));
        Ok(Stores {
            runtime: OnceLock::new(),
            clients: Mutex::new(HashMap::new()),
            options,
            retry: RetryPolicy::default(),
            allow_http,
        })
    }

    /// The runtime that drives the clients, started on first use.
    fn runtime(&self) -> Result<&Arc<tokio::runtime::Runtime>, Error> {
        if let Some(runtime) = self.runtime.get() {
            return Ok(runtime);
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("aesthete-store")
            .enable_all()
            .build()
            .map_err(Error::Runtime)?;
        // Another thread may have set it first: theirs is used and this one dropped.
        Ok(self.runtime.get_or_init(|| Arc::new(runtime)))
    }

    /// Retries of every request and read made from now on (clients already made keep theirs).
    pub fn retry(mut self, retry: RetryPolicy) -> Stores {
        self.retry = retry;
        self
    }

    /// The client for `url` and the object's path in it.
    pub(crate) fn client(&self, url: &str) -> Result<(Arc<dyn ObjectStore>, ObjectPath), Error> {
        let bad = |reason: String| Error::Url { url: url.to_string(), reason };
        let parsed = Url::parse(url).map_err(|e| bad(e.to_string()))?;
        let (scheme, path) = ObjectStoreScheme::parse(&parsed).map_err(|e| bad(e.to_string()))?;
        let key = store_root(&parsed, &path);
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(client) = clients.get(&key) {
            return Ok((client.clone(), path));
        }
        let client = self.make_client(scheme, &parsed).map_err(|e| bad(e.to_string()))?;
        clients.insert(key, client.clone());
        Ok((client, path))
    }

    fn make_client(
        &self,
        scheme: ObjectStoreScheme,
        url: &Url,
    ) -> object_store::Result<Arc<dyn ObjectStore>> {
        let retry = self.retry.client_config();
        let client_options =
            || ClientOptions::new().with_allow_http(self.allow_http || url.scheme() == "http");
        let options = |prefix: &str| {
            let prefix = prefix.to_ascii_lowercase();
            self.options.iter().filter(move |(k, _)| k.starts_with(&prefix))
        };
        // A cloud store's builder from the options of its prefix, the URL and the retries.
        macro_rules! cloud {
            ($builder:ty, $prefix:literal) => {{
                let mut builder = <$builder>::new();
                for (key, value) in options($prefix) {
                    if let Ok(key) = key.parse() {
                        builder = builder.with_config(key, value);
                    }
                }
                let builder = builder.with_url(url.as_str()).with_retry(retry);
                Arc::new(builder.with_client_options(client_options()).build()?)
            }};
        }
        Ok(match scheme {
            ObjectStoreScheme::AmazonS3 => cloud!(object_store::aws::AmazonS3Builder, "aws_"),
            ObjectStoreScheme::GoogleCloudStorage => {
                cloud!(object_store::gcp::GoogleCloudStorageBuilder, "google_")
            }
            ObjectStoreScheme::MicrosoftAzure => {
                cloud!(object_store::azure::MicrosoftAzureBuilder, "azure_")
            }
            ObjectStoreScheme::Http => {
                let base = &url[..url::Position::BeforePath];
                let builder = object_store::http::HttpBuilder::new().with_url(base);
                Arc::new(builder.with_retry(retry).with_client_options(client_options()).build()?)
            }
            other => {
                return Err(object_store::Error::NotSupported {
                    source: format!("{other:?} is not an object store").into(),
                });
            }
        })
    }

    /// Streams `location`: a file, or an object read as it downloads, with at most
    /// [`crate::READ_AHEAD_CHUNKS`] chunks buffered, resumed from the byte reached (ranged
    /// GET, same version) when the connection fails.
    pub fn open(&self, location: &Location) -> Result<Box<dyn Read + Send>, Error> {
        match location {
            Location::Local(path) => {
                let file = File::open(path).map_err(|source| io_error(path, source))?;
                Ok(Box::new(file))
            }
            Location::Url(url) => {
                let (client, path) = self.client(url)?;
                let reader = ObjectReader::open(self.runtime()?, client, path, url, self.retry)?;
                Ok(Box::new(reader))
            }
        }
    }

    /// The whole of a small file or object, or `None` when there is none.
    pub fn read(&self, location: &Location) -> Result<Option<Vec<u8>>, Error> {
        match location {
            Location::Local(path) => match std::fs::read(path) {
                Ok(bytes) => Ok(Some(bytes)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(source) => Err(io_error(path, source)),
            },
            Location::Url(url) => {
                let (client, path) = self.client(url)?;
                let got = self.runtime()?.block_on(async {
                    let result = client.get(&path).await?;
                    result.bytes().await
                });
                match got {
                    Ok(bytes) => Ok(Some(bytes.to_vec())),
                    Err(object_store::Error::NotFound { .. }) => Ok(None),
                    Err(source) => Err(Error::from_store(url, "read", source)),
                }
            }
        }
    }

    /// Writes the local file `from` to `to` whole: a file is copied to a temporary beside it
    /// and renamed; an object is one PUT, or past 16 MiB a multipart upload completed only
    /// when every part is in (aborted on failure), so it appears whole or not at all.
    pub fn put_file(&self, from: &Path, to: &Location) -> Result<(), Error> {
        match to {
            Location::Local(dest) => {
                let mut file = File::open(from).map_err(|source| io_error(from, source))?;
                let mut copy = || {
                    let mut out = aesthete_atomic::AtomicFile::create(dest)?;
                    std::io::copy(&mut file, out.file_mut())?;
                    out.commit()
                };
                copy().map_err(|source| io_error(dest, source))
            }
            Location::Url(url) => {
                let (client, path) = self.client(url)?;
                let len = std::fs::metadata(from).map_err(|e| io_error(from, e))?.len();
                let mut file = File::open(from).map_err(|source| io_error(from, source))?;
                if len <= PART_SIZE as u64 {
                    let mut bytes = Vec::with_capacity(len as usize);
                    file.read_to_end(&mut bytes).map_err(|e| io_error(from, e))?;
                    let put = self.runtime()?.block_on(client.put(&path, PutPayload::from(bytes)));
                    return put.map(drop).map_err(|e| Error::from_store(url, "write", e));
                }
                self.runtime()?.block_on(async {
                    let upload = client
                        .put_multipart(&path)
                        .await
                        .map_err(|e| Error::from_store(url, "write", e))?;
                    let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
                    let mut part = vec![0u8; PART_SIZE];
                    loop {
                        let n = match read_full(&mut file, &mut part) {
                            Ok(n) => n,
                            Err(source) => {
                                let _ = writer.abort().await;
                                return Err(io_error(from, source));
                            }
                        };
                        if n == 0 {
                            break;
                        }
                        if let Err(e) = writer.wait_for_capacity(2).await {
                            let _ = writer.abort().await;
                            return Err(Error::from_store(url, "write", e));
                        }
                        writer.write(&part[..n]);
                    }
                    writer.finish().await.map(drop).map_err(|e| Error::from_store(url, "write", e))
                })
            }
        }
    }

    /// Names of the files directly in a directory, or of the objects directly under a prefix
    /// (`s3://b/out/`: `x.tar`, not `sub/y.tar`); empty when there is no such directory.
    pub fn names_in(&self, dir: &Location) -> Result<Vec<String>, Error> {
        match dir {
            Location::Local(path) => {
                let entries = match std::fs::read_dir(path) {
                    Ok(entries) => entries,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
                    Err(source) => return Err(io_error(path, source)),
                };
                let mut names = Vec::new();
                for entry in entries {
                    let entry = entry.map_err(|source| io_error(path, source))?;
                    names.extend(entry.file_name().to_str().map(str::to_string));
                }
                Ok(names)
            }
            Location::Url(url) => {
                let prefix = if url.ends_with('/') { url.clone() } else { format!("{url}/") };
                let (client, path) = self.client(&prefix)?;
                let listed = self
                    .runtime()?
                    .block_on(client.list_with_delimiter(Some(&path)))
                    .map_err(|e| Error::from_store(&prefix, "list", e))?;
                Ok(listed
                    .objects
                    .into_iter()
                    .filter_map(|meta| meta.location.filename().map(str::to_string))
                    .collect())
            }
        }
    }

    /// Every object under `prefix` (a URL ending in `/`, or any key prefix), all levels down,
    /// as URLs.
    pub(crate) fn list(&self, prefix: &str) -> Result<Vec<String>, Error> {
        let (client, path) = self.client(prefix)?;
        let root = Url::parse(prefix).map(|url| store_root(&url, &path)).unwrap_or_default();
        let listed: Vec<object_store::ObjectMeta> = self
            .runtime()?
            .block_on(client.list(Some(&path)).try_collect())
            .map_err(|e| Error::from_store(prefix, "list", e))?;
        Ok(listed
            .into_iter()
            .map(|meta| format!("{root}{}", escaped(meta.location.as_ref())))
            .collect())
    }
}

/// The URL of the store that `url`'s object `path` lies in, ending in `/`: the scheme and
/// host, and the bucket or container where the URL names it in its path
/// (`https://s3.<region>.amazonaws.com/<bucket>/…`, R2's and Azure's https hosts). One client
/// serves each, so that two buckets on one host never share a client made for the first.
fn store_root(url: &Url, path: &ObjectPath) -> String {
    let root = format!("{}://{}/", url.scheme(), url.authority());
    match ObjectPath::from_url_path(url.path()) {
        Ok(whole) if whole == *path => root,
        _ => match url.path().trim_start_matches('/').split('/').next() {
            Some(bucket) if !bucket.is_empty() => format!("{root}{bucket}/"),
            _ => root,
        },
    }
}

/// Reads until `buf` is full or the file ends.
fn read_full(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

fn io_error(path: &Path, source: std::io::Error) -> Error {
    Error::Io { path: path.to_path_buf(), source }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_roots_keep_the_bucket() {
        let root = |text: &str| {
            let url = Url::parse(text).unwrap();
            let (_, path) = ObjectStoreScheme::parse(&url).unwrap();
            store_root(&url, &path)
        };
        assert_eq!(root("s3://b/data/"), "s3://b/");
        assert_eq!(root("s3://b/data"), "s3://b/");
        assert_eq!(root("s3://b/"), "s3://b/");
        assert_eq!(root("http://h:1/x/y/"), "http://h:1/");
        assert_eq!(
            root("https://s3.eu-west-1.amazonaws.com/b/x/y.tar"),
            root("https://s3.eu-west-1.amazonaws.com/b/")
        );
        assert_eq!(
            root("https://s3.eu-west-1.amazonaws.com/b"),
            "https://s3.eu-west-1.amazonaws.com/b/"
        );
        assert_eq!(
            root("https://a.blob.core.windows.net/c/x%231.tar"),
            "https://a.blob.core.windows.net/c/"
        );
        assert_eq!(root("abfss://c@a.dfs.core.windows.net/x"), "abfss://c@a.dfs.core.windows.net/");
    }

    #[test]
    fn buckets_named_in_the_path_get_clients_of_their_own() {
        let stores = Stores::with_options(vec![("aws_region".into(), "us-east-1".into())]).unwrap();
        let client = |url: &str| stores.client(url).unwrap();
        let s3 = "https://s3.us-east-1.amazonaws.com";
        let (a, path) = client(&format!("{s3}/bucket-a/in/x.tar"));
        let (b, _) = client(&format!("{s3}/bucket-b/out/x.tar"));
        assert_eq!(path.as_ref(), "in/x.tar");
        assert!(a.to_string().contains("bucket-a"), "{a}");
        assert!(b.to_string().contains("bucket-b"), "{b}");
        assert!(Arc::ptr_eq(&a, &client(&format!("{s3}/bucket-a/y.tar")).0));

        let azure = "https://account.blob.core.windows.net";
        let (a, _) = client(&format!("{azure}/in/x.tar"));
        let (b, _) = client(&format!("{azure}/out/x.tar"));
        assert!(!Arc::ptr_eq(&a, &b), "{a} and {b}");
        assert!(b.to_string().contains("out"), "{b}");

        // The bucket in the host: one client for the bucket, whatever the path.
        let (a, _) = client("s3://bucket/in/x.tar");
        assert!(Arc::ptr_eq(&a, &client("s3://bucket/out/y.tar").0));
    }

    #[test]
    fn backoff_doubles_to_its_cap() {
        let retry = RetryPolicy::default();
        assert_eq!(retry.backoff(1), Duration::from_millis(100));
        assert_eq!(retry.backoff(3), Duration::from_millis(400));
        assert_eq!(retry.backoff(40), Duration::from_secs(15));
    }
}
