//! The model's steps: the initial state, which [`Action`]s are enabled in a state, and what each
//! does to it; with them, [`ClusterModel`]'s [`stateright::Model`] implementation. Uses the
//! cluster's plumbing in [`crate::model`] and the properties of [`crate::properties`].

use crate::model::{ClusterModel, Served};
use crate::options::LUN;
use crate::state::{Asked, Budget, Client, ClusterState, Controller, Lock, Msg, PendingWrite};
use duet_core::ha::grant::Access;
use duet_core::ha::{Config, HaMsg, Input, Node, QuorumOp, QuorumResult, TimerKind};
use stateright::semantics::register::{Register, RegisterOp, RegisterRet};
use stateright::semantics::{ConsistencyTester, LinearizabilityTester};
use stateright::{Model, Property};

/// How a tick moves the clocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Drift {
    /// Both clocks advance one tick.
    Both,
    /// Only controller 1's clock advances (controller 2's runs slow).
    Only1,
    /// Only controller 2's clock advances (controller 2's runs fast).
    Only2,
}

/// A step of the model. Controllers are numbered 0 and 1 (ha_id 1 and 2).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    Tick(Drift),
    Timer(u8, TimerKind),
    StallQuorum(u8),
    Pause(u8),
    QuorumOk(u8),
    QuorumFail(u8),
    /// A quorum write that lands on the disk but is reported failed (e.g. a timeout).
    QuorumFailApplied(u8),
    Deliver(u8, Msg),
    Lose(u8, Msg),
    Duplicate(u8, Msg),
    FenceOk(u8),
    FenceFail(u8),
    /// The fencing agent gives a controller fenced at the disk its access back.
    Restore(u8),
    Crash(u8),
    Restart(u8),
    /// A clean stop begins (SIGTERM).
    Stop(u8),
    /// A controller whose clean stop is complete exits.
    Exit(u8),
    CutLink,
    HealLink,
    ClientSend(u8),
    ClientTimeout(u8),
    Land(u8),
}

impl ClusterModel {
    /// The steps enabled in `s`.
    pub(crate) fn enabled(&self, s: &ClusterState, actions: &mut Vec<Action>) {
        let faults = self.faults_allowed(s);
        let t = self.tick();
        // Time.
        if self.may_tick(s) {
            let tick1 = s.clock[0] / t;
            let off = (s.clock[1] / t).saturating_sub(tick1);
            if tick1 < self.opts.max_ticks {
                actions.push(Action::Tick(Drift::Both));
                if off > 0 && s.budget.drift > 0 {
                    actions.push(Action::Tick(Drift::Only1));
                }
            }
            if off < self.opts.drift_ticks
                && s.clock[1] / t < self.opts.max_ticks
                && s.budget.drift > 0
            {
                actions.push(Action::Tick(Drift::Only2));
            }
        }
        for n in 0..2u8 {
            let c = &s.ctl[n as usize];
            match &c.node {
                Some(node) => {
                    // The earliest due timer fires.
                    let now = s.clock[n as usize];
                    if let Some(k) = node
                        .due_timers(now)
                        .min_by_key(|k| node.timer(*k).unwrap_or(u64::MAX))
                    {
                        actions.push(Action::Timer(n, k));
                    }
                    if c.quorum.is_some() {
                        actions.push(Action::QuorumOk(n));
                        if faults && s.budget.quorum_failures > 0 {
                            actions.push(Action::QuorumFail(n));
                            if matches!(c.quorum, Some(QuorumOp::Write { .. })) {
                                actions.push(Action::QuorumFailApplied(n));
                            }
                        }
                        if faults && !c.stalled && s.budget.stalls > 0 {
                            actions.push(Action::StallQuorum(n));
                        }
                    }
                    if !c.writes.is_empty() && !c.paused && faults && s.budget.pauses > 0 {
                        actions.push(Action::Pause(n));
                    }
                    if c.fence {
                        actions.push(Action::FenceOk(n));
                        if faults && s.budget.fence_failures > 0 {
                            actions.push(Action::FenceFail(n));
                        }
                    }
                    if !c.writes.is_empty() {
                        actions.push(Action::Land(n));
                    }
                    if c.restore {
                        actions.push(Action::Restore(n));
                    }
                    if faults && s.budget.crashes > 0 {
                        actions.push(Action::Crash(n));
                    }
                    if faults && s.budget.stops > 0 && !node.stopping() {
                        actions.push(Action::Stop(n));
                    }
                    if Self::must_exit(c, s.clock[n as usize]) {
                        actions.push(Action::Exit(n));
                    }
                }
                None => {
                    if c.boots < self.opts.restarts && faults {
                        actions.push(Action::Restart(n));
                    }
                }
            }
        }
        let mut last: Option<&(u8, Msg)> = None;
        for m in &s.net {
            if last == Some(m) {
                continue;
            }
            last = Some(m);
            actions.push(Action::Deliver(m.0, m.1.clone()));
            if faults && s.budget.losses > 0 {
                actions.push(Action::Lose(m.0, m.1.clone()));
            }
            if faults && s.budget.dups > 0 && s.net.len() < self.opts.max_in_flight {
                actions.push(Action::Duplicate(m.0, m.1.clone()));
            }
        }
        if s.link_up {
            if faults && s.budget.link_cuts > 0 {
                actions.push(Action::CutLink);
            }
        } else {
            actions.push(Action::HealLink);
        }
        for (i, c) in s.clients.iter().enumerate() {
            if self.client_done(c) {
                continue;
            }
            if c.waiting {
                if faults && s.budget.timeouts > 0 {
                    actions.push(Action::ClientTimeout(i as u8));
                }
            } else {
                let write = matches!(self.op_of(i, c.op), RegisterOp::Write(_));
                let here = self.serve(s, c.path as usize, write);
                let there = self.serve(s, 1 - c.path as usize, write);
                let goes = |x: &Served| matches!(x, Served::By(..) | Served::Ask(_));
                if goes(&here) || (matches!(here, Served::Refused) && goes(&there)) {
                    actions.push(Action::ClientSend(i as u8));
                }
            }
        }
    }

