//! The runtime's clock. Wall time is derived from tokio's monotonic clock, so tests that pause
//! tokio's time control Baton's time too.

use std::time::{SystemTime, UNIX_EPOCH};

use baton_core::Timestamp;
use tokio::time::Instant;

#[derive(Debug, Clone, Copy)]
pub struct Clock {
    origin_wall: Timestamp,
    origin: Instant,
}

impl Clock {
    /// A clock that reads the system time once, then advances with tokio's clock.
    pub fn system() -> Clock {
        let millis = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        Clock {
            origin_wall: Timestamp(millis),
            origin: Instant::now(),
        }
    }

    /// A clock that starts at `start`.
    pub fn starting_at(start: Timestamp) -> Clock {
        Clock {
            origin_wall: start,
            origin: Instant::now(),
        }
    }

    pub fn now(&self) -> Timestamp {
        self.origin_wall.plus(self.origin.elapsed())
    }

    /// The tokio instant at which this clock reads `at`.
    pub fn instant_at(&self, at: Timestamp) -> Instant {
        self.origin + at.since(self.origin_wall)
    }
}
