//! The samples a report shows: for each score bucket, the `k` rows whose keys hash lowest.
//!
//! A fixed hash of the key (not std's randomly seeded one) makes the choice a function of
//! the rows alone: the same tables give the same gallery on every run and machine, whatever
//! order the rows come in, and the choice is made streaming with `k` rows per bucket held.
use std::cmp::Ordering;
use std::collections::BinaryHeap;

/// Score buckets: below 1, one per unit from 1 to 10, 10 and above.
pub(crate) const BUCKETS: usize = 11;

/// The bucket of a score that is not NaN.
pub(crate) fn bucket_of(score: f32) -> usize {
    if score < 1.0 {
        0
    } else if score >= 10.0 {
        BUCKETS - 1
    } else {
        // Whole numbers are exact in f32: the floor is the bucket.
        score.floor() as usize
    }
}

/// A row chosen for a gallery.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Chosen {
    pub hash: u64,
    pub key: String,
    /// Index of its table in the report's sorted list.
    pub table: usize,
    pub score: f32,
    pub size: Option<(u32, u32)>,
}

impl Chosen {
    fn rank(&self) -> (u64, &str, usize) {
        (self.hash, &self.key, self.table)
    }
}

impl Eq for Chosen {}

impl PartialOrd for Chosen {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Chosen {
    fn cmp(&self, other: &Self) -> Ordering {
        self.rank().cmp(&other.rank())
    }
}

/// Keeps, per bucket, the `per_bucket` rows of lowest (hash, key, table).
pub(crate) struct Sampler {
    per_bucket: usize,
    /// Max-heaps: the top is the row to drop first.
    buckets: Vec<BinaryHeap<Chosen>>,
}

impl Sampler {
    pub fn new(per_bucket: usize) -> Self {
        Sampler { per_bucket, buckets: (0..BUCKETS).map(|_| BinaryHeap::new()).collect() }
    }

    /// Offers a scored row; the key is copied only when the row is taken.
    pub fn offer(&mut self, key: &str, table: usize, score: f32, size: Option<(u32, u32)>) {
        if self.per_bucket == 0 || score.is_nan() {
            return;
        }
        let heap = &mut self.buckets[bucket_of(score)];
        let hash = key_hash(key);
        if heap.len() == self.per_bucket {
            let worst = heap.peek().expect("full");
            if (hash, key, table) >= worst.rank() {
                return;
            }
            heap.pop();
        }
        heap.push(Chosen { hash, key: key.to_string(), table, score, size });
    }

    /// The chosen rows of each bucket, best score first (ties by key).
    pub fn into_buckets(self) -> Vec<Vec<Chosen>> {
        self.buckets
            .into_iter()
            .map(|heap| {
                let mut rows = heap.into_vec();
                rows.sort_by(|a, b| b.score.total_cmp(&a.score).then_with(|| a.key.cmp(&b.key)));
                rows
            })
            .collect()
    }
}

/// FNV-1a (64-bit) of the key, then SplitMix64's finalizer so that keys differing in the last
/// digit spread over the whole range: fixed, with no seed, the same everywhere.
pub(crate) fn key_hash(key: &str) -> u64 {
    mix64(fnv1a64(key.as_bytes()))
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// SplitMix64's output function.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows() -> Vec<(String, usize, f32)> {
        (0..3000)
            .map(|i| {
                let score = 0.5 + (i * 7919 % 1000) as f32 / 100.0;
                (format!("{:06}", i), i % 5, score)
            })
            .collect()
    }

    fn sample(rows: &[(String, usize, f32)], per_bucket: usize) -> Vec<Vec<Chosen>> {
        let mut sampler = Sampler::new(per_bucket);
        for (key, table, score) in rows {
            sampler.offer(key, *table, *score, None);
        }
        sampler.into_buckets()
    }

    /// The same rows in any order give the same choice, and it is the rows of lowest hash
    /// in each bucket, as sorting the whole bucket finds them.
    #[test]
    fn choice_is_the_lowest_hashes_whatever_the_order() {
        let rows = rows();
        let chosen = sample(&rows, 4);
        let mut reversed = rows.clone();
        reversed.reverse();
        assert_eq!(sample(&reversed, 4), chosen);
        let mut shuffled = rows.clone();
        let mut state = 7u64;
        for i in (1..shuffled.len()).rev() {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
            shuffled.swap(i, (state >> 33) as usize % (i + 1));
        }
        assert_eq!(sample(&shuffled, 4), chosen);

        for (bucket, got) in chosen.iter().enumerate() {
            let mut all: Vec<_> = rows.iter().filter(|r| bucket_of(r.2) == bucket).collect();
            all.sort_by_key(|r| (key_hash(&r.0), r.0.clone(), r.1));
            let mut want: Vec<&str> = all.iter().take(4).map(|r| r.0.as_str()).collect();
            let mut got: Vec<&str> = got.iter().map(|c| c.key.as_str()).collect();
            want.sort();
            got.sort();
            assert_eq!(got, want, "bucket {bucket}");
        }
        // Buckets 0 (0.5 to 1) to 10 (10.0 to 10.49) all have rows here.
        assert!(chosen.iter().all(|b| b.len() == 4));
        assert!(chosen[0].iter().all(|c| c.score < 1.0));
        assert!(chosen[10].iter().all(|c| c.score >= 10.0));
    }

    /// The hash is the published algorithms (their reference vectors), so a gallery is the
    /// same on every machine and in every version; near keys spread.
    #[test]
    fn hash_is_fixed_and_spreads_near_keys() {
        // FNV-1a 64 test vectors (the FNV reference code's test suite).
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
        // SplitMix64 seeded with 0: its first output mixes the state 0x9e3779b97f4a7c15.
        assert_eq!(mix64(0x9e37_79b9_7f4a_7c15), 0xe220_a839_7b1d_cdaf);
        let hashes: Vec<u64> = (0..64).map(|i| key_hash(&format!("{i:06}"))).collect();
        let high_bits_set = hashes.iter().filter(|h| *h >> 63 == 1).count();
        assert!((16..=48).contains(&high_bits_set), "{high_bits_set} of 64");
    }

    #[test]
    fn buckets_split_at_whole_scores() {
        assert_eq!(bucket_of(-3.0), 0);
        assert_eq!(bucket_of(0.999), 0);
        assert_eq!(bucket_of(1.0), 1);
        assert_eq!(bucket_of(4.999_999), 4);
        assert_eq!(bucket_of(5.0), 5);
        assert_eq!(bucket_of(9.99), 9);
        assert_eq!(bucket_of(10.0), 10);
        assert_eq!(bucket_of(f32::INFINITY), 10);
    }
}
