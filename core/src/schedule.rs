//! When the compute side syncs next: an adaptive interval, back-off on
//! failure, and a pause after repeated failures.
//!
//! - after a sync that moved anything: back to `min`;
//! - after an idle sync: ×1.3, at most `max`;
//! - after a failure: ×1.5, at most `max`; after `pause_after` failures in a
//!   row, no more syncs until [`Schedule::clear_error`];
//! - [`Schedule::sync_now`] makes one due at once, paused or not.

use std::time::{Duration, Instant};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timing {
    pub min: Duration,
    pub max: Duration,
    pub pause_after: u32,
}

impl Default for Timing {
    fn default() -> Timing {
        Timing {
            min: Duration::from_secs(10),
            max: Duration::from_secs(30),
            pause_after: 3,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Schedule {
    timing: Timing,
    interval: Duration,
    next: Option<Instant>,
    failures: u32,
}

impl Schedule {
    /// The first sync is due at once.
    pub fn new(timing: Timing, now: Instant) -> Schedule {
        Schedule {
            interval: timing.min,
            timing,
            next: Some(now),
            failures: 0,
        }
    }

    /// When the next sync is due; `None` while paused.
    pub fn next(&self) -> Option<Instant> {
        self.next
    }

    pub fn is_due(&self, now: Instant) -> bool {
        self.next.is_some_and(|next| next <= now)
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }

    pub fn is_paused(&self) -> bool {
        self.failures >= self.timing.pause_after
    }

    pub fn interval(&self) -> Duration {
        self.interval
    }

    pub fn succeeded(&mut self, now: Instant, moved_anything: bool) {
        self.failures = 0;
        self.interval = if moved_anything {
            self.timing.min
        } else {
            self.grow(1.3)
        };
        self.next = Some(now + self.interval);
    }

    pub fn failed(&mut self, now: Instant) {
        self.failures += 1;
        self.interval = self.grow(1.5);
        self.next = (!self.is_paused()).then(|| now + self.interval);
    }

    /// Local activity (a write through the mount): sync soon, at `min`.
    pub fn activity(&mut self, now: Instant) {
        if self.is_paused() {
            return;
        }
        self.interval = self.timing.min;
        let soon = now + self.timing.min;
        self.next = Some(self.next.map_or(soon, |next| next.min(soon)));
    }

    pub fn sync_now(&mut self, now: Instant) {
        self.next = Some(now);
    }

    pub fn clear_error(&mut self, now: Instant) {
        self.failures = 0;
        self.interval = self.timing.min;
        self.next = Some(now);
    }

    fn grow(&self, factor: f64) -> Duration {
        self.interval
            .mul_f64(factor)
            .clamp(self.timing.min, self.timing.max)
    }
}
