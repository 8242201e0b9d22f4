//! The counts of a report, made in one streaming pass: a fixed histogram, the rows kept at
//! each threshold, failures by kind. Memory does not grow with the rows.
use std::collections::BTreeMap;

use crate::record::ErrorKind;

/// Histogram bins per score unit (bins 0.1 wide).
pub(crate) const BINS_PER_UNIT: usize = 10;
/// Scores from 0 up to this are binned; the rest are counted below or above.
pub(crate) const TOP: usize = 10;
const BINS: usize = TOP * BINS_PER_UNIT;
/// Longest example error text kept per kind, in bytes.
const EXAMPLE_BYTES: usize = 300;

/// The left edge of bin `i`: the `f32` nearest `i / 10`, as `"4.5".parse::<f32>()` gives it,
/// so that a score on an edge is counted in the same bin as a threshold there counts it.
pub(crate) fn bin_edge(i: usize) -> f32 {
    i as f32 / BINS_PER_UNIT as f32
}

/// Where a score goes in the histogram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Bin {
    Below,
    At(usize),
    Above,
}

impl Bin {
    /// The bin of a score that is not NaN: the last bin whose edge is at most `score`.
    pub fn of(score: f32) -> Bin {
        if score < 0.0 {
            return Bin::Below;
        }
        if score >= TOP as f32 {
            return Bin::Above;
        }
        let mut i = ((score * BINS_PER_UNIT as f32) as usize).min(BINS - 1);
        while i > 0 && bin_edge(i) > score {
            i -= 1;
        }
        while i + 1 < BINS && bin_edge(i + 1) <= score {
            i += 1;
        }
        Bin::At(i)
    }
}

/// One kind of failure: how many, and the first one met.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Failures {
    pub count: u64,
    pub example_key: String,
    pub example: String,
}

/// Every count the report shows.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Tally {
    /// Rows read.
    pub rows: u64,
    /// Rows with a score (NaN scores are failures).
    pub scored: u64,
    /// Scored rows per 0.1-wide bin from 0 to 10.
    pub bins: Vec<u64>,
    /// Scored rows below 0.
    pub below: u64,
    /// Scored rows at 10 or above.
    pub above: u64,
    /// Lowest and highest score, when any.
    pub range: Option<(f32, f32)>,
    /// Sum of the scores, for the mean.
    pub sum: f64,
    /// The thresholds, ascending, with the scored rows at or above each.
    pub thresholds: Vec<(f32, u64)>,
    /// Failed rows by kind.
    pub failures: BTreeMap<ErrorKind, Failures>,
}

impl Tally {
    /// An empty tally counting rows at or above each of `thresholds`.
    pub fn new(thresholds: &[f32]) -> Self {
        let mut thresholds: Vec<f32> = thresholds.to_vec();
        thresholds.sort_by(f32::total_cmp);
        thresholds.dedup();
        Tally {
            rows: 0,
            scored: 0,
            bins: vec![0; BINS],
            below: 0,
            above: 0,
            range: None,
            sum: 0.0,
            thresholds: thresholds.into_iter().map(|t| (t, 0)).collect(),
            failures: BTreeMap::new(),
        }
    }

    /// Rows that failed.
    pub fn failed(&self) -> u64 {
        self.rows - self.scored
    }

    /// Counts a row with a score.
    pub fn add_score(&mut self, key: &str, score: f32) {
        if score.is_nan() {
            self.add_failure(key, ErrorKind::Other, "the score is not a number");
            return;
        }
        self.rows += 1;
        self.scored += 1;
        match Bin::of(score) {
            Bin::Below => self.below += 1,
            Bin::At(i) => self.bins[i] += 1,
            Bin::Above => self.above += 1,
        }
        self.range = Some(match self.range {
            None => (score, score),
            Some((lo, hi)) => (lo.min(score), hi.max(score)),
        });
        self.sum += f64::from(score);
        // The same rule as `--threshold`: kept when score >= threshold.
        let reached = self.thresholds.partition_point(|(t, _)| *t <= score);
        for (_, count) in &mut self.thresholds[..reached] {
            *count += 1;
        }
    }

    /// Counts a row without a score, recorded as `error`.
    pub fn add_error(&mut self, key: &str, error: Option<&str>) {
        let text = error.unwrap_or("no score and no error recorded");
        self.add_failure(key, ErrorKind::of(text), text);
    }

    fn add_failure(&mut self, key: &str, kind: ErrorKind, text: &str) {
        self.rows += 1;
        let entry = self.failures.entry(kind).or_insert_with(|| Failures {
            count: 0,
            example_key: key.to_string(),
            example: truncate(text, EXAMPLE_BYTES).to_string(),
        });
        entry.count += 1;
    }

