//! The project side of the protocol, one per compute connection: it checks
//! the compute server in, holds that server's base, plans each sync and
//! records the new base. Sans-IO, driven like [`crate::ComputeSession`].
//!
//! ```text
//! Hello ──► check version, token ──► LoadBase ──► Welcome{full?}
//! Changes ──► Stat(S + base + ancestors) ──► ListSubtrees? ──► Hash?
//!         ──► reconcile ──► Plan ──► (compute data) ──► Apply
//!         ──► SendFiles ──► ProjectApplied ──► (ComputeApplied)
//!         ──► CommitBase ──► Commit ──► (CommitAck)
//! ```
//!
//! The lower metadata index: with [`ProjectConfig::lower_index`], a
//! welcomed peer gets the whole index (`IndexSnapshot` → the store walks the
//! home → [`ProjectSession::handle_index_snapshot`]) and then every change the
//! shell's watcher reports ([`ProjectSession::handle_index_delta`]); after
//! lost events, [`ProjectSession::handle_index_rescan`] sends it whole again.
//!
//! Crash safety: the base is committed with an epoch after both sides
//! applied. A compute side one epoch behind missed only the acknowledgement
//! and resumes normally (its journal still holds the paths, which compare
//! equal to the new base). Any other mismatch, or a missing base, runs a
//! full reconcile with no base: differing content is a conflict (project
//! wins, loser kept), a compute whiteout without a base loses to the project
//! — never a mass delete. A sync interrupted after applying is repaired the
//! same way by content: both sides now equal is `Same`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use crate::compute_session::message_name;
use crate::meta::{ContentHash, Kind, Meta};
use crate::parts::{Inbox, Outbox, PartsError};
use crate::path::RelPath;
use crate::plan::{reconcile, ComputeOp, Plan, ProjectOp};
use crate::reconcile::{
    needs_hashes, needs_project_subtree, BaseEntry, ComputeView, Inputs, PathInput, Reported,
};
use crate::wire::{Change, ErrorCode, Message, RemoteEntry, RemoteOp, PROTOCOL_VERSION};

#[derive(Clone, Debug)]
pub struct ProjectConfig {
    pub token: Vec<u8>,
    /// A peer that makes no progress for this long is dropped.
    pub step_timeout: Duration,
    /// Push the lower metadata index to welcomed peers.
    pub lower_index: bool,
}

