//! Harness for the hostile-peer tests (the daemon itself is `crate::support::Daemon`, started per
//! test on its own loopback address): the test target's configuration, a raw iSCSI initiator
//! built on `std::net::TcpStream` (PDUs assembled by hand, RFC 7143 §11, so that they can be
//! as malformed as a test wants; the login is duet-hosts' client, i.e. duet-core's initiator
//! machine), a well-behaved background session that writes, reads and verifies blocks, a bound
//! on the daemon's memory (VmRSS) and its admin socket.
//!
//! Everything is bounded in time: sockets carry read and write timeouts, loops have deadlines,
//! and the daemon is killed by PID when its guard is dropped.

#![allow(dead_code)]

use crate::support::{Daemon, Site, TargetConfig};
use duet_core::iscsi::initiator::{LoginPlan, OperationalOffer};
use duet_core::iscsi::TextPairs;
use duet_core::sense::SenseCode;
use duet_hosts::login::blocking;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The target every hostile test exports.
pub const TARGET: &str = "iqn.2026-11.dev.duet:hostile0";
/// The initiator name of the well-behaved session.
pub const GOOD_INIT: &str = "iqn.2026-11.test:good";
/// The initiator name the abusers use.
pub const BAD_INIT: &str = "iqn.2026-11.test:hostile";
/// Logical block size of the test LUN.
pub const BLOCK: usize = 512;
/// Memory growth of duetd that counts as unbounded.
pub const RSS_BUDGET_KIB: u64 = 200 * 1024;

// ------------------------------------------------------------------------------------------
// The daemon's configuration
// ------------------------------------------------------------------------------------------

/// A single controller serving [`TARGET`] with LUN 1 (16 MiB, 512-byte blocks), no
/// authentication, no discovery authentication, `ping_timeout` seconds of ping timeout.
pub fn config(ping_timeout: u32) -> TargetConfig<'static> {
    TargetConfig {
        ping_timeout,
        discovery_auth_group: Some("none"),
        block_size: Some(BLOCK as u32),
        ..TargetConfig::new(TARGET)
    }
}

/// [`config`] rendered for `site`.
pub fn plain_config(site: &Site, ping_timeout: u32) -> String {
    config(ping_timeout).render(site)
}

/// Panics unless duetd's RSS is within [`RSS_BUDGET_KIB`] of `baseline`.
pub fn assert_rss_bounded(d: &Daemon, baseline: u64, when: &str) {
    let now = d.rss_kib();
    assert!(
        now <= baseline + RSS_BUDGET_KIB,
        "duetd's memory grew from {baseline} KiB to {now} KiB {when}"
    );
}

// ------------------------------------------------------------------------------------------
// iSCSI PDUs
// ------------------------------------------------------------------------------------------

/// Opcodes used here (RFC 7143 §11.2.1.2).
pub mod op {
    pub const NOP_OUT: u8 = 0x00;
    pub const SCSI_CMD: u8 = 0x01;
    pub const LOGIN_REQ: u8 = 0x03;
    pub const DATA_OUT: u8 = 0x05;
    pub const NOP_IN: u8 = 0x20;
    pub const SCSI_RSP: u8 = 0x21;
    pub const LOGIN_RSP: u8 = 0x23;
    pub const DATA_IN: u8 = 0x25;
    pub const R2T: u8 = 0x31;
    pub const ASYNC: u8 = 0x32;
    pub const REJECT: u8 = 0x3f;
}

