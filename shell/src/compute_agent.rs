//! The compute agent: drives one [`ComputeSession`] over a websocket to the
//! project server, performing its storage work with a [`ComputeStore`].
//!
//! ```text
//! load epoch ─► loop: (backoff) connect + handshake (one timeout) ─► Hello
//!                     select: frame │ session timeout │ command │ keepalive
//!                     after each: drain poll_io (store) / poll_transmit (send)
//!                                 / poll_event (log, forward) / poll_close
//!                     connection gone ─► handle_disconnected ─► backoff
//! ```
//!
//! Generic over the byte stream ([`Connector`]) and the store, so the
//! simulation runs this code over turmoil's network and in-memory trees.

use std::collections::BTreeSet;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::Error as WsError;
use unionsync_core::{
    ComputeConfig, ComputeEvent, ComputeIo, ComputeSession, ComputeStatus, Message, Meta, RelPath,
    SessionError,
};

use crate::store::{ComputeStore, StoreResult};
use crate::transport::{self, Inbound, Keepalive, Liveness, TransportError, Ws};
use crate::{now, sleep_until};

/// Opens a byte stream to the project server (TCP in production, turmoil's
/// TCP in the simulation).
#[allow(async_fn_in_trait)] // agents run on a current-thread runtime
pub trait Connector {
    type Stream: AsyncRead + AsyncWrite + Unpin;
    async fn connect(&mut self) -> std::io::Result<Self::Stream>;
}

/// Production: plain TCP to `host:port`.
pub struct TcpConnector(pub String);

impl Connector for TcpConnector {
    type Stream = tokio::net::TcpStream;
    async fn connect(&mut self) -> std::io::Result<Self::Stream> {
        tokio::net::TcpStream::connect(self.0.as_str()).await
    }
}

#[derive(Clone, Debug)]
pub struct ComputeAgentConfig {
    pub session: ComputeConfig,
    /// Only fills the websocket request; the stream comes from the connector.
    pub url: String,
    /// Reconnect delays: `reconnect_min` after a connection that was
    /// welcomed, doubling up to `reconnect_max` while attempts fail.
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
}

impl ComputeAgentConfig {
    fn backoff(&self, delay: Duration) -> Duration {
        (delay * 2).max(self.reconnect_min).min(self.reconnect_max)
    }
}

#[derive(Debug)]
pub enum AgentCommand {
    SyncNow,
    ClearError,
    /// A local write happened: sync soon.
    Activity,
    Shutdown,
    /// `unionsync copy --to-project`: put the entries that come through
    /// `pieces` (parents first, each file in pieces as it is read) in the
    /// project now; `reply` gets how many, or the first error. The channel
    /// is bounded: the reader waits while the agent transmits, so a big
    /// file is never held whole.
    CopyToProject {
        pieces: mpsc::Receiver<Result<CopyPiece, String>>,
        reply: oneshot::Sender<Result<usize, String>>,
    },
}

/// A piece of one entry of a `CopyToProject`: a file's content comes in
/// pieces of at most `CHUNK_LEN`, `last` on the final one (whose `meta`
/// has the size read); a symlink or directory is one piece with no data.
#[derive(Debug)]
pub struct CopyPiece {
    pub path: RelPath,
    pub meta: Meta,
    pub data: Vec<u8>,
    pub last: bool,
}

/// A `CopyToProject` being sent and waiting for the project's answers.
struct CopyWaiter {
    /// Pieces still to come (`None`: all came, or the copy stopped).
    pieces: Option<mpsc::Receiver<Result<CopyPiece, String>>>,
    /// The entry whose pieces are being sent.
    sending: Option<u64>,
    ids: BTreeSet<u64>,
    entries: usize,
    error: Option<String>,
    reply: oneshot::Sender<Result<usize, String>>,
}

/// The next piece of the first copy still being read (pending forever
/// when there is none).
async fn next_piece(copies: &mut [CopyWaiter]) -> Option<Result<CopyPiece, String>> {
    match copies.iter_mut().find_map(|w| w.pieces.as_mut()) {
        Some(pieces) => pieces.recv().await,
        None => std::future::pending().await,
    }
}

