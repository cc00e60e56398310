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

    /// Saturating, like [`Timestamp::plus`].
    pub fn minus(self, duration: Duration) -> Timestamp {
        let millis = i64::try_from(duration.as_millis()).unwrap_or(i64::MAX);
        Timestamp(self.0.saturating_sub(millis))
    }

    /// The time from `earlier` to `self`, zero when `earlier` is later.
    pub fn since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(u64::try_from(self.0.saturating_sub(earlier.0)).unwrap_or(0))
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

/// The longest duration Baton takes anywhere (a timeout, a lease, a backoff): 3650 days. Far
/// beyond any real setting, and small enough that adding it to any instant or timestamp, or
/// counting it in milliseconds, cannot overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(3650 * 24 * 60 * 60);

/// Parses `"30s"`, `"10m"`, `"1h 30m"`, `"250ms"`; refuses more than [`MAX_DURATION`].
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text.trim()).map_err(|error| {
        format!("invalid duration `{text}` ({error}); write a number and a unit, e.g. \"30s\", \"10m\", \"1h\"")
    })?;
    if duration > MAX_DURATION {
        return Err(format!("duration `{text}` is too long: at most 3650 days (about 10 years)"));
    }
    Ok(duration)
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

/// Serde for a [`Duration`] as `baton.toml` writes it (`"10m"`, `"1500ms"`; see
/// [`format_duration`]), for `#[serde(with = "crate::time::humane")]`: how the API and
/// `baton check --json` show durations, and read them back.
pub mod humane {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    use super::{DurationStr, format_duration};

    pub fn serialize<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format_duration(*duration))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        DurationStr::deserialize(deserializer).map(|duration| duration.0)
    }

    /// The same for an `Option<Duration>`: `null` when there is none.
    pub mod option {
        use std::time::Duration;

        use serde::{Deserialize, Deserializer, Serializer};

        use super::super::{DurationStr, format_duration};

        pub fn serialize<S: Serializer>(duration: &Option<Duration>, serializer: S) -> Result<S::Ok, S::Error> {
            match duration {
                Some(duration) => serializer.serialize_some(&format_duration(*duration)),
                None => serializer.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Duration>, D::Error> {
            Option::<DurationStr>::deserialize(deserializer).map(|duration| duration.map(|duration| duration.0))
        }
    }
}

/// A size written as a string in `baton.toml` (`"512MiB"`, `"2GB"`), in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SizeStr(pub u64);

/// The largest size Baton takes anywhere: 1 PiB.
pub const MAX_SIZE: u64 = 1 << 50;

impl<'de> Deserialize<'de> for SizeStr {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        let size = text.trim().parse::<bytesize::ByteSize>().map_err(|error| {
            serde::de::Error::custom(format!(
                "invalid size `{text}` ({error}); write a number and a unit, e.g. \"512MiB\", \"2GiB\""
            ))
        })?;
        if size.as_u64() > MAX_SIZE {
            return Err(serde::de::Error::custom(format!("size `{text}` is too large: at most 1PiB")));
        }
        Ok(SizeStr(size.as_u64()))
    }
}

/// `bytes` as `baton.toml` writes a size, exactly: in the largest binary unit that divides it
/// (`1048576` is `"1MiB"`, `1500` is `"1500B"`), so that it reads back as the same number.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [(&str, u64); 5] =
        [("PiB", 1 << 50), ("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
    match UNITS.iter().find(|(_, unit)| bytes > 0 && bytes.is_multiple_of(*unit)) {
        Some((name, unit)) => format!("{}{name}", bytes / unit),
        None => format!("{bytes}B"),
    }
}

/// Serde for a size in bytes shown as `baton.toml` writes it (`"512MiB"`), and read back.
pub mod humane_size {
    use serde::{Deserialize, Deserializer, Serializer};

    use super::{SizeStr, format_size};

    pub fn serialize<S: Serializer>(bytes: &u64, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format_size(*bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
        SizeStr::deserialize(deserializer).map(|size| size.0)
    }

    /// The same for an `Option<u64>`: `null` when there is none.
    pub mod option {
        use serde::{Deserialize, Deserializer, Serializer};

        use super::super::{SizeStr, format_size};

        pub fn serialize<S: Serializer>(bytes: &Option<u64>, serializer: S) -> Result<S::Ok, S::Error> {
            match bytes {
                Some(bytes) => serializer.serialize_some(&format_size(*bytes)),
                None => serializer.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u64>, D::Error> {
            Option::<SizeStr>::deserialize(deserializer).map(|size| size.map(|size| size.0))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_format_as_they_are_written_and_read_back() {
        for (bytes, text) in [(1 << 20, "1MiB"), (1500, "1500B"), (1536, "1536B"), (3 << 30, "3GiB"), (0, "0B")] {
            assert_eq!(format_size(bytes), text);
            let read: SizeStr = serde_json::from_value(serde_json::json!(text)).unwrap();
            assert_eq!(read.0, bytes, "{text}");
        }
    }

    #[test]
    fn durations_parse_and_format() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("10x").unwrap_err().contains("invalid duration `10x`"));
        assert_eq!(parse_duration("3650days").unwrap(), MAX_DURATION);
        assert_eq!(
            parse_duration("18446744073709553s").unwrap_err(),
            "duration `18446744073709553s` is too long: at most 3650 days (about 10 years)"
        );
        assert_eq!(format_duration(Duration::from_secs(90)), "1m 30s");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format_duration(Duration::from_millis(90_500)), "1m 30s 500ms");
    }

    #[test]
    fn formatted_durations_read_back() {
        // Found by fuzzing: `2757 7w 777777777777.1s` was shown as `94456347377100ms`, which
        // does not parse (too many nanoseconds).
        // (That one is beyond `MAX_DURATION` now; the longest durations that parse must read back.)
        let just_under_the_bound = MAX_DURATION - Duration::from_millis(1);
        let long = parse_duration("156w 777777.1s").unwrap();
        for duration in
            [just_under_the_bound, long, Duration::from_millis(94_456_347_377), Duration::from_millis(61_001)]
        {
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
        assert_eq!(Timestamp(i64::MAX).since(Timestamp(i64::MIN)), Duration::from_millis(i64::MAX as u64));
        assert_eq!(Timestamp(i64::MIN).since(Timestamp(i64::MAX)), Duration::ZERO);
        assert_eq!(Timestamp(i64::MIN + 5).minus(Duration::MAX), Timestamp(i64::MIN));
        assert_eq!(Timestamp(5).plus(Duration::MAX), Timestamp(i64::MAX));
    }
}
