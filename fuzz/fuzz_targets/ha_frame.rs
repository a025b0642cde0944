//! The HA link's frame header and the postcard messages the peer controller sends.
//!
//! Input: `[selector]` then bytes. Selector bit 0: the first 12 bytes are a frame header checked
//! against a limit chosen by bits 1-3, the rest a payload; otherwise the whole rest is a
//! `LinkMsg` payload.
//!
//! Properties: nothing panics; an accepted header re-encodes to the very same 12 bytes and never
//! claims more than the limit; a decoded message re-encodes to bytes that decode to a message
//! with the same encoding.
//!
//! The login messages (the hello/proof handshake) are fuzzed by `ha_handshake`.
#![no_main]

use bytes::Bytes;
use duet_target::ha::link::{FrameHeader, HEADER_LEN, MAX_PAYLOAD};
use duet_target::ha::proto;
use libfuzzer_sys::fuzz_target;

fn check_message(payload: &[u8]) {
    let Ok(msg) = proto::decode(&Bytes::copy_from_slice(payload)) else {
        return;
    };
    let _ = format!("{msg:?}");
    let bytes = proto::encode(msg).expect("a decoded message encodes").to_vec();
    let again = proto::decode(&Bytes::from(bytes.clone())).expect("a re-encoded message decodes");
    let bytes2 = proto::encode(again).expect("a decoded message encodes").to_vec();
    assert_eq!(bytes, bytes2, "message does not survive re-encoding");
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    if sel & 1 == 0 {
        check_message(rest);
        return;
    }
    let Some((h, payload)) = rest.split_first_chunk::<HEADER_LEN>() else {
        return;
    };
    let max = match (sel >> 1) & 7 {
        0 => MAX_PAYLOAD,
        1 => 0,
        2 => 64 * 1024,
        3 => usize::MAX,
        4 => u32::MAX as usize,
        _ => 4096,
    };
    if let Ok(header) = FrameHeader::decode(h, max) {
        assert!(header.len as u64 <= max as u64);
        assert_eq!(&header.encode(), h, "header does not re-encode to itself");
        check_message(payload);
    } else if let Err(e) = FrameHeader::decode(h, max) {
        let _ = e.to_string();
    }
});