    /// The state after `action` in `last` (`None`: the action does nothing there).
    pub(crate) fn apply(&self, last: &ClusterState, action: Action) -> Option<ClusterState> {
        let mut s = last.clone();
        let t = self.tick();
        match action {
            Action::Tick(d) => match d {
                Drift::Both => {
                    s.clock[0] += t;
                    s.clock[1] += t;
                }
                Drift::Only1 => {
                    s.clock[0] += t;
                    s.budget.drift = s.budget.drift.saturating_sub(1);
                }
                Drift::Only2 => {
                    s.clock[1] += t;
                    s.budget.drift = s.budget.drift.saturating_sub(1);
                }
            },
            Action::Timer(n, k) => self.feed(&mut s, n as usize, Input::Timer(k)),
            Action::StallQuorum(n) => {
                s.budget.stalls = s.budget.stalls.saturating_sub(1);
                s.ctl[n as usize].stalled = true;
            }
            Action::Pause(n) => {
                s.budget.pauses = s.budget.pauses.saturating_sub(1);
                s.ctl[n as usize].paused = true;
            }
            Action::QuorumOk(n) => {
                let n = n as usize;
                let op = s.ctl[n].quorum.take()?;
                s.ctl[n].stalled = false;
                let r = match op {
                    QuorumOp::Read { slot } => QuorumResult::ReadOk {
                        slot,
                        record: (slot as usize)
                            .checked_sub(1)
                            .and_then(|i| s.slots.get(i).cloned())
                            .flatten(),
                    },
                    QuorumOp::Write { slot, .. } if s.ctl[n].disk_fenced => {
                        // The quorum device is reserved Write Exclusive - Registrants Only: a
                        // preempted controller may read it but not write it.
                        QuorumResult::Failed {
                            slot,
                            reason: "reservation conflict".into(),
                        }
                    }
                    QuorumOp::Write { slot, record } => {
                        if let Some(x) = (slot as usize)
                            .checked_sub(1)
                            .and_then(|i| s.slots.get_mut(i))
                        {
                            *x = Some(record);
                        }
                        QuorumResult::WriteOk { slot }
                    }
                };
                self.feed(&mut s, n, Input::Quorum(r));
            }
            Action::QuorumFail(n) | Action::QuorumFailApplied(n) => {
                let applied = matches!(action, Action::QuorumFailApplied(_));
                let n = n as usize;
                let op = s.ctl[n].quorum.take()?;
                s.ctl[n].stalled = false;
                s.budget.quorum_failures = s.budget.quorum_failures.saturating_sub(1);
                let slot = match op {
                    QuorumOp::Read { slot } => slot,
                    QuorumOp::Write { slot, record } => {
                        if applied {
                            if let Some(x) = (slot as usize)
                                .checked_sub(1)
                                .and_then(|i| s.slots.get_mut(i))
                            {
                                *x = Some(record);
                            }
                        }
                        slot
                    }
                };
                self.feed(
                    &mut s,
                    n,
                    Input::Quorum(QuorumResult::Failed {
                        slot,
                        reason: "I/O error".into(),
                    }),
                );
            }
            Action::Deliver(to, m) => {
                let i = s.net.iter().position(|x| x.0 == to && x.1 == m)?;
                s.net.remove(i);
                // (Heard only on a logged-in link: TCP delivers the login first, this model may
                // not.)
                let heard = s.ctl[to as usize]
                    .node
                    .as_ref()
                    .is_some_and(|x| x.link_state() == 2);
                if m == Msg::Ha(HaMsg::Leaving) && heard {
                    s.left[1 - to as usize] = true;
                }
                match m {
                    Msg::Ha(m) => self.feed(&mut s, to as usize, Input::PeerMsg(m)),
                    Msg::Grant(m) => self.on_grant_msg(&mut s, to as usize, m),
                }
            }
            Action::Lose(to, m) => {
                let i = s.net.iter().position(|x| x.0 == to && x.1 == m)?;
                s.net.remove(i);
                s.budget.losses = s.budget.losses.saturating_sub(1);
            }
            Action::Duplicate(to, m) => {
                s.budget.dups = s.budget.dups.saturating_sub(1);
                s.net.push((to, m));
                s.net.sort();
            }
            Action::FenceOk(n) if self.opts.disk_fence && s.ctl[n as usize].disk_fenced => {
                // A controller fenced at the disk cannot fence: the device refuses its
                // preemption, as it refuses its other commands.
                let n = n as usize;
                s.ctl[n].fence = false;
                self.feed(&mut s, n, Input::FenceResult { ok: false });
            }
            Action::FenceOk(n) if self.opts.disk_fence => {
                let n = n as usize;
                let p = 1 - n;
                s.ctl[n].fence = false;
                if s.ctl[p].node.as_ref().is_some_and(|x| x.is_primary(LUN)) {
                    s.primary_lost = true;
                }
                s.ctl[p].disk_fenced = true;
                // PREEMPT AND ABORT: the fenced controller's queued writes are aborted (never
                // land); its clients see errors and retry on the other path.
                for w in std::mem::take(&mut s.ctl[p].writes) {
                    Self::fail_attempt(&mut s, w.client, w.op, w.attempt);
                    self.write_landed(&mut s, p, w.lock);
                }
                s.ctl[p].paused = false;
                if std::mem::take(&mut s.ctl[p].leaving_held) {
                    self.send(&mut s, p, Msg::Ha(HaMsg::Leaving));
                }
                self.feed(&mut s, n, Input::FenceResult { ok: true });
            }
            Action::FenceOk(n) => {
                let n = n as usize;
                s.ctl[n].fence = false;
                if s.ctl[1 - n].node.is_some() {
                    self.kill(&mut s, 1 - n);
                }
                self.feed(&mut s, n, Input::FenceResult { ok: true });
            }
            Action::Restore(n) => {
                let n = n as usize;
                s.ctl[n].restore = false;
                s.ctl[n].disk_fenced = false;
                self.feed(&mut s, n, Input::Backend(duet_core::ha::BackendHealth::Ok));
            }
            Action::FenceFail(n) => {
                let n = n as usize;
                s.ctl[n].fence = false;
                s.budget.fence_failures = s.budget.fence_failures.saturating_sub(1);
                self.feed(&mut s, n, Input::FenceResult { ok: false });
            }
            Action::Crash(n) => {
                s.budget.crashes = s.budget.crashes.saturating_sub(1);
                self.kill(&mut s, n as usize);
            }
            Action::Stop(n) => {
                let n = n as usize;
                s.budget.stops = s.budget.stops.saturating_sub(1);
                if s.ctl[n].node.as_ref().is_some_and(|x| x.is_primary(LUN)) {
                    // A new primary is due (`primary-eventually`).
                    s.primary_lost = true;
                }
                s.ctl[n].stop_by = Some(s.clock[n] + self.opts.stop_bound_ticks * t);
                self.feed(&mut s, n, Input::Stop);
            }
            Action::Exit(n) => self.kill(&mut s, n as usize),
            Action::Restart(n) => {
                let n = n as usize;
                s.left[n] = false;
                s.ctl[n].boots += 1;
                // A controller registers its key again when it starts (`scsi-pr`).
                s.ctl[n].disk_fenced = false;
                s.ctl[n].restore = false;
                s.ctl[n].node = Some(Node::new(self.configs[n].clone(), s.clock[n]));
                self.route(&mut s, n);
                self.link_up_both(&mut s);
            }
            Action::CutLink => {
                let was = Self::connected(&s);
                s.link_up = false;
                s.budget.link_cuts = s.budget.link_cuts.saturating_sub(1);
                s.net.clear();
                if was {
                    self.feed(&mut s, 0, Input::PeerLinkDown);
                    self.feed(&mut s, 1, Input::PeerLinkDown);
                    self.grants_link_lost(&mut s, 0);
                    self.grants_link_lost(&mut s, 1);
                }
            }
            Action::HealLink => {
                s.link_up = true;
                self.link_up_both(&mut s);
            }
            Action::ClientSend(c) => {
                let ci = c as usize;
                let cl = *s.clients.get(ci)?;
                let op = self.op_of(ci, cl.op);
                let write = matches!(op, RegisterOp::Write(_));
                // The current path first; on a refusal or a dropped connection, the other path.
                let (path, served) = match self.serve(&s, cl.path as usize, write) {
                    Served::Blocked => return None,
                    Served::Refused => match self.serve(&s, 1 - cl.path as usize, write) {
                        x @ (Served::By(..) | Served::Ask(_)) => (1 - cl.path, x),
                        _ => return None,
                    },
                    x => (cl.path, x),
                };
                s.clients[ci].path = path;
                if !cl.invoked {
                    let _ = s.history.on_invoke(c, op.clone());
                    s.clients[ci].invoked = true;
                }
                if let Served::By(exec, _) = served {
                    if s.ctl[exec].disk_fenced {
                        // The backend refuses the executing controller: the command fails with
                        // a retryable sense (Transitioning) and the client tries the other path.
                        s.clients[ci].path = 1 - path;
                        self.refused_by_disk(&mut s, exec);
                        return Some(s);
                    }
                }
                let value = match op {
                    RegisterOp::Write(v) => Some(v),
                    RegisterOp::Read => None,
                };
                match (served, value) {
                    (Served::Ask(n), _) => {
                        let a = Asked {
                            req: 0,
                            client: c,
                            op: cl.op,
                            attempt: cl.attempt,
                            value,
                        };
                        self.ask(&mut s, n, a);
                        s.clients[ci].waiting = true;
                    }
                    (Served::By(exec, lock), Some(value)) => {
                        let lock = match lock {
                            Lock::Local(_) => Lock::Local(
                                s.ctl[exec].grantor.begin_local(LUN, Access::Exclusive)?,
                            ),
                            other => other,
                        };
                        s.ctl[exec].writes.push(PendingWrite {
                            client: c,
                            op: cl.op,
                            attempt: cl.attempt,
                            value,
                            lock,
                        });
                        s.clients[ci].waiting = true;
                    }
                    (Served::By(..), None) => {
                        let _ = s.history.on_return(c, RegisterRet::ReadOk(s.backend));
                        Self::next_op(&mut s.clients[ci]);
                    }
                    _ => return None,
                }
            }
            Action::ClientTimeout(c) => {
                let ci = c as usize;
                s.budget.timeouts = s.budget.timeouts.saturating_sub(1);
                let cl = s.clients.get_mut(ci)?;
                cl.waiting = false;
                cl.attempt = cl.attempt.saturating_add(1);
                cl.path = 1 - cl.path;
                // The abandoned command is aborted where it still waits for a grant (its I/O has
                // not started); a write already queued stays where it is.
                Self::abort_asks(&mut s, c);
            }
            Action::Land(n) => {
                let n = n as usize;
                if s.ctl[n].writes.is_empty() {
                    return None;
                }
                let w = s.ctl[n].writes.remove(0);
                if s.ctl[n].writes.is_empty() {
                    s.ctl[n].paused = false;
                    if std::mem::take(&mut s.ctl[n].leaving_held) {
                        self.send(&mut s, n, Msg::Ha(HaMsg::Leaving));
                    }
                }
                if s.ctl[n].disk_fenced {
                    // A write issued after the fence: the backend refuses it.
                    Self::fail_attempt(&mut s, w.client, w.op, w.attempt);
                    self.write_landed(&mut s, n, w.lock);
                    self.refused_by_disk(&mut s, n);
                    return Some(s);
                }
                s.backend = w.value;
                let ci = w.client as usize;
                if let Some(cl) = s.clients.get(ci).copied() {
                    if cl.waiting && cl.op == w.op && cl.attempt == w.attempt {
                        let _ = s.history.on_return(w.client, RegisterRet::WriteOk);
                        s.acked = w.value;
                        Self::next_op(&mut s.clients[ci]);
                    }
                }
                self.write_landed(&mut s, n, w.lock);
            }
        }
        Some(s)
    }
}

