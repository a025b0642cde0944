//! Start-up: the daemon's targets and LUs built from a [`Config`] (every backend opened, every
//! persisted reservation restored), and the configuration mapped to what the core's iSCSI
//! session needs (CHAP credentials, allowed initiators, SendTargets addresses, limits).
//! Touches the backends and reservation files while it builds; nothing after.

use duet_core::LunNumber;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;

use duet_core::alua::{self, LunView, PeerReach, PrimaryView};
use duet_core::ha::{peer_of, Policy};
use duet_core::iscsi::{ChapConfig, ChapCredentials, IscsiConfig, TargetConfig, TargetLimits};
use duet_core::scsi::{AluaPicture, BlockStore, LogicalUnit, LuConfig, PrState};

use crate::backend::{pr_state_path, FileStore, OpenSpec};
use crate::config::{AuthGroup, AuthType, Config};
use crate::lu::{Lu, Target, PRODUCT, STANDALONE_HA_ID, VENDOR};
use crate::shared::Shared;
use crate::threads::ConnThreads;

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Backend(#[from] crate::backend::BackendError),
    #[error("lun {lun} of {target}: {message}")]
    Lun {
        target: String,
        lun: LunNumber,
        message: String,
    },
    #[error("cannot start the connection threads: {0}")]
    Threads(std::io::Error),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

fn chap_configs(ag: &AuthGroup) -> Vec<ChapConfig> {
    ag.chap
        .iter()
        .map(|c| ChapConfig {
            initiator: ChapCredentials {
                user: c.user.clone(),
                secret: c.secret.as_bytes().to_vec(),
            },
            target: match (&c.mutual_user, &c.mutual_secret) {
                (Some(u), Some(s)) => Some(ChapCredentials {
                    user: u.clone(),
                    secret: s.as_bytes().to_vec(),
                }),
                _ => None,
            },
        })
        .collect()
}

fn allowed_initiators(ag: &AuthGroup) -> Vec<String> {
    ag.initiator_names
        .iter()
        .map(|n| n.to_ascii_lowercase())
        .collect()
}

/// The CHAP credentials an auth group accepts (any of them may log in); none = no CHAP.
fn chap_for(ag: &AuthGroup) -> Vec<ChapConfig> {
    match ag.auth_type {
        AuthType::None | AuthType::Deny => Vec::new(),
        AuthType::Chap | AuthType::ChapMutual => chap_configs(ag),
    }
}

/// The address of a portal as SendTargets reports it: `address:port,tag`.
pub(crate) fn portal_address(addr: &SocketAddr, tpgt: u16) -> String {
    format!("{addr},{tpgt}")
}

/// Builds every target, opens every backend and restores persisted reservations.
pub fn build(config: Config, limits: TargetLimits) -> Result<Shared, StartError> {
    let mut targets = HashMap::new();
    let ha_id = config.ha_id();
    let ha = ha_id != 0;
    let ha_id = if ha { ha_id } else { STANDALONE_HA_ID };
    for t in &config.targets {
        let pg = config
            .portal_group(&t.portal_group)
            .cloned()
            .ok_or_else(|| StartError::Lun {
                target: t.name.clone(),
                lun: 0,
                message: format!("no portal group `{}`", t.portal_group),
            })?;
        let rtpi = alua::relative_port_id(ha_id, pg.tag.saturating_sub(1));
        let peer_rtpi =
            ha.then(|| alua::relative_port_id(peer_of(ha_id), pg.tag.saturating_sub(1)));
        let peer_ports: Vec<u16> = peer_rtpi.into_iter().collect();
        // Until the HA node has spoken, a controller of a pair serves nothing: Transitioning.
        let first_view = if ha {
            LunView {
                mode: config.ha_mode(),
                primary: PrimaryView::None,
                peer: PeerReach::Unknown,
            }
        } else {
            LunView::standalone()
        };
        // Explicit ALUA where SET TARGET PORT GROUPS can move a LUN: automatic failover.
        let explicit_alua = config
            .ha
            .as_ref()
            .is_some_and(|h| h.failover == Policy::Automatic);
        let first_picture = AluaPicture::from_view(first_view, ha_id, &[rtpi], &peer_ports)
            .with_explicit(explicit_alua);
        let mut luns = BTreeMap::new();
        for l in &t.luns {
            let store = FileStore::open(&OpenSpec {
                path: &l.path,
                size: l.size,
                block_size: l.block_size,
                read_only: l.read_only,
                create: l.create,
                direct: l.direct,
            })?;
            let mut cfg = LuConfig::new(
                u64::from(l.number),
                l.block_size,
                store.len() / u64::from(l.block_size),
                &l.serial,
            );
            cfg.naa = Some(l.naa);
            cfg.read_only = l.read_only;
            cfg.vendor = VENDOR.to_string();
            cfg.product = PRODUCT.to_string();
            cfg.revision = env!("CARGO_PKG_VERSION")
                .chars()
                .filter(|c| *c != '.')
                .take(4)
                .collect();
            cfg.thin = !store.is_block_device();
            // WCE at power on: whether acknowledged writes sit in a volatile cache (the page
            // cache, a file system's metadata, or a direct block device's write-back cache).
            cfg.write_cache = store.write_cache();
            // One WRITE SAME may cover no more than one WRITE: initiators size their requests
            // (and libiscsi its tests) by either limit.
            cfg.max_write_same_blocks = cfg
                .max_write_same_blocks
                .min(u64::from(cfg.max_transfer_blocks));
            let mut lu = LogicalUnit::new(cfg).map_err(|e| StartError::Lun {
                target: t.name.clone(),
                lun: l.number,
                message: e.to_string(),
            })?;
            let pr_path = pr_state_path(&l.path);
            if let Ok(data) = std::fs::read(&pr_path) {
                match serde_json::from_slice::<PrState>(&data) {
                    Ok(st) => {
                        tracing::info!(target = %t.name, lun = l.number, path = %pr_path.display(),
                            "restored persistent reservations (APTPL)");
                        lu.restore_pr(st);
                    }
                    Err(e) => {
                        return Err(StartError::Lun {
                            target: t.name.clone(),
                            lun: l.number,
                            message: format!(
                                "{}: unreadable reservation state: {e}",
                                pr_path.display()
                            ),
                        })
                    }
                }
            }
            let (direct, align) = match store.direct() {
                Some(d) => (true, d.offset_align),
                None => (false, 0),
            };
            tracing::info!(target = %t.name, lun = l.number, path = %l.path.display(),
                bytes = store.len(), block_size = l.block_size, read_only = l.read_only,
                direct, direct_align = align, wce = store.write_cache(), "LUN ready");
            luns.insert(
                l.number,
                Arc::new(Lu::new(
                    l.number,
                    lu,
                    store,
                    pr_path,
                    first_picture.clone(),
                    !ha,
                )),
            );
        }
        let lun_list = luns.keys().map(|n| u64::from(*n)).collect();
        targets.insert(
            t.name.to_ascii_lowercase(),
            Arc::new(Target {
                name: t.name.clone(),
                tpgt: pg.tag,
                rtpi,
                luns,
                lun_list,
                ha_id,
                peer_rtpi,
                explicit_alua,
            }),
        );
    }
    let mut iscsi = HashMap::new();
    for pg in &config.portal_groups {
        let mut tcs = Vec::new();
        for t in config.targets_in(&pg.name) {
            let ag = config.auth_group(&t.auth_group);
            tcs.push(TargetConfig {
                name: t.name.clone(),
                alias: t.alias.clone(),
                allowed_initiators: ag.map(allowed_initiators).unwrap_or_default(),
                chap: ag.map(chap_for).unwrap_or_default(),
                deny_all: ag.is_none_or(|a| a.auth_type == AuthType::Deny),
                addresses: pg
                    .listen
                    .iter()
                    .filter(|a| !a.ip().is_unspecified())
                    .map(|a| portal_address(a, pg.tag))
                    .collect(),
            });
        }
        let dag = config.auth_group(&pg.discovery_auth_group);
        iscsi.insert(
            pg.name.clone(),
            Arc::new(IscsiConfig {
                targets: tcs,
                discovery_chap: dag.map(chap_for).unwrap_or_default(),
                discovery_deny: dag.is_none_or(|a| a.auth_type == AuthType::Deny),
                limits: limits.clone(),
            }),
        );
    }
    let threads = ConnThreads::start(config.io_threads).map_err(StartError::Threads)?;
    Ok(Shared::new(config, targets, iscsi, threads))
}

/// The iSCSI limits for a configuration (ping interval and timeout from `ping_timeout`).
pub fn limits_for(config: &Config) -> TargetLimits {
    let ms = config.ping_timeout.saturating_mul(1000);
    TargetLimits {
        nop_in_interval_ms: ms,
        nop_in_timeout_ms: ms,
        ..TargetLimits::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::apply_effects;
    use duet_core::alua::{AluaState, HaMode};
    use duet_core::scsi::{CommandContext, Nexus, Outcome};
    use duet_core::sense::status;
    use std::path::PathBuf;

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("duet-build-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn config_in(dir: &std::path::Path) -> Config {
        let text = format!(
            "[portal_group.p]\nlisten = [\"127.0.0.1:1\"]\n[[target]]\nname = \"iqn.2026-11.dev.duet:t\"\nauth_group = \"none\"\n[[target.lun]]\nnumber = 3\npath = \"{}\"\nsize = \"1MiB\"\ncreate = true\n",
            dir.join("lun3.img").display()
        );
        Config::parse("test.toml", &text).unwrap()
    }

    /// PERSISTENT RESERVE OUT, REGISTER (service action 0) of `key`, with APTPL as given.
    fn register(shared: &Shared, key: u64, aptpl: bool) -> Outcome {
        let t = shared
            .target_by_name("iqn.2026-11.dev.duet:t")
            .unwrap()
            .clone();
        let lu = t.luns.get(&3).unwrap().clone();
        let nexus = Nexus::new("iqn.2026-11.test:init1", [0x80, 0, 0, 0, 0, 1], t.rtpi);
        let pic = t.alua();
        let ctx = CommandContext {
            nexus: &nexus,
            alua: &pic,
            target_name: &t.name,
            tpgt: t.tpgt,
            luns: &t.lun_list,
        };
        let mut cdb = [0u8; 10];
        cdb[0] = 0x5F;
        cdb[8] = 24;
        let mut params = [0u8; 24];
        params[8..16].copy_from_slice(&key.to_be_bytes());
        if aptpl {
            params[20] = 0x01;
        }
        // The first command of a new nexus reports the power-on unit attention; repeat then.
        let mut o = lu.lock().execute(&ctx, &cdb, &params, &*lu.store);
        if o.status == status::CHECK_CONDITION {
            o = lu.lock().execute(&ctx, &cdb, &params, &*lu.store);
        }
        apply_effects(&lu, &o.effects);
        o
    }

    #[test]
    fn aptpl_registrations_survive_a_restart_and_vanish_without_aptpl() {
        let d = tmpdir("aptpl");
        let shared = build(config_in(&d), TargetLimits::default()).unwrap();
        let o = register(&shared, 0xABCD, true);
        assert_eq!(o.status, status::GOOD, "{o:?}");
        let pr_file = pr_state_path(&d.join("lun3.img"));
        assert!(pr_file.exists(), "no reservation file written");
        drop(shared);

        let shared = build(config_in(&d), TargetLimits::default()).unwrap();
        let t = shared.target_by_name("iqn.2026-11.dev.duet:t").unwrap();
        let st = t.luns.get(&3).unwrap().lock().pr_state().clone();
        assert_eq!(st.registrations.len(), 1);
        assert_eq!(st.registrations[0].key, 0xABCD);
        assert!(st.aptpl);

        // Unregister (new key 0) without APTPL: the file goes away.
        let t2 = t.clone();
        let lu = t2.luns.get(&3).unwrap().clone();
        let nexus = Nexus::new("iqn.2026-11.test:init1", [0x80, 0, 0, 0, 0, 1], t2.rtpi);
        let pic = t2.alua();
        let ctx = CommandContext {
            nexus: &nexus,
            alua: &pic,
            target_name: &t2.name,
            tpgt: t2.tpgt,
            luns: &t2.lun_list,
        };
        let mut cdb = [0u8; 10];
        cdb[0] = 0x5F;
        cdb[8] = 24;
        let mut params = [0u8; 24];
        params[0..8].copy_from_slice(&0xABCDu64.to_be_bytes());
        let mut o = lu.lock().execute(&ctx, &cdb, &params, &*lu.store);
        if o.status == status::CHECK_CONDITION {
            o = lu.lock().execute(&ctx, &cdb, &params, &*lu.store);
        }
        assert_eq!(o.status, status::GOOD, "{o:?}");
        apply_effects(&lu, &o.effects);
        assert!(!pr_file.exists(), "reservation file kept without APTPL");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_corrupt_reservation_file_stops_start_up_with_its_name() {
        let d = tmpdir("corrupt");
        std::fs::write(pr_state_path(&d.join("lun3.img")), b"not json").unwrap();
        let e = build(config_in(&d), TargetLimits::default())
            .err()
            .expect("start-up should fail");
        assert!(e.to_string().contains("lun3.img.pr"), "{e}");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_lone_controller_reports_its_group_active_optimized() {
        let d = tmpdir("alua");
        let shared = build(config_in(&d), TargetLimits::default()).unwrap();
        let t = shared.target_by_name("iqn.2026-11.dev.duet:t").unwrap();
        let pic = t.alua();
        assert_eq!(pic.groups.len(), 1);
        assert_eq!(pic.groups[0].id, 1);
        assert_eq!(pic.groups[0].state, AluaState::ActiveOptimized);
        assert_eq!(pic.groups[0].ports, vec![alua::relative_port_id(1, 0)]);
        // The HA runtime changes only the inputs: a peer that is primary and reachable makes
        // this group Standby (mode 0) and reports the peer's group Active/Optimized.
        t.set_alua(
            LunView {
                mode: HaMode::ActiveStandby,
                primary: PrimaryView::Peer,
                peer: PeerReach::Up,
            },
            &[alua::relative_port_id(2, 0)],
        );
        let pic = t.alua();
        assert_eq!(pic.state_of(t.rtpi), AluaState::Standby);
        assert_eq!(
            pic.state_of(alua::relative_port_id(2, 0)),
            AluaState::ActiveOptimized
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn ping_timeout_sets_the_nop_in_timers() {
        let d = tmpdir("ping");
        let mut c = config_in(&d);
        c.ping_timeout = 7;
        let l = limits_for(&c);
        assert_eq!((l.nop_in_interval_ms, l.nop_in_timeout_ms), (7000, 7000));
        c.ping_timeout = 0;
        let l = limits_for(&c);
        assert_eq!((l.nop_in_interval_ms, l.nop_in_timeout_ms), (0, 0));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_direct_lun_is_opened_with_o_direct_and_starts_with_the_stores_write_cache() {
        let d = tmpdir("direct");
        let mut c = config_in(&d);
        c.targets[0].luns[0].direct = true;
        let shared = build(c, TargetLimits::default()).unwrap();
        let t = shared.target_by_name("iqn.2026-11.dev.duet:t").unwrap();
        let lu = t.luns.get(&3).unwrap();
        assert!(lu.store.direct().is_some());
        // A regular file: WCE=1 (fdatasync is the flush).
        assert!(lu.lock().mode_pages().wce());
        assert!(lu.lock().config().write_cache);
        drop(shared);
        let shared = build(config_in(&d), TargetLimits::default()).unwrap();
        let t = shared.target_by_name("iqn.2026-11.dev.duet:t").unwrap();
        assert!(t.luns.get(&3).unwrap().store.direct().is_none());
        let _ = std::fs::remove_dir_all(&d);
    }
}
