//! The agent against a scripted transport: the commands it sends, and every error path (CHECK
//! CONDITION, RESERVATION CONFLICT, short data, unit attentions, timeouts).

use super::*;
use std::collections::VecDeque;
use std::sync::Mutex;

const OURS: u64 = 0x1111_0000_0000_0001;
const PEER: u64 = 0x1111_0000_0000_0002;
const T: Duration = Duration::from_secs(5);

/// A device that answers from a script and records what it was sent.
#[derive(Default)]
struct Script {
    replies: Mutex<VecDeque<Result<ScsiReply, TransportError>>>,
    sent: Mutex<Vec<ScsiRequest>>,
    /// When the script runs out: never answer.
    hang: bool,
}

impl ScsiTransport for Script {
    fn execute(
        &self,
        req: ScsiRequest,
    ) -> transport::BoxFuture<'_, Result<ScsiReply, TransportError>> {
        self.sent.lock().unwrap().push(req);
        let next = self.replies.lock().unwrap().pop_front();
        let hang = self.hang;
        Box::pin(async move {
            match next {
                Some(r) => r,
                None if hang => std::future::pending().await,
                None => Err(TransportError::Failed("script ran out".into())),
            }
        })
    }
}

fn good(data: Vec<u8>) -> Result<ScsiReply, TransportError> {
    Ok(ScsiReply {
        status: 0,
        sense: None,
        data,
    })
}

fn status(st: u8, sense: Option<SenseCode>) -> Result<ScsiReply, TransportError> {
    Ok(ScsiReply {
        status: st,
        sense,
        data: Vec::new(),
    })
}

fn keys(generation: u32, keys: &[u64]) -> Result<ScsiReply, TransportError> {
    let mut d = generation.to_be_bytes().to_vec();
    d.extend_from_slice(&((keys.len() * 8) as u32).to_be_bytes());
    for k in keys {
        d.extend_from_slice(&k.to_be_bytes());
    }
    good(d)
}

fn reservation(held: Option<(u64, u8)>) -> Result<ScsiReply, TransportError> {
    let mut d = vec![0, 0, 0, 1];
    match held {
        None => d.extend_from_slice(&[0, 0, 0, 0]),
        Some((k, t)) => {
            d.extend_from_slice(&[0, 0, 0, 16]);
            d.extend_from_slice(&k.to_be_bytes());
            d.extend_from_slice(&[0, 0, 0, 0, 0, t, 0, 0]);
        }
    }
    good(d)
}

fn device(
    name: &str,
    role: DeviceRole,
    replies: Vec<Result<ScsiReply, TransportError>>,
) -> (PrDevice, Arc<Script>) {
    let s = Arc::new(Script {
        replies: Mutex::new(replies.into()),
        ..Script::default()
    });
    let dev = PrDevice {
        name: name.into(),
        role,
        transport: s.clone(),
        paths: Vec::new(),
    };
    (dev, s)
}

fn agent(devices: Vec<PrDevice>) -> PrAgent {
    PrAgent {
        key: OURS,
        peer_key: PEER,
        devices,
    }
}

fn opcodes(s: &Script) -> Vec<(u8, u8)> {
    s.sent
        .lock()
        .unwrap()
        .iter()
        .map(|r| (r.cdb[0], r.cdb[1]))
        .collect()
}

#[tokio::test]
async fn fencing_preempts_the_peer_on_every_device_quorum_first() {
    let (q, qs) = device(
        "/dev/quorum",
        DeviceRole::Quorum,
        vec![keys(1, &[OURS, PEER]), good(vec![]), keys(2, &[OURS])],
    );
    let (d, ds) = device(
        "/dev/lun0",
        DeviceRole::Data,
        vec![keys(1, &[PEER, OURS]), good(vec![]), keys(2, &[OURS])],
    );
    agent(vec![q, d]).fence_peer(T).await.expect("fenced");
    assert_eq!(
        opcodes(&qs),
        vec![(0x5e, 0), (0x5f, 5), (0x5e, 0)],
        "READ KEYS, PREEMPT AND ABORT, READ KEYS"
    );
    let sent = qs.sent.lock().unwrap();
    let preempt = &sent[1];
    assert_eq!(preempt.cdb[2], pr_type::WRITE_EXCLUSIVE_RO);
    assert_eq!(&preempt.data_out[0..8], &OURS.to_be_bytes());
    assert_eq!(&preempt.data_out[8..16], &PEER.to_be_bytes());
    assert_eq!(
        ds.sent.lock().unwrap()[1].cdb[2],
        pr_type::EXCLUSIVE_ACCESS_RO
    );
}

