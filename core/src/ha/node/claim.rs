//! The automatic election of [`Node`]: starting, advancing and abandoning a claim (observe,
//! wait, intent, check, fence, serve), becoming primary and stepping down, and the lapse of
//! this node's lease. The steps are those of the module documentation of [`crate::ha`].
//! Touches only the node's own fields and its output queue.

use super::*;

impl Node {
    /// Makes this node primary for LUN index `i` at `epoch`.
    pub(super) fn become_primary(&mut self, now: Time, i: usize, epoch: u64) {
        let l = &mut self.luns[i];
        l.role = LunRole::Primary;
        l.epoch = l.epoch.max(epoch);
        l.served = l.served.max(l.epoch);
        l.peer_primary = false;
        l.handing_over = false;
        let (lun, epoch) = (l.lun, l.epoch);
        self.log(Event::BecamePrimary { lun, epoch });
        if !self.suspended {
            self.out.push_back(Output::ResumeIo { lun });
        }
        self.push_state(now);
    }

    pub(super) fn step_down(&mut self, now: Time, i: usize, reason: &str) {
        let l = &mut self.luns[i];
        if l.role == LunRole::Primary {
            l.role = LunRole::Secondary;
            let (lun, epoch) = (l.lun, l.epoch);
            self.out.push_back(Output::FenceIo { lun });
            self.log(Event::LostPrimary {
                lun,
                epoch,
                reason: reason.to_string(),
            });
            self.push_state(now);
        }
    }

    pub(super) fn abort_claim(&mut self, now: Time, i: usize, reason: &str) {
        if let LunRole::Claiming(c) = self.luns[i].role {
            if c.intent {
                // The claim's epoch was published: never use it again.
                self.release_due = true;
                self.luns[i].epoch = self.luns[i].epoch.max(c.epoch);
            }
            self.luns[i].role = LunRole::Secondary;
            let lun = self.luns[i].lun;
            self.log(Event::ClaimAborted {
                lun,
                reason: reason.to_string(),
            });
            let at = now.saturating_add(self.wait());
            self.retry_at = Some(self.retry_at.map_or(at, |r| r.min(at)));
        }
    }

    /// Whether LUN index `i` should be claimed now (automatic policy).
    pub(super) fn should_claim(&self, i: usize) -> bool {
        let l = &self.luns[i];
        self.automatic()
            && self.stopping.is_none()
            && self.join == Join::Done
            && self.backend_ok
            && !self.fenced_at_disk()
            && l.role == LunRole::Secondary
            && !l.handing_over
            && !(self.link == 2 && (l.peer_primary || l.awaiting_handover))
    }

    /// Starts claims where due. Non-preferred LUNs wait for `include_non_preferred` (the retry
    /// timer), so that at start-up the preferred node normally wins.
    pub(super) fn consider_claims(&mut self, now: Time, include_non_preferred: bool) {
        for i in 0..self.luns.len() {
            if !self.should_claim(i) {
                continue;
            }
            if include_non_preferred || self.preferred(&self.luns[i]) {
                let max_known = self.luns[i].epoch;
                self.luns[i].role = LunRole::Claiming(Claim {
                    phase: ClaimPhase::Observe,
                    epoch: 0,
                    intent: false,
                    must_fence: max_known > 0,
                    stale_seq: None,
                    handover: false,
                    fence_proof: false,
                });
                let lun = self.luns[i].lun;
                self.log(Event::ClaimStarted { lun });
            } else if self.retry_at.is_none() {
                self.retry_at = Some(now.saturating_add(self.wait()));
            }
        }
    }

    pub(super) fn lapse(&mut self, now: Time) {
        self.lease_until = None;
        self.log(Event::LeaseExpired);
        if self.owns_any() {
            self.release_due = true;
        }
        for i in 0..self.luns.len() {
            match self.luns[i].role {
                LunRole::Primary => self.step_down(now, i, "lease expired"),
                LunRole::Claiming(c) if c.intent => self.abort_claim(now, i, "lease expired"),
                _ => {}
            }
        }
        // Claim again at once: the claim's own wait on the peer's heartbeat is delay enough.
        self.retry_at = None;
        self.consider_claims(now, true);
    }

    pub(super) fn enter_intent(&mut self, i: usize) {
        if let LunRole::Claiming(mut c) = self.luns[i].role {
            if c.intent {
                c.phase = ClaimPhase::Check;
            } else {
                c.phase = ClaimPhase::Intent;
                c.intent = true;
                c.epoch = self.luns[i].epoch.saturating_add(1);
            }
            self.luns[i].role = LunRole::Claiming(c);
        }
    }

