//! Start-up glue of `duetd`: the HA runtime (quorum area, fencing agent, pid file, link), the
//! admin socket that `duetctl` talks to, and what `duetd check-config` says about `[ha]`.
//!
//! The pid file is written at start and left in place at exit: it names this process beyond
//! its pid, so the peer's process agent recognises a stopped controller as gone (a missing pid
//! file is a failed fence).

use duet_core::LunNumber;
use std::sync::Arc;

use duet_core::alua::AluaState;
use duet_core::ha::{peer_of, Policy, Role};
use tokio::sync::watch;

use crate::admin::{
    self, AdminApi, HaCounters, HaInfo, HaLunInfo, LunInfo, PortInfo, RoleArg, ShutdownRequests,
    ShutdownTicket,
};
use crate::config::Config;
use crate::ha::config::HaConfig;
use crate::ha::fence::{self, FenceAgent};
use crate::ha::pr_fence::PrMonitor;
use crate::ha::quorum::{Arbiter, FileQuorum};
use crate::ha::runtime::HaRuntime;
use crate::server::Shared;
use crate::stats::StatInfo;

/// Starts the HA runtime of a controller whose configuration has an `[ha]` section. Returns
/// `Ok(None)` without one.
pub fn start_ha(
    shared: &Arc<Shared>,
    shutdown: watch::Receiver<bool>,
) -> Result<Option<Arc<HaRuntime>>, String> {
    let Some(cfg) = shared.config.ha.clone() else {
        return Ok(None);
    };
    for w in cfg.warnings() {
        tracing::warn!("{w}");
    }
    let arbiter: Arc<dyn Arbiter> = match &cfg.quorum {
        Some(path) => Arc::new(
            FileQuorum::open(path, cfg.quorum_create)
                .map_err(|e| format!("quorum area {}: {e}", path.display()))?,
        ),
        None => Arc::new(NoArbiter),
    };
    if let Some(p) = &cfg.pidfile {
        fence::write_pidfile(p).map_err(|e| format!("pid file {}: {e}", p.display()))?;
    }
    tracing::info!(
        ha_id = cfg.id,
        mode = cfg.mode.number(),
        failover = ?cfg.failover,
        quorum = %arbiter.describe(),
        "HA: starting"
    );
    let agent = cfg.fencing.clone();
    let rt = HaRuntime::start(
        shared.targets.values(),
        (shared.first_conn_thread(), shared.config.poll_us),
        cfg,
        arbiter,
        agent,
        shutdown,
    )
    .map_err(|e| e.to_string())?;
    shared
        .join_pair(rt.clone())
        .map_err(|e| format!("HA: {e}"))?;
    Ok(Some(rt))
}

/// With `fencing = "scsi-pr"`, joins the pair at the shared disks before the controller serves:
/// registers this controller's key on the quorum device and every LUN's backing device and makes
/// sure the pair holds their reservations (`crate::ha::pr_fence`). An error stops the start.
/// Returns the agent's monitor (what `duetctl ha` shows), refreshed until `shutdown`.
pub async fn join_disks(
    shared: &Arc<Shared>,
    shutdown: watch::Receiver<bool>,
) -> Result<Option<Arc<PrMonitor>>, String> {
    let Some(cfg) = &shared.config.ha else {
        return Ok(None);
    };
    let FenceAgent::ScsiPr(pr) = &cfg.fencing else {
        return Ok(None);
    };
    let m = PrMonitor::join(pr, cfg.fence_timeout())
        .await
        .map_err(|e| format!("scsi-pr: cannot join the pair at the disks: {e}"))?;
    m.spawn_refresh(shutdown);
    Ok(Some(m))
}

/// What `duetd check-config` prints about an `[ha]` section: the section in one line, which
/// deployment its fencing agent fits, and the start-up warnings.
pub fn describe_ha(ha: &HaConfig) -> Vec<String> {
    let mut lines = vec![
        format!(
            "ha: id {} mode {} role {:?} peer {} failover {:?} fencing {} quorum {}",
            ha.id,
            ha.mode.number(),
            ha.role,
            ha.peer,
            ha.failover,
            ha.fencing,
            ha.quorum
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "(none)".into())
        ),
        format!("fencing agent {}", ha.fencing.deployment()),
    ];
    lines.extend(ha.warnings().into_iter().map(|w| format!("warning: {w}")));
    lines
}

