//! A real project server facing peers that break the protocol: each gets a
//! clear error and a closed connection, and nothing on disk changes.

use std::io::Write;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message as Frame;
use unionsync_core::{ErrorCode, Message, PROTOCOL_VERSION};
use unionsync_tests::{self_signed, tree, wait_for, Scene};

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

async fn connect(scene: &Scene) -> Ws {
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", scene.port))
        .await
        .unwrap();
    let (ws, _) = tokio_tungstenite::client_async(scene.url(), stream)
        .await
        .unwrap();
    ws
}

async fn send(ws: &mut Ws, message: &Message) {
    ws.send(Frame::binary(message.encode().unwrap()))
        .await
        .unwrap();
}

/// The next protocol message but the lower index the project pushes at
/// any time, or `None` once the server closed.
async fn next(ws: &mut Ws) -> Option<Message> {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .expect("the server answers within 20 s");
        match frame {
            Some(Ok(Frame::Binary(bytes))) => match Message::decode(&bytes).unwrap() {
                Message::IndexSnapshot { .. } | Message::IndexDelta { .. } => continue,
                message => return Some(message),
            },
            Some(Ok(Frame::Close(_))) | None | Some(Err(_)) => return None,
            Some(Ok(other)) => panic!("unexpected frame {other:?}"),
        }
    }
}

/// The server's answer is an `Error` with `code`, then the connection ends.
async fn refused_with(ws: &mut Ws, code: ErrorCode) {
    match next(ws).await {
        Some(Message::Error { code: got, message }) => {
            assert_eq!(got, code, "{message}");
            assert!(!message.is_empty());
        }
        other => panic!("expected an Error({code:?}), got {other:?}"),
    }
    assert_eq!(next(ws).await, None, "the connection is closed");
}

fn hello(version: u16, token: &[u8]) -> Message {
    Message::Hello {
        version,
        compute_id: 9,
        token: token.to_vec(),
        epoch: 0,
    }
}

/// Connects as compute 9 with the right token; `Welcome`'s `full`, or the
/// refusal.
async fn welcomed(scene: &Scene) -> (Ws, Result<bool, Message>) {
    let mut ws = connect(scene).await;
    send(&mut ws, &hello(PROTOCOL_VERSION, b"e2e-secret")).await;
    match next(&mut ws).await {
        Some(Message::Welcome { full, .. }) => (ws, Ok(full)),
        Some(other) => (ws, Err(other)),
        None => panic!("the server closed without answering the Hello"),
    }
}

/// Nothing but the token file, the logs and an empty home.
fn assert_untouched(scene: &Scene) {
    assert!(tree(&scene.home).is_empty(), "the home is unchanged");
    assert!(!scene.home.join(".unionsync/bases/9").exists());
    let mut names: Vec<String> = std::fs::read_dir(scene.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["home", "logs", "token"]);
}

#[tokio::test]
async fn a_garbage_frame_is_refused_as_malformed() {
    let scene = Scene::new();
    let _project = scene.start_project();
    let mut ws = connect(&scene).await;
    ws.send(Frame::binary(vec![0xff, 0x00, 0x13, 0x37]))
        .await
        .unwrap();
    refused_with(&mut ws, ErrorCode::Malformed).await;
    assert_untouched(&scene);
}

#[tokio::test]
async fn a_text_frame_is_refused_as_malformed() {
    let scene = Scene::new();
    let _project = scene.start_project();
    let mut ws = connect(&scene).await;
    ws.send(Frame::text("{\"hello\": 1}")).await.unwrap();
    refused_with(&mut ws, ErrorCode::Malformed).await;
    assert_untouched(&scene);
}

#[tokio::test]
async fn another_protocol_version_is_refused() {
    let scene = Scene::new();
    let _project = scene.start_project();
    let mut ws = connect(&scene).await;
    send(&mut ws, &hello(PROTOCOL_VERSION + 1, b"e2e-secret")).await;
    refused_with(&mut ws, ErrorCode::BadVersion).await;
    assert_untouched(&scene);
}

#[tokio::test]
async fn a_wrong_token_is_refused() {
    let scene = Scene::new();
    let _project = scene.start_project();
    let mut ws = connect(&scene).await;
    send(&mut ws, &hello(PROTOCOL_VERSION, b"guess")).await;
    refused_with(&mut ws, ErrorCode::BadToken).await;
    assert_untouched(&scene);
}

