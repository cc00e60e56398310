//! The small parsers of user input: durations, sizes, cron expressions in a time zone (the
//! schedules' and the budgets' resets) and resource keys and globs.
//!
//! Input: one byte choosing the parser, then its text. Cron and resources take two strings
//! separated by a NUL byte (the expression and the zone, or two resources).

#![no_main]

use baton_core::Timestamp;
use baton_core::budget::Reset;
use baton_core::resources;
use baton_core::schedule::Timetable;
use baton_core::time::{DurationStr, SizeStr, format_duration, parse_duration};
use libfuzzer_sys::fuzz_target;
use serde::Deserialize;
use serde::de::IntoDeserializer;
use serde::de::value::{Error as ValueError, StrDeserializer};

/// Instants the timetables are asked about: the epoch, now-ish, and far ends.
const INSTANTS: [i64; 5] = [0, 1_800_000_000_000, -62_000_000_000_000, 253_402_300_799_000, i64::MAX];

fuzz_target!(|data: &[u8]| {
    let [which, rest @ ..] = data else { return };
    let Ok(text) = std::str::from_utf8(rest) else { return };
    let (first, second) = text.split_once('\0').unwrap_or((text, "UTC"));
    match which % 5 {
        0 => {
            if let Ok(duration) = parse_duration(text) {
                let written = format_duration(duration);
                // What is shown is read back (to the millisecond it is shown with).
                let back = parse_duration(&written).expect("a formatted duration parses");
                assert_eq!(back.as_millis(), duration.as_millis(), "`{text}` shown as `{written}`");
            }
            let deserializer: StrDeserializer<'_, ValueError> = text.into_deserializer();
            let _ = DurationStr::deserialize(deserializer);
        }
        1 => {
            let deserializer: StrDeserializer<'_, ValueError> = text.into_deserializer();
            let _ = SizeStr::deserialize(deserializer);
        }
        2 => {
            if let Ok(timetable) = Timetable::parse(first, second) {
                for at in INSTANTS {
                    let _ = timetable.upcoming(Timestamp(at), 2);
                    let _ = timetable.local(Timestamp(at));
                }
            }
        }
        3 => {
            if let Ok(reset) = Reset::parse(first, second) {
                for at in INSTANTS {
                    let _ = reset.period_start(Timestamp(at));
                    let _ = reset.next_after(Timestamp(at));
                    let _ = reset.show(Timestamp(at));
                }
            }
        }
        _ => {
            let _ = resources::is_glob(first);
            if !resources::is_glob(second) {
                let _ = resources::matches(first, second);
            }
            let _ = resources::overlaps(first, second);
            let held = [first.to_string()];
            let wanted = [second.to_string()];
            let _ = resources::conflict(&held, &wanted);
        }
    }
});