/// One PDU as it travels (no digests).
#[derive(Clone, Debug)]
pub struct RawPdu {
    /// The basic header segment.
    pub bhs: [u8; 48],
    /// The additional header segments (TotalAHSLength is taken from it, padded to 4).
    pub ahs: Vec<u8>,
    /// The data segment (unpadded).
    pub data: Vec<u8>,
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

impl RawPdu {
    /// An empty PDU with `opcode` (the I bit included in `opcode` if wanted).
    pub fn new(opcode: u8) -> RawPdu {
        let mut bhs = [0u8; 48];
        bhs[0] = opcode;
        RawPdu {
            bhs,
            ahs: Vec::new(),
            data: Vec::new(),
        }
    }
    pub fn opcode(&self) -> u8 {
        self.bhs[0] & 0x3f
    }
    pub fn itt(&self) -> u32 {
        be32(&self.bhs[16..20])
    }
    pub fn ttt(&self) -> u32 {
        be32(&self.bhs[20..24])
    }
    pub fn stat_sn(&self) -> u32 {
        be32(&self.bhs[24..28])
    }
    pub fn exp_cmd_sn(&self) -> u32 {
        be32(&self.bhs[28..32])
    }
    pub fn set_u32(&mut self, at: usize, v: u32) -> &mut Self {
        self.bhs[at..at + 4].copy_from_slice(&v.to_be_bytes());
        self
    }
    pub fn set_lun(&mut self, lun: u16) -> &mut Self {
        self.bhs[8] = (lun >> 8) as u8 & 0x3f;
        self.bhs[9] = lun as u8;
        self
    }
    /// The wire bytes: BHS (with lengths filled in), padded AHS, padded data.
    pub fn encode(&self) -> Vec<u8> {
        let mut bhs = self.bhs;
        let ahs_words = self.ahs.len().div_ceil(4);
        bhs[4] = ahs_words as u8;
        let dlen = self.data.len() as u32;
        bhs[5..8].copy_from_slice(&dlen.to_be_bytes()[1..]);
        let mut out = bhs.to_vec();
        out.extend_from_slice(&self.ahs);
        out.resize(48 + ahs_words * 4, 0);
        out.extend_from_slice(&self.data);
        out.resize(out.len() + (4 - self.data.len() % 4) % 4, 0);
        out
    }
}

/// Reads one PDU; `Ok(None)` when the peer closed the connection cleanly, `Err` on a timeout
/// or a reset (the text says which).
pub fn read_pdu(s: &mut TcpStream) -> Result<Option<RawPdu>, String> {
    let mut bhs = [0u8; 48];
    let mut got = 0;
    while got < 48 {
        match s.read(&mut bhs[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(format!("closed after {got} bytes of a BHS")),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(None),
            Err(e) => return Err(format!("reading a BHS: {e}")),
        }
    }
    let ahs = bhs[4] as usize * 4;
    let dlen = be32(&[0, bhs[5], bhs[6], bhs[7]]) as usize;
    let mut rest = vec![0u8; ahs + dlen.div_ceil(4) * 4];
    s.read_exact(&mut rest)
        .map_err(|e| format!("reading a data segment of {dlen} bytes: {e}"))?;
    Ok(Some(RawPdu {
        bhs,
        ahs: rest[..ahs].to_vec(),
        data: rest[ahs..ahs + dlen].to_vec(),
    }))
}

/// Reads until the target closes the connection (within `within`), returning the PDUs it sent
/// first; `Err` if the connection is still open at the deadline.
pub fn read_until_closed(s: &mut TcpStream, within: Duration) -> Result<Vec<RawPdu>, String> {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!(
                "the connection was still open after {within:?} (PDUs: {:?})",
                seen.iter().map(|p: &RawPdu| p.opcode()).collect::<Vec<_>>()
            ));
        }
        s.set_read_timeout(Some(left.max(Duration::from_millis(10))))
            .map_err(|e| e.to_string())?;
        match read_pdu(s) {
            Ok(None) => return Ok(seen),
            Ok(Some(p)) => seen.push(p),
            Err(e) if e.contains("closed after") => return Ok(seen),
            Err(e) if e.contains("reading a data segment") && e.contains("end of file") => {
                return Ok(seen)
            }
            Err(e) => {
                if Instant::now() >= deadline {
                    return Err(format!("the connection was not closed: {e}"));
                }
                return Err(e);
            }
        }
    }
}

/// Opens a TCP connection with generous timeouts.
pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("set read timeout");
    s.set_write_timeout(Some(Duration::from_secs(20)))
        .expect("set write timeout");
    let _ = s.set_nodelay(true);
    s
}

/// A text segment from `key=value` pairs.
pub fn text_segment(pairs: &[String]) -> Vec<u8> {
    let mut data = Vec::new();
    for kv in pairs {
        data.extend_from_slice(kv.as_bytes());
        data.push(0);
    }
    data
}

