//! The initiator side of the login phase (RFC 7143 §6.3, §11.12-11.13), the mirror of the
//! target's [`super::login`]: the security stage (AuthMethod, CHAP one-way or mutual), the
//! operational stage (the usual keys) and the values in force afterwards.
//!
//! Pure like the rest of core: [`InitiatorLogin::first_request`] gives the first Login request,
//! every Login Response goes into [`InitiatorLogin::handle_response`], which answers with the
//! next request to send or with the [`LoginResult`] (the negotiated [`SessionParams`] and the
//! sequence numbers to continue with). A refusal ends in [`LoginError::Rejected`] with the
//! Status-Class and Status-Detail. The randomness of mutual CHAP (our CHAP_I and CHAP_C) is
//! chosen by the caller and handed in through [`MutualChap`].
//!
//! May touch: `chap` (responses), `config` (credentials), `login` (stage numbers, status codes),
//! `params` (the negotiated set), `pdu` and `text`. No I/O, no clock, no randomness.

use super::chap::{constant_time_eq, ChapAlgorithm};
use super::config::ChapCredentials;
use super::login::{status, STAGE_FULL_FEATURE, STAGE_OPERATIONAL, STAGE_SECURITY};
use super::params::{SessionParams, MAX_SEGMENT, MIN_SEGMENT};
use super::pdu::{Opcode, Pdu};
use super::text::{self, TextPairs};
use bytes::Bytes;
use std::fmt;

/// How often a stage is asked again (with nothing new) while the target does not let the login
/// move on, before the login is given up.
const MAX_REPEATS: u32 = 4;

/// The initiator's side of mutual CHAP: the secret the target must prove it knows, and the
/// identifier and challenge we send it (random, chosen by the caller).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MutualChap {
    /// The target's user name (its CHAP_N must match) and secret.
    pub target: ChapCredentials,
    /// CHAP_I we send.
    pub id: u8,
    /// CHAP_C we send; it must differ from the target's challenge to us.
    pub challenge: Vec<u8>,
}

/// CHAP as the initiator does it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InitiatorChap {
    /// Our user name (CHAP_N) and secret.
    pub credentials: ChapCredentials,
    /// The algorithms offered in CHAP_A, in order of preference.
    pub algorithms: Vec<ChapAlgorithm>,
    /// Also authenticate the target.
    pub mutual: Option<MutualChap>,
}

impl InitiatorChap {
    /// One-way CHAP with MD5.
    pub fn md5(user: impl Into<String>, secret: impl Into<Vec<u8>>) -> InitiatorChap {
        InitiatorChap {
            credentials: ChapCredentials {
                user: user.into(),
                secret: secret.into(),
            },
            algorithms: vec![ChapAlgorithm::Md5],
            mutual: None,
        }
    }
}

/// The operational values we offer (digests are always `None`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OperationalOffer {
    /// What we receive per PDU (declarative).
    pub max_recv_data_segment_length: u32,
    pub first_burst_length: u32,
    pub max_burst_length: u32,
    pub initial_r2t: bool,
    pub immediate_data: bool,
    pub max_outstanding_r2t: u32,
    pub default_time2wait: u16,
    pub default_time2retain: u16,
}

impl Default for OperationalOffer {
    /// Large segments and bursts, unsolicited data allowed, no time to wait or retain.
    fn default() -> Self {
        OperationalOffer {
            max_recv_data_segment_length: 262_144,
            first_burst_length: 262_144,
            max_burst_length: 16_776_192,
            initial_r2t: false,
            immediate_data: true,
            max_outstanding_r2t: 1,
            default_time2wait: 0,
            default_time2retain: 0,
        }
    }
}

impl OperationalOffer {
    /// The operational-stage keys, in the order they are sent.
    pub fn keys(&self) -> TextPairs {
        let mut k = TextPairs::new();
        k.push("HeaderDigest", "None");
        k.push("DataDigest", "None");
        k.push("InitialR2T", text::format_bool(self.initial_r2t));
        k.push("ImmediateData", text::format_bool(self.immediate_data));
        k.push(
            "MaxRecvDataSegmentLength",
            self.max_recv_data_segment_length.to_string(),
        );
        k.push("FirstBurstLength", self.first_burst_length.to_string());
        k.push("MaxBurstLength", self.max_burst_length.to_string());
        k.push("MaxOutstandingR2T", self.max_outstanding_r2t.to_string());
        k.push("MaxConnections", "1");
        k.push("DataPDUInOrder", "Yes");
        k.push("DataSequenceInOrder", "Yes");
        k.push("ErrorRecoveryLevel", "0");
        k.push("DefaultTime2Wait", self.default_time2wait.to_string());
        k.push("DefaultTime2Retain", self.default_time2retain.to_string());
        k.push("IFMarker", "No");
        k.push("OFMarker", "No");
        k
    }

