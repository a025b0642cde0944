//! The HA link between two controllers, over loopback: login, authentication and its refusals,
//! message order, liveness (a dead or frozen peer), bad input and channel independence.

use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use duet_target::ha::link::{
    self, Channel, DownKind, LinkConfig, LinkDown, LinkEvent, LinkHandle, PeerAddr,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

/// Every test must finish within this.
const TEST_LIMIT: Duration = Duration::from_secs(20);
/// Generous deadline for the link to come up (the design value is well under a second).
const UP_WITHIN: Duration = Duration::from_secs(10);
/// How long a refused peer is watched to make sure it never comes up.
const NEVER_UP_FOR: Duration = Duration::from_secs(2);

const SECRET: &[u8] = b"correct horse battery staple";

async fn bounded<F: Future<Output = ()>>(f: F) {
    tokio::time::timeout(TEST_LIMIT, f)
        .await
        .expect("test ran over its time limit");
}

/// A free loopback port (bound then released).
fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr")
}

fn config(ha_id: u8, mode: u8, peer: PeerAddr, secret: &[u8]) -> LinkConfig {
    let mut cfg = LinkConfig::new(ha_id, mode, peer, secret.to_vec());
    cfg.reconnect = Duration::from_millis(100);
    cfg
}

/// One side of the link, running on the current runtime.
struct Side {
    handle: LinkHandle,
    events: mpsc::UnboundedReceiver<LinkEvent>,
    stop: watch::Sender<bool>,
}

impl Side {
    fn start(cfg: LinkConfig) -> Side {
        let (stop, shutdown) = watch::channel(false);
        let (handle, events) = link::spawn(cfg, shutdown);
        Side {
            handle,
            events,
            stop,
        }
    }

    /// The next event within `within`, or None.
    async fn next(&mut self, within: Duration) -> Option<LinkEvent> {
        tokio::time::timeout(within, self.events.recv())
            .await
            .ok()
            .flatten()
    }

    /// Waits for `Up` (skipping nothing else: any other event first is a failure).
    async fn expect_up(&mut self) -> u8 {
        match self.next(UP_WITHIN).await {
            Some(LinkEvent::Up { peer_id }) => {
                assert!(self.handle.is_up());
                peer_id
            }
            other => panic!("expected the link to come up, got {other:?}"),
        }
    }

    /// Waits for `Down`, ignoring messages; returns the reason and how long it took, and checks
    /// that the link reports the expected kind of down.
    async fn expect_down(&mut self, within: Duration, want: DownKind) -> (String, Duration) {
        let start = Instant::now();
        loop {
            let left = within.saturating_sub(start.elapsed());
            match self.next(left).await {
                Some(LinkEvent::Down { reason, kind }) => {
                    assert_eq!(kind, want, "{reason}");
                    return (reason, start.elapsed());
                }
                Some(LinkEvent::Message { .. }) => continue,
                other => panic!("expected the link to go down, got {other:?}"),
            }
        }
    }

    /// Asserts that the link does not come up for `d`.
    async fn expect_never_up(&mut self, d: Duration) {
        if let Some(ev) = self.next(d).await {
            panic!("expected no event, got {ev:?}");
        }
        assert_eq!(self.handle.state(), 1, "refused link must stay connecting");
    }

