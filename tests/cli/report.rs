//! `aesthete report` on tables scored from the fixture shards (tiny models), plus a table of
//! hostile keys and errors. The expected numbers are recounted here from the tables with the
//! test's own Parquet reader, not taken from the report code. The page is opened in headless
//! Chromium when it is installed: what a person would see is measured by a probe script.
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_array::{ArrayRef, BooleanArray, Float32Array, RecordBatch, StringArray, UInt32Array};
use parquet::arrow::ArrowWriter;

use super::*;

/// A key and an error text that would break the page if they were not escaped.
const HOSTILE_KEY: &str = r#"x<script>document.title='pwned'</script>&"'"#;
const HOSTILE_ERROR: &str = r#"<b>bold</b> & "quoted" <img src=x>"#;
/// The hostile table's scored row: alone in the 9-to-10 bucket, so always shown.
const HOSTILE_SCORE: f32 = 9.25;

/// Every half point from 3 to 8, as the page always shows, and the one the test adds.
fn thresholds() -> Vec<f32> {
    (6..=16).map(|h| h as f32 / 2.0).chain([4.25]).collect()
}

/// Scores the fixture shards into `dir/scores` and writes the hostile table there.
fn scored_fixtures(dir: &Path) -> PathBuf {
    let scores = dir.join("scores");
    let mut args: Vec<String> = vec!["score".into(), shard("").display().to_string()];
    args.extend(["--output".into(), scores.display().to_string(), "--quiet".into()]);
    args.extend(model_args());
    let run = aesthete(args);
    // truncated.tar fails the run (exit 1) and keeps what was salvaged.
    assert_eq!(run.status.code(), Some(1), "{}", stderr(&run));
    write_hostile_table(&scores.join("hostile.parquet"));
    scores
}

fn write_hostile_table(path: &Path) {
    let columns: Vec<(&str, ArrayRef)> = vec![
        ("key", Arc::new(StringArray::from(vec![HOSTILE_KEY, "fails<"]))),
        ("aesthetic_score", Arc::new(Float32Array::from(vec![Some(HOSTILE_SCORE), None]))),
        ("kept", Arc::new(BooleanArray::from(vec![true, false]))),
        ("error", Arc::new(StringArray::from(vec![None, Some(HOSTILE_ERROR)]))),
        ("width", Arc::new(UInt32Array::from(vec![Some(10), None]))),
        ("height", Arc::new(UInt32Array::from(vec![Some(10), None]))),
    ];
    let batch = RecordBatch::try_from_iter(columns).unwrap();
    let mut writer =
        ArrowWriter::try_new(fs::File::create(path).unwrap(), batch.schema(), None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
}

/// What the tables hold, recounted.
struct Expected {
    rows: usize,
    scored: Vec<f32>,
    /// Rows per error text's start ("no image member", ...).
    no_image: usize,
}

impl Expected {
    fn of(scores: &Path) -> Self {
        let mut rows = Vec::new();
        for entry in fs::read_dir(scores).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "parquet") {
                rows.extend(read_table(&path));
            }
        }
        Expected {
            rows: rows.len(),
            scored: rows.iter().filter_map(|r| r.score).collect(),
            no_image: rows
                .iter()
                .filter(|r| r.error.as_deref().is_some_and(|e| e.starts_with("no image")))
                .count(),
        }
    }

    fn failed(&self) -> usize {
        self.rows - self.scored.len()
    }

    fn kept(&self, threshold: f32) -> usize {
        self.scored.iter().filter(|&&s| s >= threshold).count()
    }

    /// Samples the galleries show: up to `per_bucket` of each whole-number bucket.
    fn shown(&self, per_bucket: usize) -> usize {
        let mut buckets: BTreeMap<i64, usize> = BTreeMap::new();
        for s in &self.scored {
            *buckets.entry((s.floor() as i64).clamp(0, 10)).or_default() += 1;
        }
        buckets.values().map(|n| (*n).min(per_bucket)).sum()
    }
}

fn run_report(tables: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut args: Vec<String> = vec!["report".into(), tables.display().to_string()];
    args.extend(["--output".into(), out.display().to_string()]);
    args.extend(extra.iter().map(|s| s.to_string()));
    aesthete(args)
}

/// `1,234` → 1234.
fn number(text: &str) -> usize {
    text.trim().replace(',', "").parse().unwrap_or_else(|e| panic!("{text:?}: {e}"))
}