    pub(super) fn on_peer_slot(&mut self, now: Time, issued: Time, rec: &QuorumRecord) {
        for l in self.luns.iter_mut() {
            if let Some(s) = rec.lun(l.lun) {
                l.served = l.served.max(s.served);
            }
        }
        if self.join == Join::ReadPeer {
            self.join = Join::Done;
            self.log(Event::Joined { seq: self.seq });
            for l in self.luns.iter_mut() {
                if let Some(s) = rec.lun(l.lun) {
                    l.epoch = l.epoch.max(s.epoch);
                }
            }
            // Where the peer's slot shows ownership, this read already starts the claim wait.
            for i in 0..self.luns.len() {
                if self.should_claim(i) && rec.owns(self.luns[i].lun) {
                    self.luns[i].role = LunRole::Claiming(Claim {
                        phase: ClaimPhase::Observe,
                        epoch: 0,
                        intent: false,
                        must_fence: true,
                        stale_seq: None,
                        handover: false,
                        fence_proof: false,
                    });
                    let lun = self.luns[i].lun;
                    self.log(Event::ClaimStarted { lun });
                    self.watch_owner(now, i, rec.seq);
                }
            }
            self.consider_claims(now, false);
            self.finish_disk_rejoin();
            return;
        }
        for i in 0..self.luns.len() {
            let lun = self.luns[i].lun;
            let LunRole::Claiming(mut c) = self.luns[i].role else {
                continue;
            };
            let peer = rec.lun(lun);
            let peer_owns = peer.is_some_and(|p| p.own);
            let peer_epoch = peer.map_or(0, |p| p.epoch);
            match c.phase {
                ClaimPhase::Observe => {
                    self.luns[i].epoch = self.luns[i].epoch.max(peer_epoch);
                    if peer_epoch > 0 {
                        c.must_fence = true;
                    }
                    if peer_owns {
                        c.must_fence = true;
                        self.luns[i].role = LunRole::Claiming(c);
                        self.watch_owner(now, i, rec.seq);
                    } else {
                        self.luns[i].role = LunRole::Claiming(c);
                        self.enter_intent(i);
                    }
                }
                ClaimPhase::Recheck { seq, until } if issued < until && rec.seq == seq => {
                    // A poll before the wait is over: keep waiting.
                    let next = now.saturating_add(self.cfg.timing.renew_ms).min(until);
                    c.phase = ClaimPhase::Wait { seq, until, next };
                    self.luns[i].role = LunRole::Claiming(c);
                }
                ClaimPhase::Recheck { seq, until: _ } => {
                    if rec.seq == seq {
                        // Unchanged for a full claim wait: the peer's lease has certainly expired.
                        c.stale_seq = Some(seq);
                        self.luns[i].role = LunRole::Claiming(c);
                        if c.intent {
                            self.claim_ready(now, i, peer);
                        } else {
                            self.luns[i].epoch = self.luns[i].epoch.max(peer_epoch);
                            self.enter_intent(i);
                        }
                    } else if peer_owns {
                        self.luns[i].epoch = self.luns[i].epoch.max(peer_epoch);
                        // The peer is alive: watch its new heartbeat value from now on, for a
                        // full claim wait (a live owner is never fenced on a stall of one
                        // heartbeat). Over the link, a peer that proves its primacy ends the
                        // claim.
                        c.fence_proof = false;
                        c.phase = self.watch(now, rec.seq);
                        self.luns[i].role = LunRole::Claiming(c);
                    } else if c.intent {
                        self.claim_ready(now, i, peer);
                    } else {
                        self.luns[i].epoch = self.luns[i].epoch.max(peer_epoch);
                        self.enter_intent(i);
                    }
                }
                ClaimPhase::Check => {
                    if peer_owns && Some(rec.seq) != c.stale_seq {
                        c.must_fence = true;
                        if self.cfg.ha_id == 2 {
                            self.abort_claim(now, i, "concurrent claim by the peer");
                        } else {
                            // Keep the claim recorded and poll the peer's slot: it gives up and
                            // clears its claim, or its heartbeat stops for a full claim wait.
                            c.fence_proof = false;
                            c.phase = self.watch(now, rec.seq);
                            self.luns[i].role = LunRole::Claiming(c);
                        }
                    } else {
                        self.claim_ready(now, i, peer);
                    }
                }
                _ => {}
            }
        }
    }

    /// The claim of LUN index `i` found the peer's slot owning the LUN with heartbeat `seq`
    /// (a read that returned at `now`). Where a fence can confirm the takeover
    /// ([`Node::fence_delay`]), the claim watches the heartbeat for the fence delay only and then
    /// fences; with no delay it records its intent at once. Otherwise it waits out the peer's
    /// lease ([`Node::watch`]).
    pub(super) fn watch_owner(&mut self, now: Time, i: usize, seq: u64) {
        let LunRole::Claiming(mut c) = self.luns[i].role else {
            return;
        };
        match self.fence_delay(i) {
            Some(0) => {
                c.fence_proof = true;
                c.stale_seq = Some(seq);
                self.luns[i].role = LunRole::Claiming(c);
                self.enter_intent(i);
            }
            Some(d) => {
                c.fence_proof = true;
                let until = now.saturating_add(d);
                c.phase = ClaimPhase::Wait {
                    seq,
                    until,
                    next: now.saturating_add(self.cfg.timing.renew_ms).min(until),
                };
                self.luns[i].role = LunRole::Claiming(c);
            }
            None => {
                c.fence_proof = false;
                c.phase = self.watch(now, seq);
                self.luns[i].role = LunRole::Claiming(c);
            }
        }
    }

