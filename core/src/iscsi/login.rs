//! The login phase (RFC 7143 §6.3, §11.12-11.13): stages 0 (security), 1 (operational) and
//! 3 (full feature), CHAP one-way and mutual, access control, target lookup and the negotiation
//! of every operational key.

use super::chap::{constant_time_eq, ChapAlgorithm};
use super::config::{
    ChapConfig, IscsiConfig, LoginEntropy, PortalInfo, SessionIdentity, SessionType, TargetConfig,
};
use super::params::{negotiate_key, KeyOutcome, SessionParams};
use super::pdu::{Opcode, Pdu};
use super::text::{self, TextPairs, IRRELEVANT, NOT_UNDERSTOOD, REJECT};
use super::types::{Action, CloseReason, LoginOutcome};
use bytes::{Bytes, BytesMut};
use std::collections::VecDeque;
use std::sync::Arc;

/// Login status classes and details (RFC 7143 §11.13.5).
pub mod status {
    pub const SUCCESS: (u8, u8) = (0, 0);
    pub const INITIATOR_ERROR: (u8, u8) = (2, 0);
    pub const AUTH_FAILURE: (u8, u8) = (2, 1);
    pub const AUTHORIZATION_FAILURE: (u8, u8) = (2, 2);
    pub const NOT_FOUND: (u8, u8) = (2, 3);
    pub const TARGET_REMOVED: (u8, u8) = (2, 4);
    pub const UNSUPPORTED_VERSION: (u8, u8) = (2, 5);
    pub const TOO_MANY_CONNECTIONS: (u8, u8) = (2, 6);
    pub const MISSING_PARAMETER: (u8, u8) = (2, 7);
    pub const CANT_INCLUDE_IN_SESSION: (u8, u8) = (2, 8);
    pub const SESSION_TYPE_NOT_SUPPORTED: (u8, u8) = (2, 9);
    pub const SESSION_DOES_NOT_EXIST: (u8, u8) = (2, 10);
    pub const INVALID_DURING_LOGIN: (u8, u8) = (2, 11);
    pub const TARGET_ERROR: (u8, u8) = (3, 0);
    pub const SERVICE_UNAVAILABLE: (u8, u8) = (3, 1);
    pub const OUT_OF_RESOURCES: (u8, u8) = (3, 2);
}

/// Login stage numbers.
pub const STAGE_SECURITY: u8 = 0;
pub const STAGE_OPERATIONAL: u8 = 1;
pub const STAGE_FULL_FEATURE: u8 = 3;

/// The most text a login may accumulate over continued (C bit) PDUs.
const MAX_LOGIN_TEXT: usize = 65536;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Auth {
    /// No AuthMethod decided yet.
    Pending,
    /// AuthMethod=CHAP agreed, waiting for CHAP_A.
    ChapChosen,
    /// Challenge sent, waiting for CHAP_N/CHAP_R.
    ChallengeSent(ChapAlgorithm),
    /// Authentication finished (or not required).
    Done,
}

/// State handed to the full-feature session when a login succeeds.
#[derive(Clone, Debug)]
pub struct LoginDone {
    pub outcome: LoginOutcome,
    /// The StatSN of the next target PDU that carries one.
    pub next_stat_sn: u32,
    /// ExpCmdSN: the CmdSN of the first command (the login's CmdSN).
    pub exp_cmd_sn: u32,
    /// The target's configuration (None for Discovery).
    pub target: Option<TargetConfig>,
}

/// The login state machine of one connection.
pub struct Login {
    config: Arc<IscsiConfig>,
    portal: PortalInfo,
    entropy: LoginEntropy,
    stage: u8,
    started: bool,
    isid: [u8; 6],
    tsih: u16,
    stat_sn: u32,
    exp_cmd_sn: u32,
    initiator_name: Option<String>,
    session_type: SessionType,
    target: Option<TargetConfig>,
    chap: Vec<ChapConfig>,
    auth: Auth,
    params: SessionParams,
    pending_text: BytesMut,
    sent_tpgt: bool,
    declared_mrdsl: bool,
    done: Option<LoginDone>,
    failed: bool,
}

type Status = (u8, u8);

impl Login {
    pub fn new(config: Arc<IscsiConfig>, portal: PortalInfo, entropy: LoginEntropy) -> Login {
        let params = SessionParams::with_limits(&config.limits);
        Login {
            config,
            portal,
            entropy,
            stage: STAGE_SECURITY,
            started: false,
            isid: [0; 6],
            tsih: 0,
            stat_sn: 0,
            exp_cmd_sn: 0,
            initiator_name: None,
            session_type: SessionType::Normal,
            target: None,
            chap: Vec::new(),
            auth: Auth::Pending,
            params,
            pending_text: BytesMut::new(),
            sent_tpgt: false,
            declared_mrdsl: false,
            done: None,
            failed: false,
        }
    }

