//! The compute side of the protocol: when to sync, and what to do at each
//! step of one. Sans-IO: the agent feeds it messages, IO results and time,
//! and polls it for messages, IO requests and events.
//!
//! ```text
//! agent loop:
//!   session.handle_connected(now)                 on a new connection
//!   session.handle_message(now, msg)?             for every frame received
//!   session.handle_timeout(now)                   when poll_timeout() passes
//!   while let Some(io) = session.poll_io()        do it, then handle_<io>(…)
//!   while let Some(msg) = session.poll_transmit() send it
//!   while let Some(ev) = session.poll_event()     log / status
//! ```
//!
//! The compute side keeps no base: the project holds it. It keeps a journal
//! of paths changed since the last commit and the epoch of that commit.

use std::collections::{BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::meta::{ContentHash, Meta};
use crate::parts::{Inbox, Outbox, PartsError, PART_BYTES};
use crate::path::RelPath;
use crate::plan::ComputeOp;
use crate::schedule::{Schedule, Timing};
use crate::wire::{Change, ErrorCode, Message, RemoteEntry, RemoteOp, CHUNK_LEN, PROTOCOL_VERSION};

#[derive(Clone, Debug)]
pub struct ComputeConfig {
    pub compute_id: u64,
    pub token: Vec<u8>,
    pub timing: Timing,
    /// A sync that makes no progress for this long fails.
    pub step_timeout: Duration,
}

/// Work for the agent's storage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ComputeIo {
    /// Report every journaled path (or, `full`, every upper entry and
    /// whiteout) → [`ComputeSession::handle_changes`], with a journal mark
    /// that [`ComputeIo::Commit`] hands back.
    CollectChanges { full: bool },
    /// → [`ComputeSession::handle_hashes`].
    Hash { paths: Vec<RelPath> },
    /// Stream these files to the peer as `FileData` (or `FileSkipped` where
    /// the file no longer matches or changed while read), then call
    /// [`ComputeSession::handle_files_sent`].
    SendFiles { files: Vec<(RelPath, Meta)> },
    /// Stage received content for a later `Take`.
    Stage {
        path: RelPath,
        data: Vec<u8>,
        last: bool,
    },
    /// Apply the steps with compare-and-swap, using staged content; a step
    /// whose precondition fails is deferred. Journal every path a step
    /// changes as changed by the sync, so a sync that never commits is
    /// re-reported → [`ComputeSession::handle_applied`].
    Apply { ops: Vec<ComputeOp> },
    /// Durably record `epoch` and drop `paths` from the journal where their
    /// entry is not newer than `mark` or was made by this sync's own apply
    /// → [`ComputeSession::handle_committed`].
    Commit {
        epoch: u64,
        mark: u64,
        paths: Vec<RelPath>,
    },
    /// Update the lower metadata index the union answers from (no answer
    /// expected; a failure is not a failed sync).
    UpdateIndex(IndexUpdate),
    /// Perform the project's operation on the view →
    /// [`ComputeSession::handle_remote_done`].
    Remote { id: u64, op: RemoteOp },
}