#[tokio::test]
async fn an_oversized_frame_is_refused_before_it_is_read() {
    let scene = Scene::new();
    let _project = scene.start_project();
    let mut ws = connect(&scene).await;
    let huge = vec![0u8; unionsync_core::wire::MAX_MESSAGE_LEN + 1];
    // The server may close while the frame is still being written.
    let _ = ws.send(Frame::binary(huge)).await;
    match next(&mut ws).await {
        Some(Message::Error { code, .. }) => assert_eq!(code, ErrorCode::Malformed),
        None => {}
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_untouched(&scene);
}

/// A tar header for `name` (a regular file of `data`), checksummed by hand:
/// what a hostile peer would write, not what our packer can produce.
fn hostile_tar(name: &[u8], data: &[u8]) -> Vec<u8> {
    let mut header = [0u8; 512];
    header[..name.len()].copy_from_slice(name);
    header[100..108].copy_from_slice(b"0000644\0");
    header[108..116].copy_from_slice(b"0000000\0");
    header[116..124].copy_from_slice(b"0000000\0");
    let size = format!("{:011o}\0", data.len());
    header[124..136].copy_from_slice(size.as_bytes());
    header[136..148].copy_from_slice(b"00000000000\0");
    header[156] = b'0';
    header[257..263].copy_from_slice(b"ustar\0");
    header[263..265].copy_from_slice(b"00");
    header[148..156].copy_from_slice(b"        ");
    let sum: u32 = header.iter().map(|b| u32::from(*b)).sum();
    header[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    let mut tar = header.to_vec();
    tar.extend_from_slice(data);
    tar.resize(tar.len().div_ceil(512) * 512 + 1024, 0);
    let mut encoder = lz4_flex::frame::FrameEncoder::new(Vec::new());
    encoder.write_all(&tar).unwrap();
    encoder.finish().unwrap()
}

#[tokio::test]
async fn an_archive_escaping_the_home_is_refused_and_writes_nothing() {
    for name in [
        &b"../../escape.txt"[..],
        b"/tmp/unionsync-e2e-absolute",
        b".unionsync/bases/9",
    ] {
        let scene = Scene::new();
        let _project = scene.start_project();
        let mut ws = connect(&scene).await;
        send(&mut ws, &hello(PROTOCOL_VERSION, b"e2e-secret")).await;
        assert!(matches!(next(&mut ws).await, Some(Message::Welcome { .. })));
        let data = hostile_tar(name, b"pwned");
        send(&mut ws, &Message::Archive { sync: 1, data }).await;
        refused_with(&mut ws, ErrorCode::Malformed).await;
        assert!(!std::path::Path::new("/tmp/unionsync-e2e-absolute").exists());
        assert!(
            tree(&scene.home).is_empty(),
            "{}",
            String::from_utf8_lossy(name)
        );
        let outside: Vec<_> = std::fs::read_dir(scene.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n == "escape.txt")
            .collect();
        assert!(outside.is_empty());
        assert!(!scene.path().parent().unwrap().join("escape.txt").exists());
    }
}

#[tokio::test]
async fn a_second_connection_with_a_live_compute_id_is_refused_naming_the_id() {
    let scene = Scene::new();
    let _project = scene.start_project();
    let (mut first, full) = welcomed(&scene).await;
    let full = full.expect("the first connection is welcomed");
    let (mut second, refused) = welcomed(&scene).await;
    match refused {
        Err(Message::Error { code, message }) => {
            assert_eq!(code, ErrorCode::ComputeIdInUse, "{message}");
            assert!(message.contains("compute id 9"), "{message}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(next(&mut second).await, None, "the second is closed");
    // The first still syncs: its staging and base were never shared.
    let changes = Message::Changes {
        sync: 1,
        epoch: 0,
        full,
        changes: Vec::new(),
        more: false,
    };
    send(&mut first, &changes).await;
    assert!(matches!(
        next(&mut first).await,
        Some(Message::Plan { sync: 1, .. })
    ));
    // Once the first is gone, the id is free again.
    drop(first);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match welcomed(&scene).await.1 {
            Ok(_) => break,
            Err(Message::Error {
                code: ErrorCode::ComputeIdInUse,
                ..
            }) if tokio::time::Instant::now() < deadline => {}
            other => panic!("the id was not freed: {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_copy_into_the_reserved_directory_is_refused_and_writes_nothing() {
    let scene = Scene::new();
    let other_base = scene.home.join(".unionsync/bases/2");
    std::fs::create_dir_all(other_base.parent().unwrap()).unwrap();
    std::fs::write(&other_base, b"compute 2's base").unwrap();
    let _project = scene.start_project();
    let (mut ws, welcome) = welcomed(&scene).await;
    welcome.expect("welcomed");
    let copy = Message::CopyIn {
        id: 1,
        path: unionsync_core::RelPath::new(".unionsync/bases/2").unwrap(),
        meta: unionsync_core::Meta::file(0o644, 5, 1),
        data: b"pwned".to_vec(),
        last: true,
    };
    send(&mut ws, &copy).await;
    match next(&mut ws).await {
        Some(Message::CopyInDone {
            id: 1,
            result: Err(why),
        }) => {
            assert!(why.contains("reserved"), "{why}")
        }
        other => panic!("expected a refused copy, got {other:?}"),
    }
    assert_eq!(std::fs::read(&other_base).unwrap(), b"compute 2's base");
    assert!(tree(&scene.home).is_empty());
}

/// Is `stream` closed by the server (EOF or reset), waiting at most 30 s?
fn closed_by_server(stream: &mut std::net::TcpStream) -> bool {
    use std::io::Read;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    match stream.read(&mut [0u8; 64]) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => {
            e.kind() != std::io::ErrorKind::WouldBlock && e.kind() != std::io::ErrorKind::TimedOut
        }
    }
}

#[test]
fn a_stalled_tls_handshake_holds_up_no_other_peer_and_is_dropped_after_the_timeout() {
    let scene = Scene::new();
    let (cert, key) = self_signed(scene.path());
    let c = scene.compute_dirs(1);
    std::fs::write(c.upper.join("f"), b"over tls").unwrap();
    let project = scene.start_tls_project(&cert, &key);
    // Accepted first (the backlog is in order), then never says a word.
    let mut stalled = std::net::TcpStream::connect(("127.0.0.1", scene.port)).unwrap();
    let _compute = scene.start_tls_compute(&c, &cert);
    wait_for(
        "the compute server to connect",
        Duration::from_secs(60),
        || {
            std::fs::read_to_string(&project.log)
                .is_ok_and(|log| log.contains("compute server connected"))
        },
    );
    let log = std::fs::read_to_string(&project.log).unwrap();
    assert!(
        !log.contains("no accepted Hello"),
        "the compute server waited for the stalled handshake:\n{log}"
    );
    assert!(
        closed_by_server(&mut stalled),
        "the stalled peer is dropped"
    );
    // The server may log the drop just after closing the socket.
    wait_for("the drop to be logged", Duration::from_secs(30), || {
        std::fs::read_to_string(&project.log)
            .is_ok_and(|log| log.contains("no accepted Hello within 10s"))
    });
}

#[tokio::test]
async fn connections_beyond_the_unauthenticated_cap_are_closed_at_once() {
    let scene = Scene::new();
    let _project = scene.start_project();
    // 64 peers that connect and say nothing take every slot.
    let mut quiet = Vec::new();
    for _ in 0..64 {
        quiet.push(
            tokio::net::TcpStream::connect(("127.0.0.1", scene.port))
                .await
                .unwrap(),
        );
    }
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", scene.port))
        .await
        .unwrap();
    let upgrade = tokio::time::timeout(
        Duration::from_secs(20),
        tokio_tungstenite::client_async(scene.url(), stream),
    );
    assert!(
        upgrade.await.expect("closed, not left waiting").is_err(),
        "the 65th got a websocket"
    );
    // Slots free up as the quiet ones go; an honest peer gets in.
    drop(quiet);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", scene.port))
            .await
            .unwrap();
        if let Ok((mut ws, _)) = tokio_tungstenite::client_async(scene.url(), stream).await {
            send(&mut ws, &hello(PROTOCOL_VERSION, b"e2e-secret")).await;
            assert!(matches!(next(&mut ws).await, Some(Message::Welcome { .. })));
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no slot came free");
    }
}

#[test]
fn running_out_of_file_descriptors_pauses_accepting_and_the_server_survives() {
    let scene = Scene::new();
    let mut project = scene.start_project_limited(&[], Some(40));
    let mut held = Vec::new();
    wait_for(
        "accepting to run out of descriptors",
        Duration::from_secs(30),
        || {
            if let Ok(stream) = std::net::TcpStream::connect(("127.0.0.1", scene.port)) {
                held.push(stream);
            }
            std::fs::read_to_string(&project.log)
                .is_ok_and(|log| log.contains("cannot accept connections"))
        },
    );
    assert!(project.running(), "the server survived EMFILE");
    drop(held);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let stream = tokio::net::TcpStream::connect(("127.0.0.1", scene.port)).await;
            if let Ok(stream) = stream {
                if let Ok((mut ws, _)) = tokio_tungstenite::client_async(scene.url(), stream).await
                {
                    send(&mut ws, &hello(PROTOCOL_VERSION, b"e2e-secret")).await;
                    if matches!(next(&mut ws).await, Some(Message::Welcome { .. })) {
                        break;
                    }
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "never accepting again"
            );
        }
    });
    assert!(project.running());
}