    pub fn config(&self) -> Arc<IscsiConfig> {
        self.config.clone()
    }

    pub fn portal(&self) -> PortalInfo {
        self.portal.clone()
    }

    /// The finished login, once (the caller switches to full feature phase).
    pub fn take_finished(&mut self) -> Option<LoginDone> {
        self.done.take()
    }

    /// Whether the login failed (a failing response and `Close` were emitted).
    pub fn failed(&self) -> bool {
        self.failed
    }

    /// Handles one PDU received during login.
    pub fn handle_pdu(&mut self, pdu: &Pdu, actions: &mut VecDeque<Action>) {
        if self.failed || self.done.is_some() {
            return;
        }
        if pdu.opcode() != Some(Opcode::LoginRequest) {
            self.failed = true;
            actions.push_back(Action::Close(CloseReason::ProtocolError(format!(
                "opcode {:#04x} during login",
                pdu.opcode_raw()
            ))));
            return;
        }
        match self.step(pdu) {
            Ok(resp) => {
                let final_response = resp.login_transit() && resp.login_nsg() == STAGE_FULL_FEATURE;
                actions.push_back(Action::Send(resp));
                if final_response {
                    let done = self.finish();
                    actions.push_back(Action::LoginComplete(done.outcome.clone()));
                    self.done = Some(done);
                }
            }
            Err(st) => {
                let resp = self.response(pdu, false, st, Bytes::new());
                self.failed = true;
                actions.push_back(Action::Send(resp));
                actions.push_back(Action::Close(CloseReason::LoginFailed));
            }
        }
    }

    fn finish(&mut self) -> LoginDone {
        let identity = SessionIdentity {
            initiator_name: self.initiator_name.clone().unwrap_or_default(),
            isid: self.isid,
            tsih: self.entropy.tsih,
            session_type: self.session_type,
            target_name: self.target.as_ref().map(|t| t.name.clone()),
            portal_group_tag: self.portal.portal_group_tag,
        };
        LoginDone {
            outcome: LoginOutcome {
                identity,
                params: self.params.clone(),
            },
            next_stat_sn: self.stat_sn,
            exp_cmd_sn: self.exp_cmd_sn,
            target: self.target.clone(),
        }
    }

    /// Builds a Login Response to `req` and advances StatSN.
    fn response(&mut self, req: &Pdu, transit: bool, st: Status, data: Bytes) -> Pdu {
        let mut p = Pdu::new(Opcode::LoginResponse);
        let (csg, nsg) = if st == status::SUCCESS {
            (req.login_csg(), if transit { req.login_nsg() } else { 0 })
        } else {
            (req.login_csg(), 0)
        };
        p.set_login_stages(transit, false, csg, nsg);
        p.set_isid(self.isid);
        let final_ok = transit && nsg == STAGE_FULL_FEATURE && st == status::SUCCESS;
        p.set_tsih(if final_ok {
            self.entropy.tsih
        } else {
            self.tsih
        });
        p.set_itt(req.itt());
        p.set_stat_sn(self.stat_sn);
        self.stat_sn = self.stat_sn.wrapping_add(1);
        p.set_exp_cmd_sn(self.exp_cmd_sn);
        let depth = self.params.queue_depth.max(1);
        p.set_max_cmd_sn(self.exp_cmd_sn.wrapping_add(depth - 1));
        p.set_login_status(st.0, st.1);
        p.set_data(data);
        p
    }