/// `duetd check-config --json`: the validated configuration, whose `ha` object also carries
/// `fencing_deployment` (the paragraph of [`describe_ha`] on the agent's deployment).
pub fn config_json(cfg: &Config) -> serde_json::Result<serde_json::Value> {
    let mut v = serde_json::to_value(cfg)?;
    if let (Some(ha), Some(obj)) = (&cfg.ha, v.get_mut("ha").and_then(|h| h.as_object_mut())) {
        obj.insert(
            "fencing_deployment".into(),
            serde_json::Value::String(ha.fencing.deployment().into()),
        );
    }
    Ok(v)
}

/// The arbiter of a pair without a quorum area (manual failover only): every access fails, so
/// the node never claims by itself.
struct NoArbiter;

impl Arbiter for NoArbiter {
    fn read(
        &self,
        _slot: u8,
    ) -> Result<Option<duet_core::ha::QuorumRecord>, crate::ha::quorum::QuorumError> {
        Err(crate::ha::quorum::QuorumError::Unavailable(
            "no quorum area configured".into(),
        ))
    }
    fn write(
        &self,
        _slot: u8,
        _rec: &duet_core::ha::QuorumRecord,
    ) -> Result<(), crate::ha::quorum::QuorumError> {
        Err(crate::ha::quorum::QuorumError::Unavailable(
            "no quorum area configured".into(),
        ))
    }
    fn describe(&self) -> String {
        "none".into()
    }
}

/// `duetctl`'s view of a running daemon.
pub struct DaemonAdmin {
    pub shared: Arc<Shared>,
    /// The HA runtime, when the configuration has an `[ha]` section and it has started.
    pub ha: Option<Arc<HaRuntime>>,
    /// The `scsi-pr` agent's monitor, with that fencing agent.
    pub pr: Option<Arc<PrMonitor>>,
    /// Where `duetctl shutdown` goes: the daemon's stop task, the one SIGTERM triggers.
    pub stop: Option<ShutdownRequests>,
}

fn abbrev(s: AluaState) -> String {
    s.abbrev().to_string()
}

impl DaemonAdmin {
    fn ha(&self) -> Option<&Arc<HaRuntime>> {
        self.ha.as_ref()
    }

    fn portals(&self, portal_group: &str) -> Vec<String> {
        self.shared
            .config
            .portal_group(portal_group)
            .map(|pg| pg.listen.iter().map(|a| a.to_string()).collect())
            .unwrap_or_default()
    }
}

impl AdminApi for DaemonAdmin {
    fn portlist(&self) -> Vec<PortInfo> {
        let ha = self.ha();
        let link_up = ha.is_some_and(|h| h.link().is_up());
        let mut ports = Vec::new();
        let mut targets: Vec<_> = self.shared.targets.values().collect();
        targets.sort_by(|a, b| a.name.cmp(&b.name));
        for t in targets {
            let pg = self
                .shared
                .config
                .target(&t.name)
                .map(|c| c.portal_group.clone())
                .unwrap_or_default();
            let name = format!("{},t,0x{:04x}", t.name, t.tpgt);
            ports.push(PortInfo {
                port: t.rtpi,
                ha_id: t.ha_id,
                frontend: "iscsi".into(),
                name: name.clone(),
                online: true,
                portal: self.portals(&pg),
                target: t.name.clone(),
                local: true,
            });
            if let (Some(h), Some(peer)) = (ha, t.peer_rtpi) {
                let peer_id = peer_of(h.ha_id());
                ports.push(PortInfo {
                    port: peer,
                    ha_id: peer_id,
                    frontend: "ha".into(),
                    name: format!("{peer_id}:{name}"),
                    online: link_up,
                    portal: Vec::new(),
                    target: t.name.clone(),
                    local: false,
                });
            }
        }
        ports.sort_by_key(|p| p.port);
        ports
    }

    fn lunlist(&self) -> Vec<LunInfo> {
        let mut out = Vec::new();
        for t in self.shared.targets.values() {
            for lu in t.luns.values() {
                let pic = lu.alua();
                let local = pic.state_of(t.rtpi);
                let peer = t.peer_rtpi.map(|p| pic.state_of(p));
                let (serial, naa, block_size) = {
                    let g = lu.lock();
                    let naa: String = g.naa().iter().map(|b| format!("{b:02x}")).collect();
                    (g.config().serial.clone(), naa, g.config().block_size)
                };
                let role = match self.ha() {
                    None => "primary".to_string(),
                    Some(h) => lun_role(h, lu.number),
                };
                out.push(LunInfo {
                    lun: lu.number,
                    target: t.name.clone(),
                    path: lu.store.path().display().to_string(),
                    size_bytes: duet_core::scsi::BlockStore::len(&*lu.store),
                    block_size,
                    serial,
                    naa,
                    local_alua: abbrev(local),
                    peer_alua: peer.map(abbrev).unwrap_or_else(|| "-".into()),
                    role,
                });
            }
        }
        out.sort_by_key(|l| l.lun);
        out
    }