    /// Scored rows in `[from, to)` units (whole numbers, `to` up to [`TOP`]); `from` 0 takes
    /// in the rows below 0 and `to` [`TOP`] those above.
    pub fn between(&self, from: usize, to: usize) -> u64 {
        let mut count: u64 = self.bins[from * BINS_PER_UNIT..to * BINS_PER_UNIT].iter().sum();
        if from == 0 {
            count += self.below;
        }
        if to == TOP {
            count += self.above;
        }
        count
    }

    /// The median, to the bin: the left edge of the bin holding the middle scored row
    /// (`None` without scores, or when it lies below 0 or above 10).
    pub fn median_bin(&self) -> Option<f32> {
        if self.scored == 0 {
            return None;
        }
        let middle = self.scored.div_ceil(2);
        let mut seen = self.below;
        if seen >= middle {
            return None;
        }
        for (i, count) in self.bins.iter().enumerate() {
            seen += count;
            if seen >= middle {
                return Some(bin_edge(i));
            }
        }
        None
    }
}

/// `text` cut to at most `max` bytes at a character boundary.
pub(crate) fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Scores on and around every bin edge, and spread over the whole range.
    fn scores() -> Vec<f32> {
        let mut scores = Vec::new();
        for i in 0..=TOP * BINS_PER_UNIT {
            let edge = bin_edge(i);
            scores.extend([edge, edge.next_down(), edge.next_up()]);
        }
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..5000 {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            scores.push((state >> 40) as f32 / (1u64 << 24) as f32 * 12.0 - 1.0);
        }
        scores
    }

    /// Bins hold exactly the scores between their edges, and the thresholds count what a
    /// plain filter with `>=` keeps, even for scores one ulp from an edge.
    #[test]
    fn counts_equal_a_plain_recount() {
        let scores = scores();
        let thresholds: Vec<f32> = (6..=16).map(|i| i as f32 * 0.5).chain([4.25, -0.5]).collect();
        let mut tally = Tally::new(&thresholds);
        for (i, score) in scores.iter().enumerate() {
            tally.add_score(&format!("k{i}"), *score);
        }
        assert_eq!(tally.rows, scores.len() as u64);
        assert_eq!(tally.scored, scores.len() as u64);
        for i in 0..TOP * BINS_PER_UNIT {
            let (lo, hi) = (i as f64 / 10.0, (i + 1) as f64 / 10.0);
            // Edges as a person writes them: a score shown as 4.5 is in [4.5, 4.6).
            let expected = scores
                .iter()
                .filter(|&&s| s >= lo.to_string().parse::<f32>().unwrap())
                .filter(|&&s| s < hi.to_string().parse::<f32>().unwrap())
                .count() as u64;
            assert_eq!(tally.bins[i], expected, "bin {i}");
        }
        assert_eq!(tally.below, scores.iter().filter(|&&s| s < 0.0).count() as u64);
        assert_eq!(tally.above, scores.iter().filter(|&&s| s >= 10.0).count() as u64);
        assert_eq!(tally.thresholds.len(), thresholds.len());
        for (t, count) in &tally.thresholds {
            let expected = scores.iter().filter(|&&s| s >= *t).count() as u64;
            assert_eq!(*count, expected, "threshold {t}");
        }
        for (from, to) in [(0, 1), (4, 5), (9, 10), (0, 10)] {
            let expected = scores
                .iter()
                .filter(|&&s| (from == 0 || s >= from as f32) && (to == TOP || s < to as f32))
                .count() as u64;
            assert_eq!(tally.between(from, to), expected, "[{from}, {to})");
        }
        let lo = scores.iter().copied().fold(f32::INFINITY, f32::min);
        let hi = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        assert_eq!(tally.range, Some((lo, hi)));
    }

    #[test]
    fn failures_are_counted_by_kind_with_the_first_example() {
        let mut tally = Tally::new(&[5.0]);
        tally.add_error("a", Some("no image member (members: txt)"));
        tally.add_error("b", Some("b.jpg: corrupt JPEG data: bad marker"));
        tally.add_error("c", Some("no image member (members: json)"));
        tally.add_error("d", None);
        tally.add_score("e", f32::NAN);
        tally.add_score("f", 5.0);
        assert_eq!((tally.rows, tally.scored, tally.failed()), (6, 1, 5));
        let no_image = &tally.failures[&ErrorKind::NoImage];
        assert_eq!((no_image.count, no_image.example_key.as_str()), (2, "a"));
        assert_eq!(tally.failures[&ErrorKind::UndecodableImage].count, 1);
        assert_eq!(tally.failures[&ErrorKind::Other].count, 2);
        assert_eq!(tally.thresholds, [(5.0, 1)]);
        assert_eq!(truncate("ééé", 3), "é");
    }

    #[test]
    fn median_is_the_bin_of_the_middle_row() {
        let mut tally = Tally::new(&[]);
        assert_eq!(tally.median_bin(), None);
        for score in [4.55, 4.61, 7.0, 3.0, 4.5] {
            tally.add_score("k", score);
        }
        assert_eq!(tally.median_bin(), Some(bin_edge(45)));
    }
}
