//! The arbiter's side of [`Node`]: the slot record this node writes, the next quorum operation
//! to issue (`drive`) and what a result means for the join, the lease and the claims
//! waiting on a write. The protocol is in the module documentation of [`crate::ha`].
//! Touches only the node's own fields and its output queue.

use super::*;

impl Node {
    pub(super) fn my_record(&self) -> QuorumRecord {
        QuorumRecord {
            seq: self.seq + 1,
            luns: self
                .luns
                .iter()
                .map(|l| match l.role {
                    LunRole::Primary => SlotLun {
                        lun: l.lun,
                        epoch: l.epoch,
                        own: true,
                        served: l.served,
                    },
                    LunRole::Claiming(c) if c.intent => SlotLun {
                        lun: l.lun,
                        epoch: c.epoch.max(l.epoch),
                        own: true,
                        served: l.served,
                    },
                    _ => SlotLun {
                        lun: l.lun,
                        epoch: l.epoch,
                        own: false,
                        served: l.served,
                    },
                })
                .collect(),
        }
    }

    pub(super) fn on_quorum(&mut self, now: Time, r: QuorumResult) {
        let Some(p) = self.pending.take() else {
            return;
        };
        let me = self.cfg.ha_id;
        let peer = peer_of(me);
        match (p, r) {
            (Pending::ReadOwn, QuorumResult::ReadOk { slot, record }) if slot == me => {
                if let Some(rec) = record {
                    // (max: on a rejoin this node may have written beyond what the slot shows,
                    // with a write that failed and may still land.)
                    self.seq = self.seq.max(rec.seq);
                    for l in self.luns.iter_mut() {
                        if let Some(s) = rec.lun(l.lun) {
                            l.epoch = l.epoch.max(s.epoch);
                            l.served = l.served.max(s.served);
                        }
                    }
                }
                self.join = Join::ReadPeer;
            }
            (Pending::ReadPeer { issued }, QuorumResult::ReadOk { slot, record })
                if slot == peer =>
            {
                let rec = record.unwrap_or_default();
                self.on_peer_slot(now, issued, &rec);
            }
            (Pending::Write { issued, record }, QuorumResult::WriteOk { slot }) if slot == me => {
                self.seq = self.seq.max(record.seq);
                self.stop_slot_written(&record);
                let until = issued.saturating_add(self.cfg.timing.lease_ms);
                if now < until {
                    let cur = self.lease_until.filter(|&t| t > now);
                    let new = cur.map_or(until, |c| c.max(until));
                    self.lease_until = Some(new);
                    self.set_timer(TimerKind::Lease, new);
                }
                let leased = self.lease_valid(now);
                for i in 0..self.luns.len() {
                    let lun = self.luns[i].lun;
                    match self.luns[i].role {
                        LunRole::Claiming(mut c)
                            if c.phase == ClaimPhase::Intent && record.owns(lun) && leased =>
                        {
                            c.phase = ClaimPhase::Check;
                            self.luns[i].role = LunRole::Claiming(c);
                        }
                        LunRole::Secondary if self.luns[i].handing_over && !record.owns(lun) => {
                            self.luns[i].handing_over = false;
                            let epoch = self.luns[i].epoch;
                            if self.link == 2 {
                                // Handover first: a peer that saw the step-down before it could
                                // start an ordinary claim (and fence) before the Handover came.
                                self.out
                                    .push_back(Output::SendPeer(HaMsg::Handover { lun, epoch }));
                                self.push_state(now);
                            }
                            self.log(Event::HandoverSent { lun, epoch });
                        }
                        _ => {}
                    }
                }
            }
            (p, QuorumResult::Failed { reason, .. }) => {
                if let Pending::Write { record, .. } = &p {
                    // A failed write may still have landed: never write this heartbeat value
                    // again, or a peer watching the slot could take new content for old.
                    self.seq = self.seq.max(record.seq);
                }
                self.log(Event::QuorumFailed { reason });
                self.backoff = true;
                if self.timers[TimerKind::Renew.index()].is_none() {
                    self.set_timer(
                        TimerKind::Renew,
                        now.saturating_add(self.cfg.timing.renew_ms),
                    );
                }
            }
            (p, _) => {
                // A result that does not answer the outstanding operation: ignore it.
                self.pending = Some(p);
                return;
            }
        }
        if self.join == Join::ReadPeer && self.pending.is_none() {
            // Joining continues in drive().
        }
    }

    /// Issues the next quorum operation if none is outstanding, and re-arms the claim timer.
    pub(super) fn drive(&mut self, now: Time) {
        if self.automatic() && self.cfg.ha_enabled() && self.pending.is_none() && !self.backoff {
            let me = self.cfg.ha_id;
            let peer = peer_of(me);
            let need_intent = self
                .luns
                .iter()
                .any(|l| matches!(l.role, LunRole::Claiming(c) if c.phase == ClaimPhase::Intent));
            let need_read = self.luns.iter().any(|l| {
                matches!(l.role, LunRole::Claiming(c) if matches!(
                    c.phase,
                    ClaimPhase::Observe | ClaimPhase::Check | ClaimPhase::Recheck { .. }
                ))
            });
            let handing_over = self.luns.iter().any(|l| l.handing_over);
            match self.join {
                Join::ReadOwn => {
                    self.pending = Some(Pending::ReadOwn);
                    self.out
                        .push_back(Output::Quorum(QuorumOp::Read { slot: me }));
                }
                Join::ReadPeer => {
                    self.pending = Some(Pending::ReadPeer { issued: now });
                    self.out
                        .push_back(Output::Quorum(QuorumOp::Read { slot: peer }));
                }
                Join::Done => {
                    if (self.write_due && self.owns_any())
                        || need_intent
                        || handing_over
                        || self.release_due
                    {
                        let record = self.my_record();
                        self.write_due = false;
                        self.release_due = false;
                        self.set_timer(
                            TimerKind::Renew,
                            now.saturating_add(self.cfg.timing.renew_ms),
                        );
                        self.out.push_back(Output::Quorum(QuorumOp::Write {
                            slot: me,
                            record: record.clone(),
                        }));
                        self.pending = Some(Pending::Write {
                            issued: now,
                            record,
                        });
                    } else if need_read {
                        self.pending = Some(Pending::ReadPeer { issued: now });
                        self.out
                            .push_back(Output::Quorum(QuorumOp::Read { slot: peer }));
                    }
                }
            }
        }
        // The claim timer: the earliest claim wait or retry.
        let mut next = self.retry_at;
        for l in &self.luns {
            if let LunRole::Claiming(c) = l.role {
                if let ClaimPhase::Wait { next: at, .. } = c.phase {
                    next = Some(next.map_or(at, |n: Time| n.min(at)));
                }
            }
        }
        match next {
            Some(t) => self.set_timer(TimerKind::Claim, t),
            None => self.timers[TimerKind::Claim.index()] = None,
        }
    }
}
