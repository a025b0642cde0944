//! One `duet-load` session's load: where its commands go ([`Offsets`]), the write payload, the
//! pipeline of `qd` slots with their latencies, and the loop that keeps them full until the end
//! of the run, drains, verifies (if asked) and logs out.

use super::args::{Op, Pattern};
use super::conn::{Conn, ConnError, READ_CHUNK};
use crate::histogram::Histogram;
use crate::scsi::{self, status, SenseCode};
use bytes::Bytes;
use duet_core::iscsi::pdu::{flags, Opcode};
use duet_core::iscsi::{Pdu, RESERVED_TAG};
use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::Interest;

/// How long in-flight commands may take to finish once the measured interval is over.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Failed commands described on stderr per session (the rest are only counted).
const MAX_REPORTED_FAILURES: u32 = 3;
/// Blocks read back per session by `--verify`.
const VERIFY_BLOCKS: usize = 8;

#[derive(Clone, Debug)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0), by multiply-shift.
    fn below(&mut self, n: u64) -> u64 {
        ((self.next() as u128 * n as u128) >> 64) as u64
    }
}

/// Where one session's commands go, in units of one command (`block_size` bytes).
#[derive(Clone, Debug)]
pub(super) struct Offsets {
    pattern: Pattern,
    rng: Rng,
    /// Random: the whole span; seq: this session's slice `[start, start + len)`.
    start: u64,
    len: u64,
    cursor: u64,
}

impl Offsets {
    /// The offsets of session `index` of `sessions` over `units` command-sized units.
    pub(super) fn new(
        pattern: Pattern,
        seed: u64,
        index: u32,
        sessions: u32,
        units: u64,
    ) -> Offsets {
        let (start, len) = match pattern {
            Pattern::Random => (0, units),
            Pattern::Seq => {
                let s = sessions as u64;
                let i = index as u64;
                let a = units * i / s;
                let b = units * (i + 1) / s;
                (a, b - a)
            }
        };
        Offsets {
            pattern,
            rng: Rng(seed ^ (index as u64 + 1).wrapping_mul(0xd6e8_feb8_6659_fd93)),
            start,
            len: len.max(1),
            cursor: 0,
        }
    }

    /// The next unit.
    pub(super) fn next(&mut self) -> u64 {
        match self.pattern {
            Pattern::Random => self.start + self.rng.below(self.len),
            Pattern::Seq => {
                let u = self.start + self.cursor;
                self.cursor += 1;
                if self.cursor >= self.len {
                    self.cursor = 0;
                }
                u
            }
        }
    }
}

/// The write payload: a pseudo-random pattern from `seed` and a per-run nonce, never all zeros.
pub(super) fn make_payload(len: usize, seed: u64) -> Bytes {
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
        ^ ((std::process::id() as u64) << 32);
    let mut rng = Rng(seed ^ nonce);
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        v.extend_from_slice(&(rng.next() | 1).to_le_bytes());
    }
    v.truncate(len);
    Bytes::from(v)
}

// ---------------------------------------------------------------------------------------------
// The pipeline
// ---------------------------------------------------------------------------------------------

/// What every session shares.
#[derive(Clone)]
pub(super) struct Plan {
    pub(super) op: Op,
    pub(super) qd: u32,
    /// Bytes per command.
    pub(super) block_size: u32,
    /// LUN blocks per command.
    pub(super) lun_blocks: u32,
    pub(super) payload: Bytes,
    pub(super) warmup_end: Instant,
    pub(super) end: Instant,
    pub(super) verify: bool,
}

/// A progress counter on its own cache line.
#[repr(align(64))]
#[derive(Default)]
pub(super) struct Counter(pub(super) AtomicU64);

#[derive(Clone, Copy)]
struct Slot {
    itt: u32,
    busy: bool,
    sent: Instant,
    lba: u64,
    /// Data-In bytes received so far.
    received: u32,
}

/// What one session measured.
pub(super) struct SessionResult {
    pub(super) hist: Histogram,
    pub(super) errors: u64,
    pub(super) verified: u64,
}

struct Pipeline<'a> {
    plan: &'a Plan,
    slots: Vec<Slot>,
    free: Vec<u32>,
    inflight: u32,
    hist: Histogram,
    errors: u64,
    reported: u32,
    done_in_batch: u64,
    /// Most recent LBAs written with GOOD status (for `--verify`).
    written: VecDeque<u64>,
}

