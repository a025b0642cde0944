//! I/O statistics, per LUN and per target port, like FreeBSD's `ctlstat`.
//!
//! [`Stats`] is shared by every connection task. [`Stats::record`] runs once per SCSI command
//! on the I/O path and only touches atomics: the per-key counter blocks live in maps that are
//! read-locked on the hot path and write-locked once, when a LUN or port is seen for the first
//! time. [`Stats::snapshot`] turns the counters into a serializable [`StatInfo`] (the answer to
//! `duetctl stat`).
//!
//! Latency is kept as a sum, a count (the number of operations), a maximum and a histogram of
//! power-of-two buckets in microseconds, from which percentiles are estimated: bucket 0 holds
//! latencies below 1 µs, bucket `b >= 1` holds `2^(b-1) ..= 2^b - 1` µs, and the last bucket
//! also holds everything longer. A percentile is reported as the upper bound of the bucket it
//! falls in, never above the maximum seen: an estimate that errs on the slow side by less than a
//! factor of two.
//!
//! Counters are cumulative since the `Stats` was created; [`IoStat::since`] gives the activity
//! between two snapshots and [`IoStat::rates`] turns it into per-second rates.

use duet_core::LunNumber;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use duet_core::scsi::opclass::OpClass;
use serde::{Deserialize, Serialize};

use crate::sync::{read, write, RwLock};

/// Number of latency histogram buckets; the last one (from 2^30 µs, about 18 minutes) is open.
pub const LATENCY_BUCKETS: usize = 32;

/// How a SCSI command is counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OpKind {
    /// A command that reads the medium (READ(6/10/12/16)).
    Read,
    /// A command that writes the medium (WRITE, WRITE AND VERIFY, COMPARE AND WRITE, ...).
    Write,
    /// Everything else (INQUIRY, TEST UNIT READY, SYNCHRONIZE CACHE, ...).
    Other,
}

impl OpKind {
    /// How a command with operation code `op` is counted ([`OpClass`] decides).
    pub fn of(op: u8) -> OpKind {
        match OpClass::of(op) {
            OpClass::Read => OpKind::Read,
            OpClass::Write => OpKind::Write,
            OpClass::Other => OpKind::Other,
        }
    }
}

/// The live counters of one LUN, one port or the total.
#[derive(Debug)]
struct Counters {
    reads: AtomicU64,
    writes: AtomicU64,
    other: AtomicU64,
    bytes_read: AtomicU64,
    bytes_written: AtomicU64,
    latency_sum_ns: AtomicU64,
    latency_max_ns: AtomicU64,
    histogram: [AtomicU64; LATENCY_BUCKETS],
}

