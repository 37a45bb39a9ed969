//! The project session's refusals of what a compute server may not do,
//! driven through its public API.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use unionsync_core::{
    ErrorCode, Message, Meta, ProjectConfig, ProjectIo, ProjectSession, RelPath, PROTOCOL_VERSION,
};

fn session() -> (ProjectSession, Instant) {
    let now = Instant::now();
    let config = ProjectConfig {
        token: b"t".to_vec(),
        step_timeout: Duration::from_secs(30),
        lower_index: false,
    };
    (ProjectSession::new(config, now), now)
}

/// Hello from compute 3 with `epoch`; the session asks for the base.
fn hello(s: &mut ProjectSession, now: Instant, epoch: u64) {
    let hello = Message::Hello {
        version: PROTOCOL_VERSION,
        compute_id: 3,
        token: b"t".to_vec(),
        epoch,
    };
    s.handle_message(now, hello).unwrap();
    assert!(s.is_authenticated());
    assert_eq!(s.poll_io(), Some(ProjectIo::LoadBase { compute_id: 3 }));
}

fn sent(s: &mut ProjectSession) -> Vec<Message> {
    std::iter::from_fn(|| s.poll_transmit()).collect()
}

/// The session's last word was an `Error`, and it wants to close.
fn refusal(s: &mut ProjectSession) -> (ErrorCode, String) {
    let close = s.poll_close();
    match sent(s).pop() {
        Some(Message::Error { code, message }) if close.is_some() => (code, message),
        other => panic!("expected a refusal, got {other:?} (close: {close:?})"),
    }
}

#[test]
fn a_wrong_token_never_counts_as_authenticated() {
    let (mut s, now) = session();
    let hello = Message::Hello {
        version: PROTOCOL_VERSION,
        compute_id: 3,
        token: b"guess".to_vec(),
        epoch: 0,
    };
    assert!(s.handle_message(now, hello).is_err());
    assert!(!s.is_authenticated());
}

#[test]
fn a_second_connection_with_a_live_compute_id_is_refused_naming_the_id() {
    let (mut s, now) = session();
    hello(&mut s, now, 0);
    s.handle_id_in_use();
    let (code, message) = refusal(&mut s);
    assert_eq!(code, ErrorCode::ComputeIdInUse);
    assert!(message.contains("compute id 3"), "{message}");
    assert_eq!(s.poll_io(), None, "no base is loaded");
}

#[test]
fn a_hello_with_the_last_epoch_is_refused_instead_of_overflowing() {
    for (compute_epoch, base_epoch) in [(u64::MAX, 0), (u64::MAX, 7), (u64::MAX - 1, u64::MAX)] {
        let (mut s, now) = session();
        hello(&mut s, now, compute_epoch);
        s.handle_base(now, base_epoch, BTreeMap::new());
        let (code, message) = refusal(&mut s);
        assert_eq!(code, ErrorCode::Protocol);
        assert!(message.contains("epoch"), "{message}");
    }
}

#[test]
fn a_sync_number_at_the_end_of_the_range_is_refused_without_overflowing() {
    let (mut s, now) = session();
    hello(&mut s, now, 0);
    s.handle_base(now, 0, BTreeMap::new());
    assert!(matches!(
        sent(&mut s)[..],
        [Message::Welcome { full: true, .. }]
    ));
    let changes = || Message::Changes {
        sync: u64::MAX,
        epoch: 0,
        full: true,
        changes: Vec::new(),
        more: false,
    };
    // One empty sync numbered u64::MAX, to its end.
    s.handle_message(now, changes()).unwrap();
    assert!(matches!(s.poll_io(), Some(ProjectIo::Stat { .. })));
    s.handle_stats(now, Vec::new());
    s.handle_message(now, Message::DataDone { sync: u64::MAX })
        .unwrap();
    assert!(matches!(s.poll_io(), Some(ProjectIo::Apply { .. })));
    s.handle_applied(now, Vec::new(), Vec::new());
    assert!(matches!(s.poll_io(), Some(ProjectIo::SendFiles { .. })));
    s.handle_files_sent(now, Vec::new());
    let applied = Message::ComputeApplied {
        sync: u64::MAX,
        deferred: Vec::new(),
        upper: Vec::new(),
        more: false,
    };
    s.handle_message(now, applied).unwrap();
    assert!(matches!(
        s.poll_io(),
        Some(ProjectIo::CommitBase { epoch: 1, .. })
    ));
    s.handle_base_committed(now);
    let ack = Message::CommitAck {
        sync: u64::MAX,
        epoch: 1,
    };
    s.handle_message(now, ack).unwrap();
    sent(&mut s);
    // No later sync number exists: a protocol error, not a panic.
    assert!(s.handle_message(now, changes()).is_err());
    let (code, message) = refusal(&mut s);
    assert_eq!(code, ErrorCode::Protocol);
    assert!(message.contains(&u64::MAX.to_string()), "{message}");
}

#[test]
fn a_copy_into_the_reserved_directory_is_refused_and_never_reaches_the_store() {
    let (mut s, now) = session();
    hello(&mut s, now, 0);
    s.handle_base(now, 0, BTreeMap::new());
    sent(&mut s);
    let path = RelPath::new(".unionsync/bases/2").unwrap();
    for last in [false, true] {
        let copy = Message::CopyIn {
            id: 1,
            path: path.clone(),
            meta: Meta::file(0o644, 2, 1),
            data: b"x".to_vec(),
            last,
        };
        s.handle_message(now, copy).unwrap();
    }
    assert_eq!(s.poll_io(), None, "nothing is staged or written");
    match &sent(&mut s)[..] {
        [Message::CopyInDone {
            id: 1,
            result: Err(why),
        }] => {
            assert!(why.contains("reserved"), "{why}")
        }
        other => panic!("expected one refusal, got {other:?}"),
    }
    assert!(s.poll_close().is_none(), "the connection stays");
}