/// Parses a text segment into `key=value` pairs (none when it is not well-formed).
pub fn parse_text(data: &[u8]) -> Vec<(String, String)> {
    TextPairs::parse(data).map(|t| t.0).unwrap_or_default()
}

/// The ISID of the tests' sessions: type 2 (random), qualifier `isid` in the last two bytes.
pub fn isid(qualifier: u16) -> [u8; 6] {
    let [hi, lo] = qualifier.to_be_bytes();
    [0x80, 0x00, 0x4e, 0x11, hi, lo]
}

/// Sense key, ASC and ASCQ of sense data (all 0xff when there is none).
pub fn sense_code(sense: &[u8]) -> (u8, u8, u8) {
    SenseCode::from_sense_data(sense).map_or((0xff, 0xff, 0xff), |c| (c.key, c.asc, c.ascq))
}

/// A Login Request: `csg`/`nsg` stages, transit bit `t`, ISID qualifier `isid`.
pub fn login_request(csg: u8, nsg: u8, t: bool, isid: u16, cmd_sn: u32, data: Vec<u8>) -> RawPdu {
    let mut p = RawPdu::new(0x40 | op::LOGIN_REQ);
    p.bhs[1] = if t { 0x80 } else { 0 } | (csg << 2) | if t { nsg } else { 0 };
    p.bhs[8..14].copy_from_slice(&self::isid(isid));
    p.set_u32(16, 0x1000 + isid as u32); // ITT
    p.set_u32(24, cmd_sn);
    p.data = data;
    p
}

// ------------------------------------------------------------------------------------------
// A well-behaved initiator
// ------------------------------------------------------------------------------------------

/// The outcome of one SCSI command.
#[derive(Debug)]
pub struct ScsiResult {
    /// SCSI status (0 GOOD, 2 CHECK CONDITION, ...).
    pub status: u8,
    /// Data-In received.
    pub data: Vec<u8>,
    /// The sense data (without its 2-byte length), if any.
    pub sense: Vec<u8>,
}

/// A logged-in iSCSI session over one connection: no digests, InitialR2T=Yes,
/// ImmediateData=No, so every write goes through R2T and Data-Out.
pub struct Initiator {
    /// The connection (public so that tests can send raw bytes on it).
    pub sock: TcpStream,
    /// The next CmdSN to use.
    pub cmd_sn: u32,
    /// The next StatSN expected.
    pub exp_stat_sn: u32,
    next_itt: u32,
    /// How many target NOP-In pings were answered.
    pub pings_answered: u64,
}

impl Initiator {
    /// Logs in to [`TARGET`] at `addr` as `initiator` (ISID qualifier `isid`), straight in the
    /// operational stage.
    pub fn login(addr: SocketAddr, initiator: &str, isid: u16) -> Result<Initiator, String> {
        let mut sock = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
            .map_err(|e| format!("connect {addr}: {e}"))?;
        sock.set_read_timeout(Some(Duration::from_secs(20)))
            .map_err(|e| e.to_string())?;
        sock.set_write_timeout(Some(Duration::from_secs(20)))
            .map_err(|e| e.to_string())?;
        let _ = sock.set_nodelay(true);
        let plan = LoginPlan {
            itt: 0x1000 + isid as u32,
            skip_security: true,
            offer: OperationalOffer {
                initial_r2t: true,
                immediate_data: false,
                max_recv_data_segment_length: 65536,
                max_burst_length: 262_144,
                first_burst_length: 65536,
                ..OperationalOffer::default()
            },
            ..LoginPlan::normal(initiator, TARGET, self::isid(isid))
        };
        let done = blocking::login(&mut sock, plan).map_err(|e| format!("login: {e}"))?;
        let mut me = Initiator {
            sock,
            cmd_sn: done.cmd_sn,
            exp_stat_sn: done.exp_stat_sn,
            next_itt: 1,
            pings_answered: 0,
        };
        me.clear_unit_attentions()?;
        Ok(me)
    }