    fn ha(&self) -> HaInfo {
        let Some(h) = self.ha() else {
            return HaInfo {
                ha_id: 0,
                peer_id: 0,
                mode: 0,
                link_state: 0,
                policy: "off".into(),
                fencing: "none".into(),
                luns: Vec::new(),
                lease_holder: None,
                lease_age_ms: None,
                peer_fenced: false,
                events: Vec::new(),
                reservations: Vec::new(),
                last_takeover: None,
                counters: HaCounters::default(),
            };
        };
        let (status, age, peer_fenced) = h.status();
        let cfg = h.config();
        let luns = status
            .as_ref()
            .map(|s| {
                s.luns
                    .iter()
                    .map(|l| HaLunInfo {
                        lun: l.lun,
                        role: lun_role(h, l.lun),
                        epoch: l.epoch,
                        primary: l.primary,
                        local_alua: abbrev(l.alua.local),
                        peer_alua: abbrev(l.alua.peer),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let (last_takeover, takeovers) = h.last_takeover();
        let link = h.link().stats();
        let holds_lease = status
            .as_ref()
            .is_some_and(|s| s.lease_remaining_ms.is_some());
        HaInfo {
            ha_id: cfg.id,
            peer_id: peer_of(cfg.id),
            mode: cfg.mode.number(),
            link_state: status.as_ref().map_or(1, |s| s.link),
            policy: match cfg.failover {
                Policy::Automatic => "automatic".into(),
                Policy::Manual => "manual".into(),
                Policy::Naive => "naive".into(),
            },
            fencing: cfg.fencing.to_string(),
            luns,
            lease_holder: holds_lease.then_some(cfg.id),
            lease_age_ms: if holds_lease { age } else { None },
            peer_fenced,
            events: h.events(),
            reservations: self.pr.as_ref().map(|m| m.snapshot()).unwrap_or_default(),
            last_takeover,
            counters: HaCounters {
                link_downs_closed: link.downs_closed,
                link_downs_silent: link.downs_silent,
                takeovers,
            },
        }
    }

    fn set_role(&self, role: RoleArg, lun: Option<LunNumber>) -> Result<String, String> {
        let h = self.ha().ok_or("HA is not configured on this controller")?;
        h.set_role(
            match role {
                RoleArg::Primary => Role::Primary,
                RoleArg::Secondary => Role::Secondary,
            },
            lun,
        )
    }

    fn switchover(&self, lun: Option<LunNumber>) -> Result<String, String> {
        let h = self.ha().ok_or("HA is not configured on this controller")?;
        h.switchover(lun)
    }

    fn stat(&self) -> StatInfo {
        self.shared.stats.snapshot()
    }

    fn shutdown(&self) -> Result<ShutdownTicket, String> {
        let stop = self
            .stop
            .as_ref()
            .ok_or("this daemon cannot be stopped through its admin socket")?;
        tracing::info!("shutdown requested through the admin socket");
        stop.request()
    }
}

/// The role word for `duetctl`: primary, secondary, claiming or transitioning.
fn lun_role(h: &HaRuntime, lun: LunNumber) -> String {
    let (status, _, _) = h.status();
    let Some(s) = status.and_then(|s| s.luns.into_iter().find(|l| l.lun == lun)) else {
        return "unknown".into();
    };
    if s.primary == Some(h.ha_id()) {
        if s.serving {
            "primary".into()
        } else {
            "primary (suspended)".into()
        }
    } else if s.claim.is_some() {
        "claiming".into()
    } else if s.primary.is_some() {
        "secondary".into()
    } else {
        "transitioning".into()
    }
}

/// Serves the admin socket at `path` until shutdown; `duetctl shutdown` requests go to `stop`.
pub fn spawn_admin(
    shared: &Arc<Shared>,
    (ha, pr): (Option<Arc<HaRuntime>>, Option<Arc<PrMonitor>>),
    stop: Option<ShutdownRequests>,
    path: std::path::PathBuf,
    shutdown: watch::Receiver<bool>,
) {
    let api: Arc<dyn AdminApi> = Arc::new(DaemonAdmin {
        shared: shared.clone(),
        ha,
        pr,
        stop,
    });
    tokio::spawn(async move {
        if let Err(e) = admin::serve(path.clone(), api, shutdown).await {
            tracing::error!("admin socket {}: {e}", path.display());
        }
    });
}
