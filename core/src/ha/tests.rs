//! Basic flows of the HA state machine, driven by a small deterministic harness: two nodes, a
//! quorum area that answers at once (or fails), an in-order link, and a fencing agent that kills.

use super::*;
use crate::alua::{AluaState, HaMode};
use std::collections::VecDeque;

const LUN: LunNumber = 7;

fn timing() -> Timing {
    Timing {
        lease_ms: 400,
        renew_ms: 100,
        drift_ms: 50,
        margin_ms: 100,
    }
}

struct Pair {
    cfg: [Config; 2],
    nodes: [Option<Node>; 2],
    now: Time,
    slots: [Option<QuorumRecord>; 2],
    quorum: [Option<QuorumOp>; 2],
    quorum_ok: [bool; 2],
    link: bool,
    net: VecDeque<(usize, HaMsg)>,
    fence: [bool; 2],
    /// The fencing agent preempts the peer at the disk (`scsi-pr`: the peer lives on and gets
    /// `Backend(Fenced)`) instead of killing it.
    fence_at_disk: bool,
    /// A node asked for its disk access back.
    restore_asked: [bool; 2],
    /// Answer [`Output::RestoreDiskAccess`] with `Backend(Ok)` at once.
    auto_restore: bool,
    /// Everything each node emitted, with the time.
    out: Vec<(usize, Time, Output)>,
}

impl Pair {
    fn new(mode: HaMode, policy: Policy, fencing: Fencing) -> Pair {
        Pair::new_with(mode, policy, fencing, |_| {})
    }

    fn new_with(
        mode: HaMode,
        policy: Policy,
        fencing: Fencing,
        adjust: impl Fn(&mut Config),
    ) -> Pair {
        let cfg = |id| {
            let mut c = Config::pair(id, mode, &[LUN]);
            c.policy = policy;
            c.fencing = fencing;
            c.timing = timing();
            adjust(&mut c);
            c
        };
        let cfg = [cfg(1), cfg(2)];
        let mut p = Pair {
            nodes: [
                Some(Node::new(cfg[0].clone(), 0)),
                Some(Node::new(cfg[1].clone(), 0)),
            ],
            cfg,
            now: 0,
            slots: [None, None],
            quorum: [None, None],
            quorum_ok: [true, true],
            link: true,
            net: VecDeque::new(),
            fence: [false, false],
            fence_at_disk: false,
            restore_asked: [false, false],
            auto_restore: true,
            out: Vec::new(),
        };
        p.link_up();
        p.pump();
        p
    }

    fn node(&self, i: usize) -> &Node {
        self.nodes[i].as_ref().expect("node is up")
    }

    fn feed(&mut self, i: usize, input: Input) {
        if let Some(n) = self.nodes[i].as_mut() {
            n.handle(self.now, input);
        }
    }

    fn connected(&self) -> bool {
        self.link && self.nodes.iter().all(|n| n.is_some())
    }

    fn link_up(&mut self) {
        if self.connected() {
            self.feed(0, Input::PeerLinkUp);
            self.feed(1, Input::PeerLinkUp);
        }
    }

    /// Node `i` dies; its end of the link closes, so the peer sees the connection end.
    fn kill(&mut self, i: usize) {
        self.die(i, Input::PeerLinkClosed);
    }

    /// Node `i` dies without closing the link (power loss behind a switch): the peer learns it
    /// only from the link's silence.
    fn kill_silently(&mut self, i: usize) {
        self.die(i, Input::PeerLinkDown);
    }

    fn die(&mut self, i: usize, seen: Input) {
        let was = self.connected();
        self.nodes[i] = None;
        self.quorum[i] = None;
        self.fence[i] = false;
        if was {
            self.net.clear();
            self.feed(1 - i, seen);
        }
    }

    fn restart(&mut self, i: usize) {
        self.nodes[i] = Some(Node::new(self.cfg[i].clone(), self.now));
        self.link_up();
        self.pump();
    }

    fn cut(&mut self) {
        let was = self.connected();
        self.link = false;
        self.net.clear();
        if was {
            self.feed(0, Input::PeerLinkDown);
            self.feed(1, Input::PeerLinkDown);
        }
        self.pump();
    }

