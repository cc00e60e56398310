//! Time as data: a [`Timestamp`] is milliseconds since the Unix epoch, passed into the core by
//! whoever owns a clock. Durations in configuration are strings such as `"30s"` or `"10m"`.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch (UTC).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
#[serde(transparent)]
pub struct Timestamp(pub i64);

impl Timestamp {
    pub const ZERO: Timestamp = Timestamp(0);

    pub fn millis(self) -> i64 {
        self.0
    }

    pub fn plus(self, duration: Duration) -> Timestamp {
        let millis = i64::try_from(duration.as_millis()).unwrap_or(i64::MAX);
        Timestamp(self.0.saturating_add(millis))
    }

    /// The time from `earlier` to `self`, zero when `earlier` is later.
    pub fn since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(u64::try_from(self.0 - earlier.0).unwrap_or(0))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0)
    }
}

/// A duration written as a string in `baton.toml` (`"500ms"`, `"30s"`, `"10m"`, `"1h"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct DurationStr(pub Duration);

impl<'de> Deserialize<'de> for DurationStr {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse_duration(&text).map(DurationStr).map_err(serde::de::Error::custom)
    }
}

/// Parses `"30s"`, `"10m"`, `"1h 30m"`, `"250ms"`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|error| {
        format!("invalid duration `{text}` ({error}); write a number and a unit, e.g. \"30s\", \"10m\", \"1h\"")
    })
}

/// Formats a duration the way it is written in `baton.toml` (to the millisecond), such that
/// [`parse_duration`] reads it back.
pub fn format_duration(duration: Duration) -> String {
    let millis = duration.as_millis();
    if millis == 0 {
        return "0s".to_string();
    }
    // Under a minute, `1500ms` reads best. Not above: a count of milliseconds is read back
    // only up to what fits in nanoseconds (about 584 years), when `1h 30m 500ms` always is.
    if millis < 60_000 && !millis.is_multiple_of(1000) {
        return format!("{millis}ms");
    }
    let whole = Duration::new(duration.as_secs(), duration.subsec_millis() * 1_000_000);
    humantime::format_duration(whole).to_string()
}

/// A size written as a string in `baton.toml` (`"512MiB"`, `"2GB"`), in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SizeStr(pub u64);

impl<'de> Deserialize<'de> for SizeStr {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.trim().parse::<bytesize::ByteSize>().map(|size| SizeStr(size.as_u64())).map_err(|error| {
            serde::de::Error::custom(format!(
                "invalid size `{text}` ({error}); write a number and a unit, e.g. \"512MiB\", \"2GiB\""
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_format() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("10x").unwrap_err().contains("invalid duration `10x`"));
        assert_eq!(format_duration(Duration::from_secs(90)), "1m 30s");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format_duration(Duration::from_millis(90_500)), "1m 30s 500ms");
    }

    #[test]
    fn formatted_durations_read_back() {
        // Found by fuzzing: `2757 7w 777777777777.1s` was shown as `94456347377100ms`, which
        // does not parse (too many nanoseconds).
        let long = parse_duration("2757 7w 777777777777.1s").unwrap();
        for duration in [long, Duration::from_millis(94_456_347_377_100), Duration::from_millis(61_001)] {
            let shown = format_duration(duration);
            assert_eq!(parse_duration(&shown).map(|back| back.as_millis()), Ok(duration.as_millis()), "{shown}");
        }
    }

    #[test]
    fn timestamps_are_saturating() {
        let now = Timestamp(1_000);
        assert_eq!(now.plus(Duration::from_millis(500)), Timestamp(1_500));
        assert_eq!(Timestamp(1_000).since(Timestamp(2_000)), Duration::ZERO);
        assert_eq!(Timestamp(2_000).since(Timestamp(1_000)), Duration::from_secs(1));
    }
}
