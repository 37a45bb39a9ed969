//! The daemons' control socket, behind `unionsync status`, `sync` and
//! `clear-error`: one JSON line each way over a unix socket.
//!
//! ```text
//! CLI ─ connect <runtime dir>/unionsync/<side>.sock ─ Request line ─► connection task
//!                                                                       │ (Request, reply)
//!                                                                       ▼
//!                                  compute: ComputeTracker ◄─ the agent's events, status watch
//!                                           └─► AgentCommand (sync now, clear error)
//!                                  project: ProjectTracker ◄─ every connection's events
//! CLI ◄──────────────────────────────────── Response line ─ connection task
//! ```
//!
//! A connection carries one request and its response, then closes. A line
//! that is not a request (malformed, or longer than [`MAX_REQUEST`]) gets
//! an `Error` response and a closed connection; the daemon goes on.
//!
//! The compute side also keeps `<state>/last-error`: the text of the last
//! failed sync, replaced on each failure, removed after a successful sync.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io::{self, BufRead, Write};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot, watch};
use unionsync_core::wire::CHUNK_LEN;
use unionsync_core::{
    ComputeEvent, ComputeStatus, Meta, Phase, ProjectEvent, RelPath, RemoteEntry, RemoteOp,
    SyncReport,
};

use crate::beneath::Root;
use crate::compute_agent::{AgentCommand, CopyPiece};
use crate::project_server::{ConnectionEvent, ConnectionNews, RemoteCall};
use crate::union::MountLink;

/// The longest request line a daemon reads.
pub const MAX_REQUEST: usize = 64 * 1024;
/// The longest response line a client reads.
pub const MAX_RESPONSE: usize = 4 * 1024 * 1024;
/// How long a client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The name of the last failed sync's error text in the compute state.
pub const LAST_ERROR_FILE: &str = "last-error";
/// What the project side answers to commands only the compute side runs.
pub const NOT_ON_PROJECT: &str = "this is the project server; run it on the compute server";

/// Which daemon a socket belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Compute,
    Project,
}

impl Side {
    pub fn name(self) -> &'static str {
        match self {
            Side::Compute => "compute",
            Side::Project => "project",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    Status,
    /// Sync now; with `wait`, answer once a sync that started after this
    /// request has finished, with its outcome.
    SyncNow {
        wait: bool,
    },
    /// Resume syncing after the pause that repeated failures cause.
    ClearError,
    /// Project side: act on a connected compute server's view.
    Remote {
        compute: u64,
        op: RemoteOp,
    },
    /// Compute side (mounted): make these paths show the project's version
    /// now. Paths are as the user typed them, resolved against `cwd` when
    /// relative (bytes: names need not be UTF-8).
    CopyFromProject {
        paths: Vec<Vec<u8>>,
        cwd: Vec<u8>,
    },
    /// Compute side (mounted): put these paths of the view (trees included)
    /// in the project now; paths as for `CopyFromProject`.
    CopyToProject {
        paths: Vec<Vec<u8>>,
        cwd: Vec<u8>,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Response {
    Status(StatusView),
    Ok,
    SyncDone(SyncSummary),
    /// What a remote operation found (entries for a listing).
    Remote(Vec<RemoteEntry>),
    /// How many entries of the view changed.
    Copied(usize),
    Error(String),
}

/// Remote operations go to the project daemon.
pub const NOT_ON_COMPUTE: &str =
    "this is a compute server; run `unionsync remote` on the project server";
/// How long a remote operation may take before the caller hears so.
const REMOTE_TIMEOUT: Duration = Duration::from_secs(120);

/// What `unionsync status --json` prints.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "side", rename_all = "lowercase")]
pub enum StatusView {
    Compute(ComputeStatusView),
    Project(ProjectStatusView),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ComputeStatusView {
    pub compute_id: u64,
    /// The project server's URL.
    pub project: String,
    pub phase: Phase,
    pub connected: bool,
    /// The last committed epoch.
    pub epoch: u64,
    /// The sync in flight, if any.
    pub syncing: Option<Progress>,
    pub last_sync: Option<SyncSummary>,
    /// Seconds until the next scheduled sync (none while paused, syncing or
    /// not connected).
    pub next_sync_in_secs: Option<f64>,
    pub failures_in_a_row: u32,
    /// No syncs until `unionsync clear-error` (or `unionsync sync`).
    pub paused: bool,
    pub last_error: Option<String>,
    /// Since this daemon started.
    pub totals: Totals,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub sync: u64,
    pub files_done: u64,
    pub files_total: u64,
    pub bytes_done: u64,
}

/// One finished sync, from the compute side.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncSummary {
    pub sync: u64,
    pub epoch: u64,
    /// Files sent to the project.
    pub pushed: u64,
    /// Files received from the project.
    pub pulled: u64,
    pub conflicts: u64,
    /// Paths left for the next sync (changed while this one ran).
    pub deferred: u64,
    /// When it finished, in seconds since the Unix epoch.
    pub finished_at: u64,
}

impl SyncSummary {
    fn of(report: &SyncReport, finished_at: u64) -> SyncSummary {
        SyncSummary {
            sync: report.sync,
            epoch: report.epoch,
            pushed: report.files_sent,
            pulled: report.files_received,
            conflicts: report.conflicts.len() as u64,
            deferred: report.deferred.len() as u64,
            finished_at,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub syncs: u64,
    pub failed: u64,
    pub pushed: u64,
    pub pulled: u64,
    pub conflicts: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectStatusView {
    /// Where compute servers connect.
    pub url: String,
    pub home: String,
    /// The compute servers connected now, by id.
    pub computes: Vec<ConnectedCompute>,
}

/// One compute server's connection to the project, as the project sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectedCompute {
    pub compute_id: u64,
    pub peer: String,
    /// Seconds since the Unix epoch.
    pub connected_since: u64,
    /// Syncs finished on this connection.
    pub syncs: u64,
    pub last_sync: Option<u64>,
    pub epoch: Option<u64>,
    /// Seconds since the Unix epoch.
    pub last_sync_at: Option<u64>,
    /// Totals over this connection.
    pub pushed: u64,
    pub pulled: u64,
    pub conflicts: u64,
}

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

// ---------------------------------------------------------------- codec

/// `value` as one JSON line.
pub fn encode<T: Serialize>(value: &T) -> io::Result<Vec<u8>> {
    let mut line = serde_json::to_vec(value).map_err(io::Error::other)?;
    line.push(b'\n');
    Ok(line)
}

/// One JSON line (the newline optional).
pub fn decode<T: DeserializeOwned>(line: &[u8]) -> Result<T, String> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    serde_json::from_slice(line).map_err(|e| format!("malformed control message: {e}"))
}

fn too_long(max: usize) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("a control message longer than {max} bytes"),
    )
}

/// The next line, at most `max` bytes before its newline; `None` at the end
/// of the stream.
async fn read_line<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    max: usize,
) -> io::Result<Option<Vec<u8>>> {
    let mut line = Vec::new();
    let read = (&mut *reader)
        .take(max as u64 + 1)
        .read_until(b'\n', &mut line)
        .await?;
    check_line(read, line, max)
}

/// [`read_line`] for blocking clients.
pub fn read_line_blocking<R: BufRead>(reader: R, max: usize) -> io::Result<Option<Vec<u8>>> {
    let mut line = Vec::new();
    let read = io::Read::take(reader, max as u64 + 1).read_until(b'\n', &mut line)?;
    check_line(read, line, max)
}

fn check_line(read: usize, line: Vec<u8>, max: usize) -> io::Result<Option<Vec<u8>>> {
    if read == 0 {
        return Ok(None);
    }
    if line.last() != Some(&b'\n') && line.len() > max {
        return Err(too_long(max));
    }
    Ok(Some(line))
}

// --------------------------------------------------------------- client

/// Why a client got no answer.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// Nothing listens there (no socket, or a stale one).
    #[error("{}: no daemon answers ({cause})", path.display())]
    NoDaemon { path: PathBuf, cause: io::Error },
    #[error("{}: {cause}", path.display())]
    Io { path: PathBuf, cause: io::Error },
    #[error("{}: {why}", path.display())]
    Protocol { path: PathBuf, why: String },
}