    /// Runs until nothing more happens at the current time.
    fn pump(&mut self) {
        for _ in 0..10_000 {
            let mut busy = false;
            for i in 0..2 {
                while let Some(o) = self.nodes[i].as_mut().and_then(|n| n.poll_output()) {
                    busy = true;
                    match &o {
                        Output::SendPeer(m) if self.connected() => {
                            self.net.push_back((1 - i, m.clone()))
                        }
                        Output::Quorum(op) => self.quorum[i] = Some(op.clone()),
                        Output::FencePeer => self.fence[i] = true,
                        Output::RestoreDiskAccess => self.restore_asked[i] = true,
                        _ => {}
                    }
                    self.out.push((i, self.now, o));
                }
            }
            for i in 0..2 {
                if let Some(op) = self.quorum[i].take() {
                    busy = true;
                    let r = if !self.quorum_ok[i] {
                        QuorumResult::Failed {
                            slot: i as u8 + 1,
                            reason: "I/O error".into(),
                        }
                    } else {
                        match op {
                            QuorumOp::Read { slot } => QuorumResult::ReadOk {
                                slot,
                                record: self.slots[slot as usize - 1].clone(),
                            },
                            QuorumOp::Write { slot, record } => {
                                self.slots[slot as usize - 1] = Some(record);
                                QuorumResult::WriteOk { slot }
                            }
                        }
                    };
                    self.feed(i, Input::Quorum(r));
                }
                if self.fence[i] {
                    busy = true;
                    self.fence[i] = false;
                    if self.fence_at_disk {
                        self.feed(1 - i, Input::Backend(BackendHealth::Fenced));
                    } else if self.nodes[1 - i].is_some() {
                        self.kill(1 - i);
                    }
                    self.feed(i, Input::FenceResult { ok: true });
                }
                if self.restore_asked[i] && self.auto_restore {
                    busy = true;
                    self.restore_asked[i] = false;
                    self.feed(i, Input::Backend(BackendHealth::Ok));
                }
            }
            if let Some((to, m)) = self.net.pop_front() {
                busy = true;
                self.feed(to, Input::PeerMsg(m));
            }
            if !busy {
                return;
            }
        }
        panic!("the pair does not settle");
    }

    /// Advances time by `ms`, firing timers when due.
    fn advance(&mut self, ms: u64) {
        let end = self.now + ms;
        while self.now < end {
            self.now += 10;
            for i in 0..2 {
                let due: Vec<TimerKind> = match &self.nodes[i] {
                    Some(n) => n.due_timers(self.now).collect(),
                    None => continue,
                };
                for k in due {
                    self.feed(i, Input::Timer(k));
                }
            }
            self.pump();
        }
    }

    /// The first time node `i` emitted an output matching `f`, at or after `since`.
    fn first(&self, i: usize, since: Time, f: impl Fn(&Output) -> bool) -> Option<Time> {
        self.out
            .iter()
            .find(|(n, t, o)| *n == i && *t >= since && f(o))
            .map(|(_, t, _)| *t)
    }
}

#[test]
fn a_standalone_controller_is_primary_and_active_optimized() {
    let mut n = Node::new(Config::standalone(&[0, 1]), 0);
    for lun in [0, 1] {
        assert!(n.is_primary(lun));
        assert!(n.serving(lun));
        assert_eq!(n.alua(lun).local, AluaState::ActiveOptimized);
    }
    assert_eq!(n.link_state(), 0);
    n.handle(5, Input::PeerLinkDown);
    assert!(n.serving(0));
    assert_eq!(n.next_timeout(), None);
}

#[test]
fn the_preferred_node_becomes_primary_and_the_secondary_is_non_optimized() {
    let mut p = Pair::new(
        HaMode::ActiveActiveShared,
        Policy::Automatic,
        Fencing::Agent,
    );
    p.advance(300);
    assert_eq!(p.node(0).link_state(), 2);
    assert!(p.node(0).is_primary(LUN) && p.node(0).serving(LUN));
    assert!(!p.node(1).is_primary(LUN));
    assert_eq!(p.node(0).alua(LUN).local, AluaState::ActiveOptimized);
    assert_eq!(p.node(0).alua(LUN).peer, AluaState::ActiveNonOptimized);
    assert_eq!(p.node(1).alua(LUN).local, AluaState::ActiveNonOptimized);
    assert_eq!(p.node(1).alua(LUN).peer, AluaState::ActiveOptimized);
    // Mode 1: the secondary executes I/O itself, cleared by the primary.
    assert!(p.node(1).serving(LUN));
    assert_eq!(p.node(0).epoch(LUN), 1);
    // No fencing on a fresh pair.
    assert!(p.first(0, 0, |o| *o == Output::FencePeer).is_none());
    // The ALUA change was announced with a unit attention.
    assert!(p
        .first(0, 0, |o| matches!(o, Output::RaiseUa { lun, sense }
            if *lun == LUN && *sense == crate::sense::SenseCode::UA_ALUA_STATE_CHANGED))
        .is_some());
    assert!(p
        .first(0, 0, |o| matches!(
            o,
            Output::Log(Event::LinkChanged { from: 1, to: 2 })
        ))
        .is_some());
}

#[test]
fn mode_0_secondary_is_standby() {
    let mut p = Pair::new(HaMode::ActiveStandby, Policy::Automatic, Fencing::Agent);
    p.advance(300);
    assert_eq!(p.node(1).alua(LUN).local, AluaState::Standby);
    assert!(!p.node(1).serving(LUN));
}

/// When `node` first logged that it became primary, at or after `since`.
fn became_primary(p: &Pair, node: usize, since: Time) -> Option<Time> {
    p.first(node, since, |o| {
        matches!(o, Output::Log(Event::BecamePrimary { .. }))
    })
}

