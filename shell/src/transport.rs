//! The websocket both agents speak: one wire [`Message`] per binary frame,
//! nothing else. Generic over the byte stream, so production (tokio TCP),
//! the simulation (turmoil TCP) and the tests (in-memory duplex pipes) share
//! it; no DNS or TLS is involved (the URL only fills the HTTP request).

use futures_util::{SinkExt, StreamExt};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::error::CapacityError;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message as Frame};
use tokio_tungstenite::WebSocketStream;
use unionsync_core::wire::{CHUNK_LEN, MAX_MESSAGE_LEN};
use unionsync_core::{Message, Meta, RelPath, WireError};

use crate::archive::{ArchiveError, Event, Packer, Unpacker};
use crate::store::{FileReader, StoreError, StoreResult};

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
    #[error("file stream: {0}")]
    Archive(#[from] ArchiveError),
    #[error("file data outside an archive")]
    Unpacked,
    #[error("file stream: {0} is not a regular file (the plan carries the rest)")]
    NotAFile(RelPath),
    #[error("the peer took no frame for {0:?}")]
    Timeout(Duration),
    #[error("handshake: {0}")]
    Handshake(std::io::Error),
    #[error("no accepted Hello within {0:?} of connecting")]
    Unauthenticated(Duration),
    #[error("nothing heard from the peer for {0:?} (a ping went unanswered)")]
    Idle(Duration),
}

impl TransportError {
    /// For an error from [`recv`]: the peer sent a frame this side refuses
    /// (oversized, text, undecodable), rather than the connection failing.
    pub fn is_malformed(&self) -> bool {
        matches!(
            self,
            TransportError::TooLarge { .. }
                | TransportError::Text
                | TransportError::Wire(_)
                | TransportError::Archive(_)
                | TransportError::Unpacked
                | TransportError::NotAFile(_)
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
    recv_noting(ws, || {}).await
}

/// [`recv`], telling `alive` of every frame (pongs included).
pub async fn recv_alive<S>(
    ws: &mut Ws<S>,
    alive: &mut Liveness,
) -> Result<Option<Message>, TransportError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    recv_noting(ws, || alive.heard(crate::now())).await
}

async fn recv_noting<S>(
    ws: &mut Ws<S>,
    mut heard: impl FnMut(),
) -> Result<Option<Message>, TransportError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        let frame = ws.next().await;
        if matches!(frame, Some(Ok(_))) {
            heard();
        }
        let frame = match frame {
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

/// When to ping a quiet peer and when to give it up: a peer that vanished
/// without closing (host gone, NAT mapping dropped) leaves a half-open
/// connection that would otherwise hold its compute id forever.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Keepalive {
    /// A ping after this long without sending one.
    pub interval: Duration,
    /// Nothing heard for this long while waiting on the peer: it is gone.
    pub idle: Duration,
}

impl Keepalive {
    /// Derived from the agents' step timeout: a ping every quarter of it
    /// (a peer that closed its end answers with a reset at once), and gone
    /// after five. A peer busy with local work (a scan of a large upper, a
    /// big apply) reads no frame and answers no ping meanwhile, so the
    /// idle bound must outlast what a step may take.
    pub fn for_step(step_timeout: Duration) -> Keepalive {
        Keepalive {
            interval: step_timeout / 4,
            idle: step_timeout * 5,
        }
    }
}

/// The keepalive clock of one connection.
#[derive(Debug)]
pub struct Liveness {
    keepalive: Keepalive,
    heard: Instant,
    pinged: Instant,
}

impl Liveness {
    pub fn new(keepalive: Keepalive, now: Instant) -> Liveness {
        Liveness {
            keepalive,
            heard: now,
            pinged: now,
        }
    }

    pub fn idle(&self) -> Duration {
        self.keepalive.idle
    }

    /// A frame came from the peer.
    pub fn heard(&mut self, now: Instant) {
        self.heard = now;
    }

    /// This side was busy from `since` to `now` (not reading): that time
    /// is not the peer's silence.
    pub fn busy(&mut self, since: Instant, now: Instant) {
        let busy = now.saturating_duration_since(since);
        self.heard = (self.heard + busy).min(now);
    }

    /// When [`Liveness::tick`] has something to do.
    pub fn deadline(&self) -> Instant {
        (self.pinged + self.keepalive.interval).min(self.heard + self.keepalive.idle)
    }