#[test]
fn page_shows_what_the_tables_hold() {
    let dir = tempfile::tempdir().unwrap();
    let scores = scored_fixtures(dir.path());
    let expected = Expected::of(&scores);
    assert!(expected.failed() > 0 && expected.scored.len() > 20, "fixtures changed?");
    let page = dir.path().join("report.html");
    let run = run_report(
        &scores,
        &page,
        &["--shards", shard("").to_str().unwrap(), "--threshold", "4.25", "-q"],
    );
    assert!(run.status.success(), "{}", stderr(&run));
    let summary = stderr(&run);
    let counts = format!(
        "{} samples ({} scored, {} failed)",
        expected.rows,
        expected.scored.len(),
        expected.failed()
    );
    assert!(summary.contains(&counts), "{summary}");

    // Self-contained: no script, stylesheet, font or picture from anywhere else.
    let html = fs::read_to_string(&page).unwrap();
    assert!(!html.contains("<script") && !html.contains("<link"), "the page needs no script");
    assert!(!html.contains("url("), "no external resources in CSS");
    let images: Vec<&str> = html.split("<img src=\"").skip(1).collect();
    // One picture per sample shown, but for the hostile row: its table has no shard.
    let pictured = expected.shown(12) - 1;
    assert_eq!(images.len(), pictured);
    assert!(images.iter().all(|i| i.starts_with("data:image/jpeg;base64,")));
    // Keys and errors are text, never markup.
    assert!(!html.contains(HOSTILE_KEY) && !html.contains(HOSTILE_ERROR));
    assert!(html.contains("x&lt;script&gt;"), "the hostile key is shown, escaped");

    let Some(chromium) = chromium() else { return };
    let probe = run_probe(&chromium, &html, dir.path());

    // The histogram is drawn, with a bar per filled bin.
    let svg = &probe["histogram"];
    assert!(svg["width"].as_f64().unwrap() > 300.0, "{svg}");
    assert!(svg["height"].as_f64().unwrap() > 100.0, "{svg}");
    let bars = probe["bars"].as_array().unwrap();
    assert!(!bars.is_empty() && bars.iter().all(|h| h.as_f64().unwrap() > 0.0), "{bars:?}");
    let mut bins: Vec<i64> = expected.scored.iter().map(|s| (s * 10.0).floor() as i64).collect();
    bins.sort();
    bins.dedup();
    // Bars are 0.1 wide: one per bin holding a score (±1 for scores an ulp from an edge).
    assert!(bars.len().abs_diff(bins.len()) <= 1, "{} bars for {} bins", bars.len(), bins.len());

    // Every picture decoded, within the thumbnail size.
    let pictures = probe["images"].as_array().unwrap();
    assert_eq!(pictures.len(), pictured);
    for picture in pictures {
        let (w, h) = (picture["w"].as_u64().unwrap(), picture["h"].as_u64().unwrap());
        assert!(w > 0 && h > 0 && w <= 160 && h <= 160, "{picture}");
    }

    // The threshold table: every threshold, with the counts the tables hold.
    let rows = probe["thresholds"].as_array().unwrap();
    let mut seen = Vec::new();
    for row in rows {
        let cells: Vec<&str> =
            row.as_array().unwrap().iter().map(|c| c.as_str().unwrap()).collect();
        let threshold: f32 = cells[0].trim_start_matches('≥').trim().parse().unwrap();
        let kept = expected.kept(threshold);
        assert_eq!(number(cells[1]), kept, "kept at {threshold}: {cells:?}");
        let share: f64 = cells[2].trim_end_matches('%').parse().unwrap();
        let want = kept as f64 * 100.0 / expected.scored.len() as f64;
        assert!((share - want).abs() <= 0.05, "share at {threshold}: {cells:?} vs {want}");
        seen.push(threshold);
    }
    let mut want = thresholds();
    want.sort_by(f32::total_cmp);
    assert_eq!(seen, want);

    // Totals and failures.
    let totals = probe["totals"].as_str().unwrap();
    let want_totals = format!(
        "{} samples, {} scored, {} failed",
        expected.rows,
        expected.scored.len(),
        expected.failed()
    );
    assert!(totals.contains(&want_totals), "{totals:?} vs {want_totals:?}");
    let failures = probe["failures"].as_array().unwrap();
    let mut failed = 0;
    for row in failures {
        let cells: Vec<&str> =
            row.as_array().unwrap().iter().map(|c| c.as_str().unwrap()).collect();
        failed += number(cells[1]);
        if cells[0] == "no image" {
            assert_eq!(number(cells[1]), expected.no_image);
        }
        if cells[0] == "other" {
            assert!(cells[3].contains(HOSTILE_ERROR), "shown as text: {cells:?}");
        }
    }
    assert_eq!(failed, expected.failed());

    // The hostile key reads as itself, and ran nothing.
    let keys: Vec<&str> =
        probe["keys"].as_array().unwrap().iter().map(|k| k.as_str().unwrap()).collect();
    assert!(keys.contains(&HOSTILE_KEY), "{keys:?}");
    assert_eq!(probe["scripts"], 1, "only the probe runs");
    assert_eq!(probe["title"], "aesthete report");
}

/// The gallery is a function of the tables: the same keys with or without shards, and the
/// same page on every run.
#[test]
fn galleries_are_reproducible_and_list_keys_without_shards() {
    let dir = tempfile::tempdir().unwrap();
    let scores = scored_fixtures(dir.path());
    let shards = shard("").display().to_string();
    let runs: [&[&str]; 3] = [&[], &[], &["--shards", &shards]];
    let pages: Vec<String> = runs
        .iter()
        .enumerate()
        .map(|(i, extra)| {
            let page = dir.path().join(format!("{i}.html"));
            let mut args = vec!["-q", "--thumbnails-per-bucket", "3"];
            args.extend_from_slice(extra);
            let run = run_report(&scores, &page, &args);
            assert!(run.status.success(), "{}", stderr(&run));
            fs::read_to_string(page).unwrap()
        })
        .collect();
    assert_eq!(pages[0], pages[1], "same tables, same page");
    assert!(!pages[0].contains("<img"), "no shards, no pictures");
    let listed = gallery_keys(&pages[0]);
    let expected = Expected::of(&scores);
    assert_eq!(listed.len(), expected.shown(3), "{listed:?}");
    assert!(pages[2].contains("<img"));
    assert_eq!(gallery_keys(&pages[2]), listed, "the same samples with pictures");
}