/// Connects to the daemon at `path` (blocking).
pub fn connect(path: &Path) -> Result<std::os::unix::net::UnixStream, CallError> {
    std::os::unix::net::UnixStream::connect(path).map_err(|cause| {
        let path = path.to_path_buf();
        match cause.kind() {
            io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
                CallError::NoDaemon { path, cause }
            }
            _ => CallError::Io { path, cause },
        }
    })
}

/// Sends `request` on a fresh connection to `path` and waits (blocking,
/// without a time limit) for the response.
pub fn call(path: &Path, request: &Request) -> Result<Response, CallError> {
    let stream = connect(path)?;
    call_on(path, stream, request)
}

/// [`call`] on a connection already made.
pub fn call_on(
    path: &Path,
    mut stream: std::os::unix::net::UnixStream,
    request: &Request,
) -> Result<Response, CallError> {
    let io = |cause| CallError::Io {
        path: path.to_path_buf(),
        cause,
    };
    let line = encode(request).map_err(io)?;
    stream.write_all(&line).map_err(io)?;
    let line = read_line_blocking(io::BufReader::new(stream), MAX_RESPONSE)
        .map_err(io)?
        .ok_or_else(|| CallError::Protocol {
            path: path.to_path_buf(),
            why: "the daemon closed the connection without answering".into(),
        })?;
    decode(&line).map_err(|why| CallError::Protocol {
        path: path.to_path_buf(),
        why,
    })
}

// --------------------------------------------------------------- socket

/// Where a daemon listens by default: `$XDG_RUNTIME_DIR/unionsync/<side>.sock`,
/// else `/tmp/unionsync-<uid>/<side>.sock`.
pub fn default_socket(side: Side) -> PathBuf {
    let dir = match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Some(runtime) => PathBuf::from(runtime).join("unionsync"),
        None => PathBuf::from(format!(
            "/tmp/unionsync-{}",
            rustix::process::getuid().as_raw()
        )),
    };
    dir.join(format!("{}.sock", side.name()))
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(
        "another {side} daemon is running, control socket {} (stop it, or pass --control PATH)",
        path.display(),
        side = side.name()
    )]
    Running { side: Side, path: PathBuf },
    #[error("control socket {}: {cause}", path.display())]
    Io { path: PathBuf, cause: io::Error },
    #[error("control socket {}: {why}", path.display())]
    Refused { path: PathBuf, why: String },
}

/// A bound control socket; the socket file is removed when it is dropped
/// (unless another daemon has replaced it since).
#[derive(Debug)]
pub struct ControlListener {
    listener: UnixListener,
    path: PathBuf,
    /// (device, inode) of the socket file this bound.
    identity: (u64, u64),
}

