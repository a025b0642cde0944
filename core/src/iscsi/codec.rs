//! The PDU framing codec: a streaming decoder and an encoder with optional CRC32C header and
//! data digests (RFC 7143 §11.2, §13.1).
//!
//! The decoder never panics, whatever the input. It bounds the data segment by the negotiated
//! MaxRecvDataSegmentLength and tells apart the errors a target handles differently: a header
//! digest failure or an oversized segment (the connection must be dropped), a data digest failure
//! (Reject reason 2, the PDU is discarded), a malformed PDU (Reject reason 4) and an unknown
//! opcode (Reject reason 5). For the last three the PDU's bytes are consumed so the stream stays
//! in step.

use super::params::SessionParams;
use super::pdu::{reject_reason, Opcode, Pdu, BHS_LEN};
use bytes::{Buf, BufMut, Bytes, BytesMut};

/// The login-phase limit for a data segment (RFC 7143 §13.12 default).
pub const LOGIN_MAX_RECV_DATA_SEGMENT_LENGTH: u32 = 8192;
/// The most AHS bytes a PDU can carry (TotalAHSLength 255 words).
pub const MAX_AHS_LEN: usize = 255 * 4;

/// What can go wrong while decoding one PDU.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PduError {
    /// The header digest did not match: the stream cannot be trusted, drop the connection.
    #[error("header digest mismatch (got {received:#010x}, computed {computed:#010x})")]
    HeaderDigest { received: u32, computed: u32 },
    /// DataSegmentLength exceeds what this side declared it accepts: drop the connection.
    #[error("data segment of {length} bytes exceeds MaxRecvDataSegmentLength {max}")]
    DataSegmentTooLong { length: u32, max: u32 },
    /// The data digest did not match; the PDU (returned for its header) was consumed.
    #[error("data digest mismatch")]
    DataDigest { pdu: Box<Pdu> },
    /// The PDU is framed correctly but its header is inconsistent; it was consumed.
    #[error("malformed PDU: {reason}")]
    Malformed { pdu: Box<Pdu>, reason: &'static str },
    /// The opcode is not one RFC 7143 defines; the PDU was consumed.
    #[error("unknown opcode {opcode:#04x}")]
    UnknownOpcode { pdu: Box<Pdu>, opcode: u8 },
}

impl PduError {
    /// Whether the connection must be dropped (the byte stream is out of step or untrusted).
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            PduError::HeaderDigest { .. } | PduError::DataSegmentTooLong { .. }
        )
    }

    /// The offending PDU, for errors that consumed one.
    pub fn pdu(&self) -> Option<&Pdu> {
        match self {
            PduError::DataDigest { pdu }
            | PduError::Malformed { pdu, .. }
            | PduError::UnknownOpcode { pdu, .. } => Some(pdu),
            _ => None,
        }
    }

    /// The Reject reason this error calls for, if it is not fatal.
    pub fn reject_reason(&self) -> Option<u8> {
        match self {
            PduError::DataDigest { .. } => Some(reject_reason::DATA_DIGEST_ERROR),
            PduError::Malformed { .. } => Some(reject_reason::PROTOCOL_ERROR),
            PduError::UnknownOpcode { .. } => Some(reject_reason::COMMAND_NOT_SUPPORTED),
            _ => None,
        }
    }
}

/// CRC32C as iSCSI uses it (the `crc32c` crate's reflected CRC with all-ones init and final xor);
/// the digest travels least significant byte first.
pub fn crc32c(data: &[u8]) -> u32 {
    crc32c::crc32c(data)
}

/// Framing settings of one connection, in each direction the same.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Codec {
    /// CRC32C over BHS+AHS.
    pub header_digest: bool,
    /// CRC32C over the padded data segment.
    pub data_digest: bool,
    /// The largest data segment this side accepts (what it declared as MaxRecvDataSegmentLength).
    pub max_recv_data_segment_length: u32,
}

impl Default for Codec {
    fn default() -> Self {
        Codec::new()
    }
}

fn pad4(n: usize) -> usize {
    (4 - n % 4) % 4
}

impl Codec {
    /// Login-phase settings: no digests, 8192-byte data segments.
    pub fn new() -> Codec {
        Codec {
            header_digest: false,
            data_digest: false,
            max_recv_data_segment_length: LOGIN_MAX_RECV_DATA_SEGMENT_LENGTH,
        }
    }

