//! The self-describing blocks `duet-blockcheck` writes: a 40-byte header (magic, block number,
//! generation, writer id, block size, CRC-32C) and a fill derived from (block, generation), so
//! that any read tells which write it returned, and a torn, misplaced or damaged block is
//! caught. Pure.
//!
//! Layout (little-endian):
//!
//! | bytes  | field                                                      |
//! |--------|------------------------------------------------------------|
//! | 0..8   | magic `DUETBLK1`                                           |
//! | 8..16  | block number on the device (byte offset / block size)      |
//! | 16..24 | generation (per block, 1 for the first write, increasing)  |
//! | 24..32 | writer id (random per run)                                 |
//! | 32..36 | block size in bytes                                        |
//! | 36..40 | CRC-32C of the whole block with these four bytes zeroed    |
//! | 40..   | pseudo-random fill seeded by (block, generation)           |

/// The magic at the start of every block written.
pub const MAGIC: [u8; 8] = *b"DUETBLK1";
/// Bytes of the header.
pub const HEADER_LEN: usize = 40;
const CRC_AT: usize = 36;

/// A SplitMix64 step: the fill generator, and the workers' random choices.
pub fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn checksum(buf: &[u8]) -> u32 {
    let c = crc32c::crc32c(&buf[..CRC_AT]);
    let c = crc32c::crc32c_append(c, &[0u8; 4]);
    crc32c::crc32c_append(c, &buf[HEADER_LEN..])
}

fn u64_at(b: &[u8], o: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[o..o + 8]);
    u64::from_le_bytes(a)
}

/// Fills `buf` (the whole block, at least [`HEADER_LEN`] bytes) with generation `gen` of
/// device block `block`, written by `writer`.
pub fn encode(buf: &mut [u8], block: u64, gen: u64, writer: u64) {
    assert!(buf.len() >= HEADER_LEN, "a block holds at least its header");
    buf[0..8].copy_from_slice(&MAGIC);
    buf[8..16].copy_from_slice(&block.to_le_bytes());
    buf[16..24].copy_from_slice(&gen.to_le_bytes());
    buf[24..32].copy_from_slice(&writer.to_le_bytes());
    let size = buf.len() as u32;
    buf[32..36].copy_from_slice(&size.to_le_bytes());
    buf[CRC_AT..HEADER_LEN].fill(0);
    let mut s = mix64(block ^ mix64(gen ^ 0x6475_6574));
    for chunk in buf[HEADER_LEN..].chunks_mut(8) {
        s = mix64(s);
        chunk.copy_from_slice(&s.to_le_bytes()[..chunk.len()]);
    }
    let c = checksum(buf);
    buf[CRC_AT..HEADER_LEN].copy_from_slice(&c.to_le_bytes());
}

/// What a block read back holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Content {
    /// All zeros (never written, or a discarded/zeroed area).
    Zero,
    /// An intact block of this program for the block number asked for.
    Block { gen: u64, writer: u64 },
    /// Anything else: not ours, torn, damaged, or ours but for another block or block size.
    Corrupt(String),
}

/// Decodes the block read at device block number `block`.
pub fn decode(buf: &[u8], block: u64) -> Content {
    if buf.len() < HEADER_LEN {
        return Content::Corrupt(format!("short block ({} bytes)", buf.len()));
    }
    if buf[0..8] != MAGIC {
        if buf.iter().all(|b| *b == 0) {
            return Content::Zero;
        }
        return Content::Corrupt(format!("bad magic {:02x?}", &buf[0..8.min(buf.len())]));
    }
    let stored = u32::from_le_bytes([buf[36], buf[37], buf[38], buf[39]]);
    let computed = checksum(buf);
    if stored != computed {
        return Content::Corrupt(format!(
            "checksum mismatch (stored {stored:08x}, computed {computed:08x}; header says block {} generation {}): torn or damaged",
            u64_at(buf, 8),
            u64_at(buf, 16)
        ));
    }
    let size = u32::from_le_bytes([buf[32], buf[33], buf[34], buf[35]]) as usize;
    if size != buf.len() {
        return Content::Corrupt(format!(
            "written with block size {size}, read with {}",
            buf.len()
        ));
    }
    let at = u64_at(buf, 8);
    if at != block {
        return Content::Corrupt(format!(
            "holds block {at} (generation {}): misplaced write",
            u64_at(buf, 16)
        ));
    }
    Content::Block {
        gen: u64_at(buf, 16),
        writer: u64_at(buf, 24),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_every_kind_of_damage() {
        let mut b = vec![0u8; 4096];
        encode(&mut b, 77, 5, 0xabcd);
        assert_eq!(
            decode(&b, 77),
            Content::Block {
                gen: 5,
                writer: 0xabcd
            }
        );
        let mut newer = vec![0u8; 4096];
        encode(&mut newer, 77, 6, 0xabcd);
        assert_ne!(b[HEADER_LEN..], newer[HEADER_LEN..], "fill depends on gen");

        // Torn: the new header and first sector over the old rest.
        let mut torn = b.clone();
        torn[..512].copy_from_slice(&newer[..512]);
        assert!(matches!(decode(&torn, 77), Content::Corrupt(m) if m.contains("checksum")));
        // One flipped bit anywhere.
        for at in [9, 17, 25, 33, 200, 4095] {
            let mut bad = b.clone();
            bad[at] ^= 0x10;
            assert!(matches!(decode(&bad, 77), Content::Corrupt(_)), "byte {at}");
        }
        // Misplaced.
        assert!(matches!(decode(&b, 78), Content::Corrupt(m) if m.contains("misplaced")));
        // Zeros and garbage.
        assert_eq!(decode(&[0u8; 4096], 3), Content::Zero);
        assert!(matches!(decode(&[0x5a; 4096], 3), Content::Corrupt(m) if m.contains("magic")));
        // Another block size.
        let mut small = vec![0u8; 512];
        encode(&mut small, 3, 1, 1);
        assert_eq!(decode(&small, 3), Content::Block { gen: 1, writer: 1 });
        let mut big = small.clone();
        big.resize(1024, 0);
        assert!(matches!(decode(&big, 3), Content::Corrupt(_)));
    }
}
