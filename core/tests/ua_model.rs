//! Model-based property test of the unit attention queues (SAM-5 5.14, SPC-4 5.14): per-nexus
//! pending conditions raised by `raise_ua`, `raise_ua_all`, resets, capacity changes, ALUA
//! changes and PR OUT, and delivered by commands.
//!
//! The rules the LU implements (core/src/scsi/ua.rs, lu.rs), which the reference model restates:
//! - a nexus the LU has not seen is owed 29/00 on its first command; `nexus_lost` forgets it;
//! - conditions are delivered highest priority first (29h, 2Ah, 3Fh, the rest), equal
//!   priority in arrival order; a condition already pending is not queued again; a new 29h
//!   condition replaces a pending one;
//! - `raise_ua_all` and resets reach only nexuses the LU knows; `raise_ua` makes it known;
//! - every command but INQUIRY, REPORT LUNS and REQUEST SENSE returns the first pending
//!   condition as CHECK CONDITION and does nothing else; INQUIRY and REPORT LUNS run and leave
//!   the queue alone; REQUEST SENSE returns the condition as sense data (NO SENSE when none);
//! - a change of the ALUA picture queues 2A/06 for every known nexus at the next command.

mod model_common;

use duet_core::alua::AluaState;
use duet_core::scsi::{Nexus, ResetKind};
use duet_core::sense::{status, SenseCode};
use model_common::*;
use proptest::prelude::*;

/// The most conditions the LU keeps per nexus (ua.rs `MAX_PENDING`).
const MAX_PENDING: usize = 16;

fn pool() -> Vec<SenseCode> {
    let mut v = vec![
        SenseCode::UA_POWER_ON_RESET,
        SenseCode::UA_NEXUS_LOSS,
        SenseCode::UA_MODE_PARAMETERS_CHANGED,
        SenseCode::UA_RESERVATIONS_PREEMPTED,
        SenseCode::UA_RESERVATIONS_RELEASED,
        SenseCode::UA_REGISTRATIONS_PREEMPTED,
        SenseCode::UA_ALUA_STATE_CHANGED,
        SenseCode::UA_CAPACITY_CHANGED,
        SenseCode::UA_INQUIRY_DATA_CHANGED,
        SenseCode::UA_REPORTED_LUNS_CHANGED,
    ];
    // Vendor-specific conditions (ASC 80h and up), lowest priority: enough of them to overflow
    // a queue.
    for i in 0..16 {
        v.push(SenseCode::new(0x06, 0x80 + i, 0x00));
    }
    v
}

fn priority(c: &SenseCode) -> u8 {
    match c.asc {
        0x29 => 0,
        0x2A => 1,
        0x3F => 2,
        _ => 3,
    }
}

#[derive(Clone, Copy, Debug)]
enum Cmd {
    Tur,
    Inquiry,
    ReportLuns,
    RequestSense,
    ReadCapacity,
    /// PERSISTENT RESERVE OUT, REGISTER AND IGNORE EXISTING KEY (key = nexus + 1).
    PrRegister,
    /// PERSISTENT RESERVE OUT, CLEAR with the nexus' own key (2A/03 to the other registrants).
    PrClear,
}

#[derive(Clone, Debug)]
enum Op {
    Command(usize, Cmd),
    Raise(usize, SenseCode),
    /// Several `raise_ua` in a row for one nexus (reaches the queue limit).
    Burst(usize, Vec<SenseCode>),
    RaiseAll(SenseCode, Option<usize>),
    Reset(ResetKind),
    NexusLost(usize),
    /// Toggle capacity between 64 and 65 blocks.
    Resize,
    /// Toggle port group 2 between Active/Optimized and Active/Non-optimized.
    AluaFlip,
}

fn code() -> impl Strategy<Value = SenseCode> {
    prop::sample::select(pool())
}

fn cmd() -> impl Strategy<Value = Cmd> {
    prop_oneof![
        4 => Just(Cmd::Tur),
        2 => Just(Cmd::Inquiry),
        2 => Just(Cmd::ReportLuns),
        3 => Just(Cmd::RequestSense),
        1 => Just(Cmd::ReadCapacity),
        1 => Just(Cmd::PrRegister),
        1 => Just(Cmd::PrClear),
    ]
}

