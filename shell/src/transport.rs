//! The websocket both agents speak: one wire [`Message`] per binary frame,
//! nothing else. Generic over the byte stream, so production (tokio TCP),
//! the simulation (turmoil TCP) and the tests (in-memory duplex pipes) share
//! it; no DNS or TLS is involved (the URL only fills the HTTP request).

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::error::CapacityError;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message as Frame};
use tokio_tungstenite::WebSocketStream;
use unionsync_core::wire::{CHUNK_LEN, MAX_MESSAGE_LEN};
use unionsync_core::{Message, Meta, RelPath, WireError};

use crate::store::StoreResult;

pub type Ws<S> = WebSocketStream<S>;

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("websocket: {0}")]
    WebSocket(#[from] tungstenite::Error),
    #[error("frame of {len} bytes exceeds the limit of {MAX_MESSAGE_LEN}")]
    TooLarge { len: usize },
    #[error("text frame (the protocol is binary frames only)")]
    Text,
    #[error(transparent)]
    Wire(#[from] WireError),
}

impl TransportError {
    /// For an error from [`recv`]: the peer sent a frame this side refuses
    /// (oversized, text, undecodable), rather than the connection failing.
    pub fn is_malformed(&self) -> bool {
        matches!(
            self,
            TransportError::TooLarge { .. } | TransportError::Text | TransportError::Wire(_)
        )
    }
}

/// Refuses incoming frames and messages over [`MAX_MESSAGE_LEN`] before
/// reading their payload.
pub fn config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE_LEN))
        .max_frame_size(Some(MAX_MESSAGE_LEN))
}

/// The client handshake over an established stream.
pub async fn connect<S>(url: &str, stream: S) -> Result<Ws<S>, TransportError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (ws, _response) =
        tokio_tungstenite::client_async_with_config(url, stream, Some(config())).await?;
    Ok(ws)
}

/// The server handshake over an accepted stream.
pub async fn accept<S>(stream: S) -> Result<Ws<S>, TransportError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    Ok(tokio_tungstenite::accept_async_with_config(stream, Some(config())).await?)
}

/// Sends `message` as one binary frame (and flushes).
pub async fn send<S>(ws: &mut Ws<S>, message: &Message) -> Result<(), TransportError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let bytes = message.encode()?;
    ws.send(Frame::binary(bytes)).await?;
    Ok(())
}

/// The next message; `None` once the peer closed. Ping and pong frames are
/// skipped (tungstenite answers pings itself). Cancel-safe: a frame is only
/// taken off the stream when it is returned.
pub async fn recv<S>(ws: &mut Ws<S>) -> Result<Option<Message>, TransportError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        let frame = match ws.next().await {
            None => return Ok(None),
            Some(Err(tungstenite::Error::Capacity(CapacityError::MessageTooLong {
                size, ..
            }))) => return Err(TransportError::TooLarge { len: size }),
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(frame)) => frame,
        };
        match frame {
            Frame::Binary(bytes) if bytes.len() > MAX_MESSAGE_LEN => {
                return Err(TransportError::TooLarge { len: bytes.len() })
            }
            Frame::Binary(bytes) => return Ok(Some(Message::decode(&bytes)?)),
            Frame::Text(_) => return Err(TransportError::Text),
            Frame::Close(_) => return Ok(None),
            Frame::Ping(_) | Frame::Pong(_) | Frame::Frame(_) => {}
        }
    }
}

/// Ships the files of a `SendFiles` step of sync `sync`: each file that
/// `read` returns as `FileData` chunks of [`CHUNK_LEN`] (`last` on the final
/// one; an empty file is one empty chunk), each it returns `None` for as
/// `FileSkipped`. The outer error is the connection failing; the inner one
/// a read failing (the files before it went out). Inner `Ok`: the skipped.
pub async fn send_files<S, F>(
    ws: &mut Ws<S>,
    sync: u64,
    files: &[(RelPath, Meta)],
    mut read: F,
) -> Result<StoreResult<Vec<RelPath>>, TransportError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: AsyncFnMut(&RelPath, &Meta) -> StoreResult<Option<Vec<u8>>>,
{
    let mut skipped = Vec::new();
    for (path, meta) in files {
        let data = match read(path, meta).await {
            Ok(Some(data)) => data,
            Ok(None) => {
                let path = path.clone();
                send(
                    ws,
                    &Message::FileSkipped {
                        sync,
                        path: path.clone(),
                    },
                )
                .await?;
                skipped.push(path);
                continue;
            }
            Err(e) => return Ok(Err(e)),
        };
        let chunks = data.len().div_ceil(CHUNK_LEN).max(1);
        for i in 0..chunks {
            let chunk = &data[i * CHUNK_LEN..((i + 1) * CHUNK_LEN).min(data.len())];
            let message = Message::FileData {
                sync,
                path: path.clone(),
                data: chunk.to_vec(),
                last: i + 1 == chunks,
            };
            send(ws, &message).await?;
        }
    }
    Ok(Ok(skipped))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn pair() -> (Ws<tokio::io::DuplexStream>, Ws<tokio::io::DuplexStream>) {
        let (a, b) = tokio::io::duplex(1 << 20);
        let (client, server) = tokio::join!(connect("ws://peer/", a), accept(b));
        (client.unwrap(), server.unwrap())
    }

    fn data(path: &RelPath, data: &[u8], last: bool) -> Message {
        let (sync, path, data) = (3, path.clone(), data.to_vec());
        Message::FileData {
            sync,
            path,
            data,
            last,
        }
    }

    #[tokio::test]
    async fn send_files_cuts_chunks_marks_the_last_and_skips_unreadable_files() {
        let (mut client, mut server) = pair().await;
        let (empty, big, gone) = (
            RelPath::new("empty").unwrap(),
            RelPath::new("big").unwrap(),
            RelPath::new("gone").unwrap(),
        );
        let content = vec![7u8; CHUNK_LEN + 1];
        let meta = Meta::file(0o644, 0, 1);
        let files = [
            (empty.clone(), meta.clone()),
            (big.clone(), meta.clone()),
            (gone.clone(), meta),
        ];
        let skipped = send_files(&mut client, 3, &files, async |path, _| {
            Ok(match path.as_bytes() {
                b"empty" => Some(Vec::new()),
                b"big" => Some(content.clone()),
                _ => None,
            })
        })
        .await
        .unwrap()
        .unwrap();
        assert_eq!(skipped, vec![gone.clone()]);
        let expected = [
            data(&empty, &[], true),
            data(&big, &content[..CHUNK_LEN], false),
            data(&big, &content[CHUNK_LEN..], true),
            Message::FileSkipped {
                sync: 3,
                path: gone,
            },
        ];
        for message in expected {
            assert_eq!(recv(&mut server).await.unwrap(), Some(message));
        }
    }

    #[tokio::test]
    async fn text_frames_are_malformed_and_close_is_none() {
        let (mut client, mut server) = pair().await;
        client.send(Frame::text("hello")).await.unwrap();
        let error = recv(&mut server).await.unwrap_err();
        assert!(matches!(error, TransportError::Text) && error.is_malformed());
        client.close(None).await.unwrap();
        assert_eq!(recv(&mut server).await.unwrap(), None);
    }
}
