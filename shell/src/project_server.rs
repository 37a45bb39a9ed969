//! The project server: one [`ProjectSession`] per compute connection,
//! performing its storage work with a [`ProjectStore`].
//!
//! ```text
//! serve: accept ─► (over the cap of unauthenticated: close) ─► spawn_local(connection) ─► accept …
//! connection: TLS handshake, websocket accept, Hello: all within the handshake timeout
//!     loop: select: frame │ session timeout │ index news (watcher) │ keepalive
//!     after each: drain poll_io (store) / poll_transmit (send)
//!                 / poll_event (log, forward) / poll_close (Error sent, close)
//! ```
//!
//! Nothing a peer does before it authenticates blocks the accept loop or
//! holds more than its slot among [`ServeLimits::max_unauthenticated`] for
//! longer than [`ServeLimits::handshake_timeout`]; running out of file
//! descriptors pauses accepting instead of ending the server.
//!
//! Runs on a current-thread runtime inside a `LocalSet` (the store's
//! async-fn-in-trait futures are not `Send`).

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use rustix::io::Errno;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{broadcast, mpsc, oneshot};
use unionsync_core::{
    ErrorCode, Message, ProjectConfig, ProjectError, ProjectEvent, ProjectIo, ProjectSession,
    RemoteEntry, RemoteOp,
};

use crate::project_watch::WatchNews;
use crate::store::{ProjectStore, StoreError};
use crate::transport::{self, Inbound, Keepalive, Liveness, TransportError, Ws};
use crate::{now, sleep_until};

/// Accepts byte streams from compute servers. Implemented here for tokio's
/// TCP listener; the simulation implements it for turmoil's.
#[allow(async_fn_in_trait)] // current-thread runtime
pub trait Listener {
    type Stream: AsyncRead + AsyncWrite + Unpin + 'static;
    /// The rest of a connection's setup (a TLS handshake): awaited on the
    /// connection's own task, within its handshake timeout, never on the
    /// accept loop, where one stalled peer would keep all others out.
    type Handshake: Future<Output = std::io::Result<Self::Stream>> + 'static;
    async fn accept(&mut self) -> std::io::Result<(Self::Handshake, SocketAddr)>;
}

impl Listener for tokio::net::TcpListener {
    type Stream = tokio::net::TcpStream;
    type Handshake = std::future::Ready<std::io::Result<Self::Stream>>;
    async fn accept(&mut self) -> std::io::Result<(Self::Handshake, SocketAddr)> {
        let (stream, peer) = tokio::net::TcpListener::accept(self).await?;
        Ok((std::future::ready(Ok(stream)), peer))
    }
}

/// What a peer may hold of the server before it authenticates.
#[derive(Clone, Debug)]
pub struct ServeLimits {
    /// From accept to an accepted Hello: TLS, websocket upgrade and Hello
    /// together.
    pub handshake_timeout: Duration,
    /// Connections accepted and not authenticated yet, at most; beyond
    /// that, new ones are closed at once.
    pub max_unauthenticated: usize,
}

impl Default for ServeLimits {
    fn default() -> ServeLimits {
        ServeLimits {
            handshake_timeout: Duration::from_secs(10),
            max_unauthenticated: 64,
        }
    }
}

/// How long accepting pauses when the process is out of descriptors (the
/// pending connection stays queued; the error would come straight back).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(200);

/// Out of descriptors or buffers: a pause helps, unlike other errors.
fn is_exhaustion(error: &std::io::Error) -> bool {
    matches!(
        Errno::from_io_error(error),
        Some(Errno::MFILE | Errno::NFILE | Errno::NOBUFS | Errno::NOMEM)
    )
}

/// The compute ids that have a live, authenticated connection on one
/// server: a second connection for one of them is refused, so two
/// processes never share one id's staging and base.
#[derive(Clone, Default)]
struct LiveIds(Rc<RefCell<HashSet<u64>>>);

impl LiveIds {
    fn claim(&self, id: u64) -> Option<IdClaim> {
        self.0.borrow_mut().insert(id).then(|| IdClaim {
            ids: self.clone(),
            id,
        })
    }
}

/// A compute id, held until its connection ends.
struct IdClaim {
    ids: LiveIds,
    id: u64,
}

impl Drop for IdClaim {
    fn drop(&mut self) {
        self.ids.0.borrow_mut().remove(&self.id);
    }
}

/// A connection counted among the unauthenticated until dropped.
struct Unauthenticated(Rc<Cell<usize>>);