fn any_op() -> impl Strategy<Value = Op> {
    let n = 0..4usize;
    prop_oneof![
        8 => (n.clone(), cmd()).prop_map(|(n, c)| Op::Command(n, c)),
        5 => (n.clone(), code()).prop_map(|(n, c)| Op::Raise(n, c)),
        1 => (n.clone(), prop::collection::vec(code(), 1..16)).prop_map(|(n, v)| Op::Burst(n, v)),
        3 => (code(), prop::option::of(n.clone())).prop_map(|(c, e)| Op::RaiseAll(c, e)),
        1 => prop::sample::select(vec![
            ResetKind::LunReset,
            ResetKind::TargetWarm,
            ResetKind::TargetCold,
            ResetKind::PowerOn,
        ])
        .prop_map(Op::Reset),
        1 => n.prop_map(Op::NexusLost),
        1 => Just(Op::Resize),
        1 => Just(Op::AluaFlip),
    ]
}

/// The reference: per nexus, `None` when the LU does not know it, else its pending conditions
/// in arrival order; delivery picks the highest priority, then the oldest.
#[derive(Clone, Debug, Default)]
struct Model {
    queues: [Option<Vec<SenseCode>>; 4],
    registered: [bool; 4],
    /// The ALUA picture the LU last saw (group 2 non-optimized?), `None` before any command.
    seen_alua: Option<bool>,
    alua_ano: bool,
    blocks: u64,
}

impl Model {
    fn touch(&mut self, n: usize) {
        if self.queues[n].is_none() {
            self.queues[n] = Some(vec![SenseCode::UA_POWER_ON_RESET]);
        }
    }

    /// Index of the condition delivered next.
    fn next_index(q: &[SenseCode]) -> Option<usize> {
        (0..q.len()).min_by_key(|i| (priority(&q[*i]), *i))
    }

    fn push(&mut self, n: usize, ua: SenseCode) {
        let Some(q) = self.queues[n].as_mut() else {
            return;
        };
        if q.contains(&ua) {
            return;
        }
        if ua.asc == 0x29 {
            q.retain(|c| c.asc != 0x29);
        }
        q.push(ua);
        if q.len() > MAX_PENDING {
            // The oldest condition of the lowest priority present is dropped.
            let low = q.iter().map(priority).max().expect("non-empty");
            let oldest = q.iter().position(|c| priority(c) == low).expect("present");
            q.remove(oldest);
        }
    }

    fn raise(&mut self, n: usize, ua: SenseCode) {
        self.touch(n);
        self.push(n, ua);
    }

    fn raise_all(&mut self, ua: SenseCode, except: Option<usize>) {
        for n in 0..4 {
            if Some(n) != except {
                self.push(n, ua);
            }
        }
    }

    fn take(&mut self, n: usize) -> Option<SenseCode> {
        let q = self.queues[n].as_mut()?;
        let i = Self::next_index(q)?;
        Some(q.remove(i))
    }

    /// What the LU does at the start of every command from `n`.
    fn command_start(&mut self, n: usize) {
        match self.seen_alua {
            None => self.seen_alua = Some(self.alua_ano),
            Some(prev) if prev != self.alua_ano => {
                self.raise_all(SenseCode::UA_ALUA_STATE_CHANGED, None);
                self.seen_alua = Some(self.alua_ano);
            }
            Some(_) => {}
        }
        self.touch(n);
    }
}