#[tokio::test]
async fn an_absent_peer_key_is_already_fenced() {
    let (q, qs) = device("/dev/quorum", DeviceRole::Quorum, vec![keys(4, &[OURS])]);
    agent(vec![q]).fence_peer(T).await.expect("fenced");
    assert_eq!(opcodes(&qs), vec![(0x5e, 0)]);
}

#[tokio::test]
async fn check_condition_fails_the_fence_naming_device_and_sense() {
    let (q, _) = device(
        "/dev/quorum",
        DeviceRole::Quorum,
        vec![keys(1, &[OURS, PEER]), good(vec![]), keys(2, &[OURS])],
    );
    let (d, _) = device(
        "/dev/lun0",
        DeviceRole::Data,
        vec![
            keys(1, &[OURS, PEER]),
            status(2, Some(SenseCode::INVALID_FIELD_IN_PARAM_LIST)),
        ],
    );
    let e = agent(vec![q, d])
        .fence_peer(T)
        .await
        .expect_err("not fenced");
    assert_eq!(e.device, "/dev/lun0");
    assert_eq!(e.step, "PREEMPT AND ABORT");
    assert!(matches!(e.reason, PrFailure::Check(_)), "{e}");
    assert!(e
        .to_string()
        .starts_with("/dev/lun0: PREEMPT AND ABORT: CHECK CONDITION"));
}

#[tokio::test]
async fn a_device_without_preempt_and_abort_gets_preempt() {
    let (q, qs) = device(
        "/dev/quorum",
        DeviceRole::Quorum,
        vec![
            keys(1, &[OURS, PEER]),
            status(2, Some(SenseCode::INVALID_FIELD_IN_CDB)),
            good(vec![]),
            keys(2, &[OURS]),
        ],
    );
    agent(vec![q]).fence_peer(T).await.expect("fenced");
    assert_eq!(
        opcodes(&qs),
        vec![(0x5e, 0), (0x5f, 5), (0x5f, 4), (0x5e, 0)],
        "READ KEYS, PREEMPT AND ABORT, PREEMPT, READ KEYS"
    );
}

#[tokio::test]
async fn a_conflict_means_we_were_fenced_ourselves() {
    let (q, _) = device(
        "/dev/quorum",
        DeviceRole::Quorum,
        vec![keys(1, &[PEER]), status(0x18, None)],
    );
    let e = agent(vec![q]).fence_peer(T).await.expect_err("not fenced");
    assert!(matches!(e.reason, PrFailure::Conflict));
}

#[tokio::test]
async fn a_peer_key_still_there_after_preemption_fails() {
    let (q, _) = device(
        "/dev/quorum",
        DeviceRole::Quorum,
        vec![keys(1, &[OURS, PEER]), good(vec![]), keys(2, &[OURS, PEER])],
    );
    let e = agent(vec![q])
        .fence_peer(T)
        .await
        .expect_err("not confirmed");
    assert!(matches!(
        e.reason,
        PrFailure::NotConfirmed(FenceCheck::VictimRegistered)
    ));
}

#[tokio::test]
async fn short_data_is_a_bad_answer() {
    let mut cut = keys(1, &[OURS, PEER]).unwrap();
    cut.data.truncate(12);
    let (q, _) = device("/dev/quorum", DeviceRole::Quorum, vec![Ok(cut)]);
    let e = agent(vec![q]).fence_peer(T).await.expect_err("bad answer");
    assert_eq!(e.step, "READ KEYS");
    assert!(matches!(
        e.reason,
        PrFailure::Parse(PrParseError::Truncated { .. })
    ));
}