impl Unauthenticated {
    /// A slot, if fewer than `max` are taken.
    fn take(count: &Rc<Cell<usize>>, max: usize) -> Option<Unauthenticated> {
        (count.get() < max).then(|| {
            count.set(count.get() + 1);
            Unauthenticated(count.clone())
        })
    }
}

impl Drop for Unauthenticated {
    fn drop(&mut self) {
        self.0.set(self.0.get().saturating_sub(1));
    }
}

/// One connection's ties to its server.
struct Ties {
    limits: ServeLimits,
    live_ids: LiveIds,
    claim: Option<IdClaim>,
    /// Released once the peer authenticates.
    unauthenticated: Option<Unauthenticated>,
}

/// Why this side ended a connection (a peer hanging up is `Ok`).
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("session closed: {0}")]
    Session(#[from] ProjectError),
}

/// An event of one connection, for a daemon that follows each of them
/// (`unionsync status` on the project side).
#[derive(Clone, Debug)]
pub struct ConnectionEvent {
    /// Numbers the connections of one [`serve_observed`], from 1.
    pub connection: u64,
    pub peer: SocketAddr,
    pub news: ConnectionNews,
}

#[derive(Clone, Debug)]
pub enum ConnectionNews {
    /// The connection started; operations on its compute server's view go
    /// here (`unionsync remote …`).
    Opened(mpsc::UnboundedSender<RemoteCall>),
    /// The connection's session said so.
    Session(ProjectEvent),
    /// The connection ended (its last event).
    Closed,
}

/// An operation on a connected compute server's view, and where its
/// outcome goes.
#[derive(Debug)]
pub struct RemoteCall {
    pub op: RemoteOp,
    pub reply: oneshot::Sender<RemoteResult>,
}

pub type RemoteResult = Result<Vec<RemoteEntry>, String>;

/// Remote operations sent to the compute server and not answered yet.
type RemotePending = HashMap<u64, oneshot::Sender<RemoteResult>>;

/// Where the connections' events go.
#[derive(Clone, Debug)]
pub enum Observer {
    /// The sessions' events as they come, whatever the connection.
    Events(mpsc::UnboundedSender<ProjectEvent>),
    /// Each event tagged with its connection, and a `Closed` at its end.
    Connections(mpsc::UnboundedSender<ConnectionEvent>),
}

/// How one connection reports its session's events.
enum Reporter {
    Plain(mpsc::UnboundedSender<ProjectEvent>),
    Tagged {
        events: mpsc::UnboundedSender<ConnectionEvent>,
        connection: u64,
        peer: SocketAddr,
    },
}

impl Reporter {
    fn send(&self, event: ProjectEvent) {
        self.send_news(ConnectionNews::Session(event));
    }

    fn send_news(&self, news: ConnectionNews) {
        // Nobody listening any more is fine.
        match (self, news) {
            (Reporter::Plain(events), ConnectionNews::Session(event)) => {
                let _ = events.send(event);
            }
            (Reporter::Plain(_), ConnectionNews::Closed | ConnectionNews::Opened(_)) => {}
            (
                Reporter::Tagged {
                    events,
                    connection,
                    peer,
                },
                news,
            ) => {
                let _ = events.send(ConnectionEvent {
                    connection: *connection,
                    peer: *peer,
                    news,
                });
            }
        }
    }
}

/// Serves every connection `listener` accepts, each on its own local task
/// with a clone of `store`; each passes on what `news` (the home's
/// watcher) reports. Returns only if accepting fails for a reason other
/// than one connection's (aborted, reset, interrupted).
pub async fn serve<L: Listener, St: ProjectStore + Clone + 'static>(
    listener: L,
    store: St,
    config: ProjectConfig,
    events: Option<mpsc::UnboundedSender<ProjectEvent>>,
    news: Option<broadcast::Sender<Arc<WatchNews>>>,
) -> std::io::Result<()> {
    let observer = events.map(Observer::Events);
    serve_observed(
        listener,
        store,
        config,
        observer,
        news,
        ServeLimits::default(),
    )
    .await
}