#[test]
fn a_crashed_primary_is_fenced_at_once_and_the_survivor_serves_without_a_lease_wait() {
    let mut p = Pair::new(
        HaMode::ActiveActiveForward,
        Policy::Automatic,
        Fencing::Agent,
    );
    p.advance(300);
    let crash = p.now;
    p.kill(0);
    p.pump();
    // The connection closed: the survivor fences and claims without waiting for the lease.
    let fenced = p
        .first(1, crash, |o| *o == Output::FencePeer)
        .expect("fenced");
    let primary = became_primary(&p, 1, crash).expect("became primary");
    assert_eq!(
        fenced, crash,
        "the fence starts as soon as the claim is recorded"
    );
    assert!(primary >= fenced);
    let n2 = p.node(1);
    assert!(n2.is_primary(LUN) && n2.serving(LUN));
    assert_eq!(n2.alua(LUN).local, AluaState::ActiveOptimized);
    assert!(n2.epoch(LUN) >= 2);
}

#[test]
fn a_silent_dead_primary_is_fenced_after_the_fence_delay_not_the_lease() {
    let mut p = Pair::new(
        HaMode::ActiveActiveForward,
        Policy::Automatic,
        Fencing::Agent,
    );
    p.advance(300);
    let crash = p.now;
    p.kill_silently(0);
    p.pump();
    assert_eq!(p.node(1).alua(LUN).local, AluaState::Transitioning);
    p.advance(2000);
    let t = timing();
    let fenced = p
        .first(1, crash, |o| *o == Output::FencePeer)
        .expect("fenced");
    // Node 2 does not prefer the primary role: it watches the peer's heartbeat for two renew
    // intervals and the margin before it fences, and far less than the lease.
    assert!(fenced >= crash + 2 * t.renew_ms + t.margin_ms);
    assert!(fenced < crash + t.lease_ms + t.margin_ms);
    let primary = became_primary(&p, 1, crash).expect("became primary");
    assert!(primary >= fenced);
    assert!(p.node(1).serving(LUN));
}

#[test]
fn without_a_fencing_agent_the_survivor_waits_out_the_lease() {
    let mut p = Pair::new(
        HaMode::ActiveActiveForward,
        Policy::Automatic,
        Fencing::None,
    );
    p.advance(300);
    let crash = p.now;
    p.kill(0);
    p.pump();
    p.advance(2000);
    let t = timing();
    let primary = became_primary(&p, 1, crash).expect("became primary");
    assert!(primary >= crash + t.lease_ms + t.margin_ms - t.renew_ms);
    assert!(p.first(1, crash, |o| *o == Output::FencePeer).is_none());
}

#[test]
fn a_failed_fence_never_serves_and_the_claim_is_tried_again() {
    let mut p = Pair::new(
        HaMode::ActiveActiveForward,
        Policy::Automatic,
        Fencing::Agent,
    );
    p.advance(300);
    let crash = p.now;
    // The agent fails: answer the fence with ok=false by hand.
    p.nodes[0] = None;
    p.quorum[0] = None;
    p.net.clear();
    p.feed(1, Input::PeerLinkClosed);
    for _ in 0..20 {
        // Pump by hand, intercepting the fence.
        while let Some(o) = p.nodes[1].as_mut().and_then(|n| n.poll_output()) {
            if let Output::Quorum(op) = &o {
                p.quorum[1] = Some(op.clone());
            }
            if o == Output::FencePeer {
                p.feed(1, Input::FenceResult { ok: false });
            }
            p.out.push((1, p.now, o));
        }
        if let Some(op) = p.quorum[1].take() {
            let r = match op {
                QuorumOp::Read { slot } => QuorumResult::ReadOk {
                    slot,
                    record: p.slots[slot as usize - 1].clone(),
                },
                QuorumOp::Write { slot, record } => {
                    p.slots[slot as usize - 1] = Some(record);
                    QuorumResult::WriteOk { slot }
                }
            };
            p.feed(1, Input::Quorum(r));
        }
        p.now += 50;
        let due: Vec<TimerKind> = p.node(1).due_timers(p.now).collect();
        for k in due {
            p.feed(1, Input::Timer(k));
        }
    }
    assert!(p.first(1, crash, |o| *o == Output::FencePeer).is_some());
    assert!(became_primary(&p, 1, crash).is_none());
    assert!(!p.node(1).is_primary(LUN));
    assert_ne!(p.node(1).alua(LUN).local, AluaState::ActiveOptimized);
    let fences = p
        .out
        .iter()
        .filter(|(n, t, o)| *n == 1 && *t >= crash && *o == Output::FencePeer)
        .count();
    assert!(fences >= 2, "the claim is tried again after a failed fence");
}

#[test]
fn a_cut_link_with_a_live_primary_fences_nobody_in_mode_2() {
    let mut p = Pair::new(
        HaMode::ActiveActiveForward,
        Policy::Automatic,
        Fencing::Agent,
    );
    p.advance(300);
    let cut = p.now;
    p.cut();
    p.advance(3000);
    // The primary's heartbeat keeps moving: the secondary never fences it.
    assert!(p.first(1, cut, |o| *o == Output::FencePeer).is_none());
    assert!(p.first(0, cut, |o| *o == Output::FencePeer).is_none());
    assert!(p.node(0).is_primary(LUN) && p.node(0).serving(LUN));
}

