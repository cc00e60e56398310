//! The runtime's clock. In production it reads the system's wall clock at every call, so that
//! timestamps stay true across a suspend of the machine (tokio's monotonic clock stops then).
//! Tests use a clock derived from tokio's, so that pausing tokio's time controls Baton's.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use baton_core::Timestamp;
use tokio::time::Instant;

#[derive(Debug, Clone, Copy)]
pub enum Clock {
    /// The system's wall clock.
    System,
    /// `origin_wall` at `origin`, advancing with tokio's clock.
    Tokio { origin_wall: Timestamp, origin: Instant },
}

impl Clock {
    pub fn system() -> Clock {
        Clock::System
    }

    /// A clock that starts at `start` and advances with tokio's clock (paused in tests).
    pub fn starting_at(start: Timestamp) -> Clock {
        Clock::Tokio { origin_wall: start, origin: Instant::now() }
    }

    pub fn now(&self) -> Timestamp {
        match self {
            Clock::System => {
                Timestamp(SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |since| since.as_millis() as i64))
            }
            Clock::Tokio { origin_wall, origin } => origin_wall.plus(origin.elapsed()),
        }
    }

    /// The tokio instant at which this clock will read `at` (now, if `at` has passed).
    pub fn instant_at(&self, at: Timestamp) -> Instant {
        deadline_after(at.since(self.now()))
    }
}

/// Far enough ahead to never come, near enough that no clock overflows adding it (tokio's own
/// "far future" is 30 years too).
const FAR_FUTURE: Duration = Duration::from_secs(30 * 365 * 24 * 60 * 60);

/// The instant `after` from now. `Instant + Duration` panics when the sum does not fit the
/// clock; a duration that large (a lease or a timeout someone chose) means "never", and gets
/// the far future instead.
pub fn deadline_after(after: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(after).or_else(|| now.checked_add(FAR_FUTURE)).unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_beyond_the_clock_are_the_far_future_not_a_panic() {
        let now = Instant::now();
        assert!(deadline_after(Duration::MAX) >= now + FAR_FUTURE);
        let soon = deadline_after(Duration::from_secs(5));
        assert!(soon >= now + Duration::from_secs(5) && soon < now + Duration::from_secs(60));
        let clock = Clock::system();
        assert!(clock.instant_at(Timestamp(i64::MAX)) > now);
        assert!(clock.instant_at(Timestamp(i64::MIN)) <= Instant::now());
    }
}