/// [`serve`], reporting the connections' events to `observer`.
pub async fn serve_observed<L: Listener, St: ProjectStore + Clone + 'static>(
    mut listener: L,
    store: St,
    config: ProjectConfig,
    observer: Option<Observer>,
    news: Option<broadcast::Sender<Arc<WatchNews>>>,
    limits: ServeLimits,
) -> std::io::Result<()> {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionReset, Interrupted};
    let mut connections = 0u64;
    let live_ids = LiveIds::default();
    let unauthenticated = Rc::new(Cell::new(0));
    // Said once per spell, not once per refused connection.
    let (mut starved, mut crowded) = (false, false);
    loop {
        let (handshake, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error)
                if matches!(
                    error.kind(),
                    ConnectionAborted | ConnectionReset | Interrupted
                ) =>
            {
                tracing::debug!(%error, "accept");
                continue;
            }
            Err(error) if is_exhaustion(&error) => {
                if !std::mem::replace(&mut starved, true) {
                    tracing::warn!(%error, "cannot accept connections (pausing, then retrying)");
                }
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
            Err(error) => return Err(error),
        };
        if std::mem::take(&mut starved) {
            tracing::info!("accepting connections again");
        }
        let Some(slot) = Unauthenticated::take(&unauthenticated, limits.max_unauthenticated) else {
            if !std::mem::replace(&mut crowded, true) {
                let max = limits.max_unauthenticated;
                tracing::warn!(%peer, max, "too many connections waiting to authenticate: closing new ones");
            }
            drop(handshake);
            continue;
        };
        crowded = false;
        let ties = Ties {
            limits: limits.clone(),
            live_ids: live_ids.clone(),
            claim: None,
            unauthenticated: Some(slot),
        };
        let news = news.as_ref().map(broadcast::Sender::subscribe);
        connections += 1;
        let reporter = observer.as_ref().map(|observer| match observer {
            Observer::Events(events) => Reporter::Plain(events.clone()),
            Observer::Connections(events) => Reporter::Tagged {
                events: events.clone(),
                connection: connections,
                peer,
            },
        });
        tokio::task::spawn_local({
            let (store, config) = (store.clone(), config.clone());
            async move {
                let result =
                    connection(handshake, store, config, reporter.as_ref(), news, ties).await;
                match result {
                    Ok(()) => tracing::debug!(%peer, "compute server hung up"),
                    Err(ServeError::Transport(TransportError::Handshake(error))) => {
                        tracing::warn!(%peer, %error, "TLS handshake failed")
                    }
                    Err(error) => tracing::debug!(%peer, %error, "connection ended"),
                }
                if let Some(reporter) = reporter {
                    reporter.send_news(ConnectionNews::Closed);
                }
            }
        });
    }
}

/// One compute connection, from the websocket handshake until either side
/// ends it. A malformed or oversized frame gets `Error{Malformed}` and a
/// closed connection, and reaches neither the session nor the store.
pub async fn serve_connection<S, St>(
    stream: S,
    store: St,
    config: ProjectConfig,
    events: Option<mpsc::UnboundedSender<ProjectEvent>>,
    news: Option<broadcast::Receiver<Arc<WatchNews>>>,
) -> Result<(), ServeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    St: ProjectStore,
{
    let reporter = events.map(Reporter::Plain);
    // A lone connection counts against no cap.
    let ties = Ties {
        limits: ServeLimits::default(),
        live_ids: LiveIds::default(),
        claim: None,
        unauthenticated: None,
    };
    let handshake = std::future::ready(Ok(stream));
    connection(handshake, store, config, reporter.as_ref(), news, ties).await
}