#[test]
fn a_fence_whose_result_is_not_awaited_is_refused_as_configuration() {
    let mut c = Config::pair(1, HaMode::ActiveStandby, &[LUN]);
    c.fencing = Fencing::Unawaited;
    assert_eq!(c.validate(), Err(ConfigError::UnawaitedFence));
}

#[test]
fn a_cut_link_with_a_live_primary_changes_no_roles() {
    let mut p = Pair::new(
        HaMode::ActiveActiveForward,
        Policy::Automatic,
        Fencing::Agent,
    );
    p.advance(300);
    p.cut();
    p.advance(3000);
    assert!(p.node(0).is_primary(LUN) && p.node(0).serving(LUN));
    assert!(!p.node(1).is_primary(LUN));
    assert_eq!(p.node(1).alua(LUN).local, AluaState::Transitioning);
    assert_eq!(p.node(0).alua(LUN).peer, AluaState::Transitioning);
    // Mode 1: the primary fences the secondary, which may hold grants, before serving on.
    let mut p = Pair::new(
        HaMode::ActiveActiveShared,
        Policy::Automatic,
        Fencing::Agent,
    );
    p.advance(300);
    p.cut();
    p.advance(3000);
    assert!(p.nodes[1].is_none());
    assert!(p.node(0).serving(LUN));
    assert_eq!(p.node(0).alua(LUN).peer, AluaState::Unavailable);
}

#[test]
fn a_primary_that_cannot_renew_stops_serving_before_its_lease_ends() {
    let mut p = Pair::new(HaMode::ActiveStandby, Policy::Automatic, Fencing::Agent);
    p.advance(300);
    // The last successful write was issued no later than now.
    let last = p.now;
    p.quorum_ok[0] = false;
    p.advance(1000);
    assert!(p.node(1).is_primary(LUN));
    let stopped = p
        .first(0, last, |o| matches!(o, Output::FenceIo { .. }))
        .expect("stopped serving");
    assert!(stopped <= last + timing().lease_ms);
    // Node 2 took over and fenced node 1; either way node 1 serves no more.
    assert!(p.nodes[0].as_ref().is_none_or(|n| !n.serving(LUN)));
    assert!(p
        .first(0, last, |o| matches!(o, Output::Log(Event::LeaseExpired)))
        .is_some());
}

#[test]
fn manual_policy_leaves_the_survivor_transitioning_until_the_admin_acts() {
    let mut p = Pair::new(HaMode::ActiveActiveShared, Policy::Manual, Fencing::Agent);
    p.advance(100);
    assert!(p.node(0).is_primary(LUN));
    p.kill(0);
    p.advance(10_000);
    assert!(!p.node(1).is_primary(LUN));
    assert_eq!(p.node(1).alua(LUN).local, AluaState::Transitioning);
    p.feed(1, Input::Admin(AdminCmd::SetPrimary { lun: None }));
    assert!(p.node(1).is_primary(LUN));
    assert_eq!(p.node(1).alua(LUN).local, AluaState::ActiveOptimized);
}

#[test]
fn naive_policy_splits_the_brain_on_a_link_cut() {
    let mut p = Pair::new(HaMode::ActiveActiveShared, Policy::Naive, Fencing::None);
    p.advance(100);
    p.cut();
    assert!(p.node(0).serving(LUN) && p.node(0).is_primary(LUN));
    assert!(p.node(1).serving(LUN) && p.node(1).is_primary(LUN));
}

#[test]
fn link_login_refuses_equal_ids_and_other_modes() {
    for (id, mode) in [(1, HaMode::ActiveStandby), (2, HaMode::ActiveActiveForward)] {
        let mut n = Node::new(Config::pair(1, HaMode::ActiveStandby, &[LUN]), 0);
        n.handle(0, Input::PeerLinkUp);
        n.handle(
            0,
            Input::PeerMsg(HaMsg::Hello {
                version: PROTOCOL_VERSION,
                ha_id: id,
                mode,
            }),
        );
        assert_eq!(n.link_state(), 1);
        let mut refused = false;
        while let Some(o) = n.poll_output() {
            if let Output::Log(e @ Event::LinkRefused { .. }) = o {
                refused = true;
                assert!(e.to_string().starts_with("HA link login refused"));
            }
        }
        assert!(refused);
    }
    let mut n = Node::new(Config::pair(1, HaMode::ActiveStandby, &[LUN]), 0);
    n.handle(
        0,
        Input::PeerMsg(HaMsg::Hello {
            version: PROTOCOL_VERSION + 1,
            ha_id: 2,
            mode: HaMode::ActiveStandby,
        }),
    );
    assert_eq!(n.link_state(), 1);
}