impl ControlListener {
    /// Binds `path` for the `side` daemon (in a tokio runtime), creating its
    /// directory (mode 0700) if missing. A stale socket of a daemon that
    /// died is replaced; one where a daemon answers is an error.
    pub fn bind(path: &Path, side: Side) -> Result<ControlListener, ControlError> {
        let io = |cause| ControlError::Io {
            path: path.to_path_buf(),
            cause,
        };
        let refused = |why: String| ControlError::Refused {
            path: path.to_path_buf(),
            why,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.exists() {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
                    .map_err(io)?;
            }
            // The shared /tmp fallback: only a directory of our own.
            if path == default_socket(side) {
                let meta = std::fs::metadata(dir).map_err(io)?;
                let uid = rustix::process::getuid().as_raw();
                if meta.uid() != uid || meta.mode() & 0o022 != 0 {
                    return Err(refused(format!(
                        "{} belongs to another user or others may write to it",
                        dir.display()
                    )));
                }
            }
        }
        let listener = match UnixListener::bind(path) {
            Ok(listener) => listener,
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                let meta = std::fs::symlink_metadata(path).map_err(io)?;
                if !meta.file_type().is_socket() {
                    return Err(refused(
                        "exists and is not a socket (remove it or pass --control elsewhere)".into(),
                    ));
                }
                match std::os::unix::net::UnixStream::connect(path) {
                    Ok(_) => {
                        return Err(ControlError::Running {
                            side,
                            path: path.to_path_buf(),
                        })
                    }
                    Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                        tracing::info!(socket = %path.display(), "replacing the stale control socket of a daemon that is gone");
                        std::fs::remove_file(path).map_err(io)?;
                        UnixListener::bind(path).map_err(io)?
                    }
                    Err(e) => return Err(io(e)),
                }
            }
            Err(e) => return Err(io(e)),
        };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
        let meta = std::fs::symlink_metadata(path).map_err(io)?;
        tracing::info!(socket = %path.display(), "control socket ready");
        Ok(ControlListener {
            listener,
            path: path.to_path_buf(),
            identity: (meta.dev(), meta.ino()),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ControlListener {
    fn drop(&mut self) {
        let ours = std::fs::symlink_metadata(&self.path)
            .is_ok_and(|meta| (meta.dev(), meta.ino()) == self.identity);
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// A client's request, and where its response goes.
struct Incoming {
    request: Request,
    reply: oneshot::Sender<Response>,
}

/// Accepts clients, each on its own task, and passes their requests on;
/// without a listener, waits forever.
async fn accept(
    listener: Option<&ControlListener>,
    requests: mpsc::Sender<Incoming>,
) -> Infallible {
    let Some(listener) = listener else {
        return std::future::pending().await;
    };
    loop {
        match listener.listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(client(stream, requests.clone()));
            }
            Err(error) => {
                // Out of descriptors, say: try again shortly.
                tracing::warn!(%error, "control socket: accept");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// One client: its request line, then the response line.
async fn client(stream: UnixStream, requests: mpsc::Sender<Incoming>) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let line = tokio::time::timeout(REQUEST_TIMEOUT, read_line(&mut reader, MAX_REQUEST)).await;
    let response = match line {
        Err(_) => Response::Error(format!("no request within {REQUEST_TIMEOUT:?}")),
        Ok(Err(error)) => Response::Error(error.to_string()),
        Ok(Ok(None)) => return,
        Ok(Ok(Some(line))) => match decode::<Request>(&line) {
            Err(error) => Response::Error(error),
            Ok(request) => answer(request, &requests).await,
        },
    };
    if let Response::Error(error) = &response {
        tracing::debug!(%error, "control request refused or failed");
    }
    if let Ok(line) = encode(&response) {
        let _ = write.write_all(&line).await;
        let _ = write.shutdown().await;
    }
}

async fn answer(request: Request, requests: &mpsc::Sender<Incoming>) -> Response {
    let stopping = || Response::Error("the daemon is stopping".into());
    let (reply, response) = oneshot::channel();
    if requests.send(Incoming { request, reply }).await.is_err() {
        return stopping();
    }
    response.await.unwrap_or_else(|_| stopping())
}

// ---------------------------------------------------------- compute side

/// The compute agent as the control socket sees it (`drive_agent` makes
/// all three).
pub struct ComputeLink {
    pub status: watch::Receiver<ComputeStatus>,
    pub events: mpsc::UnboundedReceiver<ComputeEvent>,
    pub commands: mpsc::UnboundedSender<AgentCommand>,
    /// The union, when the compute side is mounted (`copy --from-project`).
    pub mount: Option<MountLink>,
}

/// What status shows beyond the agent's own status.
#[derive(Clone, Debug)]
pub struct ComputeInfo {
    pub compute_id: u64,
    pub project: String,
    /// Where the last failed sync's error text goes (`<state>/last-error`).
    pub error_file: Option<PathBuf>,
}

/// Answers the control socket for a compute agent and follows its events
/// (keeping the last-error file), until dropped. With no listener it only
/// follows the events.
pub async fn run_compute_control(
    listener: Option<ControlListener>,
    link: ComputeLink,
    info: ComputeInfo,
) -> Infallible {
    let ComputeLink {
        mut status,
        mut events,
        commands,
        mount,
    } = link;
    let (requests, mut incoming) = mpsc::channel(16);
    let accepting = accept(listener.as_ref(), requests);
    tokio::pin!(accepting);
    let mut tracker = ComputeTracker::new(commands, info);
    tracker.mount = mount;
    let mut events_open = true;
    let mut status_open = true;
    loop {
        tokio::select! {
            never = &mut accepting => match never {},
            event = events.recv(), if events_open => match event {
                Some(event) => tracker.event(event),
                None => {
                    events_open = false;
                    tracker.agent_stopped();
                }
            },
            changed = status.changed(), if status_open => match changed {
                Ok(()) => tracker.saw_status(&mut status),
                Err(_) => status_open = false,
            },
            Some(Incoming { request, reply }) = incoming.recv() => {
                // Catch up first: what the agent did before this request
                // must not count as its answer.
                while let Ok(event) = events.try_recv() {
                    tracker.event(event);
                }
                if status.has_changed().unwrap_or(false) {
                    tracker.saw_status(&mut status);
                }
                tracker.request(request, reply, &status);
            }
        }
    }
}

/// A `SyncNow { wait: true }` waiting for its sync.
struct SyncWaiter {
    /// The highest sync number started before the request.
    after: u64,
    /// The sync that started after the request.
    ours: Option<u64>,
    reply: oneshot::Sender<Response>,
}

struct ComputeTracker {
    commands: mpsc::UnboundedSender<AgentCommand>,
    info: ComputeInfo,
    agent_running: bool,
    /// When the status last changed (its `next_sync_in` counts from then).
    status_seen: Instant,
    highest_started: u64,
    in_flight: Option<u64>,
    last: Option<SyncSummary>,
    totals: Totals,
    waiters: Vec<SyncWaiter>,
    mount: Option<MountLink>,
}

impl ComputeTracker {
    fn new(commands: mpsc::UnboundedSender<AgentCommand>, info: ComputeInfo) -> ComputeTracker {
        ComputeTracker {
            commands,
            info,
            agent_running: true,
            status_seen: crate::now(),
            highest_started: 0,
            in_flight: None,
            last: None,
            totals: Totals::default(),
            waiters: Vec::new(),
            mount: None,
        }
    }

    fn saw_status(&mut self, status: &mut watch::Receiver<ComputeStatus>) {
        status.borrow_and_update();
        self.status_seen = crate::now();
    }

    fn event(&mut self, event: ComputeEvent) {
        match event {
            // The agent answers its copy requests itself.
            ComputeEvent::CopiedIn { .. } => {}
            ComputeEvent::SyncStarted { sync } => {
                self.highest_started = self.highest_started.max(sync);
                self.in_flight = Some(sync);
                for waiter in &mut self.waiters {
                    if waiter.ours.is_none() && sync > waiter.after {
                        waiter.ours = Some(sync);
                    }
                }
            }
            ComputeEvent::SyncDone(report) => {
                self.in_flight = None;
                let summary = SyncSummary::of(&report, unix_now());
                self.totals.syncs += 1;
                self.totals.pushed += summary.pushed;
                self.totals.pulled += summary.pulled;
                self.totals.conflicts += summary.conflicts;
                self.last = Some(summary.clone());
                self.remove_error_file();
                self.settle(Some(report.sync), |_| Response::SyncDone(summary.clone()));
            }
            ComputeEvent::SyncFailed { error } => {
                let failed = self.in_flight.take();
                self.totals.failed += 1;
                self.write_error_file(&error);
                self.settle(failed, |ours| match ours {
                    Some(sync) => Response::Error(format!("sync {sync} failed: {error}")),
                    None => Response::Error(format!("sync failed: {error}")),
                });
            }
            ComputeEvent::Paused => {}
        }
    }

    /// A sync ended (`sync`: the one in flight, if any): answers the
    /// waiters it was for. A sync that started before a waiter's request
    /// swallowed its "sync now" (the schedule moves on when a sync ends),
    /// so the agent is asked again.
    fn settle(&mut self, sync: Option<u64>, outcome: impl Fn(Option<u64>) -> Response) {
        let mut ask_again = false;
        for waiter in std::mem::take(&mut self.waiters) {
            let answered = match (waiter.ours, sync) {
                (Some(ours), Some(ended)) => ours == ended,
                // Failed before any sync started (the project refused
                // the connection, say): that is this request's outcome.
                (None, None) => true,
                (Some(_), None) => false,
                (None, Some(_)) => {
                    ask_again = true;
                    false
                }
            };
            if answered {
                let _ = waiter.reply.send(outcome(waiter.ours));
            } else {
                self.waiters.push(waiter);
            }
        }
        if ask_again {
            let _ = self.commands.send(AgentCommand::SyncNow);
        }
    }

    fn agent_stopped(&mut self) {
        self.agent_running = false;
        for waiter in self.waiters.drain(..) {
            let _ = waiter
                .reply
                .send(Response::Error("the compute agent stopped".into()));
        }
    }

    fn command(&self, command: AgentCommand) -> Result<(), String> {
        if self.agent_running && self.commands.send(command).is_ok() {
            Ok(())
        } else {
            Err("the compute agent stopped".into())
        }
    }

    fn request(
        &mut self,
        request: Request,
        reply: oneshot::Sender<Response>,
        status: &watch::Receiver<ComputeStatus>,
    ) {
        match request {
            Request::Status => {
                let view = self.view(&status.borrow());
                let _ = reply.send(Response::Status(StatusView::Compute(view)));
            }
            Request::SyncNow { wait } => match self.command(AgentCommand::SyncNow) {
                Err(error) => {
                    let _ = reply.send(Response::Error(error));
                }
                Ok(()) if !wait => {
                    let _ = reply.send(Response::Ok);
                }
                Ok(()) => self.waiters.push(SyncWaiter {
                    after: self.highest_started,
                    ours: None,
                    reply,
                }),
            },
            Request::Remote { .. } => {
                let _ = reply.send(Response::Error(NOT_ON_COMPUTE.into()));
            }
            Request::CopyToProject { paths, cwd } => {
                let Some(mount) = self.mount.clone() else {
                    let why = "copy --to-project needs the mounted compute server \
                               (unionsync compute mount)";
                    let _ = reply.send(Response::Error(why.into()));
                    return;
                };
                let commands = self.commands.clone();
                tokio::spawn(async move {
                    // Bounded: the reader waits while the agent sends.
                    let (pieces, received) = mpsc::channel(COPY_PIECES_AHEAD);
                    let (done, outcome) = oneshot::channel();
                    let command = AgentCommand::CopyToProject {
                        pieces: received,
                        reply: done,
                    };
                    if commands.send(command).is_err() {
                        let _ = reply.send(Response::Error("the compute agent stopped".into()));
                        return;
                    }
                    // Reads through the mount: not on the runtime's thread.
                    tokio::task::spawn_blocking(move || {
                        let send = |piece| {
                            pieces
                                .blocking_send(Ok(piece))
                                .map_err(|_| "the copy stopped".to_string())
                        };
                        if let Err(error) = read_view(&mount.mountpoint, &paths, &cwd, send) {
                            let _ = pieces.blocking_send(Err(error));
                        }
                    });
                    let response = match outcome.await {
                        Ok(Ok(entries)) => Response::Copied(entries),
                        Ok(Err(error)) => Response::Error(error),
                        Err(_) => Response::Error("the compute agent stopped".into()),
                    };
                    let _ = reply.send(response);
                });
            }
            Request::CopyFromProject { paths, cwd } => {
                let Some(mount) = self.mount.clone() else {
                    let why = "copy --from-project needs the mounted compute server \
                               (unionsync compute mount)";
                    let _ = reply.send(Response::Error(why.into()));
                    return;
                };
                // Reads the project's content through the lower: not on
                // the runtime's only thread.
                tokio::task::spawn_blocking(move || {
                    let response = match copy_from_project(&mount, &paths, &cwd) {
                        Ok(entries) => Response::Copied(entries),
                        Err(error) => Response::Error(error),
                    };
                    let _ = reply.send(response);
                });
            }
            Request::ClearError => match self.command(AgentCommand::ClearError) {
                Err(error) => {
                    let _ = reply.send(Response::Error(error));
                }
                Ok(()) => {
                    // Answer once status shows it (a status asked right
                    // after must not still say paused).
                    let mut status = status.clone();
                    tokio::spawn(async move {
                        let cleared = status.wait_for(|s| !s.paused && s.failures_in_a_row == 0);
                        let _ = tokio::time::timeout(Duration::from_secs(5), cleared).await;
                        let _ = reply.send(Response::Ok);
                    });
                }
            },
        }
    }

    fn view(&self, status: &ComputeStatus) -> ComputeStatusView {
        let since_seen = crate::now().saturating_duration_since(self.status_seen);
        ComputeStatusView {
            compute_id: self.info.compute_id,
            project: self.info.project.clone(),
            phase: status.phase,
            connected: status.connected,
            epoch: status.epoch,
            syncing: self.in_flight.map(|sync| Progress {
                sync,
                files_done: status.files_done,
                files_total: status.files_total,
                bytes_done: status.bytes_done,
            }),
            last_sync: self.last.clone(),
            next_sync_in_secs: status
                .next_sync_in
                .filter(|_| status.phase == Phase::Idle && !status.paused)
                .filter(|_| self.in_flight.is_none())
                .map(|next| next.saturating_sub(since_seen).as_secs_f64()),
            failures_in_a_row: status.failures_in_a_row,
            paused: status.paused,
            last_error: status.last_error.clone(),
            totals: self.totals.clone(),
        }
    }

    fn write_error_file(&self, error: &str) {
        let Some(path) = &self.info.error_file else {
            return;
        };
        let temp = path.with_extension("tmp");
        let written =
            std::fs::write(&temp, format!("{error}\n")).and_then(|()| std::fs::rename(&temp, path));
        if let Err(e) = written {
            tracing::warn!(error = %e, file = %path.display(), "cannot record the sync error");
        }
    }

    fn remove_error_file(&self) {
        let Some(path) = &self.info.error_file else {
            return;
        };
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                tracing::warn!(error = %e, file = %path.display(), "cannot remove the old sync error")
            }
            _ => {}
        }
    }
}

// ---------------------------------------------------------- project side

/// Pieces of a `copy --to-project` read ahead of what the agent sent.
const COPY_PIECES_AHEAD: usize = 2;

/// Feeds `send` the entries at and below each typed path of the view,
/// parents first, files in pieces of at most [`CHUNK_LEN`] as they are
/// read (memory stays bounded whatever their size). Resolved beneath the
/// mountpoint, never through a symlink: `l -> /` in the view must not ship
/// the host's `l/etc/shadow`. Stops at the first error, naming the path.
fn read_view(
    mountpoint: &Path,
    paths: &[Vec<u8>],
    cwd: &[u8],
    mut send: impl FnMut(CopyPiece) -> Result<(), String>,
) -> Result<(), String> {
    use rustix::fs::FileType;
    let view = Root::open(mountpoint).map_err(|e| format!("{}: {e}", mountpoint.display()))?;
    for typed in paths {
        let shown = String::from_utf8_lossy(typed).into_owned();
        let top = view_path(mountpoint, typed, cwd).map_err(|why| format!("{shown}: {why}"))?;
        let mut todo = vec![top];
        while let Some(path) = todo.pop() {
            let failed = |e: io::Error| format!("{path}: {e}");
            let stat = view
                .lstat(&path)
                .and_then(|stat| stat.ok_or_else(|| io::ErrorKind::NotFound.into()))
                .map_err(failed)?;
            let target = match FileType::from_raw_mode(stat.st_mode) {
                FileType::Directory => {
                    let mut names = view.names(Some(&path)).map_err(failed)?;
                    // Popped from the end: reversed, the output stays sorted.
                    names.sort_by(|a, b| b.cmp(a));
                    for name in names {
                        let child = path.join(&name).map_err(|e| format!("{path}: {e}"))?;
                        todo.push(child);
                    }
                    None
                }
                FileType::Symlink => Some(view.read_link(&path).map_err(failed)?),
                FileType::RegularFile => {
                    let meta = crate::beneath::meta_of(&stat, None);
                    let file = view.open_file(&path).map_err(failed)?;
                    send_file(path.clone(), meta, file, &mut send).map_err(|e| match e {
                        Piece::Read(e) => failed(e),
                        Piece::Send(e) => e,
                    })?;
                    continue;
                }
                // Fifos, sockets, devices never sync.
                _ => continue,
            };
            let meta = crate::beneath::meta_of(&stat, target);
            let (data, last) = (Vec::new(), true);
            send(CopyPiece {
                path,
                meta,
                data,
                last,
            })?;
        }
    }
    Ok(())
}

/// Why a file's pieces stopped: reading it, or handing a piece on.
enum Piece {
    Read(io::Error),
    Send(String),
}

/// One file's content as pieces; the last one's `meta` has the size read
/// (what was read, even if the file changed meanwhile).
fn send_file(
    path: RelPath,
    mut meta: Meta,
    mut file: std::fs::File,
    send: &mut impl FnMut(CopyPiece) -> Result<(), String>,
) -> Result<(), Piece> {
    use std::io::Read;
    let mut size = 0u64;
    loop {
        let mut data = Vec::with_capacity(CHUNK_LEN);
        (&mut file)
            .take(CHUNK_LEN as u64)
            .read_to_end(&mut data)
            .map_err(Piece::Read)?;
        size += data.len() as u64;
        let last = data.len() < CHUNK_LEN;
        if last {
            meta.size = size;
        }
        send(CopyPiece {
            path: path.clone(),
            meta: meta.clone(),
            data,
            last,
        })
        .map_err(Piece::Send)?;
        if last {
            return Ok(());
        }
    }
}

/// Resolves each typed path to a path of the view and takes the
/// project's version of it; stops at the first error, naming the path.
fn copy_from_project(mount: &MountLink, paths: &[Vec<u8>], cwd: &[u8]) -> Result<usize, String> {
    let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let mut entries = 0;
    for typed in paths {
        let shown = String::from_utf8_lossy(typed);
        let path =
            view_path(&mount.mountpoint, typed, cwd).map_err(|why| format!("{shown}: {why}"))?;
        entries += mount
            .take_project_version(&path, &stamp)
            .map_err(|error| format!("{shown}: {error}"))?;
    }
    Ok(entries)
}

/// The view's path for what a user typed: an absolute path must lie in the
/// mount; a relative one is taken from `cwd` when that is in the mount,
/// else from the view's root.
pub fn view_path(mountpoint: &Path, typed: &[u8], cwd: &[u8]) -> Result<RelPath, String> {
    use std::os::unix::ffi::OsStrExt;
    let typed = Path::new(std::ffi::OsStr::from_bytes(typed));
    let cwd = Path::new(std::ffi::OsStr::from_bytes(cwd));
    let full = if typed.is_absolute() {
        typed.to_path_buf()
    } else if cwd.starts_with(mountpoint) {
        cwd.join(typed)
    } else {
        mountpoint.join(typed)
    };
    let inside = full
        .strip_prefix(mountpoint)
        .map_err(|_| format!("not under the mount {}", mountpoint.display()))?;
    let mut parts: Vec<&[u8]> = Vec::new();
    for part in inside.components() {
        match part {
            std::path::Component::Normal(name) => parts.push(name.as_bytes()),
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir if parts.pop().is_some() => {}
            _ => return Err(format!("not under the mount {}", mountpoint.display())),
        }
    }
    if parts.is_empty() {
        return Err("the whole view: name the paths to copy".into());
    }
    RelPath::new(parts.join(&b'/')).map_err(|e| e.to_string())
}

/// What status shows about the project server itself.
#[derive(Clone, Debug)]
pub struct ProjectInfo {
    pub url: String,
    pub home: PathBuf,
}

/// Answers the control socket for the project server from its
/// connections' events, until dropped.
pub async fn run_project_control(
    listener: Option<ControlListener>,
    mut events: mpsc::UnboundedReceiver<ConnectionEvent>,
    info: ProjectInfo,
) -> Infallible {
    let (requests, mut incoming) = mpsc::channel(16);
    let accepting = accept(listener.as_ref(), requests);
    tokio::pin!(accepting);
    let mut connections = BTreeMap::new();
    let mut remotes = BTreeMap::new();
    let mut events_open = true;
    loop {
        tokio::select! {
            never = &mut accepting => match never {},
            event = events.recv(), if events_open => match event {
                Some(event) => follow(&mut connections, &mut remotes, event),
                None => events_open = false,
            },
            Some(Incoming { request, reply }) = incoming.recv() => {
                while let Ok(event) = events.try_recv() {
                    follow(&mut connections, &mut remotes, event);
                }
                let response = match request {
                    Request::Status => {
                        let mut computes: Vec<ConnectedCompute> =
                            connections.values().cloned().collect();
                        computes.sort_by_key(|c| (c.compute_id, c.connected_since));
                        Response::Status(StatusView::Project(ProjectStatusView {
                            url: info.url.clone(),
                            home: info.home.display().to_string(),
                            computes,
                        }))
                    }
                    Request::SyncNow { .. }
                    | Request::ClearError
                    | Request::CopyFromProject { .. }
                    | Request::CopyToProject { .. } => {
                        Response::Error(NOT_ON_PROJECT.into())
                    }
                    Request::Remote { compute, op } => {
                        // The newest connection of that compute server.
                        let connection = connections
                            .iter()
                            .filter(|(_, c)| c.compute_id == compute)
                            .map(|(n, _)| *n)
                            .max();
                        match connection.and_then(|n| remotes.get(&n)) {
                            None => Response::Error(format!("compute server {compute} is not connected")),
                            Some(remote) => {
                                remote_call(remote, op, reply);
                                continue;
                            }
                        }
                    }
                };
                let _ = reply.send(response);
            }
        }
    }
}

/// Sends `op` to a connection and answers `reply` when it is done (or the
/// connection is gone, or it takes too long), without holding up others.
fn remote_call(
    remote: &mpsc::UnboundedSender<RemoteCall>,
    op: RemoteOp,
    reply: oneshot::Sender<Response>,
) {
    let (done, outcome) = oneshot::channel();
    if remote.send(RemoteCall { op, reply: done }).is_err() {
        let _ = reply.send(Response::Error("the compute server disconnected".into()));
        return;
    }
    tokio::spawn(async move {
        let response = match tokio::time::timeout(REMOTE_TIMEOUT, outcome).await {
            Ok(Ok(Ok(entries))) => Response::Remote(entries),
            Ok(Ok(Err(error))) => Response::Error(error),
            Ok(Err(_)) => Response::Error("the compute server disconnected".into()),
            Err(_) => Response::Error(format!("no answer within {REMOTE_TIMEOUT:?}")),
        };
        let _ = reply.send(response);
    });
}

/// Keeps `connections` (by connection number) and their remote-operation
/// channels up to date.
fn follow(
    connections: &mut BTreeMap<u64, ConnectedCompute>,
    remotes: &mut BTreeMap<u64, mpsc::UnboundedSender<RemoteCall>>,
    event: ConnectionEvent,
) {
    let fresh = |compute_id| ConnectedCompute {
        compute_id,
        peer: event.peer.to_string(),
        connected_since: unix_now(),
        syncs: 0,
        last_sync: None,
        epoch: None,
        last_sync_at: None,
        pushed: 0,
        pulled: 0,
        conflicts: 0,
    };
    match event.news {
        ConnectionNews::Session(ProjectEvent::Connected { compute_id, .. }) => {
            connections.insert(event.connection, fresh(compute_id));
        }
        ConnectionNews::Session(ProjectEvent::SyncDone {
            compute_id,
            sync,
            epoch,
            pushed,
            pulled,
            conflicts,
        }) => {
            let entry = connections
                .entry(event.connection)
                .or_insert_with(|| fresh(compute_id));
            entry.syncs += 1;
            entry.last_sync = Some(sync);
            entry.epoch = Some(epoch);
            entry.last_sync_at = Some(unix_now());
            entry.pushed += pushed;
            entry.pulled += pulled;
            entry.conflicts += conflicts.len() as u64;
        }
        ConnectionNews::Opened(remote) => {
            remotes.insert(event.connection, remote);
        }
        ConnectionNews::Session(_) => {}
        ConnectionNews::Closed => {
            connections.remove(&event.connection);
            remotes.remove(&event.connection);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_to_project_never_reads_through_a_symlink_in_the_view() {
        let view = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("shadow"), b"host secret").unwrap();
        std::os::unix::fs::symlink(outside.path(), view.path().join("l")).unwrap();
        std::fs::write(view.path().join("mine"), b"mine").unwrap();
        let error = read(view.path(), b"l/shadow").unwrap_err();
        assert!(error.contains("l/shadow"), "{error}");
        // The link itself is copied as a link, and files as they are.
        let entries = read(view.path(), b"l").unwrap();
        assert!(
            matches!(entries[..], [CopyPiece { ref meta, .. }] if matches!(meta.kind, unionsync_core::Kind::Symlink { .. }))
        );
        assert_eq!(read(view.path(), b"mine").unwrap()[0].data, b"mine");
    }

    /// The pieces `read_view` hands on for one typed path.
    fn read(view: &Path, typed: &[u8]) -> Result<Vec<CopyPiece>, String> {
        let mut pieces = Vec::new();
        read_view(view, &[typed.to_vec()], b"/", |piece| {
            pieces.push(piece);
            Ok(())
        })?;
        Ok(pieces)
    }

    #[test]
    fn copy_to_project_reads_a_file_in_chunks_and_the_last_piece_has_the_size_read() {
        let view = tempfile::tempdir().unwrap();
        let content: Vec<u8> = (0..2 * CHUNK_LEN).map(|i| (i % 253) as u8).collect();
        std::fs::write(view.path().join("big"), &content).unwrap();
        let pieces = read(view.path(), b"big").unwrap();
        let shape: Vec<(usize, bool)> = pieces.iter().map(|p| (p.data.len(), p.last)).collect();
        assert_eq!(shape, [(CHUNK_LEN, false), (CHUNK_LEN, false), (0, true)]);
        assert_eq!(pieces[2].meta.size, content.len() as u64);
        let data: Vec<u8> = pieces.into_iter().flat_map(|p| p.data).collect();
        assert_eq!(data, content);
    }

    #[test]
    fn copy_to_project_stops_reading_when_the_agent_stops_taking_pieces() {
        let view = tempfile::tempdir().unwrap();
        std::fs::write(view.path().join("big"), vec![1; 3 * CHUNK_LEN]).unwrap();
        let mut taken = 0;
        let error = read_view(view.path(), &[b"big".to_vec()], b"/", |_| {
            taken += 1;
            if taken == 2 {
                Err("the copy stopped".into())
            } else {
                Ok(())
            }
        })
        .unwrap_err();
        assert_eq!((taken, error.as_str()), (2, "the copy stopped"));
    }

    #[test]
    fn requests_and_responses_round_trip_as_one_json_line() {
        for request in [
            Request::Status,
            Request::SyncNow { wait: true },
            Request::ClearError,
        ] {
            let line = encode(&request).unwrap();
            assert_eq!(line.iter().filter(|b| **b == b'\n').count(), 1);
            assert_eq!(line.last(), Some(&b'\n'));
            assert_eq!(decode::<Request>(&line).unwrap(), request);
        }
        let summary = SyncSummary {
            sync: 3,
            epoch: 7,
            pushed: 2,
            pulled: 1,
            conflicts: 0,
            deferred: 0,
            finished_at: 1_700_000_000,
        };
        for response in [
            Response::Ok,
            Response::SyncDone(summary),
            Response::Error("a\nmultiline error".into()),
        ] {
            let line = encode(&response).unwrap();
            assert_eq!(line.iter().filter(|b| **b == b'\n').count(), 1);
            assert_eq!(decode::<Response>(&line).unwrap(), response);
        }
    }

    #[test]
    fn the_wire_form_is_plain_json() {
        assert_eq!(encode(&Request::Status).unwrap(), b"\"Status\"\n");
        assert_eq!(
            decode::<Request>(br#"{"SyncNow":{"wait":false}}"#).unwrap(),
            Request::SyncNow { wait: false }
        );
        let view = StatusView::Project(ProjectStatusView {
            url: "ws://127.0.0.1:7171/".into(),
            home: "/home/u".into(),
            computes: Vec::new(),
        });
        let json = String::from_utf8(encode(&view).unwrap()).unwrap();
        assert!(json.starts_with(r#"{"side":"project","#), "{json}");
        assert_eq!(decode::<StatusView>(json.as_bytes()).unwrap(), view);
    }

    #[test]
    fn malformed_lines_are_errors_not_panics() {
        for line in [
            &b"garbage\n"[..],
            b"",
            b"{",
            b"\xff\xfe",
            b"{\"SyncNow\":{}}",
            b"\"Status\" trailing",
        ] {
            let error = decode::<Request>(line).unwrap_err();
            assert!(error.starts_with("malformed control message"), "{error}");
        }
    }

    #[tokio::test]
    async fn lines_are_capped() {
        let long = [b'x'; 100];
        let mut reader = &long[..];
        let error = read_line(&mut reader, 64).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        let error = read_line_blocking(&long[..], 64).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);

        let mut exact = vec![b'x'; 64];
        exact.push(b'\n');
        exact.extend_from_slice(b"next");
        let mut reader = &exact[..];
        assert_eq!(read_line(&mut reader, 64).await.unwrap().unwrap().len(), 65);
        assert_eq!(read_line(&mut reader, 64).await.unwrap().unwrap(), b"next");
        assert_eq!(read_line(&mut reader, 64).await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_stale_socket_is_replaced_and_a_live_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/c.sock");
        let first = ControlListener::bind(&path, Side::Compute).unwrap();
        let mode = std::fs::metadata(dir.path().join("sub")).unwrap().mode();
        assert_eq!(mode & 0o777, 0o700);
        let error = ControlListener::bind(&path, Side::Compute).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("another compute daemon is running"),
            "{error}"
        );
        drop(first);
        assert!(!path.exists(), "removed on a clean exit");
        // A crash leaves the socket file behind with nobody listening.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let second = ControlListener::bind(&path, Side::Compute).unwrap();
        drop(second);
        assert!(!path.exists(), "removed on a clean exit");
    }

    #[tokio::test]
    async fn a_path_that_is_not_a_socket_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.sock");
        std::fs::write(&path, "mine").unwrap();
        let error = ControlListener::bind(&path, Side::Project).unwrap_err();
        assert!(error.to_string().contains("not a socket"), "{error}");
        assert_eq!(std::fs::read(&path).unwrap(), b"mine");
    }

    fn link() -> (
        ComputeLink,
        watch::Sender<ComputeStatus>,
        mpsc::UnboundedSender<ComputeEvent>,
        mpsc::UnboundedReceiver<AgentCommand>,
    ) {
        let (status_tx, status) = watch::channel(ComputeStatus::default());
        let (events_tx, events) = mpsc::unbounded_channel();
        let (commands, commands_rx) = mpsc::unbounded_channel();
        let link = ComputeLink {
            status,
            events,
            commands,
            mount: None,
        };
        (link, status_tx, events_tx, commands_rx)
    }

    fn report(sync: u64) -> SyncReport {
        SyncReport {
            sync,
            epoch: sync,
            files_sent: 1,
            ..SyncReport::default()
        }
    }

    #[tokio::test]
    async fn sync_now_waits_for_a_sync_that_started_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("c.sock");
        let error_file = dir.path().join(LAST_ERROR_FILE);
        let listener = ControlListener::bind(&socket, Side::Compute).unwrap();
        let (link, _status, events, mut commands) = link();
        let info = ComputeInfo {
            compute_id: 1,
            project: "ws://127.0.0.1:1/".into(),
            error_file: Some(error_file.clone()),
        };
        let control = tokio::spawn(run_compute_control(Some(listener), link, info));
        // Sync 1 is under way when the request comes.
        events.send(ComputeEvent::SyncStarted { sync: 1 }).unwrap();
        let path = socket.clone();
        let waiting = tokio::task::spawn_blocking(move || {
            call(&path, &Request::SyncNow { wait: true }).unwrap()
        });
        assert!(matches!(commands.recv().await, Some(AgentCommand::SyncNow)));
        // Sync 1 fails: not this request's sync; the agent is asked again.
        events
            .send(ComputeEvent::SyncFailed {
                error: "boom".into(),
            })
            .unwrap();
        assert!(matches!(commands.recv().await, Some(AgentCommand::SyncNow)));
        assert!(!waiting.is_finished());
        events.send(ComputeEvent::SyncStarted { sync: 2 }).unwrap();
        events.send(ComputeEvent::SyncDone(report(2))).unwrap();
        match waiting.await.unwrap() {
            Response::SyncDone(summary) => assert_eq!((summary.sync, summary.pushed), (2, 1)),
            other => panic!("{other:?}"),
        }
        assert!(!error_file.exists(), "a successful sync removes it");
        control.abort();
    }

    #[tokio::test]
    async fn failures_are_recorded_in_the_error_file_and_garbage_is_answered() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("c.sock");
        let error_file = dir.path().join(LAST_ERROR_FILE);
        let listener = ControlListener::bind(&socket, Side::Compute).unwrap();
        let (link, _status, events, _commands) = link();
        let info = ComputeInfo {
            compute_id: 1,
            project: "ws://127.0.0.1:1/".into(),
            error_file: Some(error_file.clone()),
        };
        let control = tokio::spawn(run_compute_control(Some(listener), link, info));
        events
            .send(ComputeEvent::SyncFailed {
                error: "refused".into(),
            })
            .unwrap();
        let path = socket.clone();
        let garbage = tokio::task::spawn_blocking(move || {
            let mut stream = std::os::unix::net::UnixStream::connect(&path).unwrap();
            stream.write_all(b"garbage\n").unwrap();
            read_line_blocking(io::BufReader::new(stream), MAX_RESPONSE).unwrap()
        });
        let line = garbage.await.unwrap().unwrap();
        assert!(matches!(decode(&line).unwrap(), Response::Error(_)));
        let path = socket.clone();
        let status = tokio::task::spawn_blocking(move || call(&path, &Request::Status).unwrap());
        match status.await.unwrap() {
            Response::Status(StatusView::Compute(view)) => assert_eq!(view.totals.failed, 1),
            other => panic!("{other:?}"),
        }
        assert_eq!(std::fs::read_to_string(&error_file).unwrap(), "refused\n");
        control.abort();
    }

    #[test]
    fn typed_paths_resolve_inside_the_mount() {
        let mnt = Path::new("/home/u/work");
        let view = |typed: &str, cwd: &str| view_path(mnt, typed.as_bytes(), cwd.as_bytes());
        assert_eq!(
            view("/home/u/work/a/b", "/"),
            Ok(RelPath::new("a/b").unwrap())
        );
        assert_eq!(
            view("b", "/home/u/work/a"),
            Ok(RelPath::new("a/b").unwrap())
        );
        assert_eq!(
            view("a/./c/../b", "/elsewhere"),
            Ok(RelPath::new("a/b").unwrap())
        );
        assert!(view("/etc/passwd", "/")
            .unwrap_err()
            .contains("not under the mount"));
        assert!(view("../../etc", "/home/u/work")
            .unwrap_err()
            .contains("not under the mount"));
        assert!(view(".", "/home/u/work").is_err());
    }
}
