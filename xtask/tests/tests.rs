//! xtask's integration tests: `fetch-models` against a local hub-shaped HTTP server.

mod server {
    //! A tiny HTTP/1.1 file server with `Range` support, a request log, a switch to ignore
    //! ranges and a way to cut a transfer after K bytes.

    use std::collections::HashMap;
    use std::io::{BufRead, BufReader, Write};
    use std::net::{TcpListener, TcpStream};
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    /// One request the server saw.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Seen {
        pub path: String,
        pub range: Option<String>,
    }

    #[derive(Default)]
    struct State {
        log: Mutex<Vec<Seen>>,
        /// Path → bytes after which the next response for it is cut (once).
        cuts: Mutex<HashMap<String, u64>>,
        ignore_range: AtomicBool,
    }

    pub struct Server {
        pub url: String,
        state: Arc<State>,
    }

    impl Server {
        /// Serves `root`; the thread lives as long as the test process.
        pub fn start(root: &Path) -> Server {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let url = format!("http://{}", listener.local_addr().unwrap());
            let state = Arc::new(State::default());
            let (root, shared) = (root.to_owned(), state.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming().flatten() {
                    let (root, state) = (root.clone(), shared.clone());
                    std::thread::spawn(move || serve(stream, &root, &state));
                }
            });
            Server { url, state }
        }

        pub fn requests(&self) -> Vec<Seen> {
            self.state.log.lock().unwrap().clone()
        }

        /// Cuts the next transfer of `path` after `bytes` bytes of body.
        pub fn cut_once(&self, path: &str, bytes: u64) {
            self.state.cuts.lock().unwrap().insert(path.to_owned(), bytes);
        }

        /// Answers range requests with the whole file and status 200.
        pub fn ignore_ranges(&self, yes: bool) {
            self.state.ignore_range.store(yes, Ordering::SeqCst);
        }
    }

    fn serve(stream: TcpStream, root: &Path, state: &State) {
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut line = String::new();
        if reader.read_line(&mut line).is_err() {
            return;
        }
        let path = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
        let mut range = None;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 || header == "\r\n" {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("range")
            {
                range = Some(value.trim().to_owned());
            }
        }
        state.log.lock().unwrap().push(Seen { path: path.clone(), range: range.clone() });

        let mut out = stream;
        let file: PathBuf = root.join(path.trim_start_matches('/'));
        let Ok(body) = std::fs::read(&file) else {
            let _ = out.write_all(
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
            return;
        };
        let len = body.len() as u64;
        let start = range
            .filter(|_| !state.ignore_range.load(Ordering::SeqCst))
            .and_then(|r| r.strip_prefix("bytes=")?.strip_suffix('-')?.parse::<u64>().ok());
        let (head, from) = match start {
            Some(s) if s >= len => {
                let head = format!(
                    "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{len}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
                let _ = out.write_all(head.as_bytes());
                return;
            }
            Some(s) => (
                format!(
                    "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {s}-{}/{len}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    len - 1,
                    len - s
                ),
                s,
            ),
            None => (
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nAccept-Ranges: bytes\r\nConnection: close\r\n\r\n"
                ),
                0,
            ),
        };
        let mut body = &body[from as usize..];
        if let Some(cut) = state.cuts.lock().unwrap().remove(&path) {
            body = &body[..(cut as usize).min(body.len())];
        }
        let _ = out.write_all(head.as_bytes());
        let _ = out.write_all(body);
        let _ = out.flush();
        let _ = out.shutdown(std::net::Shutdown::Both);
    }
}

mod support {
    use std::path::{Path, PathBuf};

    use xtask::fetch::{Pin, sha256_file};

    pub fn root() -> PathBuf {
        xtask::workspace_root()
    }

    pub fn pin_of(name: &str, path: &Path) -> Pin {
        let size = std::fs::metadata(path).unwrap().len();
        Pin { name: name.to_owned(), sha256: sha256_file(path).unwrap(), size }
    }