#[test]
fn a_restarted_node_rejoins_as_secondary_with_the_current_epoch() {
    let mut p = Pair::new(
        HaMode::ActiveActiveForward,
        Policy::Automatic,
        Fencing::Agent,
    );
    p.advance(300);
    let crash = p.now;
    p.kill(0);
    p.advance(2000);
    assert!(p.node(1).is_primary(LUN));
    let epoch = p.node(1).epoch(LUN);
    p.restart(0);
    assert!(!p.node(0).is_primary(LUN));
    assert!(!p.node(0).serving(LUN));
    p.advance(2000);
    assert!(!p.node(0).is_primary(LUN));
    assert!(p.node(1).is_primary(LUN));
    assert_eq!(p.node(0).epoch(LUN), epoch);
    assert_eq!(p.node(0).alua(LUN).local, AluaState::ActiveNonOptimized);
    assert!(crash < p.now);
}

#[test]
fn a_switchover_hands_over_without_waiting_or_fencing() {
    let mut p = Pair::new(
        HaMode::ActiveActiveShared,
        Policy::Automatic,
        Fencing::Agent,
    );
    p.advance(300);
    let before = p.node(0).epoch(LUN);
    let t0 = p.now;
    p.feed(0, Input::Admin(AdminCmd::Switchover { lun: LUN }));
    p.pump();
    assert!(p.node(1).is_primary(LUN));
    assert!(!p.node(0).is_primary(LUN));
    assert!(p.node(1).epoch(LUN) > before);
    assert_eq!(p.now, t0);
    assert!(p.first(1, t0, |o| *o == Output::FencePeer).is_none());
    p.advance(1000);
    // The old primary's preference now says secondary: it stays so.
    assert!(p.node(1).is_primary(LUN));
    assert_eq!(p.node(0).alua(LUN).local, AluaState::ActiveNonOptimized);
}

#[test]
fn a_switchover_tells_the_handover_before_any_state_without_the_lun() {
    // Messages of one link channel arrive in order, but the receiver's quorum I/O does not wait
    // for the next message: a State showing the step-down, read first, would start an ordinary
    // claim that can reach its fencing step before the Handover is read.
    for mode in [HaMode::ActiveActiveShared, HaMode::ActiveActiveForward] {
        let mut p = Pair::new(mode, Policy::Automatic, Fencing::Agent);
        p.advance(300);
        let t0 = p.now;
        p.feed(0, Input::Admin(AdminCmd::Switchover { lun: LUN }));
        p.pump();
        let sent: Vec<&HaMsg> = p
            .out
            .iter()
            .filter(|(n, t, _)| *n == 0 && *t >= t0)
            .filter_map(|(_, _, o)| match o {
                Output::SendPeer(m) => Some(m),
                _ => None,
            })
            .collect();
        let handover = sent
            .iter()
            .position(|m| matches!(m, HaMsg::Handover { .. }))
            .expect("a Handover was sent");
        let stepped_down = sent.iter().position(|m| {
            matches!(m, HaMsg::State { luns, .. } if luns.iter().any(|l| l.lun == LUN && !l.primary))
        });
        if let Some(s) = stepped_down {
            assert!(
                handover < s,
                "the step-down was told before the Handover: {sent:?}"
            );
        }
        assert!(p.first(1, t0, |o| *o == Output::FencePeer).is_none());
        assert!(p.node(1).is_primary(LUN));
    }
}

#[test]
fn messages_of_an_older_epoch_are_ignored() {
    let mut p = Pair::new(
        HaMode::ActiveActiveForward,
        Policy::Automatic,
        Fencing::Agent,
    );
    p.advance(300);
    p.kill(0);
    p.advance(2000);
    let e = p.node(1).epoch(LUN);
    p.feed(
        1,
        Input::PeerMsg(HaMsg::State {
            at: None,
            valid_for: 0,
            luns: vec![LunStatus {
                lun: LUN,
                epoch: e - 1,
                primary: true,
            }],
        }),
    );
    assert!(p.node(1).is_primary(LUN));
}

#[test]
fn garbage_inputs_do_not_panic() {
    let mut n = Node::new(Config::pair(2, HaMode::ActiveActiveShared, &[LUN]), 0);
    n.handle(1, Input::Quorum(QuorumResult::WriteOk { slot: 9 }));
    n.handle(
        1,
        Input::Quorum(QuorumResult::ReadOk {
            slot: 0,
            record: None,
        }),
    );
    n.handle(1, Input::FenceResult { ok: true });
    n.handle(1, Input::Timer(TimerKind::Lease));
    n.handle(1, Input::Admin(AdminCmd::Switchover { lun: 99 }));
    n.handle(1, Input::PeerMsg(HaMsg::Handover { lun: 99, epoch: 3 }));
    n.handle(u64::MAX, Input::PeerMsg(HaMsg::Probe { at: u64::MAX }));
    while n.poll_output().is_some() {}
    assert!(!n.serving(LUN));
}