/// A change to the lower metadata index, as the project pushed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IndexUpdate {
    /// The whole index, replacing any earlier one.
    Snapshot(Vec<(RelPath, Meta)>),
    /// These paths changed (`None`: gone, with everything below).
    Delta(Vec<(RelPath, Option<Meta>)>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ComputeEvent {
    SyncStarted {
        sync: u64,
    },
    SyncDone(SyncReport),
    SyncFailed {
        error: String,
    },
    /// Too many failures in a row: no syncs until `clear_error`.
    Paused,
    /// The outcome of [`ComputeSession::start_copy_in`] `id`.
    CopiedIn {
        id: u64,
        result: Result<(), String>,
    },
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncReport {
    pub sync: u64,
    pub epoch: u64,
    pub files_sent: u64,
    pub files_received: u64,
    pub bytes_received: u64,
    pub compute_steps: u64,
    pub conflicts: Vec<RelPath>,
    pub deferred: Vec<RelPath>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    #[default]
    Disconnected,
    Handshake,
    Idle,
    Collecting,
    Planning,
    Hashing,
    Sending,
    Receiving,
    Applying,
    Committing,
}

/// A snapshot for `unionsync status` (the default: not connected yet).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComputeStatus {
    pub phase: Phase,
    pub connected: bool,
    pub epoch: u64,
    pub files_done: u64,
    pub files_total: u64,
    pub bytes_done: u64,
    pub last_sync: Option<SyncReport>,
    pub last_error: Option<String>,
    pub failures_in_a_row: u32,
    pub paused: bool,
    /// Time until the next sync, when one is scheduled.
    pub next_sync_in: Option<Duration>,
}

/// Why the session wants the connection closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    #[error("project refused the connection ({code:?}): {message}")]
    Refused { code: ErrorCode, message: String },
    #[error("unexpected {got} while {phase:?}")]
    Unexpected { got: &'static str, phase: Phase },
    #[error("message for sync {got}, expected sync {expected}")]
    WrongSync { got: u64, expected: u64 },
    #[error("no progress for {0:?}")]
    Timeout(Duration),
    #[error("project sent a broken message: {0}")]
    Parts(PartsError),
}

/// One sync in flight.
#[derive(Debug, Default)]
struct InFlight {
    sync: u64,
    mark: u64,
    reported: Vec<RelPath>,
    /// Paths the compute side's own steps changed.
    applied: Vec<RelPath>,
    ops: Vec<ComputeOp>,
    deferred: BTreeSet<RelPath>,
    report: SyncReport,
}

pub struct ComputeSession {
    config: ComputeConfig,
    schedule: Schedule,
    phase: Phase,
    /// The last committed epoch (0: none).
    epoch: u64,
    /// The project asked for a full reconcile.
    full: bool,
    next_sync: u64,
    flight: Option<InFlight>,
    last_progress: Instant,
    last_sync: Option<SyncReport>,
    last_error: Option<String>,
    files_total: u64,
    io: VecDeque<ComputeIo>,
    transmit: Outbox,
    /// Joins the parts of big messages.
    inbox: Inbox,
    events: VecDeque<ComputeEvent>,
    /// Set when the session wants the agent to close the connection.
    close: Option<SessionError>,
    /// `copy_in`s sent and not answered yet.
    copies_pending: BTreeSet<u64>,
    next_copy: u64,
}

impl ComputeSession {
    /// `epoch` is the last committed epoch from durable state (0: none).
    pub fn new(config: ComputeConfig, epoch: u64, now: Instant) -> ComputeSession {
        ComputeSession {
            schedule: Schedule::new(config.timing.clone(), now),
            config,
            phase: Phase::Disconnected,
            epoch,
            full: false,
            next_sync: 1,
            flight: None,
            last_progress: now,
            last_sync: None,
            last_error: None,
            files_total: 0,
            io: VecDeque::new(),
            transmit: Outbox::default(),
            inbox: Inbox::default(),
            events: VecDeque::new(),
            close: None,
            copies_pending: BTreeSet::new(),
            next_copy: 0,
        }
    }

    pub fn handle_connected(&mut self, now: Instant) {
        self.phase = Phase::Handshake;
        self.last_progress = now;
        self.close = None;
        self.transmit.clear();
        self.inbox.clear();
        self.transmit.push_back(Message::Hello {
            version: PROTOCOL_VERSION,
            compute_id: self.config.compute_id,
            token: self.config.token.clone(),
            epoch: self.epoch,
        });
    }

    /// The outcome of a [`ComputeIo::Remote`], for the project.
    pub fn handle_remote_done(&mut self, id: u64, result: Result<Vec<RemoteEntry>, String>) {
        // One answer is one frame: a listing too long for it is refused.
        let result = match result {
            Ok(entries) if crate::parts::encoded_len(&entries) > PART_BYTES => Err(format!(
                "{} entries are too many to list in one answer: list a subdirectory",
                entries.len()
            )),
            other => other,
        };
        if !matches!(self.phase, Phase::Disconnected | Phase::Handshake) {
            self.transmit.push_back(Message::RemoteDone { id, result });
        }
    }

    /// Starts one entry for `unionsync copy --to-project`: the project puts
    /// it at `path` whatever the sync state (its own version, if different,
    /// goes to its conflicts area). Its pieces follow through
    /// [`ComputeSession::copy_in_piece`]; the outcome comes as
    /// [`ComputeEvent::CopiedIn`] with the returned id. `None` when not
    /// connected.
    pub fn start_copy_in(&mut self) -> Option<u64> {
        if matches!(self.phase, Phase::Disconnected | Phase::Handshake) {
            return None;
        }
        self.next_copy += 1;
        let id = self.next_copy;
        self.copies_pending.insert(id);
        Some(id)
    }

    /// Queues the next piece of copy `id`, cut into chunks of at most
    /// [`CHUNK_LEN`]; `last` on the final piece (a symlink or directory is
    /// one piece with no data). The caller feeds a file piece by piece as
    /// it reads it, once the previous pieces were transmitted, so a big
    /// file is never queued whole. `false` (nothing queued) once `id` is
    /// no longer pending: it was answered (failed) or the connection was
    /// lost.
    pub fn copy_in_piece(
        &mut self,
        id: u64,
        path: RelPath,
        meta: Meta,
        data: Vec<u8>,
        last: bool,
    ) -> bool {
        if !self.copies_pending.contains(&id) {
            return false;
        }
        if data.len() <= CHUNK_LEN {
            self.transmit.push_back(Message::CopyIn {
                id,
                path,
                meta,
                data,
                last,
            });
            return true;
        }
        let mut chunks = data.chunks(CHUNK_LEN).peekable();
        while let Some(chunk) = chunks.next() {
            self.transmit.push_back(Message::CopyIn {
                id,
                path: path.clone(),
                meta: meta.clone(),
                data: chunk.to_vec(),
                last: last && chunks.peek().is_none(),
            });
        }
        true
    }

    pub fn handle_disconnected(&mut self, now: Instant, reason: &str) {
        for id in std::mem::take(&mut self.copies_pending) {
            self.events.push_back(ComputeEvent::CopiedIn {
                id,
                result: Err(format!("connection lost: {reason}")),
            });
        }
        if self.flight.is_some() {
            self.fail(now, format!("connection lost: {reason}"), false);
        }
        self.phase = Phase::Disconnected;
        self.io.clear();
        self.transmit.clear();
        self.inbox.clear();
    }

    pub fn sync_now(&mut self, now: Instant) {
        self.schedule.sync_now(now);
        self.maybe_start(now);
    }

    pub fn clear_error(&mut self, now: Instant) {
        self.schedule.clear_error(now);
        self.last_error = None;
        self.maybe_start(now);
    }

    /// A local write happened: sync soon.
    pub fn handle_activity(&mut self, now: Instant) {
        self.schedule.activity(now);
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.flight.is_some() && now >= self.last_progress + self.config.step_timeout {
            let error = SessionError::Timeout(self.config.step_timeout);
            self.fail(now, error.to_string(), true);
            self.close = Some(error);
            return;
        }
        self.maybe_start(now);
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        match (&self.flight, self.phase) {
            (Some(_), _) => Some(self.last_progress + self.config.step_timeout),
            (None, Phase::Idle) => self.schedule.next(),
            _ => None,
        }
    }

    pub fn poll_io(&mut self) -> Option<ComputeIo> {
        self.io.pop_front()
    }

    pub fn poll_transmit(&mut self) -> Option<Message> {
        self.transmit.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<ComputeEvent> {
        self.events.pop_front()
    }

    /// `Some` once the session wants the connection closed (the error says
    /// why); queued messages should still be sent first.
    pub fn poll_close(&mut self) -> Option<SessionError> {
        self.close.take()
    }

    /// How long the peer may take for any one step (the agent's bound on
    /// sending a frame, too).
    pub fn step_timeout(&self) -> Duration {
        self.config.step_timeout
    }

    /// The sync in flight (0: none).
    pub fn current_sync(&self) -> u64 {
        self.flight.as_ref().map_or(0, |f| f.sync)
    }

    pub fn status(&self, now: Instant) -> ComputeStatus {
        let report = self.flight.as_ref().map(|f| &f.report);
        ComputeStatus {
            phase: self.phase,
            connected: self.phase != Phase::Disconnected,
            epoch: self.epoch,
            files_done: report.map_or(0, |r| r.files_sent.saturating_add(r.files_received)),
            files_total: self.files_total,
            bytes_done: report.map_or(0, |r| r.bytes_received),
            last_sync: self.last_sync.clone(),
            last_error: self.last_error.clone(),
            failures_in_a_row: self.schedule.failures(),
            paused: self.schedule.is_paused(),
            next_sync_in: self
                .schedule
                .next()
                .filter(|_| self.flight.is_none())
                .map(|next| next.saturating_duration_since(now)),
        }
    }

    pub fn handle_message(&mut self, now: Instant, message: Message) -> Result<(), SessionError> {
        let message = match self.inbox.accept(message) {
            Ok(Some(whole)) => whole,
            Ok(None) => {
                self.last_progress = now;
                return Ok(());
            }
            Err(error) => return Err(self.refuse(now, SessionError::Parts(error))),
        };
        // Index news comes whenever the project sees a change: it says
        // nothing about a sync's progress.
        match message {
            Message::IndexSnapshot { entries, .. } if self.phase != Phase::Handshake => {
                self.io
                    .push_back(ComputeIo::UpdateIndex(IndexUpdate::Snapshot(entries)));
                return Ok(());
            }
            Message::IndexDelta { changes } if self.phase != Phase::Handshake => {
                self.io
                    .push_back(ComputeIo::UpdateIndex(IndexUpdate::Delta(changes)));
                return Ok(());
            }
            Message::Remote { id, op } if self.phase != Phase::Handshake => {
                self.io.push_back(ComputeIo::Remote { id, op });
                return Ok(());
            }
            Message::CopyInDone { id, result } if self.copies_pending.remove(&id) => {
                self.events.push_back(ComputeEvent::CopiedIn { id, result });
                return Ok(());
            }
            _ => {}
        }
        self.last_progress = now;
        self.dispatch(now, message)
            .map_err(|error| self.refuse(now, error))
    }

    /// Ends the sync and the connection over `error` from the peer.
    fn refuse(&mut self, now: Instant, error: SessionError) -> SessionError {
        // Refusals (a wrong token, say) and protocol errors count as failed
        // syncs, so a broken setup pauses instead of looping. But for a busy
        // id: the project may still hold this server's own previous
        // connection (half-open) until it times out, so reconnecting must
        // not end in a pause.
        let busy_id = matches!(
            error,
            SessionError::Refused {
                code: ErrorCode::ComputeIdInUse,
                ..
            }
        );
        self.fail(now, error.to_string(), !busy_id);
        self.close = Some(error.clone());
        error
    }

    fn dispatch(&mut self, now: Instant, message: Message) -> Result<(), SessionError> {
        match message {
            Message::Welcome { epoch: _, full } if self.phase == Phase::Handshake => {
                self.full = full;
                self.phase = Phase::Idle;
                self.maybe_start(now);
            }
            Message::HashRequest { sync, paths, .. } if self.phase == Phase::Planning => {
                self.check_sync(sync)?;
                self.phase = Phase::Hashing;
                self.io.push_back(ComputeIo::Hash { paths });
            }
            Message::Plan {
                sync,
                ops,
                want,
                conflicts,
                ..
            } if self.phase == Phase::Planning => {
                self.check_sync(sync)?;
                let flight = self.flight_mut();
                flight.report.conflicts = conflicts;
                flight.report.files_sent = want.len() as u64;
                flight.ops = ops;
                self.files_total = want.len() as u64;
                self.phase = Phase::Sending;
                self.io.push_back(ComputeIo::SendFiles { files: want });
            }
            Message::FileData {
                sync,
                path,
                data,
                last,
            } if self.phase == Phase::Receiving => {
                self.check_sync(sync)?;
                let report = &mut self.flight_mut().report;
                // Counters of what the peer sent: saturate, never wrap.
                report.bytes_received = report.bytes_received.saturating_add(data.len() as u64);
                report.files_received = report.files_received.saturating_add(u64::from(last));
                self.io.push_back(ComputeIo::Stage { path, data, last });
            }
            // The project lists the path in `ProjectApplied`'s deferred, so
            // its `Take` is dropped (content staged before this is unused).
            Message::FileSkipped { sync, .. } if self.phase == Phase::Receiving => {
                self.check_sync(sync)?;
            }
            Message::DataDone { sync } if self.phase == Phase::Receiving => {
                self.check_sync(sync)?;
            }
            Message::ProjectApplied { sync, deferred, .. } if self.phase == Phase::Receiving => {
                self.check_sync(sync)?;
                let flight = self.flight_mut();
                // A path the project could not settle (its conflict loser not
                // preserved, say) keeps its compute state until next time.
                flight.deferred.extend(deferred);
                let ops: Vec<ComputeOp> = std::mem::take(&mut flight.ops)
                    .into_iter()
                    .filter(|op| !flight.deferred.contains(op.path()))
                    .collect();
                flight.report.compute_steps = ops.len() as u64;
                self.phase = Phase::Applying;
                self.io.push_back(ComputeIo::Apply { ops });
            }
            Message::Commit { sync, epoch } if self.phase == Phase::Committing => {
                self.check_sync(sync)?;
                let flight = self.flight_mut();
                flight.report.epoch = epoch;
                let paths = flight
                    .reported
                    .iter()
                    .chain(&flight.applied)
                    .filter(|p| !flight.deferred.contains(*p))
                    .cloned()
                    .collect();
                let mark = flight.mark;
                self.io.push_back(ComputeIo::Commit { epoch, mark, paths });
            }
            Message::Error { code, message } => {
                return Err(SessionError::Refused { code, message });
            }
            other => {
                return Err(SessionError::Unexpected {
                    got: message_name(&other),
                    phase: self.phase,
                })
            }
        }
        Ok(())
    }

    pub fn handle_changes(&mut self, now: Instant, mark: u64, changes: Vec<Change>) {
        let Some(flight) = self
            .flight
            .as_mut()
            .filter(|_| self.phase == Phase::Collecting)
        else {
            return;
        };
        self.last_progress = now;
        flight.mark = mark;
        flight.reported = changes.iter().map(|c| c.path.clone()).collect();
        self.transmit.push_back(Message::Changes {
            sync: flight.sync,
            epoch: self.epoch,
            full: self.full,
            changes,
            more: false,
        });
        self.phase = Phase::Planning;
    }

    pub fn handle_hashes(&mut self, now: Instant, hashes: Vec<(RelPath, Option<ContentHash>)>) {
        let Some(flight) = self
            .flight
            .as_ref()
            .filter(|_| self.phase == Phase::Hashing)
        else {
            return;
        };
        self.last_progress = now;
        self.transmit.push_back(Message::Hashes {
            sync: flight.sync,
            hashes,
            more: false,
        });
        self.phase = Phase::Planning;
    }

    /// The agent shipped the files of `SendFiles`; `skipped` of them could
    /// not be shipped as planned.
    pub fn handle_files_sent(&mut self, now: Instant, skipped: Vec<RelPath>) {
        let Some(flight) = self
            .flight
            .as_mut()
            .filter(|_| self.phase == Phase::Sending)
        else {
            return;
        };
        self.last_progress = now;
        flight.report.files_sent = flight
            .report
            .files_sent
            .saturating_sub(skipped.len() as u64);
        flight.deferred.extend(skipped);
        self.transmit
            .push_back(Message::DataDone { sync: flight.sync });
        self.phase = Phase::Receiving;
    }

    pub fn handle_applied(
        &mut self,
        now: Instant,
        deferred: Vec<RelPath>,
        upper: Vec<(RelPath, Option<Meta>)>,
    ) {
        let Some(flight) = self
            .flight
            .as_mut()
            .filter(|_| self.phase == Phase::Applying)
        else {
            return;
        };
        self.last_progress = now;
        flight.deferred.extend(deferred.iter().cloned());
        flight.applied = upper.iter().map(|(path, _)| path.clone()).collect();
        self.transmit.push_back(Message::ComputeApplied {
            sync: flight.sync,
            deferred,
            upper,
            more: false,
        });
        self.phase = Phase::Committing;
    }

    pub fn handle_committed(&mut self, now: Instant) {
        if self.phase != Phase::Committing {
            return;
        }
        let Some(mut flight) = self.flight.take() else {
            return;
        };
        self.epoch = flight.report.epoch;
        self.full = false;
        self.transmit.push_back(Message::CommitAck {
            sync: flight.sync,
            epoch: self.epoch,
        });
        flight.report.sync = flight.sync;
        flight.report.deferred = flight.deferred.into_iter().collect();
        let report = flight.report;
        let moved = report.files_sent > 0
            || report.files_received > 0
            || report.compute_steps > 0
            || !flight.reported.is_empty();
        self.schedule.succeeded(now, moved);
        self.last_error = None;
        self.last_sync = Some(report.clone());
        self.events.push_back(ComputeEvent::SyncDone(report));
        self.phase = Phase::Idle;
        self.files_total = 0;
    }

    /// A storage operation failed: the sync fails, the connection stays.
    pub fn handle_io_error(&mut self, now: Instant, error: String) {
        if self.flight.is_some() {
            self.fail(now, format!("local storage: {error}"), true);
            // The project is mid-sync too; closing resets both sides.
            self.close = Some(SessionError::Unexpected {
                got: "storage error",
                phase: self.phase,
            });
        }
    }

    fn maybe_start(&mut self, now: Instant) {
        if self.phase != Phase::Idle || self.flight.is_some() || !self.schedule.is_due(now) {
            return;
        }
        let sync = self.next_sync;
        self.next_sync += 1;
        self.flight = Some(InFlight {
            sync,
            ..InFlight::default()
        });
        self.last_progress = now;
        self.phase = Phase::Collecting;
        self.events.push_back(ComputeEvent::SyncStarted { sync });
        self.io
            .push_back(ComputeIo::CollectChanges { full: self.full });
    }

    /// Ends the sync in flight, if any. `counts` says whether this is a
    /// failure of the sync itself (backs off, may pause) rather than a lost
    /// connection (the agent reconnects; syncing resumes by itself).
    fn fail(&mut self, now: Instant, error: String, counts: bool) {
        self.flight = None;
        // Only the sync's own work goes; the project's requests stay.
        self.io
            .retain(|io| matches!(io, ComputeIo::UpdateIndex(_) | ComputeIo::Remote { .. }));
        if counts {
            self.schedule.failed(now);
        }
        self.last_error = Some(error.clone());
        self.events.push_back(ComputeEvent::SyncFailed { error });
        if counts && self.schedule.is_paused() {
            self.events.push_back(ComputeEvent::Paused);
        }
        if self.phase != Phase::Disconnected {
            self.phase = Phase::Idle;
        }
        self.files_total = 0;
    }

    fn check_sync(&self, sync: u64) -> Result<(), SessionError> {
        let expected = self.flight.as_ref().map_or(0, |f| f.sync);
        if sync == expected {
            Ok(())
        } else {
            Err(SessionError::WrongSync {
                got: sync,
                expected,
            })
        }
    }

    fn flight_mut(&mut self) -> &mut InFlight {
        // Every phase past Collecting is entered with a sync in flight, and
        // dispatch only calls this in those phases.
        self.flight.as_mut().expect("sync in flight")
    }
}

pub(crate) fn message_name(message: &Message) -> &'static str {
    match message {
        Message::Hello { .. } => "Hello",
        Message::Welcome { .. } => "Welcome",
        Message::Changes { .. } => "Changes",
        Message::HashRequest { .. } => "HashRequest",
        Message::Hashes { .. } => "Hashes",
        Message::Plan { .. } => "Plan",
        Message::Archive { .. } => "Archive",
        Message::FileData { .. } => "FileData",
        Message::FileSkipped { .. } => "FileSkipped",
        Message::DataDone { .. } => "DataDone",
        Message::ProjectApplied { .. } => "ProjectApplied",
        Message::ComputeApplied { .. } => "ComputeApplied",
        Message::Commit { .. } => "Commit",
        Message::CommitAck { .. } => "CommitAck",
        Message::IndexSnapshot { .. } => "IndexSnapshot",
        Message::IndexDelta { .. } => "IndexDelta",
        Message::Remote { .. } => "Remote",
        Message::RemoteDone { .. } => "RemoteDone",
        Message::CopyIn { .. } => "CopyIn",
        Message::CopyInDone { .. } => "CopyInDone",
        Message::Error { .. } => "Error",
    }
}
