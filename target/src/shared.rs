//! What every connection of the daemon shares: the configuration, the targets and their LUs,
//! the iSCSI configuration per portal group, the session registry, the statistics, the
//! connection threads and the [`Pair`] that command execution consults (the HA runtime once it
//! has started, [`Standalone`] until then or without HA).
//!
//! Built at start-up (`build::build`); touches nothing but what it holds.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use duet_core::iscsi::{IscsiConfig, Millis};
use duet_core::scsi::BlockStore;

use crate::config::Config;
use crate::exec::{Pair, Standalone};
use crate::lu::Target;
use crate::sessions::Sessions;
use crate::stats::Stats;
use crate::threads::ConnThreads;

/// State shared by every connection.
pub struct Shared {
    pub config: Config,
    pub targets: HashMap<String, Arc<Target>>,
    /// iSCSI configuration per portal group name.
    pub(crate) iscsi: HashMap<String, Arc<IscsiConfig>>,
    /// Every logged-in connection, TSIHs and connection ids.
    pub(crate) sessions: Sessions,
    epoch: Instant,
    /// The other controller of an HA pair, once its runtime has started ([`Shared::join_pair`]).
    pair: OnceLock<Arc<dyn Pair>>,
    /// What execution consults while `pair` is empty.
    standalone: Arc<dyn Pair>,
    /// Per-LUN and per-port I/O statistics (`duetctl stat`).
    pub stats: Arc<Stats>,
    /// The threads that run connections.
    pub(crate) threads: ConnThreads,
}

impl Shared {
    /// The shared state of a daemon serving `targets`, before any connection.
    pub(crate) fn new(
        config: Config,
        targets: HashMap<String, Arc<Target>>,
        iscsi: HashMap<String, Arc<IscsiConfig>>,
        threads: ConnThreads,
    ) -> Shared {
        Shared {
            config,
            targets,
            iscsi,
            sessions: Sessions::new(),
            epoch: Instant::now(),
            pair: OnceLock::new(),
            standalone: Arc::new(Standalone),
            stats: Arc::new(Stats::new()),
            threads,
        }
    }

    /// The runtime of the first connection thread.
    pub fn first_conn_thread(&self) -> tokio::runtime::Handle {
        self.threads.first()
    }

    /// Milliseconds since the daemon started (the connections' clock).
    pub(crate) fn now(&self) -> Millis {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The target named `name` (iSCSI names compare case-insensitively).
    pub fn target_by_name(&self, name: &str) -> Option<&Arc<Target>> {
        self.targets.get(&name.to_ascii_lowercase())
    }

    /// The other controller as execution sees it: the HA runtime, or [`Standalone`].
    pub fn pair(&self) -> &Arc<dyn Pair> {
        self.pair.get().unwrap_or(&self.standalone)
    }

    /// Makes `pair` (the HA runtime) the one execution consults. Fails if one already is.
    pub fn join_pair(&self, pair: Arc<dyn Pair>) -> Result<(), &'static str> {
        self.pair.set(pair).map_err(|_| "HA runtime started twice")
    }

    /// Flushes every backend (shutdown).
    pub fn flush_all(&self) {
        for t in self.targets.values() {
            for lu in t.luns.values() {
                if let Err(e) = lu.store.flush() {
                    tracing::error!(target = %t.name, lun = lu.number, "flush failed: {e}");
                }
            }
        }
    }
}