#[test]
fn config_validation_refuses_unsafe_settings() {
    let mut c = Config::pair(1, HaMode::ActiveStandby, &[1]);
    assert_eq!(c.validate(), Ok(()));
    c.policy = Policy::Naive;
    assert_eq!(c.validate(), Err(ConfigError::NaivePolicy));
    c.policy = Policy::Automatic;
    c.timing.margin_ms = c.timing.drift_ms;
    assert!(matches!(
        c.validate(),
        Err(ConfigError::MarginNotAboveDrift { .. })
    ));
    c.timing = Timing::default();
    c.luns.push(LunConfig { lun: 1, role: None });
    assert_eq!(c.validate(), Err(ConfigError::DuplicateLun(1)));
    let mut c = Config::pair(3, HaMode::ActiveStandby, &[1]);
    assert_eq!(c.validate(), Err(ConfigError::BadHaId(3)));
    c.ha_id = 2;
    c.timing.renew_ms = c.timing.lease_ms;
    assert!(matches!(
        c.validate(),
        Err(ConfigError::RenewNotBelowLease { .. })
    ));
}

#[test]
fn events_read_like_ctl() {
    assert_eq!(
        Event::LinkChanged { from: 1, to: 2 }.to_string(),
        "HA link status changed from 1 to 2"
    );
    assert_eq!(
        Event::BecamePrimary { lun: 3, epoch: 4 }.to_string(),
        "LUN 3: became primary (epoch 4)"
    );
}

#[test]
fn with_failback_the_preferred_controller_gets_its_luns_back_after_rejoining() {
    let mut p = Pair::new_with(
        HaMode::ActiveActiveShared,
        Policy::Automatic,
        Fencing::Agent,
        |c| c.failback = true,
    );
    p.advance(300);
    assert!(p.node(0).is_primary(LUN));
    p.kill(0);
    p.advance(3000);
    assert!(p.node(1).is_primary(LUN), "the survivor takes over");
    let epoch = p.node(1).epoch(LUN);
    p.restart(0);
    p.advance(200);
    // Back, but not yet for a full lease: node 2 keeps the LUN.
    assert!(p.node(1).is_primary(LUN));
    p.advance(timing().lease_ms + 2 * timing().renew_ms);
    assert!(
        p.node(0).is_primary(LUN),
        "failback returns the LUN to node 1"
    );
    assert!(!p.node(1).is_primary(LUN));
    assert!(p.node(0).epoch(LUN) > epoch);
    // And it stays there.
    p.advance(3 * timing().lease_ms);
    assert!(p.node(0).is_primary(LUN));
}

#[test]
fn without_failback_the_survivor_keeps_the_luns() {
    let mut p = Pair::new(
        HaMode::ActiveActiveShared,
        Policy::Automatic,
        Fencing::Agent,
    );
    p.advance(300);
    p.kill(0);
    p.advance(3000);
    p.restart(0);
    p.advance(4 * timing().lease_ms);
    assert!(p.node(1).is_primary(LUN));
    assert!(!p.node(0).is_primary(LUN));
}

// ---- a controller fenced at the disk ----------------------------------------------------------

/// The outputs of node `i` at or after `since`.
fn outs_since(p: &Pair, i: usize, since: Time) -> Vec<Output> {
    p.out
        .iter()
        .filter(|(n, t, _)| *n == i && *t >= since)
        .map(|(_, _, o)| o.clone())
        .collect()
}

#[test]
fn a_primary_fenced_at_the_disk_steps_down_at_once_and_claims_nothing_until_rejoined() {
    let mut p = Pair::new(
        HaMode::ActiveActiveShared,
        Policy::Automatic,
        Fencing::Agent,
    );
    p.fence_at_disk = true;
    p.auto_restore = false;
    p.advance(300);
    assert!(p.node(0).is_primary(LUN) && p.node(0).serving(LUN));
    let epoch = p.node(0).epoch(LUN);
    let t0 = p.now;

    // The backing device refuses node 0's I/O: it steps down in the same step, before any
    // quorum I/O or message.
    p.feed(0, Input::Backend(BackendHealth::Fenced));
    let n = p.node(0);
    assert!(n.fenced_at_disk());
    assert!(!n.is_primary(LUN) && !n.serving(LUN));
    assert_eq!(n.primary_of(LUN), None);
    assert_eq!(n.alua(LUN).local, AluaState::Transitioning);
    p.pump();
    let after = outs_since(&p, 0, t0);
    assert!(after.contains(&Output::FenceIo { lun: LUN }), "{after:?}");
    assert!(after.contains(&Output::Log(Event::FencedAtDisk)));
    assert!(after.iter().any(|o| matches!(
        o,
        Output::Log(Event::LostPrimary { reason, .. }) if reason == "fenced at the disk"
    )));

    // The peer takes the LUN by the ordinary claim (its fence lands on node 0 again).
    p.advance(3000);
    assert!(p.node(1).is_primary(LUN) && p.node(1).serving(LUN));
    assert!(p.node(1).epoch(LUN) > epoch);

    // Node 0 rejoined through the quorum area (both slots read after the fence), then asked for
    // its access back, and until it has it, it claims nothing and is never active.
    let after = outs_since(&p, 0, t0);
    let read_peer = after
        .iter()
        .position(|o| *o == Output::Quorum(QuorumOp::Read { slot: 2 }))
        .expect("read the peer's slot");
    let read_own = after
        .iter()
        .position(|o| *o == Output::Quorum(QuorumOp::Read { slot: 1 }))
        .expect("read its own slot");
    let restore = after
        .iter()
        .position(|o| *o == Output::RestoreDiskAccess)
        .expect("asked for its access back");
    assert!(read_own < read_peer && read_peer < restore, "{after:?}");
    for o in &after {
        match o {
            Output::AluaChanged { local, .. } => assert!(!local.is_active(), "{after:?}"),
            Output::Log(Event::ClaimStarted { .. }) | Output::Log(Event::BecamePrimary { .. }) => {
                panic!("a node fenced at the disk claimed: {after:?}")
            }
            Output::ResumeIo { .. } => panic!("a node fenced at the disk resumed I/O"),
            _ => {}
        }
    }
    let n = p.node(0);
    assert!(n.fenced_at_disk() && !n.serving(LUN));
    assert_eq!(n.alua(LUN).local, AluaState::Transitioning);
    assert_eq!(
        n.epoch(LUN),
        p.node(1).epoch(LUN),
        "it learned the new epoch"
    );

    // Access restored: a mode-1 secondary of the new primary.
    p.feed(0, Input::Backend(BackendHealth::Ok));
    p.advance(300);
    let n = p.node(0);
    assert!(!n.fenced_at_disk());
    assert!(!n.is_primary(LUN) && n.serving(LUN));
    assert_eq!(n.alua(LUN).local, AluaState::ActiveNonOptimized);
    assert_eq!(n.primary_of(LUN), Some(2));
}