    /// At the deadline: `Ok(true)` to send a ping now, an error once the
    /// peer is gone.
    pub fn tick(&mut self, now: Instant) -> Result<bool, TransportError> {
        if now >= self.heard + self.keepalive.idle {
            return Err(TransportError::Idle(self.keepalive.idle));
        }
        let due = now >= self.pinged + self.keepalive.interval;
        if due {
            self.pinged = now;
        }
        Ok(due)
    }
}

/// Sends a ping, bounded in time like every other send.
pub async fn ping<S>(ws: &mut Ws<S>, timeout: Duration) -> Result<(), TransportError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    tokio::time::timeout(timeout, ws.send(Frame::Ping(Vec::new().into())))
        .await
        .unwrap_or(Err(tungstenite::Error::Io(
            std::io::ErrorKind::TimedOut.into(),
        )))?;
    Ok(())
}

/// Closes the websocket, giving up after `timeout` (a peer that reads
/// nothing never takes the close frame).
pub async fn close_within<S>(ws: &mut Ws<S>, timeout: Duration)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let _ = tokio::time::timeout(timeout, ws.close(None)).await;
}

/// Ships the files of a `SendFiles` step of sync `sync` as one archive
/// (tar in lz4 frames, [`Message::Archive`]), each file streamed a chunk at
/// a time: memory stays bounded by a few chunks whatever the file sizes.
/// Each file that `open` returns `None` for goes out as `FileSkipped`, and
/// so does each that changed while being read (after its content, which
/// the peer then does not use: a file is never shipped torn). Every frame
/// must be taken by the peer within `timeout` (backpressure: a frame is
/// sent only once the previous one is flushed, and the next chunk is read
/// only then). The outer error is the connection failing; the inner one a
/// read failing (the archive is then left unfinished and the sync fails).
/// Inner `Ok`: the skipped.
pub async fn send_files<S, R, F>(
    ws: &mut Ws<S>,
    sync: u64,
    files: &[(RelPath, Meta)],
    timeout: Duration,
    mut open: F,
) -> Result<StoreResult<Vec<RelPath>>, TransportError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    R: FileReader,
    F: AsyncFnMut(&RelPath, &Meta) -> StoreResult<Option<R>>,
{
    let mut packer = Packer::new();
    let mut skipped = Vec::new();
    let mut buf = vec![0; CHUNK_LEN];
    for (path, meta) in files {
        let whole = match open(path, meta).await {
            Ok(Some(mut file)) => {
                match pack_file(
                    ws,
                    sync,
                    &mut packer,
                    &mut buf,
                    path,
                    meta,
                    &mut file,
                    timeout,
                )
                .await?
                {
                    Ok(whole) => whole,
                    Err(e) => return Ok(Err(e)),
                }
            }
            Ok(None) => false,
            Err(e) => return Ok(Err(e)),
        };
        if !whole {
            let message = Message::FileSkipped {
                sync,
                path: path.clone(),
            };
            send_within(ws, &message, timeout).await?;
            skipped.push(path.clone());
        }
    }
    let frames = match packer.finish() {
        Ok(frames) => frames,
        Err(e) => return Ok(Err(StoreError(e.to_string()))),
    };
    for data in frames {
        send_within(ws, &Message::Archive { sync, data }, timeout).await?;
    }
    Ok(Ok(skipped))
}

/// Packs one file of `meta.size` bytes from `file`, sending each frame as
/// it fills. Inner `Ok(false)`: the file changed while being read (it
/// shrank: the entry is padded to its declared size with zeros); the
/// caller skips it.
#[allow(clippy::too_many_arguments)]
async fn pack_file<S, R>(
    ws: &mut Ws<S>,
    sync: u64,
    packer: &mut Packer,
    buf: &mut [u8],
    path: &RelPath,
    meta: &Meta,
    file: &mut R,
    timeout: Duration,
) -> Result<StoreResult<bool>, TransportError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    R: FileReader,
{
    let packed =
        |result: Result<(), ArchiveError>| result.map_err(|e| StoreError(format!("{path}: {e}")));
    if let Err(e) = packed(packer.begin_file(path, meta.perm(), meta.mtime_ns, meta.size)) {
        return Ok(Err(e));
    }
    let mut left = meta.size;
    let mut whole = true;
    while left > 0 {
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = if whole {
            match file.read(&mut buf[..want]) {
                Ok(n) => n,
                Err(e) => return Ok(Err(StoreError(format!("{path}: {e}")))),
            }
        } else {
            0
        };
        let piece = if n == 0 {
            // Shorter than when it was opened: torn, but the tar entry
            // must still hold its declared size.
            whole = false;
            buf[..want].fill(0);
            &buf[..want]
        } else {
            &buf[..n]
        };
        if let Err(e) = packed(packer.file_data(piece)) {
            return Ok(Err(e));
        }
        left -= piece.len() as u64;
        while let Some(data) = packer.next_frame() {
            send_within(ws, &Message::Archive { sync, data }, timeout).await?;
        }
    }
    if let Err(e) = packed(packer.end_file()) {
        return Ok(Err(e));
    }
    match file.unchanged() {
        Ok(unchanged) => Ok(Ok(whole && unchanged)),
        Err(e) => Ok(Err(StoreError(format!("{path}: {e}")))),
    }
}