    /// Bytes that are not all alike, so a misplaced range shows in the hash.
    pub fn payload(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    pub const WRONG: &str = "0000000000000000000000000000000000000000000000000000000000000000";
}

mod download {
    use std::fs;

    use xtask::fetch::{Check, Pin, PinMismatch, download};

    use crate::server::{Seen, Server};
    use crate::support::*;

    fn setup(len: usize) -> (tempfile::TempDir, Server, String, Pin) {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("www")).unwrap();
        let src = dir.path().join("www/blob.bin");
        fs::write(&src, payload(len)).unwrap();
        let server = Server::start(&dir.path().join("www"));
        let url = format!("{}/blob.bin", server.url);
        let pin = pin_of("blob.bin", &src);
        (dir, server, url, pin)
    }

    #[test]
    fn fresh_download_is_verified_then_renamed() {
        let (dir, server, url, pin) = setup(100_000);
        let dest = dir.path().join("out/blob.bin");
        let got = download(&url, &dest, &pin).unwrap();
        assert!(got.transferred);
        assert_eq!(got.requests, 1);
        assert_eq!(fs::read(&dest).unwrap(), payload(100_000));
        assert!(!dir.path().join("out/blob.bin.part").exists());
        assert_eq!(server.requests(), [Seen { path: "/blob.bin".into(), range: None }]);

        // Idempotent: nothing is requested again.
        let again = download(&url, &dest, &pin).unwrap();
        assert!(!again.transferred);
        assert_eq!(server.requests().len(), 1);
    }

    #[test]
    fn interrupted_transfer_resumes_with_a_range() {
        let (dir, server, url, pin) = setup(300_000);
        server.cut_once("/blob.bin", 123_456);
        let dest = dir.path().join("blob.bin");
        let got = download(&url, &dest, &pin).unwrap();
        assert_eq!(got.requests, 2);
        assert_eq!(fs::read(&dest).unwrap(), payload(300_000));
        let log = server.requests();
        assert_eq!(log[0].range, None);
        assert_eq!(log[1].range.as_deref(), Some("bytes=123456-"));
    }

    #[test]
    fn a_part_left_by_an_earlier_run_is_resumed() {
        let (dir, server, url, pin) = setup(50_000);
        let dest = dir.path().join("blob.bin");
        fs::write(dir.path().join("blob.bin.part"), &payload(50_000)[..20_000]).unwrap();
        download(&url, &dest, &pin).unwrap();
        assert_eq!(fs::read(&dest).unwrap(), payload(50_000));
        assert_eq!(server.requests()[0].range.as_deref(), Some("bytes=20000-"));
        assert_eq!(server.requests().len(), 1);
    }

    #[test]
    fn a_server_ignoring_ranges_restarts_the_file() {
        let (dir, server, url, pin) = setup(50_000);
        server.ignore_ranges(true);
        let dest = dir.path().join("blob.bin");
        // A wrong prefix: appending the 200 body to it would fail the hash.
        fs::write(dir.path().join("blob.bin.part"), vec![7u8; 20_000]).unwrap();
        download(&url, &dest, &pin).unwrap();
        assert_eq!(fs::read(&dest).unwrap(), payload(50_000));
    }

    #[test]
    fn a_part_longer_than_the_file_starts_over() {
        let (dir, server, url, pin) = setup(1_000);
        let dest = dir.path().join("blob.bin");
        fs::write(dir.path().join("blob.bin.part"), vec![1u8; 5_000]).unwrap();
        download(&url, &dest, &pin).unwrap();
        assert_eq!(fs::read(&dest).unwrap(), payload(1_000));
        // Longer than the pinned size: nothing to resume, so no range is asked for.
        let ranges: Vec<_> = server.requests().into_iter().map(|s| s.range).collect();
        assert_eq!(ranges, [None]);
    }

    fn mismatch(err: &anyhow::Error) -> &PinMismatch {
        err.downcast_ref::<PinMismatch>().unwrap_or_else(|| panic!("not a PinMismatch: {err:#}"))
    }