    /// Starts a claim wait on the peer's heartbeat value `seq`, seen by a read that returned at
    /// `now`; the slot is polled every renew interval.
    pub(super) fn watch(&self, now: Time, seq: u64) -> ClaimPhase {
        let until = now.saturating_add(self.wait());
        ClaimPhase::Wait {
            seq,
            until,
            next: now.saturating_add(self.cfg.timing.renew_ms).min(until),
        }
    }

    /// The claim for LUN index `i` has passed its check against the peer's slot `peer`. If some
    /// controller served at the claim's epoch or later while the claim waited (a claim whose
    /// intent stalled), or the peer's slot still holds the LUN at such an epoch, the claim
    /// announces a fresh intent above it first: no epoch ever has two primaries.
    pub(super) fn claim_ready(&mut self, now: Time, i: usize, peer: Option<SlotLun>) {
        let LunRole::Claiming(mut c) = self.luns[i].role else {
            return;
        };
        let mut bar = self.luns[i].served;
        if let Some(p) = peer {
            bar = bar.max(p.served);
            if p.own {
                bar = bar.max(p.epoch);
            }
        }
        if c.epoch <= bar {
            self.luns[i].epoch = self.luns[i].epoch.max(bar);
            c.intent = false;
            self.luns[i].role = LunRole::Claiming(c);
            self.enter_intent(i);
        } else {
            self.claim_checked(now, i);
        }
    }

    /// The claim for LUN index `i` has no rival: fence if needed, then serve.
    pub(super) fn claim_checked(&mut self, now: Time, i: usize) {
        let LunRole::Claiming(mut c) = self.luns[i].role else {
            return;
        };
        let fence = c.must_fence && !c.handover && !self.peer_down;
        if fence && self.cfg.fencing == Fencing::Unawaited {
            // The negative control: ask for the fence and serve without waiting for it.
            if self.fence.is_none() {
                self.fence = Some(FenceWhy::Claim);
                self.log(Event::FencingPeer);
                self.out.push_back(Output::FencePeer);
            }
            if self.lease_valid(now) {
                self.become_primary(now, i, c.epoch);
            } else {
                self.abort_claim(now, i, "lease expired during the claim");
            }
        } else if fence && (self.cfg.fencing == Fencing::Agent || c.fence_proof) {
            c.phase = ClaimPhase::Fence;
            self.luns[i].role = LunRole::Claiming(c);
            if self.fence.is_none() {
                self.fence = Some(FenceWhy::Claim);
                self.log(Event::FencingPeer);
                self.out.push_back(Output::FencePeer);
            }
        } else if self.lease_valid(now) {
            self.become_primary(now, i, c.epoch);
        } else {
            self.abort_claim(now, i, "lease expired during the claim");
        }
    }

    pub(super) fn on_fence_result(&mut self, now: Time, ok: bool) {
        if self.fence.take().is_none() {
            return;
        }
        if ok {
            self.log(Event::PeerFenced);
            self.peer_down = true;
            for l in self.luns.iter_mut() {
                l.peer_primary = false;
            }
            self.timers[TimerKind::PeerLease.index()] = None;
            if self.suspended {
                self.suspended = false;
                for i in 0..self.luns.len() {
                    if self.luns[i].role == LunRole::Primary {
                        let lun = self.luns[i].lun;
                        self.out.push_back(Output::ResumeIo { lun });
                    }
                }
            }
            for i in 0..self.luns.len() {
                if let LunRole::Claiming(c) = self.luns[i].role {
                    if c.phase == ClaimPhase::Fence {
                        if self.lease_valid(now) {
                            self.become_primary(now, i, c.epoch);
                        } else {
                            self.abort_claim(now, i, "lease expired while fencing");
                        }
                    }
                }
            }
        } else {
            self.log(Event::FenceFailed);
            for i in 0..self.luns.len() {
                if let LunRole::Claiming(c) = self.luns[i].role {
                    if c.phase == ClaimPhase::Fence {
                        self.abort_claim(now, i, "fencing failed");
                    }
                }
            }
            if self.suspended {
                // Try again at the next claim timer.
                let at = now.saturating_add(self.cfg.timing.renew_ms);
                self.retry_at = Some(self.retry_at.map_or(at, |r| r.min(at)));
            }
        }
    }
}
