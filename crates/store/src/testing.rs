//! Loopback servers for tests, real protocol and no network: [`S3Server`], an S3
//! implementation (the `s3s` crate over a directory, one bucket per subdirectory) that checks
//! request signatures, behind a proxy that can cut responses part way; [`RangeServer`], a
//! plain HTTP/1.1 server of a directory's files with `Range` support. Not for production use.
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The access key [`S3Server`] accepts.
pub const ACCESS_KEY: &str = "aesthete-test";
/// Its secret.
pub const SECRET_KEY: &str = "aesthete-test-secret-key";

/// An S3 server on loopback serving `root` (each subdirectory a bucket).
pub struct S3Server {
    endpoint: String,
    cuts: Arc<Cuts>,
    _runtime: tokio::runtime::Runtime,
}

/// Responses the proxy is to cut: the next `remaining` connections whose server-to-client
/// bytes pass `after` are closed there.
struct Cuts {
    remaining: AtomicUsize,
    after: AtomicUsize,
}

impl S3Server {
    /// Starts the server; it stops when dropped.
    pub fn start(root: &Path) -> io::Result<S3Server> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("s3-test-server")
            .enable_all()
            .build()?;
        let fs = s3s_fs::FileSystem::new(root).map_err(|e| io::Error::other(format!("{e:?}")))?;
        let service = {
            let mut builder = s3s::service::S3ServiceBuilder::new(fs);
            builder.set_auth(s3s::auth::SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
            builder.build()
        };
        let cuts = Arc::new(Cuts { remaining: AtomicUsize::new(0), after: AtomicUsize::new(0) });
        let (inner, outer) = runtime.block_on(async {
            let inner = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let outer = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            Ok::<_, io::Error>((inner, outer))
        })?;
        let inner_addr = inner.local_addr()?;
        let endpoint = format!("http://{}", outer.local_addr()?);
        runtime.spawn(async move {
            let http =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            while let Ok((socket, _)) = inner.accept().await {
                let conn = http
                    .serve_connection(hyper_util::rt::TokioIo::new(socket), service.clone())
                    .into_owned();
                tokio::spawn(async move {
                    let _ = conn.await;
                });
            }
        });
        let proxy_cuts = cuts.clone();
        runtime.spawn(async move {
            while let Ok((client, _)) = outer.accept().await {
                tokio::spawn(proxy(client, inner_addr, proxy_cuts.clone()));
            }
        });
        Ok(S3Server { endpoint, cuts, _runtime: runtime })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The `AWS_*` environment a client needs (credentials, endpoint, region, plain HTTP).
    pub fn env(&self) -> Vec<(String, String)> {
        self.env_with_secret(SECRET_KEY)
    }

    /// [`S3Server::env`] with another secret: requests signed with it are refused (403).
    pub fn env_with_secret(&self, secret: &str) -> Vec<(String, String)> {
        [
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
            ("AWS_SECRET_ACCESS_KEY", secret),
            ("AWS_ENDPOINT_URL", self.endpoint.as_str()),
            ("AWS_REGION", "us-east-1"),
            ("AWS_ALLOW_HTTP", "true"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .into()
    }

    /// [`S3Server::env`] as `Stores::with_options` takes it (names lowercased).
    pub fn options(&self) -> Vec<(String, String)> {
        self.env().into_iter().map(|(k, v)| (k.to_ascii_lowercase(), v)).collect()
    }

    /// Cuts the next `count` connections whose responses pass `after` bytes, there: the
    /// client sees the connection drop in the middle of a body.
    pub fn cut_responses(&self, count: usize, after: usize) {
        self.cuts.after.store(after, Ordering::SeqCst);
        self.cuts.remaining.store(count, Ordering::SeqCst);
    }

    /// Cuts not yet made.
    pub fn cuts_left(&self) -> usize {
        self.cuts.remaining.load(Ordering::SeqCst)
    }
}

/// Copies bytes between `client` and the server at `server`, cutting the server's side when
/// `cuts` says so.
async fn proxy(mut client: tokio::net::TcpStream, server: SocketAddr, cuts: Arc<Cuts>) {
    let Ok(mut upstream) = tokio::net::TcpStream::connect(server).await else { return };
    let (mut client_read, mut client_write) = client.split();
    let (mut server_read, mut server_write) = upstream.split();
    let up = tokio::io::copy(&mut client_read, &mut server_write);
    let down = async {
        let mut sent = 0usize;
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = server_read.read(&mut buf).await?;
            if n == 0 {
                return Ok::<_, io::Error>(());
            }
            let after = cuts.after.load(Ordering::SeqCst);
            if sent + n > after
                && cuts
                    .remaining
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |r| r.checked_sub(1))
                    .is_ok()
            {
                let keep = after.saturating_sub(sent);
                client_write.write_all(&buf[..keep]).await?;
                return Ok(()); // dropped: the connection closes mid-response
            }
            client_write.write_all(&buf[..n]).await?;
            sent += n;
        }
    };
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
}

/// A plain HTTP/1.1 server of `root`'s files on loopback, answering `GET` and `HEAD` with
/// `Range: bytes=N-` and `bytes=N-M`, `ETag` and `Last-Modified`; one request a connection.
pub struct RangeServer {
    base: String,
    _thread: std::thread::JoinHandle<()>,
}

impl RangeServer {
    /// Starts serving `root`; the thread ends with the process.
    pub fn start(root: &Path) -> io::Result<RangeServer> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let base = format!("http://{}", listener.local_addr()?);
        let root = root.to_path_buf();
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let root = root.clone();
                std::thread::spawn(move || {
                    let _ = serve(stream, &root);
                });
            }
        });
        Ok(RangeServer { base, _thread: thread })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base(&self) -> &str {
        &self.base
    }
}

fn serve(mut stream: TcpStream, root: &Path) -> io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    let mut range = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        let lower = line.to_ascii_lowercase();
        if let Some(value) = lower.strip_prefix("range:") {
            range = value.trim().strip_prefix("bytes=").map(str::to_string);
        }
    }
    let mut parts = request.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or("/"));
    let relative = Path::new(target.trim_start_matches('/'));
    let inside = relative.components().all(|c| matches!(c, std::path::Component::Normal(_)));
    let path: PathBuf = root.join(relative);
    let file = if inside { std::fs::File::open(&path).ok() } else { None };
    let Some(mut file) = file.filter(|f| f.metadata().is_ok_and(|m| m.is_file())) else {
        return stream.write_all(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
    };
    let len = file.metadata()?.len();
    let (start, end) = match range.as_deref().and_then(|r| r.split_once('-')) {
        Some((a, b)) => {
            let start: u64 = a.parse().unwrap_or(0);
            let end = b.parse::<u64>().map_or(len, |e| (e + 1).min(len));
            (start.min(len), end)
        }
        None => (0, len),
    };
    let status = if range.is_some() { "206 Partial Content" } else { "200 OK" };
    let mut head = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nAccept-Ranges: bytes\r\nETag: \"{len}\"\r\nLast-Modified: Thu, 01 Jan 2026 00:00:00 GMT\r\nConnection: close\r\n",
        end - start
    );
    if range.is_some() {
        head.push_str(&format!("Content-Range: bytes {start}-{}/{len}\r\n", end.max(1) - 1));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    if method == "GET" {
        file.seek(SeekFrom::Start(start))?;
        io::copy(&mut file.take(end - start), &mut stream)?;
    }
    Ok(())
}