    #[test]
    fn a_hash_mismatch_is_refused_and_removed() {
        let (dir, _server, url, pin) = setup(10_000);
        let actual = pin.sha256.clone();
        let wrong = Pin { sha256: WRONG.into(), ..pin };
        let dest = dir.path().join("blob.bin");
        let err = download(&url, &dest, &wrong).unwrap_err();
        let m = mismatch(&err);
        assert_eq!(m.check, Check::Sha256);
        assert_eq!((m.expected.as_str(), m.actual.as_str()), (WRONG, actual.as_str()));
        let text = err.to_string();
        assert!(
            text.contains("blob.bin") && text.contains(WRONG) && text.contains(&actual),
            "{text}"
        );
        assert!(text.contains(&url), "the URL is named: {text}");
        assert!(!dest.exists() && !dir.path().join("blob.bin.part").exists());
    }

    /// A server announcing another length than the pin's is refused on its headers: no
    /// part file is written.
    #[test]
    fn a_wrong_content_length_is_refused_before_the_body() {
        let (dir, server, url, pin) = setup(10_000);
        let dest = dir.path().join("blob.bin");
        for size in [9_999, 10_001] {
            let err = download(&url, &dest, &Pin { size, ..pin.clone() }).unwrap_err();
            let m = mismatch(&err);
            assert_eq!(m.check, Check::AnnouncedSize, "{err:#}");
            assert_eq!((m.expected.clone(), m.actual.as_str()), (size.to_string(), "10000"));
            assert!(err.to_string().contains(&url), "{err}");
            assert!(!dest.exists() && !dir.path().join("blob.bin.part").exists());
        }
        assert_eq!(server.requests().len(), 2, "no retries of a refused file");
    }

    /// The same check on a resumed transfer: `Content-Range`'s total.
    #[test]
    fn a_wrong_total_on_resume_is_refused() {
        let (dir, _server, url, pin) = setup(50_000);
        let dest = dir.path().join("blob.bin");
        let part = dir.path().join("blob.bin.part");
        fs::write(&part, &payload(50_000)[..20_000]).unwrap();
        let err = download(&url, &dest, &Pin { size: 60_000, ..pin }).unwrap_err();
        let m = mismatch(&err);
        assert_eq!((m.check, m.actual.as_str()), (Check::AnnouncedSize, "50000"));
        assert!(!dest.exists() && !part.exists());
    }

    /// A file already in place that is not the pinned one is fetched again, never trusted.
    #[test]
    fn a_corrupted_file_in_place_is_fetched_again() {
        let (dir, server, url, pin) = setup(10_000);
        let dest = dir.path().join("blob.bin");
        fs::write(&dest, b"corrupt").unwrap();
        // A record that trust-on-first-use once wrote is ignored and removed.
        fs::write(dir.path().join("blob.bin.sha256"), format!("{WRONG}\n")).unwrap();
        let got = download(&url, &dest, &pin).unwrap();
        assert!(got.transferred);
        assert_eq!(fs::read(&dest).unwrap(), payload(10_000));
        assert!(!dir.path().join("blob.bin.sha256").exists());
        assert_eq!(server.requests().len(), 1);
    }
}

mod fetch_models {
    use std::fs;
    use std::path::{Path, PathBuf};
    use std::process::Command;

    use xtask::fetch::{Dtype, FetchOptions, HeadSource, Manifest, Pin, fetch_models};

    use crate::server::Server;
    use crate::support::*;

    const REPO: &str = "openai/clip-vit-large-patch14";
    const REV: &str = "0123456789abcdef0123456789abcdef01234567";
    const CLIP_FILES: [&str; 3] = ["config.json", "preprocessor_config.json", "model.safetensors"];

