//! How a logical unit is named when the configuration does not say: its default unit serial
//! number (VPD page 0x80) and its NAA 6 designator (VPD page 0x83).
//!
//! Both controllers of a pair must derive the same names for the same LUN (a multipath host
//! joins the two paths by the designator), and the names must not change across restarts or
//! upgrades, so the rule is fixed here once: a 64-bit FNV-1a hash of the target name and LUN
//! number for the serial, and of the serial for the designator. Pure functions; no I/O.

/// A stable 64-bit FNV-1a hash.
fn fnv1a(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The default serial of a LUN: derived from the target name (case-insensitively) and the LUN
/// number, so that it is stable across restarts and the same on both controllers.
pub fn default_serial(target: &str, lun: crate::LunNumber) -> String {
    let h = fnv1a(format!("{}/{}", target.to_ascii_lowercase(), lun).as_bytes());
    format!("DUET{:012X}", h & 0xFFFF_FFFF_FFFF)
}

/// Duet's 24-bit IEEE company id slot in NAA 6 designators: a locally administered value (the
/// project owns no OUI), kept constant so designators stay stable.
pub const NAA_COMPANY_ID: u32 = 0x00_14_05;

/// The default NAA 6 (IEEE Registered Extended) designator of a LUN, derived from its serial.
pub fn default_naa(serial: &str) -> [u8; 16] {
    let a = fnv1a(serial.as_bytes());
    let b = fnv1a(format!("naa:{serial}").as_bytes());
    let mut out = [0u8; 16];
    // NAA (4 bits) = 6, IEEE company id (24 bits), vendor specific id (36 bits), extension (64).
    let hi: u64 = (6u64 << 60) | (u64::from(NAA_COMPANY_ID) << 36) | (a & 0xF_FFFF_FFFF);
    out[..8].copy_from_slice(&hi.to_be_bytes());
    out[8..].copy_from_slice(&b.to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const PINNED_SERIAL: &str = "DUETD9B445393B64";

    #[test]
    fn names_are_stable_and_well_formed() {
        assert_eq!(
            default_serial("iqn.2026-11.dev.duet:target0", 1),
            default_serial("IQN.2026-11.DEV.DUET:TARGET0", 1)
        );
        let naa = default_naa("DUET0123");
        assert_eq!(naa[0] >> 4, 6);
        let hi = u64::from_be_bytes(naa[..8].try_into().unwrap());
        assert_eq!((hi >> 36) & 0xFF_FFFF, u64::from(NAA_COMPANY_ID));
        // Pinned: a change here renames every deployed LUN.
        assert_eq!(
            default_serial("iqn.2026-11.dev.duet:target0", 1),
            PINNED_SERIAL
        );
        assert_ne!(default_naa("a"), default_naa("b"));
    }
}
