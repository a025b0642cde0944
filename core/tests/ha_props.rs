//! Property tests of the HA state machine (`duet_core::ha::Node`).
//!
//! 1. Any sequence of typed inputs (link flaps, peer messages with stale, future or absurd epochs,
//!    timers early or late, quorum results that answer nothing or lie, admin commands, fence
//!    results) at any monotonic times: the node never panics, its ALUA picture is always the ALUA
//!    table applied to what it knows, every `AluaChanged` it emits is the picture at that moment,
//!    and it never serves I/O behind a port group it reports as inactive.
//! 2. Two nodes in an honest world (a quorum area that answers truthfully but slowly or with
//!    errors, a lossy and duplicating HA link, crashes and restarts, a fencing agent that really
//!    stops the peer, clocks that are offset but do not drift, timers that fire on time): two
//!    nodes never announce the primary role for the same LUN at the same epoch, and under the
//!    automatic policy they are never primary and serving for the same LUN at the same moment.

use duet_core::alua::{self, HaMode};
use duet_core::ha::{
    AdminCmd, BackendHealth, Config, Event, Fencing, HaMsg, Input, LunStatus, Node, Output, Policy,
    QuorumOp, QuorumRecord, QuorumResult, Role, SlotLun, Time, TimerKind, PROTOCOL_VERSION,
};
use duet_core::sense::SenseCode;
use duet_core::LunNumber;
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use std::collections::{BTreeMap, VecDeque};

/// The LUNs the nodes are configured with; LUN 3 is never configured.
const LUNS: [LunNumber; 2] = [0, 7];

fn any_mode() -> impl Strategy<Value = HaMode> {
    prop_oneof![
        Just(HaMode::ActiveStandby),
        Just(HaMode::ActiveActiveShared),
        Just(HaMode::ActiveActiveForward),
    ]
}

fn any_policy() -> impl Strategy<Value = Policy> {
    prop_oneof![
        Just(Policy::Automatic),
        Just(Policy::Manual),
        Just(Policy::Naive)
    ]
}

fn any_fencing() -> impl Strategy<Value = Fencing> {
    prop_oneof![Just(Fencing::Agent), Just(Fencing::None)]
}

fn any_role() -> impl Strategy<Value = Role> {
    prop_oneof![Just(Role::Primary), Just(Role::Secondary)]
}

fn any_lun() -> impl Strategy<Value = LunNumber> {
    prop_oneof![Just(0), Just(7), Just(3), any::<LunNumber>()]
}

fn any_epoch() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => 0u64..6,
        1 => Just(u64::MAX),
        1 => any::<u64>(),
    ]
}

fn any_time_value() -> impl Strategy<Value = u64> {
    prop_oneof![0u64..20_000, any::<u64>(), Just(u64::MAX)]
}

fn any_config() -> impl Strategy<Value = Config> {
    (
        0u8..=2,
        any_mode(),
        any_policy(),
        any_fencing(),
        any_role(),
        1usize..=2,
        option::of(any_role()),
    )
        .prop_map(|(ha_id, mode, policy, fencing, role, n, override_role)| {
            let mut cfg = Config::pair(ha_id, mode, &LUNS[..n]);
            cfg.policy = policy;
            cfg.fencing = fencing;
            cfg.role = role;
            if let Some(l) = cfg.luns.last_mut() {
                l.role = override_role;
            }
            cfg
        })
}

fn any_record() -> impl Strategy<Value = QuorumRecord> {
    (
        prop_oneof![0u64..8, any::<u64>()],
        vec(
            (any_lun(), any_epoch(), any::<bool>(), any_epoch()).prop_map(
                |(lun, epoch, own, served)| SlotLun {
                    lun,
                    epoch,
                    own,
                    served,
                },
            ),
            0..3,
        ),
    )
        .prop_map(|(seq, luns)| QuorumRecord { seq, luns })
}

fn any_msg() -> impl Strategy<Value = HaMsg> {
    prop_oneof![
        (
            prop_oneof![Just(PROTOCOL_VERSION), any::<u16>()],
            0u8..4,
            any_mode()
        )
            .prop_map(|(version, ha_id, mode)| HaMsg::Hello {
                version,
                ha_id,
                mode
            }),
        any_time_value().prop_map(|at| HaMsg::Probe { at }),
        (
            option::of(any_time_value()),
            any_time_value(),
            vec(
                (any_lun(), any_epoch(), any::<bool>()).prop_map(|(lun, epoch, primary)| {
                    LunStatus {
                        lun,
                        epoch,
                        primary,
                    }
                }),
                0..3
            )
        )
            .prop_map(|(at, valid_for, luns)| HaMsg::State {
                at,
                valid_for,
                luns
            }),
        (any_lun(), any_epoch()).prop_map(|(lun, epoch)| HaMsg::Handover { lun, epoch }),
    ]
}

