//! Model-based property test of the iSCSI CmdSN window (RFC 7143 §3.2.2.1, §4.2.2.1).
//!
//! A session is logged in with a random first CmdSN close to 2^32 and a random queue depth;
//! then random SCSI Command and NOP-Out PDUs (immediate or not, CmdSN around the window, with
//! duplicates) and command completions are fed to the `Connection`. The reference model is the
//! window itself: ExpCmdSN, the CmdSNs held for a gap, and the requests that must have run, in
//! order. After every step the target's ExpCmdSN, MaxCmdSN, held count, the commands it handed
//! to the executor and the NOP-Ins it answered must match; every response carries the model's
//! ExpCmdSN and MaxCmdSN. Serial number arithmetic wraps at 2^32.

use bytes::Bytes;
use duet_core::iscsi::pdu::Opcode;
use duet_core::iscsi::{
    Action, Completion, Connection, IscsiConfig, LoginEntropy, Lun, Pdu, PortalInfo, TargetConfig,
    TargetLimits, TaskAttr, TextPairs,
};
use duet_core::sense::status;
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

const TARGET: &str = "iqn.2026-11.dev.duet:model";
const INITIATOR: &str = "iqn.2026-11.test:cmdsn";
const RESERVED: u32 = 0xffff_ffff;

fn config(queue_depth: u32) -> Arc<IscsiConfig> {
    Arc::new(IscsiConfig {
        targets: vec![TargetConfig {
            name: TARGET.into(),
            alias: None,
            allowed_initiators: vec![],
            chap: vec![],
            deny_all: false,
            addresses: vec![],
        }],
        discovery_chap: vec![],
        discovery_deny: false,
        limits: TargetLimits {
            queue_depth,
            nop_in_interval_ms: 0,
            ..TargetLimits::default()
        },
    })
}

fn drain(c: &mut Connection) -> Vec<Action> {
    let mut v = Vec::new();
    while let Some(a) = c.poll_action() {
        v.push(a);
    }
    v
}

/// A connection in full feature phase whose first CmdSN is `first`.
fn logged_in(queue_depth: u32, first: u32) -> Connection {
    let mut c = Connection::new(
        config(queue_depth),
        PortalInfo {
            address: "127.0.0.1:3260,1".into(),
            portal_group_tag: 1,
        },
        LoginEntropy {
            chap_id: 1,
            chap_challenge: [7; 32],
            tsih: 3,
        },
    );
    let mut t = TextPairs::new();
    for (k, v) in [
        ("InitiatorName", INITIATOR),
        ("TargetName", TARGET),
        ("SessionType", "Normal"),
        ("HeaderDigest", "None"),
        ("DataDigest", "None"),
        ("InitialR2T", "No"),
        ("ImmediateData", "Yes"),
        ("MaxRecvDataSegmentLength", "262144"),
        ("ErrorRecoveryLevel", "0"),
    ] {
        t.push(k, v);
    }
    let login = Pdu::login_request(
        [0x80, 0, 0, 0, 0, 9],
        0,
        0x10,
        first,
        (true, 1, 3),
        t.to_bytes(),
    );
    c.handle_pdu(login, 0);
    let acts = drain(&mut c);
    assert!(
        acts.iter().any(|a| matches!(a, Action::LoginComplete(_))),
        "login should complete: {acts:?}"
    );
    c
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    /// TEST UNIT READY.
    Scsi,
    /// NOP-Out ping (answered with a NOP-In).
    Nop,
}

#[derive(Clone, Debug)]
enum Op {
    /// A request with CmdSN = ExpCmdSN (as the model knows it) + `delta`.
    Send {
        kind: Kind,
        delta: i64,
        immediate: bool,
    },
    /// Complete the `i`-th (modulo) outstanding command.
    Complete(usize),
    /// Immediate ABORT TASK for a task the target does not know, RefCmdSN = ExpCmdSN + `delta`.
    AbortAhead { delta: i64 },
}

