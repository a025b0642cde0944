//! Harness for the hostile-peer tests (the daemon itself is `crate::support::Daemon`, started per
//! test on its own loopback address): the test target's configuration, a raw iSCSI initiator
//! on `std::net::TcpStream`, a well-behaved background session that writes, reads and verifies
//! blocks, a bound on the daemon's memory (VmRSS) and its admin socket.
//!
//! No protocol rule is written here: PDUs, text keys, CDBs and sense decoding are duet-core's;
//! the login, reading PDUs off the socket and the full-feature rules (sequence numbers, how a
//! command is laid out, Data-Out on R2T, ping answers) are duet-hosts'. A test that wants a
//! malformed PDU builds a well-formed one and then alters it or its wire bytes.
//!
//! Everything is bounded in time: sockets carry read and write timeouts, loops have deadlines,
//! and the daemon is killed by PID when its guard is dropped.

#![allow(dead_code)]

use crate::support::{Daemon, Site, TargetConfig};
use duet_core::iscsi::initiator::{LoginPlan, OperationalOffer};
use duet_core::iscsi::pdu::flags;
use duet_core::iscsi::{Lun, Opcode, Pdu, TaskAttr, TextPairs, RESERVED_TAG};
use duet_core::scsi::host;
use duet_hosts::login::blocking::{self, Received};
use duet_hosts::wire::{self, Sequence, WriteLimits};
use std::io::{BufRead, BufReader, Write};
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
// Raw access to the wire (PDUs are duet-core's; malformations alter their bytes)
// ------------------------------------------------------------------------------------------

/// LUN 1, the test LUN, as it travels.
pub fn lun1() -> Lun {
    Lun::from_number(1)
}

/// Reads one PDU; `Ok(None)` when the peer closed the connection (or cut a PDU short and
/// closed), `Err` on a timeout, a reset mid-read or bytes that are no PDU (the text says which).
pub fn read_pdu(s: &mut TcpStream) -> Result<Option<Pdu>, String> {
    match blocking::recv_pdu_or_close(s).map_err(|e| e.to_string())? {
        Received::Pdu(p) => Ok(Some(p)),
        Received::Closed { .. } => Ok(None),
    }
}