    /// Full-feature settings after a successful login.
    pub fn for_session(params: &SessionParams) -> Codec {
        Codec {
            header_digest: params.header_digest,
            data_digest: params.data_digest,
            max_recv_data_segment_length: params.max_recv_data_segment_length,
        }
    }

    /// Switches to the negotiated settings (call when the connection emits `LoginComplete`).
    pub fn configure(&mut self, params: &SessionParams) {
        *self = Codec::for_session(params);
    }

    /// The number of bytes the next PDU needs in all, once its BHS is present in `buf`.
    fn frame_len(&self, bhs: &[u8]) -> (usize, usize, usize) {
        let ahs = bhs[4] as usize * 4;
        let dlen = u32::from_be_bytes([0, bhs[5], bhs[6], bhs[7]]) as usize;
        let header = BHS_LEN + ahs + if self.header_digest { 4 } else { 0 };
        let data = if dlen == 0 {
            0
        } else {
            dlen + pad4(dlen) + if self.data_digest { 4 } else { 0 }
        };
        (header, dlen, header + data)
    }

    /// Decodes one PDU from the front of `buf`, consuming it. `Ok(None)` means more bytes are
    /// needed. Never panics.
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Pdu>, PduError> {
        if buf.len() < BHS_LEN {
            return Ok(None);
        }
        let dlen = u32::from_be_bytes([0, buf[5], buf[6], buf[7]]);
        if dlen > self.max_recv_data_segment_length {
            return Err(PduError::DataSegmentTooLong {
                length: dlen,
                max: self.max_recv_data_segment_length,
            });
        }
        let (header_len, dlen, total) = self.frame_len(&buf[..BHS_LEN]);
        // Check the header digest as soon as the header is here, before waiting for the data.
        if buf.len() < header_len {
            return Ok(None);
        }
        if self.header_digest {
            let covered = header_len - 4;
            let computed = crc32c(&buf[..covered]);
            let d = &buf[covered..header_len];
            let received = u32::from_le_bytes([d[0], d[1], d[2], d[3]]);
            if computed != received {
                return Err(PduError::HeaderDigest { received, computed });
            }
        }
        if buf.len() < total {
            return Ok(None);
        }
        let mut frame = buf.split_to(total).freeze();
        let mut bhs = [0u8; BHS_LEN];
        bhs.copy_from_slice(&frame[..BHS_LEN]);
        let ahs_len = bhs[4] as usize * 4;
        let ahs = frame.slice(BHS_LEN..BHS_LEN + ahs_len);
        frame.advance(header_len);
        let (data, digest_ok) = if dlen == 0 {
            (Bytes::new(), true)
        } else {
            let padded = dlen + pad4(dlen);
            let ok = if self.data_digest {
                let computed = crc32c(&frame[..padded]);
                let d = &frame[padded..padded + 4];
                computed == u32::from_le_bytes([d[0], d[1], d[2], d[3]])
            } else {
                true
            };
            (frame.slice(..dlen), ok)
        };
        let pdu = Pdu::from_parts(bhs, ahs, data);
        if !digest_ok {
            return Err(PduError::DataDigest { pdu: Box::new(pdu) });
        }
        let opcode = match pdu.opcode() {
            Some(op) => op,
            None => {
                let opcode = pdu.opcode_raw();
                return Err(PduError::UnknownOpcode {
                    pdu: Box::new(pdu),
                    opcode,
                });
            }
        };
        if let Err(reason) = validate(opcode, &pdu) {
            return Err(PduError::Malformed {
                pdu: Box::new(pdu),
                reason,
            });
        }
        Ok(Some(pdu))
    }

    /// Encodes `pdu` into `out` (header, AHS, header digest, data, padding, data digest).
    /// TotalAHSLength and DataSegmentLength are taken from the PDU's AHS and data.
    pub fn encode(&self, pdu: &Pdu, out: &mut BytesMut) {
        let [head, data, tail] = self.encode_vectored(pdu);
        out.reserve(head.len() + data.len() + tail.len());
        out.extend_from_slice(&head);
        out.extend_from_slice(&data);
        out.extend_from_slice(&tail);
    }