impl Counters {
    fn new() -> Counters {
        Counters {
            reads: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            other: AtomicU64::new(0),
            bytes_read: AtomicU64::new(0),
            bytes_written: AtomicU64::new(0),
            latency_sum_ns: AtomicU64::new(0),
            latency_max_ns: AtomicU64::new(0),
            histogram: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    fn record(&self, kind: OpKind, bytes: u64, latency_ns: u64, bucket: usize) {
        // Relaxed: each counter is independent; a snapshot may see one operation half-counted,
        // which is acceptable for statistics.
        match kind {
            OpKind::Read => {
                self.reads.fetch_add(1, Ordering::Relaxed);
                self.bytes_read.fetch_add(bytes, Ordering::Relaxed);
            }
            OpKind::Write => {
                self.writes.fetch_add(1, Ordering::Relaxed);
                self.bytes_written.fetch_add(bytes, Ordering::Relaxed);
            }
            OpKind::Other => {
                self.other.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.latency_sum_ns.fetch_add(latency_ns, Ordering::Relaxed);
        self.latency_max_ns.fetch_max(latency_ns, Ordering::Relaxed);
        self.histogram[bucket].fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> IoStat {
        let histogram: Vec<u64> = self
            .histogram
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let reads = self.reads.load(Ordering::Relaxed);
        let writes = self.writes.load(Ordering::Relaxed);
        let other = self.other.load(Ordering::Relaxed);
        let max_latency_us = self.latency_max_ns.load(Ordering::Relaxed) / 1_000;
        let latency_sum_us = self.latency_sum_ns.load(Ordering::Relaxed) / 1_000;
        IoStat::from_parts(
            [reads, writes, other],
            self.bytes_read.load(Ordering::Relaxed),
            self.bytes_written.load(Ordering::Relaxed),
            latency_sum_us,
            max_latency_us,
            histogram,
        )
    }
}

/// The histogram bucket of a latency of `us` microseconds.
pub fn latency_bucket(us: u64) -> usize {
    let b = (u64::BITS - us.leading_zeros()) as usize;
    b.min(LATENCY_BUCKETS - 1)
}

/// The largest latency, in microseconds, that falls in bucket `b` (`u64::MAX` for the last,
/// open bucket).
pub fn bucket_upper_us(b: usize) -> u64 {
    if b == 0 {
        0
    } else if b >= LATENCY_BUCKETS - 1 {
        u64::MAX
    } else {
        (1u64 << b) - 1
    }
}

/// Estimates the `q`-quantile (0.0 ..= 1.0) of a latency histogram, in microseconds, capped at
/// `max_us`. 0 for an empty histogram.
pub fn percentile_us(histogram: &[u64], q: f64, max_us: u64) -> u64 {
    let total: u64 = histogram.iter().sum();
    if total == 0 {
        return 0;
    }
    let q = if q.is_nan() { 1.0 } else { q.clamp(0.0, 1.0) };
    // The rank of the wanted sample, 1-based: ceil(q * total), at least 1.
    let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
    let mut seen = 0u64;
    for (b, &n) in histogram.iter().enumerate() {
        seen += n;
        if seen >= rank {
            return bucket_upper_us(b).min(max_us);
        }
    }
    max_us
}

/// I/O counters of one LUN, one port or the whole target, cumulative (in a snapshot) or over
/// an interval (from [`IoStat::since`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IoStat {
    /// Read commands.
    pub reads: u64,
    /// Write commands.
    pub writes: u64,
    /// Other commands.
    pub other: u64,
    /// Bytes read (sent to initiators).
    pub bytes_read: u64,
    /// Bytes written (received from initiators).
    pub bytes_written: u64,
    /// Sum of all command latencies, in µs.
    pub latency_sum_us: u64,
    /// Mean latency, in µs (0 without operations).
    pub mean_latency_us: u64,
    /// Estimated median latency, in µs.
    pub p50_latency_us: u64,
    /// Estimated 99th-percentile latency, in µs.
    pub p99_latency_us: u64,
    /// Longest latency, in µs (over an interval: an upper estimate, see [`IoStat::since`]).
    pub max_latency_us: u64,
    /// Latency histogram: entry `b` counts commands of bucket `b` (see the module docs).
    pub latency_histogram: Vec<u64>,
}

impl IoStat {
    fn from_parts(
        [reads, writes, other]: [u64; 3],
        bytes_read: u64,
        bytes_written: u64,
        latency_sum_us: u64,
        max_latency_us: u64,
        latency_histogram: Vec<u64>,
    ) -> IoStat {
        let ops = reads.saturating_add(writes).saturating_add(other);
        IoStat {
            reads,
            writes,
            other,
            bytes_read,
            bytes_written,
            latency_sum_us,
            mean_latency_us: latency_sum_us.checked_div(ops).unwrap_or(0),
            p50_latency_us: percentile_us(&latency_histogram, 0.50, max_latency_us),
            p99_latency_us: percentile_us(&latency_histogram, 0.99, max_latency_us),
            max_latency_us,
            latency_histogram,
        }
    }

    /// All commands counted.
    pub fn ops(&self) -> u64 {
        self.reads
            .saturating_add(self.writes)
            .saturating_add(self.other)
    }

    /// The activity between an `earlier` snapshot of the same counters and this one.
    ///
    /// Counts, bytes, the latency sum and the histogram are differences; the mean and the
    /// percentiles are recomputed from them. The maximum over the interval is not known
    /// exactly: it is estimated as the upper bound of the highest non-empty bucket of the
    /// interval's histogram, capped at the cumulative maximum. Counters that went backwards
    /// (the daemon restarted) give 0.
    pub fn since(&self, earlier: &IoStat) -> IoStat {
        let n = self
            .latency_histogram
            .len()
            .max(earlier.latency_histogram.len());
        let at = |v: &[u64], i: usize| v.get(i).copied().unwrap_or(0);
        let histogram: Vec<u64> = (0..n)
            .map(|i| {
                at(&self.latency_histogram, i).saturating_sub(at(&earlier.latency_histogram, i))
            })
            .collect();
        let max_latency_us = histogram
            .iter()
            .rposition(|&c| c > 0)
            .map(|b| bucket_upper_us(b).min(self.max_latency_us))
            .unwrap_or(0);
        IoStat::from_parts(
            [
                self.reads.saturating_sub(earlier.reads),
                self.writes.saturating_sub(earlier.writes),
                self.other.saturating_sub(earlier.other),
            ],
            self.bytes_read.saturating_sub(earlier.bytes_read),
            self.bytes_written.saturating_sub(earlier.bytes_written),
            self.latency_sum_us.saturating_sub(earlier.latency_sum_us),
            max_latency_us,
            histogram,
        )
    }

    /// Per-second rates of this activity over `seconds` (latencies are copied unchanged). A
    /// non-positive or non-finite duration gives zero rates.
    pub fn rates(&self, seconds: f64) -> IoRates {
        let per_s = |v: u64| {
            if seconds.is_finite() && seconds > 0.0 {
                v as f64 / seconds
            } else {
                0.0
            }
        };
        IoRates {
            reads_per_s: per_s(self.reads),
            writes_per_s: per_s(self.writes),
            other_per_s: per_s(self.other),
            ops_per_s: per_s(self.ops()),
            read_bytes_per_s: per_s(self.bytes_read),
            write_bytes_per_s: per_s(self.bytes_written),
            mean_latency_us: self.mean_latency_us,
            p99_latency_us: self.p99_latency_us,
            max_latency_us: self.max_latency_us,
        }
    }
}

/// Per-second rates over an interval (see [`IoStat::rates`]).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct IoRates {
    /// Read commands per second.
    pub reads_per_s: f64,
    /// Write commands per second.
    pub writes_per_s: f64,
    /// Other commands per second.
    pub other_per_s: f64,
    /// All commands per second.
    pub ops_per_s: f64,
    /// Bytes read per second.
    pub read_bytes_per_s: f64,
    /// Bytes written per second.
    pub write_bytes_per_s: f64,
    /// Mean latency over the interval, in µs.
    pub mean_latency_us: u64,
    /// Estimated 99th-percentile latency over the interval, in µs.
    pub p99_latency_us: u64,
    /// Estimated longest latency over the interval, in µs.
    pub max_latency_us: u64,
}

/// The counters of one LUN.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LunStat {
    /// LUN number.
    pub lun: LunNumber,
    /// Its counters.
    #[serde(flatten)]
    pub io: IoStat,
}

/// The counters of one target port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortStat {
    /// Relative target port identifier.
    pub port: u16,
    /// Its counters.
    #[serde(flatten)]
    pub io: IoStat,
}

/// A snapshot of every counter: the answer to the admin `stat` request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatInfo {
    /// Milliseconds since the counters started (the time base for rates between snapshots).
    pub uptime_ms: u64,
    /// Every command on every LUN and port.
    pub total: IoStat,
    /// Per LUN, by LUN number.
    pub luns: Vec<LunStat>,
    /// Per port, by relative target port identifier.
    pub ports: Vec<PortStat>,
}