    /// A hub-shaped tree `{repo}/resolve/{rev}/{file}` plus `head/{name}`, and pins for it.
    fn hub(www: &Path, clip_dir: Option<&Path>, head: &Path) -> Manifest {
        let files = www.join(REPO).join("resolve").join(REV);
        fs::create_dir_all(&files).unwrap();
        let mut clip_files = Vec::new();
        for name in CLIP_FILES {
            let dst = files.join(name);
            match clip_dir {
                Some(dir) => fs::copy(dir.join(name), &dst).map(drop).unwrap(),
                None => fs::write(&dst, payload(4096)).unwrap(),
            }
            clip_files.push(pin_of(name, &dst));
        }
        let head_name = head.file_name().unwrap().to_str().unwrap().to_owned();
        fs::create_dir_all(www.join("head")).unwrap();
        fs::copy(head, www.join("head").join(&head_name)).unwrap();
        Manifest {
            clip_repo: REPO.into(),
            clip_revision: REV.into(),
            clip_files,
            head_url: String::new(),
            head: pin_of(&head_name, head),
        }
    }

    /// The tiny CLIP fixture of aesthete-clip, or `None` after printing why the test skips.
    fn tiny_clip(test: &str) -> Option<PathBuf> {
        let dir = root().join("fixtures/clip/tiny-vit-224-768");
        if dir.join("model.safetensors").exists() {
            return Some(dir);
        }
        println!("skipping {test}: {} is absent (cargo xtask fixtures makes it)", dir.display());
        None
    }

    /// The real head when present (its parity is tested in aesthete-head), else the tiny one;
    /// with `AESTHETE_REQUIRE_MODELS=1` (CI) the real one must be there.
    fn head_file() -> PathBuf {
        let real = root().join("../shared/models/sac+logos+ava1-l14-linearMSE.pth");
        if real.exists() {
            return real;
        }
        if std::env::var("AESTHETE_REQUIRE_MODELS").is_ok_and(|v| v == "1") {
            panic!("{} is absent and AESTHETE_REQUIRE_MODELS=1", real.display());
        }
        println!("the real head is absent ({}): using the tiny one", real.display());
        root().join("fixtures/head/tiny-linear.pth")
    }

    #[test]
    fn downloads_resumes_converts_and_then_does_nothing() {
        let Some(clip) = tiny_clip("downloads_resumes_converts_and_then_does_nothing") else {
            return;
        };
        let tmp = tempfile::tempdir().unwrap();
        let head = head_file();
        let manifest = hub(&tmp.path().join("www"), Some(&clip), &head);
        let server = Server::start(&tmp.path().join("www"));
        let weights = format!("/{REPO}/resolve/{REV}/model.safetensors");
        server.cut_once(&weights, fs::metadata(clip.join("model.safetensors")).unwrap().len() / 3);

        let head_name = manifest.head.name.clone();
        let opts = FetchOptions {
            dir: tmp.path().join("models"),
            dtype: Dtype::F32,
            endpoint: server.url.clone(),
            head: HeadSource::Url(format!("{}/head/{head_name}", server.url)),
            manifest,
        };
        let first = fetch_models(&opts).unwrap();
        assert_eq!(first.transferred.len(), 4);
        assert_eq!(first.converted.len(), 2);
        let resumed: Vec<_> = server.requests().into_iter().filter(|s| s.path == weights).collect();
        assert_eq!(resumed.len(), 2);
        assert!(resumed[1].range.is_some(), "{resumed:?}");

        let models = &opts.dir;
        for name in CLIP_FILES {
            assert!(models.join("clip-vit-large-patch14").join(name).is_file(), "{name}");
        }
        let converted =
            aesthete_head::AestheticHead::load(&models.join("aesthetic-head.safetensors")).unwrap();
        let original = aesthete_head::AestheticHead::load(&head).unwrap();
        let e = aesthete_tensor_unit(converted.input_dim());
        assert_eq!(converted.score(&e).unwrap(), original.score(&e).unwrap());

        // The vision-only CLIP embeds exactly as the full fixture does.
        let load = |dir: &Path| {
            aesthete_clip::ClipVision::load(
                dir,
                &aesthete_clip::Device::Cpu,
                aesthete_clip::DType::F32,
            )
            .unwrap()
        };
        let (ours, theirs) = (load(&models.join("clip-vit-large-patch14")), load(&clip));
        let mut batch = aesthete_tensor::ImageBatch::with_capacity(2, ours.image_size());
        for (i, v) in batch.push_slot().iter_mut().enumerate() {
            *v = ((i % 17) as f32 - 8.0) / 8.0;
        }
        assert_eq!(ours.embed(&batch).unwrap(), theirs.embed(&batch).unwrap());

        let requests = server.requests().len();
        let second = fetch_models(&opts).unwrap();
        assert_eq!(second, Default::default(), "a second run must do nothing");
        assert_eq!(server.requests().len(), requests, "a second run must not touch the network");
    }