    /// The values in force after the target's operational answers (RFC 7143 §13): the target
    /// declares what it receives; InitialR2T is OR-ed, ImmediateData AND-ed, burst lengths and
    /// MaxOutstandingR2T take the minimum; keys the target left out (or rejected) keep their
    /// RFC defaults. A digest other than `None` is an error: we offered none.
    pub fn settle(&self, answers: &TextPairs) -> Result<SessionParams, LoginError> {
        for d in ["HeaderDigest", "DataDigest"] {
            if let Some(v) = answers.get(d) {
                if v != "None" {
                    return Err(LoginError::Protocol(format!(
                        "the target chose {d}={v}; only None is supported"
                    )));
                }
            }
        }
        let num = |k: &str| {
            answers
                .get(k)
                .and_then(text::parse_number)
                .map(|v| v.min(u32::MAX as u64) as u32)
        };
        let flag = |k: &str| answers.get(k).and_then(text::parse_bool);
        let d = SessionParams::default();
        let max_burst = num("MaxBurstLength")
            .unwrap_or(d.max_burst_length)
            .min(self.max_burst_length)
            .max(MIN_SEGMENT);
        let first_burst = num("FirstBurstLength")
            .unwrap_or(d.first_burst_length)
            .min(self.first_burst_length)
            .min(max_burst)
            .max(MIN_SEGMENT);
        Ok(SessionParams {
            header_digest: false,
            data_digest: false,
            max_recv_data_segment_length: num("MaxRecvDataSegmentLength")
                .unwrap_or(d.max_recv_data_segment_length)
                .clamp(MIN_SEGMENT, MAX_SEGMENT),
            max_xmit_data_segment_length: self.max_recv_data_segment_length,
            max_burst_length: max_burst,
            first_burst_length: first_burst,
            initial_r2t: flag("InitialR2T").unwrap_or(true) || self.initial_r2t,
            immediate_data: flag("ImmediateData").unwrap_or(true) && self.immediate_data,
            max_outstanding_r2t: num("MaxOutstandingR2T")
                .unwrap_or(1)
                .clamp(1, self.max_outstanding_r2t.max(1)),
            data_pdu_in_order: true,
            data_sequence_in_order: true,
            default_time2wait: num("DefaultTime2Wait")
                .map_or(d.default_time2wait, |v| v.min(3600) as u16),
            default_time2retain: num("DefaultTime2Retain")
                .map_or(d.default_time2retain, |v| v.min(3600) as u16),
            error_recovery_level: 0,
            max_connections: 1,
            queue_depth: d.queue_depth,
        })
    }
}

/// Everything a login needs to know up front.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoginPlan {
    pub initiator_name: String,
    /// The target to log in to; `None` for a Discovery session.
    pub target_name: Option<String>,
    /// The ISID; the paths of one host differ in it.
    pub isid: [u8; 6],
    /// 0 for a new session.
    pub tsih: u16,
    /// The ITT of every login request.
    pub itt: u32,
    /// The CmdSN of the login (and of the first command after it).
    pub cmd_sn: u32,
    /// CHAP credentials, offered (`AuthMethod=CHAP,None`) when present.
    pub chap: Option<InitiatorChap>,
    /// Skip the security stage: the first request, in the operational stage, carries the
    /// names and the operational keys (only for targets that want no authentication).
    pub skip_security: bool,
    pub offer: OperationalOffer,
}

impl LoginPlan {
    /// A Normal session to `target` as `initiator`, no CHAP, ITT 0, CmdSN 1, the default offer.
    pub fn normal(initiator: &str, target: &str, isid: [u8; 6]) -> LoginPlan {
        LoginPlan {
            initiator_name: initiator.to_string(),
            target_name: Some(target.to_string()),
            isid,
            tsih: 0,
            itt: 0,
            cmd_sn: 1,
            chap: None,
            skip_security: false,
            offer: OperationalOffer::default(),
        }
    }

    /// The keys naming the session: InitiatorName, TargetName (Normal only), SessionType.
    pub fn identity_keys(&self) -> TextPairs {
        let mut k = TextPairs::new();
        k.push("InitiatorName", self.initiator_name.clone());
        match &self.target_name {
            Some(t) => {
                k.push("TargetName", t.clone());
                k.push("SessionType", "Normal");
            }
            None => k.push("SessionType", "Discovery"),
        }
        k
    }
}