    fn step(&mut self, pdu: &Pdu) -> Result<Pdu, Status> {
        if !self.started {
            self.started = true;
            self.isid = pdu.isid();
            self.tsih = pdu.tsih();
            self.stat_sn = pdu.exp_stat_sn();
            self.exp_cmd_sn = pdu.cmd_sn();
            if pdu.version_min() > 0 {
                return Err(status::UNSUPPORTED_VERSION);
            }
            if self.tsih != 0 {
                // One connection per session: there is no session to add this connection to.
                return Err(status::SESSION_DOES_NOT_EXIST);
            }
        } else if pdu.isid() != self.isid || pdu.tsih() != self.tsih {
            return Err(status::INITIATOR_ERROR);
        }
        if self.pending_text.len() + pdu.data.len() > MAX_LOGIN_TEXT {
            return Err(status::INITIATOR_ERROR);
        }
        self.pending_text.extend_from_slice(&pdu.data);
        if pdu.continue_bit() {
            if pdu.login_transit() {
                return Err(status::INITIATOR_ERROR);
            }
            // More text follows: acknowledge with an empty response in the same stage.
            return Ok(self.response(pdu, false, status::SUCCESS, Bytes::new()));
        }
        let raw = std::mem::take(&mut self.pending_text);
        let keys = TextPairs::parse(&raw).map_err(|_| status::INITIATOR_ERROR)?;

        let csg = pdu.login_csg();
        if csg == 2 || csg == STAGE_FULL_FEATURE || csg < self.stage {
            return Err(status::INITIATOR_ERROR);
        }
        let first_exchange = self.initiator_name.is_none();
        if first_exchange {
            self.identify(&keys)?;
        }
        if csg == STAGE_OPERATIONAL && self.stage == STAGE_SECURITY {
            // The initiator skipped security negotiation.
            if !self.chap.is_empty() {
                return Err(status::AUTH_FAILURE);
            }
            self.auth = Auth::Done;
        }
        self.stage = csg;

        let mut reply = TextPairs::new();
        if !self.sent_tpgt {
            self.sent_tpgt = true;
            if self.session_type == SessionType::Normal {
                if let Some(alias) = self.target.as_ref().and_then(|t| t.alias.clone()) {
                    reply.push("TargetAlias", alias);
                }
            }
            reply.push(
                "TargetPortalGroupTag",
                self.portal.portal_group_tag.to_string(),
            );
        }
        self.negotiate(&keys, csg, &mut reply)?;

        let mut transit = false;
        if pdu.login_transit() {
            let nsg = pdu.login_nsg();
            let valid = match csg {
                STAGE_SECURITY => nsg == STAGE_OPERATIONAL || nsg == STAGE_FULL_FEATURE,
                _ => nsg == STAGE_FULL_FEATURE,
            };
            if !valid {
                return Err(status::INITIATOR_ERROR);
            }
            if csg == STAGE_SECURITY && self.auth == Auth::Pending {
                // No AuthMethod was offered: only acceptable when none is required.
                if !self.chap.is_empty() {
                    return Err(status::AUTH_FAILURE);
                }
                self.auth = Auth::Done;
            }
            transit = self.auth == Auth::Done;
            if transit
                && nsg == STAGE_FULL_FEATURE
                && csg == STAGE_OPERATIONAL
                && !self.declared_mrdsl
            {
                self.declared_mrdsl = true;
                reply.push(
                    "MaxRecvDataSegmentLength",
                    self.params.max_recv_data_segment_length.to_string(),
                );
            }
            if transit && nsg == STAGE_FULL_FEATURE && csg == STAGE_SECURITY && !self.declared_mrdsl
            {
                // No operational stage: the initiator keeps the default 8192.
                self.params.max_recv_data_segment_length =
                    self.params.max_recv_data_segment_length.max(8192);
            }
        }
        if transit && pdu.login_nsg() != STAGE_FULL_FEATURE {
            self.stage = pdu.login_nsg();
        }
        let data = reply.to_bytes();
        Ok(self.response(pdu, transit, status::SUCCESS, data))
    }

    /// First exchange: InitiatorName, SessionType, TargetName, ACLs.
    fn identify(&mut self, keys: &TextPairs) -> Result<(), Status> {
        let name = keys.get("InitiatorName").ok_or(status::MISSING_PARAMETER)?;
        if name.is_empty() {
            return Err(status::MISSING_PARAMETER);
        }
        self.initiator_name = Some(name.to_string());
        self.session_type = match keys.get("SessionType") {
            None | Some("Normal") => SessionType::Normal,
            Some("Discovery") => SessionType::Discovery,
            Some(_) => return Err(status::SESSION_TYPE_NOT_SUPPORTED),
        };
        match self.session_type {
            SessionType::Normal => {
                let tname = keys.get("TargetName").ok_or(status::MISSING_PARAMETER)?;
                let target = self
                    .config
                    .target(tname)
                    .cloned()
                    .ok_or(status::NOT_FOUND)?;
                if !target.admits(name) {
                    return Err(status::AUTHORIZATION_FAILURE);
                }
                self.chap = target.chap.clone();
                self.target = Some(target);
            }
            SessionType::Discovery => {
                if self.config.discovery_deny {
                    return Err(status::AUTHORIZATION_FAILURE);
                }
                self.chap = self.config.discovery_chap.clone();
            }
        }
        Ok(())
    }