#[test]
fn a_mode_1_secondary_fenced_at_the_disk_stops_serving_until_rejoined_and_restored() {
    let mut p = Pair::new(
        HaMode::ActiveActiveShared,
        Policy::Automatic,
        Fencing::Agent,
    );
    p.auto_restore = false;
    p.advance(300);
    assert!(p.node(1).serving(LUN));
    assert_eq!(p.node(1).alua(LUN).local, AluaState::ActiveNonOptimized);
    let t0 = p.now;
    p.feed(1, Input::Backend(BackendHealth::Fenced));
    // Access "restored" before the rejoin: ignored, only the join path ends the fence.
    p.feed(1, Input::Backend(BackendHealth::Ok));
    let n = p.node(1);
    assert!(n.fenced_at_disk() && !n.serving(LUN));
    assert_eq!(n.alua(LUN).local, AluaState::Transitioning);
    assert_eq!(n.primary_of(LUN), None);
    p.advance(2000);
    assert!(p.restore_asked[1]);
    assert!(p.node(1).fenced_at_disk() && !p.node(1).serving(LUN));
    assert!(outs_since(&p, 1, t0)
        .iter()
        .all(|o| !matches!(o, Output::Log(Event::ClaimStarted { .. }))));
    // The primary was never disturbed.
    assert!(p.node(0).is_primary(LUN) && p.node(0).serving(LUN));
    p.feed(1, Input::Backend(BackendHealth::Ok));
    p.pump();
    assert!(!p.node(1).fenced_at_disk() && p.node(1).serving(LUN));
    assert_eq!(p.node(1).alua(LUN).local, AluaState::ActiveNonOptimized);
    // Fenced again later: the same way round.
    p.feed(1, Input::Backend(BackendHealth::Fenced));
    assert!(!p.node(1).serving(LUN));
}

#[test]
fn under_manual_failover_the_peers_state_is_the_rejoin_and_no_admin_makes_it_primary() {
    let mut p = Pair::new(HaMode::ActiveActiveShared, Policy::Manual, Fencing::Agent);
    p.auto_restore = false;
    p.advance(100);
    assert!(p.node(0).is_primary(LUN));
    p.feed(0, Input::Backend(BackendHealth::Fenced));
    assert!(!p.node(0).is_primary(LUN));
    p.feed(0, Input::Admin(AdminCmd::SetPrimary { lun: None }));
    assert!(
        !p.node(0).is_primary(LUN),
        "the admin cannot override the disk"
    );
    assert_eq!(p.node(0).alua(LUN).local, AluaState::Transitioning);
    p.pump();
    assert!(
        p.restore_asked[0],
        "the probe's answer completes the rejoin"
    );
    p.feed(0, Input::Backend(BackendHealth::Ok));
    assert!(!p.node(0).fenced_at_disk());
}

#[test]
fn a_standalone_controller_fenced_at_the_disk_only_fails_its_backend() {
    let mut n = Node::new(Config::standalone(&[0]), 0);
    n.handle(1, Input::Backend(BackendHealth::Fenced));
    assert!(!n.fenced_at_disk());
    assert!(n.is_primary(0));
}