    /// Shuts the side down and waits until it is offline.
    async fn stop(self) {
        let _ = self.stop.send(true);
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.handle.state() != 0 {
            assert!(Instant::now() < deadline, "link did not go offline");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// A pair: ctrl 1 listens, ctrl 2 connects.
fn pair(mode: u8) -> (Side, Side) {
    let addr = free_addr();
    let a = Side::start(config(1, mode, PeerAddr::Listen(addr), SECRET));
    let b = Side::start(config(2, mode, PeerAddr::Connect(addr), SECRET));
    (a, b)
}

/// Receives `n` messages, returning them per channel in arrival order.
async fn receive(side: &mut Side, n: usize) -> (Vec<Bytes>, Vec<Bytes>) {
    let (mut control, mut data) = (Vec::new(), Vec::new());
    while control.len() + data.len() < n {
        match side.next(UP_WITHIN).await {
            Some(LinkEvent::Message {
                channel: Channel::Control,
                payload,
            }) => control.push(payload),
            Some(LinkEvent::Message {
                channel: Channel::Data,
                payload,
            }) => data.push(payload),
            other => panic!("expected a message, got {other:?}"),
        }
    }
    (control, data)
}

fn numbered(prefix: &str, i: usize, pad: usize) -> Bytes {
    let mut v = format!("{prefix}-{i}-").into_bytes();
    v.resize(v.len() + pad, b'x');
    Bytes::from(v)
}

#[tokio::test]
async fn pair_comes_up_and_exchanges_messages_in_order() {
    bounded(async {
        let (mut a, mut b) = pair(1);
        assert_eq!(a.expect_up().await, 2);
        assert_eq!(b.expect_up().await, 1);
        assert_eq!(a.handle.state(), 2);
        assert_eq!(b.handle.state(), 2);

        const N: usize = 100;
        for i in 0..N {
            a.handle
                .send(Channel::Control, numbered("a-ctl", i, 10))
                .unwrap();
            a.handle
                .send(Channel::Data, numbered("a-data", i, 64 * 1024))
                .unwrap();
            b.handle
                .send(Channel::Control, numbered("b-ctl", i, 0))
                .unwrap();
            b.handle
                .send(Channel::Data, numbered("b-data", i, 100_000))
                .unwrap();
        }
        // An empty message is a message too.
        b.handle.send(Channel::Control, Bytes::new()).unwrap();

        let (ctl, data) = receive(&mut b, 2 * N).await;
        assert_eq!(
            ctl,
            (0..N).map(|i| numbered("a-ctl", i, 10)).collect::<Vec<_>>()
        );
        assert_eq!(
            data,
            (0..N)
                .map(|i| numbered("a-data", i, 64 * 1024))
                .collect::<Vec<_>>()
        );
        let (ctl, data) = receive(&mut a, 2 * N + 1).await;
        let mut want: Vec<Bytes> = (0..N).map(|i| numbered("b-ctl", i, 0)).collect();
        want.push(Bytes::new());
        assert_eq!(ctl, want);
        assert_eq!(
            data,
            (0..N)
                .map(|i| numbered("b-data", i, 100_000))
                .collect::<Vec<_>>()
        );

        let stats = a.handle.stats();
        assert!(stats.control.frames_sent >= N as u64, "{stats:?}");
        assert!(stats.data.frames_received >= N as u64, "{stats:?}");
        assert!(
            stats.data.bytes_received >= (N * 100_000) as u64,
            "{stats:?}"
        );
        assert_eq!(stats.ups, 1);
        assert_eq!(stats.refused_logins, 0);
        let json = serde_json::to_value(stats).unwrap();
        assert!(json["data"]["bytes_sent"].as_u64().unwrap() >= (N * 64 * 1024) as u64);

        // An orderly shutdown takes the peer down at once (a bye, not a time-out): the peer
        // closed the link.
        a.stop().await;
        let (reason, _) = b
            .expect_down(Duration::from_secs(5), DownKind::Closed)
            .await;
        assert!(reason.contains("shut down"), "{reason}");
        assert_eq!(b.handle.state(), 1);
        assert_eq!(b.handle.stats().downs_closed, 1);
        assert_eq!(b.handle.stats().downs_silent, 0);
        assert_eq!(
            b.handle.send(Channel::Control, Bytes::from_static(b"x")),
            Err(LinkDown)
        );
        b.stop().await;
    })
    .await;
}

/// Captures log lines of the current thread (tests using it run on a current-thread runtime).
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn install(&self) -> tracing::subscriber::DefaultGuard {
        let logs = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || logs.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

#[tokio::test(flavor = "current_thread")]
async fn wrong_secret_never_comes_up_and_listener_keeps_working() {
    let logs = Logs::default();
    let _guard = logs.install();
    bounded(async {
        let addr = free_addr();
        let mut a = Side::start(config(1, 1, PeerAddr::Listen(addr), SECRET));
        let mut impostor = Side::start(config(2, 1, PeerAddr::Connect(addr), b"guessed"));
        impostor.expect_never_up(NEVER_UP_FOR).await;
        a.expect_never_up(Duration::from_millis(10)).await;
        assert!(a.handle.stats().refused_logins >= 1);
        assert!(impostor.handle.stats().refused_logins >= 1);
        assert!(
            logs.text().contains("HA link: peer failed authentication"),
            "{}",
            logs.text()
        );

        // The impostor keeps trying; the real peer still gets in.
        let mut b = Side::start(config(2, 1, PeerAddr::Connect(addr), SECRET));
        assert_eq!(a.expect_up().await, 2);
        assert_eq!(b.expect_up().await, 1);
        b.handle
            .send(Channel::Control, Bytes::from_static(b"hello"))
            .unwrap();
        let (ctl, _) = receive(&mut a, 1).await;
        assert_eq!(ctl, vec![Bytes::from_static(b"hello")]);
        assert!(impostor.next(Duration::from_millis(500)).await.is_none());
        assert!(logs.text().contains("HA link status changed from 1 to 2"));

        impostor.stop().await;
        b.stop().await;
        a.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "current_thread")]
async fn different_mode_is_refused() {
    let logs = Logs::default();
    let _guard = logs.install();
    bounded(async {
        let addr = free_addr();
        let mut a = Side::start(config(1, 1, PeerAddr::Listen(addr), SECRET));
        let mut b = Side::start(config(2, 2, PeerAddr::Connect(addr), SECRET));
        b.expect_never_up(NEVER_UP_FOR).await;
        a.expect_never_up(Duration::from_millis(10)).await;
        assert!(a.handle.stats().refused_logins >= 1);
        let text = logs.text();
        assert!(
            text.contains("HA link: peer has ha_mode 2, ours is 1"),
            "{text}"
        );
        // The refused side learns why.
        assert!(
            text.contains("login refused by peer: peer has ha_mode 1, ours is 2"),
            "{text}"
        );
        a.stop().await;
        b.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "current_thread")]
async fn equal_ids_are_refused() {
    let logs = Logs::default();
    let _guard = logs.install();
    bounded(async {
        let addr = free_addr();
        let mut a = Side::start(config(1, 0, PeerAddr::Listen(addr), SECRET));
        let mut b = Side::start(config(1, 0, PeerAddr::Connect(addr), SECRET));
        b.expect_never_up(NEVER_UP_FOR).await;
        a.expect_never_up(Duration::from_millis(10)).await;
        assert!(a.handle.stats().refused_logins >= 1);
        assert!(b.handle.stats().refused_logins >= 1);
        let text = logs.text();
        assert!(
            text.contains("HA link: peer has the same ha_id 1"),
            "{text}"
        );
        a.stop().await;
        b.stop().await;
    })
    .await;
}

#[tokio::test]
async fn invalid_config_stays_offline() {
    bounded(async {
        let mut s = Side::start(config(
            3,
            1,
            PeerAddr::Listen("127.0.0.1:1".parse().unwrap()),
            SECRET,
        ));
        assert_eq!(s.handle.state(), 0);
        assert!(s.next(Duration::from_millis(200)).await.is_none());
        assert!(s.handle.send(Channel::Control, Bytes::new()).is_err());
    })
    .await;
}

/// A separate runtime standing for the peer's process: dropping it is a crash, blocking its
/// only worker freezes it.
fn peer_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("peer runtime")
}

fn start_in(rt: &tokio::runtime::Runtime, cfg: LinkConfig) -> Side {
    let _enter = rt.enter();
    Side::start(cfg)
}

#[tokio::test]
async fn dead_peer_is_seen_down_and_a_new_peer_comes_up() {
    bounded(async {
        let addr = free_addr();
        let mut a = Side::start(config(1, 1, PeerAddr::Listen(addr), SECRET));

        // The connecting peer crashes.
        let rt = peer_runtime();
        let mut b = start_in(&rt, config(2, 1, PeerAddr::Connect(addr), SECRET));
        assert_eq!(a.expect_up().await, 2);
        assert_eq!(b.expect_up().await, 1);
        // Its sockets close with its process: the link was closed, not silent.
        rt.shutdown_background();
        let (reason, took) = a
            .expect_down(Duration::from_secs(5), DownKind::Closed)
            .await;
        assert!(took < Duration::from_secs(5), "{took:?}");
        assert!(!reason.is_empty());
        assert_eq!(a.handle.state(), 1);

        // A new incarnation of the peer is let in.
        let mut b2 = Side::start(config(2, 1, PeerAddr::Connect(addr), SECRET));
        assert_eq!(a.expect_up().await, 2);
        assert_eq!(b2.expect_up().await, 1);
        assert_eq!(a.handle.stats().ups, 2);
        assert_eq!(a.handle.stats().reconnects, 1);

        // The listening peer crashes; the connecting side notices and dials a restarted one.
        let rt = peer_runtime();
        a.stop().await;
        let _ = b2
            .expect_down(Duration::from_secs(5), DownKind::Closed)
            .await;
        let mut a2 = start_in(&rt, config(1, 1, PeerAddr::Listen(addr), SECRET));
        assert_eq!(a2.expect_up().await, 2);
        assert_eq!(b2.expect_up().await, 1);
        rt.shutdown_background();
        let (_, took) = b2
            .expect_down(Duration::from_secs(5), DownKind::Closed)
            .await;
        assert!(took < Duration::from_secs(5), "{took:?}");
        let rt = peer_runtime();
        let mut a3 = start_in(&rt, config(1, 1, PeerAddr::Listen(addr), SECRET));
        assert_eq!(b2.expect_up().await, 1);
        assert_eq!(a3.expect_up().await, 2);
        b2.stop().await;
        rt.shutdown_background();
        drop(b);
    })
    .await;
}

#[tokio::test]
async fn frozen_peer_is_detected_by_the_heartbeat() {
    bounded(async {
        let addr = free_addr();
        let mut a = Side::start(config(1, 1, PeerAddr::Listen(addr), SECRET));
        let rt = peer_runtime();
        let mut b = start_in(&rt, config(2, 1, PeerAddr::Connect(addr), SECRET));
        assert_eq!(a.expect_up().await, 2);
        assert_eq!(b.expect_up().await, 1);

        // Freeze the peer: its only worker thread blocks, so it neither reads nor pings, but its
        // sockets stay open.
        rt.spawn(async { std::thread::sleep(Duration::from_secs(7)) });
        let (reason, took) = a
            .expect_down(Duration::from_secs(5), DownKind::Silent)
            .await;
        assert!(took < Duration::from_secs(5), "{took:?}");
        assert!(reason.contains("no frame"), "{reason}");
        assert_eq!(a.handle.stats().downs_silent, 1);
        assert_eq!(a.handle.stats().downs_closed, 0);
        assert_eq!(a.handle.state(), 1);
        rt.shutdown_background();
        a.stop().await;
    })
    .await;
}

#[tokio::test]
async fn silent_server_never_comes_up_and_is_retried() {
    bounded(async {
        let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = server.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        let silent = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = server.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                held.push(s); // accept and never speak
            }
        });
        let mut b = Side::start(config(2, 1, PeerAddr::Connect(addr), SECRET));
        let deadline = Instant::now() + Duration::from_secs(10);
        // Each attempt opens two connections; a third connection means it gave up and retried.
        while accepted.load(Ordering::SeqCst) < 3 {
            assert!(Instant::now() < deadline, "the link did not retry");
            assert!(b.next(Duration::from_millis(50)).await.is_none());
        }
        assert_eq!(b.handle.state(), 1);
        b.stop().await;
        silent.abort();
    })
    .await;
}

/// Writes `bytes` to the listener and waits until it closes the connection.
async fn refused_raw(addr: SocketAddr, bytes: &[u8]) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    // The listener may close before everything is written; that is fine.
    let _ = s.write_all(bytes).await;
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "listener kept a connection that sent {bytes:?}"
    );
}