/// [`send`], failing with [`TransportError::Timeout`] when the peer takes
/// the frame no sooner than `timeout`.
pub async fn send_within<S>(
    ws: &mut Ws<S>,
    message: &Message,
    timeout: Duration,
) -> Result<(), TransportError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    tokio::time::timeout(timeout, send(ws, message))
        .await
        .unwrap_or(Err(TransportError::Timeout(timeout)))
}

/// The receiving end of the file streams on one connection: turns each
/// sync's [`Message::Archive`] frames back into the `FileData` messages the
/// sessions expect, and checks at `DataDone` that the archive was complete.
/// Anything that is not a sound archive of regular files is malformed.
#[derive(Default)]
pub struct Inbound {
    /// The sync whose archive is being read, its decoder, the file being
    /// received and the piece of it held back until it is known whether it
    /// is the last.
    archive: Option<(u64, Unpacker)>,
    file: Option<(RelPath, Option<Vec<u8>>)>,
}

impl Inbound {
    /// The messages for the session that `message` stands for.
    pub fn accept(&mut self, message: Message) -> Result<Vec<Message>, TransportError> {
        match message {
            Message::Archive { sync, data } => self.archive_frame(sync, &data),
            Message::DataDone { sync } => {
                if let Some((archive_sync, unpacker)) = self.archive.take() {
                    if archive_sync == sync {
                        unpacker.finish()?;
                    }
                }
                self.file = None;
                Ok(vec![Message::DataDone { sync }])
            }
            Message::FileData { .. } => Err(TransportError::Unpacked),
            other => Ok(vec![other]),
        }
    }

    fn archive_frame(&mut self, sync: u64, frame: &[u8]) -> Result<Vec<Message>, TransportError> {
        if self.archive.as_ref().is_none_or(|(s, _)| *s != sync) {
            // A new sync's stream (an unfinished one belonged to a failed sync).
            self.archive = Some((sync, Unpacker::new()));
            self.file = None;
        }
        let (_, unpacker) = self.archive.as_mut().expect("set just above");
        unpacker.push_frame(frame)?;
        let mut out = Vec::new();
        while let Some(event) = unpacker.next_event() {
            match (event, &mut self.file) {
                (Event::File { path, .. }, _) => self.file = Some((path, None)),
                (Event::Data(data), Some((path, held))) => {
                    if let Some(earlier) = held.replace(data) {
                        out.push(file_data(sync, path, earlier, false));
                    }
                }
                (Event::FileEnd, Some((path, held))) => {
                    let data = held.take().unwrap_or_default();
                    out.push(file_data(sync, path, data, true));
                    self.file = None;
                }
                (Event::Data(_) | Event::FileEnd, None) => {
                    // The unpacker only yields these inside a file.
                    unreachable!("archive data outside a file")
                }
                (Event::Symlink { path, .. } | Event::Dir { path, .. }, _) => {
                    return Err(TransportError::NotAFile(path));
                }
            }
        }
        Ok(out)
    }
}

