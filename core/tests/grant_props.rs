//! Properties of mode 1's grant protocol (`duet_core::ha::grant`): a primary's [`Grantor`] and a
//! secondary's [`Grantee`] exchange messages over a link that reorders, loses, duplicates and
//! drops; the primary steps down, moves to new epochs and runs its own I/O. Whatever happens:
//! - the lock is never held by two conflicting holders;
//! - a grant the secondary has started in its current link session, at the primary's current
//!   epoch while the primary serves, is still held by the primary: the primary's own conflicting
//!   I/O cannot begin under it;
//! - a grant is released at most once, and grant ids are never reused.

use duet_core::ha::grant::{
    Access, Answer, GrantId, GrantMsg, PrimaryFacts, Received, SecondaryFacts, Start, Ticket,
};
use duet_core::ha::{Grantee, Grantor};
use duet_core::LunNumber;
use proptest::prelude::*;
use std::collections::BTreeSet;

const LUNS: LunNumber = 2;

#[derive(Clone, Debug)]
enum Op {
    Ask(LunNumber, bool),
    Deliver(usize),
    Lose(usize),
    Duplicate(usize),
    Finish(usize),
    LocalBegin(LunNumber, bool),
    LocalEnd(usize),
    LinkDown,
    LinkUp,
    NewEpoch,
    StepDown,
    Serve,
}

fn any_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..LUNS, any::<bool>()).prop_map(|(l, x)| Op::Ask(l, x)),
        6 => (0..8usize).prop_map(Op::Deliver),
        1 => (0..8usize).prop_map(Op::Lose),
        1 => (0..8usize).prop_map(Op::Duplicate),
        3 => (0..4usize).prop_map(Op::Finish),
        2 => (0..LUNS, any::<bool>()).prop_map(|(l, x)| Op::LocalBegin(l, x)),
        2 => (0..4usize).prop_map(Op::LocalEnd),
        1 => Just(Op::LinkDown),
        1 => Just(Op::LinkUp),
        1 => Just(Op::NewEpoch),
        1 => Just(Op::StepDown),
        1 => Just(Op::Serve),
    ]
}

fn access(x: bool) -> Access {
    if x {
        Access::Exclusive
    } else {
        Access::Shared
    }
}

struct World {
    p: Grantor,
    s: Grantee,
    /// (to the primary, message).
    net: Vec<(bool, GrantMsg)>,
    link: bool,
    serving: bool,
    epoch: u64,
    /// The epoch the secondary knows.
    s_epoch: u64,
    local: Vec<(u64, LunNumber, Access)>,
    started: Vec<Ticket>,
    issued: BTreeSet<GrantId>,
    released: BTreeSet<GrantId>,
}

impl World {
    fn pf(&self) -> PrimaryFacts {
        PrimaryFacts {
            serving_primary: self.serving,
            epoch: self.epoch,
            peer_connected: self.link,
        }
    }

    fn sf(&self) -> SecondaryFacts {
        SecondaryFacts {
            epoch: self.s_epoch,
            connected: self.link,
        }
    }

    fn answer(&mut self, req: u64, a: Answer) {
        if let Answer::Granted { grant, .. } = a {
            assert!(self.issued.insert(grant), "grant id {grant} reused");
        }
        if self.link {
            self.net.push((false, GrantMsg::Answer { req, answer: a }));
        }
    }

    fn update(&mut self) {
        for l in 0..LUNS {
            let f = self.pf();
            for (req, a) in self.p.update(l, f) {
                self.answer(req, a);
            }
        }
    }

    fn release(&mut self, g: GrantId) {
        if self.link {
            self.net.push((true, GrantMsg::Release { grant: g }));
        }
    }