/// Everything node `i` sent over the link at or after `since`.
fn sent_since(p: &Pair, i: usize, since: Time) -> Vec<HaMsg> {
    p.out
        .iter()
        .filter(|(n, t, _)| *n == i && *t >= since)
        .filter_map(|(_, _, o)| match o {
            Output::SendPeer(m) => Some(m.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_stopping_primary_hands_over_and_is_never_fenced() {
    for mode in [
        HaMode::ActiveStandby,
        HaMode::ActiveActiveShared,
        HaMode::ActiveActiveForward,
    ] {
        for policy in [Policy::Automatic, Policy::Manual] {
            let mut p = Pair::new(mode, policy, Fencing::Agent);
            p.advance(300);
            assert!(p.node(0).is_primary(LUN), "{mode:?} {policy:?}");
            let t0 = p.now;
            p.feed(0, Input::Stop);
            p.pump();
            assert!(
                p.node(0).stopped(),
                "{mode:?} {policy:?}: the stop completes"
            );
            assert!(p.node(1).is_primary(LUN) && p.node(1).serving(LUN));
            assert_eq!(p.now, t0, "no lease wait");
            // The old primary drained its I/O before it said it leaves.
            let outs = outs_since(&p, 0, t0);
            let fenced = outs
                .iter()
                .position(|o| *o == Output::FenceIo { lun: LUN })
                .expect("I/O fenced on the stopping controller");
            let leaving = outs
                .iter()
                .position(|o| *o == Output::SendPeer(HaMsg::Leaving))
                .expect("Leaving sent");
            assert!(fenced < leaving);
            assert_eq!(
                sent_since(&p, 0, t0).last(),
                Some(&HaMsg::Leaving),
                "nothing is sent after Leaving"
            );
            if policy == Policy::Automatic {
                let slot = p.slots[0].clone().expect("slot written");
                assert!(!slot.owns(LUN), "the slot records the release");
            }
            // The process exits: the link closes.
            p.kill(0);
            p.advance(2000);
            assert!(p.first(1, t0, |o| *o == Output::FencePeer).is_none());
            assert!(p.node(1).serving(LUN), "{mode:?} {policy:?}");
            let g = p.node(1).alua(LUN);
            assert_eq!(g.local, AluaState::ActiveOptimized);
            assert_eq!(g.peer, AluaState::Unavailable);
            // No I/O suspension on the survivor either.
            assert!(p
                .first(1, t0, |o| *o == Output::FenceIo { lun: LUN })
                .is_none());
        }
    }
}

#[test]
fn a_stopping_mode_1_secondary_leaves_without_suspending_the_primary() {
    let mut p = Pair::new(
        HaMode::ActiveActiveShared,
        Policy::Automatic,
        Fencing::Agent,
    );
    p.advance(300);
    assert!(p.node(1).serving(LUN), "the secondary serves under grants");
    let t0 = p.now;
    p.feed(1, Input::Stop);
    p.pump();
    assert!(p.node(1).stopped());
    assert!(!p.node(1).serving(LUN));
    assert!(p.node(0).is_primary(LUN));
    p.kill(1);
    p.advance(2000);
    assert!(p.first(0, t0, |o| *o == Output::FencePeer).is_none());
    assert!(p
        .first(0, t0, |o| *o == Output::FenceIo { lun: LUN })
        .is_none());
    assert!(p.node(0).serving(LUN));
    // The peer starts again and rejoins as secondary.
    p.restart(1);
    p.advance(1000);
    assert!(p.node(0).is_primary(LUN));
    assert!(p.node(1).serving(LUN));
    assert!(p.first(0, t0, |o| *o == Output::FencePeer).is_none());
}

#[test]
fn a_stopping_controller_reports_unavailable_and_takes_nothing() {
    let mut p = Pair::new(
        HaMode::ActiveActiveForward,
        Policy::Automatic,
        Fencing::Agent,
    );
    p.advance(300);
    // Hold the release write back: the stop is under way, not complete.
    p.quorum_ok[0] = false;
    let t0 = p.now;
    p.feed(0, Input::Stop);
    p.pump();
    assert!(p.node(0).stopping() && !p.node(0).stopped());
    assert_eq!(p.node(0).alua(LUN).local, AluaState::Unavailable);
    assert!(!p.node(0).serving(LUN));
    p.feed(
        0,
        Input::Admin(AdminCmd::SetRole {
            lun: None,
            role: Role::Primary,
        }),
    );
    p.pump();
    assert!(!p.node(0).is_primary(LUN));
    // The quorum area comes back: the release lands, the hand-over completes.
    p.quorum_ok[0] = true;
    p.advance(300);
    assert!(p.node(0).stopped());
    assert!(p.node(1).is_primary(LUN));
    assert_eq!(p.node(0).alua(LUN).peer, AluaState::ActiveOptimized);
    assert!(p.first(1, t0, |o| *o == Output::FencePeer).is_none());
}

#[test]
fn a_controller_stopping_without_its_peer_releases_its_slot() {
    let mut p = Pair::new(
        HaMode::ActiveActiveForward,
        Policy::Automatic,
        Fencing::Agent,
    );
    p.advance(300);
    p.cut();
    p.advance(50);
    p.feed(0, Input::Stop);
    p.pump();
    assert!(p.node(0).stopped());
    assert!(!p.node(0).is_primary(LUN));
    assert!(!p.slots[0].clone().expect("slot").owns(LUN));
    assert!(p
        .out
        .iter()
        .any(|(n, _, o)| *n == 0 && *o == Output::Log(Event::Stopped { peer_told: false })));
    p.kill(0);
    p.advance(3000);
    assert!(p.node(1).serving(LUN), "the survivor takes over");
}
