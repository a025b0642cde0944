//! The session registry: every logged-in connection of the daemon, how to reach it, and the
//! numbers connections draw (connection ids, TSIHs).
//!
//! A connection registers when its login completes and leaves when it ends. Other connections
//! reach it through [`ConnMsg`]s: a reset from another nexus aborts its tasks, a reinstated
//! session or a cold target reset closes it, and a task management function that waited for
//! the HA primary finishes. Touches only its own maps and the channels of the connections.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use duet_core::iscsi::{SessionIdentity, TmfResponse, TsihAllocator};
use tokio::sync::mpsc;

use crate::sync::{self, Mutex};

/// What other connections may be told to do.
#[derive(Debug, Clone)]
pub enum ConnMsg {
    /// Abort this session's tasks on the LUN (all when `None`): a reset from another nexus.
    AbortTasks(Option<u16>),
    /// Close the connection now (session reinstated, cold reset).
    Close,
    /// A task management function finished after the primary confirmed its part.
    TmfDone { itt: u32, resp: TmfResponse },
}

struct SessionEntry {
    identity: SessionIdentity,
    tx: mpsc::UnboundedSender<ConnMsg>,
}

/// See the [module documentation](self).
pub struct Sessions {
    tsih: Mutex<TsihAllocator>,
    sessions: Mutex<HashMap<u64, SessionEntry>>,
    next_conn: AtomicU64,
}

impl Default for Sessions {
    fn default() -> Self {
        Sessions::new()
    }
}

impl Sessions {
    /// An empty registry.
    pub fn new() -> Sessions {
        Sessions {
            tsih: Mutex::new(TsihAllocator::new()),
            sessions: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
        }
    }

    /// A new connection id (for the log and the registry).
    pub fn next_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// A free TSIH for a new connection's login, or `None` when all are in use.
    pub fn allocate_tsih(&self) -> Option<u16> {
        sync::lock(&self.tsih).allocate()
    }

    /// Gives back a TSIH drawn by [`Sessions::allocate_tsih`].
    pub fn release_tsih(&self, tsih: u16) {
        sync::lock(&self.tsih).release(tsih);
    }

    /// Registers connection `id`, whose login completed as `identity`, reachable through `tx`.
    /// Session reinstatement: an older session of the same nexus is told to close.
    pub fn register(&self, id: u64, identity: SessionIdentity, tx: mpsc::UnboundedSender<ConnMsg>) {
        let mut sessions = sync::lock(&self.sessions);
        for s in sessions.values() {
            if s.identity.same_nexus(&identity) {
                let _ = s.tx.send(ConnMsg::Close);
            }
        }
        sessions.insert(id, SessionEntry { identity, tx });
    }

    /// Removes connection `id` (it ended).
    pub fn remove(&self, id: u64) {
        sync::lock(&self.sessions).remove(&id);
    }

    /// Tells every session on `target` but connection `except` to do `msg`.
    pub fn broadcast(&self, except: u64, target: &str, msg: ConnMsg) {
        for (id, s) in sync::lock(&self.sessions).iter() {
            if *id != except
                && s.identity
                    .target_name
                    .as_deref()
                    .is_some_and(|t| t.eq_ignore_ascii_case(target))
            {
                let _ = s.tx.send(msg.clone());
            }
        }
    }
}
