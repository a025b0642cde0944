//! CHAP (RFC 1994, RFC 7143 §12.1.3) as iSCSI uses it: algorithms 5 (MD5), 6 (SHA-1) and
//! 7 (SHA-256); response = H(identifier byte ‖ secret ‖ challenge).

use md5::Digest;

/// CHAP hash algorithms Duet supports, by their CHAP_A number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ChapAlgorithm {
    Md5,
    Sha1,
    Sha256,
}

impl ChapAlgorithm {
    /// The algorithm for a CHAP_A number, if supported.
    pub fn from_number(n: u64) -> Option<ChapAlgorithm> {
        match n {
            5 => Some(ChapAlgorithm::Md5),
            6 => Some(ChapAlgorithm::Sha1),
            7 => Some(ChapAlgorithm::Sha256),
            _ => None,
        }
    }

    /// The CHAP_A number.
    pub fn number(self) -> u8 {
        match self {
            ChapAlgorithm::Md5 => 5,
            ChapAlgorithm::Sha1 => 6,
            ChapAlgorithm::Sha256 => 7,
        }
    }

    /// Length of a response (and of the challenge Duet sends) in bytes.
    pub fn digest_len(self) -> usize {
        match self {
            ChapAlgorithm::Md5 => 16,
            ChapAlgorithm::Sha1 => 20,
            ChapAlgorithm::Sha256 => 32,
        }
    }

    /// The first supported algorithm in a CHAP_A list (`5,6,7`); `None` if none is supported
    /// or the list is empty.
    pub fn choose(list: &str) -> Option<ChapAlgorithm> {
        list.split(',')
            .filter_map(super::text::parse_number)
            .find_map(ChapAlgorithm::from_number)
    }

    /// H(id ‖ secret ‖ challenge).
    pub fn response(self, id: u8, secret: &[u8], challenge: &[u8]) -> Vec<u8> {
        fn run<D: Digest>(id: u8, secret: &[u8], challenge: &[u8]) -> Vec<u8> {
            let mut h = D::new();
            h.update([id]);
            h.update(secret);
            h.update(challenge);
            h.finalize().to_vec()
        }
        match self {
            ChapAlgorithm::Md5 => run::<md5::Md5>(id, secret, challenge),
            ChapAlgorithm::Sha1 => run::<sha1::Sha1>(id, secret, challenge),
            ChapAlgorithm::Sha256 => run::<sha2::Sha256>(id, secret, challenge),
        }
    }
}

/// Compares two byte strings without an early exit on the first difference.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn md5_known_answer() {
        // RFC 1994 style: MD5(0x01 ‖ "secret" ‖ 0x00..0x0f), computed independently.
        let ch: Vec<u8> = (0u8..16).collect();
        let r = ChapAlgorithm::Md5.response(1, b"secret", &ch);
        assert_eq!(r.len(), 16);
        let mut h = md5::Md5::new();
        h.update([1u8]);
        h.update(b"secret");
        h.update(&ch);
        assert_eq!(r, h.finalize().to_vec());
    }

    #[test]
    fn choose_first_supported() {
        assert_eq!(ChapAlgorithm::choose("5"), Some(ChapAlgorithm::Md5));
        assert_eq!(ChapAlgorithm::choose("8,7,5"), Some(ChapAlgorithm::Sha256));
        assert_eq!(ChapAlgorithm::choose("56"), None);
        assert_eq!(ChapAlgorithm::choose(""), None);
        assert_eq!(ChapAlgorithm::choose("6,5"), Some(ChapAlgorithm::Sha1));
        assert_eq!(ChapAlgorithm::Sha256.response(0, b"", b"").len(), 32);
    }
}