/// Runs until [`AgentCommand::Shutdown`]; fails only if the committed epoch
/// cannot be loaded. A closed command channel is not a shutdown: syncing
/// goes on.
pub async fn run_compute_agent<C: Connector, St: ComputeStore>(
    config: ComputeAgentConfig,
    mut connector: C,
    mut store: St,
    commands: mpsc::UnboundedReceiver<AgentCommand>,
    status: watch::Sender<ComputeStatus>,
    events: Option<mpsc::UnboundedSender<ComputeEvent>>,
) -> StoreResult<()> {
    let epoch = store.load_epoch().await?;
    let step_timeout = config.session.step_timeout;
    let mut agent = Agent {
        session: ComputeSession::new(config.session.clone(), epoch, now()),
        store,
        commands,
        commands_open: true,
        status,
        events,
        copies: Vec::new(),
    };
    agent.publish();
    let mut delay = Duration::ZERO;
    let mut last_connect_error: Option<String> = None;
    loop {
        // Disconnected: wait, connect, handshake; commands still apply.
        let connected = {
            let attempt = async {
                tokio::time::sleep(delay).await;
                // TCP, TLS and the websocket upgrade under one bound: a
                // SYN or a handshake that is never answered is retried.
                let connect = async {
                    let stream = connector.connect().await.map_err(WsError::Io)?;
                    transport::connect(&config.url, stream).await
                };
                tokio::time::timeout(step_timeout, connect)
                    .await
                    .unwrap_or_else(|_| {
                        let timed_out = std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            format!("connecting took over {step_timeout:?}"),
                        );
                        Err(WsError::Io(timed_out).into())
                    })
            };
            tokio::pin!(attempt);
            loop {
                tokio::select! {
                    result = &mut attempt => break result,
                    command = agent.commands.recv(), if agent.commands_open => {
                        if !agent.command(command) {
                            return Ok(());
                        }
                        agent.publish();
                    }
                }
            }
        };
        let mut ws = match connected {
            Ok(ws) => {
                last_connect_error = None;
                ws
            }
            Err(error) => {
                // Say it once per distinct error, not on every retry.
                let text = error.to_string();
                if last_connect_error.as_ref() != Some(&text) {
                    tracing::warn!(%error, url = %config.url, "cannot reach the project (retrying)");
                    last_connect_error = Some(text);
                }
                delay = config.backoff(delay);
                continue;
            }
        };
        match agent.connection(&mut ws, step_timeout).await {
            Ending::Shutdown => return Ok(()),
            Ending::Lost { reason, welcomed } => {
                tracing::info!(%reason, "disconnected from the project");
                agent.session.handle_disconnected(now(), &reason);
                agent.publish();
                delay = if welcomed {
                    config.reconnect_min
                } else {
                    config.backoff(delay)
                };
            }
        }
    }
}

enum Ending {
    Shutdown,
    /// `welcomed`: the project accepted the Hello.
    Lost {
        reason: String,
        welcomed: bool,
    },
}

struct Agent<St> {
    session: ComputeSession,
    store: St,
    commands: mpsc::UnboundedReceiver<AgentCommand>,
    commands_open: bool,
    status: watch::Sender<ComputeStatus>,
    events: Option<mpsc::UnboundedSender<ComputeEvent>>,
    copies: Vec<CopyWaiter>,
}

