//! Operational parameters: the target's limits, the negotiated session parameters and the
//! negotiation of each operational key (RFC 7143 §13).

use super::text::{self, IRRELEVANT, NOT_UNDERSTOOD, REJECT};

/// Smallest legal MaxRecvDataSegmentLength / MaxBurstLength / FirstBurstLength.
pub const MIN_SEGMENT: u32 = 512;
/// Largest legal MaxRecvDataSegmentLength / MaxBurstLength / FirstBurstLength.
pub const MAX_SEGMENT: u32 = 0x00ff_ffff;

/// What this target offers and accepts. The runtime fills it from its configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetLimits {
    /// What the target declares it receives per PDU (its MaxRecvDataSegmentLength).
    pub max_recv_data_segment_length: u32,
    /// The largest MaxBurstLength the target agrees to.
    pub max_burst_length: u32,
    /// The largest FirstBurstLength the target agrees to.
    pub first_burst_length: u32,
    /// The largest MaxOutstandingR2T the target agrees to.
    pub max_outstanding_r2t: u32,
    /// The target's InitialR2T value (`false` lets the initiator send unsolicited Data-Out).
    pub initial_r2t: bool,
    /// The target's ImmediateData value.
    pub immediate_data: bool,
    /// Whether CRC32C header digests may be agreed.
    pub allow_header_digest: bool,
    /// Whether CRC32C data digests may be agreed.
    pub allow_data_digest: bool,
    /// Commands the CmdSN window admits beyond ExpCmdSN (MaxCmdSN = ExpCmdSN + depth - 1).
    pub queue_depth: u32,
    /// Interval of target-initiated NOP-In pings in milliseconds, 0 = none.
    pub nop_in_interval_ms: u64,
    /// How long to wait for the answer to a NOP-In ping before closing, 0 = forever.
    pub nop_in_timeout_ms: u64,
    /// DefaultTime2Wait the target proposes (seconds).
    pub default_time2wait: u16,
    /// DefaultTime2Retain the target proposes (seconds).
    pub default_time2retain: u16,
    /// How long a connection may take to finish its login, in milliseconds, 0 = forever.
    pub login_timeout_ms: u64,
}

impl Default for TargetLimits {
    fn default() -> Self {
        TargetLimits {
            max_recv_data_segment_length: 262_144,
            max_burst_length: 1_048_576,
            first_burst_length: 262_144,
            max_outstanding_r2t: 1,
            initial_r2t: false,
            immediate_data: true,
            allow_header_digest: true,
            allow_data_digest: true,
            queue_depth: 128,
            nop_in_interval_ms: 0,
            nop_in_timeout_ms: 0,
            default_time2wait: 2,
            default_time2retain: 0,
            login_timeout_ms: 30_000,
        }
    }
}

/// The session's negotiated operational parameters.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SessionParams {
    pub header_digest: bool,
    pub data_digest: bool,
    /// What the target receives per PDU (declared by the target).
    pub max_recv_data_segment_length: u32,
    /// What the target may send per PDU (the initiator's MaxRecvDataSegmentLength).
    pub max_xmit_data_segment_length: u32,
    pub max_burst_length: u32,
    pub first_burst_length: u32,
    pub initial_r2t: bool,
    pub immediate_data: bool,
    pub max_outstanding_r2t: u32,
    pub data_pdu_in_order: bool,
    pub data_sequence_in_order: bool,
    pub default_time2wait: u16,
    pub default_time2retain: u16,
    pub error_recovery_level: u8,
    pub max_connections: u16,
    /// Commands the CmdSN window admits (from [`TargetLimits::queue_depth`]).
    pub queue_depth: u32,
}

impl Default for SessionParams {
    /// RFC 7143 defaults.
    fn default() -> Self {
        SessionParams {
            header_digest: false,
            data_digest: false,
            max_recv_data_segment_length: 8192,
            max_xmit_data_segment_length: 8192,
            max_burst_length: 262_144,
            first_burst_length: 65_536,
            initial_r2t: true,
            immediate_data: true,
            max_outstanding_r2t: 1,
            data_pdu_in_order: true,
            data_sequence_in_order: true,
            default_time2wait: 2,
            default_time2retain: 20,
            error_recovery_level: 0,
            max_connections: 1,
            queue_depth: 128,
        }
    }
}

impl SessionParams {
    /// Defaults for a session with `limits`: RFC defaults, the target's own receive length.
    pub fn with_limits(limits: &TargetLimits) -> SessionParams {
        SessionParams {
            max_recv_data_segment_length: limits
                .max_recv_data_segment_length
                .clamp(MIN_SEGMENT, MAX_SEGMENT),
            queue_depth: limits.queue_depth.max(1),
            ..SessionParams::default()
        }
    }
}