    fn aesthete_tensor_unit(dim: usize) -> aesthete_tensor::NormalizedEmbeddings {
        let data = (0..3 * dim).map(|i| ((i * 37 % 101) as f32) - 50.0).collect();
        aesthete_tensor::NormalizedEmbeddings::normalize(data, dim).unwrap()
    }

    /// Through the binary, as a user runs it: `HF_ENDPOINT`, `--pins`, `--head-url`.
    #[test]
    fn a_wrong_pin_fails_with_both_hashes() {
        let tmp = tempfile::tempdir().unwrap();
        let head = root().join("fixtures/head/tiny-linear.pth");
        let mut manifest = hub(&tmp.path().join("www"), None, &head);
        let actual = std::mem::replace(&mut manifest.head.sha256, WRONG.into());
        let server = Server::start(&tmp.path().join("www"));
        let pins = tmp.path().join("pins.json");
        fs::write(&pins, pins_json(&manifest, &format!("{}/head/tiny-linear.pth", server.url)))
            .unwrap();

        let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
            .args(["fetch-models", "--dir"])
            .arg(tmp.path().join("models"))
            .arg("--pins")
            .arg(&pins)
            .env("HF_ENDPOINT", &server.url)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        let last = stderr.lines().last().unwrap_or_default();
        assert!(last.starts_with("xtask: sha256 mismatch for "), "{stderr}");
        assert!(
            last.contains("tiny-linear.pth") && last.contains(WRONG) && last.contains(&actual),
            "{stderr}"
        );
        assert!(!tmp.path().join("models/downloads/tiny-linear.pth").exists());
        // The hub files were fetched from the server named by HF_ENDPOINT.
        assert!(server.requests().iter().any(|s| s.path.ends_with("/config.json")));
    }

    fn pins_json(m: &Manifest, head_url: &str) -> String {
        let pin =
            |p: &Pin| serde_json::json!({ "name": p.name, "sha256": p.sha256, "size": p.size });
        serde_json::json!({
            "clip": { "repo": m.clip_repo, "revision": m.clip_revision, "files": m.clip_files.iter().map(pin).collect::<Vec<_>>() },
            "head": { "url": head_url, "name": m.head.name, "sha256": m.head.sha256, "size": m.head.size },
        })
        .to_string()
    }

