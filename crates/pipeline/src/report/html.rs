//! The report page: one self-contained HTML file (inline CSS and SVG, pictures as `data:`
//! URIs, no script, nothing fetched), every text escaped.
use std::fmt::Write as _;
use std::path::PathBuf;

use super::sample::{BUCKETS, Chosen};
use super::tally::{BINS_PER_UNIT, TOP, Tally, bin_edge};
use super::thumbs::Thumbnail;

/// Share of LAION-2B at or above these scores (LAION-Aesthetics' subsets): the marks on the
/// histogram and the reference column of the threshold table.
pub(crate) const LAION_2B: [(f32, &str); 4] =
    [(4.5, "51%"), (5.0, "25%"), (6.0, "0.5%"), (6.5, "0.03%")];

/// Score tables named in the footer, at most.
const TABLES_NAMED: usize = 20;
/// Incomplete shards listed, at most.
const INCOMPLETE_LISTED: usize = 100;

/// A gallery's sample with its picture, if its table has a shard.
pub(crate) type Shown<'a> = (&'a Chosen, Option<&'a Result<Thumbnail, String>>);

/// Everything the page shows.
pub(crate) struct Page<'a> {
    pub tables: &'a [PathBuf],
    pub tally: &'a Tally,
    /// Per bucket, the chosen rows with their picture: `None` when no shard was given for
    /// their table.
    pub buckets: Vec<Vec<Shown<'a>>>,
    /// Whether shards were given at all.
    pub shards_given: bool,
    /// Tables whose completion record says the shard was not read whole, with the reason.
    pub incomplete: &'a [(PathBuf, String)],
    /// The square thumbnails fit in, in pixels.
    pub thumbnail_size: u32,
}

/// The page.
pub(crate) fn render(page: &Page<'_>) -> String {
    let mut out = String::with_capacity(64 * 1024);
    let tally = page.tally;
    out.push_str(HEAD);
    let _ = writeln!(
        out,
        "<style>:root {{ --thumb: {}px; }}</style>\n</head>\n<body>",
        page.thumbnail_size
    );
    out.push_str("<h1>aesthete report</h1>\n");
    let _ = writeln!(
        out,
        "<p class=\"lede\" id=\"totals\">{}: <b>{}</b> samples, <b>{}</b> scored, <b>{}</b> failed.</p>",
        if page.tables.len() == 1 {
            "1 score table".to_string()
        } else {
            format!("{} score tables", group(page.tables.len() as u64))
        },
        group(tally.rows),
        group(tally.scored),
        group(tally.failed()),
    );
    histogram_section(&mut out, tally);
    thresholds_section(&mut out, tally);
    galleries_section(&mut out, page);
    failures_section(&mut out, page);
    footer(&mut out, page);
    out.push_str("</body>\n</html>\n");
    out
}

