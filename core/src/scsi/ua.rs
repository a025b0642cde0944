//! Unit-attention queues, one per I_T nexus of a logical unit (SPC-4 5.14 / PROTOCOL §2).
//!
//! A nexus the LU has never seen gets 29/00 POWER ON, RESET OR BUS DEVICE RESET OCCURRED on its
//! first command. Conditions are reported highest priority first (29h, then 2Ah, then 3Fh, then
//! the rest in arrival order), each once; a condition already pending is not queued twice.

use super::types::Nexus;
use crate::sense::SenseCode;
use std::collections::BTreeMap;

/// Most conditions kept per nexus; beyond that the oldest lowest-priority one is dropped.
const MAX_PENDING: usize = 16;

fn priority(c: &SenseCode) -> u8 {
    match c.asc {
        0x29 => 0,
        0x2A => 1,
        0x3F => 2,
        _ => 3,
    }
}

/// Pending unit attentions per nexus.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct UaQueues {
    queues: BTreeMap<Nexus, Vec<SenseCode>>,
}

impl UaQueues {
    /// Make sure `nexus` is known; a new nexus starts with 29/00 pending.
    pub fn touch(&mut self, nexus: &Nexus) {
        if !self.queues.contains_key(nexus) {
            self.queues
                .insert(nexus.clone(), vec![SenseCode::UA_POWER_ON_RESET]);
        }
    }

    /// Forget a nexus (it gets 29/00 again if it comes back).
    pub fn forget(&mut self, nexus: &Nexus) {
        self.queues.remove(nexus);
    }

    fn push(q: &mut Vec<SenseCode>, ua: SenseCode) {
        if q.contains(&ua) {
            return;
        }
        // A reset condition supersedes any pending reset condition.
        if ua.asc == 0x29 {
            q.retain(|c| c.asc != 0x29);
        }
        let p = priority(&ua);
        let at = q.iter().position(|c| priority(c) > p).unwrap_or(q.len());
        q.insert(at, ua);
        if q.len() > MAX_PENDING {
            // Drop the oldest condition of the lowest priority present.
            if let Some(low) = q.last().map(priority) {
                if let Some(i) = q.iter().position(|c| priority(c) == low) {
                    q.remove(i);
                }
            }
        }
    }

    /// Queue `ua` for one nexus (which becomes known).
    pub fn raise(&mut self, nexus: &Nexus, ua: SenseCode) {
        self.touch(nexus);
        if let Some(q) = self.queues.get_mut(nexus) {
            Self::push(q, ua);
        }
    }

    /// Queue `ua` for every known nexus except `except`.
    pub fn raise_all(&mut self, ua: SenseCode, except: Option<&Nexus>) {
        for (n, q) in self.queues.iter_mut() {
            if Some(n) != except {
                Self::push(q, ua);
            }
        }
    }

    /// Removes a pending `ua` of `nexus`, if any.
    pub fn clear(&mut self, nexus: &Nexus, ua: SenseCode) {
        if let Some(q) = self.queues.get_mut(nexus) {
            q.retain(|c| *c != ua);
        }
    }

    /// The highest-priority pending condition of `nexus`, removed.
    pub fn take(&mut self, nexus: &Nexus) -> Option<SenseCode> {
        let q = self.queues.get_mut(nexus)?;
        if q.is_empty() {
            None
        } else {
            Some(q.remove(0))
        }
    }

    /// The pending conditions of `nexus`, highest priority first.
    pub fn pending(&self, nexus: &Nexus) -> &[SenseCode] {
        self.queues.get(nexus).map(|q| &q[..]).unwrap_or(&[])
    }
}