fn any_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (
            prop_oneof![3 => Just(Kind::Scsi), 1 => Just(Kind::Nop)],
            -3i64..20,
            prop::bool::weighted(0.15),
        )
            .prop_map(|(kind, delta, immediate)| Op::Send { kind, delta, immediate }),
        3 => any::<usize>().prop_map(Op::Complete),
        1 => (-2i64..20).prop_map(|delta| Op::AbortAhead { delta }),
    ]
}

/// A request the model holds for a gap.
#[derive(Clone, Copy, Debug)]
struct Req {
    itt: u32,
    kind: Kind,
    /// Its CmdSN was claimed by an ABORT TASK: it takes its slot and does not run.
    dropped: bool,
}

#[derive(Debug)]
struct Model {
    depth: u32,
    exp: u32,
    held: BTreeMap<u32, Req>,
    /// Non-immediate requests that ran: CmdSN and kind, in order.
    ran: Vec<(u32, Kind)>,
    /// CmdSNs an ABORT TASK claimed before their command arrived.
    aborted: BTreeSet<u32>,
}

impl Model {
    fn max(&self) -> u32 {
        self.exp.wrapping_add(self.depth - 1)
    }

    /// A non-immediate request with CmdSN `sn` arrives; returns the requests that run now, in
    /// order.
    fn arrive(&mut self, sn: u32, req: Req) -> Vec<(u32, Req)> {
        let offset = sn.wrapping_sub(self.exp);
        if offset >= self.depth || self.held.contains_key(&sn) {
            return Vec::new();
        }
        // A CmdSN an earlier ABORT TASK claimed: the request takes its slot and is dropped.
        let req = Req {
            dropped: self.aborted.remove(&sn),
            ..req
        };
        self.held.insert(sn, req);
        let mut out = Vec::new();
        while let Some(r) = self.held.remove(&self.exp) {
            if !r.dropped {
                self.ran.push((self.exp, r.kind));
            }
            out.push((self.exp, r));
            self.exp = self.exp.wrapping_add(1);
        }
        out
    }

    /// ABORT TASK for an unknown task with RefCmdSN `sn`: the TMF response code. In the window,
    /// the CmdSN is claimed (its command, when it comes, is dropped); otherwise "task does not
    /// exist".
    /// (RFC 7143 §11.5.1 b: the CmdSN counts as received, so requests held behind it run.)
    fn abort(&mut self, sn: u32) -> (u8, Vec<(u32, Req)>) {
        let offset = sn.wrapping_sub(self.exp);
        if offset >= self.depth {
            return (1, Vec::new());
        }
        self.held.entry(sn).or_insert(Req {
            itt: 0,
            kind: Kind::Scsi,
            dropped: true,
        });
        let mut out = Vec::new();
        while let Some(r) = self.held.remove(&self.exp) {
            if !r.dropped {
                self.ran.push((self.exp, r.kind));
            }
            out.push((self.exp, r));
            self.exp = self.exp.wrapping_add(1);
        }
        (0, out)
    }
}

/// What the connection did for one step: commands to execute, NOP-In answers (ITT, ExpCmdSN,
/// MaxCmdSN) and SCSI Responses (ITT, ExpCmdSN, MaxCmdSN), in order.
#[derive(Debug, Default)]
struct Seen {
    executed: Vec<(u32, u32, bool)>,
    nop_ins: Vec<(u32, u32, u32)>,
    responses: Vec<(u32, u32, u32)>,
    /// Task management responses: ITT and response code.
    tmf: Vec<(u32, u8)>,
    /// StatSN of every NOP-In and SCSI Response, in order.
    stat_sns: Vec<u32>,
    other: Vec<String>,
}