    /// TEST UNIT READY until it is GOOD (a new nexus first reports POWER ON / RESET and
    /// similar unit attentions); at most 8 tries.
    pub fn clear_unit_attentions(&mut self) -> Result<(), String> {
        let mut last = Vec::new();
        for _ in 0..8 {
            let r = self.command(&[0u8; 6], 0, None)?;
            if r.status == 0 {
                return Ok(());
            }
            last = r.sense;
        }
        Err(format!(
            "TEST UNIT READY never GOOD; last sense {last:02x?}"
        ))
    }

    /// Sends one PDU.
    pub fn send(&mut self, p: &RawPdu) -> Result<(), String> {
        self.sock
            .write_all(&p.encode())
            .map_err(|e| format!("send: {e}"))
    }

    /// A fresh initiator task tag.
    pub fn itt(&mut self) -> u32 {
        let t = self.next_itt;
        self.next_itt = self.next_itt.wrapping_add(1).max(1);
        t
    }

    /// The next PDU that is not a target ping (those are answered here), with ExpStatSN
    /// bookkeeping.
    pub fn recv(&mut self) -> Result<RawPdu, String> {
        loop {
            let p = read_pdu(&mut self.sock)?.ok_or("the target closed the connection")?;
            let carries_status = match p.opcode() {
                op::DATA_IN => p.bhs[1] & 0x01 != 0,
                op::R2T => false,
                op::NOP_IN => p.ttt() == 0xffff_ffff || p.itt() != 0xffff_ffff,
                _ => true,
            };
            if carries_status {
                self.exp_stat_sn = p.stat_sn().wrapping_add(1);
            }
            if p.opcode() == op::NOP_IN && p.itt() == 0xffff_ffff {
                if p.ttt() != 0xffff_ffff {
                    let mut out = RawPdu::new(0x40 | op::NOP_OUT);
                    out.bhs[1] = 0x80;
                    out.bhs[8..16].copy_from_slice(&p.bhs[8..16]);
                    out.set_u32(16, 0xffff_ffff)
                        .set_u32(20, p.ttt())
                        .set_u32(24, self.cmd_sn)
                        .set_u32(28, self.exp_stat_sn);
                    self.send(&out)?;
                    self.pings_answered += 1;
                }
                continue;
            }
            if p.opcode() == op::ASYNC {
                continue;
            }
            return Ok(p);
        }
    }

    /// A SCSI command header for LUN 1 (CmdSN taken and advanced).
    pub fn scsi_command(&mut self, cdb: &[u8], read: bool, write: bool, edtl: u32) -> RawPdu {
        let mut p = RawPdu::new(op::SCSI_CMD);
        p.bhs[1] = 0x80 | if read { 0x40 } else { 0 } | if write { 0x20 } else { 0 } | 1;
        p.set_lun(1);
        let itt = self.itt();
        p.set_u32(16, itt)
            .set_u32(20, edtl)
            .set_u32(24, self.cmd_sn)
            .set_u32(28, self.exp_stat_sn);
        self.cmd_sn = self.cmd_sn.wrapping_add(1);
        p.bhs[32..32 + cdb.len()].copy_from_slice(cdb);
        p
    }

    /// Runs a SCSI command to completion: Data-Out on every R2T from `data_out`, Data-In
    /// collected. Any PDU for another task is an error.
    pub fn command(
        &mut self,
        cdb: &[u8],
        read_len: u32,
        data_out: Option<&[u8]>,
    ) -> Result<ScsiResult, String> {
        let edtl = data_out.map(|d| d.len() as u32).unwrap_or(read_len);
        let p = self.scsi_command(cdb, read_len > 0, data_out.is_some(), edtl);
        let itt = p.itt();
        self.send(&p)?;
        self.finish(itt, data_out)
    }