impl Pipeline<'_> {
    fn fail(&mut self, what: std::fmt::Arguments<'_>) {
        self.errors += 1;
        self.reported += 1;
        if self.reported <= MAX_REPORTED_FAILURES {
            eprintln!("duet-load: {what}");
        } else if self.reported == MAX_REPORTED_FAILURES + 1 {
            eprintln!("duet-load: further failures of this session are only counted");
        }
    }

    /// The busy slot `itt` names, if any.
    fn slot_of(&self, itt: u32) -> Option<usize> {
        let i = (itt & 0xffff) as usize;
        match self.slots.get(i) {
            Some(s) if s.busy && s.itt == itt => Some(i),
            _ => None,
        }
    }

    fn complete(&mut self, i: usize, now: Instant, mut outcome: Result<(), String>) {
        let s = self.slots[i];
        if outcome.is_ok() && self.plan.op == Op::Read && s.received != self.plan.block_size {
            outcome = Err(format!(
                "GOOD status after {} of {} bytes of Data-In",
                s.received, self.plan.block_size
            ));
        }
        self.slots[i].busy = false;
        self.free.push(i as u32);
        self.inflight -= 1;
        self.done_in_batch += 1;
        match outcome {
            Ok(()) => {
                if now >= self.plan.warmup_end && now < self.plan.end {
                    self.hist
                        .record(now.saturating_duration_since(s.sent).as_nanos() as u64);
                }
                if self.plan.verify {
                    if self.written.len() == VERIFY_BLOCKS {
                        self.written.pop_front();
                    }
                    if !self.written.contains(&s.lba) {
                        self.written.push_back(s.lba);
                    }
                }
            }
            Err(m) => {
                let op = match self.plan.op {
                    Op::Read => "READ",
                    Op::Write => "WRITE",
                };
                self.fail(format_args!("{op}(16) at LBA {}: {m}", s.lba));
            }
        }
    }

    /// Every command still in flight fails with `why`.
    fn fail_inflight(&mut self, why: &str) {
        let n = self.inflight as u64;
        if n > 0 {
            self.errors += n;
            eprintln!("duet-load: {n} command(s) in flight failed: {why}");
        }
        self.inflight = 0;
    }

    /// Handles one target PDU.
    fn on_pdu(&mut self, conn: &mut Conn, pdu: Pdu, now: Instant) -> Result<(), ConnError> {
        match pdu.opcode() {
            Some(Opcode::DataIn) => {
                let status = pdu.flags() & flags::STATUS != 0;
                conn.note(&pdu);
                if let Some(i) = self.slot_of(pdu.itt()) {
                    let s = &mut self.slots[i];
                    s.received = s.received.saturating_add(pdu.data.len() as u32);
                    if status {
                        let outcome = if pdu.status() == status::GOOD {
                            Ok(())
                        } else {
                            Err(format!("SCSI status {:#04x}", pdu.status()))
                        };
                        self.complete(i, now, outcome);
                    }
                }
            }
            Some(Opcode::ScsiResponse) => {
                conn.note(&pdu);
                if let Some(i) = self.slot_of(pdu.itt()) {
                    let outcome = if pdu.response() != 0 {
                        Err(format!("iSCSI response {:#04x}", pdu.response()))
                    } else if pdu.status() != status::GOOD {
                        let sense = pdu
                            .sense_data()
                            .and_then(|s| SenseCode::from_sense_data(&s));
                        Err(match sense {
                            Some(s) => format!("SCSI status {:#04x}, sense {s}", pdu.status()),
                            None => format!("SCSI status {:#04x}", pdu.status()),
                        })
                    } else {
                        Ok(())
                    };
                    self.complete(i, now, outcome);
                }
            }
            Some(Opcode::R2t) => {
                conn.note(&pdu);
                if let Some(i) = self.slot_of(pdu.itt()) {
                    let off = pdu.buffer_offset() as usize;
                    let len = pdu.desired_length() as usize;
                    let end = off.saturating_add(len);
                    if self.plan.op != Op::Write || len == 0 || end > self.plan.payload.len() {
                        return Err(ConnError::Protocol(format!(
                            "R2T for bytes {off}..{end} of a {}-byte {:?}",
                            self.plan.payload.len(),
                            self.plan.op
                        )));
                    }
                    let payload = self.plan.payload.clone();
                    conn.queue_data_out(self.slots[i].itt, pdu.ttt(), (off, end), &payload);
                }
            }
            _ => {
                if let Some(itt) = conn.handle_other(&pdu)? {
                    if let Some(i) = self.slot_of(itt) {
                        let reason = pdu.response();
                        self.complete(i, now, Err(format!("rejected (reason {reason:#04x})")));
                    }
                }
            }
        }
        Ok(())
    }

    /// Starts one command into a free slot.
    fn issue(&mut self, conn: &mut Conn, offsets: &mut Offsets, now: Instant) {
        let Some(i) = self.free.pop() else {
            return;
        };
        let lba = offsets.next() * self.plan.lun_blocks as u64;
        let itt = conn.itt(i);
        self.slots[i as usize] = Slot {
            itt,
            busy: true,
            sent: now,
            lba,
            received: 0,
        };
        self.inflight += 1;
        match self.plan.op {
            Op::Read => {
                let cdb = scsi::read16_cdb(lba, self.plan.lun_blocks);
                conn.queue_command(itt, &cdb, &Bytes::new(), self.plan.block_size);
            }
            Op::Write => {
                let cdb = scsi::write16_cdb(lba, self.plan.lun_blocks);
                let payload = &self.plan.payload;
                conn.queue_command(itt, &cdb, payload, 0);
            }
        }
    }
}

