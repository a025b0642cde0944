//! The iSCSI PDU codec over arbitrary bytes.
//!
//! Input: one configuration byte, then the stream. Configuration bits: 0 header digest, 1 data
//! digest, 2-3 MaxRecvDataSegmentLength (8192, 512, 262144, 16 MiB - 1), 4 "framed" mode.
//!
//! - Stream mode: the bytes are decoded as they come, PDU after PDU, exactly as a connection
//!   reads them. Every decoded PDU must re-encode and decode to itself; every non-fatal error
//!   must consume bytes.
//! - Framed mode: the stream is cut into (BHS, AHS, data) parts that are encoded with correct
//!   digests, optionally one byte is flipped, and the result is decoded. This reaches the code
//!   behind the digest checks, which random bytes almost never pass.
//!
//! Never panics; the accessors a connection uses on a received PDU are exercised too.
#![no_main]

use bytes::{Bytes, BytesMut};
use duet_core::iscsi::{Codec, Pdu, BHS_LEN};
use libfuzzer_sys::fuzz_target;

fn codec_of(cfg: u8) -> Codec {
    Codec {
        header_digest: cfg & 1 != 0,
        data_digest: cfg & 2 != 0,
        max_recv_data_segment_length: match (cfg >> 2) & 3 {
            0 => 8192,
            1 => 512,
            2 => 262_144,
            _ => 0x00ff_ffff,
        },
    }
}

/// Reads the fields a connection looks at, so their decoding runs on hostile headers.
fn touch(p: &Pdu) {
    let _ = p.opcode();
    let _ = p.lun().number();
    let _ = p.ahs_segments();
    let _ = p.cdb();
    let _ = p.bidi_read_length();
    let _ = p.sense_data();
    let _ = p.task_attr();
    let _ = (p.login_csg(), p.login_nsg(), p.isid(), p.tmf_function());
    let _ = format!("{p:?}");
}

/// Encodes `p` and decodes it again: the codec must give back the very same PDU and consume
/// exactly what it wrote.
fn roundtrip(codec: &Codec, p: &Pdu) {
    let mut out = BytesMut::new();
    codec.encode(p, &mut out);
    let [h, d, t] = codec.encode_vectored(p);
    assert_eq!(
        out.len(),
        h.len() + d.len() + t.len(),
        "encode and encode_vectored disagree"
    );
    let again = codec.decode(&mut out);
    match again {
        Ok(Some(q)) => {
            assert_eq!(&q, p, "decode(encode(pdu)) differs from pdu");
            assert!(out.is_empty(), "{} bytes left after re-decoding", out.len());
        }
        other => panic!("re-encoded PDU {p:?} does not decode: {other:?}"),
    }
}

/// Decodes `buf` to the end, checking every PDU and that errors make progress.
fn decode_stream(codec: &Codec, buf: &mut BytesMut) {
    loop {
        let before = buf.len();
        match codec.decode(buf) {
            Ok(None) => return,
            Ok(Some(p)) => {
                assert!(buf.len() < before, "a decoded PDU consumed nothing");
                touch(&p);
                roundtrip(codec, &p);
            }
            Err(e) => {
                let _ = e.to_string();
                if e.is_fatal() {
                    assert!(e.reject_reason().is_none());
                    return;
                }
                assert!(
                    e.reject_reason().is_some(),
                    "non-fatal error without reason"
                );
                assert!(buf.len() < before, "non-fatal error {e} consumed nothing");
                if let Some(p) = e.pdu() {
                    touch(p);
                }
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&cfg, rest)) = data.split_first() else {
        return;
    };
    let codec = codec_of(cfg);
    if cfg & 0x10 == 0 {
        let mut buf = BytesMut::from(rest);
        decode_stream(&codec, &mut buf);
        return;
    }
    // Framed: [flip: u16 BE][bhs 48][ahs_len u8][data_len u16 BE] ahs data, repeated.
    let Some((flip, mut rest)) = rest.split_first_chunk::<2>() else {
        return;
    };
    let mut stream = BytesMut::new();
    while rest.len() >= BHS_LEN + 3 {
        let mut bhs = [0u8; BHS_LEN];
        bhs.copy_from_slice(&rest[..BHS_LEN]);
        let ahs_len = rest[BHS_LEN] as usize;
        let dlen = u16::from_be_bytes([rest[BHS_LEN + 1], rest[BHS_LEN + 2]]) as usize;
        rest = &rest[BHS_LEN + 3..];
        let ahs_len = ahs_len.min(rest.len());
        let ahs = Bytes::copy_from_slice(&rest[..ahs_len]);
        rest = &rest[ahs_len..];
        let dlen = dlen.min(rest.len());
        let seg = Bytes::copy_from_slice(&rest[..dlen]);
        rest = &rest[dlen..];
        let mut p = Pdu::from_parts(bhs, Bytes::new(), Bytes::new());
        p.set_ahs(ahs);
        p.set_data(seg);
        codec.encode(&p, &mut stream);
    }
    let flip = u16::from_be_bytes(*flip) as usize;
    if flip != 0 && flip <= stream.len() {
        stream[flip - 1] ^= 0x01;
    }
    decode_stream(&codec, &mut stream);
});
