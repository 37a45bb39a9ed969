//! The sync schedule: adaptive interval, back-off, pause after failures.

use std::time::{Duration, Instant};

use unionsync_core::{Schedule, Timing};

fn schedule() -> (Schedule, Instant) {
    let now = Instant::now();
    (Schedule::new(Timing::default(), now), now)
}

#[test]
fn first_sync_is_due_at_once() {
    let (s, now) = schedule();
    assert!(s.is_due(now));
}

#[test]
fn idle_syncs_stretch_the_interval_by_1_3_up_to_max() {
    let (mut s, now) = schedule();
    s.succeeded(now, false);
    assert_eq!(s.interval(), Duration::from_secs(13));
    for _ in 0..10 {
        s.succeeded(now, false);
    }
    assert_eq!(s.interval(), Duration::from_secs(30));
}

#[test]
fn activity_brings_the_interval_back_to_min() {
    let (mut s, now) = schedule();
    for _ in 0..5 {
        s.succeeded(now, false);
    }
    s.succeeded(now, true);
    assert_eq!(s.interval(), Duration::from_secs(10));
    assert_eq!(s.next(), Some(now + Duration::from_secs(10)));
}

#[test]
fn failures_back_off_by_1_5() {
    let (mut s, now) = schedule();
    s.failed(now);
    assert_eq!(s.interval(), Duration::from_secs(15));
    assert_eq!(s.next(), Some(now + Duration::from_secs(15)));
}

#[test]
fn three_failures_in_a_row_pause_until_cleared() {
    let (mut s, now) = schedule();
    s.failed(now);
    s.failed(now);
    s.failed(now);
    assert!(s.is_paused());
    assert_eq!(s.next(), None);
    s.activity(now);
    assert_eq!(s.next(), None, "activity does not resume a paused sync");
    s.clear_error(now);
    assert!(!s.is_paused());
    assert!(s.is_due(now));
}

#[test]
fn sync_now_runs_one_even_when_paused() {
    let (mut s, now) = schedule();
    for _ in 0..3 {
        s.failed(now);
    }
    s.sync_now(now);
    assert!(s.is_due(now));
}