/// Runs one session's load until `plan.end`, drains, verifies (if asked) and logs out.
pub(super) async fn run_session(
    mut conn: Conn,
    mut offsets: Offsets,
    plan: Plan,
    progress: Arc<Counter>,
) -> SessionResult {
    let qd = plan.qd;
    let start = Instant::now();
    let mut p = Pipeline {
        plan: &plan,
        slots: vec![
            Slot {
                itt: RESERVED_TAG,
                busy: false,
                sent: start,
                lba: 0,
                received: 0,
            };
            qd as usize
        ],
        free: (0..qd).rev().collect(),
        inflight: 0,
        hist: Histogram::new(),
        errors: 0,
        reported: 0,
        done_in_batch: 0,
        written: VecDeque::with_capacity(VERIFY_BLOCKS),
    };
    let drain_deadline = plan.end + DRAIN_TIMEOUT;
    let sleep = tokio::time::sleep_until(plan.end.into());
    tokio::pin!(sleep);
    let mut sleeping_to_end = true;
    let mut now = Instant::now();
    let mut alive = true;
    loop {
        let stopping = now >= plan.end || conn.leave;
        if !stopping {
            while p.inflight < qd && conn.window_open() {
                p.issue(&mut conn, &mut offsets, now);
            }
        } else if p.inflight == 0 {
            break;
        } else if now >= drain_deadline {
            p.fail_inflight("no answer within the drain timeout");
            // The target does not answer: skip verification and logout.
            alive = false;
            break;
        }
        if let Err(e) = conn.flush_now() {
            p.fail_inflight(&format!("send: {e}"));
            alive = false;
            break;
        }
        let interest = if conn.out.is_empty() {
            Interest::READABLE
        } else {
            Interest::READABLE | Interest::WRITABLE
        };
        let mut got_data = false;
        tokio::select! {
            biased;
            r = conn.stream.ready(interest) => match r {
                Ok(ready) if ready.is_readable() => {
                    conn.rbuf.reserve(READ_CHUNK);
                    match conn.stream.try_read_buf(&mut conn.rbuf) {
                        Ok(0) => {
                            p.fail_inflight("the target closed the connection");
                            alive = false;
                            break;
                        }
                        Ok(_) => got_data = true,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) => {
                            p.fail_inflight(&format!("receive: {e}"));
                            alive = false;
                            break;
                        }
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    p.fail_inflight(&format!("socket: {e}"));
                    alive = false;
                    break;
                }
            },
            _ = &mut sleep => {
                if sleeping_to_end {
                    sleeping_to_end = false;
                    sleep.as_mut().reset(drain_deadline.into());
                }
            }
        }
        now = Instant::now();
        if got_data {
            loop {
                match conn.next_pdu() {
                    Ok(Some(pdu)) => {
                        if let Err(e) = p.on_pdu(&mut conn, pdu, now) {
                            p.fail_inflight(&e.to_string());
                            alive = false;
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        p.fail_inflight(&e.to_string());
                        alive = false;
                        break;
                    }
                }
            }
            if !alive {
                break;
            }
            if p.done_in_batch > 0 {
                progress.0.fetch_add(p.done_in_batch, Ordering::Relaxed);
                p.done_in_batch = 0;
            }
        }
    }
    let mut errors = p.errors;
    let hist = std::mem::take(&mut p.hist);
    let written: Vec<u64> = p.written.iter().copied().collect();
    drop(p);
    let mut verified = 0;
    if alive {
        if plan.verify {
            for lba in written {
                let cdb = scsi::read16_cdb(lba, plan.lun_blocks);
                match conn.exec(&cdb, plan.block_size).await {
                    Ok(a) if a.status == status::GOOD && a.data[..] == plan.payload[..] => {
                        verified += 1
                    }
                    Ok(a) if a.status == status::GOOD => {
                        errors += 1;
                        eprintln!("duet-load: verify: LBA {lba} does not hold the data written");
                    }
                    Ok(a) => {
                        errors += 1;
                        eprintln!(
                            "duet-load: verify: READ(16) at LBA {lba}: SCSI status {:#04x}{}",
                            a.status,
                            a.sense.map(|s| format!(", sense {s}")).unwrap_or_default()
                        );
                    }
                    Err(e) => {
                        errors += 1;
                        eprintln!("duet-load: verify: READ(16) at LBA {lba}: {e}");
                        break;
                    }
                }
            }
        }
        conn.logout().await;
    }
    SessionResult {
        hist,
        errors,
        verified,
    }
}

// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_slices_partition_the_span_and_wrap() {
        let mut seen = Vec::new();
        for i in 0..3 {
            let mut o = Offsets::new(Pattern::Seq, 1, i, 3, 10);
            let first: Vec<u64> = (0..o.len).map(|_| o.next()).collect();
            assert_eq!(o.next(), first[0], "wraps to the slice start");
            seen.extend(first);
        }
        assert_eq!(seen, (0..10).collect::<Vec<_>>());
        let mut r = Offsets::new(Pattern::Random, 1, 0, 1, 7);
        assert!((0..1000).all(|_| r.next() < 7));
    }
}