#[tokio::test]
async fn unit_attentions_are_retried_a_bounded_number_of_times() {
    let ua = || status(2, Some(SenseCode::UA_REGISTRATIONS_PREEMPTED));
    let (q, qs) = device(
        "/dev/quorum",
        DeviceRole::Quorum,
        vec![ua(), keys(1, &[OURS])],
    );
    agent(vec![q])
        .fence_peer(T)
        .await
        .expect("fenced after one retry");
    assert_eq!(qs.sent.lock().unwrap().len(), 2);

    let (q, qs) = device(
        "/dev/quorum",
        DeviceRole::Quorum,
        (0..10).map(|_| ua()).collect(),
    );
    let e = agent(vec![q]).fence_peer(T).await.expect_err("gives up");
    assert!(matches!(e.reason, PrFailure::UnitAttention(_)));
    assert_eq!(qs.sent.lock().unwrap().len(), UA_RETRIES + 1);
}

#[tokio::test]
async fn timeouts_fail_the_fence() {
    // The transport says it timed out.
    let (q, _) = device(
        "/dev/quorum",
        DeviceRole::Quorum,
        vec![Err(TransportError::Timeout(T))],
    );
    let e = agent(vec![q]).fence_peer(T).await.expect_err("timed out");
    assert!(matches!(
        e.reason,
        PrFailure::Transport(TransportError::Timeout(_))
    ));

    // The transport never answers: the agent's own deadline ends it.
    let s = Arc::new(Script {
        hang: true,
        ..Script::default()
    });
    let q = PrDevice {
        name: "/dev/quorum".into(),
        role: DeviceRole::Quorum,
        transport: s,
        paths: Vec::new(),
    };
    let e = agent(vec![q])
        .fence_peer(Duration::from_millis(20))
        .await
        .expect_err("deadline");
    assert!(matches!(e.reason, PrFailure::Deadline), "{e}");
}

#[tokio::test]
async fn joining_registers_and_reserves_when_nobody_holds_the_device() {
    let (d, ds) = device(
        "/dev/lun0",
        DeviceRole::Data,
        vec![
            good(vec![]),
            reservation(None),
            good(vec![]),
            reservation(Some((OURS, pr_type::EXCLUSIVE_ACCESS_RO))),
        ],
    );
    agent(vec![d]).join(T).await.expect("joined");
    assert_eq!(
        opcodes(&ds),
        vec![(0x5f, 6), (0x5e, 1), (0x5f, 1), (0x5e, 1)],
        "REGISTER AND IGNORE, READ RESERVATION, RESERVE, READ RESERVATION"
    );
    let sent = ds.sent.lock().unwrap();
    assert_eq!(&sent[0].data_out[8..16], &OURS.to_be_bytes());
    assert_eq!(sent[2].cdb[2], pr_type::EXCLUSIVE_ACCESS_RO);
}

#[tokio::test]
async fn joining_accepts_the_peers_reservation_and_refuses_a_foreign_one() {
    let (d, ds) = device(
        "/dev/lun0",
        DeviceRole::Data,
        vec![
            good(vec![]),
            reservation(Some((PEER, pr_type::EXCLUSIVE_ACCESS_RO))),
        ],
    );
    agent(vec![d]).join(T).await.expect("joined");
    assert_eq!(ds.sent.lock().unwrap().len(), 2);

    let (d, _) = device(
        "/dev/lun0",
        DeviceRole::Data,
        vec![
            good(vec![]),
            reservation(Some((0x42, pr_type::WRITE_EXCLUSIVE))),
        ],
    );
    let e = agent(vec![d]).join(T).await.expect_err("foreign");
    assert_eq!(
        e.to_string(),
        "/dev/lun0: READ RESERVATION: reserved by a foreign key 0x0000000000000042 (write-exclusive)"
    );

    let (q, _) = device(
        "/dev/quorum",
        DeviceRole::Quorum,
        vec![
            good(vec![]),
            reservation(Some((PEER, pr_type::EXCLUSIVE_ACCESS_RO))),
        ],
    );
    let e = agent(vec![q]).join(T).await.expect_err("wrong type");
    assert!(matches!(
        e.reason,
        PrFailure::Foreign(ForeignReservation::WrongType { .. })
    ));
}