impl StatInfo {
    /// The activity between an `earlier` snapshot and this one (see [`IoStat::since`]). A LUN or
    /// port missing from `earlier` counts from zero.
    pub fn since(&self, earlier: &StatInfo) -> StatInfo {
        let zero = IoStat::default();
        StatInfo {
            uptime_ms: self.uptime_ms.saturating_sub(earlier.uptime_ms),
            total: self.total.since(&earlier.total),
            luns: self
                .luns
                .iter()
                .map(|l| LunStat {
                    lun: l.lun,
                    io: l.io.since(
                        earlier
                            .luns
                            .iter()
                            .find(|e| e.lun == l.lun)
                            .map_or(&zero, |e| &e.io),
                    ),
                })
                .collect(),
            ports: self
                .ports
                .iter()
                .map(|p| PortStat {
                    port: p.port,
                    io: p.io.since(
                        earlier
                            .ports
                            .iter()
                            .find(|e| e.port == p.port)
                            .map_or(&zero, |e| &e.io),
                    ),
                })
                .collect(),
        }
    }
}

/// The target's I/O counters, per LUN and per port. Cheap to share (`Arc<Stats>`); recording
/// takes no lock other than a shared read lock.
#[derive(Debug)]
pub struct Stats {
    started: Instant,
    total: Counters,
    luns: RwLock<HashMap<LunNumber, Counters>>,
    ports: RwLock<HashMap<u16, Counters>>,
}

