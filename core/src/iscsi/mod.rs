//! iSCSI (RFC 7143): PDU codec, login and text negotiation, session state.
