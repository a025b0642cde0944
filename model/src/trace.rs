//! Trace rendering for people: one line per step ([`ClusterModel::describe_action`],
//! [`ClusterModel::describe_step`]), one line per state ([`ClusterModel::describe_state`]), and
//! messages and quorum operations in words. Reads the state; changes nothing.

use crate::actions::{Action, Drift};
use crate::model::ClusterModel;
use crate::options::LUN;
use crate::state::{ClusterState, Msg};
use duet_core::ha::grant::{Access, Answer, GrantMsg};
use duet_core::ha::{HaMsg, QuorumOp};
use std::fmt::Write as _;

impl ClusterModel {
    pub(crate) fn name(n: u8) -> String {
        format!("node {}", n + 1)
    }

    /// One line per step of a trace, for people: who did what, which message.
    pub fn describe_action(&self, action: &Action) -> String {
        match action {
            Action::Tick(Drift::Both) => "time passes one tick on both clocks".into(),
            Action::Tick(Drift::Only1) => {
                "time passes one tick on node 1's clock only (node 2's clock runs slow)".into()
            }
            Action::Tick(Drift::Only2) => {
                "node 2's clock alone advances one tick (it runs fast)".into()
            }
            Action::Timer(n, k) => format!("{}: {} timer fires", Self::name(*n), k.name()),
            Action::StallQuorum(n) => format!(
                "{}'s quorum I/O stalls (stays pending while time passes)",
                Self::name(*n)
            ),
            Action::Pause(n) => format!(
                "{} pauses: its queued backend writes are held up",
                Self::name(*n)
            ),
            Action::QuorumOk(n) => format!("{}'s quorum I/O completes", Self::name(*n)),
            Action::QuorumFail(n) => format!("{}'s quorum I/O fails", Self::name(*n)),
            Action::QuorumFailApplied(n) => format!(
                "{}'s quorum write lands but is reported failed",
                Self::name(*n)
            ),
            Action::Deliver(to, m) => {
                format!("{} receives {}", Self::name(*to), describe_message(m))
            }
            Action::Lose(to, m) => {
                format!(
                    "the link loses {} to {}",
                    describe_message(m),
                    Self::name(*to)
                )
            }
            Action::Duplicate(to, m) => {
                format!(
                    "the link duplicates {} to {}",
                    describe_message(m),
                    Self::name(*to)
                )
            }
            Action::FenceOk(n) if self.opts.disk_fence => format!(
                "{} fences {} at the disk (preempted: its queued writes are aborted, its I/O \
                 refused; it lives on)",
                Self::name(*n),
                Self::name(1 - *n)
            ),
            Action::FenceOk(n) => format!(
                "{} fences {} (killed; its pending writes are discarded)",
                Self::name(*n),
                Self::name(1 - *n)
            ),
            Action::Restore(n) => format!(
                "{}'s access to the disk is restored (its key registered again)",
                Self::name(*n)
            ),
            Action::FenceFail(n) => format!("{}'s fencing agent fails", Self::name(*n)),
            Action::Crash(n) => format!("{} crashes", Self::name(*n)),
            Action::Restart(n) => format!("{} restarts (fresh state)", Self::name(*n)),
            Action::Stop(n) => format!("{} is told to stop (SIGTERM)", Self::name(*n)),
            Action::Exit(n) => format!("{} has stopped cleanly and exits", Self::name(*n)),
            Action::CutLink => "the HA link is cut".into(),
            Action::HealLink => "the HA link is restored".into(),
            Action::ClientSend(c) => format!("client {} sends its command", c + 1),
            Action::ClientTimeout(c) => format!(
                "client {} times out waiting and will retry on the other path",
                c + 1
            ),
            Action::Land(n) => format!("a write queued by {} reaches the backend", Self::name(*n)),
        }
    }

    /// A fuller description of a step: the action, with what it did in `before`.
    pub fn describe_step(&self, before: &ClusterState, action: &Action) -> String {
        let mut s = self.describe_action(action);
        match action {
            Action::QuorumOk(n) | Action::QuorumFail(n) | Action::QuorumFailApplied(n) => {
                if let Some(op) = &before.ctl[*n as usize].quorum {
                    let _ = write!(s, " ({})", describe_quorum(op));
                }
            }
            Action::ClientSend(c) => {
                if let Some(cl) = before.clients.get(*c as usize) {
                    let _ = write!(
                        s,
                        " ({:?}) to {}",
                        self.op_of(*c as usize, cl.op),
                        Self::name(cl.path)
                    );
                }
            }
            Action::Land(n) => {
                if let Some(w) = before.ctl[*n as usize].writes.first() {
                    let _ = write!(s, " (value {})", w.value);
                }
            }
            _ => {}
        }
        s
    }