    /// Collects the answer to task `itt` (see [`Initiator::command`]).
    pub fn finish(&mut self, itt: u32, data_out: Option<&[u8]>) -> Result<ScsiResult, String> {
        let mut data = Vec::new();
        loop {
            let p = self.recv()?;
            if p.itt() != itt {
                return Err(format!(
                    "PDU {:#04x} for task {:#x} while waiting for task {itt:#x}",
                    p.opcode(),
                    p.itt()
                ));
            }
            match p.opcode() {
                op::R2T => {
                    let out = data_out.ok_or("R2T for a command without data")?;
                    let ttt = p.ttt();
                    let offset = be32(&p.bhs[40..44]) as usize;
                    let len = be32(&p.bhs[44..48]) as usize;
                    let end = (offset + len).min(out.len());
                    let mut sn = 0u32;
                    let mut at = offset;
                    while at < end {
                        let n = (end - at).min(8192);
                        let mut d = RawPdu::new(op::DATA_OUT);
                        d.bhs[1] = if at + n == end { 0x80 } else { 0 };
                        d.set_lun(1);
                        d.set_u32(16, itt)
                            .set_u32(20, ttt)
                            .set_u32(28, self.exp_stat_sn)
                            .set_u32(36, sn)
                            .set_u32(40, at as u32);
                        d.data = out[at..at + n].to_vec();
                        self.send(&d)?;
                        sn += 1;
                        at += n;
                    }
                }
                op::DATA_IN => {
                    data.extend_from_slice(&p.data);
                    if p.bhs[1] & 0x01 != 0 {
                        return Ok(ScsiResult {
                            status: p.bhs[3],
                            data,
                            sense: Vec::new(),
                        });
                    }
                }
                op::SCSI_RSP => {
                    let sense = if p.data.len() > 2 {
                        p.data[2..].to_vec()
                    } else {
                        Vec::new()
                    };
                    return Ok(ScsiResult {
                        status: p.bhs[3],
                        data,
                        sense,
                    });
                }
                other => return Err(format!("unexpected PDU {other:#04x} for task {itt:#x}")),
            }
        }
    }

    /// WRITE(10) of `data` (a whole number of blocks) at `lba`; Ok if GOOD.
    pub fn write(&mut self, lba: u32, data: &[u8]) -> Result<(), String> {
        let blocks = (data.len() / BLOCK) as u16;
        let mut cdb = [0u8; 10];
        cdb[0] = 0x2a;
        cdb[2..6].copy_from_slice(&lba.to_be_bytes());
        cdb[7..9].copy_from_slice(&blocks.to_be_bytes());
        let r = self.command(&cdb, 0, Some(data))?;
        if r.status != 0 {
            return Err(format!(
                "WRITE(10) status {:#04x} sense {:02x?}",
                r.status, r.sense
            ));
        }
        Ok(())
    }

    /// READ(10) of `blocks` blocks at `lba`.
    pub fn read(&mut self, lba: u32, blocks: u16) -> Result<Vec<u8>, String> {
        let mut cdb = [0u8; 10];
        cdb[0] = 0x28;
        cdb[2..6].copy_from_slice(&lba.to_be_bytes());
        cdb[7..9].copy_from_slice(&blocks.to_be_bytes());
        let r = self.command(&cdb, blocks as u32 * BLOCK as u32, None)?;
        if r.status != 0 {
            return Err(format!(
                "READ(10) status {:#04x} sense {:02x?}",
                r.status, r.sense
            ));
        }
        Ok(r.data)
    }

    /// TEST UNIT READY; returns the status.
    pub fn test_unit_ready(&mut self) -> Result<u8, String> {
        Ok(self.command(&[0u8; 6], 0, None)?.status)
    }

    /// An immediate NOP-Out ping that must be answered with a NOP-In echoing `payload`.
    pub fn ping(&mut self, payload: &[u8]) -> Result<(), String> {
        let mut p = RawPdu::new(0x40 | op::NOP_OUT);
        p.bhs[1] = 0x80;
        let itt = self.itt();
        p.set_u32(16, itt)
            .set_u32(20, 0xffff_ffff)
            .set_u32(24, self.cmd_sn)
            .set_u32(28, self.exp_stat_sn);
        p.data = payload.to_vec();
        self.send(&p)?;
        let r = self.recv()?;
        if r.opcode() != op::NOP_IN || r.itt() != itt {
            return Err(format!(
                "expected the NOP-In for {itt:#x}, got {:#04x} for {:#x}",
                r.opcode(),
                r.itt()
            ));
        }
        if r.data != payload {
            return Err("the NOP-In did not echo the ping data".into());
        }
        Ok(())
    }