/// Why a login failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LoginError {
    /// The target refused with this Status-Class/Status-Detail (RFC 7143 §11.13.5).
    Rejected { class: u8, detail: u8 },
    /// Authentication could not proceed or the target failed mutual authentication.
    Auth(String),
    /// The target broke the protocol (or answered something this initiator does not do).
    Protocol(String),
}

impl LoginError {
    /// What a refusal's status means, for messages (`""` when not a well-known one).
    pub fn meaning(class: u8, detail: u8) -> &'static str {
        match (class, detail) {
            status::AUTH_FAILURE => "authentication failed",
            status::AUTHORIZATION_FAILURE => "not authorized",
            status::NOT_FOUND => "target not found",
            status::TARGET_REMOVED => "target removed",
            status::MISSING_PARAMETER => "missing parameter",
            status::SESSION_DOES_NOT_EXIST => "session does not exist",
            (3, _) => "target error",
            _ => "",
        }
    }
}

impl fmt::Display for LoginError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoginError::Rejected { class, detail } => {
                write!(
                    f,
                    "refused by the target (status class {class:#04x}, detail {detail:#04x}"
                )?;
                match LoginError::meaning(*class, *detail) {
                    "" => write!(f, ")"),
                    m => write!(f, ": {m})"),
                }
            }
            LoginError::Auth(m) => write!(f, "authentication: {m}"),
            LoginError::Protocol(m) => write!(f, "protocol error: {m}"),
        }
    }
}

impl std::error::Error for LoginError {}

/// A finished login: the session is in full feature phase.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoginResult {
    /// The session's TSIH.
    pub tsih: u16,
    /// The CmdSN of the first command (the target's ExpCmdSN).
    pub cmd_sn: u32,
    /// The StatSN expected next.
    pub exp_stat_sn: u32,
    /// The last command the window admits.
    pub max_cmd_sn: u32,
    /// The values in force; in the target's terms (`max_recv_data_segment_length` is what the
    /// target receives, i.e. the largest data segment we may send).
    pub params: SessionParams,
    /// TargetAlias, when the target sent one.
    pub target_alias: Option<String>,
    /// TargetPortalGroupTag, when the target sent one.
    pub portal_group_tag: Option<u16>,
}

/// What to do after a Login Response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Send this Login request and feed back the answer.
    Send(Pdu),
    /// The login succeeded.
    Done(LoginResult),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// AuthMethod offered.
    Offered,
    /// AuthMethod=CHAP agreed, CHAP_A sent.
    AlgorithmSent,
    /// CHAP_N/CHAP_R (and our challenge) sent.
    ResponseSent(ChapAlgorithm),
    /// Authentication over; waiting for the target to move to the operational stage.
    Authenticated,
    /// Operational keys sent; waiting for full feature phase.
    Operational,
    /// Succeeded or failed: nothing more to do.
    Over,
}

/// The login state machine of one connection, initiator side.
#[derive(Clone, Debug)]
pub struct InitiatorLogin {
    plan: LoginPlan,
    phase: Phase,
    /// Repeats of the current stage without progress.
    repeats: u32,
    /// (transit, csg, nsg) of the last request, repeated on a continued (C bit) response.
    last_stages: (bool, u8, u8),
    exp_stat_sn: u32,
    exp_cmd_sn: u32,
    max_cmd_sn: u32,
    tsih: u16,
    /// Text of a response continued over several PDUs.
    partial: TextPairs,
    /// Every operational answer so far.
    answers: TextPairs,
    target_alias: Option<String>,
    portal_group_tag: Option<u16>,
}

impl InitiatorLogin {
    pub fn new(plan: LoginPlan) -> InitiatorLogin {
        let phase = if plan.skip_security {
            Phase::Operational
        } else {
            Phase::Offered
        };
        InitiatorLogin {
            exp_cmd_sn: plan.cmd_sn,
            max_cmd_sn: plan.cmd_sn,
            tsih: plan.tsih,
            plan,
            phase,
            repeats: 0,
            last_stages: (true, STAGE_SECURITY, STAGE_OPERATIONAL),
            exp_stat_sn: 0,
            partial: TextPairs::new(),
            answers: TextPairs::new(),
            target_alias: None,
            portal_group_tag: None,
        }
    }

    /// The plan this login follows.
    pub fn plan(&self) -> &LoginPlan {
        &self.plan
    }

