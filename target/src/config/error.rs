//! How a configuration error reads: [`ConfigError`] (file, line, message), the one offset -> line
//! rule, and the one range check every whole-number key goes through.
//!
//! Touches nothing else of the configuration: every other part of `config` builds its errors here.

use std::fmt;
use std::ops::{Range, RangeInclusive};

/// A configuration error: where (file and line, when known) and what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub line: Option<usize>,
    pub message: String,
}

impl ConfigError {
    /// An error in `file`, at `line` when known.
    pub fn new(file: &str, line: Option<usize>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: file.to_string(),
            line,
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: {}", self.file, line, self.message),
            None => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

/// 1-based line of a byte offset.
pub fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// A configuration text and the name it goes by in messages: turns the byte spans a parser
/// reports into lines, and builds errors that name the file.
#[derive(Clone, Copy)]
pub struct Source<'a> {
    pub file: &'a str,
    pub text: &'a str,
}

impl Source<'_> {
    /// The line a span starts on.
    pub fn at(&self, span: Range<usize>) -> Option<usize> {
        Some(line_of(self.text, span.start))
    }

    /// An error at `line` of this text.
    pub fn err(&self, line: Option<usize>, message: impl Into<String>) -> ConfigError {
        ConfigError::new(self.file, line, message)
    }

    /// [`check_range`] for a value written in this text, at the line of its span.
    pub fn range<T: TryFrom<i64>>(
        &self,
        value: &::toml::Spanned<i64>,
        key: &str,
        range: RangeInclusive<i64>,
        unit: &str,
    ) -> Result<T, ConfigError> {
        check_range(
            self.file,
            self.at(value.span()),
            key,
            *value.get_ref(),
            range,
            unit,
        )
    }
}

/// `value` as a `T`, if it lies in `range`.
pub fn in_range<T: TryFrom<i64>>(value: i64, range: &RangeInclusive<i64>) -> Option<T> {
    range
        .contains(&value)
        .then(|| T::try_from(value).ok())
        .flatten()
}

/// Checks the whole number `value` given for `key` against the accepted `range` (`unit` follows
/// the range in the message): the error, at `line` of `file`, reads
/// `key: expected 0 to 3600 seconds, got 5000` (see [`range_error`]).
pub fn check_range<T: TryFrom<i64>>(
    file: &str,
    line: Option<usize>,
    key: &str,
    value: i64,
    range: RangeInclusive<i64>,
    unit: &str,
) -> Result<T, ConfigError> {
    in_range(value, &range).ok_or_else(|| range_error(file, line, key, value, &range, unit))
}

/// The error for a value outside `range`: `key: expected A to B{unit}, got {got}`; a range of two
/// or three values is listed instead (`expected 1 or 2`, `expected 0, 1 or 2`).
pub fn range_error(
    file: &str,
    line: Option<usize>,
    key: &str,
    got: impl fmt::Display,
    range: &RangeInclusive<i64>,
    unit: &str,
) -> ConfigError {
    let (lo, hi) = (*range.start(), *range.end());
    let expected = match hi.checked_sub(lo) {
        Some(1) => format!("{lo} or {hi}"),
        Some(2) => format!("{lo}, {} or {hi}", lo + 1),
        _ => format!("{lo} to {hi}"),
    };
    ConfigError::new(
        file,
        line,
        format!("{key}: expected {expected}{unit}, got {got}"),
    )
}
