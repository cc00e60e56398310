//! The runtime's clock. In production it reads the system's wall clock at every call, so that
//! timestamps stay true across a suspend of the machine (tokio's monotonic clock stops then).
//! Tests use a clock derived from tokio's, so that pausing tokio's time controls Baton's.

use std::time::{SystemTime, UNIX_EPOCH};

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
        Instant::now() + at.since(self.now())
    }
}