/// How one offered operational key was answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyOutcome {
    /// Reply with this value.
    Reply(String),
    /// Declarative key accepted: no reply needed.
    Accepted,
    /// Not an operational key this module handles.
    Unknown,
}

fn num_in(v: &str, lo: u64, hi: u64) -> Option<u64> {
    text::parse_number(v).filter(|n| *n >= lo && *n <= hi)
}

fn digest_choice(v: &str, allow: bool) -> Option<bool> {
    for item in text::parse_list(v) {
        match item {
            "None" => return Some(false),
            "CRC32C" if allow => return Some(true),
            _ => {}
        }
    }
    None
}

/// Negotiates one operational key offered by the initiator, updating `params`. Keys this
/// function does not know give [`KeyOutcome::Unknown`]; bad values give `Reply("Reject")` and
/// leave `params` unchanged. `discovery` marks keys that are irrelevant in a Discovery session.
pub fn negotiate_key(
    key: &str,
    value: &str,
    limits: &TargetLimits,
    params: &mut SessionParams,
    discovery: bool,
) -> KeyOutcome {
    use KeyOutcome::*;
    let reject = || Reply(REJECT.to_string());
    let yes_no = |b: bool| Reply(text::format_bool(b).to_string());
    if value == NOT_UNDERSTOOD || value == REJECT || value == IRRELEVANT {
        // An initiator never offers these; accept and keep defaults.
        return Accepted;
    }
    match key {
        "HeaderDigest" => match digest_choice(value, limits.allow_header_digest) {
            Some(on) => {
                params.header_digest = on;
                Reply(if on { "CRC32C" } else { "None" }.into())
            }
            None => reject(),
        },
        "DataDigest" => match digest_choice(value, limits.allow_data_digest) {
            Some(on) => {
                params.data_digest = on;
                Reply(if on { "CRC32C" } else { "None" }.into())
            }
            None => reject(),
        },
        "MaxConnections" => match num_in(value, 1, 65535) {
            Some(_) => {
                params.max_connections = 1;
                Reply("1".into())
            }
            None => reject(),
        },
        "InitialR2T" => match text::parse_bool(value) {
            Some(b) if !discovery => {
                params.initial_r2t = b || limits.initial_r2t;
                yes_no(params.initial_r2t)
            }
            Some(_) => Reply(IRRELEVANT.into()),
            None => reject(),
        },
        "ImmediateData" => match text::parse_bool(value) {
            Some(b) if !discovery => {
                params.immediate_data = b && limits.immediate_data;
                yes_no(params.immediate_data)
            }
            Some(_) => Reply(IRRELEVANT.into()),
            None => reject(),
        },
        "MaxRecvDataSegmentLength" => match num_in(value, MIN_SEGMENT as u64, MAX_SEGMENT as u64) {
            Some(n) => {
                params.max_xmit_data_segment_length = n as u32;
                // Declarative: the target answers with its own value.
                Reply(params.max_recv_data_segment_length.to_string())
            }
            None => reject(),
        },
        "MaxBurstLength" => match num_in(value, MIN_SEGMENT as u64, MAX_SEGMENT as u64) {
            Some(_) if discovery => Reply(IRRELEVANT.into()),
            Some(n) => {
                params.max_burst_length = (n as u32).min(limits.max_burst_length.max(MIN_SEGMENT));
                if params.first_burst_length > params.max_burst_length {
                    params.first_burst_length = params.max_burst_length;
                }
                Reply(params.max_burst_length.to_string())
            }
            None => reject(),
        },
        "FirstBurstLength" => match num_in(value, MIN_SEGMENT as u64, MAX_SEGMENT as u64) {
            Some(_) if discovery => Reply(IRRELEVANT.into()),
            Some(n) => {
                params.first_burst_length = (n as u32)
                    .min(limits.first_burst_length.max(MIN_SEGMENT))
                    .min(params.max_burst_length);
                Reply(params.first_burst_length.to_string())
            }
            None => reject(),
        },
        "DefaultTime2Wait" => match num_in(value, 0, 3600) {
            Some(n) => {
                params.default_time2wait = (n as u16).max(limits.default_time2wait.min(3600));
                Reply(params.default_time2wait.to_string())
            }
            None => reject(),
        },
        "DefaultTime2Retain" => match num_in(value, 0, 3600) {
            Some(n) => {
                params.default_time2retain = (n as u16).min(limits.default_time2retain);
                Reply(params.default_time2retain.to_string())
            }
            None => reject(),
        },
        "MaxOutstandingR2T" => match num_in(value, 1, 65535) {
            Some(_) if discovery => Reply(IRRELEVANT.into()),
            Some(n) => {
                params.max_outstanding_r2t = (n as u32).min(limits.max_outstanding_r2t.max(1));
                Reply(params.max_outstanding_r2t.to_string())
            }
            None => reject(),
        },
        "DataPDUInOrder" => match text::parse_bool(value) {
            Some(_) if discovery => Reply(IRRELEVANT.into()),
            Some(_) => {
                // OR with the target's Yes: data always arrives in order.
                params.data_pdu_in_order = true;
                yes_no(true)
            }
            None => reject(),
        },
        "DataSequenceInOrder" => match text::parse_bool(value) {
            Some(_) if discovery => Reply(IRRELEVANT.into()),
            Some(_) => {
                params.data_sequence_in_order = true;
                yes_no(true)
            }
            None => reject(),
        },
        "ErrorRecoveryLevel" => match num_in(value, 0, 2) {
            Some(_) => {
                params.error_recovery_level = 0;
                Reply("0".into())
            }
            None => reject(),
        },
        "IFMarker" | "OFMarker" => match text::parse_bool(value) {
            Some(_) => yes_no(false),
            None => reject(),
        },
        "IFMarkInt" | "OFMarkInt" => Reply(IRRELEVANT.into()),
        "InitiatorAlias" | "InitiatorName" | "TargetName" | "SessionType" => Accepted,
        _ => Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn neg(key: &str, v: &str) -> (KeyOutcome, SessionParams) {
        let limits = TargetLimits::default();
        let mut p = SessionParams::with_limits(&limits);
        let o = negotiate_key(key, v, &limits, &mut p, false);
        (o, p)
    }

    fn reply(s: &str) -> KeyOutcome {
        KeyOutcome::Reply(s.to_string())
    }

    #[test]
    fn results_follow_the_rfc_table() {
        assert_eq!(neg("HeaderDigest", "None,CRC32C").0, reply("None"));
        let (o, p) = neg("HeaderDigest", "CRC32C,None");
        assert_eq!(o, reply("CRC32C"));
        assert!(p.header_digest);
        assert_eq!(neg("HeaderDigest", "MD5").0, reply("Reject"));
        assert_eq!(neg("MaxConnections", "8").0, reply("1"));
        assert_eq!(neg("InitialR2T", "No").0, reply("No"));
        assert_eq!(neg("ImmediateData", "Yes").0, reply("Yes"));
        let (o, p) = neg("MaxRecvDataSegmentLength", "4096");
        assert_eq!(o, reply("262144"));
        assert_eq!(p.max_xmit_data_segment_length, 4096);
        assert_eq!(neg("MaxRecvDataSegmentLength", "100").0, reply("Reject"));
        assert_eq!(neg("MaxBurstLength", "16776192").0, reply("1048576"));
        assert_eq!(neg("FirstBurstLength", "65536").0, reply("65536"));
        assert_eq!(neg("MaxOutstandingR2T", "8").0, reply("1"));
        assert_eq!(neg("ErrorRecoveryLevel", "2").0, reply("0"));
        assert_eq!(neg("ErrorRecoveryLevel", "3").0, reply("Reject"));
        assert_eq!(neg("DefaultTime2Wait", "0").0, reply("2"));
        assert_eq!(neg("DefaultTime2Retain", "20").0, reply("0"));
        assert_eq!(neg("IFMarker", "No").0, reply("No"));
        assert_eq!(neg("DataPDUInOrder", "No").0, reply("Yes"));
        assert_eq!(neg("X-Unknown", "1").0, KeyOutcome::Unknown);
        assert_eq!(neg("InitiatorAlias", "host").0, KeyOutcome::Accepted);
    }

    #[test]
    fn initial_r2t_is_or_and_immediate_data_is_and() {
        let limits = TargetLimits {
            initial_r2t: true,
            immediate_data: false,
            ..TargetLimits::default()
        };
        let mut p = SessionParams::with_limits(&limits);
        assert_eq!(
            negotiate_key("InitialR2T", "No", &limits, &mut p, false),
            reply("Yes")
        );
        assert_eq!(
            negotiate_key("ImmediateData", "Yes", &limits, &mut p, false),
            reply("No")
        );
        assert!(p.initial_r2t);
        assert!(!p.immediate_data);
    }
}