#[tokio::test]
async fn status_marks_keys_and_holder() {
    let (d, _) = device(
        "/dev/lun0",
        DeviceRole::Data,
        vec![
            keys(7, &[OURS, PEER]),
            reservation(Some((PEER, pr_type::EXCLUSIVE_ACCESS_RO))),
        ],
    );
    let (q, _) = device("/dev/quorum", DeviceRole::Quorum, vec![status(0x18, None)]);
    let st = agent(vec![d, q]).status(T).await;
    assert_eq!(
        st[0].to_string(),
        "/dev/lun0 (data): keys 0x1111000000000001 (ours), 0x1111000000000002 (peer); reserved \
         exclusive-access-registrants-only by 0x1111000000000002 (peer)"
    );
    assert!(st[1]
        .to_string()
        .starts_with("/dev/quorum (quorum): unreadable: RESERVATION CONFLICT"));
}

#[test]
fn a_regular_file_cannot_be_fenced() {
    let path = std::env::temp_dir().join(format!("duet-pr-file-{}", std::process::id()));
    std::fs::write(&path, b"q").expect("temp file");
    let cfg = ScsiPrConfig {
        key: OURS,
        peer_key: PEER,
        quorum: path.clone(),
        luns: vec![],
    };
    let e = PrAgent::open_sg(&cfg).expect_err("a file");
    let _ = std::fs::remove_file(&path);
    assert!(e.to_string().contains("not a block device"), "{e}");
    assert_eq!(e.device, path.display().to_string());
}

#[tokio::test]
async fn a_preemption_that_leaves_the_generation_unchanged_is_not_believed() {
    let (q, _) = device(
        "/dev/quorum",
        DeviceRole::Quorum,
        vec![keys(3, &[OURS, PEER]), good(vec![]), keys(3, &[OURS])],
    );
    let e = agent(vec![q])
        .fence_peer(T)
        .await
        .expect_err("not confirmed");
    assert!(matches!(
        e.reason,
        PrFailure::NotConfirmed(FenceCheck::GenerationUnchanged(3))
    ));
}

#[tokio::test]
async fn joining_registers_through_every_path() {
    let (mut d, ds) = device(
        "/dev/mapper/shared0",
        DeviceRole::Data,
        vec![
            good(vec![]),
            reservation(Some((PEER, pr_type::EXCLUSIVE_ACCESS_RO))),
        ],
    );
    let paths: Vec<Arc<Script>> = (0..2)
        .map(|_| {
            Arc::new(Script {
                replies: Mutex::new(vec![good(vec![])].into()),
                ..Script::default()
            })
        })
        .collect();
    d.paths = paths
        .iter()
        .map(|p| p.clone() as Arc<dyn ScsiTransport>)
        .collect();
    agent(vec![d]).join(T).await.expect("joined");
    assert_eq!(opcodes(&ds), vec![(0x5f, 6), (0x5e, 1)]);
    for p in &paths {
        assert_eq!(opcodes(p), vec![(0x5f, 6)], "registered down each path");
    }

    // A path that refuses the registration fails the join, naming the step.
    let (mut d, _) = device("/dev/mapper/shared0", DeviceRole::Data, vec![good(vec![])]);
    d.paths = vec![Arc::new(Script {
        replies: Mutex::new(vec![status(2, Some(SenseCode::INTERNAL_TARGET_FAILURE))].into()),
        ..Script::default()
    })];
    let e = agent(vec![d]).join(T).await.expect_err("a path refused");
    assert_eq!(e.step, "REGISTER AND IGNORE EXISTING KEY (another path)");
}
