//! Times to first token as a histogram every router keeps per pool and the pool controller
//! merges: bucket `i` holds times up to `5 ms × 1.35^i` (the last, from about 40 s, holds
//! everything longer). Summing the counts of several routers gives the exact histogram of all
//! their answers, so the p90 the autoscaler sees is the pool's, not the last writer's.

use std::time::Duration;

pub const BUCKETS: usize = 32;
const FIRST_MS: f64 = 5.0;
const GROWTH: f64 = 1.35;
/// Fewer answers than this say nothing about a pool's latency.
pub const MIN_SAMPLES: u32 = 5;

/// Answers per bucket.
pub type Counts = [u32; BUCKETS];

/// The bucket of one time to first token.
pub fn bucket_of(elapsed: Duration) -> usize {
    let ms = elapsed.as_secs_f64() * 1000.0;
    if ms <= FIRST_MS {
        return 0;
    }
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let index = ((ms / FIRST_MS).ln() / GROWTH.ln()).ceil() as usize;
    index.min(BUCKETS - 1)
}

/// The upper bound of bucket `index`, in ms.
pub fn bucket_ms(index: usize) -> f64 {
    FIRST_MS * GROWTH.powi(i32::try_from(index).unwrap_or(i32::MAX))
}

/// Adds `counts` into `total`; a shorter or longer list (another version's) adds what it has.
pub fn add(total: &mut Counts, counts: &[u32]) {
    for (sum, count) in total.iter_mut().zip(counts) {
        *sum = sum.saturating_add(*count);
    }
}

/// The p90 of `counts` in ms (the upper bound of the bucket it falls in); `None` with fewer than
/// [`MIN_SAMPLES`] answers.
pub fn p90_ms(counts: &Counts) -> Option<f64> {
    let total = counts.iter().fold(0_u32, |sum, count| sum.saturating_add(*count));
    if total < MIN_SAMPLES {
        return None;
    }
    let rank = total - total / 10;
    let mut seen = 0_u32;
    counts
        .iter()
        .position(|count| {
            seen = seen.saturating_add(*count);
            seen >= rank
        })
        .map(bucket_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(times_ms: &[(u64, u32)]) -> Counts {
        let mut counts = [0; BUCKETS];
        for (ms, n) in times_ms {
            counts[bucket_of(Duration::from_millis(*ms))] += n;
        }
        counts
    }

    #[test]
    fn two_routers_merged_give_the_pools_p90_not_either_ones() {
        let fast = counts(&[(10, 50)]);
        let slow = counts(&[(3_000, 50)]);
        let mut merged = fast;
        add(&mut merged, &slow);
        let p90 = p90_ms(&merged).expect("enough answers");
        assert!((3_000.0..3_000.0 * GROWTH).contains(&p90), "{p90}");
        assert!(p90_ms(&fast).expect("fast") < 20.0);
        assert_eq!(p90_ms(&counts(&[(10, 4)])), None, "too few");
        assert_eq!(bucket_of(Duration::from_secs(3600)), BUCKETS - 1);
    }
}
