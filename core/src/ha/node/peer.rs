//! The peer link: the link state, the login ([`HaMsg::Hello`]), the peer's messages (its
//! state, probes and hand-overs) and the read lease on the peer's primacy. Part of [`Node`];
//! touches only the node's own state and its output queue.

use super::*;

impl Node {
    pub(super) fn states_msg(&self, at: Option<Time>, now: Time) -> HaMsg {
        let valid_for = if self.luns.iter().any(|l| l.releasing.is_some()) {
            // A hand-over is asking the peer to stop relying on this node: promise nothing.
            0
        } else if self.automatic() {
            match self.lease_until {
                Some(t) if t > now && !self.suspended => t - now,
                _ => 0,
            }
        } else if self.suspended {
            0
        } else {
            u64::MAX
        };
        HaMsg::State {
            at,
            valid_for,
            luns: self
                .luns
                .iter()
                .map(|l| LunStatus {
                    lun: l.lun,
                    epoch: l.epoch,
                    primary: l.role == LunRole::Primary && !self.suspended,
                })
                .collect(),
        }
    }

    pub(super) fn push_state(&mut self, now: Time) {
        // While a LUN is handed over, the peer hears of the step-down only together with the
        // Handover (after this node's slot stops owning the LUN): told earlier, the peer would
        // start an ordinary claim, and that one fences.
        if self.link == 2 && !self.luns.iter().any(|l| l.handing_over) {
            let m = self.states_msg(None, now);
            self.out.push_back(Output::SendPeer(m));
        }
    }

    pub(super) fn set_link(&mut self, to: u8) {
        if self.link != to {
            let from = self.link;
            self.link = to;
            self.link_up_at = None;
            self.log(Event::LinkChanged { from, to });
        }
    }

    pub(super) fn on_link_up(&mut self, now: Time) {
        let _ = now;
        self.link_closed = false;
        self.out.push_back(Output::SendPeer(HaMsg::Hello {
            version: PROTOCOL_VERSION,
            ha_id: self.cfg.ha_id,
            mode: self.cfg.mode,
        }));
    }

    pub(super) fn on_link_down(&mut self, now: Time, closed: bool) {
        self.link_closed = closed;
        if self.link == 2 {
            self.set_link(1);
        }
        self.timers[TimerKind::PeerLease.index()] = None;
        self.timers[TimerKind::Probe.index()] = None;
        for l in self.luns.iter_mut() {
            l.peer_primary = false;
            l.awaiting_handover = false;
        }
        // A hand-over waiting for the peer's answer: without the peer there is none. A stop
        // steps down all the same; a switchover or failback is off.
        for i in 0..self.luns.len() {
            if let Some((reason, _)) = self.luns[i].releasing.take() {
                if self.stopping.is_some() {
                    if self.automatic() {
                        self.release_due = true;
                    }
                    self.luns[i].stop_handed = false;
                    self.step_down(now, i, reason);
                } else {
                    let lun = self.luns[i].lun;
                    self.log(Event::Refused {
                        what: format!("hand-over of LUN {lun}: the HA link went down"),
                    });
                }
            }
        }
        match self.cfg.policy {
            Policy::Naive => {
                for i in 0..self.luns.len() {
                    if self.luns[i].role != LunRole::Primary && !self.fenced_at_disk() {
                        let e = self.luns[i].epoch.saturating_add(1);
                        self.become_primary(now, i, e);
                    }
                }
            }
            Policy::Manual | Policy::Automatic => {
                // Mode 1: the secondary writes to the backend under grants from the primary; with
                // the link gone the primary cannot know which grants are still in use, so it
                // suspends I/O until the peer is fenced.
                if self.cfg.mode == HaMode::ActiveActiveShared
                    && self.cfg.fencing == Fencing::Agent
                    && self.luns.iter().any(|l| l.role == LunRole::Primary)
                    && !self.peer_down
                {
                    if !self.suspended {
                        self.suspended = true;
                        for l in 0..self.luns.len() {
                            if self.luns[l].role == LunRole::Primary {
                                let lun = self.luns[l].lun;
                                self.out.push_back(Output::FenceIo { lun });
                            }
                        }
                    }
                    if self.fence.is_none() {
                        self.fence = Some(FenceWhy::Link);
                        self.log(Event::FencingPeer);
                        self.out.push_back(Output::FencePeer);
                    }
                }
                self.consider_claims(now, true);
            }
        }
    }

