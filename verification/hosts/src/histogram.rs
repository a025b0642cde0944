//! The latency histogram of every host: log-linear buckets over nanoseconds, mergeable across
//! sessions, with exact count, sum, minimum and maximum. Pure arithmetic; touches nothing else.

use std::time::Duration;

const SUB_BITS: u32 = 6;
const SUB: u64 = 1 << SUB_BITS;
/// Values are clamped below 2^40 ns (about 18 minutes).
const HIST_MAX: u64 = (1 << 40) - 1;
const HIST_BUCKETS: usize = (((40 - 1 - SUB_BITS as u64) << SUB_BITS) + 2 * SUB) as usize;

/// A log-linear histogram of nanosecond values: exact below 128, then 64 buckets per power of
/// two (each at most 1/64 of its value wide). Count, sum, minimum and maximum are exact.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Histogram {
    counts: Vec<u64>,
    count: u64,
    sum: u128,
    min: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram::new()
    }
}

impl Histogram {
    /// An empty histogram.
    pub fn new() -> Histogram {
        Histogram {
            counts: vec![0; HIST_BUCKETS],
            count: 0,
            sum: 0,
            min: u64::MAX,
            max: 0,
        }
    }

    fn index(v: u64) -> usize {
        let v = v.min(HIST_MAX);
        if v < 2 * SUB {
            return v as usize;
        }
        let shift = 63 - v.leading_zeros() - SUB_BITS;
        (((shift as u64) << SUB_BITS) + (v >> shift)) as usize
    }

    /// The lowest value of bucket `idx` and the bucket's width.
    fn bucket(idx: usize) -> (u64, u64) {
        let idx = idx as u64;
        if idx < 2 * SUB {
            return (idx, 1);
        }
        let shift = (idx >> SUB_BITS) - 1;
        let sub = idx - (shift << SUB_BITS);
        (sub << shift, 1 << shift)
    }

    /// Records one value (nanoseconds).
    pub fn record(&mut self, ns: u64) {
        self.counts[Self::index(ns)] += 1;
        self.count += 1;
        self.sum += ns as u128;
        self.min = self.min.min(ns);
        self.max = self.max.max(ns);
    }

    /// Adds every value of `other`.
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.count += other.count;
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }

    /// Number of values recorded.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Exact mean, 0 when empty.
    pub fn mean(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.sum as f64 / self.count as f64
        }
    }

    /// Exact maximum, 0 when empty.
    pub fn max(&self) -> u64 {
        self.max
    }

    /// Exact minimum, 0 when empty.
    pub fn min(&self) -> u64 {
        if self.count == 0 {
            0
        } else {
            self.min
        }
    }

    /// The value at quantile `q` (0..=1): the middle of the bucket holding the value of rank
    /// `ceil(q * count)`, kept within the exact minimum and maximum (which the first and last
    /// ranks return exactly); 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let q = if q.is_nan() { 0.5 } else { q.clamp(0.0, 1.0) };
        let rank = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        if rank == 1 {
            return self.min;
        }
        if rank == self.count {
            return self.max;
        }
        let mut seen = 0u64;
        for (idx, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let (lo, width) = Self::bucket(idx);
                return (lo + (width - 1) / 2).clamp(self.min, self.max);
            }
        }
        self.max
    }

    /// Records a duration (in nanoseconds).
    pub fn record_duration(&mut self, d: Duration) {
        self.record(d.as_nanos().min(u64::MAX as u128) as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_cover_values_tightly() {
        let mut v = 0u64;
        while v < HIST_MAX {
            let i = Histogram::index(v);
            assert!(i < HIST_BUCKETS, "index {i} for {v}");
            let (lo, w) = Histogram::bucket(i);
            assert!(
                lo <= v && v < lo + w,
                "{v} outside bucket {i} = [{lo}, +{w})"
            );
            assert!(w == 1 || w * 64 <= lo, "bucket {i} too wide: {w} at {lo}");
            v = v * 9 / 8 + 1;
        }
        assert_eq!(Histogram::index(u64::MAX), HIST_BUCKETS - 1);
    }

    #[test]
    fn histogram_percentiles_within_two_percent() {
        // 1..=10000 us, one value each: p50 = 5000 us, p99 = 9900 us exactly in the data.
        let mut h = Histogram::new();
        for us in 1..=10_000u64 {
            h.record(us * 1000);
        }
        let close = |got: u64, want: f64| ((got as f64 - want) / want).abs() < 0.02;
        assert!(
            close(h.quantile(0.5), 5_000_000.0),
            "p50 {}",
            h.quantile(0.5)
        );
        assert!(
            close(h.quantile(0.99), 9_900_000.0),
            "p99 {}",
            h.quantile(0.99)
        );
        assert_eq!(h.quantile(1.0), 10_000_000);
        assert_eq!(h.quantile(0.0), 1000);
        assert_eq!(h.max(), 10_000_000);
        assert_eq!(h.mean(), 5_000_500.0);
        // Small values are exact.
        let mut s = Histogram::new();
        for v in [3, 3, 7, 100] {
            s.record(v);
        }
        assert_eq!(s.quantile(0.5), 3);
        assert_eq!(s.quantile(0.75), 7);
        assert_eq!(Histogram::new().quantile(0.99), 0);
    }

    #[test]
    fn histogram_merge_equals_recording_together() {
        let (mut a, mut b, mut all) = (Histogram::new(), Histogram::new(), Histogram::new());
        for v in 0..5000u64 {
            let x = v * v * 37 + 11;
            if v % 3 == 0 {
                a.record(x)
            } else {
                b.record(x)
            }
            all.record(x);
        }
        a.merge(&b);
        assert_eq!(a, all);
    }

    #[test]
    fn durations_are_recorded_in_nanoseconds() {
        let mut h = Histogram::new();
        for ms in 1..=100u64 {
            h.record_duration(Duration::from_millis(ms));
        }
        let p50 = h.quantile(0.5) as f64 / 1e6;
        let p99 = h.quantile(0.99) as f64 / 1e6;
        assert!((49.0..=51.0).contains(&p50), "p50 {p50}");
        assert!((98.0..=100.0).contains(&p99), "p99 {p99}");
        assert_eq!(h.max(), 100_000_000);
    }
}