async fn connection<S, St>(
    handshake: impl Future<Output = std::io::Result<S>>,
    mut store: St,
    config: ProjectConfig,
    events: Option<&Reporter>,
    mut news: Option<broadcast::Receiver<Arc<WatchNews>>>,
    mut ties: Ties,
) -> Result<(), ServeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    St: ProjectStore,
{
    let timeout = ties.limits.handshake_timeout;
    let authenticate_by = now() + timeout;
    let upgrade = async {
        let stream = handshake.await.map_err(TransportError::Handshake)?;
        transport::accept(stream).await
    };
    let mut ws = tokio::time::timeout(timeout, upgrade)
        .await
        .unwrap_or(Err(TransportError::Unauthenticated(timeout)))?;
    let mut alive = Liveness::new(Keepalive::for_step(config.step_timeout), now());
    let idle = alive.idle();
    let mut session = ProjectSession::new(config, now());
    if news.is_some() {
        // Subscribed before the session exists: every change from here on
        // reaches it, so a sync may state only what changed.
        session.handle_watch_started();
    }
    let mut inbound = Inbound::default();
    let (remote, mut remote_calls) = mpsc::unbounded_channel();
    if let Some(events) = events {
        events.send_news(ConnectionNews::Opened(remote));
    }
    let mut remote_pending = RemotePending::new();
    loop {
        // How long the peer may take to take a frame: before it
        // authenticates, no longer than it had to do so.
        let bound = |session: &ProjectSession| match session.is_authenticated() {
            true => idle,
            false => timeout,
        };
        let busy = now();
        let send_timeout = bound(&session);
        let drained = drain(
            &mut session,
            &mut store,
            &mut ws,
            events,
            &mut remote_pending,
            &mut ties,
            send_timeout,
        );
        let drained = drained.await;
        alive.busy(busy, now());
        if session.is_authenticated() {
            ties.unauthenticated = None;
        }
        let send_timeout = bound(&session);
        if let Some(error) = drained? {
            // The session queued an Error frame for the peer; drain sent it.
            tracing::warn!(compute_id = ?session.compute_id(), %error, "closing the connection");
            transport::close_within(&mut ws, send_timeout).await;
            return Err(error.into());
        }
        let unauthenticated = (!session.is_authenticated()).then_some(authenticate_by);
        let keepalive = alive.deadline();
        tokio::select! {
            // In order, not at random: tokio's draw for an unbiased select is
            // thread-wide state, so the simulation would not replay a seed.
            biased;
            frame = transport::recv_alive(&mut ws, &mut alive) => match frame.and_then(|m| m.map(|m| inbound.accept(m)).transpose()) {
                Ok(Some(messages)) => {
                    for message in messages {
                        // An error comes out of poll_close.
                        let _ = session.handle_message(now(), message);
                    }
                }
                Ok(None) => return Ok(()),
                Err(error) if error.is_malformed() => {
                    tracing::warn!(compute_id = ?session.compute_id(), %error, "refusing a frame");
                    let message = Message::Error {
                        code: ErrorCode::Malformed,
                        message: error.to_string(),
                    };
                    let _ = transport::send_within(&mut ws, &message, send_timeout).await;
                    transport::close_within(&mut ws, send_timeout).await;
                    return Err(error.into());
                }
                Err(error) => return Err(error.into()),
            },
            () = sleep_until(session.poll_timeout()) => session.handle_timeout(now()),
            () = sleep_until(unauthenticated) => {
                // Dropped, not closed politely: nothing more for this peer.
                tracing::debug!("no Hello in time: closing");
                return Err(TransportError::Unauthenticated(timeout).into());
            }
            () = sleep_until(Some(keepalive)) => match alive.tick(now()) {
                Ok(true) => transport::ping(&mut ws, send_timeout).await?,
                Ok(false) => {}
                Err(error) => {
                    tracing::warn!(compute_id = ?session.compute_id(), %error, "dropping a silent peer");
                    return Err(error.into());
                }
            },
            Some(call) = remote_calls.recv() => match session.request_remote(call.op) {
                Some(id) => {
                    remote_pending.insert(id, call.reply);
                }
                None => {
                    let _ = call.reply.send(Err("the compute server is still connecting".into()));
                }
            },
            received = recv_news(&mut news) => match received {
                Ok(news) => match &*news {
                    WatchNews::Changed(changes) => {
                        tracing::debug!(changes = changes.len(), "index news");
                        session.handle_index_delta(changes.clone())
                    }
                    WatchNews::Rescan => session.handle_index_rescan(),
                },
                // This connection fell behind the watcher: start it over.
                Err(broadcast::error::RecvError::Lagged(_)) => session.handle_index_rescan(),
                Err(broadcast::error::RecvError::Closed) => {
                    session.handle_watch_ended();
                    news = None;
                }
            },
        }
    }
}

/// The next index news; never, without a watcher.
async fn recv_news(
    news: &mut Option<broadcast::Receiver<Arc<WatchNews>>>,
) -> Result<Arc<WatchNews>, broadcast::error::RecvError> {
    match news {
        Some(news) => news.recv().await,
        None => std::future::pending().await,
    }
}