impl<St: ComputeStore> Agent<St> {
    /// One connection, from Hello until it is gone or the agent shuts down.
    async fn connection<S>(&mut self, ws: &mut Ws<S>, handshake_timeout: Duration) -> Ending
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        self.session.handle_connected(now());
        // The session sets no timeout while waiting for Welcome.
        let handshake_deadline = now() + handshake_timeout;
        let mut welcomed = false;
        let mut inbound = Inbound::default();
        let mut alive = Liveness::new(Keepalive::for_step(handshake_timeout), now());
        let idle = alive.idle();
        loop {
            let busy = now();
            let drained = self.drain(ws, idle).await;
            alive.busy(busy, now());
            match drained {
                Ok(None) => {}
                Ok(Some(close)) => {
                    transport::close_within(ws, idle).await;
                    let reason = close.to_string();
                    return Ending::Lost { reason, welcomed };
                }
                Err(error) => {
                    let reason = error.to_string();
                    return Ending::Lost { reason, welcomed };
                }
            }
            let deadline = if welcomed {
                self.session.poll_timeout()
            } else {
                Some(handshake_deadline)
            };
            let keepalive = alive.deadline();
            tokio::select! {
                // In order, not at random: tokio's draw for an unbiased select is
                // thread-wide state, so the simulation would not replay a seed.
                biased;
                frame = transport::recv_alive(ws, &mut alive) => match frame {
                    Ok(Some(message)) => {
                        welcomed |= matches!(message, Message::Welcome { .. });
                        let messages = match inbound.accept(message) {
                            Ok(messages) => messages,
                            Err(error) => {
                                let reason = error.to_string();
                                return Ending::Lost { reason, welcomed };
                            }
                        };
                        for message in messages {
                            // A refusal or protocol error comes out of poll_close.
                            let _ = self.session.handle_message(now(), message);
                        }
                    }
                    Ok(None) => {
                        let reason = "the project closed the connection".to_string();
                        return Ending::Lost { reason, welcomed };
                    }
                    Err(error) => {
                        let reason = error.to_string();
                        return Ending::Lost { reason, welcomed };
                    }
                },
                () = sleep_until(deadline) => {
                    if !welcomed {
                        let reason = format!("no Welcome within {handshake_timeout:?}");
                        return Ending::Lost { reason, welcomed };
                    }
                    self.session.handle_timeout(now());
                }
                () = sleep_until(Some(keepalive)) => {
                    let pinged = match alive.tick(now()) {
                        Ok(true) => transport::ping(ws, idle).await,
                        other => other.map(|_| ()),
                    };
                    if let Err(error) = pinged {
                        let reason = error.to_string();
                        return Ending::Lost { reason, welcomed };
                    }
                }
                command = self.commands.recv(), if self.commands_open => {
                    if !self.command(command) {
                        transport::close_within(ws, idle).await;
                        return Ending::Shutdown;
                    }
                }
                // Only with nothing left to transmit (drain sent it all):
                // one piece at a time, so the socket paces the reader.
                piece = next_piece(&mut self.copies) => self.copy_piece(piece),
            }
        }
    }

    /// Feeds a command to the session; `false` on Shutdown.
    fn command(&mut self, command: Option<AgentCommand>) -> bool {
        let now = now();
        match command {
            None => self.commands_open = false,
            Some(AgentCommand::SyncNow) => self.session.sync_now(now),
            Some(AgentCommand::ClearError) => self.session.clear_error(now),
            Some(AgentCommand::Activity) => self.session.handle_activity(now),
            Some(AgentCommand::Shutdown) => return false,
            Some(AgentCommand::CopyToProject { pieces, reply }) => {
                if !self.session.status(now).connected {
                    let _ = reply.send(Err("not connected to the project".into()));
                    return true;
                }
                self.copies.push(CopyWaiter {
                    pieces: Some(pieces),
                    sending: None,
                    ids: BTreeSet::new(),
                    entries: 0,
                    error: None,
                    reply,
                });
            }
        }
        true
    }

    /// Hands one piece of the copy being read to the session (`None`: the
    /// reader is done).
    fn copy_piece(&mut self, piece: Option<Result<CopyPiece, String>>) {
        let Some(waiter) = self.copies.iter_mut().find(|w| w.pieces.is_some()) else {
            return;
        };
        match piece {
            None => {
                waiter.pieces = None;
                if waiter.sending.is_some() {
                    waiter
                        .error
                        .get_or_insert("the copy ended in the middle of a file".into());
                }
            }
            Some(Err(error)) => {
                waiter.error.get_or_insert(error);
            }
            Some(Ok(piece)) => {
                let id = match waiter.sending {
                    Some(id) => Some(id),
                    None => self.session.start_copy_in(),
                };
                let Some(id) = id else {
                    waiter
                        .error
                        .get_or_insert("not connected to the project".into());
                    return self.settle_copies();
                };
                if waiter.sending.replace(id).is_none() {
                    waiter.ids.insert(id);
                    waiter.entries += 1;
                }
                if piece.last {
                    waiter.sending = None;
                }
                // Refused once the entry failed or the connection went: its
                // error is recorded from the session's event.
                let _ = self
                    .session
                    .copy_in_piece(id, piece.path, piece.meta, piece.data, piece.last);
            }
        }
        self.settle_copies();
    }

    /// Stops reading copies that failed; answers those the project has
    /// fully answered.
    fn settle_copies(&mut self) {
        for waiter in &mut self.copies {
            if waiter.error.is_some() {
                waiter.pieces = None;
            }
        }
        let (done, waiting) = std::mem::take(&mut self.copies)
            .into_iter()
            .partition(|w| w.pieces.is_none() && w.ids.is_empty());
        self.copies = waiting;
        for waiter in done {
            let outcome = match waiter.error {
                Some(error) => Err(error),
                None => Ok(waiter.entries),
            };
            let _ = waiter.reply.send(outcome);
        }
    }

    fn copied_in(&mut self, id: u64, result: &Result<(), String>) {
        if let Some(waiter) = self.copies.iter_mut().find(|w| w.ids.contains(&id)) {
            waiter.ids.remove(&id);
            if let Err(error) = result {
                waiter.error.get_or_insert_with(|| error.clone());
            }
        }
    }

    /// Sends what the session queued (each frame taken within
    /// `send_timeout`) and performs its storage work until it wants nothing
    /// more; `Some` when it wants the connection closed.
    async fn drain<S>(
        &mut self,
        ws: &mut Ws<S>,
        send_timeout: Duration,
    ) -> Result<Option<SessionError>, TransportError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        loop {
            while let Some(message) = self.session.poll_transmit() {
                match transport::send_within(ws, &message, send_timeout).await {
                    // Cannot be encoded (too large): a failed sync, not a
                    // lost connection, so it counts towards the pause.
                    Err(TransportError::Wire(error)) => {
                        tracing::error!(%error, "cannot send a message");
                        self.session.handle_io_error(now(), error.to_string());
                    }
                    result => result?,
                }
            }
            let Some(io) = self.session.poll_io() else {
                break;
            };
            self.perform(io, ws).await?;
        }
        self.publish();
        Ok(self.session.poll_close())
    }

    async fn perform<S>(&mut self, io: ComputeIo, ws: &mut Ws<S>) -> Result<(), TransportError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let (session, store) = (&mut self.session, &mut self.store);
        let result = match io {
            ComputeIo::CollectChanges { full } => store
                .collect_changes(full)
                .await
                .map(|(mark, changes)| session.handle_changes(now(), mark, changes)),
            ComputeIo::Hash { paths } => store
                .hashes(&paths)
                .await
                .map(|hashes| session.handle_hashes(now(), hashes)),
            ComputeIo::SendFiles { files } => {
                let sync = session.current_sync();
                let timeout = session.step_timeout();
                transport::send_files(ws, sync, &files, timeout, async |path, meta| {
                    store.open_file(path, meta).await
                })
                .await?
                .map(|skipped| session.handle_files_sent(now(), skipped))
            }
            ComputeIo::Stage { path, data, last } => store.stage(&path, &data, last).await,
            ComputeIo::Apply { ops } => store
                .apply(&ops)
                .await
                .map(|applied| session.handle_applied(now(), applied.deferred, applied.after)),
            ComputeIo::Commit { epoch, mark, paths } => store
                .commit(epoch, mark, &paths)
                .await
                .map(|()| session.handle_committed(now())),
            ComputeIo::Remote { id, op } => {
                let result = store.remote(op).await.map_err(|e| e.0);
                session.handle_remote_done(id, result);
                Ok(())
            }
            ComputeIo::UpdateIndex(update) => {
                // The union falls back to live lookups where the index is
                // missing; a failed update is not a failed sync.
                if let Err(error) = store.update_index(update).await {
                    tracing::warn!(%error, "cannot update the lower index");
                }
                Ok(())
            }
        };
        if let Err(error) = result {
            tracing::warn!(%error, "compute storage failed");
            session.handle_io_error(now(), error.to_string());
        }
        Ok(())
    }

    /// Logs and forwards the session's events; publishes its status.
    fn publish(&mut self) {
        while let Some(event) = self.session.poll_event() {
            match &event {
                ComputeEvent::SyncStarted { sync } => tracing::debug!(sync, "sync started"),
                ComputeEvent::SyncDone(report) => tracing::info!(
                    sync = report.sync,
                    epoch = report.epoch,
                    sent = report.files_sent,
                    received = report.files_received,
                    conflicts = report.conflicts.len(),
                    deferred = report.deferred.len(),
                    "sync done"
                ),
                ComputeEvent::SyncFailed { error } => tracing::warn!(%error, "sync failed"),
                ComputeEvent::Paused => {
                    tracing::warn!("syncing paused after repeated failures (clear the error)")
                }
                ComputeEvent::CopiedIn { id, result } => {
                    tracing::debug!(id, ok = result.is_ok(), "copy to the project answered");
                    let (id, result) = (*id, result.clone());
                    self.copied_in(id, &result);
                }
            }
            if let Some(events) = &self.events {
                let _ = events.send(event);
            }
        }
        self.settle_copies();
        self.status.send_replace(self.session.status(now()));
    }
}