fn replay(ops: &[Op]) -> Result<(), TestCaseError> {
    let nx: Vec<Nexus> = nexuses();
    let mut r = Rig::small();
    let mut m = Model {
        blocks: BLOCKS,
        ..Model::default()
    };
    for (step, op) in ops.iter().enumerate() {
        let what = format!("step {step}: {op:?}");
        match op {
            Op::Command(n, c) => {
                let n = *n;
                m.command_start(n);
                let delivers = !matches!(c, Cmd::Inquiry | Cmd::ReportLuns | Cmd::RequestSense);
                let owed = if delivers { m.take(n) } else { None };
                let key = n as u64 + 1;
                let (cdb, data) = match c {
                    Cmd::Tur => (tur(), vec![]),
                    Cmd::Inquiry => (inquiry(), vec![]),
                    Cmd::ReportLuns => (report_luns(), vec![]),
                    Cmd::RequestSense => (request_sense(), vec![]),
                    Cmd::ReadCapacity => (read_capacity10(), vec![]),
                    Cmd::PrRegister => (prout(6, 0), prout_params(0, key)),
                    Cmd::PrClear => (
                        prout(3, 0),
                        prout_params(if m.registered[n] { key } else { 0 }, 0),
                    ),
                };
                let o = r.run(&nx[n], &cdb, &data);
                if matches!(c, Cmd::ReportLuns) {
                    // SPC-4: REPORT LUNS clears the nexus' REPORTED LUNS DATA HAS CHANGED.
                    if let Some(q) = m.queues[n].as_mut() {
                        q.retain(|x| *x != SenseCode::UA_REPORTED_LUNS_CHANGED);
                    }
                }
                if let Some(ua) = owed {
                    prop_assert_eq!(o.status, status::CHECK_CONDITION, "{}", what);
                    prop_assert_eq!(o.sense_code(), Some(ua), "{}: delivered condition", what);
                    prop_assert!(o.data_in.is_empty(), "{}", what);
                } else {
                    match c {
                        Cmd::RequestSense => {
                            prop_assert_eq!(o.status, status::GOOD, "{}", what);
                            let got = fixed_sense_code(&o.data_in);
                            let want = m.take(n).unwrap_or(NO_SENSE);
                            prop_assert_eq!(got, Some(want), "{}: REQUEST SENSE", what);
                        }
                        Cmd::PrClear if !m.registered[n] => {
                            prop_assert_eq!(o.status, status::RESERVATION_CONFLICT, "{}", what);
                        }
                        Cmd::PrClear => {
                            prop_assert_eq!(o.status, status::GOOD, "{}", what);
                            // 2A/03 for every other registrant; a registrant whose nexus
                            // was lost becomes known again (29/00 first).
                            for i in 0..4 {
                                if m.registered[i] && i != n {
                                    m.raise(i, SenseCode::UA_RESERVATIONS_PREEMPTED);
                                }
                            }
                            m.registered = [false; 4];
                        }
                        Cmd::PrRegister => {
                            prop_assert_eq!(o.status, status::GOOD, "{}", what);
                            m.registered[n] = true;
                        }
                        Cmd::ReadCapacity => {
                            prop_assert_eq!(o.status, status::GOOD, "{}", what);
                            let last = u32::from_be_bytes([
                                o.data_in[0],
                                o.data_in[1],
                                o.data_in[2],
                                o.data_in[3],
                            ]);
                            prop_assert_eq!(last as u64, m.blocks - 1, "{}: capacity", what);
                        }
                        _ => prop_assert_eq!(
                            o.status,
                            status::GOOD,
                            "{}: {:?}",
                            what,
                            o.sense_code()
                        ),
                    }
                }
            }
            Op::Raise(n, c) => {
                r.lu.raise_ua(&nx[*n], *c);
                m.raise(*n, *c);
            }
            Op::Burst(n, codes) => {
                for c in codes {
                    r.lu.raise_ua(&nx[*n], *c);
                    m.raise(*n, *c);
                }
            }
            Op::RaiseAll(c, except) => {
                r.lu.raise_ua_all(*c, except.map(|e| &nx[e]));
                m.raise_all(*c, *except);
            }
            Op::Reset(kind) => {
                r.lu.reset(*kind);
                m.raise_all(SenseCode::UA_POWER_ON_RESET, None);
            }
            Op::NexusLost(n) => {
                r.lu.nexus_lost(&nx[*n]);
                m.queues[*n] = None;
            }
            Op::Resize => {
                m.blocks = if m.blocks == BLOCKS {
                    BLOCKS + 1
                } else {
                    BLOCKS
                };
                r.lu.set_num_blocks(m.blocks);
                m.raise_all(SenseCode::UA_CAPACITY_CHANGED, None);
            }
            Op::AluaFlip => {
                m.alua_ano = !m.alua_ano;
                let b = if m.alua_ano {
                    AluaState::ActiveNonOptimized
                } else {
                    AluaState::ActiveOptimized
                };
                r.set_groups(AluaState::ActiveOptimized, b);
            }
        }
        // The whole pending picture, after every step.
        for (i, n) in nx.iter().enumerate() {
            let mut want: Vec<SenseCode> = m.queues[i].clone().unwrap_or_default();
            let mut ordered = Vec::new();
            while let Some(j) = Model::next_index(&want) {
                ordered.push(want.remove(j));
            }
            prop_assert_eq!(
                r.lu.pending_unit_attentions(n),
                ordered,
                "{}: pending of nexus {}",
                what,
                i
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    /// The LU's unit attention queues behave like the reference per-nexus queues.
    #[test]
    fn unit_attentions_match_the_model(ops in prop::collection::vec(any_op(), 1..80)) {
        replay(&ops)?;
    }
}

// ----- deterministic checks -----

#[test]
fn conditions_come_out_by_priority_then_arrival_each_once() {
    let nx = nexuses();
    let mut r = Rig::small();
    let n = &nx[0];
    r.drain_uas(n);
    let vendor = SenseCode::new(0x06, 0x80, 0x00);
    r.lu.raise_ua(n, vendor);
    r.lu.raise_ua(n, SenseCode::UA_INQUIRY_DATA_CHANGED);
    r.lu.raise_ua(n, SenseCode::UA_CAPACITY_CHANGED);
    r.lu.raise_ua(n, SenseCode::UA_MODE_PARAMETERS_CHANGED);
    r.lu.raise_ua(n, SenseCode::UA_CAPACITY_CHANGED);
    r.lu.raise_ua_all(SenseCode::UA_NEXUS_LOSS, None);
    r.lu.reset(ResetKind::LunReset);
    // INQUIRY and REPORT LUNS leave the queue alone.
    assert_eq!(r.run(n, &inquiry(), &[]).status, status::GOOD);
    assert_eq!(r.run(n, &report_luns(), &[]).status, status::GOOD);
    let mut got = Vec::new();
    for _ in 0..6 {
        got.push(r.run(n, &tur(), &[]).sense_code());
    }
    assert_eq!(
        got,
        vec![
            Some(SenseCode::UA_POWER_ON_RESET),
            Some(SenseCode::UA_CAPACITY_CHANGED),
            Some(SenseCode::UA_MODE_PARAMETERS_CHANGED),
            Some(SenseCode::UA_INQUIRY_DATA_CHANGED),
            Some(vendor),
            None,
        ]
    );
}

#[test]
fn a_lost_nexus_comes_back_with_power_on_only() {
    let nx = nexuses();
    let mut r = Rig::small();
    r.lu.raise_ua(&nx[1], SenseCode::UA_CAPACITY_CHANGED);
    r.lu.nexus_lost(&nx[1]);
    assert_eq!(r.drain_uas(&nx[1]), vec![SenseCode::UA_POWER_ON_RESET]);
}

/// ua.rs documents `MAX_PENDING` as "beyond that the oldest lowest-priority one is dropped";
/// the code (`q.pop()` after inserting in priority order) drops the newest lowest-priority one,
/// which is often the condition just raised.
#[test]
fn overflow_drops_the_oldest_lowest_priority_condition() {
    let nx = nexuses();
    let mut r = Rig::small();
    let n = &nx[0];
    r.drain_uas(n);
    let vendor: Vec<SenseCode> = (0..(MAX_PENDING as u8 + 1))
        .map(|i| SenseCode::new(0x06, 0x80 + i, 0x00))
        .collect();
    for c in &vendor {
        r.lu.raise_ua(n, *c);
    }
    let pending = r.lu.pending_unit_attentions(n);
    assert_eq!(pending.len(), MAX_PENDING);
    assert!(
        !pending.contains(&vendor[0]),
        "the oldest should have been dropped"
    );
    assert!(
        pending.contains(&vendor[MAX_PENDING]),
        "the newest should have been kept"
    );
}

/// After a REPORTED LUNS DATA HAS CHANGED condition, the initiator's answer is REPORT LUNS.
/// FreeBSD CTL (`ctl_report_luns`) clears a pending 3F/0E for the nexus when it runs REPORT
/// LUNS, following SPC-4's REPORT LUNS description; the LU keeps it, so the next command reports
/// it again and the initiator rescans twice.
#[test]
fn report_luns_clears_reported_luns_data_has_changed() {
    let nx = nexuses();
    let mut r = Rig::small();
    let n = &nx[0];
    r.drain_uas(n);
    r.lu.raise_ua(n, SenseCode::UA_REPORTED_LUNS_CHANGED);
    assert_eq!(r.run(n, &report_luns(), &[]).status, status::GOOD);
    assert_eq!(r.run(n, &tur(), &[]).status, status::GOOD);
}
