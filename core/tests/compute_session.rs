//! The compute session's handling of refusals, driven through its public
//! API.

use std::time::{Duration, Instant};

use unionsync_core::wire::CHUNK_LEN;
use unionsync_core::{
    ComputeConfig, ComputeSession, ErrorCode, Message, Meta, RelPath, RemoteEntry, Timing,
};

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

#[test]
fn a_listing_too_long_for_one_frame_is_answered_with_an_error() {
    let now = Instant::now();
    let mut s = welcomed(now);
    let entries = (0..40_000)
        .map(|i| RemoteEntry {
            name: format!("{i:0>200}").into_bytes(),
            meta: Meta::file(0o644, 1, 1),
        })
        .collect();
    s.handle_remote_done(7, Ok(entries));
    let answer = std::iter::from_fn(|| s.poll_transmit())
        .find(|m| matches!(m, Message::RemoteDone { .. }))
        .expect("the request is answered");
    assert!(answer.encode().is_ok());
    match answer {
        Message::RemoteDone {
            id: 7,
            result: Err(why),
        } => {
            assert!(why.contains("40000 entries"), "{why}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// A session past its handshake (copies may go).
fn welcomed(now: Instant) -> ComputeSession {
    let mut s = session(now);
    s.handle_connected(now);
    let welcome = Message::Welcome {
        epoch: 0,
        full: false,
    };
    s.handle_message(now, welcome).unwrap();
    while s.poll_transmit().is_some() {}
    s
}

#[test]
fn a_copy_piece_is_cut_into_chunks_and_only_the_final_one_of_the_last_is_last() {
    let now = Instant::now();
    let mut s = welcomed(now);
    let id = s.start_copy_in().unwrap();
    let (path, meta) = (RelPath::new("f").unwrap(), Meta::file(0o644, 0, 1));
    let first = vec![1; CHUNK_LEN + 1];
    assert!(s.copy_in_piece(id, path.clone(), meta.clone(), first, false));
    assert!(s.copy_in_piece(id, path, meta, vec![2; 3], true));
    let pieces: Vec<(usize, bool)> = std::iter::from_fn(|| s.poll_transmit())
        .map(|m| match m {
            Message::CopyIn { data, last, .. } => (data.len(), last),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(pieces, [(CHUNK_LEN, false), (1, false), (3, true)]);
}