    pub(super) fn on_msg(&mut self, now: Time, msg: HaMsg) {
        match msg {
            HaMsg::Hello {
                version,
                ha_id,
                mode,
            } => {
                let reason = if version != PROTOCOL_VERSION {
                    Some(format!(
                        "protocol version {version} (ours is {PROTOCOL_VERSION})"
                    ))
                } else if mode != self.cfg.mode {
                    Some(format!(
                        "peer ha_mode {} differs from ours ({})",
                        mode.number(),
                        self.cfg.mode.number()
                    ))
                } else if ha_id == self.cfg.ha_id || !(1..=2).contains(&ha_id) {
                    Some(format!("peer ha_id {ha_id} (ours is {})", self.cfg.ha_id))
                } else {
                    None
                };
                if let Some(reason) = reason {
                    self.log(Event::LinkRefused { reason });
                    return;
                }
                if self.link == 2 {
                    return;
                }
                self.set_link(2);
                self.peer_down = false;
                self.push_state(now);
                if self.read_lease_needed() {
                    self.send_probe(now);
                } else if !self.automatic() && self.fenced_at_disk() {
                    // Manual failover rejoins after a fence at the disk with the peer's state.
                    self.out
                        .push_back(Output::SendPeer(HaMsg::Probe { at: now }));
                }
            }
            _ if self.link != 2 => {}
            HaMsg::Probe { at } => {
                let m = self.states_msg(Some(at), now);
                self.out.push_back(Output::SendPeer(m));
            }
            HaMsg::State {
                at,
                valid_for,
                luns,
            } => self.on_state(now, at, valid_for, &luns),
            HaMsg::Handover { lun, epoch } => self.on_handover(now, lun, epoch),
            HaMsg::Release { lun, epoch } => self.on_release(lun, epoch),
            HaMsg::Released { lun, epoch } => self.on_released(now, lun, epoch),
            HaMsg::Leaving => self.on_peer_leaving(now),
        }
    }

    /// Probes the peer if this node is secondary for some LUN; probing goes on every renew
    /// interval while the link is up.
    pub(super) fn send_probe(&mut self, now: Time) {
        if self.luns.iter().any(|l| l.role != LunRole::Primary) {
            self.out
                .push_back(Output::SendPeer(HaMsg::Probe { at: now }));
        }
        self.set_timer(
            TimerKind::Probe,
            now.saturating_add(self.cfg.timing.renew_ms),
        );
    }