fn any_timer() -> impl Strategy<Value = TimerKind> {
    prop::sample::select(TimerKind::ALL.to_vec())
}

fn any_quorum_result() -> impl Strategy<Value = QuorumResult> {
    prop_oneof![
        (0u8..4, option::of(any_record()))
            .prop_map(|(slot, record)| QuorumResult::ReadOk { slot, record }),
        (0u8..4).prop_map(|slot| QuorumResult::WriteOk { slot }),
        (0u8..4).prop_map(|slot| QuorumResult::Failed {
            slot,
            reason: "I/O error".into()
        }),
    ]
}

fn any_admin() -> impl Strategy<Value = AdminCmd> {
    prop_oneof![
        option::of(any_lun()).prop_map(|lun| AdminCmd::SetPrimary { lun }),
        (option::of(any_lun()), any_role()).prop_map(|(lun, role)| AdminCmd::SetRole { lun, role }),
        any_lun().prop_map(|lun| AdminCmd::Switchover { lun }),
    ]
}

fn any_input() -> impl Strategy<Value = Input> {
    prop_oneof![
        1 => Just(Input::PeerLinkUp),
        1 => Just(Input::PeerLinkDown),
        4 => any_msg().prop_map(Input::PeerMsg),
        2 => any_timer().prop_map(Input::Timer),
        3 => any_quorum_result().prop_map(Input::Quorum),
        1 => any_admin().prop_map(Input::Admin),
        1 => prop_oneof![Just(BackendHealth::Ok), Just(BackendHealth::Failed), Just(BackendHealth::Fenced)].prop_map(Input::Backend),
        1 => any::<bool>().prop_map(|ok| Input::FenceResult { ok }),
    ]
}

/// One step for a lone node: an arbitrary input, or a plausible one (the due timers, a truthful
/// answer to its quorum operation, a well-formed hello) so that runs also reach deep states.
#[derive(Clone, Debug)]
enum LoneStep {
    Input(Input),
    DueTimers,
    AnswerQuorum { fail: bool },
    Hello,
}

fn any_lone_step() -> impl Strategy<Value = LoneStep> {
    prop_oneof![
        5 => any_input().prop_map(LoneStep::Input),
        3 => Just(LoneStep::DueTimers),
        3 => any::<bool>().prop_map(|fail| LoneStep::AnswerQuorum { fail }),
        1 => Just(LoneStep::Hello),
    ]
}

fn any_delta() -> impl Strategy<Value = u64> {
    prop_oneof![
        6 => 0u64..200,
        3 => 0u64..6_000,
        1 => 0u64..(1u64 << 40),
    ]
}

