//! Explicit ALUA end to end: a host that sends SET TARGET PORT GROUPS moves a LUN between the
//! controllers of the lab (`duetd lab`, see `lab_common`).
//!
//! A raw initiator (duet-core's PDUs and login, duet-hosts' full-feature rules) logs in through
//! both portals of the lab's namespace and asserts what a host sees:
//!
//! - INQUIRY advertises implicit and explicit ALUA (TPGS = 11b) under automatic failover,
//!   implicit only (01b) under manual failover, where STPG is refused (05/20/00);
//! - STPG through ctrl-b asking for ctrl-b's group to become Active/Optimized is GOOD only once
//!   ctrl-b serves the LUN: REPORT TARGET PORT GROUPS then shows group 2 Active/Optimized through
//!   both portals, and the blocks written through ctrl-a before are read back through ctrl-b;
//!   the sender is not told 2A/06 for its own change, the other path hears of a change;
//! - a request no pair can provide (both groups Active/Optimized) is ILLEGAL REQUEST, INVALID
//!   FIELD IN PARAMETER LIST with the field pointer on the offending state;
//! - with the HA link cut, STPG asking for the peer's group fails with 04/67/0A SET TARGET PORT
//!   GROUPS COMMAND FAILED.
//!
//! The initiator's sockets are opened in the lab's namespace by a short-lived thread that
//! enters it (`setns`); everything else runs on the test's thread. Needs root; without it every
//! test is skipped with a message. Run with
//! `cargo test --release -p duet-verification --test alua_explicit -- --test-threads 1` after
//! `cargo build --release -p duet-target`.

mod lab_common;
mod support;

use duet_core::alua::AluaState;
use duet_core::iscsi::initiator::{LoginPlan, OperationalOffer};
use duet_core::iscsi::pdu::flags;
use duet_core::iscsi::{Lun, Opcode, Pdu, TaskAttr, RESERVED_TAG};
use duet_core::scsi::host;
use duet_core::sense::SenseCode;
use duet_hosts::login::blocking::{self, Received};
use duet_hosts::wire::{self, Sequence, WriteLimits};
use lab_common::{Lab, LabOpts, Node, LAB_LUN, LAB_TARGET};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::time::Duration;
use support::{require_programs, wait_until};

/// The lab's logical block size.
const BLOCK: usize = 512;
/// The host's initiator name (its paths differ in the ISID).
const INITIATOR: &str = "iqn.2026-11.test:alua-host";
/// Where the data written before a move lives.
const LBA: u64 = 100;
const BLOCKS: u32 = 8;

/// What a command ended with.
#[derive(Debug)]
struct Answer {
    status: u8,
    data: Vec<u8>,
    /// Sense data as sent (without the 2-byte length).
    sense: Vec<u8>,
}

impl Answer {
    fn code(&self) -> Option<SenseCode> {
        SenseCode::from_sense_data(&self.sense)
    }
    fn good(&self) -> bool {
        self.status == 0
    }
}

/// One path of the host: a logged-in session over one connection, one command at a time.
struct Path {
    name: &'static str,
    sock: TcpStream,
    seq: Sequence,
    limits: WriteLimits,
    itt: u32,
    /// Unit attentions reported on this path so far.
    uas: Vec<SenseCode>,
}