/// Sends what the session queued and performs its storage work until it
/// wants nothing more; `Some` when it wants the connection closed.
/// Every send is bounded by `send_timeout`: a peer that takes nothing is
/// as gone as one that says nothing.
async fn drain<S, St>(
    session: &mut ProjectSession,
    store: &mut St,
    ws: &mut Ws<S>,
    events: Option<&Reporter>,
    remote_pending: &mut RemotePending,
    ties: &mut Ties,
    send_timeout: Duration,
) -> Result<Option<ProjectError>, TransportError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    St: ProjectStore,
{
    loop {
        while let Some(message) = session.poll_transmit() {
            match transport::send_within(ws, &message, send_timeout).await {
                // Cannot be encoded (too large): fail the session, which
                // queues an Error frame instead.
                Err(TransportError::Wire(error)) => session.handle_io_error(error.to_string()),
                result => result?,
            }
        }
        let Some(io) = session.poll_io() else {
            break;
        };
        // The id is taken before its base is read: a second live
        // connection for it would share its staging and commit its base.
        if let ProjectIo::LoadBase { compute_id } = &io {
            match ties.live_ids.claim(*compute_id) {
                Some(claim) => ties.claim = Some(claim),
                None => {
                    tracing::warn!(
                        compute_id,
                        "refusing a second connection for a connected compute id"
                    );
                    session.handle_id_in_use();
                    continue;
                }
            }
        }
        perform(session, store, ws, io).await?;
    }
    while let Some(event) = session.poll_event() {
        match &event {
            ProjectEvent::Connected { compute_id, full } => {
                tracing::info!(compute_id, full, "compute server connected")
            }
            ProjectEvent::SyncDone {
                compute_id,
                sync,
                epoch,
                pushed,
                pulled,
                conflicts,
            } => tracing::info!(
                compute_id,
                sync,
                epoch,
                pushed,
                pulled,
                conflicts = conflicts.len(),
                "sync done"
            ),
            ProjectEvent::RemoteDone {
                compute_id,
                id,
                result,
            } => {
                tracing::debug!(
                    compute_id,
                    id,
                    ok = result.is_ok(),
                    "remote operation answered"
                );
                if let Some(reply) = remote_pending.remove(id) {
                    let _ = reply.send(result.clone());
                }
            }
        }
        if let Some(events) = events {
            events.send(event);
        }
    }
    Ok(session.poll_close())
}

async fn perform<S, St>(
    session: &mut ProjectSession,
    store: &mut St,
    ws: &mut Ws<S>,
    io: ProjectIo,
) -> Result<(), TransportError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    St: ProjectStore,
{
    let result = match io {
        ProjectIo::LoadBase { compute_id } => store
            .load_base(compute_id)
            .await
            .map(|(epoch, base)| session.handle_base(now(), epoch, base)),
        ProjectIo::Stat { paths } => store
            .stat(&paths)
            .await
            .map(|stats| session.handle_stats(now(), stats)),
        ProjectIo::ListSubtrees { dirs } => store
            .list_subtrees(&dirs)
            .await
            .map(|entries| session.handle_subtrees(now(), entries)),
        ProjectIo::Hash { paths } => store
            .hashes(&paths)
            .await
            .map(|hashes| session.handle_hashes(now(), hashes)),
        // Staging only happens after Hello, so the id is known.
        ProjectIo::Stage { path, data, last } => match session.compute_id() {
            Some(compute_id) => store.stage(compute_id, &path, &data, last).await,
            None => Err(StoreError("content received before Hello".into())),
        },
        ProjectIo::Apply {
            compute_id,
            sync,
            ops,
            skipped,
        } => store
            .apply(compute_id, sync, &ops, &skipped)
            .await
            .map(|applied| session.handle_applied(now(), applied.deferred, applied.after)),
        ProjectIo::SendFiles { files } => {
            let sync = session.current_sync();
            let timeout = session.step_timeout();
            transport::send_files(ws, sync, &files, timeout, async |path, meta| {
                store.open_file(path, meta).await
            })
            .await?
            .map(|skipped| session.handle_files_sent(now(), skipped))
        }
        ProjectIo::CopyIn {
            compute_id,
            id,
            path,
            meta,
            data,
            last,
        } => {
            let result = store.copy_in(compute_id, &path, &meta, &data, last).await;
            match result {
                Ok(()) if !last => {}
                Ok(()) => session.handle_copied_in(id, Ok(())),
                Err(error) => {
                    tracing::warn!(compute_id, %path, %error, "copy --to-project failed");
                    session.handle_copied_in(id, Err(error.to_string()));
                }
            }
            // Not the sync's storage: a failure here ends no session.
            Ok(())
        }
        ProjectIo::IndexSnapshot => store
            .index_snapshot()
            .await
            .map(|entries| session.handle_index_snapshot(entries)),
        ProjectIo::CommitBase {
            compute_id,
            epoch,
            replace,
            updates,
        } => store
            .commit_base(compute_id, epoch, replace, &updates)
            .await
            .map(|()| session.handle_base_committed(now())),
    };
    if let Err(error) = result {
        tracing::warn!(compute_id = ?session.compute_id(), %error, "project storage failed");
        session.handle_io_error(error.to_string());
    }
    Ok(())
}