fn observe(actions: Vec<Action>) -> Seen {
    let mut s = Seen::default();
    for a in actions {
        match a {
            Action::Execute(cmd) => s.executed.push((cmd.itt, cmd.cmd_sn, cmd.immediate)),
            Action::Send(p) if p.opcode() == Some(Opcode::NopIn) => {
                s.stat_sns.push(p.stat_sn());
                s.nop_ins.push((p.itt(), p.exp_cmd_sn(), p.max_cmd_sn()))
            }
            Action::Send(p) if p.opcode() == Some(Opcode::TaskMgmtResponse) => {
                s.stat_sns.push(p.stat_sn());
                s.tmf.push((p.itt(), p.response()))
            }
            Action::Send(p) if p.opcode() == Some(Opcode::ScsiResponse) => {
                s.stat_sns.push(p.stat_sn());
                s.responses.push((p.itt(), p.exp_cmd_sn(), p.max_cmd_sn()))
            }
            other => s.other.push(format!("{other:?}")),
        }
    }
    s
}

fn good() -> Completion {
    Completion {
        status: status::GOOD,
        sense: None,
        data_in: Bytes::new(),
        wanted_len: 0,
    }
}

fn replay(depth: u32, first: u32, ops: &[Op]) -> Result<(), TestCaseError> {
    let mut c = logged_in(depth, first);
    let mut m = Model {
        depth,
        exp: first,
        held: BTreeMap::new(),
        ran: Vec::new(),
        aborted: BTreeSet::new(),
    };
    let mut next_itt = 1u32;
    // Commands handed to the executor and not completed yet.
    let mut outstanding: Vec<u32> = Vec::new();
    let mut executed_sns: BTreeSet<u32> = BTreeSet::new();
    // The StatSN the next status-carrying PDU must have.
    let mut stat_sn = c.session().expect("logged in").next_stat_sn();
    let mut check_stat = |seen: &Seen, what: &str| -> Result<(), TestCaseError> {
        for sn in &seen.stat_sns {
            prop_assert_eq!(*sn, stat_sn, "{}: StatSN", what);
            stat_sn = stat_sn.wrapping_add(1);
        }
        Ok(())
    };
    for (step, op) in ops.iter().enumerate() {
        let what = format!("step {step}: {op:?} (ExpCmdSN {:#x})", m.exp);
        match op {
            Op::Send {
                kind,
                delta,
                immediate,
            } => {
                // Keep the task count far below the session's limit (2 x depth + 16).
                if outstanding.len() >= 8 {
                    let itt = outstanding.remove(0);
                    c.complete_command(itt, good(), 0);
                    let seen = observe(drain(&mut c));
                    check_stat(&seen, &what)?;
                    prop_assert_eq!(seen.responses, vec![(itt, m.exp, m.max())], "{}", what);
                }
                let sn = m.exp.wrapping_add(*delta as u32);
                let itt = next_itt;
                next_itt += 1;
                let mut pdu = match kind {
                    Kind::Scsi => Pdu::scsi_command(
                        itt,
                        Lun::from_number(0),
                        &[0u8; 6],
                        0,
                        sn,
                        0x80,
                        TaskAttr::Simple,
                    ),
                    Kind::Nop => Pdu::nop_out(itt, RESERVED, sn, Bytes::new()),
                };
                pdu.set_immediate(*immediate);
                c.handle_pdu(pdu, 0);
                let seen = observe(drain(&mut c));
                check_stat(&seen, &what)?;
                let req = Req {
                    itt,
                    kind: *kind,
                    dropped: false,
                };
                // What runs now, each with the ExpCmdSN the target had just after taking it
                // (a NOP-In reports that one: later held requests may still follow).
                let runs: Vec<(u32, Req)> = if *immediate {
                    vec![(m.exp, req)]
                } else {
                    m.arrive(sn, req)
                        .into_iter()
                        .map(|(sn, r)| (sn.wrapping_add(1), r))
                        .collect()
                };
                let want_exec: Vec<(u32, bool)> = runs
                    .iter()
                    .filter(|(_, r)| matches!(r.kind, Kind::Scsi) && !r.dropped)
                    .map(|(_, r)| (r.itt, *immediate))
                    .collect();
                let got_exec: Vec<(u32, bool)> = seen.executed.iter().map(|e| (e.0, e.2)).collect();
                prop_assert_eq!(&got_exec, &want_exec, "{}: commands executed", what);
                let want_nops: Vec<(u32, u32, u32)> = runs
                    .iter()
                    .filter(|(_, r)| matches!(r.kind, Kind::Nop) && !r.dropped)
                    .map(|(exp, r)| (r.itt, *exp, exp.wrapping_add(depth - 1)))
                    .collect();
                prop_assert_eq!(
                    &seen.nop_ins,
                    &want_nops,
                    "{}: NOP-Ins and their window",
                    what
                );
                prop_assert!(seen.responses.is_empty(), "{}: {:?}", what, seen.responses);
                prop_assert!(
                    seen.other.is_empty(),
                    "{}: unexpected {:?}",
                    what,
                    seen.other
                );
                for (itt, sn, imm) in &seen.executed {
                    outstanding.push(*itt);
                    if !*imm {
                        prop_assert!(executed_sns.insert(*sn), "{}: CmdSN {} ran twice", what, sn);
                    }
                }
            }
            Op::AbortAhead { delta } => {
                let sn = m.exp.wrapping_add(*delta as u32);
                let itt = next_itt;
                next_itt += 1;
                let mut tmf = Pdu::tmf_request(itt, 1, Lun::from_number(0), 0x7000_0000, m.exp, sn);
                tmf.set_immediate(true);
                c.handle_pdu(tmf, 0);
                let seen = observe(drain(&mut c));
                check_stat(&seen, &what)?;
                let (code, runs) = m.abort(sn);
                prop_assert_eq!(&seen.tmf, &vec![(itt, code)], "{}: TMF response", what);
                let want_exec: Vec<u32> = runs
                    .iter()
                    .filter(|(_, r)| matches!(r.kind, Kind::Scsi) && !r.dropped)
                    .map(|(_, r)| r.itt)
                    .collect();
                let got_exec: Vec<u32> = seen.executed.iter().map(|e| e.0).collect();
                prop_assert_eq!(&got_exec, &want_exec, "{}: held commands run", what);
                let want_nops: Vec<(u32, u32, u32)> = runs
                    .iter()
                    .filter(|(_, r)| matches!(r.kind, Kind::Nop) && !r.dropped)
                    .map(|(sn, r)| {
                        let exp = sn.wrapping_add(1);
                        (r.itt, exp, exp.wrapping_add(depth - 1))
                    })
                    .collect();
                prop_assert_eq!(&seen.nop_ins, &want_nops, "{}: NOP-Ins", what);
                prop_assert!(seen.responses.is_empty(), "{}: {:?}", what, seen.responses);
                for (itt, sn, _) in &seen.executed {
                    outstanding.push(*itt);
                    prop_assert!(executed_sns.insert(*sn), "{}: CmdSN {} ran twice", what, sn);
                }
            }
            Op::Complete(i) => {
                if outstanding.is_empty() {
                    continue;
                }
                let itt = outstanding.remove(i % outstanding.len());
                c.complete_command(itt, good(), 0);
                let seen = observe(drain(&mut c));
                check_stat(&seen, &what)?;
                prop_assert_eq!(
                    &seen.responses,
                    &vec![(itt, m.exp, m.max())],
                    "{}: one response carrying the window",
                    what
                );
                prop_assert!(
                    seen.executed.is_empty() && seen.nop_ins.is_empty(),
                    "{}",
                    what
                );
            }
        }
        let s = c.session().expect("session stays in full feature phase");
        prop_assert_eq!(s.exp_cmd_sn(), m.exp, "{}: ExpCmdSN", what);
        prop_assert_eq!(s.max_cmd_sn(), m.max(), "{}: MaxCmdSN", what);
        prop_assert_eq!(s.held_count(), m.held.len(), "{}: held", what);
        prop_assert!(!c.is_closed(), "{}: connection closed", what);
    }
    // Exactly the SCSI CmdSNs the model ran were handed to the executor, each once.
    let want: BTreeSet<u32> = m
        .ran
        .iter()
        .filter(|r| matches!(r.1, Kind::Scsi))
        .map(|r| r.0)
        .collect();
    prop_assert_eq!(executed_sns, want);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    /// The CmdSN window behaves like the reference for random arrivals around ExpCmdSN,
    /// starting just below 2^32 so the window wraps.
    #[test]
    fn cmdsn_window_matches_the_model(
        depth in prop::sample::select(vec![1u32, 2, 4, 8, 16]),
        below_wrap in 0u32..48,
        ops in prop::collection::vec(any_op(), 1..80),
    ) {
        replay(depth, u32::MAX - below_wrap, &ops)?;
    }
}