/// Work for the project server's storage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProjectIo {
    /// → [`ProjectSession::handle_base`].
    LoadBase { compute_id: u64 },
    /// Stat beneath the home, never following symlinks →
    /// [`ProjectSession::handle_stats`].
    Stat { paths: Vec<RelPath> },
    /// Every descendant of each directory → [`ProjectSession::handle_subtrees`].
    ListSubtrees { dirs: Vec<RelPath> },
    /// → [`ProjectSession::handle_hashes`].
    Hash { paths: Vec<RelPath> },
    /// Stage content received from the compute side.
    Stage {
        path: RelPath,
        data: Vec<u8>,
        last: bool,
    },
    /// Apply with compare-and-swap, using staged content; steps on `skipped`
    /// paths and steps whose precondition fails are deferred →
    /// [`ProjectSession::handle_applied`].
    Apply {
        compute_id: u64,
        sync: u64,
        ops: Vec<ProjectOp>,
        skipped: Vec<RelPath>,
    },
    /// Stream these files as `FileData`/`FileSkipped` →
    /// [`ProjectSession::handle_files_sent`].
    SendFiles { files: Vec<(RelPath, Meta)> },
    /// Durably store the compute server's base at `epoch`: apply `updates`
    /// (`None` removes), after dropping everything first when `replace` →
    /// [`ProjectSession::handle_base_committed`].
    CommitBase {
        compute_id: u64,
        epoch: u64,
        replace: bool,
        updates: Vec<(RelPath, Option<BaseEntry>)>,
    },
    /// Every entry beneath the home except the reserved directory →
    /// [`ProjectSession::handle_index_snapshot`].
    IndexSnapshot,
    /// A piece of a `copy --to-project` entry: stage it; with `last`, put
    /// the entry at `path`, keeping a different project version in the
    /// conflicts area → [`ProjectSession::handle_copied_in`] (also, early,
    /// on a failure).
    CopyIn {
        compute_id: u64,
        id: u64,
        path: RelPath,
        meta: Meta,
        data: Vec<u8>,
        last: bool,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProjectEvent {
    Connected {
        compute_id: u64,
        full: bool,
    },
    SyncDone {
        compute_id: u64,
        sync: u64,
        epoch: u64,
        pushed: u64,
        pulled: u64,
        conflicts: Vec<RelPath>,
    },
    /// The answer to [`ProjectSession::request_remote`] `id`.
    RemoteDone {
        compute_id: u64,
        id: u64,
        result: Result<Vec<RemoteEntry>, String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProjectError {
    #[error("compute server speaks protocol {0}, this server {PROTOCOL_VERSION}")]
    BadVersion(u16),
    #[error("wrong token")]
    BadToken,
    #[error("unexpected {got} in state {state}")]
    Unexpected {
        got: &'static str,
        state: &'static str,
    },
    #[error("compute server sent an inconsistent change set: {0}")]
    BadChanges(String),
    #[error("compute server sent data for {0}, which the plan did not ask for")]
    UnwantedData(RelPath),
    #[error("compute server sent {what} for sync {got}, expected {expected}")]
    WrongSync {
        what: &'static str,
        got: u64,
        expected: u64,
    },
    #[error("no progress for {0:?}")]
    Timeout(Duration),
    #[error("compute server answered remote request {0}, which was never asked")]
    UnknownRemote(u64),
    #[error("compute id {0} is already connected: give each compute server its own --id")]
    ComputeIdInUse(u64),
    #[error("compute server sent a {what} this server cannot count past")]
    Overflow { what: &'static str },
    #[error("storage: {0}")]
    Storage(String),
    #[error("compute server sent a broken message: {0}")]
    Parts(PartsError),
}

impl ProjectError {
    fn code(&self) -> ErrorCode {
        match self {
            ProjectError::BadVersion(_) => ErrorCode::BadVersion,
            ProjectError::BadToken => ErrorCode::BadToken,
            ProjectError::Storage(_) => ErrorCode::Internal,
            ProjectError::ComputeIdInUse(_) => ErrorCode::ComputeIdInUse,
            ProjectError::Timeout(_) => ErrorCode::Protocol,
            _ => ErrorCode::Protocol,
        }
    }
}

#[derive(Debug)]
enum State {
    AwaitHello,
    LoadingBase { compute_epoch: u64 },
    Idle,
    Stating(Flight),
    Listing(Flight),
    Hashing(Flight),
    Receiving(Flight),
    Applying(Flight),
    Sending(Flight),
    AwaitApplied(Flight),
    Committing(Flight),
    AwaitAck(Flight),
    Closed,
}

impl State {
    fn name(&self) -> &'static str {
        match self {
            State::AwaitHello => "await-hello",
            State::LoadingBase { .. } => "loading-base",
            State::Idle => "idle",
            State::Stating(_) => "stating",
            State::Listing(_) => "listing",
            State::Hashing(_) => "hashing",
            State::Receiving(_) => "receiving",
            State::Applying(_) => "applying",
            State::Sending(_) => "sending",
            State::AwaitApplied(_) => "await-applied",
            State::Committing(_) => "committing",
            State::AwaitAck(_) => "await-ack",
            State::Closed => "closed",
        }
    }
}

/// One sync in flight.
#[derive(Debug, Default)]
struct Flight {
    sync: u64,
    changes: BTreeMap<RelPath, Change>,
    project: BTreeMap<RelPath, Option<Meta>>,
    inputs: Inputs,
    /// Hash answers still missing: from the compute side, from storage.
    awaiting_compute_hashes: bool,
    awaiting_local_hashes: bool,
    plan: Plan,
    want: BTreeSet<RelPath>,
    skipped: BTreeSet<RelPath>,
    deferred: BTreeSet<RelPath>,
    project_after: BTreeMap<RelPath, Option<Meta>>,
    epoch: u64,
}

pub struct ProjectSession {
    config: ProjectConfig,
    state: State,
    compute_id: u64,
    /// The Hello carried the right token and version.
    authenticated: bool,
    epoch: u64,
    full: bool,
    base: BTreeMap<RelPath, BaseEntry>,
    last_sync: u64,
    last_progress: Instant,
    io: VecDeque<ProjectIo>,
    transmit: Outbox,
    /// Joins the parts of big messages (once the peer is authenticated:
    /// nobody else may make this side hold anything).
    inbox: Inbox,
    events: VecDeque<ProjectEvent>,
    close: Option<ProjectError>,
    /// Remote operations asked and not answered yet.
    remote_pending: BTreeSet<u64>,
    next_remote: u64,
    /// `CopyIn` entries that failed (their later pieces are dropped).
    copies_failed: BTreeSet<u64>,
    /// The shell watches the home and reports its changes
    /// ([`ProjectSession::handle_watch_started`]).
    watched: bool,
    /// What changed in the home since the last sync stated it, as the
    /// watcher reported it (`true`: gone or no longer a directory, so its
    /// base descendants may have gone with it). `None` until a sync stated
    /// the whole base, and again after lost events: then the next sync
    /// states the whole base.
    project_changed: Option<BTreeMap<RelPath, bool>>,
}

impl ProjectSession {
    pub fn new(config: ProjectConfig, now: Instant) -> ProjectSession {
        ProjectSession {
            config,
            state: State::AwaitHello,
            compute_id: 0,
            authenticated: false,
            epoch: 0,
            full: false,
            base: BTreeMap::new(),
            last_sync: 0,
            last_progress: now,
            io: VecDeque::new(),
            transmit: Outbox::default(),
            inbox: Inbox::default(),
            events: VecDeque::new(),
            close: None,
            remote_pending: BTreeSet::new(),
            next_remote: 0,
            copies_failed: BTreeSet::new(),
            watched: false,
            project_changed: None,
        }
    }

    /// The shell watches the home from now on and reports every change it
    /// sees ([`ProjectSession::handle_index_delta`]) or that it lost some
    /// ([`ProjectSession::handle_index_rescan`]). After one sync stated the
    /// whole base, a sync states only the paths either side changed (with
    /// their ancestors, and the base beneath a path that went away), so
    /// its cost follows the changes, not the files.
    pub fn handle_watch_started(&mut self) {
        self.watched = true;
    }

    /// The watcher stopped: every sync states the whole base again.
    pub fn handle_watch_ended(&mut self) {
        self.watched = false;
        self.project_changed = None;
    }

    /// The paths a sync states: what the compute side reported, and every
    /// base path — or, once the watcher has reported every project change
    /// since the last such sync, only the base paths that either side
    /// changed, or that lie beneath a path that went away or stopped being
    /// a directory. Base paths outside those are unchanged on both sides:
    /// they decide nothing.
    fn paths_to_stat(&mut self, changes: &BTreeMap<RelPath, Change>) -> BTreeSet<RelPath> {
        let mut paths: BTreeSet<RelPath> = changes.keys().cloned().collect();
        let project_changed = match self.watched {
            true => self.project_changed.replace(BTreeMap::new()),
            false => None,
        };
        match project_changed {
            None => paths.extend(self.base.keys().cloned()),
            Some(project_changed) => {
                let compute_gone = changes.values().filter(
                    |change| !matches!(&change.state, Reported::Present(meta) if meta.is_dir()),
                );
                let gone: Vec<&RelPath> = compute_gone
                    .map(|change| &change.path)
                    .chain(project_changed.iter().filter(|(_, g)| **g).map(|(p, _)| p))
                    .collect();
                for root in gone {
                    paths.extend(base_beneath(&self.base, root).cloned());
                }
                paths.extend(project_changed.into_keys().filter(|p| !p.is_reserved()));
            }
        }
        let ancestors: Vec<RelPath> = paths.iter().flat_map(|p| p.ancestors()).collect();
        paths.extend(ancestors);
        paths
    }

    /// The compute server on the other end, once it said hello.
    pub fn compute_id(&self) -> Option<u64> {
        (!matches!(self.state, State::AwaitHello)).then_some(self.compute_id)
    }

    /// Did the peer prove it holds the token (its Hello was accepted)?
    pub fn is_authenticated(&self) -> bool {
        self.authenticated
    }

    /// How long the peer may take for any one step (the agent's bound on
    /// sending a frame, too).
    pub fn step_timeout(&self) -> Duration {
        self.config.step_timeout
    }

    /// The sync in flight (the last one once idle).
    pub fn current_sync(&self) -> u64 {
        self.last_sync
    }

    pub fn poll_io(&mut self) -> Option<ProjectIo> {
        self.io.pop_front()
    }

    pub fn poll_transmit(&mut self) -> Option<Message> {
        self.transmit.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<ProjectEvent> {
        self.events.pop_front()
    }

    pub fn poll_close(&mut self) -> Option<ProjectError> {
        self.close.take()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::Idle | State::Closed => None,
            _ => Some(self.last_progress + self.config.step_timeout),
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.poll_timeout().is_some_and(|t| now >= t) {
            self.abort(ProjectError::Timeout(self.config.step_timeout));
        }
    }

    pub fn handle_message(&mut self, now: Instant, message: Message) -> Result<(), ProjectError> {
        let message = if self.authenticated {
            match self.inbox.accept(message) {
                Ok(Some(whole)) => whole,
                Ok(None) => {
                    self.last_progress = now;
                    return Ok(());
                }
                Err(error) => {
                    let error = ProjectError::Parts(error);
                    self.abort(error.clone());
                    return Err(error);
                }
            }
        } else {
            message
        };
        // Answers to remote operations come whenever the compute server is
        // done with them: no sync step.
        if let Message::CopyIn {
            id,
            path,
            meta,
            data,
            last,
        } = message
        {
            if !self.welcomed() {
                let error = ProjectError::Unexpected {
                    got: "CopyIn",
                    state: self.state.name(),
                };
                self.abort(error.clone());
                return Err(error);
            }
            // Another compute server's base, staging or conflicts live
            // there: no peer may write into it.
            if path.is_reserved() {
                let why = format!("{path}: inside the reserved .unionsync directory, never copied");
                self.handle_copied_in(id, Err(why));
                return Ok(());
            }
            // The rest of an entry that already failed is dropped.
            if !self.copies_failed.contains(&id) {
                let compute_id = self.compute_id;
                self.io.push_back(ProjectIo::CopyIn {
                    compute_id,
                    id,
                    path,
                    meta,
                    data,
                    last,
                });
            }
            return Ok(());
        }
        if let Message::RemoteDone { id, result } = message {
            if self.welcomed() && self.remote_pending.remove(&id) {
                let compute_id = self.compute_id;
                self.events.push_back(ProjectEvent::RemoteDone {
                    compute_id,
                    id,
                    result,
                });
                return Ok(());
            }
            let error = ProjectError::UnknownRemote(id);
            self.abort(error.clone());
            return Err(error);
        }
        self.last_progress = now;
        let result = self.dispatch(message);
        if let Err(error) = &result {
            self.abort(error.clone());
        }
        result
    }

    /// A storage operation failed: tell the peer and close.
    pub fn handle_io_error(&mut self, error: String) {
        self.abort(ProjectError::Storage(error));
    }

    fn abort(&mut self, error: ProjectError) {
        self.io.clear();
        self.transmit.push_back(Message::Error {
            code: error.code(),
            message: error.to_string(),
        });
        self.state = State::Closed;
        self.close = Some(error);
    }

    fn dispatch(&mut self, message: Message) -> Result<(), ProjectError> {
        let state = std::mem::replace(&mut self.state, State::Closed);
        self.state = match (state, message) {
            (
                State::AwaitHello,
                Message::Hello {
                    version,
                    compute_id,
                    token,
                    epoch,
                },
            ) => {
                if version != PROTOCOL_VERSION {
                    return Err(ProjectError::BadVersion(version));
                }
                if !constant_time_eq(&token, &self.config.token) {
                    return Err(ProjectError::BadToken);
                }
                self.compute_id = compute_id;
                self.authenticated = true;
                self.io.push_back(ProjectIo::LoadBase { compute_id });
                State::LoadingBase {
                    compute_epoch: epoch,
                }
            }
            (
                State::Idle,
                Message::Changes {
                    sync,
                    epoch: _,
                    full,
                    changes,
                    ..
                },
            ) => {
                if sync <= self.last_sync {
                    return Err(ProjectError::WrongSync {
                        what: "Changes",
                        got: sync,
                        expected: self.last_sync.saturating_add(1),
                    });
                }
                if full != self.full {
                    return Err(ProjectError::BadChanges(
                        "full reconcile flag disagrees with Welcome".into(),
                    ));
                }
                self.last_sync = sync;
                let mut flight = Flight {
                    sync,
                    ..Flight::default()
                };
                for change in changes {
                    if change.path.is_reserved() {
                        return Err(ProjectError::BadChanges(format!(
                            "{} is reserved",
                            change.path
                        )));
                    }
                    flight.changes.insert(change.path.clone(), change);
                }
                let paths = self.paths_to_stat(&flight.changes);
                self.io.push_back(ProjectIo::Stat {
                    paths: paths.into_iter().collect(),
                });
                State::Stating(flight)
            }
            (State::Hashing(mut flight), Message::Hashes { sync, hashes, .. })
                if flight.awaiting_compute_hashes =>
            {
                check_sync("Hashes", sync, flight.sync)?;
                for (path, hash) in hashes {
                    if let Some(PathInput {
                        compute: Some(Reported::Present(meta)),
                        ..
                    }) = flight.inputs.get_mut(&path)
                    {
                        meta.hash = hash;
                    }
                }
                flight.awaiting_compute_hashes = false;
                self.plan_when_hashed(flight)?
            }
            (
                State::Receiving(flight),
                Message::FileData {
                    sync,
                    path,
                    data,
                    last,
                },
            ) => {
                check_sync("FileData", sync, flight.sync)?;
                if !flight.want.contains(&path) {
                    return Err(ProjectError::UnwantedData(path));
                }
                self.io.push_back(ProjectIo::Stage { path, data, last });
                State::Receiving(flight)
            }
            (State::Receiving(mut flight), Message::FileSkipped { sync, path }) => {
                check_sync("FileSkipped", sync, flight.sync)?;
                flight.skipped.insert(path);
                State::Receiving(flight)
            }
            (State::Receiving(flight), Message::DataDone { sync }) => {
                check_sync("DataDone", sync, flight.sync)?;
                self.io.push_back(ProjectIo::Apply {
                    compute_id: self.compute_id,
                    sync,
                    ops: flight.plan.project_ops.clone(),
                    skipped: flight.skipped.iter().cloned().collect(),
                });
                State::Applying(flight)
            }
            (
                State::AwaitApplied(flight),
                Message::ComputeApplied {
                    sync,
                    deferred,
                    upper,
                    ..
                },
            ) => {
                check_sync("ComputeApplied", sync, flight.sync)?;
                self.commit(flight, deferred, upper)?
            }
            (State::AwaitAck(flight), Message::CommitAck { sync, epoch }) => {
                check_sync("CommitAck", sync, flight.sync)?;
                let pushed = flight.plan.project_ops.len() as u64;
                let pulled = flight.plan.compute_ops.len() as u64;
                self.events.push_back(ProjectEvent::SyncDone {
                    compute_id: self.compute_id,
                    sync,
                    epoch,
                    pushed,
                    pulled,
                    conflicts: flight.plan.conflicts().cloned().collect(),
                });
                State::Idle
            }
            (state, Message::Error { code, message }) => {
                // The compute side gives up; nothing to answer.
                let _ = (state, code, message);
                self.io.clear();
                self.close = Some(ProjectError::Unexpected {
                    got: "Error",
                    state: "any",
                });
                State::Closed
            }
            (state, other) => {
                return Err(ProjectError::Unexpected {
                    got: message_name(&other),
                    state: state.name(),
                })
            }
        };
        Ok(())
    }

    pub fn handle_base(&mut self, now: Instant, epoch: u64, base: BTreeMap<RelPath, BaseEntry>) {
        let State::LoadingBase { compute_epoch } = self.state else {
            return;
        };
        self.last_progress = now;
        // The compute epoch is the peer's word: never add to it unchecked.
        let agree =
            compute_epoch == epoch || (epoch > 0 && compute_epoch.checked_add(1) == Some(epoch));
        self.full = !agree || epoch == 0;
        self.epoch = epoch.max(compute_epoch);
        // No sync could commit after this epoch: refuse before any applies.
        if self.epoch.checked_add(1).is_none() {
            return self.abort(ProjectError::Overflow { what: "base epoch" });
        }
        self.base = if self.full { BTreeMap::new() } else { base };
        self.transmit.push_back(Message::Welcome {
            epoch: self.epoch,
            full: self.full,
        });
        self.events.push_back(ProjectEvent::Connected {
            compute_id: self.compute_id,
            full: self.full,
        });
        self.state = State::Idle;
        if self.config.lower_index {
            self.io.push_back(ProjectIo::IndexSnapshot);
        }
    }

    /// Another live connection holds this compute id: refuse this one.
    pub fn handle_id_in_use(&mut self) {
        if matches!(self.state, State::LoadingBase { .. }) {
            self.abort(ProjectError::ComputeIdInUse(self.compute_id));
        }
    }

    /// Has the peer been welcomed (and may see the home's metadata)?
    fn welcomed(&self) -> bool {
        !matches!(
            self.state,
            State::AwaitHello | State::LoadingBase { .. } | State::Closed
        )
    }

    /// The whole index, as the store listed it.
    pub fn handle_index_snapshot(&mut self, entries: Vec<(RelPath, Meta)>) {
        if !self.welcomed() {
            return;
        }
        let more = false;
        self.transmit
            .push_back(Message::IndexSnapshot { entries, more });
    }

    /// Paths the watcher saw change (`None`: gone). Before Welcome they are
    /// dropped: the snapshot that follows Welcome covers them.
    pub fn handle_index_delta(&mut self, changes: Vec<(RelPath, Option<Meta>)>) {
        if let Some(project_changed) = &mut self.project_changed {
            for (path, meta) in &changes {
                let gone = !meta.as_ref().is_some_and(Meta::is_dir);
                *project_changed.entry(path.clone()).or_insert(false) |= gone;
            }
        }
        if !self.config.lower_index || !self.welcomed() || changes.is_empty() {
            return;
        }
        self.transmit.push_back(Message::IndexDelta { changes });
    }

    /// The outcome of a [`ProjectIo::CopyIn`] (`Ok` only for the last
    /// piece).
    pub fn handle_copied_in(&mut self, id: u64, result: Result<(), String>) {
        if result.is_err() {
            if !self.copies_failed.insert(id) {
                return;
            }
            self.io
                .retain(|io| !matches!(io, ProjectIo::CopyIn { id: other, .. } if *other == id));
        }
        if self.welcomed() {
            self.transmit.push_back(Message::CopyInDone { id, result });
        }
    }

    /// Asks the compute server to act on its view; the answer comes as
    /// [`ProjectEvent::RemoteDone`] with the returned id. `None` before the
    /// peer was welcomed.
    pub fn request_remote(&mut self, op: RemoteOp) -> Option<u64> {
        if !self.welcomed() {
            return None;
        }
        self.next_remote += 1;
        let id = self.next_remote;
        self.remote_pending.insert(id);
        self.transmit.push_back(Message::Remote { id, op });
        Some(id)
    }

    /// The watcher lost events: send the whole index again, and state the
    /// whole base at the next sync.
    pub fn handle_index_rescan(&mut self) {
        self.project_changed = None;
        if self.config.lower_index && self.welcomed() {
            self.io.push_back(ProjectIo::IndexSnapshot);
        }
    }

    pub fn handle_stats(&mut self, now: Instant, stats: Vec<(RelPath, Option<Meta>)>) {
        let State::Stating(mut flight) = std::mem::replace(&mut self.state, State::Closed) else {
            return self.wrong_io("stats");
        };
        self.last_progress = now;
        flight.project.extend(stats);
        let dirs: Vec<RelPath> = flight
            .project
            .iter()
            .filter(|(path, project)| {
                let compute = self.compute_report(&flight, path);
                needs_project_subtree(compute.as_ref(), project.as_ref())
            })
            .map(|(path, _)| path.clone())
            .collect();
        if dirs.is_empty() {
            self.state = self.build_inputs(flight);
        } else {
            self.io.push_back(ProjectIo::ListSubtrees { dirs });
            self.state = State::Listing(flight);
        }
    }

    pub fn handle_subtrees(&mut self, now: Instant, entries: Vec<(RelPath, Meta)>) {
        let State::Listing(mut flight) = std::mem::replace(&mut self.state, State::Closed) else {
            return self.wrong_io("subtrees");
        };
        self.last_progress = now;
        for (path, meta) in entries {
            flight.project.insert(path, Some(meta));
        }
        self.state = self.build_inputs(flight);
    }

    pub fn handle_hashes(&mut self, now: Instant, hashes: Vec<(RelPath, Option<ContentHash>)>) {
        let State::Hashing(mut flight) = std::mem::replace(&mut self.state, State::Closed) else {
            return self.wrong_io("hashes");
        };
        self.last_progress = now;
        for (path, hash) in hashes {
            if let Some(PathInput {
                project: Some(meta),
                ..
            }) = flight.inputs.get_mut(&path)
            {
                meta.hash = hash;
            }
        }
        flight.awaiting_local_hashes = false;
        match self.plan_when_hashed(flight) {
            Ok(state) => self.state = state,
            Err(error) => self.abort(error),
        }
    }

    pub fn handle_applied(
        &mut self,
        now: Instant,
        deferred: Vec<RelPath>,
        after: Vec<(RelPath, Option<Meta>)>,
    ) {
        let State::Applying(mut flight) = std::mem::replace(&mut self.state, State::Closed) else {
            return self.wrong_io("applied");
        };
        self.last_progress = now;
        flight.deferred.extend(deferred);
        flight.deferred.extend(flight.skipped.iter().cloned());
        // Preserving a loser leaves the path as it was: only steps that
        // change a path say what it holds now.
        let changed: BTreeSet<&RelPath> = flight
            .plan
            .project_ops
            .iter()
            .filter(|op| !matches!(op, ProjectOp::PreserveConflict { .. }))
            .map(ProjectOp::path)
            .collect();
        let after: Vec<(RelPath, Option<Meta>)> = after
            .into_iter()
            .filter(|(p, _)| changed.contains(p))
            .collect();
        flight.project_after.extend(after);
        let files: Vec<(RelPath, Meta)> = flight
            .plan
            .compute_ops
            .iter()
            .filter_map(|op| match op {
                ComputeOp::Take { path, meta, .. }
                    if meta.kind == Kind::File && !flight.deferred.contains(path) =>
                {
                    Some((path.clone(), meta.clone()))
                }
                _ => None,
            })
            .collect();
        self.io.push_back(ProjectIo::SendFiles { files });
        self.state = State::Sending(flight);
    }

    pub fn handle_files_sent(&mut self, now: Instant, skipped: Vec<RelPath>) {
        let State::Sending(mut flight) = std::mem::replace(&mut self.state, State::Closed) else {
            return self.wrong_io("files sent");
        };
        self.last_progress = now;
        flight.deferred.extend(skipped);
        self.transmit
            .push_back(Message::DataDone { sync: flight.sync });
        self.transmit.push_back(Message::ProjectApplied {
            sync: flight.sync,
            deferred: flight.deferred.iter().cloned().collect(),
            more: false,
        });
        self.state = State::AwaitApplied(flight);
    }

    pub fn handle_base_committed(&mut self, now: Instant) {
        let State::Committing(flight) = std::mem::replace(&mut self.state, State::Closed) else {
            return self.wrong_io("base committed");
        };
        self.last_progress = now;
        self.epoch = flight.epoch;
        self.full = false;
        self.transmit.push_back(Message::Commit {
            sync: flight.sync,
            epoch: flight.epoch,
        });
        self.state = State::AwaitAck(flight);
    }

    fn wrong_io(&mut self, what: &'static str) {
        // An IO result for a state we are not in is the agent's bug.
        self.abort(ProjectError::Unexpected {
            got: what,
            state: "io",
        });
    }

    /// What the compute side holds at `path`: its report, or else its
    /// unchanged upper copy from the base.
    fn compute_report(&self, flight: &Flight, path: &RelPath) -> Option<Reported> {
        match flight.changes.get(path) {
            Some(change) => Some(change.state.clone()),
            None => self
                .base
                .get(path)
                .map(|b| Reported::Present(b.compute.clone())),
        }
    }

    fn build_inputs(&mut self, mut flight: Flight) -> State {
        let inputs: Inputs = flight
            .project
            .iter()
            .map(|(path, project)| {
                let change = flight.changes.get(path);
                let input = PathInput {
                    base: self.base.get(path).cloned(),
                    seen: change.and_then(|c| c.seen.clone()),
                    seen_via_mount: change.is_some_and(|c| c.seen_via_mount),
                    compute: self.compute_report(&flight, path),
                    project: project.clone(),
                };
                (path.clone(), input)
            })
            .collect();
        let hash_paths: Vec<RelPath> = inputs
            .iter()
            .filter(|(_, input)| needs_hashes(input))
            .map(|(path, _)| path.clone())
            .collect();
        flight.inputs = inputs;
        if hash_paths.is_empty() {
            return match self.plan(flight) {
                Ok(state) => state,
                Err(error) => {
                    self.abort(error);
                    State::Closed
                }
            };
        }
        flight.awaiting_compute_hashes = true;
        flight.awaiting_local_hashes = true;
        self.transmit.push_back(Message::HashRequest {
            sync: flight.sync,
            paths: hash_paths.clone(),
            more: false,
        });
        self.io.push_back(ProjectIo::Hash { paths: hash_paths });
        State::Hashing(flight)
    }

    fn plan_when_hashed(&mut self, flight: Flight) -> Result<State, ProjectError> {
        if flight.awaiting_compute_hashes || flight.awaiting_local_hashes {
            return Ok(State::Hashing(flight));
        }
        self.plan(flight)
    }

    fn plan(&mut self, mut flight: Flight) -> Result<State, ProjectError> {
        let plan =
            reconcile(&flight.inputs).map_err(|e| ProjectError::BadChanges(e.to_string()))?;
        let want: Vec<(RelPath, Meta)> = plan
            .project_ops
            .iter()
            .filter_map(|op| match op {
                ProjectOp::Create { path, meta } | ProjectOp::Write { path, meta, .. } => {
                    Some((path, meta))
                }
                ProjectOp::PreserveConflict { path, compute } => Some((path, compute)),
                _ => None,
            })
            .filter(|(_, meta)| meta.kind == Kind::File)
            .map(|(p, m)| (p.clone(), m.clone()))
            .collect();
        flight.want = want.iter().map(|(p, _)| p.clone()).collect();
        self.transmit.push_back(Message::Plan {
            sync: flight.sync,
            ops: plan.compute_ops.clone(),
            want,
            conflicts: plan.conflicts().cloned().collect(),
            more: false,
        });
        flight.plan = plan;
        Ok(State::Receiving(flight))
    }

    fn commit(
        &mut self,
        mut flight: Flight,
        compute_deferred: Vec<RelPath>,
        upper: Vec<(RelPath, Option<Meta>)>,
    ) -> Result<State, ProjectError> {
        flight.deferred.extend(compute_deferred);
        let upper: BTreeMap<RelPath, Option<Meta>> = upper.into_iter().collect();
        let mut updates = Vec::new();
        for (path, resolution) in &flight.plan.resolutions {
            if flight.deferred.contains(path) {
                continue; // the old base stays: the path is decided again next time
            }
            let input = &flight.inputs[path];
            let compute_after = match upper.get(path) {
                Some(after) => after.clone(),
                None => match (resolution.view, &input.compute) {
                    (ComputeView::Upper, Some(Reported::Present(meta))) => Some(meta.clone()),
                    _ => None,
                },
            };
            let project_after = match flight.project_after.get(path) {
                Some(after) => after.clone(),
                None => input.project.clone(),
            };
            let entry = BaseEntry::after_sync(compute_after, project_after);
            if entry.as_ref() != self.base.get(path) {
                updates.push((path.clone(), entry));
            }
        }
        // `self.epoch` may be a peer's (its Hello's epoch when ahead).
        flight.epoch = self
            .epoch
            .checked_add(1)
            .ok_or(ProjectError::Overflow { what: "base epoch" })?;
        for (path, entry) in &updates {
            match entry {
                Some(entry) => self.base.insert(path.clone(), entry.clone()),
                None => self.base.remove(path),
            };
        }
        self.io.push_back(ProjectIo::CommitBase {
            compute_id: self.compute_id,
            epoch: flight.epoch,
            replace: self.full,
            updates,
        });
        Ok(State::Committing(flight))
    }
}

/// The base paths strictly beneath `root` (contiguous in path order).
fn base_beneath<'b>(
    base: &'b BTreeMap<RelPath, BaseEntry>,
    root: &'b RelPath,
) -> impl Iterator<Item = &'b RelPath> + 'b {
    use std::ops::Bound::{Excluded, Unbounded};
    base.range::<RelPath, _>((Excluded(root), Unbounded))
        .map(|(path, _)| path)
        .take_while(move |path| {
            let (path, root) = (path.as_bytes(), root.as_bytes());
            path.len() > root.len() && path.starts_with(root) && path[root.len()] == b'/'
        })
}

fn check_sync(what: &'static str, got: u64, expected: u64) -> Result<(), ProjectError> {
    if got == expected {
        Ok(())
    } else {
        Err(ProjectError::WrongSync {
            what,
            got,
            expected,
        })
    }
}

/// Token comparison whose time does not depend on where the bytes differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
