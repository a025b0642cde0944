//! The self-describing blocks of the oracle: every block written carries magic, LBA, version,
//! writer id and an FNV-1a checksum over the whole block, with a fill derived from (LBA,
//! version), so that a read tells what it returned. Pure.

/// Magic at the start of every block this workload writes ("DUETMPIO").
pub const BLOCK_MAGIC: u64 = 0x4455_4554_4d50_494f;
/// Bytes of the block header (magic, lba, version, writer, reserved, checksum).
pub const HEADER_LEN: usize = 40;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

fn fnv1a(h: u64, bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(h, |h, b| (h ^ *b as u64).wrapping_mul(FNV_PRIME))
}

pub(super) fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn block_checksum(block: &[u8]) -> u64 {
    let h = fnv1a(FNV_OFFSET, &block[..32]);
    let h = fnv1a(h, &[0u8; 8]);
    fnv1a(h, &block[HEADER_LEN..])
}

/// The content of block `lba` at `version`, written by `writer`: a 40-byte header (magic, lba,
/// version, writer id, reserved, FNV-1a-64 checksum of the block with the checksum field zeroed,
/// all big-endian) followed by a fill derived from (lba, version).
pub fn encode_block(lba: u64, version: u64, writer: u32, block_size: usize) -> Vec<u8> {
    let mut b = vec![0u8; block_size.max(HEADER_LEN)];
    b[0..8].copy_from_slice(&BLOCK_MAGIC.to_be_bytes());
    b[8..16].copy_from_slice(&lba.to_be_bytes());
    b[16..24].copy_from_slice(&version.to_be_bytes());
    b[24..28].copy_from_slice(&writer.to_be_bytes());
    let mut s = mix64(lba ^ mix64(version));
    for chunk in b[HEADER_LEN..].chunks_mut(8) {
        s = mix64(s);
        let bytes = s.to_le_bytes();
        chunk.copy_from_slice(&bytes[..chunk.len()]);
    }
    let c = block_checksum(&b);
    b[32..40].copy_from_slice(&c.to_be_bytes());
    b
}

/// What a block read back holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BlockContent {
    /// All zeros: never written.
    Zero,
    /// An intact block of this workload.
    Written { lba: u64, version: u64, writer: u32 },
    /// The magic is there but the checksum does not match: damaged, or torn by a concurrent
    /// write (`lba` is the header's).
    ChecksumMismatch {
        lba: u64,
        stored: u64,
        computed: u64,
    },
    /// Anything else.
    Corrupt(String),
}

/// Decodes and checks one block.
pub fn decode_block(b: &[u8]) -> BlockContent {
    if b.len() < HEADER_LEN {
        return BlockContent::Corrupt(format!("short block ({} bytes)", b.len()));
    }
    let u64_at = |o: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[o..o + 8]);
        u64::from_be_bytes(a)
    };
    if u64_at(0) != BLOCK_MAGIC {
        if b.iter().all(|x| *x == 0) {
            return BlockContent::Zero;
        }
        return BlockContent::Corrupt("bad magic".into());
    }
    let stored = u64_at(32);
    let computed = block_checksum(b);
    if stored != computed {
        return BlockContent::ChecksumMismatch {
            lba: u64_at(8),
            stored,
            computed,
        };
    }
    BlockContent::Written {
        lba: u64_at(8),
        version: u64_at(16),
        writer: u32::from_be_bytes([b[24], b[25], b[26], b[27]]),
    }
}

// ------------------------------------------------------------------------------------------
// Shared state
// ------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_round_trip_and_detect_damage() {
        let b = encode_block(77, 5, 0xabcd, 512);
        assert_eq!(
            decode_block(&b),
            BlockContent::Written {
                lba: 77,
                version: 5,
                writer: 0xabcd
            }
        );
        assert_ne!(
            b,
            encode_block(77, 6, 0xabcd, 512),
            "fill depends on version"
        );
        let mut bad = b.clone();
        bad[300] ^= 1;
        assert!(matches!(
            decode_block(&bad),
            BlockContent::ChecksumMismatch { lba: 77, .. }
        ));
        let mut bad = b;
        bad[17] ^= 1; // version field
        assert!(matches!(
            decode_block(&bad),
            BlockContent::ChecksumMismatch { .. }
        ));
        assert_eq!(decode_block(&[0u8; 512]), BlockContent::Zero);
        assert!(matches!(
            decode_block(&[1u8; 512]),
            BlockContent::Corrupt(_)
        ));
    }
}