/// The keys of a page's galleries (as escaped in the HTML), sorted: figure captions and the
/// lists of buckets without pictures.
fn gallery_keys(html: &str) -> Vec<String> {
    let captions = html
        .split("<span class=\"key\" title=\"")
        .skip(1)
        .filter_map(|rest| rest.split_once("\">"))
        .map(|(_, rest)| rest.split("</span>").next().unwrap());
    let listed = html
        .split("<table class=\"samples\">")
        .skip(1)
        .filter_map(|table| table.split("</table>").next())
        .flat_map(|table| table.split("<tr><td><code>").skip(1))
        .map(|row| row.split("</code>").next().unwrap());
    let mut keys: Vec<String> = captions.chain(listed).map(str::to_string).collect();
    keys.sort();
    keys
}

#[test]
fn unreadable_table_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let table = dir.path().join("not-a-table.parquet");
    fs::write(&table, b"PAR1 but not really").unwrap();
    let run = run_report(&table, &dir.path().join("r.html"), &[]);
    assert_eq!(run.status.code(), Some(2));
    assert!(stderr(&run).contains("not-a-table.parquet"), "{}", stderr(&run));
    assert!(!dir.path().join("r.html").exists());
}

/// Chromium's path, or `None` after one line saying it is missing; with
/// `AESTHETE_REQUIRE_CHROMIUM=1` a missing browser fails the test instead.
fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path)
        .flat_map(|dir| ["chromium", "chromium-browser"].map(|name| dir.join(name)))
        .find(|candidate| candidate.is_file());
    if found.is_none() {
        assert!(
            std::env::var("AESTHETE_REQUIRE_CHROMIUM").as_deref() != Ok("1"),
            "AESTHETE_REQUIRE_CHROMIUM=1 but chromium is not installed (apt-get install chromium)"
        );
        eprintln!("skipped: chromium not installed (apt-get install chromium)");
    }
    found
}

/// Measures, once the page has loaded, what a person would see.
const PROBE: &str = r##"<pre id="probe"></pre><script>
addEventListener("load", () => {
  const text = (el) => el.textContent.trim();
  const box = document.querySelector("svg#histogram").getBoundingClientRect();
  const result = {
    title: document.title,
    scripts: document.querySelectorAll("script").length,
    totals: text(document.getElementById("totals")),
    histogram: { width: box.width, height: box.height },
    bars: [...document.querySelectorAll("svg#histogram rect.bar")].map((r) => r.getBoundingClientRect().height),
    images: [...document.images].map((i) => ({ w: i.naturalWidth, h: i.naturalHeight, done: i.complete })),
    thresholds: [...document.querySelectorAll("#thresholds tbody tr")].map((tr) => [...tr.cells].map(text)),
    failures: [...document.querySelectorAll("#failures tbody tr")].map((tr) => [...tr.cells].map(text)),
    keys: [...document.querySelectorAll("figcaption .key, table.samples code")].map(text),
  };
  document.getElementById("probe").textContent = JSON.stringify(result);
});
</script>
"##;

/// Opens a copy of the page with the probe in headless Chromium and returns its findings.
fn run_probe(chromium: &Path, html: &str, dir: &Path) -> serde_json::Value {
    let (body, end) = html.rsplit_once("</body>").expect("a body");
    let probed = dir.join("probed.html");
    fs::write(&probed, format!("{body}{PROBE}</body>{end}")).unwrap();
    let mut child = Command::new(chromium)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000"])
        .arg(format!("--user-data-dir={}", dir.join("chromium-profile").display()))
        .arg("--dump-dom")
        .arg(format!("file://{}", probed.display()))
        // Files, not pipes: the DOM is larger than a pipe holds while we wait.
        .stdout(fs::File::create(dir.join("dom.html")).unwrap())
        .stderr(fs::File::create(dir.join("chromium.log")).unwrap())
        .spawn()
        .expect("starting chromium");
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(120) {
            child.kill().unwrap();
            panic!("chromium did not finish in 120 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let dom = fs::read_to_string(dir.join("dom.html")).unwrap();
    let log = || fs::read_to_string(dir.join("chromium.log")).unwrap_or_default();
    let json = dom
        .split_once("<pre id=\"probe\">")
        .and_then(|(_, rest)| rest.split_once("</pre>"))
        .map(|(json, _)| json)
        .unwrap_or_else(|| panic!("no probe in chromium's DOM: {}", log()));
    assert!(!json.is_empty(), "the probe did not run: {}", log());
    let json = json.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&");
    serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"))
}