/// Connects to `addr` from inside namespace `ns` (a thread enters it; the socket stays there).
fn connect_in(ns: &str, addr: SocketAddr) -> TcpStream {
    let netns = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let f = std::fs::File::open(&netns).unwrap_or_else(|e| panic!("open {netns}: {e}"));
        // SAFETY: setns on a valid descriptor changes only this thread's network namespace.
        let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {netns}: {}", std::io::Error::last_os_error());
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        s.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("read timeout");
        s.set_write_timeout(Some(Duration::from_secs(20)))
            .expect("write timeout");
        let _ = s.set_nodelay(true);
        s
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

impl Path {
    /// Logs in through `node`'s portal with ISID qualifier `q`.
    fn login(lab: &Lab, node: Node, q: u8) -> Path {
        let addr: SocketAddr = node.portal().parse().expect("portal address");
        let mut sock = connect_in(&lab.ns, addr);
        let plan = LoginPlan {
            itt: 0x100 + u32::from(q),
            skip_security: true,
            offer: OperationalOffer {
                initial_r2t: true,
                immediate_data: true,
                max_recv_data_segment_length: 65536,
                max_burst_length: 262_144,
                first_burst_length: 65536,
                ..OperationalOffer::default()
            },
            ..LoginPlan::normal(INITIATOR, LAB_TARGET, [0x80, 0, 0xa1, 0x0a, 0, q])
        };
        let done = blocking::login(&mut sock, plan)
            .unwrap_or_else(|e| panic!("login through {node}: {e}"));
        Path {
            name: node.name(),
            sock,
            seq: Sequence {
                cmd_sn: done.cmd_sn,
                exp_stat_sn: done.exp_stat_sn,
                max_cmd_sn: done.cmd_sn,
            },
            limits: WriteLimits::from_params(&done.params),
            itt: 0,
            uas: Vec::new(),
        }
    }

    fn send(&mut self, p: &Pdu) {
        blocking::send_pdu(&mut self.sock, p)
            .unwrap_or_else(|e| panic!("{}: send: {e}", self.name));
    }

    /// The next PDU that is not a target ping (answered here) nor an Async Message.
    fn recv(&mut self) -> Pdu {
        loop {
            let p = match blocking::recv_pdu_or_close(&mut self.sock) {
                Ok(Received::Pdu(p)) => p,
                other => panic!("{}: no answer: {other:?}", self.name),
            };
            self.seq.note(&p);
            match p.opcode() {
                Some(Opcode::NopIn) if p.itt() == RESERVED_TAG => {
                    if let Some(mut answer) = wire::ping_answer(&p, self.seq.cmd_sn) {
                        answer
                            .set_lun(p.lun())
                            .set_exp_stat_sn(self.seq.exp_stat_sn);
                        self.send(&answer);
                    }
                }
                Some(Opcode::AsyncMessage) => {}
                _ => return p,
            }
        }
    }

    /// One command on the lab's LUN, `data_out` sent as immediate data (it must fit the
    /// first burst), up to `read_len` bytes read.
    fn command(&mut self, cdb: &[u8], read_len: u32, data_out: &[u8]) -> Answer {
        let layout = self.limits.layout(data_out.len(), read_len);
        assert_eq!(
            layout.immediate,
            data_out.len(),
            "data beyond the first burst"
        );
        self.itt += 1;
        let itt = self.itt;
        let mut p = Pdu::scsi_command(
            itt,
            Lun::from_number(LAB_LUN as duet_core::LunNumber),
            cdb,
            layout.edtl,
            self.seq.take_cmd_sn(),
            layout.flags,
            TaskAttr::Simple,
        );
        p.set_exp_stat_sn(self.seq.exp_stat_sn);
        if !data_out.is_empty() {
            p.set_data(data_out.to_vec().into());
        }
        self.send(&p);
        let mut data = Vec::new();
        loop {
            let p = self.recv();
            assert_eq!(p.itt(), itt, "{}: answer for another task", self.name);
            match p.opcode() {
                Some(Opcode::DataIn) => {
                    data.extend_from_slice(&p.data);
                    if p.flags() & flags::STATUS != 0 {
                        return Answer {
                            status: p.status(),
                            data,
                            sense: Vec::new(),
                        };
                    }
                }
                Some(Opcode::ScsiResponse) => {
                    return Answer {
                        status: p.status(),
                        data,
                        sense: p.sense_data().map(|s| s.to_vec()).unwrap_or_default(),
                    }
                }
                other => panic!("{}: unexpected PDU {other:?}", self.name),
            }
        }
    }

    /// [`Path::command`], repeated while it reports a unit attention (each one is recorded).
    fn settled(&mut self, cdb: &[u8], read_len: u32, data_out: &[u8]) -> Answer {
        for _ in 0..8 {
            let a = self.command(cdb, read_len, data_out);
            match a.code() {
                Some(c) if a.status == 2 && c.is_unit_attention() => self.uas.push(c),
                _ => return a,
            }
        }
        panic!("{}: unit attentions without end: {:?}", self.name, self.uas);
    }

    /// The state of each port group, by id, from REPORT TARGET PORT GROUPS.
    fn groups(&mut self) -> Vec<(u16, Option<AluaState>)> {
        let a = self.settled(&host::report_target_port_groups_cdb(1024), 1024, &[]);
        assert!(a.good(), "{}: RTPG: {a:?}", self.name);
        let groups = host::parse_rtpg(&a.data).expect("RTPG data");
        groups.iter().map(|g| (g.group_id, g.state)).collect()
    }

    /// The TPGS field of standard INQUIRY data (1 implicit, 3 implicit and explicit).
    fn tpgs(&mut self) -> u8 {
        let a = self.command(&[0x12, 0, 0, 0, 96, 0], 96, &[]);
        assert!(a.good(), "{}: INQUIRY: {a:?}", self.name);
        (a.data[5] >> 4) & 3
    }
}

/// SET TARGET PORT GROUPS with one descriptor per (state code, group).
fn stpg(path: &mut Path, descriptors: &[(u8, u16)]) -> Answer {
    let mut list = vec![0u8; 4];
    for &(state, group) in descriptors {
        let [hi, lo] = group.to_be_bytes();
        list.extend_from_slice(&[state, 0, hi, lo]);
    }
    let mut cdb = [0u8; 12];
    cdb[0] = 0xA4;
    cdb[1] = 0x0A;
    cdb[6..10].copy_from_slice(&(list.len() as u32).to_be_bytes());
    path.settled(&cdb, 0, &list)
}

fn pattern() -> Vec<u8> {
    (0..BLOCK * BLOCKS as usize)
        .map(|i| (i * 31 % 251) as u8)
        .collect()
}

/// A lab in `mode` under automatic failover: STPG through ctrl-b moves the LUN to ctrl-b.
fn moves_the_lun(mode: u8) {
    let Some(lab) = Lab::start(mode, LabOpts::default()) else {
        return;
    };
    let mut a = Path::login(&lab, Node::A, 1);
    let mut b = Path::login(&lab, Node::B, 2);
    assert_eq!(a.tpgs(), 3, "explicit and implicit ALUA through ctrl-a");
    assert_eq!(b.tpgs(), 3, "explicit and implicit ALUA through ctrl-b");
    let secondary = if mode == 0 {
        AluaState::Standby
    } else {
        AluaState::ActiveNonOptimized
    };
    assert_eq!(
        a.groups(),
        vec![(1, Some(AluaState::ActiveOptimized)), (2, Some(secondary))]
    );
    let data = pattern();
    let w = a.settled(&host::write16_cdb(LBA, BLOCKS), 0, &data);
    assert!(w.good(), "write through ctrl-a: {w:?}");

    // Both groups Active/Optimized: no pair can; the second descriptor's state is pointed at.
    let bad = stpg(&mut b, &[(0x0, 1), (0x0, 2)]);
    assert_eq!(bad.status, 2, "{bad:?}");
    assert_eq!(bad.code(), Some(SenseCode::INVALID_FIELD_IN_PARAM_LIST));
    let sks = match bad.sense[0] & 0x7f {
        0x70 => bad.sense[15..18].to_vec(),
        _ => panic!("fixed-format sense expected: {:02x?}", bad.sense),
    };
    assert_eq!(
        sks,
        vec![0x80 | 0x08 | 3, 0, 8],
        "SKSV, BPV, bit 3 of byte 8"
    );
    assert_eq!(lab.view(Node::A).and_then(|v| v.primary), Some(1));

    // Asking for what is in place changes nothing.
    let same = stpg(&mut b, &[(0x0, 1)]);
    assert!(same.good(), "{same:?}");

    // ctrl-b's group Active/Optimized, asked through ctrl-b: GOOD once ctrl-b serves.
    let uas_before = b.uas.len();
    let started = std::time::Instant::now();
    let moved = stpg(&mut b, &[(0x0, 2)]);
    // Reported, never asserted (the machine is shared).
    eprintln!(
        "ALUA_EXPLICIT mode={mode} stpg_move_ms={}",
        started.elapsed().as_millis()
    );
    assert!(moved.good(), "STPG through ctrl-b: {moved:?}");
    let v = lab.view(Node::B).expect("ctrl-b answers");
    assert_eq!(
        (v.role.as_str(), v.primary),
        ("primary", Some(2)),
        "ctrl-b serves once STPG is GOOD"
    );
    let after = vec![(1, Some(secondary)), (2, Some(AluaState::ActiveOptimized))];
    assert_eq!(b.groups(), after, "RTPG through ctrl-b");
    assert_eq!(a.groups(), after, "RTPG through ctrl-a");
    let r = b.settled(&host::read16_cdb(LBA, BLOCKS), BLOCK as u32 * BLOCKS, &[]);
    assert!(r.good(), "read through ctrl-b: {r:?}");
    assert!(
        r.data == data,
        "the blocks written through ctrl-a read back through ctrl-b"
    );
    assert!(
        !b.uas[uas_before..].contains(&SenseCode::UA_ALUA_STATE_CHANGED),
        "the sender is not told of its own change: {:?}",
        b.uas
    );
    assert!(!a.uas.is_empty(), "the other path hears of the change");
    eprintln!(
        "ALUA_EXPLICIT mode={mode} sender_uas={:?} other_path_uas={:?}",
        b.uas.iter().map(ToString::to_string).collect::<Vec<_>>(),
        a.uas.iter().map(ToString::to_string).collect::<Vec<_>>()
    );
    // And back, asked through ctrl-a for its own group.
    let back = stpg(&mut a, &[(0x0, 1)]);
    assert!(back.good(), "STPG through ctrl-a: {back:?}");
    assert!(wait_until(
        || lab.view(Node::A).is_some_and(|v| v.role == "primary"),
        Duration::from_secs(2)
    ));
    assert_eq!(
        a.groups(),
        vec![(1, Some(AluaState::ActiveOptimized)), (2, Some(secondary))]
    );
}

#[test]
fn stpg_moves_the_lun_in_mode_0() {
    moves_the_lun(0);
}

#[test]
fn stpg_moves_the_lun_in_mode_1() {
    moves_the_lun(1);
}

#[test]
fn stpg_moves_the_lun_in_mode_2() {
    moves_the_lun(2);
}

/// With the HA link cut the pair cannot move the LUN: SET TARGET PORT GROUPS COMMAND FAILED.
#[test]
fn stpg_fails_with_the_link_cut() {
    if !require_programs(&["iptables"], "iptables") {
        return;
    }
    let Some(mut lab) = Lab::start(2, LabOpts::default()) else {
        return;
    };
    let mut a = Path::login(&lab, Node::A, 1);
    let mut b = Path::login(&lab, Node::B, 2);
    assert_eq!(a.tpgs(), 3);
    lab.cut_link();
    assert!(
        wait_until(
            || [Node::A, Node::B]
                .iter()
                .all(|&n| lab.view(n).is_some_and(|v| v.link_state != 2)),
            Duration::from_secs(15)
        ),
        "the controllers did not notice the cut"
    );
    // The primary cannot hand the LUN to a peer it cannot reach.
    let r = stpg(&mut a, &[(0x0, 2)]);
    assert_eq!(r.status, 2, "{r:?}");
    assert_eq!(r.code(), Some(SenseCode::STPG_FAILED), "{r:?}");
    // The secondary cannot reach the primary: its group is not active (NOT READY, ALUA
    // transitioning or unavailable), or the request fails as above.
    let r = stpg(&mut b, &[(0x0, 2)]);
    assert_eq!(r.status, 2, "{r:?}");
    assert!(
        [
            Some(SenseCode::ALUA_TRANSITIONING),
            Some(SenseCode::ALUA_UNAVAILABLE),
            Some(SenseCode::STPG_FAILED)
        ]
        .contains(&r.code()),
        "{r:?}"
    );
    eprintln!(
        "ALUA_EXPLICIT link_cut primary={:?} secondary={:?}",
        SenseCode::STPG_FAILED.to_string(),
        r.code().map(|c| c.to_string())
    );
    lab.heal_link();
}

/// Under manual failover the operator names the primary: implicit ALUA only, STPG refused.
#[test]
fn manual_failover_is_implicit_only() {
    let opts = LabOpts {
        failover: Some("manual".into()),
        ..LabOpts::default()
    };
    let Some(lab) = Lab::start(0, opts) else {
        return;
    };
    let mut b = Path::login(&lab, Node::B, 2);
    assert_eq!(b.tpgs(), 1, "implicit ALUA only");
    let r = stpg(&mut b, &[(0x0, 2)]);
    assert_eq!(r.status, 2, "{r:?}");
    assert_eq!(r.code(), Some(SenseCode::INVALID_OPCODE), "{r:?}");
}
