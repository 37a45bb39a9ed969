//! The compute session's handling of refusals, driven through its public
//! API.

use std::time::{Duration, Instant};

use unionsync_core::{ComputeConfig, ComputeSession, ErrorCode, Message, Timing};

fn session(now: Instant) -> ComputeSession {
    let config = ComputeConfig {
        compute_id: 1,
        token: b"t".to_vec(),
        timing: Timing::default(),
        step_timeout: Duration::from_secs(30),
    };
    ComputeSession::new(config, 0, now)
}

/// Connects, gets refused with `code`, disconnects.
fn refused(session: &mut ComputeSession, now: Instant, code: ErrorCode, message: &str) {
    session.handle_connected(now);
    let refusal = Message::Error {
        code,
        message: message.into(),
    };
    assert!(session.handle_message(now, refusal).is_err());
    assert!(session.poll_close().is_some());
    session.handle_disconnected(now, "refused");
}

#[test]
fn a_busy_compute_id_shows_in_status_and_never_pauses_syncing() {
    let now = Instant::now();
    let mut s = session(now);
    let why = "compute id 1 is already connected: give each compute server its own --id";
    for _ in 0..5 {
        refused(&mut s, now, ErrorCode::ComputeIdInUse, why);
    }
    let status = s.status(now);
    assert!(!status.paused);
    assert_eq!(status.failures_in_a_row, 0);
    let shown = status.last_error.expect("the refusal is shown");
    assert!(shown.contains(why), "{shown}");

    // A wrong token, by contrast, is a broken setup: it pauses.
    for _ in 0..3 {
        refused(&mut s, now, ErrorCode::BadToken, "wrong token");
    }
    assert!(s.status(now).paused);
}