    /// Write a pattern to `lba`, read it back, compare.
    pub fn write_read_verify(&mut self, lba: u32, blocks: u16, seed: u64) -> Result<(), String> {
        let data = pattern(seed, blocks as usize * BLOCK);
        self.write(lba, &data)?;
        let back = self.read(lba, blocks)?;
        if back != data {
            return Err(format!(
                "read back different data at LBA {lba} (seed {seed})"
            ));
        }
        Ok(())
    }

    /// Closes the TCP connection (no logout).
    pub fn close(self) {
        let _ = self.sock.shutdown(Shutdown::Both);
    }
}

/// A deterministic byte pattern (xorshift64*).
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

// ------------------------------------------------------------------------------------------
// The well-behaved background session
// ------------------------------------------------------------------------------------------

/// A background thread that logs in as [`GOOD_INIT`] and writes, reads back and verifies 8-block
/// extents in a loop (LBAs 1024.. of its own), answering pings, until stopped.
pub struct GoodSession {
    stop: Arc<AtomicBool>,
    ops: Arc<AtomicU64>,
    errors: Arc<Mutex<Vec<String>>>,
    thread: Option<JoinHandle<()>>,
}

impl GoodSession {
    /// Starts the loop against `addr`; panics if the first login fails.
    pub fn start(addr: SocketAddr) -> GoodSession {
        let mut ini = Initiator::login(addr, GOOD_INIT, 0x600d)
            .unwrap_or_else(|e| panic!("the good session cannot log in: {e}"));
        let stop = Arc::new(AtomicBool::new(false));
        let ops = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let (s, o, e) = (stop.clone(), ops.clone(), errors.clone());
        let thread = std::thread::spawn(move || {
            let mut n = 0u64;
            while !s.load(Ordering::SeqCst) {
                let lba = 1024 + (n % 64) as u32 * 8;
                if let Err(err) = ini.write_read_verify(lba, 8, n + 1) {
                    if let Ok(mut v) = e.lock() {
                        v.push(format!("op {n}: {err}"));
                    }
                    return;
                }
                n += 1;
                o.store(n, Ordering::SeqCst);
            }
            ini.close();
        });
        let g = GoodSession {
            stop,
            ops,
            errors,
            thread: Some(thread),
        };
        g.assert_progress("right after login");
        g
    }

    /// Completed write-read-verify rounds.
    pub fn ops(&self) -> u64 {
        self.ops.load(Ordering::SeqCst)
    }

    /// Panics unless the session has had no error and completes 3 more rounds within 60 s.
    pub fn assert_progress(&self, when: &str) {
        let start = self.ops();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            self.assert_no_error(when);
            if self.ops() >= start + 3 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the well-behaved session made no progress {when} ({} rounds)",
                self.ops()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn assert_no_error(&self, when: &str) {
        let errs = self.errors.lock().map(|v| v.clone()).unwrap_or_default();
        assert!(
            errs.is_empty(),
            "the well-behaved session failed {when}: {errs:?}"
        );
    }

    /// Stops the loop and checks that it never failed.
    pub fn finish(mut self, when: &str) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.assert_no_error(when);
    }
}

impl Drop for GoodSession {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ------------------------------------------------------------------------------------------
// External tools and the admin socket
// ------------------------------------------------------------------------------------------

/// One request on duetd's admin socket; the answer's `data`.
pub fn admin(socket: &Path, cmd: &str) -> Result<serde_json::Value, String> {
    let mut s = UnixStream::connect(socket).map_err(|e| format!("{}: {e}", socket.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    s.write_all(format!("{{\"cmd\":\"{cmd}\"}}\n").as_bytes())
        .map_err(|e| e.to_string())?;
    let mut line = String::new();
    BufReader::new(s)
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    let v: serde_json::Value = serde_json::from_str(&line).map_err(|e| format!("{e}: {line}"))?;
    if v["ok"] != serde_json::Value::Bool(true) {
        return Err(format!("refused: {line}"));
    }
    Ok(v["data"].clone())
}