fn header(version: u16, kind: u8, len: u32) -> Vec<u8> {
    let mut h = b"DUET".to_vec();
    h.extend_from_slice(&version.to_be_bytes());
    h.push(kind);
    h.push(0);
    h.extend_from_slice(&len.to_be_bytes());
    h
}

#[tokio::test]
async fn garbage_and_oversized_frames_are_refused() {
    bounded(async {
        let addr = free_addr();
        let mut a = Side::start(config(1, 1, PeerAddr::Listen(addr), SECRET));
        // Let the listener bind.
        tokio::time::sleep(Duration::from_millis(200)).await;

        refused_raw(addr, b"GET / HTTP/1.0\r\nHost: x\r\n\r\n").await;
        refused_raw(addr, &header(1, 1, u32::MAX)).await;
        refused_raw(addr, &header(1, 3, 16 * 1024 * 1024 + 1)).await;
        refused_raw(addr, &header(99, 1, 4)).await;
        refused_raw(addr, &header(1, 200, 0)).await;
        // A well-formed frame that is not a login message.
        let mut junk = header(1, 1, 5);
        junk.extend_from_slice(&[0xff; 5]);
        refused_raw(addr, &junk).await;
        // A connection that opens and closes at once.
        drop(TcpStream::connect(addr).await.unwrap());

        a.expect_never_up(Duration::from_millis(100)).await;
        let mut b = Side::start(config(2, 1, PeerAddr::Connect(addr), SECRET));
        assert_eq!(a.expect_up().await, 2);
        assert_eq!(b.expect_up().await, 1);
        b.stop().await;
        a.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_third_controller_cannot_join_a_live_link() {
    bounded(async {
        let addr = free_addr();
        let mut a = Side::start(config(1, 1, PeerAddr::Listen(addr), SECRET));
        let mut b = Side::start(config(2, 1, PeerAddr::Connect(addr), SECRET));
        assert_eq!(a.expect_up().await, 2);
        assert_eq!(b.expect_up().await, 1);
        let mut c = Side::start(config(2, 1, PeerAddr::Connect(addr), SECRET));
        c.expect_never_up(NEVER_UP_FOR).await;
        // The live link was not disturbed.
        assert!(a.next(Duration::from_millis(10)).await.is_none());
        assert!(b.next(Duration::from_millis(10)).await.is_none());
        assert!(a.handle.is_up() && b.handle.is_up());
        assert!(c.handle.stats().refused_logins >= 1);
        c.stop().await;
        b.stop().await;
        a.stop().await;
    })
    .await;
}

#[tokio::test]
async fn data_flood_does_not_hold_back_control_messages() {
    bounded(async {
        let (mut a, mut b) = pair(2);
        a.expect_up().await;
        b.expect_up().await;

        const FLOOD: usize = 200;
        let chunk = Bytes::from(vec![0x5a; 1024 * 1024]);
        for _ in 0..FLOOD {
            b.handle.send(Channel::Data, chunk.clone()).unwrap();
        }
        b.handle
            .send(Channel::Control, Bytes::from_static(b"urgent"))
            .unwrap();

        let mut data_before_control = None;
        let mut data = 0;
        while data < FLOOD || data_before_control.is_none() {
            match a.next(UP_WITHIN).await {
                Some(LinkEvent::Message {
                    channel: Channel::Data,
                    payload,
                }) => {
                    assert_eq!(payload, chunk);
                    data += 1;
                }
                Some(LinkEvent::Message {
                    channel: Channel::Control,
                    payload,
                }) => {
                    assert_eq!(payload, Bytes::from_static(b"urgent"));
                    data_before_control = Some(data);
                }
                other => panic!("expected messages, got {other:?}"),
            }
        }
        let before = data_before_control.unwrap();
        assert!(
            before < FLOOD,
            "the control message waited behind all {FLOOD} data messages"
        );
        assert!(a.handle.is_up() && b.handle.is_up());
        b.stop().await;
        a.stop().await;
    })
    .await;
}