    /// The first Login request.
    pub fn first_request(&mut self) -> Pdu {
        let mut keys = self.plan.identity_keys();
        if self.plan.skip_security {
            keys.0.extend(self.plan.offer.keys().0);
            self.request(true, STAGE_OPERATIONAL, STAGE_FULL_FEATURE, keys)
        } else {
            let auth = if self.plan.chap.is_some() {
                "CHAP,None"
            } else {
                "None"
            };
            keys.push("AuthMethod", auth);
            self.request(true, STAGE_SECURITY, STAGE_OPERATIONAL, keys)
        }
    }

    fn request(&mut self, transit: bool, csg: u8, nsg: u8, keys: TextPairs) -> Pdu {
        self.last_stages = (transit, csg, nsg);
        let p = &self.plan;
        let mut req = Pdu::login_request(
            p.isid,
            p.tsih,
            p.itt,
            p.cmd_sn,
            (transit, csg, nsg),
            if keys.is_empty() {
                Bytes::new()
            } else {
                keys.to_bytes()
            },
        );
        req.set_exp_stat_sn(self.exp_stat_sn);
        req
    }

    /// Handles one Login Response: the next request, the result, or why the login failed.
    /// After `Done` or an error the machine is over and answers every call with an error.
    pub fn handle_response(&mut self, rsp: &Pdu) -> Result<Step, LoginError> {
        let r = self.step(rsp);
        if !matches!(r, Ok(Step::Send(_))) {
            self.phase = Phase::Over;
        }
        r
    }

    fn step(&mut self, rsp: &Pdu) -> Result<Step, LoginError> {
        if self.phase == Phase::Over {
            return Err(LoginError::Protocol("the login is over".into()));
        }
        if rsp.opcode() != Some(Opcode::LoginResponse) {
            return Err(LoginError::Protocol(format!(
                "expected a Login response, got {:?}",
                rsp.opcode()
            )));
        }
        if rsp.status_class() != 0 {
            return Err(LoginError::Rejected {
                class: rsp.status_class(),
                detail: rsp.status_detail(),
            });
        }
        self.exp_stat_sn = rsp.stat_sn().wrapping_add(1);
        self.exp_cmd_sn = rsp.exp_cmd_sn();
        self.max_cmd_sn = rsp.max_cmd_sn();
        self.tsih = rsp.tsih();
        let got = TextPairs::parse(&rsp.data)
            .map_err(|e| LoginError::Protocol(format!("login text: {e}")))?;
        self.partial.0.extend(got.0);
        if rsp.continue_bit() {
            // More text follows: ask for it with an empty request in the same stages.
            let (t, csg, nsg) = self.last_stages;
            return Ok(Step::Send(self.request(t, csg, nsg, TextPairs::new())));
        }
        let got = std::mem::take(&mut self.partial);
        if let Some(a) = got.get("TargetAlias") {
            self.target_alias = Some(a.to_string());
        }
        if let Some(t) = got.get("TargetPortalGroupTag") {
            self.portal_group_tag = text::parse_number(t).and_then(|t| u16::try_from(t).ok());
        }
        let moved = |nsg: u8| rsp.login_transit() && rsp.login_nsg() == nsg;
        match self.phase {
            Phase::Offered => match got.get("AuthMethod") {
                Some("CHAP") => {
                    let chap = self.plan.chap.as_ref().ok_or_else(|| {
                        LoginError::Auth("the target demands CHAP and we have no secret".into())
                    })?;
                    let list: Vec<String> = chap
                        .algorithms
                        .iter()
                        .map(|a| a.number().to_string())
                        .collect();
                    let mut k = TextPairs::new();
                    k.push("CHAP_A", list.join(","));
                    self.phase = Phase::AlgorithmSent;
                    Ok(Step::Send(self.request(
                        false,
                        STAGE_SECURITY,
                        STAGE_OPERATIONAL,
                        k,
                    )))
                }
                None | Some("None") => {
                    self.phase = Phase::Authenticated;
                    self.leave_security(moved(STAGE_OPERATIONAL))
                }
                Some(m) => Err(LoginError::Auth(format!(
                    "the target answered AuthMethod={m}"
                ))),
            },
            Phase::AlgorithmSent => {
                let step = self.chap_response(&got)?;
                Ok(Step::Send(step))
            }
            Phase::ResponseSent(alg) => {
                self.check_mutual(alg, &got)?;
                self.phase = Phase::Authenticated;
                self.leave_security(moved(STAGE_OPERATIONAL))
            }
            Phase::Authenticated => self.leave_security(moved(STAGE_OPERATIONAL)),
            Phase::Operational => {
                self.answers.0.extend(got.0);
                if moved(STAGE_FULL_FEATURE) {
                    return self.finish().map(Step::Done);
                }
                self.repeat("the target does not enter full feature phase")?;
                Ok(Step::Send(self.request(
                    true,
                    STAGE_OPERATIONAL,
                    STAGE_FULL_FEATURE,
                    TextPairs::new(),
                )))
            }
            Phase::Over => unreachable!("checked above"),
        }
    }