/// Reads until the target closes the connection (within `within`), returning the PDUs it sent
/// first; `Err` if the connection is still open at the deadline.
pub fn read_until_closed(s: &mut TcpStream, within: Duration) -> Result<Vec<Pdu>, String> {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!(
                "the connection was still open after {within:?} (PDUs: {:?})",
                seen.iter().map(Pdu::opcode_raw).collect::<Vec<_>>()
            ));
        }
        s.set_read_timeout(Some(left.max(Duration::from_millis(10))))
            .map_err(|e| e.to_string())?;
        match read_pdu(s) {
            Ok(None) => return Ok(seen),
            Ok(Some(p)) => seen.push(p),
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
pub fn text_segment(pairs: &[(&str, String)]) -> Vec<u8> {
    let mut t = TextPairs::new();
    for (k, v) in pairs {
        t.push(*k, v.clone());
    }
    t.to_bytes().to_vec()
}

/// The ISID of the tests' sessions: type 2 (random), qualifier `isid` in the last two bytes.
pub fn isid(qualifier: u16) -> [u8; 6] {
    let [hi, lo] = qualifier.to_be_bytes();
    [0x80, 0x00, 0x4e, 0x11, hi, lo]
}

/// A Login Request from `csg` to `nsg` (transit bit `t`), ISID qualifier `isid`, with `data`.
pub fn login_request(csg: u8, nsg: u8, t: bool, isid: u16, cmd_sn: u32, data: Vec<u8>) -> Pdu {
    let nsg = if t { nsg } else { 0 };
    Pdu::login_request(
        self::isid(isid),
        0,
        0x1000 + isid as u32,
        cmd_sn,
        (t, csg, nsg),
        data.into(),
    )
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
/// ImmediateData=No, so every write goes through R2T and Data-Out. The full-feature rules
/// (sequence numbers, command layout, Data-Out, ping answers) are duet-hosts' [`wire`].
pub struct Initiator {
    /// The connection (public so that tests can send raw bytes on it).
    pub sock: TcpStream,
    /// CmdSN and ExpStatSN (public so that tests can send wrong ones).
    pub seq: Sequence,
    limits: WriteLimits,
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
            seq: Sequence {
                cmd_sn: done.cmd_sn,
                exp_stat_sn: done.exp_stat_sn,
                max_cmd_sn: done.cmd_sn,
            },
            limits: WriteLimits::from_params(&done.params),
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
            let r = self.command(&host::test_unit_ready_cdb(), 0, None)?;
            if r.status == 0 {
                return Ok(());
            }
            last = r.sense;
        }
        Err(format!(
            "TEST UNIT READY never GOOD; last sense {last:02x?}"
        ))
    }

    /// Sends one PDU as it is.
    pub fn send(&mut self, p: &Pdu) -> Result<(), String> {
        blocking::send_pdu(&mut self.sock, p).map_err(|e| e.to_string())
    }

    /// Sends one PDU's bytes after `alter` changed them.
    pub fn send_altered(
        &mut self,
        p: &Pdu,
        alter: impl FnOnce(&mut Vec<u8>),
    ) -> Result<(), String> {
        let mut b = blocking::wire_bytes(p);
        alter(&mut b);
        self.sock.write_all(&b).map_err(|e| format!("send: {e}"))
    }

    /// A fresh initiator task tag.
    pub fn itt(&mut self) -> u32 {
        let t = self.next_itt;
        self.next_itt = self.next_itt.wrapping_add(1).max(1);
        t
    }

    /// The next PDU that is not a target ping (those are answered here) nor an Async Message,
    /// with ExpStatSN bookkeeping.
    pub fn recv(&mut self) -> Result<Pdu, String> {
        loop {
            let p = read_pdu(&mut self.sock)?.ok_or("the target closed the connection")?;
            self.seq.note(&p);
            match p.opcode() {
                Some(Opcode::NopIn) if p.itt() == RESERVED_TAG => {
                    if let Some(mut answer) = wire::ping_answer(&p, self.seq.cmd_sn) {
                        answer
                            .set_lun(p.lun())
                            .set_exp_stat_sn(self.seq.exp_stat_sn);
                        self.send(&answer)?;
                        self.pings_answered += 1;
                    }
                }
                Some(Opcode::AsyncMessage) => {}
                _ => return Ok(p),
            }
        }
    }

    /// A SCSI command for LUN 1 writing `write_len` bytes and reading `read_len`, laid out as
    /// the session's parameters say (CmdSN taken).
    pub fn scsi_command(&mut self, cdb: &[u8], write_len: usize, read_len: u32) -> Pdu {
        let layout = self.limits.layout(write_len, read_len);
        let itt = self.itt();
        let cmd_sn = self.seq.take_cmd_sn();
        let mut p = Pdu::scsi_command(
            itt,
            lun1(),
            cdb,
            layout.edtl,
            cmd_sn,
            layout.flags,
            TaskAttr::Simple,
        );
        p.set_exp_stat_sn(self.seq.exp_stat_sn);
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
        let p = self.scsi_command(cdb, data_out.map_or(0, <[u8]>::len), read_len);
        let itt = p.itt();
        self.send(&p)?;
        self.finish(itt, data_out)
    }

    /// Collects the answer to task `itt` (see [`Initiator::command`]).
    pub fn finish(&mut self, itt: u32, data_out: Option<&[u8]>) -> Result<ScsiResult, String> {
        let out = data_out.unwrap_or_default();
        let payload = out.to_vec().into();
        let mut data = Vec::new();
        loop {
            let p = self.recv()?;
            if p.itt() != itt {
                return Err(format!(
                    "PDU {:#04x} for task {:#x} while waiting for task {itt:#x}",
                    p.opcode_raw(),
                    p.itt()
                ));
            }
            match p.opcode() {
                Some(Opcode::R2t) => {
                    if data_out.is_none() {
                        return Err("R2T for a command without data".into());
                    }
                    let start = (p.buffer_offset() as usize).min(out.len());
                    let end = (start + p.desired_length() as usize).min(out.len());
                    let seg = self.limits.max_xmit_seg;
                    let outs: Vec<Pdu> =
                        wire::data_out_pdus(itt, p.ttt(), lun1(), &payload, (start, end), seg)
                            .collect();
                    for mut d in outs {
                        d.set_exp_stat_sn(self.seq.exp_stat_sn);
                        self.send(&d)?;
                    }
                }
                Some(Opcode::DataIn) => {
                    data.extend_from_slice(&p.data);
                    if p.flags() & flags::STATUS != 0 {
                        return Ok(ScsiResult {
                            status: p.status(),
                            data,
                            sense: Vec::new(),
                        });
                    }
                }
                Some(Opcode::ScsiResponse) => {
                    return Ok(ScsiResult {
                        status: p.status(),
                        data,
                        sense: p.sense_data().map(|s| s.to_vec()).unwrap_or_default(),
                    });
                }
                _ => {
                    return Err(format!(
                        "unexpected PDU {:#04x} for task {itt:#x}",
                        p.opcode_raw()
                    ))
                }
            }
        }
    }

    /// WRITE(10) of `data` (a whole number of blocks) at `lba`; Ok if GOOD.
    pub fn write(&mut self, lba: u32, data: &[u8]) -> Result<(), String> {
        let blocks = (data.len() / BLOCK) as u16;
        let r = self.command(&host::write10_cdb(lba, blocks), 0, Some(data))?;
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
        let r = self.command(
            &host::read10_cdb(lba, blocks),
            blocks as u32 * BLOCK as u32,
            None,
        )?;
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
        Ok(self.command(&host::test_unit_ready_cdb(), 0, None)?.status)
    }

    /// An immediate NOP-Out ping (ITT `itt`, CmdSN not taken) carrying `payload`.
    pub fn nop_out(&self, itt: u32, payload: &[u8]) -> Pdu {
        let mut p = Pdu::nop_out(itt, RESERVED_TAG, self.seq.cmd_sn, payload.to_vec().into());
        p.set_immediate(true).set_exp_stat_sn(self.seq.exp_stat_sn);
        p
    }

    /// An immediate NOP-Out ping that must be answered with a NOP-In echoing `payload`.
    pub fn ping(&mut self, payload: &[u8]) -> Result<(), String> {
        let itt = self.itt();
        let p = self.nop_out(itt, payload);
        self.send(&p)?;
        let r = self.recv()?;
        if r.opcode() != Some(Opcode::NopIn) || r.itt() != itt {
            return Err(format!(
                "expected the NOP-In for {itt:#x}, got {:#04x} for {:#x}",
                r.opcode_raw(),
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
