//! iSCSI (RFC 7143): the PDU codec, text keys, login and negotiation with CHAP, and the
//! full-feature session state machine. Bytes in, PDUs and actions out; no I/O, no clock.
//!
//! The runtime drives one [`Connection`] per TCP connection together with a [`Codec`]:
//! decoded PDUs go into [`Connection::handle_pdu`], and the [`Action`]s that come out of
//! [`Connection::poll_action`] are carried out in order.

pub mod chap;
pub mod codec;
pub mod config;
pub mod connection;
pub mod initiator;
pub mod login;
pub mod params;
pub mod pdu;
pub mod serial;
pub mod session;
pub mod text;
pub mod types;

pub use chap::ChapAlgorithm;
pub use codec::{Codec, PduError};
pub use config::{
    ChapConfig, ChapCredentials, IscsiConfig, LoginEntropy, PortalInfo, SessionIdentity,
    SessionType, TargetConfig, TsihAllocator,
};
pub use connection::Connection;
pub use initiator::{InitiatorLogin, LoginError, LoginPlan, LoginResult};
pub use login::Login;
pub use params::{SessionParams, TargetLimits};
pub use pdu::{Lun, Opcode, Pdu, TaskAttr, BHS_LEN, RESERVED_TAG};
pub use session::Session;
pub use text::{TextError, TextPairs};
pub use types::{
    Action, CloseReason, Completion, LoginOutcome, Millis, ScsiCommand, TmfFunction, TmfRequest,
    TmfResponse,
};
