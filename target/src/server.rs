//! The daemon's front door: a listener per portal, each accepted connection placed on a
//! connection thread ([`crate::threads`]) and run there ([`crate::conn`]), and graceful shutdown
//! (no new connections, sessions asked to log out, backends flushed).
//!
//! The rest of the daemon, by concept: [`crate::build`] (targets and LUs from the configuration),
//! [`crate::lu`] (the target/LU model and its ALUA picture), [`crate::shared`] (what every
//! connection shares), [`crate::sessions`] (the session registry), [`crate::conn`] (one
//! connection), [`crate::outbox`] (batched vectored writes), [`crate::exec`] (command execution
//! and task management, with the [`crate::exec::Pair`] seam where HA plugs in). The names the
//! daemon's callers use are re-exported here. Touches the listening sockets.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

pub use crate::build::{build, limits_for, StartError};
pub use crate::lu::{Lu, Target, PRODUCT, STANDALONE_HA_ID, VENDOR};
pub use crate::shared::Shared;

use crate::conn::run_connection;

/// Runs the daemon until `shutdown` turns true: binds every portal, serves, then drains.
pub async fn serve(
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), StartError> {
    let mut listeners = Vec::new();
    for pg in &shared.config.portal_groups {
        if !shared
            .config
            .targets
            .iter()
            .any(|t| t.portal_group == pg.name)
        {
            tracing::info!(portal_group = %pg.name, "no target uses this portal group; not listening");
            continue;
        }
        for addr in &pg.listen {
            let l = TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Listen {
                    addr: *addr,
                    source,
                })?;
            tracing::info!(portal_group = %pg.name, tag = pg.tag, %addr, "listening");
            listeners.push((l, pg.name.clone(), pg.tag));
        }
    }
    tracing::info!(threads = shared.threads.len(), "connection threads");
    let mut tasks = tokio::task::JoinSet::new();
    for (listener, pg, tag) in listeners {
        let shared = shared.clone();
        let mut stop = shutdown.clone();
        tasks.spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    _ = stop.changed() => break,
                    r = listener.accept() => match r {
                        Ok((sock, peer)) => {
                            let shared = shared.clone();
                            let pg = pg.clone();
                            let stop = stop.clone();
                            let thread = shared.threads.next().clone();
                            conns.spawn_on(async move {
                                run_connection(shared, sock, peer, pg, tag, stop).await;
                            }, &thread);
                        }
                        Err(e) => {
                            tracing::warn!("accept failed: {e}");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    },
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
            drop(listener);
            while conns.join_next().await.is_some() {}
        });
    }
    // Wait for the shutdown request, then for every listener task to finish its connections.
    while !*shutdown.borrow() {
        if shutdown.changed().await.is_err() {
            break;
        }
    }
    tracing::info!("shutting down: no new connections; finishing sessions");
    while tasks.join_next().await.is_some() {}
    shared.flush_all();
    tracing::info!("backends flushed; exiting");
    Ok(())
}