#[test]
fn window_wraps_past_zero() {
    let first = u32::MAX - 1;
    let mut c = logged_in(4, first);
    for (i, sn) in [first.wrapping_add(2), first, first.wrapping_add(1)]
        .into_iter()
        .enumerate()
    {
        c.handle_pdu(
            Pdu::scsi_command(
                10 + i as u32,
                Lun::from_number(0),
                &[0u8; 6],
                0,
                sn,
                0x80,
                TaskAttr::Simple,
            ),
            0,
        );
    }
    let order: Vec<u32> = drain(&mut c)
        .into_iter()
        .filter_map(|a| match a {
            Action::Execute(cmd) => Some(cmd.cmd_sn),
            _ => None,
        })
        .collect();
    assert_eq!(order, vec![u32::MAX - 1, u32::MAX, 0]);
    let s = c.session().unwrap();
    assert_eq!(s.exp_cmd_sn(), 1);
    assert_eq!(s.max_cmd_sn(), 4);
}

/// RFC 7143 §11.5.1 (ABORT TASK): "If the Referenced Task Tag does not identify an existing task
/// but if the CmdSN indicated by the RefCmdSN field ... is within the valid CmdSN window and less
/// than the CmdSN of the Task Management Function Request itself, then targets must consider the
/// CmdSN as received and return the 'Function complete' response." The session instead waits for
/// the aborted command to arrive; if it never does (lost), the commands held behind the gap never
/// run and ExpCmdSN never moves.
#[test]
fn abort_task_of_a_lost_command_fills_the_gap() {
    let first = u32::MAX;
    let mut c = logged_in(8, first);
    // CmdSN `first` is lost; `first + 1` arrives and is held.
    let held = Pdu::scsi_command(
        2,
        Lun::from_number(0),
        &[0u8; 6],
        0,
        first.wrapping_add(1),
        0x80,
        TaskAttr::Simple,
    );
    c.handle_pdu(held, 0);
    drain(&mut c);
    assert_eq!(c.session().unwrap().held_count(), 1);
    // The initiator gives up on task 1 (CmdSN `first`): immediate ABORT TASK, CmdSN first + 2.
    let mut tmf = Pdu::tmf_request(3, 1, Lun::from_number(0), 1, first.wrapping_add(2), first);
    tmf.set_immediate(true);
    c.handle_pdu(tmf, 0);
    let acts = drain(&mut c);
    let ran: Vec<u32> = acts
        .iter()
        .filter_map(|a| match a {
            Action::Execute(cmd) => Some(cmd.itt),
            _ => None,
        })
        .collect();
    assert_eq!(
        ran,
        vec![2],
        "the held command runs once the gap is considered filled"
    );
    assert_eq!(c.session().unwrap().exp_cmd_sn(), first.wrapping_add(2));
}