    /// Encodes `pdu` as three buffers for a vectored write: the header (BHS, AHS, header digest),
    /// the data segment itself (shared with the PDU, not copied) and the trailer (padding and
    /// data digest).
    pub fn encode_vectored(&self, pdu: &Pdu) -> [Bytes; 3] {
        // TotalAHSLength is one byte of 4-byte words: at most 1020 bytes of AHS.
        let ahs = &pdu.ahs[..pdu.ahs.len().min(MAX_AHS_LEN)];
        let ahs_len = ahs.len() + pad4(ahs.len());
        let mut head = BytesMut::with_capacity(BHS_LEN + ahs_len + 4);
        let mut bhs = pdu.bhs;
        bhs[4] = (ahs_len / 4) as u8;
        let dlen = pdu.data.len().min(0x00ff_ffff);
        bhs[5..8].copy_from_slice(&(dlen as u32).to_be_bytes()[1..]);
        head.extend_from_slice(&bhs);
        head.extend_from_slice(ahs);
        head.put_bytes(0, pad4(ahs.len()));
        if self.header_digest {
            let d = crc32c(&head);
            head.put_u32_le(d);
        }
        let data = pdu.data.slice(..dlen);
        let mut tail = BytesMut::new();
        if dlen > 0 {
            let pad = pad4(dlen);
            tail.put_bytes(0, pad);
            if self.data_digest {
                let mut h = crc32c::crc32c(&data);
                h = crc32c::crc32c_append(h, &[0u8; 3][..pad]);
                tail.put_u32_le(h);
            }
        }
        [head.freeze(), data, tail.freeze()]
    }
}

/// Header checks that need no session state.
fn validate(opcode: Opcode, pdu: &Pdu) -> Result<(), &'static str> {
    pdu.ahs_segments()?;
    let _ = opcode;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_rfc_test_vectors() {
        // RFC 3720 appendix B.4.
        assert_eq!(crc32c(&[0u8; 32]), 0x8a91_36aa);
        assert_eq!(crc32c(&[0xffu8; 32]), 0x62a8_ab43);
        let inc: Vec<u8> = (0u8..32).collect();
        assert_eq!(crc32c(&inc), 0x46dd_794e);
    }

    #[test]
    fn digests_are_appended_least_significant_byte_first() {
        let c = Codec {
            header_digest: true,
            data_digest: true,
            max_recv_data_segment_length: 8192,
        };
        let mut p = Pdu::new(Opcode::NopIn);
        p.set_data(Bytes::from_static(b"abcde"));
        let mut out = BytesMut::new();
        c.encode(&p, &mut out);
        assert_eq!(out.len(), 48 + 4 + 8 + 4);
        let hd = crc32c(&out[..48]).to_le_bytes();
        assert_eq!(&out[48..52], &hd);
        assert_eq!(&out[57..60], &[0, 0, 0], "zero padding");
        let dd = crc32c(&out[52..60]).to_le_bytes();
        assert_eq!(&out[60..64], &dd, "the data digest covers the padding");
    }

    #[test]
    fn header_digest_is_checked_before_the_data_arrives() {
        let c = Codec {
            header_digest: true,
            data_digest: false,
            max_recv_data_segment_length: 8192,
        };
        let mut p = Pdu::new(Opcode::NopOut);
        p.set_data(Bytes::from(vec![1u8; 100]));
        let mut out = BytesMut::new();
        c.encode(&p, &mut out);
        out[20] ^= 1;
        let mut head = BytesMut::from(&out[..52]);
        assert!(matches!(
            c.decode(&mut head),
            Err(PduError::HeaderDigest { .. })
        ));
    }

    #[test]
    fn malformed_ahs_is_reported_with_the_pdu() {
        let mut raw = [0u8; 52];
        raw[4] = 1; // one AHS word
        raw[48..50].copy_from_slice(&200u16.to_be_bytes()); // longer than the AHS area
        let mut b = BytesMut::from(&raw[..]);
        let err = Codec::new().decode(&mut b).unwrap_err();
        assert!(matches!(err, PduError::Malformed { .. }));
        assert_eq!(err.reject_reason(), Some(reject_reason::PROTOCOL_ERROR));
        assert!(b.is_empty(), "the bad PDU was consumed");
    }
}
