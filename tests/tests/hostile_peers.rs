//! A real project server facing peers that break the protocol: each gets a
//! clear error and a closed connection, and nothing on disk changes.

use std::io::Write;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message as Frame;
use unionsync_core::{ErrorCode, Message, PROTOCOL_VERSION};
use unionsync_tests::{tree, Scene};

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