    /// Security is done: offer the operational keys once the target lets us move on, else ask
    /// again with nothing new.
    fn leave_security(&mut self, moved: bool) -> Result<Step, LoginError> {
        if moved {
            self.phase = Phase::Operational;
            self.repeats = 0;
            let keys = self.plan.offer.keys();
            return Ok(Step::Send(self.request(
                true,
                STAGE_OPERATIONAL,
                STAGE_FULL_FEATURE,
                keys,
            )));
        }
        self.repeat("the target does not leave the security stage")?;
        Ok(Step::Send(self.request(
            true,
            STAGE_SECURITY,
            STAGE_OPERATIONAL,
            TextPairs::new(),
        )))
    }

    fn repeat(&mut self, what: &str) -> Result<(), LoginError> {
        self.repeats += 1;
        if self.repeats > MAX_REPEATS {
            return Err(LoginError::Protocol(what.into()));
        }
        Ok(())
    }

    /// Answers the target's CHAP_A/CHAP_I/CHAP_C (and challenges it for mutual CHAP).
    fn chap_response(&mut self, got: &TextPairs) -> Result<Pdu, LoginError> {
        let chap = self.plan.chap.as_ref().expect("CHAP was offered");
        let alg = got
            .get("CHAP_A")
            .and_then(text::parse_number)
            .and_then(ChapAlgorithm::from_number)
            .filter(|a| chap.algorithms.contains(a))
            .ok_or_else(|| {
                LoginError::Auth(format!(
                    "the target chose CHAP_A={:?}, which we did not offer",
                    got.get("CHAP_A")
                ))
            })?;
        let id = got
            .get("CHAP_I")
            .and_then(text::parse_number)
            .filter(|v| *v <= 255)
            .ok_or_else(|| LoginError::Auth("missing or bad CHAP_I".into()))?;
        let challenge = got
            .get("CHAP_C")
            .and_then(|c| text::parse_binary(c).ok())
            .filter(|c| !c.is_empty())
            .ok_or_else(|| LoginError::Auth("missing or bad CHAP_C".into()))?;
        let resp = alg.response(id as u8, &chap.credentials.secret, &challenge);
        let mut k = TextPairs::new();
        k.push("CHAP_N", chap.credentials.user.clone());
        k.push("CHAP_R", text::format_hex(&resp));
        if let Some(m) = &chap.mutual {
            if constant_time_eq(&m.challenge, &challenge) {
                return Err(LoginError::Auth(
                    "the target's challenge is our own mutual challenge".into(),
                ));
            }
            k.push("CHAP_I", m.id.to_string());
            k.push("CHAP_C", text::format_hex(&m.challenge));
        }
        self.phase = Phase::ResponseSent(alg);
        Ok(self.request(true, STAGE_SECURITY, STAGE_OPERATIONAL, k))
    }

    /// For mutual CHAP: the target's CHAP_N and CHAP_R must prove it knows its secret.
    fn check_mutual(&self, alg: ChapAlgorithm, got: &TextPairs) -> Result<(), LoginError> {
        let Some(m) = self.plan.chap.as_ref().and_then(|c| c.mutual.as_ref()) else {
            return Ok(());
        };
        let (Some(name), Some(r)) = (got.get("CHAP_N"), got.get("CHAP_R")) else {
            return Err(LoginError::Auth(
                "the target did not answer our CHAP challenge".into(),
            ));
        };
        let r = text::parse_binary(r)
            .map_err(|_| LoginError::Auth("the target's CHAP_R is not a binary value".into()))?;
        let expected = alg.response(m.id, &m.target.secret, &m.challenge);
        if name != m.target.user || !constant_time_eq(&r, &expected) {
            return Err(LoginError::Auth(
                "the target failed mutual authentication".into(),
            ));
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<LoginResult, LoginError> {
        let mut params = self.plan.offer.settle(&self.answers)?;
        let window = self
            .max_cmd_sn
            .wrapping_sub(self.exp_cmd_sn)
            .wrapping_add(1);
        if (window as i32) > 0 {
            params.queue_depth = window;
        }
        Ok(LoginResult {
            tsih: self.tsih,
            cmd_sn: self.exp_cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
            max_cmd_sn: self.max_cmd_sn,
            params,
            target_alias: self.target_alias.clone(),
            portal_group_tag: self.portal_group_tag,
        })
    }
}

#[cfg(test)]
mod tests;