    /// The committed pins parse and pin what the issue asks for.
    #[test]
    fn committed_pins() {
        let m = Manifest::committed();
        assert_eq!(m.clip_repo, REPO);
        assert_eq!(m.clip_revision.len(), 40);
        let names: Vec<_> = m.clip_files.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, CLIP_FILES);
        assert_eq!(
            m.head.sha256,
            "21dd590f3ccdc646f0d53120778b296013b096a035a2718c9cb0d511bff0f1e0"
        );
        assert_eq!(m.head.size, 3_714_759);
        let weights = &m.clip_files[2];
        assert_eq!(
            (weights.sha256.as_str(), weights.size),
            ("a2bf730a0c7debf160f7a6b50b3aaf3703e7e88ac73de7a314903141db026dcb", 1_710_540_580)
        );
        let round_trip = Manifest::from_json(&pins_json(&m, &m.head_url)).unwrap();
        assert_eq!(round_trip, m);
    }

    /// The pinned JSON files are the committed fixture's bytes (the fixture is what the
    /// parsing tests of aesthete-clip and aesthete-preprocess read).
    #[test]
    fn the_json_pins_hold_the_fixture_bytes() {
        let dir = root().join("fixtures/clip/openai-clip-vit-large-patch14-32bd642");
        for pin in &Manifest::committed().clip_files[..2] {
            assert_eq!(&pin_of(&pin.name, &dir.join(&pin.name)), pin, "{}", pin.name);
        }
    }

    /// `--pins` needs a sha256 and a size for every file: nothing is trusted on first use.
    #[test]
    fn pins_without_a_digest_or_size_are_refused() {
        let m = Manifest::committed();
        let text = pins_json(&m, &m.head_url);
        for (field, value) in
            [("sha256", serde_json::Value::Null), ("size", serde_json::Value::Null)]
        {
            let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
            v["clip"]["files"][1][field] = value;
            let err = Manifest::from_json(&v.to_string()).unwrap_err();
            assert!(format!("{err:#}").contains("preprocessor_config.json"), "{err:#}");
        }
    }

    /// A hub serving other files under openai's names at the pinned revision, as a user
    /// meets it through the binary with the committed pins: the genuine JSON files pass, a
    /// config of the right length but other bytes is refused on its sha256, weights of
    /// another length on their announced size; nothing appears under the final names.
    #[test]
    fn a_tampered_hub_is_refused_with_the_committed_pins() {
        let tmp = tempfile::tempdir().unwrap();
        let pinned = Manifest::committed();
        let files = tmp
            .path()
            .join("www")
            .join(&pinned.clip_repo)
            .join("resolve")
            .join(&pinned.clip_revision);
        fs::create_dir_all(&files).unwrap();
        let genuine = root().join("fixtures/clip/openai-clip-vit-large-patch14-32bd642");
        let fetch = |tampered: &[(&str, Vec<u8>)]| {
            for name in ["config.json", "preprocessor_config.json"] {
                fs::copy(genuine.join(name), files.join(name)).unwrap();
            }
            for (name, bytes) in tampered {
                fs::write(files.join(name), bytes).unwrap();
            }
            let server = Server::start(&tmp.path().join("www"));
            let models = tmp.path().join("models");
            let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
                .args(["fetch-models", "--dir"])
                .arg(&models)
                .env("HF_ENDPOINT", &server.url)
                .output()
                .unwrap();
            assert!(!out.status.success());
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            assert!(!models.join("clip-vit-large-patch14").exists(), "{stderr}");
            (stderr, models.join("downloads/clip-vit-large-patch14"), server)
        };

        let mut config = fs::read(genuine.join("config.json")).unwrap();
        config[100] ^= 1;
        let (stderr, downloads, server) = fetch(&[("config.json", config)]);
        let last = stderr.lines().last().unwrap_or_default();
        assert!(last.starts_with("xtask: sha256 mismatch for "), "{stderr}");
        assert!(last.contains(&pinned.clip_files[0].sha256), "{stderr}");
        assert!(
            last.contains(&format!("{}/{}/resolve/", server.url, pinned.clip_repo)),
            "{stderr}"
        );
        assert!(
            !downloads.join("config.json").exists() && !downloads.join("config.json.part").exists()
        );

        let (stderr, downloads, _server) = fetch(&[("model.safetensors", payload(4096))]);
        let last = stderr.lines().last().unwrap_or_default();
        assert!(
            last.starts_with("xtask: announced size mismatch for ")
                && last.contains("expected 1710540580 bytes, got 4096 bytes"),
            "{stderr}"
        );
        // The genuine JSON files passed their pins and stay, verified; the weights left nothing.
        assert!(downloads.join("config.json").is_file());
        assert!(downloads.join("preprocessor_config.json").is_file());
        let weights = downloads.join("model.safetensors");
        assert!(!weights.exists() && !downloads.join("model.safetensors.part").exists());
    }

    #[test]
    fn every_task_prints_its_usage_with_help() {
        for task in ["fetch-models", "fixtures", "bench", "gpu-test", "report-screenshot"] {
            let out =
                Command::new(env!("CARGO_BIN_EXE_xtask")).args([task, "--help"]).output().unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "{task} --help: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(stdout.starts_with(&format!("usage: cargo xtask {task}")), "{stdout}");
        }
    }

    /// `--head-file` takes a local copy and verifies it like a download.
    #[test]
    fn a_local_head_file_is_verified() {
        let tmp = tempfile::tempdir().unwrap();
        let head = root().join("fixtures/head/tiny-relu.pth");
        let mut manifest = hub(&tmp.path().join("www"), None, &head);
        manifest.head.sha256 = WRONG.into();
        let server = Server::start(&tmp.path().join("www"));
        let opts = FetchOptions {
            dir: tmp.path().join("models"),
            dtype: Dtype::F16,
            endpoint: server.url.clone(),
            head: HeadSource::File(head),
            manifest,
        };
        let err = fetch_models(&opts).unwrap_err();
        assert!(err.to_string().contains(WRONG), "{err:#}");
        assert!(!server.requests().iter().any(|s| s.path.contains("tiny-relu")));
    }

    /// "The CLI then scoring with the result": `aesthete score` with the fetched model
    /// directory writes the same table as with the fixture models given directly.
    ///
    /// Needs a built `aesthete` binary ($AESTHETE_BIN, or `cargo build -p aesthete` in the
    /// same target directory); skips with a reason otherwise.
    #[test]
    fn the_cli_scores_with_the_fetched_models() {
        let test = "the_cli_scores_with_the_fetched_models";
        let Some(clip) = tiny_clip(test) else { return };
        let Some(cli) = aesthete_binary(test) else { return };
        let tmp = tempfile::tempdir().unwrap();
        // The pipeline fixture's 768-d head, published as safetensors: fetch-models copies it.
        let head = root().join("fixtures/pipeline/head-768.safetensors");
        let manifest = hub(&tmp.path().join("www"), Some(&clip), &head);
        let server = Server::start(&tmp.path().join("www"));
        let opts = FetchOptions {
            dir: tmp.path().join("models"),
            dtype: Dtype::F32,
            endpoint: server.url.clone(),
            head: HeadSource::Url(format!("{}/head/head-768.safetensors", server.url)),
            manifest,
        };
        fetch_models(&opts).unwrap();

        let shard = root().join("fixtures/pipeline/shards/good-000000.tar");
        let score = |out: &Path, models: &[&std::ffi::OsStr]| {
            let status = Command::new(&cli)
                .arg("score")
                .arg(&shard)
                .arg("--output")
                .arg(out)
                .arg("--quiet")
                .args(models)
                .env_remove("AESTHETE_MODELS")
                .status()
                .unwrap();
            assert!(status.success(), "aesthete score failed");
            fs::read(out.join("good-000000.parquet")).unwrap()
        };
        let fetched = score(&tmp.path().join("a"), &["--models".as_ref(), opts.dir.as_os_str()]);
        let direct = score(
            &tmp.path().join("b"),
            &["--clip".as_ref(), clip.as_os_str(), "--head".as_ref(), head.as_os_str()],
        );
        assert!(
            fetched == direct,
            "scores with the fetched models differ from the fixture models'"
        );
    }

    fn aesthete_binary(test: &str) -> Option<PathBuf> {
        let path = std::env::var_os("AESTHETE_BIN").map(PathBuf::from).unwrap_or_else(|| {
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| root().join("target"));
            target.join("debug/aesthete")
        });
        if path.is_file() {
            return Some(path);
        }
        println!(
            "skipping {test}: no aesthete binary at {} (cargo build -p aesthete, or set AESTHETE_BIN)",
            path.display()
        );
        None
    }
}
