//! Text keys (RFC 7143 §6): `key=value\0` pairs, value lists, numbers and binary values.
//!
//! Keys and values are case-sensitive. A key is at most 63 bytes; a value at most
//! [`MAX_VALUE_LEN`] bytes (RFC 7143 §6.1 allows 255 for most keys and 8192 for binary values
//! such as CHAP challenges and responses).

use base64::Engine;
use bytes::{BufMut, Bytes, BytesMut};

/// The longest key name (RFC 7143 §6.1).
pub const MAX_KEY_LEN: usize = 63;
/// The longest value accepted (RFC 7143 §6.1: 8192 bytes for any value).
pub const MAX_VALUE_LEN: usize = 8192;
/// The most pairs accepted in one text exchange, to bound memory.
pub const MAX_PAIRS: usize = 512;

/// Special value: the key is not known to the responder.
pub const NOT_UNDERSTOOD: &str = "NotUnderstood";
/// Special value: the offered value is not acceptable.
pub const REJECT: &str = "Reject";
/// Special value: the key does not apply in this context.
pub const IRRELEVANT: &str = "Irrelevant";

/// Why a text segment could not be parsed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    #[error("text pair without '='")]
    MissingEquals,
    #[error("empty key")]
    EmptyKey,
    #[error("key longer than 63 bytes")]
    KeyTooLong,
    #[error("key with characters outside a-z, A-Z, 0-9, '.', '-', '+', '@', '_'")]
    BadKeyCharacter,
    #[error("value longer than {MAX_VALUE_LEN} bytes")]
    ValueTooLong,
    #[error("text is not UTF-8")]
    NotUtf8,
    #[error("more than {MAX_PAIRS} key=value pairs")]
    TooManyPairs,
    #[error("bad binary value")]
    BadBinary,
}

/// An ordered list of `key=value` pairs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TextPairs(pub Vec<(String, String)>);

impl TextPairs {
    pub fn new() -> TextPairs {
        TextPairs(Vec::new())
    }

    /// Parses a data segment of `key=value\0` pairs. Empty strings between NULs (padding, a
    /// missing final NUL) are ignored.
    pub fn parse(data: &[u8]) -> Result<TextPairs, TextError> {
        let mut out = Vec::new();
        for raw in data.split(|b| *b == 0) {
            if raw.is_empty() {
                continue;
            }
            if out.len() >= MAX_PAIRS {
                return Err(TextError::TooManyPairs);
            }
            let s = std::str::from_utf8(raw).map_err(|_| TextError::NotUtf8)?;
            let (k, v) = s.split_once('=').ok_or(TextError::MissingEquals)?;
            check_key(k)?;
            if v.len() > MAX_VALUE_LEN {
                return Err(TextError::ValueTooLong);
            }
            out.push((k.to_string(), v.to_string()));
        }
        Ok(TextPairs(out))
    }

    /// Serialises the pairs as `key=value\0` bytes.
    pub fn to_bytes(&self) -> Bytes {
        let mut b = BytesMut::new();
        for (k, v) in &self.0 {
            b.extend_from_slice(k.as_bytes());
            b.put_u8(b'=');
            b.extend_from_slice(v.as_bytes());
            b.put_u8(0);
        }
        b.freeze()
    }

    /// Appends a pair.
    pub fn push(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.0.push((key.into(), value.into()));
    }

    /// The value of the first pair with `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Whether a pair with `key` is present.
    pub fn contains(&self, key: &str) -> bool {
        self.0.iter().any(|(k, _)| k == key)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

/// Checks a key name: 1-63 characters from RFC 7143 §6.1's set.
pub fn check_key(k: &str) -> Result<(), TextError> {
    if k.is_empty() {
        return Err(TextError::EmptyKey);
    }
    if k.len() > MAX_KEY_LEN {
        return Err(TextError::KeyTooLong);
    }
    if !k
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'+' | b'@' | b'_'))
    {
        return Err(TextError::BadKeyCharacter);
    }
    Ok(())
}

/// Splits a value list (`a,b,c`) into its items.
pub fn parse_list(v: &str) -> Vec<&str> {
    v.split(',').collect()
}

/// Parses a numerical value: decimal, `0x` hexadecimal or `0b` base64 (at most 8 bytes).
pub fn parse_number(v: &str) -> Option<u64> {
    if v.starts_with("0x") || v.starts_with("0X") || v.starts_with("0b") || v.starts_with("0B") {
        let bytes = parse_binary(v).ok()?;
        if bytes.is_empty() || bytes.len() > 8 {
            return None;
        }
        return Some(bytes.iter().fold(0u64, |acc, b| (acc << 8) | *b as u64));
    }
    if v.is_empty() || v.len() > 20 || !v.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    v.parse().ok()
}

/// Parses a boolean value (`Yes`/`No`).
pub fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "Yes" => Some(true),
        "No" => Some(false),
        _ => None,
    }
}