    fn negotiate(
        &mut self,
        keys: &TextPairs,
        csg: u8,
        reply: &mut TextPairs,
    ) -> Result<(), Status> {
        let discovery = self.session_type == SessionType::Discovery;
        let mut seen: Vec<&str> = Vec::new();
        // CHAP keys are handled together after AuthMethod.
        let mut chap_keys = false;
        for (k, v) in keys.iter() {
            if seen.contains(&k) {
                continue;
            }
            seen.push(k);
            match k {
                "AuthMethod" => {
                    if csg != STAGE_SECURITY {
                        reply.push(k, IRRELEVANT);
                        continue;
                    }
                    self.choose_auth_method(v, reply)?;
                }
                "CHAP_A" | "CHAP_N" | "CHAP_R" | "CHAP_I" | "CHAP_C" => chap_keys = true,
                "TargetAlias" | "TargetAddress" | "TargetPortalGroupTag" => {
                    // Declared by the target only.
                    reply.push(k, REJECT);
                }
                _ => match negotiate_key(k, v, &self.config.limits, &mut self.params, discovery) {
                    KeyOutcome::Reply(r) => {
                        if k == "MaxRecvDataSegmentLength" {
                            self.declared_mrdsl = true;
                        }
                        reply.push(k, r)
                    }
                    KeyOutcome::Accepted => {}
                    KeyOutcome::Unknown => reply.push(k, NOT_UNDERSTOOD),
                },
            }
        }
        if chap_keys {
            if csg != STAGE_SECURITY {
                return Err(status::INITIATOR_ERROR);
            }
            self.chap_exchange(keys, reply)?;
        }
        Ok(())
    }

    fn choose_auth_method(&mut self, offer: &str, reply: &mut TextPairs) -> Result<(), Status> {
        if self.auth != Auth::Pending {
            // Renegotiating AuthMethod mid-exchange is an initiator error.
            return Err(status::INITIATOR_ERROR);
        }
        let list = text::parse_list(offer);
        if !self.chap.is_empty() {
            if list.contains(&"CHAP") {
                self.auth = Auth::ChapChosen;
                reply.push("AuthMethod", "CHAP");
                Ok(())
            } else {
                Err(status::AUTH_FAILURE)
            }
        } else if list.contains(&"None") {
            self.auth = Auth::Done;
            reply.push("AuthMethod", "None");
            Ok(())
        } else {
            // Nothing to authenticate with: only None is possible.
            Err(status::AUTH_FAILURE)
        }
    }

    fn chap_exchange(&mut self, keys: &TextPairs, reply: &mut TextPairs) -> Result<(), Status> {
        if self.chap.is_empty() {
            return Err(status::AUTH_FAILURE);
        }
        match self.auth.clone() {
            Auth::ChapChosen => {
                let offer = keys.get("CHAP_A").ok_or(status::AUTH_FAILURE)?;
                let alg = ChapAlgorithm::choose(offer).ok_or(status::AUTH_FAILURE)?;
                let n = alg.digest_len();
                let challenge = &self.entropy.chap_challenge[..n];
                reply.push("CHAP_A", alg.number().to_string());
                reply.push("CHAP_I", self.entropy.chap_id.to_string());
                reply.push("CHAP_C", text::format_hex(challenge));
                self.auth = Auth::ChallengeSent(alg);
                Ok(())
            }
            Auth::ChallengeSent(alg) => {
                let name = keys.get("CHAP_N").ok_or(status::AUTH_FAILURE)?;
                let resp = keys.get("CHAP_R").ok_or(status::AUTH_FAILURE)?;
                let resp = text::parse_binary(resp).map_err(|_| status::AUTH_FAILURE)?;
                let challenge = &self.entropy.chap_challenge[..alg.digest_len()];
                // CHAP_N is a literal user name, never a binary value.
                let chap = self
                    .chap
                    .iter()
                    .find(|c| c.initiator.user == name)
                    .ok_or(status::AUTH_FAILURE)?;
                let expected =
                    alg.response(self.entropy.chap_id, &chap.initiator.secret, challenge);
                if !constant_time_eq(&resp, &expected) {
                    return Err(status::AUTH_FAILURE);
                }
                match (keys.get("CHAP_I"), keys.get("CHAP_C")) {
                    (None, None) => {}
                    (Some(id), Some(ch)) => {
                        let target = chap.target.as_ref().ok_or(status::AUTH_FAILURE)?;
                        let id = text::parse_number(id)
                            .filter(|n| *n <= 255)
                            .ok_or(status::AUTH_FAILURE)?;
                        let ch = text::parse_binary(ch).map_err(|_| status::AUTH_FAILURE)?;
                        if ch.is_empty() || ch.len() > 1024 || constant_time_eq(&ch, challenge) {
                            return Err(status::AUTH_FAILURE);
                        }
                        let r = alg.response(id as u8, &target.secret, &ch);
                        reply.push("CHAP_N", target.user.clone());
                        reply.push("CHAP_R", text::format_hex(&r));
                    }
                    _ => return Err(status::AUTH_FAILURE),
                }
                self.auth = Auth::Done;
                Ok(())
            }
            Auth::Pending | Auth::Done => Err(status::INITIATOR_ERROR),
        }
    }
}