/// Drains the node's outputs and checks those that state its ALUA picture. Returns them.
fn drain_checked(node: &mut Node) -> Result<Vec<Output>, TestCaseError> {
    let mut outs = Vec::new();
    while let Some(o) = node.poll_output() {
        outs.push(o);
    }
    let luns: Vec<LunNumber> = node.luns().collect();
    for lun in &luns {
        if node.fenced_at_disk() {
            prop_assert!(
                !node.is_primary(*lun) && !node.serving(*lun) && !node.alua(*lun).local.is_active(),
                "LUN {}: a node fenced at the disk holds, serves or reports an active group: {:?}",
                lun,
                node.alua(*lun)
            );
        }
        let view = node.lun_view(*lun);
        prop_assert_eq!(
            node.alua(*lun),
            alua::group_states(view),
            "LUN {}: ALUA differs from the table for {:?}",
            lun,
            view
        );
        if node.serving(*lun) {
            prop_assert!(
                node.alua(*lun).local.is_active(),
                "LUN {} serves I/O behind an inactive port group: {:?}",
                lun,
                node.alua(*lun)
            );
        }
    }
    // The last picture announced for a LUN is the picture now.
    let mut announced = BTreeMap::new();
    for o in &outs {
        match o {
            Output::AluaChanged { lun, local, peer } => {
                prop_assert!(luns.contains(lun), "AluaChanged for unknown LUN {}", lun);
                announced.insert(*lun, (*local, *peer));
            }
            Output::RaiseUa { lun, sense } => {
                prop_assert!(luns.contains(lun), "unit attention for unknown LUN {}", lun);
                prop_assert_eq!(*sense, SenseCode::UA_ALUA_STATE_CHANGED);
            }
            Output::FenceIo { lun } | Output::ResumeIo { lun } => {
                prop_assert!(luns.contains(lun), "I/O gate for unknown LUN {}", lun);
            }
            Output::Quorum(QuorumOp::Write { slot, .. }) => {
                prop_assert_eq!(*slot, node.ha_id(), "a node writes only its own slot");
            }
            _ => {}
        }
    }
    for (lun, (local, peer)) in announced {
        let now = node.alua(lun);
        prop_assert_eq!(
            (local, peer),
            (now.local, now.peer),
            "LUN {}: announced ALUA is not the current one",
            lun
        );
    }
    Ok(outs)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn any_inputs_keep_the_alua_picture_true_and_never_panic(
        cfg in any_config(),
        start in prop_oneof![0u64..10_000, 0u64..(1u64 << 44)],
        steps in vec((any_delta(), any_lone_step()), 1..120),
    ) {
        let mut now: Time = start;
        let mut node = Node::new(cfg.clone(), now);
        let mut last_op: Option<QuorumOp> = None;
        let mut slots: [Option<QuorumRecord>; 3] = [None, None, None];
        let outs = drain_checked(&mut node)?;
        for o in outs {
            if let Output::Quorum(op) = o {
                last_op = Some(op);
            }
        }
        for (delta, step) in steps {
            now = now.saturating_add(delta);
            match step {
                LoneStep::Input(input) => node.handle(now, input),
                LoneStep::DueTimers => {
                    if let Some(t) = node.next_timeout() {
                        now = now.max(t);
                    }
                    let due: Vec<TimerKind> = node.due_timers(now).collect();
                    for kind in due {
                        node.handle(now, Input::Timer(kind));
                    }
                }
                LoneStep::AnswerQuorum { fail } => {
                    let Some(op) = last_op.take() else { continue };
                    let result = match (op, fail) {
                        (QuorumOp::Read { slot }, true) | (QuorumOp::Write { slot, .. }, true) => {
                            QuorumResult::Failed { slot, reason: "timeout".into() }
                        }
                        (QuorumOp::Read { slot }, false) => QuorumResult::ReadOk {
                            slot,
                            record: slots.get(slot as usize).cloned().flatten(),
                        },
                        (QuorumOp::Write { slot, record }, false) => {
                            if let Some(s) = slots.get_mut(slot as usize) {
                                *s = Some(record);
                            }
                            QuorumResult::WriteOk { slot }
                        }
                    };
                    node.handle(now, Input::Quorum(result));
                }
                LoneStep::Hello => {
                    let ha_id = if node.ha_id() == 1 { 2 } else { 1 };
                    node.handle(now, Input::PeerLinkUp);
                    node.handle(now, Input::PeerMsg(HaMsg::Hello {
                        version: PROTOCOL_VERSION,
                        ha_id,
                        mode: cfg.mode,
                    }));
                }
            }
            for o in drain_checked(&mut node)? {
                if let Output::Quorum(op) = o {
                    last_op = Some(op);
                }
            }
            // A stand-alone controller is primary for everything, always.
            if cfg.ha_id == 0 {
                for lun in node.luns() {
                    prop_assert!(node.is_primary(lun));
                    prop_assert_eq!(node.alua(lun).local, alua::AluaState::ActiveOptimized);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Two nodes in an honest world.

/// How an outstanding quorum operation ends.
#[derive(Clone, Copy, Debug)]
enum QuorumEnd {
    Ok,
    /// Reported failed; nothing happened.
    Fail,
    /// Reported failed, but a write reached the disk (a timeout after the fact).
    FailApplied,
}

#[derive(Clone, Debug)]
enum WorldStep {
    /// Let time pass; timers fire on time on the way.
    Advance(u64),
    /// Answer every outstanding quorum operation and deliver every queued message, until quiet.
    Settle,
    Quorum {
        node: usize,
        end: QuorumEnd,
    },
    /// Deliver message `index` (modulo the queue length) queued for `to`, keeping a copy if `dup`.
    Deliver {
        to: usize,
        index: usize,
        dup: bool,
    },
    Drop {
        to: usize,
    },
    LinkDown,
    LinkUp,
    /// A node stops; an in-flight quorum write lands or not.
    Crash {
        node: usize,
        write_lands: bool,
    },
    Restart {
        node: usize,
    },
    /// The fencing agent of `node` reports; success stops the peer first, or with `at_disk`
    /// (`scsi-pr`) leaves it running but makes the disks refuse its I/O.
    Fence {
        node: usize,
        ok: bool,
        at_disk: bool,
    },
    /// `node` issues I/O: if the disks refuse it, it hears `Backend(Fenced)`.
    DiskIo {
        node: usize,
    },
    /// The agent restores the access `node` asked for (`Output::RestoreDiskAccess`).
    Restore {
        node: usize,
    },
    Switchover {
        node: usize,
        lun_index: usize,
    },
    SetPrimary {
        node: usize,
    },
    SetRole {
        node: usize,
        role: Role,
    },
    Backend {
        node: usize,
        ok: bool,
    },
}

fn any_world_step() -> impl Strategy<Value = WorldStep> {
    let node = 0usize..2;
    prop_oneof![
        8 => prop_oneof![0u64..300, 0u64..3_000, 0u64..12_000].prop_map(WorldStep::Advance),
        8 => Just(WorldStep::Settle),
        4 => (node.clone(), prop_oneof![
                5 => Just(QuorumEnd::Ok),
                2 => Just(QuorumEnd::Fail),
                1 => Just(QuorumEnd::FailApplied),
            ]).prop_map(|(node, end)| WorldStep::Quorum { node, end }),
        4 => (node.clone(), 0usize..4, prop::bool::weighted(0.1))
            .prop_map(|(to, index, dup)| WorldStep::Deliver { to, index, dup }),
        1 => node.clone().prop_map(|to| WorldStep::Drop { to }),
        1 => Just(WorldStep::LinkDown),
        2 => Just(WorldStep::LinkUp),
        1 => (node.clone(), any::<bool>())
            .prop_map(|(node, write_lands)| WorldStep::Crash { node, write_lands }),
        1 => node.clone().prop_map(|node| WorldStep::Restart { node }),
        3 => (node.clone(), prop::bool::weighted(0.8), any::<bool>())
            .prop_map(|(node, ok, at_disk)| WorldStep::Fence { node, ok, at_disk }),
        2 => node.clone().prop_map(|node| WorldStep::DiskIo { node }),
        2 => node.clone().prop_map(|node| WorldStep::Restore { node }),
        2 => (node.clone(), 0usize..2)
            .prop_map(|(node, lun_index)| WorldStep::Switchover { node, lun_index }),
        1 => node.clone().prop_map(|node| WorldStep::SetPrimary { node }),
        1 => (node.clone(), any_role()).prop_map(|(node, role)| WorldStep::SetRole { node, role }),
        1 => (node, prop::bool::weighted(0.7)).prop_map(|(node, ok)| WorldStep::Backend { node, ok }),
    ]
}

struct World {
    cfgs: [Config; 2],
    /// Global time; node `i`'s clock reads `t + offset[i]`.
    t: Time,
    offset: [Time; 2],
    nodes: [Option<Node>; 2],
    /// Quorum slots 1 and 2 (index 0 unused).
    slots: [Option<QuorumRecord>; 3],
    /// Each node's outstanding quorum operation.
    ops: [Option<QuorumOp>; 2],
    /// A fence requested by each node and not yet answered.
    fence: [bool; 2],
    link_up: bool,
    /// Messages in flight to node `i`.
    queues: [VecDeque<HaMsg>; 2],
    /// (LUN, epoch) -> ha_id of the node that announced the primary role at that epoch.
    claims: BTreeMap<(LunNumber, u64), u8>,
    /// The disks refuse node `i`'s I/O (its peer fenced it at the disk).
    revoked: [bool; 2],
    /// Node `i` asked for its disk access back and has not got it yet.
    restore_asked: [bool; 2],
    history: Vec<String>,
}

impl World {
    fn new(mode: HaMode, policy: Policy, fencing: Fencing, offset: [Time; 2]) -> World {
        let cfgs = [1u8, 2].map(|id| {
            let mut c = Config::pair(id, mode, &LUNS);
            c.policy = policy;
            c.fencing = fencing;
            c
        });
        let mut w = World {
            nodes: [None, None],
            cfgs,
            t: 0,
            offset,
            slots: [None, None, None],
            ops: [None, None],
            fence: [false, false],
            link_up: false,
            queues: [VecDeque::new(), VecDeque::new()],
            claims: BTreeMap::new(),
            revoked: [false, false],
            restore_asked: [false, false],
            history: Vec::new(),
        };
        for i in 0..2 {
            w.nodes[i] = Some(Node::new(w.cfgs[i].clone(), w.clock(i)));
        }
        w
    }

    fn clock(&self, i: usize) -> Time {
        self.t + self.offset[i]
    }

    fn policy(&self) -> Policy {
        self.cfgs[0].policy
    }

    /// Feeds an input to node `i` (if it runs) and routes its outputs.
    fn feed(&mut self, i: usize, input: Input) -> Result<(), TestCaseError> {
        let now = self.clock(i);
        let Some(node) = self.nodes[i].as_mut() else {
            return Ok(());
        };
        node.handle(now, input);
        self.route(i)
    }

    fn route(&mut self, i: usize) -> Result<(), TestCaseError> {
        let Some(node) = self.nodes[i].as_mut() else {
            return Ok(());
        };
        let outs = drain_checked(node)?;
        let ha_id = node.ha_id();
        for o in outs {
            match o {
                Output::SendPeer(m) => {
                    if let HaMsg::State { luns, .. } = &m {
                        for s in luns.iter().filter(|s| s.primary) {
                            self.claim(ha_id, s.lun, s.epoch)?;
                        }
                    }
                    if self.link_up {
                        self.queues[1 - i].push_back(m);
                    }
                }
                Output::Quorum(op) => {
                    self.history
                        .push(format!("t={} node {} quorum {:?}", self.t, ha_id, op));
                    prop_assert!(
                        self.ops[i].is_none(),
                        "node {} issued a quorum operation while one is outstanding",
                        ha_id
                    );
                    self.ops[i] = Some(op);
                }
                Output::FencePeer => self.fence[i] = true,
                Output::RestoreDiskAccess => self.restore_asked[i] = true,
                Output::Log(Event::BecamePrimary { lun, epoch }) => {
                    self.history.push(format!(
                        "t={} node {} primary for LUN {} at epoch {}",
                        self.t, ha_id, lun, epoch
                    ));
                    self.claim(ha_id, lun, epoch)?;
                }
                Output::Log(e) => self
                    .history
                    .push(format!("t={} node {}: {}", self.t, ha_id, e)),
                _ => {}
            }
        }
        Ok(())
    }

    /// Records that `ha_id` announced the primary role for `lun` at `epoch`.
    fn claim(&mut self, ha_id: u8, lun: LunNumber, epoch: u64) -> Result<(), TestCaseError> {
        // Under the manual policy epochs are volatile (an administrator names primaries), so
        // only the automatic policy promises one primary per epoch.
        if self.policy() != Policy::Automatic {
            return Ok(());
        }
        let prev = *self.claims.entry((lun, epoch)).or_insert(ha_id);
        prop_assert_eq!(
            prev,
            ha_id,
            "LUN {} epoch {} announced by both nodes\n{}",
            lun,
            epoch,
            self.history.join("\n")
        );
        Ok(())
    }

    /// Fires the timers due by now on every running node, in deadline order.
    fn fire_due(&mut self) -> Result<(), TestCaseError> {
        for _ in 0..50 {
            let mut fired = false;
            for i in 0..2 {
                let now = self.clock(i);
                let due: Vec<TimerKind> = match &self.nodes[i] {
                    Some(n) => n.due_timers(now).collect(),
                    None => Vec::new(),
                };
                for kind in due {
                    fired = true;
                    self.feed(i, Input::Timer(kind))?;
                    self.check()?;
                }
            }
            if !fired {
                return Ok(());
            }
        }
        Ok(())
    }

    fn advance(&mut self, by: Time) -> Result<(), TestCaseError> {
        let target = self.t + by;
        loop {
            // The earliest deadline on any running node, in global time.
            let next = (0..2)
                .filter_map(|i| {
                    let n = self.nodes[i].as_ref()?;
                    let d = n.next_timeout()?;
                    Some(d.saturating_sub(self.offset[i]))
                })
                .min();
            match next {
                Some(d) if d <= target => {
                    self.t = self.t.max(d);
                    self.fire_due()?;
                }
                _ => break,
            }
        }
        self.t = target;
        self.fire_due()
    }

    /// The automatic policy's promise: never two serving primaries for one LUN.
    fn check(&self) -> Result<(), TestCaseError> {
        if self.policy() == Policy::Naive {
            return Ok(());
        }
        if let (Some(a), Some(b)) = (&self.nodes[0], &self.nodes[1]) {
            // A node the disks refuse cannot write, whatever it believes.
            let (ra, rb) = (self.revoked[0], self.revoked[1]);
            for lun in LUNS {
                let both = a.is_primary(lun)
                    && a.serving(lun)
                    && !ra
                    && b.is_primary(lun)
                    && b.serving(lun)
                    && !rb;
                prop_assert!(
                    !both,
                    "t={}: both nodes are serving primaries for LUN {} (epochs {} and {})\n{}",
                    self.t,
                    lun,
                    a.epoch(lun),
                    b.epoch(lun),
                    self.history.join("\n")
                );
            }
        }
        Ok(())
    }

    fn link_down(&mut self) -> Result<(), TestCaseError> {
        if self.link_up {
            self.link_up = false;
            self.queues = [VecDeque::new(), VecDeque::new()];
            for i in 0..2 {
                self.feed(i, Input::PeerLinkDown)?;
            }
        }
        Ok(())
    }

    fn stop(&mut self, i: usize, write_lands: bool) -> Result<(), TestCaseError> {
        if self.nodes[i].take().is_some() {
            self.history
                .push(format!("t={} node {} stops", self.t, i + 1));
            if let Some(QuorumOp::Write { slot, record }) = self.ops[i].take() {
                if write_lands {
                    self.slots[slot as usize % 3] = Some(record);
                }
            }
            self.ops[i] = None;
            self.fence[i] = false;
            self.link_down()?;
        }
        Ok(())
    }

    fn step(&mut self, step: WorldStep) -> Result<(), TestCaseError> {
        match step {
            WorldStep::Advance(by) => self.advance(by)?,
            WorldStep::Settle => {
                for _ in 0..20 {
                    let busy = (0..2).any(|i| self.ops[i].is_some() || !self.queues[i].is_empty());
                    if !busy {
                        break;
                    }
                    for i in 0..2 {
                        self.step(WorldStep::Quorum {
                            node: i,
                            end: QuorumEnd::Ok,
                        })?;
                        while !self.queues[i].is_empty() {
                            self.step(WorldStep::Deliver {
                                to: i,
                                index: 0,
                                dup: false,
                            })?;
                        }
                    }
                }
            }
            WorldStep::Quorum { node, end } => {
                if let Some(op) = self.ops[node].take() {
                    let result = match (op, end) {
                        (QuorumOp::Read { slot }, QuorumEnd::Ok) => QuorumResult::ReadOk {
                            slot,
                            record: self.slots[slot as usize % 3].clone(),
                        },
                        (QuorumOp::Write { slot, record }, QuorumEnd::Ok) => {
                            self.slots[slot as usize % 3] = Some(record);
                            QuorumResult::WriteOk { slot }
                        }
                        (QuorumOp::Write { slot, record }, QuorumEnd::FailApplied) => {
                            self.slots[slot as usize % 3] = Some(record);
                            QuorumResult::Failed {
                                slot,
                                reason: "timeout".into(),
                            }
                        }
                        (QuorumOp::Read { slot }, _) | (QuorumOp::Write { slot, .. }, _) => {
                            QuorumResult::Failed {
                                slot,
                                reason: "I/O error".into(),
                            }
                        }
                    };
                    self.feed(node, Input::Quorum(result))?;
                }
            }
            WorldStep::Deliver { to, index, dup } => {
                let q = &mut self.queues[to];
                if !q.is_empty() {
                    let k = index % q.len();
                    let msg = if dup { q.get(k).cloned() } else { q.remove(k) };
                    if let Some(msg) = msg {
                        self.feed(to, Input::PeerMsg(msg))?;
                    }
                }
            }
            WorldStep::Drop { to } => {
                self.queues[to].pop_front();
            }
            WorldStep::LinkDown => self.link_down()?,
            WorldStep::LinkUp => {
                if !self.link_up && self.nodes.iter().all(|n| n.is_some()) {
                    self.link_up = true;
                    for i in 0..2 {
                        self.feed(i, Input::PeerLinkUp)?;
                    }
                }
            }
            WorldStep::Crash { node, write_lands } => self.stop(node, write_lands)?,
            WorldStep::Restart { node } => {
                if self.nodes[node].is_none() {
                    self.history
                        .push(format!("t={} node {} starts", self.t, node + 1));
                    // A controller registers its key again at start (before it joins).
                    self.revoked[node] = false;
                    self.restore_asked[node] = false;
                    self.nodes[node] = Some(Node::new(self.cfgs[node].clone(), self.clock(node)));
                    self.route(node)?;
                }
            }
            WorldStep::Fence { node, ok, at_disk } => {
                if self.fence[node] && self.nodes[node].is_some() {
                    self.fence[node] = false;
                    if ok && at_disk {
                        // The peer runs on; the disks refuse its I/O from now on.
                        self.history.push(format!(
                            "t={} node {} fenced at the disk",
                            self.t,
                            2 - node
                        ));
                        self.revoked[1 - node] = true;
                    } else if ok {
                        // An agent that reports success has stopped the peer.
                        self.stop(1 - node, false)?;
                    }
                    self.feed(node, Input::FenceResult { ok })?;
                }
            }
            WorldStep::DiskIo { node } => {
                if self.revoked[node] {
                    self.feed(node, Input::Backend(BackendHealth::Fenced))?;
                }
            }
            WorldStep::Restore { node } => {
                if self.restore_asked[node] {
                    self.restore_asked[node] = false;
                    self.revoked[node] = false;
                    self.history
                        .push(format!("t={} node {} access restored", self.t, node + 1));
                    self.feed(node, Input::Backend(BackendHealth::Ok))?;
                }
            }
            WorldStep::Switchover { node, lun_index } => {
                self.feed(
                    node,
                    Input::Admin(AdminCmd::Switchover {
                        lun: LUNS[lun_index % 2],
                    }),
                )?;
            }
            WorldStep::SetPrimary { node } => {
                // An honest administrator names a primary by hand only when the other controller
                // is down (the manual policy's contract).
                if self.policy() == Policy::Automatic || self.nodes[1 - node].is_none() {
                    self.feed(node, Input::Admin(AdminCmd::SetPrimary { lun: None }))?;
                }
            }
            WorldStep::SetRole { node, role } => {
                // Under the manual policy both nodes preferring the primary role is a
                // misconfiguration (CTL's too); the honest administrator keeps one preferred.
                if self.policy() == Policy::Automatic {
                    self.feed(node, Input::Admin(AdminCmd::SetRole { lun: None, role }))?;
                }
            }
            WorldStep::Backend { node, ok } => {
                let h = if ok {
                    BackendHealth::Ok
                } else {
                    BackendHealth::Failed
                };
                self.feed(node, Input::Backend(h))?;
            }
        }
        self.fire_due()?;
        self.check()
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn an_honest_pair_never_has_two_primaries(
        mode in any_mode(),
        policy in prop_oneof![3 => Just(Policy::Automatic), 1 => Just(Policy::Manual)],
        fencing in prop_oneof![3 => Just(Fencing::Agent), 1 => Just(Fencing::None)],
        offset in (0u64..1_000_000, 0u64..1_000_000),
        steps in vec(any_world_step(), 1..250),
    ) {
        let mut w = World::new(mode, policy, fencing, [offset.0, offset.1]);
        for i in 0..2 {
            w.route(i)?;
        }
        for step in steps {
            w.history.push(format!("t={} {:?}", w.t, step));
            w.step(step)?;
        }
    }

    /// Without faults the pair elects exactly one primary per LUN and both controllers agree on
    /// the ALUA picture: the primary's group Active/Optimized on both.
    #[test]
    fn a_healthy_pair_elects_one_primary_and_agrees(
        mode in any_mode(),
        policy in prop_oneof![Just(Policy::Automatic), Just(Policy::Manual)],
        offset in (0u64..1_000_000, 0u64..1_000_000),
    ) {
        let mut w = World::new(mode, policy, Fencing::Agent, [offset.0, offset.1]);
        for i in 0..2 {
            w.route(i)?;
        }
        w.step(WorldStep::LinkUp)?;
        // Run the world without faults: answer every operation, deliver every message, let time
        // pass in small steps.
        for _ in 0..400 {
            for i in 0..2 {
                w.step(WorldStep::Quorum { node: i, end: QuorumEnd::Ok })?;
                while !w.queues[i].is_empty() {
                    w.step(WorldStep::Deliver { to: i, index: 0, dup: false })?;
                }
            }
            w.step(WorldStep::Advance(100))?;
        }
        let (a, b) = match (&w.nodes[0], &w.nodes[1]) {
            (Some(a), Some(b)) => (a, b),
            _ => return Err(TestCaseError::fail("a node stopped in a healthy run")),
        };
        for lun in LUNS {
            prop_assert!(a.is_primary(lun), "node 1 (preferred) is primary for LUN {}", lun);
            prop_assert!(!b.is_primary(lun));
            prop_assert_eq!(a.epoch(lun), b.epoch(lun));
            let ga = a.alua(lun);
            let gb = b.alua(lun);
            prop_assert_eq!(ga.local, alua::AluaState::ActiveOptimized);
            prop_assert_eq!(gb.peer, alua::AluaState::ActiveOptimized);
            prop_assert_eq!(ga.peer, gb.local, "both report the same state for node 2's group");
            prop_assert_eq!(gb.local, mode.secondary_state());
        }
    }
}

/// The user-visible failover: the primary controller stops, and after the claim wait the survivor
/// fences it, becomes primary at a new epoch and reports its port group Active/Optimized.
#[test]
fn the_survivor_takes_over_when_the_primary_stops() {
    for mode in [
        HaMode::ActiveStandby,
        HaMode::ActiveActiveShared,
        HaMode::ActiveActiveForward,
    ] {
        let mut w = World::new(mode, Policy::Automatic, Fencing::Agent, [0, 123_456]);
        let run = |w: &mut World, rounds: usize, fence: bool| -> Result<(), TestCaseError> {
            for _ in 0..rounds {
                w.step(WorldStep::Settle)?;
                if fence {
                    w.step(WorldStep::Fence {
                        node: 1,
                        ok: true,
                        at_disk: false,
                    })?;
                }
                w.step(WorldStep::Advance(200))?;
            }
            Ok(())
        };
        let ok = (|| -> Result<(), TestCaseError> {
            for i in 0..2 {
                w.route(i)?;
            }
            w.step(WorldStep::LinkUp)?;
            run(&mut w, 20, false)?;
            let survivor = w.nodes[1].as_ref().expect("node 2 runs");
            for lun in LUNS {
                prop_assert_eq!(survivor.alua(lun).local, mode.secondary_state());
                prop_assert_eq!(survivor.primary_of(lun), Some(1));
            }
            w.step(WorldStep::Crash {
                node: 0,
                write_lands: false,
            })?;
            // Without the link the survivor cannot vouch for anybody.
            let survivor = w.nodes[1].as_ref().expect("node 2 runs");
            prop_assert_eq!(survivor.alua(0).local, alua::AluaState::Transitioning);
            run(&mut w, 60, true)?;
            let survivor = w.nodes[1].as_ref().expect("node 2 runs");
            for lun in LUNS {
                prop_assert!(survivor.is_primary(lun) && survivor.serving(lun));
                prop_assert_eq!(survivor.epoch(lun), 2);
                prop_assert_eq!(survivor.alua(lun).local, alua::AluaState::ActiveOptimized);
                prop_assert_eq!(survivor.alua(lun).peer, alua::AluaState::Unavailable);
            }
            Ok(())
        })();
        if let Err(e) = ok {
            panic!("mode {mode:?}: {e}");
        }
    }
}

/// Every change of primary starts a larger epoch, also when a claim that stalled (its intent
/// write failed) resumes after the peer was primary and handed the LUN back.
#[test]
fn an_epoch_is_never_reused_after_a_stalled_claim() {
    use QuorumEnd::{Fail, Ok as Done};
    let steps = vec![
        WorldStep::Quorum { node: 1, end: Done },
        WorldStep::Quorum { node: 1, end: Done },
        WorldStep::Quorum { node: 0, end: Done },
        WorldStep::LinkUp,
        WorldStep::Advance(2495),
        WorldStep::Quorum { node: 0, end: Done },
        WorldStep::Advance(2505),
        // Node 2 starts its claim; node 1's intent write fails.
        WorldStep::Quorum { node: 0, end: Done },
        WorldStep::Quorum { node: 0, end: Fail },
        WorldStep::Deliver {
            to: 1,
            index: 0,
            dup: false,
        },
        // Node 2 becomes primary at epoch 1, then hands LUN 0 over.
        WorldStep::Quorum { node: 1, end: Done },
        WorldStep::Quorum { node: 1, end: Done },
        WorldStep::Quorum { node: 1, end: Done },
        WorldStep::Switchover {
            node: 1,
            lun_index: 0,
        },
        WorldStep::Advance(1000),
        // Node 1 resumes its stalled claim.
        WorldStep::Quorum { node: 0, end: Done },
        WorldStep::Quorum { node: 1, end: Done },
        WorldStep::Quorum { node: 0, end: Done },
        WorldStep::Settle,
        WorldStep::Advance(1000),
        WorldStep::Settle,
    ];
    let mut w = World::new(
        HaMode::ActiveStandby,
        Policy::Automatic,
        Fencing::Agent,
        [0, 0],
    );
    let result = (|| -> Result<(), TestCaseError> {
        for i in 0..2 {
            w.route(i)?;
        }
        for step in steps {
            w.history.push(format!("t={} {:?}", w.t, step));
            w.step(step)?;
        }
        Ok(())
    })();
    if let Err(e) = result {
        panic!("{e}");
    }
}
