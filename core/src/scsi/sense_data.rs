//! Sense data: the bytes a CHECK CONDITION carries (SPC-4 4.5), fixed (0x70) or descriptor
//! (0x72) format as the Control mode page's D_SENSE bit selects.

use crate::sense::SenseCode;

/// Sense-key-specific field pointer (SPC-4 4.5.2.4.2): which byte (and bit) of the CDB or of the
/// parameter list was wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FieldPointer {
    /// `true`: the byte is in the CDB; `false`: in the parameter list (Data-Out).
    pub in_cdb: bool,
    pub byte: u16,
    pub bit: Option<u8>,
}

/// One sense report: sense code plus the optional INFORMATION field and field pointer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sense {
    pub code: SenseCode,
    /// The INFORMATION field (e.g. offset of the first miscomparing byte).
    pub information: Option<u64>,
    pub field: Option<FieldPointer>,
}

impl From<SenseCode> for Sense {
    fn from(code: SenseCode) -> Sense {
        Sense {
            code,
            information: None,
            field: None,
        }
    }
}

impl Sense {
    /// A sense report with just a code.
    pub fn new(code: SenseCode) -> Sense {
        code.into()
    }

    /// INVALID FIELD IN CDB pointing at `byte` (and `bit`) of the CDB.
    pub fn cdb_field(byte: u16, bit: Option<u8>) -> Sense {
        Sense {
            code: SenseCode::INVALID_FIELD_IN_CDB,
            information: None,
            field: Some(FieldPointer {
                in_cdb: true,
                byte,
                bit,
            }),
        }
    }

    /// INVALID FIELD IN PARAMETER LIST pointing at `byte` of the parameter data.
    pub fn param_field(byte: u16, bit: Option<u8>) -> Sense {
        Sense {
            code: SenseCode::INVALID_FIELD_IN_PARAM_LIST,
            information: None,
            field: Some(FieldPointer {
                in_cdb: false,
                byte,
                bit,
            }),
        }
    }

    /// The same report with the INFORMATION field set.
    pub fn with_information(mut self, info: u64) -> Sense {
        self.information = Some(info);
        self
    }

    fn sks(&self) -> Option<[u8; 3]> {
        self.field.map(|f| {
            let mut b0 = 0x80u8;
            if f.in_cdb {
                b0 |= 0x40;
            }
            if let Some(bit) = f.bit {
                b0 |= 0x08 | (bit & 7);
            }
            let [hi, lo] = f.byte.to_be_bytes();
            [b0, hi, lo]
        })
    }

    /// Encode as fixed (`descriptor == false`, 18 bytes) or descriptor format sense data.
    pub fn to_bytes(&self, descriptor: bool) -> Vec<u8> {
        if descriptor {
            let mut v = vec![
                0x72,
                self.code.key & 0x0F,
                self.code.asc,
                self.code.ascq,
                0,
                0,
                0,
                0,
            ];
            if let Some(info) = self.information {
                v.extend_from_slice(&[0x00, 0x0A, 0x80, 0]);
                v.extend_from_slice(&info.to_be_bytes());
            }
            if let Some(s) = self.sks() {
                v.extend_from_slice(&[0x02, 0x06, 0, 0, s[0], s[1], s[2], 0]);
            }
            v[7] = (v.len() - 8) as u8;
            v
        } else {
            let mut v = vec![0u8; 18];
            v[0] = 0x70;
            v[2] = self.code.key & 0x0F;
            if let Some(info) = self.information {
                v[0] |= 0x80;
                // The fixed format holds 4 bytes; larger values saturate.
                let i = u32::try_from(info).unwrap_or(u32::MAX);
                v[3..7].copy_from_slice(&i.to_be_bytes());
            }
            v[7] = 10;
            v[12] = self.code.asc;
            v[13] = self.code.ascq;
            if let Some(s) = self.sks() {
                v[15..18].copy_from_slice(&s);
            }
            v
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_and_descriptor_formats() {
        let s = Sense::new(SenseCode::MISCOMPARE).with_information(7);
        let f = s.to_bytes(false);
        assert_eq!(f.len(), 18);
        assert_eq!(f[0], 0xF0);
        assert_eq!(f[2], 0x0E);
        assert_eq!(&f[3..7], &[0, 0, 0, 7]);
        assert_eq!((f[12], f[13]), (0x1D, 0));
        let d = s.to_bytes(true);
        assert_eq!(d[0], 0x72);
        assert_eq!((d[1], d[2], d[3]), (0x0E, 0x1D, 0));
        assert_eq!(d[7] as usize, d.len() - 8);
        assert_eq!(&d[8..12], &[0, 0x0A, 0x80, 0]);
        assert_eq!(d[19], 7);
        for bytes in [&f, &d] {
            assert_eq!(
                SenseCode::from_sense_data(bytes),
                Some(SenseCode::MISCOMPARE),
                "what is encoded here decodes to the same code"
            );
        }
        let p = Sense::cdb_field(1, Some(4)).to_bytes(false);
        assert_eq!(&p[15..18], &[0xCC, 0, 1]);
    }
}
