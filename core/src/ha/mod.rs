//! The per-controller HA state machine (DESIGN §2.1-2.2).