const HEAD: &str = r#"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>aesthete report</title>
<style>
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1d1d1f; background: #fafafa; max-width: 1180px; margin: 0 auto; padding: 20px 28px 48px; }
h1 { font-size: 26px; margin: 8px 0 4px; }
h2 { font-size: 19px; margin: 30px 0 8px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
h3 { font-size: 16px; margin: 22px 0 2px; }
p.note, .sub { color: #555; font-size: 13px; margin: 2px 0 8px; }
table { border-collapse: collapse; font-size: 14px; }
th, td { padding: 3px 12px; border-bottom: 1px solid #e4e4e4; text-align: left; vertical-align: top; }
th { font-weight: 600; background: #f0f0f0; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.ref td { background: #fff6e0; }
svg#histogram { width: 100%; height: auto; background: #fff; border: 1px solid #e4e4e4; }
svg text { font: 11px system-ui, sans-serif; fill: #333; }
svg .bar { fill: #4a78c2; }
svg .axis { stroke: #888; stroke-width: 1; }
svg .grid { stroke: #eee; stroke-width: 1; }
svg .mark { stroke: #d9822b; stroke-width: 1.5; stroke-dasharray: 5 3; }
svg text.mark-label { fill: #9a5410; }
.grid-pics { display: grid; grid-template-columns: repeat(auto-fill, minmax(calc(var(--thumb) + 14px), 1fr)); gap: 10px; }
figure { margin: 0; background: #fff; border: 1px solid #e4e4e4; padding: 6px; text-align: center; }
figure .pic { height: var(--thumb); display: flex; align-items: center; justify-content: center; }
figure img { display: block; max-width: 100%; max-height: 100%; }
figure .nopic { color: #999; font-size: 12px; }
figcaption { font-size: 12px; margin-top: 4px; display: flex; justify-content: space-between; gap: 6px; }
figcaption .key { overflow: hidden; text-overflow: ellipsis; white-space: nowrap; color: #444; }
figcaption .score { font-weight: 600; font-variant-numeric: tabular-nums; }
code { font-size: 12px; word-break: break-all; }
footer { margin-top: 36px; color: #777; font-size: 12px; }
</style>
"#;

fn histogram_section(out: &mut String, tally: &Tally) {
    out.push_str("<h2>Score distribution</h2>\n");
    let Some((min, max)) = tally.range else {
        out.push_str("<p class=\"note\">No sample has a score.</p>\n");
        return;
    };
    let mean = tally.sum / tally.scored as f64;
    let median =
        tally.median_bin().map_or("–".to_string(), |m| format!("{m:.1} to {:.1}", m + 0.1));
    let _ = writeln!(
        out,
        "<p class=\"note\">Scores from {min:.3} to {max:.3}, mean {mean:.3}, median in {median}. Bars are 0.1 wide; dashed lines mark the thresholds for which LAION-2B's share is known.</p>"
    );
    // The plotted units: the data's, widened to show every reference mark.
    let lo = (min.max(0.0).floor() as usize).min(4);
    let hi = ((max.min(TOP as f32 - 0.01).floor() as usize) + 1).clamp(7, TOP);
    let (width, height) = (960.0, 340.0);
    let (left, right, top, bottom) = (60.0, 16.0, 92.0, 34.0);
    let plot_w = width - left - right;
    let plot_h = height - top - bottom;
    let x = |score: f32| left + (f64::from(score) - lo as f64) / (hi - lo) as f64 * plot_w;
    let bins = &tally.bins[lo * BINS_PER_UNIT..hi * BINS_PER_UNIT];
    let peak = bins.iter().copied().max().unwrap_or(0).max(1);
    let y = |count: u64| top + plot_h - count as f64 / peak as f64 * plot_h;
    let _ = writeln!(
        out,
        "<svg id=\"histogram\" xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {width} {height}\" width=\"{width}\" height=\"{height}\" role=\"img\" aria-label=\"histogram of aesthetic scores\">"
    );
    // Count grid lines and labels.
    for k in 0..=4u64 {
        let count = peak * k / 4;
        let yy = y(count);
        let _ = writeln!(
            out,
            "<line class=\"grid\" x1=\"{left}\" x2=\"{:.1}\" y1=\"{yy:.1}\" y2=\"{yy:.1}\"/><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            width - right,
            left - 6.0,
            yy + 4.0,
            group(count)
        );
    }
    let bin_w = plot_w / ((hi - lo) * BINS_PER_UNIT) as f64;
    for (i, &count) in bins.iter().enumerate() {
        if count == 0 {
            continue;
        }
        let edge = bin_edge(lo * BINS_PER_UNIT + i);
        let (bx, by) = (x(edge), y(count));
        let _ = writeln!(
            out,
            "<rect class=\"bar\" x=\"{:.1}\" y=\"{by:.1}\" width=\"{:.1}\" height=\"{:.1}\"><title>{edge:.1} to {:.1}: {}</title></rect>",
            bx + 0.5,
            (bin_w - 1.0).max(0.5),
            top + plot_h - by,
            edge + 0.1,
            group(count)
        );
    }
    let base = top + plot_h;
    let _ = writeln!(
        out,
        "<line class=\"axis\" x1=\"{left}\" x2=\"{:.1}\" y1=\"{base:.1}\" y2=\"{base:.1}\"/>",
        width - right
    );
    for unit in lo..=hi {
        let ux = x(unit as f32);
        let _ = writeln!(
            out,
            "<line class=\"axis\" x1=\"{ux:.1}\" x2=\"{ux:.1}\" y1=\"{base:.1}\" y2=\"{:.1}\"/><text x=\"{ux:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{unit}</text>",
            base + 5.0,
            base + 18.0
        );
    }
    // Reference marks: labels alternate left and right of their line, in two rows, so that
    // neighbours never overlap.
    for (n, (threshold, laion)) in LAION_2B.iter().enumerate() {
        let mx = x(*threshold);
        let here = share_at(tally, *threshold);
        let row_top = if n < 2 { 14.0 } else { 50.0 };
        let (anchor, tx) = if n % 2 == 0 { ("end", mx - 5.0) } else { ("start", mx + 5.0) };
        let _ = writeln!(
            out,
            "<line class=\"mark\" x1=\"{mx:.1}\" x2=\"{mx:.1}\" y1=\"{row_top:.1}\" y2=\"{base:.1}\"/>"
        );
        for (line, text) in
            [format!("≥ {threshold}"), format!("LAION-2B {laion}"), format!("here {here}")]
                .iter()
                .enumerate()
        {
            let _ = writeln!(
                out,
                "<text class=\"mark-label\" x=\"{tx:.1}\" y=\"{:.1}\" text-anchor=\"{anchor}\">{}</text>",
                row_top + 10.0 + 12.0 * line as f64,
                escape(text)
            );
        }
    }
    out.push_str("</svg>\n");
    let outside: Vec<String> = [(tally.below, "below 0"), (tally.above, "at 10 or above")]
        .iter()
        .filter(|(count, _)| *count > 0)
        .map(|(count, what)| format!("{} {what}", group(*count)))
        .collect();
    let hidden_below: u64 = tally.bins[..lo * BINS_PER_UNIT].iter().sum();
    let hidden_above: u64 = tally.bins[hi * BINS_PER_UNIT..].iter().sum();
    debug_assert_eq!(hidden_below + hidden_above, 0, "the plotted range holds every bin");
    if !outside.is_empty() {
        let _ = writeln!(out, "<p class=\"note\">Not drawn: {}.</p>", outside.join(", "));
    }
}

/// The share of scored rows at or above `threshold`, as the threshold table gives it.
fn share_at(tally: &Tally, threshold: f32) -> String {
    let count = tally.thresholds.iter().find(|(t, _)| *t == threshold).map_or(0, |(_, c)| *c);
    percent(count, tally.scored)
}

fn thresholds_section(out: &mut String, tally: &Tally) {
    out.push_str("<h2>Thresholds</h2>\n");
    let _ = writeln!(
        out,
        "<p class=\"note\">Samples kept by <code>--threshold T</code> (score ≥ T), of the {} scored. Highlighted rows have a LAION-2B reference.</p>",
        group(tally.scored)
    );
    out.push_str("<table id=\"thresholds\">\n<thead><tr><th>threshold</th><th class=\"num\">kept</th><th class=\"num\">share kept</th><th class=\"num\">LAION-2B</th></tr></thead>\n<tbody>\n");
    for (threshold, count) in &tally.thresholds {
        let laion = LAION_2B.iter().find(|(t, _)| t == threshold).map(|(_, share)| *share);
        let _ = writeln!(
            out,
            "<tr{}><td>≥ {threshold}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
            if laion.is_some() { " class=\"ref\"" } else { "" },
            group(*count),
            percent(*count, tally.scored),
            laion.unwrap_or("")
        );
    }
    out.push_str("</tbody>\n</table>\n");
}

/// A bucket's heading.
fn bucket_label(bucket: usize) -> String {
    match bucket {
        0 => "below 1".to_string(),
        b if b == BUCKETS - 1 => format!("{} and above", TOP),
        b => format!("{b} to {}", b + 1),
    }
}

/// Scored rows in a bucket, from the histogram's counts.
fn bucket_count(tally: &Tally, bucket: usize) -> u64 {
    match bucket {
        0 => tally.between(0, 1),
        b if b == BUCKETS - 1 => tally.above,
        b if b == BUCKETS - 2 => tally.between(b, TOP) - tally.above,
        b => tally.between(b, b + 1),
    }
}

fn galleries_section(out: &mut String, page: &Page<'_>) {
    out.push_str("<h2>Samples by score</h2>\n");
    out.push_str("<p class=\"note\">For each score bucket, samples chosen by a fixed hash of their key: the same tables always show the same samples.");
    if !page.shards_given {
        out.push_str(" No shards were given (<code>--shards</code>), so no pictures.");
    }
    out.push_str("</p>\n");
    for (bucket, chosen) in page.buckets.iter().enumerate().rev() {
        let count = bucket_count(page.tally, bucket);
        if count == 0 {
            continue;
        }
        let _ = writeln!(
            out,
            "<section class=\"bucket\" id=\"bucket-{bucket}\">\n<h3>{}</h3>\n<p class=\"sub\">{} ({} of scored); {} shown.</p>",
            bucket_label(bucket),
            samples(count),
            percent(count, page.tally.scored),
            chosen.len()
        );
        let pictured = chosen.iter().any(|(_, picture)| picture.is_some());
        if pictured {
            out.push_str("<div class=\"grid-pics\">\n");
            for (row, picture) in chosen {
                figure(out, page, row, *picture);
            }
            out.push_str("</div>\n");
        } else {
            out.push_str("<table class=\"samples\"><thead><tr><th>key</th><th class=\"num\">score</th><th>size</th><th>table</th></tr></thead><tbody>\n");
            for (row, _) in chosen {
                let _ = writeln!(
                    out,
                    "<tr><td><code>{}</code></td><td class=\"num\">{:.3}</td><td>{}</td><td>{}</td></tr>",
                    escape(&row.key),
                    row.score,
                    row.size.map_or(String::new(), |(w, h)| format!("{w}×{h}")),
                    escape(&table_name(page, row.table)),
                );
            }
            out.push_str("</tbody></table>\n");
        }
        out.push_str("</section>\n");
    }
}

fn figure(
    out: &mut String,
    page: &Page<'_>,
    row: &Chosen,
    picture: Option<&Result<Thumbnail, String>>,
) {
    let key = escape(&row.key);
    let size = row.size.map_or(String::new(), |(w, h)| format!(", {w}×{h}"));
    let title = escape(&format!("{} in {}{size}", row.key, table_name(page, row.table)));
    out.push_str("<figure><div class=\"pic\">");
    match picture {
        Some(Ok(thumb)) => {
            let _ = write!(
                out,
                "<img src=\"{}\" width=\"{}\" height=\"{}\" alt=\"{key}\" title=\"{title}\">",
                thumb.data_uri, thumb.width, thumb.height
            );
        }
        Some(Err(reason)) => {
            let _ = write!(
                out,
                "<span class=\"nopic\" title=\"{}\">no picture: {}</span>",
                escape(reason),
                escape(super::tally::truncate(reason, 80))
            );
        }
        None => out.push_str("<span class=\"nopic\">no shard given</span>"),
    }
    out.push_str("</div>");
    let _ = writeln!(
        out,
        "<figcaption><span class=\"key\" title=\"{title}\">{key}</span><span class=\"score\">{:.3}</span></figcaption></figure>",
        row.score
    );
}

fn failures_section(out: &mut String, page: &Page<'_>) {
    let tally = page.tally;
    out.push_str("<h2>Failures</h2>\n");
    if tally.failures.is_empty() {
        out.push_str("<p class=\"note\" id=\"no-failures\">No sample failed.</p>\n");
    } else {
        let _ = writeln!(
            out,
            "<p class=\"note\">{} of {} samples have no score; they are never kept.</p>",
            group(tally.failed()),
            group(tally.rows)
        );
        out.push_str("<table id=\"failures\">\n<thead><tr><th>kind</th><th class=\"num\">samples</th><th class=\"num\">share</th><th>first seen</th></tr></thead>\n<tbody>\n");
        for (kind, failures) in &tally.failures {
            let _ = writeln!(
                out,
                "<tr><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td><code>{}</code>: {}</td></tr>",
                kind.label(),
                group(failures.count),
                percent(failures.count, tally.rows),
                escape(&failures.example_key),
                escape(&failures.example)
            );
        }
        out.push_str("</tbody>\n</table>\n");
    }
    if !page.incomplete.is_empty() {
        let _ = writeln!(
            out,
            "<h3>Shards not read whole</h3>\n<p class=\"note\">Their tables hold the samples before the fault; a rerun of the scoring retries them.</p>\n<table id=\"incomplete\"><tbody>"
        );
        for (table, reason) in page.incomplete.iter().take(INCOMPLETE_LISTED) {
            let _ = writeln!(
                out,
                "<tr><td><code>{}</code></td><td>{}</td></tr>",
                escape(&table.display().to_string()),
                escape(reason)
            );
        }
        out.push_str("</tbody></table>\n");
        if page.incomplete.len() > INCOMPLETE_LISTED {
            let _ = writeln!(
                out,
                "<p class=\"note\">and {} more.</p>",
                group((page.incomplete.len() - INCOMPLETE_LISTED) as u64)
            );
        }
    }
}

fn footer(out: &mut String, page: &Page<'_>) {
    let names: Vec<String> = page
        .tables
        .iter()
        .take(TABLES_NAMED)
        .map(|t| format!("<code>{}</code>", escape(&t.display().to_string())))
        .collect();
    let more = page.tables.len().saturating_sub(TABLES_NAMED);
    let _ = writeln!(
        out,
        "<footer>Made by aesthete {} from {}{}.</footer>",
        env!("CARGO_PKG_VERSION"),
        names.join(", "),
        if more > 0 { format!(" and {} more", group(more as u64)) } else { String::new() }
    );
}

fn table_name(page: &Page<'_>, table: usize) -> String {
    page.tables[table].file_name().map_or(String::new(), |n| n.to_string_lossy().into_owned())
}

/// `text` with the characters that mean something in HTML (text or attribute values) escaped.
pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `1 sample`, `1,234 samples`.
fn samples(count: u64) -> String {
    if count == 1 { "1 sample".to_string() } else { format!("{} samples", group(count)) }
}

/// `1234567` → `1,234,567`.
pub(crate) fn group(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// `part` of `whole` in percent, with two significant digits below 1%.
pub(crate) fn percent(part: u64, whole: u64) -> String {
    if whole == 0 {
        return "–".to_string();
    }
    let p = part as f64 * 100.0 / whole as f64;
    if p == 0.0 || p >= 1.0 {
        format!("{p:.1}%")
    } else {
        let decimals = (1.0 - p.log10().floor()) as usize;
        format!("{p:.decimals$}%")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped() {
        assert_eq!(
            escape(r#"<img src=x onerror="a('b')">&"#),
            "&lt;img src=x onerror=&quot;a(&#39;b&#39;)&quot;&gt;&amp;"
        );
    }

    #[test]
    fn numbers_read_as_a_person_writes_them() {
        assert_eq!(group(0), "0");
        assert_eq!(group(999), "999");
        assert_eq!(group(1000), "1,000");
        assert_eq!(group(10_000_000), "10,000,000");
        assert_eq!(percent(1, 4), "25.0%");
        assert_eq!(percent(0, 4), "0.0%");
        assert_eq!(percent(3, 1000), "0.30%");
        assert_eq!(percent(3, 10_000), "0.030%");
        assert_eq!(percent(1, 0), "–");
    }
}