    fn step(&mut self, op: Op) {
        match op {
            Op::Ask(l, x) => {
                let req = self.s.ask(l, access(x));
                if self.link {
                    self.net.push((
                        true,
                        GrantMsg::Request {
                            req,
                            lun: l,
                            access: access(x),
                        },
                    ));
                } else {
                    self.s.forget(req);
                }
            }
            Op::Deliver(i) | Op::Lose(i) | Op::Duplicate(i) if i < self.net.len() => {
                let m = self.net[i];
                match op {
                    Op::Lose(_) => {
                        self.net.remove(i);
                        return;
                    }
                    Op::Duplicate(_) => {
                        self.net.push(m);
                        return;
                    }
                    _ => {
                        self.net.remove(i);
                    }
                }
                match m {
                    (true, GrantMsg::Request { req, lun, access }) => {
                        let (session, f) = (self.p.session(), self.pf());
                        if let Some(a) = self.p.request(session, req, lun, access, f) {
                            self.answer(req, a);
                        }
                    }
                    (true, GrantMsg::Release { grant }) => {
                        if self.p.release(grant) {
                            assert!(self.released.insert(grant), "released twice");
                        }
                        self.update();
                    }
                    (false, GrantMsg::Answer { req, answer }) => {
                        match self.s.on_answer(req, answer) {
                            Received::Granted(t) => match self.s.start(t, self.sf()) {
                                Start::Go => self.started.push(t),
                                Start::Denied { release, .. } => {
                                    if release {
                                        self.release(t.grant);
                                    }
                                }
                            },
                            Received::Unwanted(g) => self.release(g),
                            Received::Refused(_) | Received::Duplicate => {}
                        }
                    }
                    _ => {}
                }
            }
            Op::Finish(i) if i < self.started.len() => {
                let t = self.started.remove(i);
                if let Some(g) = self.s.finished(t) {
                    self.release(g);
                }
            }
            Op::LocalBegin(l, x) => {
                if let Some(id) = self.p.begin_local(l, access(x)) {
                    self.local.push((id, l, access(x)));
                }
            }
            Op::LocalEnd(i) if i < self.local.len() => {
                let (id, _, _) = self.local.remove(i);
                assert!(self.p.end_local(id));
                self.update();
            }
            Op::LinkDown if self.link => {
                self.link = false;
                self.net.clear();
                self.p.link_down();
                self.s.link_down();
                self.update();
            }
            Op::LinkUp => self.link = true,
            Op::NewEpoch => {
                self.epoch += 1;
                self.s_epoch = self.epoch;
                self.update();
            }
            Op::StepDown => {
                self.serving = false;
                self.update();
            }
            // A node serves again only at a new epoch (after fencing the peer).
            Op::Serve if !self.serving => {
                self.serving = true;
                self.epoch += 1;
                self.s_epoch = self.epoch;
                self.update();
            }
            _ => {}
        }
    }

    fn check(&self) {
        // The lock: no two conflicting holders on one LUN.
        let mut holders: Vec<(LunNumber, Access)> =
            self.p.grants().map(|(_, h)| (h.lun, h.access)).collect();
        holders.extend(self.local.iter().map(|&(_, l, a)| (l, a)));
        for (i, a) in holders.iter().enumerate() {
            for b in &holders[i + 1..] {
                assert!(
                    a.0 != b.0 || !a.1.conflicts(b.1),
                    "conflicting holders {a:?} {b:?}"
                );
            }
        }
        // A started grant of the current session at the primary's serving epoch is held there.
        for (t, h) in self.s.held() {
            if h.started && t.session == self.s.session() && self.serving && h.epoch == self.epoch {
                assert!(
                    self.p.grants().any(|(id, _)| id == t.grant),
                    "started grant {t:?} not held by the primary"
                );
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]
    #[test]
    fn the_grant_protocol_keeps_its_lock(ops in proptest::collection::vec(any_op(), 0..80)) {
        let mut w = World {
            p: Grantor::new(),
            s: Grantee::new(),
            net: Vec::new(),
            link: true,
            serving: true,
            epoch: 1,
            s_epoch: 1,
            local: Vec::new(),
            started: Vec::new(),
            issued: BTreeSet::new(),
            released: BTreeSet::new(),
        };
        for op in ops {
            w.step(op);
            w.check();
        }
    }
}