impl Default for Stats {
    fn default() -> Self {
        Stats::new()
    }
}

/// Records into the counters of `key`, creating them on first use.
fn record_keyed<K: std::hash::Hash + Eq + Copy>(
    map: &RwLock<HashMap<K, Counters>>,
    key: K,
    kind: OpKind,
    bytes: u64,
    latency_ns: u64,
    bucket: usize,
) {
    {
        let m = read(map);
        if let Some(c) = m.get(&key) {
            c.record(kind, bytes, latency_ns, bucket);
            return;
        }
    }
    write(map)
        .entry(key)
        .or_insert_with(Counters::new)
        .record(kind, bytes, latency_ns, bucket);
}

impl Stats {
    /// Empty counters; uptime starts now.
    pub fn new() -> Stats {
        Stats {
            started: Instant::now(),
            total: Counters::new(),
            luns: RwLock::new(HashMap::new()),
            ports: RwLock::new(HashMap::new()),
        }
    }

    /// Counts one command of `kind` on `lun` through `port` that moved `bytes` bytes and took
    /// `latency` from arrival to completion.
    pub fn record(&self, lun: LunNumber, port: u16, kind: OpKind, bytes: u64, latency: Duration) {
        let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        let bucket = latency_bucket(ns / 1_000);
        self.total.record(kind, bytes, ns, bucket);
        record_keyed(&self.luns, lun, kind, bytes, ns, bucket);
        record_keyed(&self.ports, port, kind, bytes, ns, bucket);
    }

    /// Every counter as it is now, LUNs and ports in ascending order.
    pub fn snapshot(&self) -> StatInfo {
        let mut luns: Vec<LunStat> = read(&self.luns)
            .iter()
            .map(|(&lun, c)| LunStat {
                lun,
                io: c.snapshot(),
            })
            .collect();
        luns.sort_by_key(|l| l.lun);
        let mut ports: Vec<PortStat> = read(&self.ports)
            .iter()
            .map(|(&port, c)| PortStat {
                port,
                io: c.snapshot(),
            })
            .collect();
        ports.sort_by_key(|p| p.port);
        StatInfo {
            uptime_ms: u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            total: self.total.snapshot(),
            luns,
            ports,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_powers_of_two() {
        assert_eq!(latency_bucket(0), 0);
        assert_eq!(latency_bucket(1), 1);
        assert_eq!(latency_bucket(2), 2);
        assert_eq!(latency_bucket(3), 2);
        assert_eq!(latency_bucket(4), 3);
        assert_eq!(latency_bucket(1023), 10);
        assert_eq!(latency_bucket(1024), 11);
        assert_eq!(latency_bucket(u64::MAX), LATENCY_BUCKETS - 1);
        for us in [0u64, 1, 5, 100, 4096, 1_000_000] {
            assert!(us <= bucket_upper_us(latency_bucket(us)));
        }
    }

    #[test]
    fn percentiles_of_an_empty_histogram_are_zero() {
        assert_eq!(percentile_us(&[0; LATENCY_BUCKETS], 0.99, 0), 0);
        assert_eq!(percentile_us(&[], 0.5, 10), 0);
    }

    #[test]
    fn percentile_is_capped_by_the_maximum() {
        let mut h = vec![0u64; LATENCY_BUCKETS];
        h[latency_bucket(600)] = 10; // bucket 512..=1023
        assert_eq!(percentile_us(&h, 0.5, 600), 600);
        assert_eq!(percentile_us(&h, 0.5, 5000), 1023);
    }

    #[test]
    fn a_poisoned_lock_does_not_stop_recording() {
        let s = std::sync::Arc::new(Stats::new());
        let s2 = s.clone();
        let _ = std::thread::spawn(move || {
            let _g = s2.luns.write().unwrap();
            panic!("poison the lock");
        })
        .join();
        s.record(1, 1, OpKind::Read, 512, Duration::from_micros(3));
        assert_eq!(s.snapshot().luns[0].io.reads, 1);
    }
}