    /// The roles, epochs and ALUA states (per node) after a step, one short line.
    pub fn describe_state(&self, s: &ClusterState) -> String {
        let mut out = String::new();
        for n in 0..2 {
            let _ = write!(out, "n{}@{}ms: ", n + 1, s.clock[n]);
            match &s.ctl[n].node {
                None => out.push_str("down"),
                Some(x) => {
                    let role = if x.is_primary(LUN) {
                        if x.serving(LUN) {
                            "primary"
                        } else {
                            "primary(suspended)"
                        }
                    } else if let Some(p) = x.claim_phase(LUN) {
                        p.name()
                    } else {
                        "secondary"
                    };
                    let g = x.alua(LUN);
                    let _ = write!(
                        out,
                        "{role} e{} {}/{} link{}",
                        x.epoch(LUN),
                        g.local.abbrev(),
                        g.peer.abbrev(),
                        x.link_state()
                    );
                    if let Some(l) = x.lease_until() {
                        let _ = write!(out, " lease<{l}");
                    }
                }
            }
            if s.ctl[n].disk_fenced {
                out.push_str(" disk-fenced");
            }
            if !s.ctl[n].writes.is_empty() {
                let v: Vec<u8> = s.ctl[n].writes.iter().map(|w| w.value).collect();
                let _ = write!(out, " queued{v:?}");
            }
            let grants: Vec<u64> = s.ctl[n].grantor.grants().map(|(g, _)| g).collect();
            if !grants.is_empty() {
                let _ = write!(out, " granted{grants:?}");
            }
            if !s.ctl[n].asks.is_empty() {
                let reqs: Vec<u64> = s.ctl[n].asks.iter().map(|a| a.req).collect();
                let _ = write!(out, " asking{reqs:?}");
            }
            out.push_str(" | ");
        }
        let _ = write!(
            out,
            "link {} | backend {} (acked {}) | msgs {}",
            if s.link_up { "up" } else { "cut" },
            s.backend,
            s.acked,
            s.net.len()
        );
        for (i, c) in s.clients.iter().enumerate() {
            if self.client_done(c) {
                let _ = write!(out, " | client {} done", i + 1);
            } else {
                let _ = write!(
                    out,
                    " | client {} op {}{} via n{}",
                    i + 1,
                    c.op + 1,
                    if c.waiting { " waiting" } else { "" },
                    c.path + 1
                );
            }
        }
        out
    }
}

fn describe_quorum(op: &QuorumOp) -> String {
    match op {
        QuorumOp::Read { slot } => format!("read of slot {slot}"),
        QuorumOp::Write { slot, record } => {
            let mut s = format!("write of slot {slot}: heartbeat {}", record.seq);
            for l in &record.luns {
                let _ = write!(
                    s,
                    ", LUN {} {} epoch {}",
                    l.lun,
                    if l.own { "owned at" } else { "free," },
                    l.epoch
                );
            }
            s
        }
    }
}

/// A message on the model's link in words.
pub fn describe_message(m: &Msg) -> String {
    match m {
        Msg::Ha(m) => describe_msg(m),
        Msg::Grant(GrantMsg::Request { req, lun, access }) => format!(
            "GrantRequest(#{req}, LUN {lun}, {})",
            match access {
                Access::Shared => "shared",
                Access::Exclusive => "exclusive",
            }
        ),
        Msg::Grant(GrantMsg::Answer { req, answer }) => match answer {
            Answer::Granted { grant, epoch } => {
                format!("Granted(#{req}: grant {grant} at epoch {epoch})")
            }
            Answer::Refused(r) => format!("GrantRefused(#{req}: {})", r.name()),
        },
        Msg::Grant(GrantMsg::Release { grant }) => format!("Release(grant {grant})"),
    }
}

/// A message of the node's own in words.
pub fn describe_msg(m: &HaMsg) -> String {
    match m {
        HaMsg::Hello { ha_id, mode, .. } => {
            format!("Hello(ha_id {ha_id}, mode {})", mode.number())
        }
        HaMsg::Probe { at } => format!("Probe(at {at})"),
        HaMsg::State {
            at,
            valid_for,
            luns,
        } => {
            let mut s = String::from("State(");
            for l in luns {
                let _ = write!(
                    s,
                    "LUN {} {} e{}",
                    l.lun,
                    if l.primary { "primary" } else { "secondary" },
                    l.epoch
                );
            }
            if let Some(at) = at {
                if *valid_for == u64::MAX {
                    let _ = write!(s, "; answers probe at {at}");
                } else {
                    let _ = write!(s, "; answers probe at {at}, lease good for {valid_for} ms");
                }
            }
            s.push(')');
            s
        }
        HaMsg::Handover { lun, epoch } => format!("Handover(LUN {lun}, epoch {epoch})"),
        HaMsg::Release { lun, epoch } => format!("Release(LUN {lun}, epoch {epoch})"),
        HaMsg::Released { lun, epoch } => format!("Released(LUN {lun}, epoch {epoch})"),
        HaMsg::Leaving => "Leaving(stopped cleanly: serves nothing, drained, slot released)".into(),
    }
}