fn file_data(sync: u64, path: &RelPath, data: Vec<u8>, last: bool) -> Message {
    Message::FileData {
        sync,
        path: path.clone(),
        data,
        last,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Snapshot;

    async fn pair() -> (Ws<tokio::io::DuplexStream>, Ws<tokio::io::DuplexStream>) {
        let (a, b) = tokio::io::duplex(1 << 20);
        let (client, server) = tokio::join!(connect("ws://peer/", a), accept(b));
        (client.unwrap(), server.unwrap())
    }

    /// Everything `send_files` put on the wire, through an [`Inbound`].
    async fn received(server: &mut Ws<tokio::io::DuplexStream>) -> Vec<Message> {
        let mut inbound = Inbound::default();
        let mut out = Vec::new();
        loop {
            let message = recv(server).await.unwrap().unwrap();
            let done = matches!(message, Message::DataDone { .. });
            out.extend(inbound.accept(message).unwrap());
            if done {
                return out;
            }
        }
    }

    fn p(s: &str) -> RelPath {
        RelPath::new(s).unwrap()
    }

    const TIMEOUT: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn files_cross_as_an_archive_and_come_out_as_file_data() {
        let (mut client, mut server) = pair().await;
        let content: Vec<u8> = (0..3 * CHUNK_LEN + 7).map(|i| (i % 251) as u8).collect();
        let files = [
            (p("empty"), Meta::file(0o644, 0, 1)),
            (p("big"), Meta::file(0o644, content.len() as u64, 1)),
            (p("gone"), Meta::file(0o644, 1, 1)),
        ];
        let skipped = send_files(&mut client, 3, &files, TIMEOUT, async |path, _| {
            Ok(match path.as_bytes() {
                b"empty" => Some(Snapshot::new(Vec::new())),
                b"big" => Some(Snapshot::new(content.clone())),
                _ => None,
            })
        })
        .await
        .unwrap()
        .unwrap();
        assert_eq!(skipped, vec![p("gone")]);
        send(&mut client, &Message::DataDone { sync: 3 })
            .await
            .unwrap();
        let (files, skipped) = files_and_skipped(received(&mut server).await);
        assert_eq!(files, vec![(p("empty"), Vec::new()), (p("big"), content)]);
        assert_eq!(skipped, vec![p("gone")]);
    }

    /// The files (content merged per path) and the skipped paths of sync 3.
    fn files_and_skipped(messages: Vec<Message>) -> (Vec<(RelPath, Vec<u8>)>, Vec<RelPath>) {
        let mut files: Vec<(RelPath, Vec<u8>)> = Vec::new();
        let mut skipped = Vec::new();
        for message in messages {
            match message {
                Message::FileData {
                    sync: 3,
                    path,
                    data,
                    ..
                } => match files.last_mut() {
                    Some((open, so_far)) if *open == path => so_far.extend(data),
                    _ => files.push((path, data)),
                },
                Message::FileSkipped { sync: 3, path } => skipped.push(path),
                Message::DataDone { sync: 3 } => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        (files, skipped)
    }

    #[tokio::test]
    async fn a_file_that_shrinks_while_being_read_is_skipped_and_the_archive_stays_sound() {
        let (mut client, mut server) = pair().await;
        let files = [
            (p("shrank"), Meta::file(0o644, 3 * CHUNK_LEN as u64, 1)),
            (p("next"), Meta::file(0o644, 2, 1)),
        ];
        let skipped = send_files(&mut client, 3, &files, TIMEOUT, async |path, _| {
            Ok(Some(Snapshot::new(match path.as_bytes() {
                b"shrank" => vec![5; CHUNK_LEN + 1],
                _ => b"ok".to_vec(),
            })))
        })
        .await
        .unwrap()
        .unwrap();
        assert_eq!(skipped, vec![p("shrank")]);
        send(&mut client, &Message::DataDone { sync: 3 })
            .await
            .unwrap();
        let (files, skipped) = files_and_skipped(received(&mut server).await);
        assert_eq!(skipped, vec![p("shrank")]);
        assert_eq!(files[1], (p("next"), b"ok".to_vec()));
    }

    /// Reads like a snapshot, but reports a change once read.
    struct Changed(Snapshot);

    impl FileReader for Changed {
        fn read(&mut self, buf: &mut [u8]) -> StoreResult<usize> {
            self.0.read(buf)
        }
        fn unchanged(&mut self) -> StoreResult<bool> {
            Ok(false)
        }
    }

    #[tokio::test]
    async fn a_file_that_changed_while_being_read_is_skipped() {
        let (mut client, mut server) = pair().await;
        let files = [(p("f"), Meta::file(0o644, 4, 1))];
        let skipped = send_files(&mut client, 3, &files, TIMEOUT, async |_, _| {
            Ok(Some(Changed(Snapshot::new(b"torn".to_vec()))))
        })
        .await
        .unwrap()
        .unwrap();
        assert_eq!(skipped, vec![p("f")]);
        send(&mut client, &Message::DataDone { sync: 3 })
            .await
            .unwrap();
        assert_eq!(
            files_and_skipped(received(&mut server).await).1,
            vec![p("f")]
        );
    }

    #[tokio::test]
    async fn only_the_last_piece_of_a_file_is_marked_last() {
        let (mut client, mut server) = pair().await;
        let content = vec![1u8; 2 * CHUNK_LEN];
        let files = [(p("f"), Meta::file(0o644, content.len() as u64, 1))];
        send_files(&mut client, 1, &files, TIMEOUT, async |_, _| {
            Ok(Some(Snapshot::new(content.clone())))
        })
        .await
        .unwrap()
        .unwrap();
        send(&mut client, &Message::DataDone { sync: 1 })
            .await
            .unwrap();
        let lasts: Vec<bool> = received(&mut server)
            .await
            .into_iter()
            .filter_map(|m| match m {
                Message::FileData { last, .. } => Some(last),
                _ => None,
            })
            .collect();
        assert!(lasts.len() > 1);
        assert_eq!(lasts.iter().filter(|l| **l).count(), 1);
        assert_eq!(lasts.last(), Some(&true));
    }

    #[test]
    fn bare_file_data_on_the_wire_is_malformed() {
        let message = Message::FileData {
            sync: 1,
            path: p("f"),
            data: vec![1],
            last: true,
        };
        let error = Inbound::default().accept(message).unwrap_err();
        assert!(error.is_malformed());
    }

    #[test]
    fn an_archive_cut_short_is_malformed_at_data_done() {
        let mut packer = Packer::new();
        packer.file(&p("f"), 0o644, 0, &[7; 5000]).unwrap();
        let frames = packer.finish().unwrap();
        let mut inbound = Inbound::default();
        // A stream that stopped early: the header and part of the data.
        let half = Message::Archive {
            sync: 1,
            data: lz4_frame_of_tar_prefix(&frames),
        };
        inbound.accept(half).unwrap();
        let error = inbound.accept(Message::DataDone { sync: 1 }).unwrap_err();
        assert!(error.is_malformed(), "{error}");
    }

    /// One lz4 frame holding the first 1024 tar bytes of `frames`.
    fn lz4_frame_of_tar_prefix(frames: &[Vec<u8>]) -> Vec<u8> {
        use std::io::{Read, Write};
        let mut tar = Vec::new();
        for frame in frames {
            lz4_flex::frame::FrameDecoder::new(&frame[..])
                .read_to_end(&mut tar)
                .unwrap();
        }
        let mut encoder = lz4_flex::frame::FrameEncoder::new(Vec::new());
        encoder.write_all(&tar[..1024]).unwrap();
        encoder.finish().unwrap()
    }

    #[test]
    fn a_symlink_in_a_sync_archive_is_malformed() {
        let mut packer = Packer::new();
        packer.symlink(&p("l"), b"/etc", 0).unwrap();
        let mut inbound = Inbound::default();
        let mut result = Ok(Vec::new());
        for data in packer.finish().unwrap() {
            result = inbound.accept(Message::Archive { sync: 1, data });
            if result.is_err() {
                break;
            }
        }
        assert!(result.is_err_and(|e| e.is_malformed()));
    }

    #[test]
    fn liveness_pings_a_quiet_peer_and_gives_it_up_after_the_idle_bound() {
        let start = Instant::now();
        let s = Duration::from_secs(1);
        let mut alive = Liveness::new(Keepalive::for_step(4 * s), start);
        assert_eq!(alive.deadline(), start + s);
        assert!(alive.tick(start + s).unwrap(), "a ping is due");
        assert!(!alive.tick(start + s).unwrap(), "only one");
        // Heard at 19 s: alive until 39 s, pinging every second meanwhile.
        alive.heard(start + 19 * s);
        assert!(alive.tick(start + 38 * s).unwrap());
        assert!(matches!(
            alive.tick(start + 39 * s),
            Err(TransportError::Idle(_))
        ));
    }

    #[test]
    fn time_this_side_spent_busy_is_not_the_peers_silence() {
        let start = Instant::now();
        let s = Duration::from_secs(1);
        let mut alive = Liveness::new(Keepalive::for_step(4 * s), start);
        // 30 s of local work (a big apply) after 5 s of waiting.
        alive.busy(start + 5 * s, start + 35 * s);
        assert!(alive.tick(start + 36 * s).is_ok());
        assert!(alive.tick(start + 50 * s).is_err());
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
