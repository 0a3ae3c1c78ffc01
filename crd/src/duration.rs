//! Durations as Docker and Go write them (`10s`, `1m30s`, `500ms`): the
//! [`Duration`] newtype stores a span and (de)serializes as such a string, so
//! stored specs and `shoal get` show what the user wrote, not nanoseconds.

use std::borrow::Cow;
use std::fmt;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A non-negative span of time written in Go's `time.Duration` syntax.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(pub std::time::Duration);

impl Duration {
    /// Whole seconds.
    pub const fn from_secs(s: u64) -> Self {
        Duration(std::time::Duration::from_secs(s))
    }
    /// Whole milliseconds.
    pub const fn from_millis(ms: u64) -> Self {
        Duration(std::time::Duration::from_millis(ms))
    }
}

/// Why a duration string was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DurationError {
    #[error("invalid duration {0:?}: write a number and a unit, e.g. \"10s\", \"1m30s\", \"500ms\" (units: ns, us, ms, s, m, h)")]
    Syntax(String),
    #[error("invalid duration {0:?}: unknown unit {1:?} (allowed: ns, us, ms, s, m, h)")]
    Unit(String, String),
    #[error("invalid duration {0:?}: durations cannot be negative")]
    Negative(String),
    #[error("invalid duration {0:?}: too large")]
    Overflow(String),
}

/// Parses Go's `time.ParseDuration` syntax: an optional sign, then one or
/// more decimal numbers (with optional fraction) each followed by a unit;
/// `0` alone needs no unit. Negative values are refused.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, DurationError> {
    let syntax = || DurationError::Syntax(text.to_string());
    let mut s = text;
    if let Some(rest) = s.strip_prefix('-') {
        let zero = rest.chars().all(|c| c == '0' || c == '.');
        return if zero && !rest.is_empty() {
            Ok(Default::default())
        } else {
            Err(DurationError::Negative(text.into()))
        };
    }
    s = s.strip_prefix('+').unwrap_or(s);
    if s == "0" {
        return Ok(Default::default());
    }
    if s.is_empty() {
        return Err(syntax());
    }
    let mut total: f64 = 0.0;
    while !s.is_empty() {
        let num_len = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
        let num = &s[..num_len];
        if num.is_empty() || num == "." || num.matches('.').count() > 1 {
            return Err(syntax());
        }
        let value: f64 = num.parse().map_err(|_| syntax())?;
        s = &s[num_len..];
        let unit_len = s.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(s.len());
        let unit = &s[..unit_len];
        s = &s[unit_len..];
        let nanos_per = match unit {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            "" => return Err(syntax()),
            other => return Err(DurationError::Unit(text.into(), other.into())),
        };
        total += value * nanos_per;
    }
    if total > u64::MAX as f64 {
        return Err(DurationError::Overflow(text.into()));
    }
    Ok(std::time::Duration::from_nanos(total.round() as u64))
}

/// Formats like Go's `Duration.String()`: `0s`, `500ms`, `10s`, `1m30s`, `1h0m0s`.
pub fn format_duration(d: std::time::Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".into();
    }
    if nanos < 1_000_000_000 {
        let (unit, div) = if nanos < 1_000 {
            ("ns", 1u128)
        } else if nanos < 1_000_000 {
            ("µs", 1_000)
        } else {
            ("ms", 1_000_000)
        };
        return format!("{}{unit}", fraction(nanos, div));
    }
    let secs = nanos / 1_000_000_000;
    let (h, m) = (secs / 3600, (secs / 60) % 60);
    let s = fraction(nanos % 60_000_000_000, 1_000_000_000);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, m) => format!("{m}m{s}s"),
        (h, m) => format!("{h}h{m}m{s}s"),
    }
}

/// `value / div` with the fraction's trailing zeros dropped (`1.5`, `10`).
fn fraction(value: u128, div: u128) -> String {
    let whole = value / div;
    let rem = value % div;
    if rem == 0 {
        return whole.to_string();
    }
    let width = div.to_string().len() - 1;
    let frac = format!("{rem:0width$}");
    format!("{whole}.{}", frac.trim_end_matches('0'))
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(&format_duration(self.0))
    }
}

impl std::str::FromStr for Duration {
    type Err = DurationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_duration(s).map(Duration)
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "description": "A duration in Go's syntax: \"10s\", \"1m30s\", \"500ms\"",
            "pattern": "^([0-9]+(\\.[0-9]*)?(ns|us|µs|ms|s|m|h))+$|^0$"
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration as D;

    #[test]
    fn go_duration_syntax_is_parsed() {
        assert_eq!(parse_duration("10s").unwrap(), D::from_secs(10));
        assert_eq!(parse_duration("1m30s").unwrap(), D::from_secs(90));
        assert_eq!(parse_duration("500ms").unwrap(), D::from_millis(500));
        assert_eq!(parse_duration("1.5h").unwrap(), D::from_secs(5400));
        assert_eq!(parse_duration("2h45m").unwrap(), D::from_secs(9900));
        assert_eq!(parse_duration("300us").unwrap(), D::from_micros(300));
        assert_eq!(parse_duration("0").unwrap(), D::ZERO);
        assert_eq!(parse_duration("+5s").unwrap(), D::from_secs(5));
    }

    #[test]
    fn malformed_durations_are_refused_with_the_reason() {
        assert!(matches!(parse_duration("10 seconds"), Err(DurationError::Unit(..))));
        assert!(matches!(parse_duration("10"), Err(DurationError::Syntax(_))));
        assert!(matches!(parse_duration(""), Err(DurationError::Syntax(_))));
        assert!(matches!(parse_duration("s"), Err(DurationError::Syntax(_))));
        assert!(matches!(parse_duration("1..2s"), Err(DurationError::Syntax(_))));
        assert!(matches!(parse_duration("-5s"), Err(DurationError::Negative(_))));
        assert!(parse_duration("10x").unwrap_err().to_string().contains("unknown unit"));
    }

    #[test]
    fn durations_print_like_go() {
        assert_eq!(format_duration(D::ZERO), "0s");
        assert_eq!(format_duration(D::from_secs(5)), "5s");
        assert_eq!(format_duration(D::from_secs(90)), "1m30s");
        assert_eq!(format_duration(D::from_secs(3600)), "1h0m0s");
        assert_eq!(format_duration(D::from_millis(500)), "500ms");
        assert_eq!(format_duration(D::from_millis(1500)), "1.5s");
        assert_eq!(format_duration(D::from_micros(1500)), "1.5ms");
    }

    #[test]
    fn durations_round_trip_through_json_as_strings() {
        let d = Duration::from_secs(90);
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(json, "\"1m30s\"");
        assert_eq!(serde_json::from_str::<Duration>(&json).unwrap(), d);
        assert!(serde_json::from_str::<Duration>("\"10 seconds\"").is_err());
    }
}