/// Formats a boolean value.
pub fn format_bool(b: bool) -> &'static str {
    if b {
        "Yes"
    } else {
        "No"
    }
}

/// Decodes a binary value: `0x`/`0X` + hex digits (odd counts get a leading zero) or `0b`/`0B` +
/// base64.
pub fn parse_binary(v: &str) -> Result<Vec<u8>, TextError> {
    let (prefix, body) = match (v.get(..2), v.get(2..)) {
        (Some(p), Some(b)) => (p, b),
        _ => return Err(TextError::BadBinary),
    };
    match prefix {
        "0x" | "0X" => {
            if body.is_empty() || !body.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err(TextError::BadBinary);
            }
            let digits: Vec<u8> = body
                .bytes()
                .map(|c| match c {
                    b'0'..=b'9' => c - b'0',
                    b'a'..=b'f' => c - b'a' + 10,
                    _ => c.to_ascii_lowercase().wrapping_sub(b'a').wrapping_add(10),
                })
                .collect();
            let mut out = Vec::with_capacity(digits.len().div_ceil(2));
            let mut i = 0;
            if digits.len() % 2 == 1 {
                out.push(digits[0]);
                i = 1;
            }
            while i + 1 < digits.len() {
                out.push(digits[i] << 4 | digits[i + 1]);
                i += 2;
            }
            Ok(out)
        }
        "0b" | "0B" => {
            if body.is_empty() {
                return Err(TextError::BadBinary);
            }
            base64::engine::general_purpose::STANDARD
                .decode(body)
                .map_err(|_| TextError::BadBinary)
        }
        _ => Err(TextError::BadBinary),
    }
}

/// Formats bytes as a `0x` hex value.
pub fn format_hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(2 + bytes.len() * 2);
    s.push_str("0x");
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// Formats bytes as a `0b` base64 value.
pub fn format_base64(bytes: &[u8]) -> String {
    format!(
        "0b{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_serialise() {
        let t = TextPairs::parse(b"InitiatorName=iqn.x\0SessionType=Normal\0\0\0").unwrap();
        assert_eq!(t.get("InitiatorName"), Some("iqn.x"));
        assert_eq!(t.get("SessionType"), Some("Normal"));
        assert_eq!(
            &t.to_bytes()[..],
            b"InitiatorName=iqn.x\0SessionType=Normal\0"
        );
        assert_eq!(t.get("sessiontype"), None, "keys are case-sensitive");
    }

    #[test]
    fn value_may_contain_equals_and_be_empty() {
        let t = TextPairs::parse(b"A=b=c\0CHAP_A=\0").unwrap();
        assert_eq!(t.get("A"), Some("b=c"));
        assert_eq!(t.get("CHAP_A"), Some(""));
    }

    #[test]
    fn errors() {
        assert_eq!(
            TextPairs::parse(b"novalue\0"),
            Err(TextError::MissingEquals)
        );
        assert_eq!(TextPairs::parse(b"=x\0"), Err(TextError::EmptyKey));
        assert_eq!(
            TextPairs::parse(&[b'A', b'=', 0xff, 0]),
            Err(TextError::NotUtf8)
        );
        let long = format!("{}=1\0", "K".repeat(64));
        assert_eq!(
            TextPairs::parse(long.as_bytes()),
            Err(TextError::KeyTooLong)
        );
        let big = format!("K={}\0", "v".repeat(MAX_VALUE_LEN + 1));
        assert_eq!(
            TextPairs::parse(big.as_bytes()),
            Err(TextError::ValueTooLong)
        );
    }

    #[test]
    fn numbers_and_binary() {
        assert_eq!(parse_number("8192"), Some(8192));
        assert_eq!(parse_number("0x10"), Some(16));
        assert_eq!(parse_number(""), None);
        assert_eq!(parse_number("-1"), None);
        assert_eq!(parse_number("12a"), None);
        assert_eq!(parse_binary("0xABcd").unwrap(), vec![0xab, 0xcd]);
        assert_eq!(parse_binary("0xabc").unwrap(), vec![0x0a, 0xbc]);
        assert_eq!(parse_binary("0bAQID").unwrap(), vec![1, 2, 3]);
        assert!(parse_binary("0x").is_err());
        assert!(parse_binary("0xzz").is_err());
        assert!(parse_binary("abc").is_err());
        assert!(
            parse_binary("\u{116c0}").is_err(),
            "multi-byte characters are not a prefix"
        );
        assert!(parse_binary("0\u{e9}").is_err());
        assert_eq!(parse_number("\u{116c0}"), None);
        assert_eq!(format_hex(&[0, 255]), "0x00ff");
        assert_eq!(
            parse_binary(&format_base64(&[9, 8, 7, 6])).unwrap(),
            vec![9, 8, 7, 6]
        );
        assert_eq!(parse_bool("Yes"), Some(true));
        assert_eq!(parse_bool("yes"), None);
    }
}
