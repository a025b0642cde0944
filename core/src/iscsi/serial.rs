//! Serial number arithmetic (RFC 1982 with 32-bit numbers, as RFC 7143 §4.2.2.1 requires for
//! CmdSN, StatSN, ExpStatSN and MaxCmdSN): the one comparison every part of Duet uses, target and
//! initiator alike. Pure.

/// `a < b` in serial number arithmetic.
pub fn sn_lt(a: u32, b: u32) -> bool {
    a != b && (a.wrapping_sub(b) as i32) < 0
}

/// `a <= b` in serial number arithmetic.
pub fn sn_le(a: u32, b: u32) -> bool {
    a == b || sn_lt(a, b)
}

/// `a > b` in serial number arithmetic.
pub fn sn_gt(a: u32, b: u32) -> bool {
    sn_lt(b, a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comparisons_wrap_around() {
        assert!(sn_lt(0xffff_ffff, 0));
        assert!(sn_gt(1, 0xffff_ffff));
        assert!(sn_le(5, 5));
        assert!(sn_le(0xffff_fffe, 2));
        assert!(!sn_le(3, 2));
        assert!(!sn_lt(7, 7) && !sn_gt(7, 7));
    }
}