impl Model for ClusterModel {
    type State = ClusterState;
    type Action = Action;

    fn init_states(&self) -> Vec<ClusterState> {
        let ctl = |cfg: &Config| Controller::new(Some(Node::new(cfg.clone(), 0)));
        let o = &self.opts;
        let mut s = ClusterState {
            clock: [0, 0],
            ctl: [ctl(&self.configs[0]), ctl(&self.configs[1])],
            slots: [None, None],
            link_up: true,
            net: Vec::new(),
            backend: 0,
            acked: 0,
            clients: (0..o.clients)
                .map(|i| Client {
                    path: (i % 2) as u8,
                    op: 0,
                    invoked: false,
                    waiting: false,
                    attempt: 0,
                })
                .collect(),
            history: LinearizabilityTester::new(Register(0)),
            budget: Budget {
                crashes: o.crashes,
                link_cuts: o.link_cuts,
                losses: o.msg_losses,
                dups: o.msg_dups,
                quorum_failures: o.quorum_failures,
                stalls: o.quorum_stalls,
                pauses: o.pauses,
                drift: o.drift_steps,
                fence_failures: o.fence_failures,
                timeouts: o.client_timeouts,
                stops: o.stops,
            },
            primary_lost: false,
            left: [false, false],
            fenced_after_leaving: false,
        };
        self.route(&mut s, 0);
        self.route(&mut s, 1);
        self.link_up_both(&mut s);
        vec![s]
    }

    fn actions(&self, s: &ClusterState, actions: &mut Vec<Action>) {
        self.enabled(s, actions)
    }

    fn next_state(&self, last: &ClusterState, action: Action) -> Option<ClusterState> {
        self.apply(last, action)
    }

    fn format_action(&self, action: &Action) -> String {
        self.describe_action(action)
    }

    fn format_step(&self, last: &ClusterState, action: Action) -> Option<String> {
        let line = self.describe_step(last, &action);
        self.next_state(last, action)
            .map(|next| format!("{line}\n{}", self.describe_state(&next)))
    }

    fn within_boundary(&self, s: &ClusterState) -> bool {
        s.ctl.iter().all(|c| {
            c.node
                .as_ref()
                .is_none_or(|n| n.epoch(LUN) <= self.opts.max_epoch)
                && c.grantee.requests() <= self.opts.max_grant_requests
        })
    }

    fn properties(&self) -> Vec<Property<Self>> {
        crate::properties::properties()
    }
}