    pub(super) fn on_state(
        &mut self,
        now: Time,
        at: Option<Time>,
        valid_for: u64,
        luns: &[LunStatus],
    ) {
        let mut lease_for_peer = false;
        let mut lost_primary = false;
        for s in luns {
            let Some(i) = self.luns.iter().position(|l| l.lun == s.lun) else {
                continue;
            };
            let ours = self.luns[i].epoch;
            if s.epoch < ours {
                self.log(Event::StaleMessage {
                    epoch: s.epoch,
                    ours,
                });
                continue;
            }
            if s.primary && s.epoch <= self.luns[i].relinquished {
                // The peer released this LUN: an older message of its primacy counts no more.
                continue;
            }
            if s.primary {
                if self.luns[i].role == LunRole::Primary {
                    if s.epoch > ours {
                        self.step_down(now, i, "peer is primary at a newer epoch");
                    } else {
                        // Both primary at one epoch cannot happen under the automatic policy;
                        // keep ours and let the peer resolve it by the same rule.
                        continue;
                    }
                }
                if let LunRole::Claiming(c) = self.luns[i].role {
                    if !c.intent {
                        self.luns[i].role = LunRole::Secondary;
                    } else if at.is_some() && valid_for > 0 {
                        // The peer proves that it serves under a lease: give the claim up.
                        self.abort_claim(now, i, "the peer is primary");
                    }
                }
                self.luns[i].epoch = s.epoch;
                self.luns[i].served = self.luns[i].served.max(s.epoch);
                self.luns[i].peer_primary = true;
                lease_for_peer = true;
            } else {
                self.luns[i].epoch = s.epoch;
                if self.luns[i].peer_primary && s.epoch > 0 {
                    // The primary stepped down (lost its lease): take over without the start-up
                    // delay of a non-preferred node.
                    lost_primary = true;
                }
                self.luns[i].peer_primary = false;
            }
        }
        if self.automatic()
            && at.is_none()
            && lease_for_peer
            && self.read_lease_needed()
            && self.timers[TimerKind::PeerLease.index()].is_none()
        {
            // The peer just became primary (a hand-over, a takeover): ask for its read lease
            // now rather than at the next probe round, so that this controller reports itself
            // Active/Non-optimized again after one round trip (a host's multipath would
            // otherwise fail this path on Transitioning meanwhile).
            self.send_probe(now);
        }
        if self.automatic() {
            if let Some(at) = at {
                if lease_for_peer && valid_for > 0 {
                    let until = at
                        .saturating_add(valid_for)
                        .saturating_sub(self.cfg.timing.margin_ms);
                    if until > now {
                        let cur = self.timers[TimerKind::PeerLease.index()].unwrap_or(0);
                        if until > cur {
                            self.set_timer(TimerKind::PeerLease, until);
                        }
                    }
                }
            }
        }
        if !self.automatic() {
            // Manual and naive: the preferred node takes LUNs that have no primary when the
            // pair forms.
            for i in 0..self.luns.len() {
                let l = self.luns[i];
                if l.role == LunRole::Secondary
                    && !l.peer_primary
                    && !self.fenced_at_disk()
                    && self.preferred(&l)
                    && luns.iter().any(|s| s.lun == l.lun && !s.primary)
                {
                    self.become_primary(now, i, l.epoch.saturating_add(1));
                }
            }
            // Under manual failover the peer's state is the rejoin after a fence at the disk.
            self.finish_disk_rejoin();
        } else {
            self.consider_claims(now, lost_primary);
            self.consider_failback(now);
        }
    }

    pub(super) fn on_handover(&mut self, now: Time, lun: LunNumber, epoch: u64) {
        let Some(i) = self.luns.iter().position(|l| l.lun == lun) else {
            return;
        };
        if epoch < self.luns[i].epoch {
            let ours = self.luns[i].epoch;
            self.log(Event::StaleMessage { epoch, ours });
            return;
        }
        if self.luns[i].role == LunRole::Primary {
            return;
        }
        if self.fenced_at_disk() || self.stopping.is_some() {
            let why = if self.stopping.is_some() {
                "this controller is stopping"
            } else {
                "this controller is fenced at the disk"
            };
            self.log(Event::Refused {
                what: format!("hand-over of LUN {lun}: {why}"),
            });
            return;
        }
        self.luns[i].epoch = epoch;
        self.luns[i].served = self.luns[i].served.max(epoch);
        self.luns[i].peer_primary = false;
        self.luns[i].awaiting_handover = false;
        if self.automatic() {
            self.luns[i].role = LunRole::Claiming(Claim {
                phase: ClaimPhase::Intent,
                epoch: 0,
                intent: false,
                must_fence: false,
                stale_seq: None,
                handover: true,
                fence_proof: false,
            });
            self.enter_intent(i);
        } else {
            self.become_primary(now, i, epoch.saturating_add(1));
        }
    }
}
