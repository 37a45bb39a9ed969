//! The two session state machines talking to each other directly, with the
//! model's project home and compute union as their storage: the protocol
//! without a network.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use unionsync_core::model::{
    check_union_matches, ComputeUnion, Deferred, Mutation, ProjectHome, Staged,
};
use unionsync_core::{
    BaseEntry, ComputeConfig, ComputeEvent, ComputeIo, ComputeSession, ErrorCode, IndexUpdate,
    Message, Meta, ProjectConfig, ProjectEvent, ProjectIo, ProjectSession, RelPath, RemoteEntry,
    RemoteOp, Timing,
};

const CHUNK: usize = 3;

struct Pair {
    now: Instant,
    compute: ComputeSession,
    project: ProjectSession,
    project_config: ProjectConfig,
    union: ComputeUnion,
    home: ProjectHome,
    base: (u64, BTreeMap<RelPath, BaseEntry>),
    compute_epoch: u64,
    compute_staged: Staged,
    project_staged: Staged,
    events: Vec<ComputeEvent>,
    /// The index updates the compute side was asked to make.
    index_updates: Vec<IndexUpdate>,
    project_events: Vec<ProjectEvent>,
    /// What `copy_in` delivered to the project, by path.
    copied_in: BTreeMap<RelPath, Vec<u8>>,
    /// A change the user makes right before the next compute-side apply.
    before_compute_apply: Option<Mutation>,
    /// The paths of every `Stat` the project session asked for.
    stated: Vec<Vec<RelPath>>,
}

fn p(s: &str) -> RelPath {
    RelPath::new(s).expect("valid test path")
}

fn config(token: &[u8]) -> ComputeConfig {
    ComputeConfig {
        compute_id: 1,
        token: token.to_vec(),
        timing: Timing::default(),
        step_timeout: Duration::from_secs(30),
    }
}

impl Pair {
    fn new(token: &[u8]) -> Pair {
        Pair::with_index(token, false)
    }

    fn with_index(token: &[u8], lower_index: bool) -> Pair {
        let now = Instant::now();
        let project_config = ProjectConfig {
            token: b"secret".to_vec(),
            step_timeout: Duration::from_secs(30),
            lower_index,
        };
        Pair {
            now,
            compute: ComputeSession::new(config(token), 0, now),
            project: ProjectSession::new(project_config.clone(), now),
            project_config,
            union: ComputeUnion::new(false),
            home: ProjectHome::new(false),
            base: (0, BTreeMap::new()),
            compute_epoch: 0,
            compute_staged: Staged::new(),
            project_staged: Staged::new(),
            events: Vec::new(),
            index_updates: Vec::new(),
            project_events: Vec::new(),
            copied_in: BTreeMap::new(),
            before_compute_apply: None,
            stated: Vec::new(),
        }
    }

    /// Reconnects both sessions as the agents would after a restart.
    fn reconnect(&mut self) {
        self.project = ProjectSession::new(self.project_config.clone(), self.now);
        self.compute.handle_disconnected(self.now, "test");
        self.compute.handle_connected(self.now);
    }

    /// Moves messages and performs IO until both sides are quiet. Returns
    /// the messages the project sent, for assertions.
    fn pump(&mut self) -> Vec<Message> {
        let mut from_project = Vec::new();
        for _ in 0..10_000 {
            let mut busy = false;
            while let Some(io) = self.compute.poll_io() {
                busy = true;
                self.compute_io(io);
            }
            while let Some(io) = self.project.poll_io() {
                busy = true;
                self.project_io(io);
            }
            while let Some(m) = self.compute.poll_transmit() {
                busy = true;
                let _ = self.project.handle_message(self.now, framed(m));
            }
            while let Some(m) = self.project.poll_transmit() {
                busy = true;
                let m = framed(m);
                from_project.push(m.clone());
                let _ = self.compute.handle_message(self.now, m);
            }
            while let Some(e) = self.compute.poll_event() {
                self.events.push(e);
            }
            while let Some(e) = self.project.poll_event() {
                self.project_events.push(e);
            }
            if !busy {
                return from_project;
            }
        }
        panic!("sessions never went quiet");
    }

    fn sync(&mut self) {
        self.now += Duration::from_secs(60);
        self.compute.sync_now(self.now);
        self.pump();
    }

    fn compute_io(&mut self, io: ComputeIo) {
        let now = self.now;
        match io {
            ComputeIo::CollectChanges { full } => {
                let (mark, changes) = self.union.changes(full);
                self.compute.handle_changes(now, mark, changes);
            }
            ComputeIo::Hash { paths } => {
                let hashes = paths
                    .iter()
                    .map(|p| (p.clone(), self.union.hash(p)))
                    .collect();
                self.compute.handle_hashes(now, hashes);
            }
            ComputeIo::SendFiles { files } => {
                let mut skipped = Vec::new();
                for (path, meta) in files {
                    match self.union.read(&path, &meta) {
                        Some(data) => {
                            let sync = self.compute.current_sync();
                            for frame in file_frames(sync, &path, &data) {
                                self.project
                                    .handle_message(now, frame)
                                    .expect("project accepts the data");
                            }
                        }
                        None => skipped.push(path),
                    }
                }
                self.compute.handle_files_sent(now, skipped);
            }
            ComputeIo::Stage { path, data, .. } => {
                self.compute_staged.entry(path).or_default().extend(data);
            }
            ComputeIo::Apply { ops } => {
                // The user, between the plan and the compute side's steps.
                if let Some(m) = self.before_compute_apply.take() {
                    self.compute_writes(m);
                }
                let staged = std::mem::take(&mut self.compute_staged);
                let (mut deferred, mut after) = (Vec::new(), Vec::new());
                for op in &ops {
                    match self.union.apply(&self.home.tree, op, &staged) {
                        Ok(m) => after.extend(m),
                        Err(Deferred(_)) => deferred.push(op.path().clone()),
                    }
                }
                self.compute.handle_applied(now, deferred, after);
            }
            ComputeIo::Commit { epoch, mark, paths } => {
                self.union.commit(mark, &paths);
                self.compute_epoch = epoch;
                self.compute.handle_committed(now);
            }
            ComputeIo::UpdateIndex(update) => self.index_updates.push(update),
            ComputeIo::Remote { id, op } => {
                let answer = match op {
                    RemoteOp::List { .. } => Ok(vec![RemoteEntry {
                        name: b"listed".to_vec(),
                        meta: Meta::file(0o644, 1, 1),
                    }]),
                    _ => Err("refused by the test".to_string()),
                };
                self.compute.handle_remote_done(id, answer);
            }
        }
    }

    fn project_io(&mut self, io: ProjectIo) {
        let now = self.now;
        match io {
            ProjectIo::LoadBase { .. } => {
                self.project
                    .handle_base(now, self.base.0, self.base.1.clone());
            }
            ProjectIo::Stat { paths } => {
                self.stated.push(paths.clone());
                let stats = paths
                    .iter()
                    .map(|p| (p.clone(), self.home.meta(p)))
                    .collect();
                self.project.handle_stats(now, stats);
            }
            ProjectIo::ListSubtrees { dirs } => {
                let entries = dirs.iter().flat_map(|d| self.home.subtree(d)).collect();
                self.project.handle_subtrees(now, entries);
            }
            ProjectIo::Hash { paths } => {
                let hashes = paths
                    .iter()
                    .map(|p| (p.clone(), self.home.hash(p)))
                    .collect();
                self.project.handle_hashes(now, hashes);
            }
            ProjectIo::Stage { path, data, .. } => {
                self.project_staged.entry(path).or_default().extend(data);
            }
            ProjectIo::Apply {
                compute_id,
                ops,
                skipped,
                ..
            } => {
                let staged = std::mem::take(&mut self.project_staged);
                let (mut deferred, mut after) = (Vec::new(), Vec::new());
                for op in &ops {
                    if skipped.contains(op.path()) {
                        continue;
                    }
                    match self.home.apply(compute_id, op, &staged) {
                        Ok(m) => after.push((op.path().clone(), m)),
                        Err(Deferred(_)) => deferred.push(op.path().clone()),
                    }
                }
                self.project.handle_applied(now, deferred, after);
            }
            ProjectIo::SendFiles { files } => {
                let mut skipped = Vec::new();
                for (path, meta) in files {
                    match self.home.read(&path, &meta) {
                        Some(data) => {
                            let sync = self.project.current_sync();
                            for frame in file_frames(sync, &path, &data) {
                                self.compute
                                    .handle_message(now, frame)
                                    .expect("compute accepts the data");
                            }
                        }
                        None => skipped.push(path),
                    }
                }
                self.project.handle_files_sent(now, skipped);
            }
            ProjectIo::CommitBase {
                epoch,
                replace,
                updates,
                ..
            } => {
                if replace {
                    self.base.1.clear();
                }
                for (path, entry) in updates {
                    match entry {
                        Some(e) => self.base.1.insert(path, e),
                        None => self.base.1.remove(&path),
                    };
                }
                self.base.0 = epoch;
                self.project.handle_base_committed(now);
            }
            ProjectIo::CopyIn {
                id,
                path,
                data,
                last,
                ..
            } => {
                self.copied_in.entry(path.clone()).or_default().extend(data);
                if path.as_bytes() == b"refused" {
                    self.project
                        .handle_copied_in(id, Err("refused by the test".into()));
                } else if last {
                    self.project.handle_copied_in(id, Ok(()));
                }
            }
            ProjectIo::IndexSnapshot => {
                let entries = self
                    .home
                    .tree
                    .keys()
                    .filter_map(|p| Some((p.clone(), self.home.meta(p)?)))
                    .collect();
                self.project.handle_index_snapshot(entries);
            }
        }
    }

    fn compute_writes(&mut self, m: Mutation) {
        self.union.mutate(&self.home.tree, &m);
    }

    /// A project user changes `path`; the watcher reports `reported` (and
    /// their parents, as it does) with their state now.
    fn project_writes_watched(&mut self, m: Mutation, reported: &[&str]) {
        self.home.mutate(&m);
        let mut paths: Vec<RelPath> = reported.iter().map(|r| p(r)).collect();
        paths.extend(paths.clone().iter().filter_map(RelPath::parent));
        paths.sort();
        paths.dedup();
        let delta = paths
            .into_iter()
            .map(|path| {
                let meta = self.home.meta(&path);
                (path, meta)
            })
            .collect();
        self.project.handle_index_delta(delta);
    }

    /// The paths the last sync stated.
    fn last_stated(&self) -> Vec<RelPath> {
        self.stated.last().cloned().unwrap_or_default()
    }
}

/// A watched pair with `files` synced (the first sync stated everything).
fn watched_pair(files: &[&str]) -> Pair {
    let mut pair = Pair::new(b"secret");
    pair.project.handle_watch_started();
    pair.compute.handle_connected(pair.now);
    for file in files {
        pair.compute_writes(Mutation::Write(p(file), b"x".to_vec()));
    }
    pair.sync();
    pair
}

/// A file as the `FileData` frames a sender cuts it into.
/// `message` as the peer decodes it from its one frame.
fn framed(message: Message) -> Message {
    let frame = message.encode().expect("every message fits one frame");
    Message::decode(&frame).expect("every frame decodes")
}

fn file_frames(sync: u64, path: &RelPath, data: &[u8]) -> Vec<Message> {
    let chunks: Vec<&[u8]> = if data.is_empty() {
        vec![&[][..]]
    } else {
        data.chunks(CHUNK).collect()
    };
    let n = chunks.len();
    chunks
        .into_iter()
        .enumerate()
        .map(|(i, chunk)| Message::FileData {
            sync,
            path: path.clone(),
            data: chunk.to_vec(),
            last: i + 1 == n,
        })
        .collect()
}

#[test]
fn a_compute_write_reaches_the_project_and_both_sides_commit() {
    let mut pair = Pair::new(b"secret");
    pair.compute.handle_connected(pair.now);
    pair.compute_writes(Mutation::Write(p("dir/new.txt"), b"hello world".to_vec()));
    pair.sync();
    assert_eq!(
        pair.home.tree[&p("dir/new.txt")].content,
        unionsync_core::model::Content::File(b"hello world".to_vec())
    );
    assert_eq!((pair.base.0, pair.compute_epoch), (1, 1));
    check_union_matches(&pair.union, &pair.home).unwrap();
    assert!(pair.union.journal.is_empty());
}

#[test]
fn a_first_sync_of_300k_new_files_goes_in_frames_under_the_limit() {
    let mut pair = Pair::new(b"secret");
    pair.compute.handle_connected(pair.now);
    for i in 0..300_000 {
        let dir = format!("datasets/imagenet-train/d{:03}", i / 1000);
        let path = p(&format!("{dir}/sample-{i:06}-augmented.jpeg"));
        pair.compute_writes(Mutation::Write(path, Vec::new()));
    }
    pair.sync();
    assert_eq!(pair.compute_epoch, 1, "the sync committed");
    assert_eq!(pair.home.tree.len(), 300_000 + 300 + 2);
    check_union_matches(&pair.union, &pair.home).unwrap();
    assert!(pair.union.journal.is_empty());
}

#[test]
fn a_project_edit_reaches_the_upper_copy() {
    let mut pair = Pair::new(b"secret");
    pair.compute.handle_connected(pair.now);
    pair.compute_writes(Mutation::Write(p("f"), b"v1".to_vec()));
    pair.sync();
    pair.home
        .mutate(&Mutation::Write(p("f"), b"version two".to_vec()));
    pair.sync();
    check_union_matches(&pair.union, &pair.home).unwrap();
    assert_eq!(
        pair.union.upper[&p("f")].content,
        unionsync_core::model::Content::File(b"version two".to_vec())
    );
}

#[test]
fn a_conflict_keeps_the_project_version_and_preserves_the_compute_one() {
    let mut pair = Pair::new(b"secret");
    pair.compute.handle_connected(pair.now);
    pair.compute_writes(Mutation::Write(p("f"), b"base".to_vec()));
    pair.sync();
    pair.compute_writes(Mutation::Write(p("f"), b"compute".to_vec()));
    pair.home
        .mutate(&Mutation::Write(p("f"), b"project".to_vec()));
    pair.sync();
    check_union_matches(&pair.union, &pair.home).unwrap();
    let (_, path, node) = &pair.home.conflicts[0];
    assert_eq!(
        (path, &node.content),
        (
            &p("f"),
            &unionsync_core::model::Content::File(b"compute".to_vec())
        )
    );
}

#[test]
fn a_sync_with_no_changes_moves_no_data() {
    let mut pair = Pair::new(b"secret");
    pair.compute.handle_connected(pair.now);
    pair.compute_writes(Mutation::Write(p("f"), b"x".to_vec()));
    pair.sync();
    pair.now += Duration::from_secs(60);
    pair.compute.sync_now(pair.now);
    let sent = pair.pump();
    assert!(!sent.iter().any(|m| matches!(m, Message::FileData { .. })));
    match sent.iter().find(|m| matches!(m, Message::Plan { .. })) {
        Some(Message::Plan { ops, want, .. }) => assert!(ops.is_empty() && want.is_empty()),
        other => panic!("no plan: {other:?}"),
    }
}

#[test]
fn a_sync_hashes_no_file_that_neither_side_changed() {
    let mut pair = Pair::new(b"secret");
    pair.compute.handle_connected(pair.now);
    for name in ["a", "b", "c"] {
        pair.compute_writes(Mutation::Write(p(name), b"x".to_vec()));
    }
    pair.sync();
    // Same size and mode as before: only a hash tells the sides' content
    // apart, and only the changed file needs one.
    pair.compute_writes(Mutation::Write(p("a"), b"y".to_vec()));
    pair.now += Duration::from_secs(60);
    pair.compute.sync_now(pair.now);
    let sent = pair.pump();
    let asked: Vec<&Vec<RelPath>> = sent
        .iter()
        .filter_map(|m| match m {
            Message::HashRequest { paths, .. } => Some(paths),
            _ => None,
        })
        .collect();
    assert_eq!(asked, vec![&vec![p("a")]]);
    check_union_matches(&pair.union, &pair.home).unwrap();
}

#[test]
fn a_wrong_token_is_refused_and_changes_nothing() {
    let mut pair = Pair::new(b"wrong");
    pair.compute.handle_connected(pair.now);
    pair.compute_writes(Mutation::Write(p("f"), b"x".to_vec()));
    let sent = pair.pump();
    assert!(matches!(
        sent.as_slice(),
        [Message::Error {
            code: ErrorCode::BadToken,
            ..
        }]
    ));
    assert!(pair.home.tree.is_empty());
    assert_eq!(pair.base.0, 0);
}

#[test]
fn a_compute_side_that_lost_its_epoch_gets_a_full_reconcile_without_conflicts() {
    let mut pair = Pair::new(b"secret");
    pair.compute.handle_connected(pair.now);
    pair.compute_writes(Mutation::Write(p("f"), b"x".to_vec()));
    pair.sync();
    pair.compute_writes(Mutation::Write(p("g"), b"y".to_vec()));
    pair.sync();
    // The compute side's state directory is gone; its upper survived.
    pair.compute = ComputeSession::new(config(b"secret"), 0, pair.now);
    pair.reconnect();
    let sent = pair.pump();
    assert!(
        sent.iter()
            .any(|m| matches!(m, Message::Welcome { full: true, .. })),
        "{sent:?}"
    );
    assert!(
        sent.iter()
            .any(|m| matches!(m, Message::HashRequest { .. })),
        "equal content is proven by hashes"
    );
    check_union_matches(&pair.union, &pair.home).unwrap();
    assert_eq!(pair.home.tree.len(), 2, "nothing deleted");
    assert!(pair.home.conflicts.is_empty(), "{:?}", pair.home.conflicts);
}

#[test]
fn a_welcomed_compute_side_gets_the_whole_index_once() {
    let mut pair = Pair::with_index(b"secret", true);
    pair.compute_writes(Mutation::Write(p("a/b"), b"x".to_vec()));
    pair.compute.handle_connected(pair.now);
    pair.sync();
    pair.index_updates.clear();
    pair.reconnect();
    pair.pump();
    let [IndexUpdate::Snapshot(entries)] = pair.index_updates.as_slice() else {
        panic!("expected one snapshot, got {:?}", pair.index_updates);
    };
    let paths: Vec<_> = entries.iter().map(|(p, _)| p.to_string()).collect();
    assert_eq!(paths, ["a", "a/b"]);
}

#[test]
fn no_index_is_sent_unless_configured() {
    let mut pair = Pair::new(b"secret");
    pair.compute.handle_connected(pair.now);
    pair.sync();
    pair.project.handle_index_delta(vec![(p("x"), None)]);
    pair.pump();
    assert!(pair.index_updates.is_empty());
}

#[test]
fn index_deltas_reach_only_a_welcomed_peer() {
    let mut pair = Pair::with_index(b"secret", true);
    pair.project.handle_index_delta(vec![(p("early"), None)]);
    assert!(
        pair.project.poll_transmit().is_none(),
        "nothing before Hello"
    );
    pair.compute.handle_connected(pair.now);
    pair.pump();
    pair.index_updates.clear();
    let meta = Meta::file(0o644, 3, 7);
    pair.project
        .handle_index_delta(vec![(p("late"), Some(meta.clone()))]);
    pair.pump();
    assert_eq!(
        pair.index_updates,
        [IndexUpdate::Delta(vec![(p("late"), Some(meta))])]
    );
}

#[test]
fn a_rescan_sends_the_whole_index_again() {
    let mut pair = Pair::with_index(b"secret", true);
    pair.compute.handle_connected(pair.now);
    pair.pump();
    pair.index_updates.clear();
    pair.project.handle_index_rescan();
    pair.pump();
    assert!(matches!(
        pair.index_updates.as_slice(),
        [IndexUpdate::Snapshot(_)]
    ));
}

#[test]
fn snapshot_parts_are_assembled_before_the_update() {
    let mut compute = ComputeSession::new(config(b"secret"), 0, Instant::now());
    let now = Instant::now();
    compute.handle_connected(now);
    compute
        .handle_message(
            now,
            Message::Welcome {
                epoch: 0,
                full: true,
            },
        )
        .unwrap();
    while compute.poll_io().is_some() {}
    let part = |name: &str, more| Message::IndexSnapshot {
        entries: vec![(p(name), Meta::dir(0o755, 1))],
        more,
    };
    compute.handle_message(now, part("a", true)).unwrap();
    assert_eq!(compute.poll_io(), None, "no update before the last part");
    compute.handle_message(now, part("b", false)).unwrap();
    let Some(ComputeIo::UpdateIndex(IndexUpdate::Snapshot(entries))) = compute.poll_io() else {
        panic!("expected the assembled snapshot");
    };
    assert_eq!(entries.len(), 2);
}

#[test]
fn index_news_before_welcome_is_a_protocol_error() {
    let mut compute = ComputeSession::new(config(b"secret"), 0, Instant::now());
    let now = Instant::now();
    compute.handle_connected(now);
    let early = Message::IndexDelta { changes: vec![] };
    assert!(compute.handle_message(now, early).is_err());
}

#[test]
fn a_remote_request_is_answered_with_its_id() {
    let mut pair = Pair::new(b"secret");
    pair.compute.handle_connected(pair.now);
    pair.pump();
    let list = pair
        .project
        .request_remote(RemoteOp::List { path: None })
        .unwrap();
    let remove = pair
        .project
        .request_remote(RemoteOp::Remove {
            path: p("x"),
            recursive: false,
        })
        .unwrap();
    pair.pump();
    let answers: Vec<_> = pair
        .project_events
        .iter()
        .filter_map(|e| match e {
            ProjectEvent::RemoteDone { id, result, .. } => Some((*id, result.is_ok())),
            _ => None,
        })
        .collect();
    assert_eq!(
        answers,
        [(list, true), (remove, false)],
        "{:?}",
        pair.project_events
    );
}

#[test]
fn no_remote_request_before_the_peer_is_welcomed() {
    let mut pair = Pair::new(b"secret");
    assert_eq!(
        pair.project.request_remote(RemoteOp::List { path: None }),
        None
    );
}

#[test]
fn an_answer_to_a_request_never_made_closes_the_connection() {
    let mut pair = Pair::new(b"secret");
    pair.compute.handle_connected(pair.now);
    pair.pump();
    let forged = Message::RemoteDone {
        id: 42,
        result: Ok(vec![]),
    };
    assert!(pair.project.handle_message(pair.now, forged).is_err());
}

fn copied_outcomes(events: &[ComputeEvent]) -> Vec<(u64, bool)> {
    events
        .iter()
        .filter_map(|e| match e {
            ComputeEvent::CopiedIn { id, result } => Some((*id, result.is_ok())),
            _ => None,
        })
        .collect()
}

/// One whole entry for `copy --to-project`, as a single piece (the session
/// cuts it into chunks); `None` when not connected.
fn copy_in(session: &mut ComputeSession, path: RelPath, meta: Meta, data: Vec<u8>) -> Option<u64> {
    let id = session.start_copy_in()?;
    assert!(session.copy_in_piece(id, path, meta, data, true));
    Some(id)
}

#[test]
fn a_copy_in_arrives_whole_in_pieces_and_its_outcome_comes_back() {
    let mut pair = Pair::new(b"secret");
    pair.compute.handle_connected(pair.now);
    pair.pump();
    let data: Vec<u8> = (0..600_000u32).map(|i| i as u8).collect();
    let meta = Meta::file(0o644, data.len() as u64, 1);
    let id = copy_in(&mut pair.compute, p("big"), meta, data.clone()).unwrap();
    let sent = pair.pump();
    assert!(sent.iter().any(|m| matches!(m, Message::CopyInDone { .. })));
    assert_eq!(pair.copied_in[&p("big")], data);
    assert_eq!(copied_outcomes(&pair.events), [(id, true)]);
}

#[test]
fn a_failed_copy_in_is_answered_once_and_its_other_pieces_are_dropped() {
    let mut pair = Pair::new(b"secret");
    pair.compute.handle_connected(pair.now);
    pair.pump();
    let data = vec![7u8; 600_000];
    let meta = Meta::file(0o644, 600_000, 1);
    let id = copy_in(&mut pair.compute, p("refused"), meta, data).unwrap();
    let sent = pair.pump();
    let answers = sent
        .iter()
        .filter(|m| matches!(m, Message::CopyInDone { .. }))
        .count();
    assert_eq!(answers, 1);
    assert_eq!(
        pair.copied_in[&p("refused")].len(),
        256 << 10,
        "only the first piece"
    );
    assert_eq!(copied_outcomes(&pair.events), [(id, false)]);
}

#[test]
fn copies_pending_when_the_connection_drops_fail() {
    let mut pair = Pair::new(b"secret");
    pair.compute.handle_connected(pair.now);
    pair.pump();
    let id = pair.compute.start_copy_in().unwrap();
    pair.compute.handle_disconnected(pair.now, "test");
    while let Some(e) = pair.compute.poll_event() {
        pair.events.push(e);
    }
    assert_eq!(copied_outcomes(&pair.events), [(id, false)]);
    // The rest of the lost entry is refused, and no new one starts.
    let meta = Meta::file(0o644, 1, 1);
    assert!(!pair
        .compute
        .copy_in_piece(id, p("f"), meta, b"x".to_vec(), true));
    assert_eq!(pair.compute.start_copy_in(), None);
}

/// Regression (found by the sshfs end-to-end suite, `make clean && make`
/// while syncing): a file re-created while the sync pushing its deletion
/// runs is a new file, not a conflict with our own pushed deletion.
#[test]
fn a_file_recreated_while_its_deletion_syncs_is_pushed_without_a_conflict() {
    let mut pair = Pair::new(b"secret");
    pair.compute.handle_connected(pair.now);
    pair.compute_writes(Mutation::Write(p("build/x.o"), b"old".to_vec()));
    pair.sync();
    pair.compute_writes(Mutation::Remove(p("build/x.o")));
    pair.before_compute_apply = Some(Mutation::Write(p("build/x.o"), b"new".to_vec()));
    pair.sync();
    pair.sync();
    assert!(pair.home.conflicts.is_empty(), "{:?}", pair.home.conflicts);
    assert_eq!(
        pair.home.tree[&p("build/x.o")].content,
        unionsync_core::model::Content::File(b"new".to_vec())
    );
    check_union_matches(&pair.union, &pair.home).unwrap();
}

#[test]
fn a_watched_home_lets_a_sync_state_only_what_the_compute_side_changed() {
    let mut pair = watched_pair(&["a", "b", "d/e"]);
    pair.compute_writes(Mutation::Write(p("a"), b"new".to_vec()));
    pair.sync();
    assert_eq!(pair.last_stated(), vec![p("a")]);
    assert_eq!(
        pair.home.tree[&p("a")].content,
        unionsync_core::model::Content::File(b"new".to_vec())
    );
    check_union_matches(&pair.union, &pair.home).unwrap();
}

#[test]
fn an_idle_sync_of_a_watched_home_states_nothing() {
    let mut pair = watched_pair(&["a", "b", "d/e"]);
    pair.sync();
    assert_eq!(pair.last_stated(), Vec::<RelPath>::new());
}

#[test]
fn a_project_change_the_watcher_reported_is_pulled() {
    let mut pair = watched_pair(&["a", "b", "d/e"]);
    pair.project_writes_watched(Mutation::Write(p("d/e"), b"project".to_vec()), &["d/e"]);
    pair.sync();
    assert_eq!(pair.last_stated(), vec![p("d"), p("d/e")]);
    check_union_matches(&pair.union, &pair.home).unwrap();
}

#[test]
fn a_directory_the_watcher_reports_gone_takes_its_synced_files_with_it() {
    let mut pair = watched_pair(&["a", "d/e", "d/f/g"]);
    // Only the directory is reported: nothing remembers what it held.
    pair.project_writes_watched(Mutation::Remove(p("d")), &["d"]);
    pair.sync();
    assert!(
        pair.last_stated().contains(&p("d/f/g")),
        "{:?}",
        pair.last_stated()
    );
    check_union_matches(&pair.union, &pair.home).unwrap();
    assert!(!pair.union.upper.contains_key(&p("d/e")));
}

#[test]
fn after_lost_events_a_sync_states_the_whole_base_again() {
    let mut pair = watched_pair(&["a", "b"]);
    pair.project.handle_index_rescan();
    // Changed with no news (the news was lost).
    pair.home
        .mutate(&Mutation::Write(p("b"), b"project".to_vec()));
    pair.sync();
    check_union_matches(&pair.union, &pair.home).unwrap();
    pair.sync();
    assert_eq!(pair.last_stated(), Vec::<RelPath>::new(), "tracked again");
}

#[test]
fn without_a_watcher_every_sync_states_the_whole_base() {
    let mut pair = Pair::new(b"secret");
    pair.compute.handle_connected(pair.now);
    pair.compute_writes(Mutation::Write(p("a"), b"x".to_vec()));
    pair.compute_writes(Mutation::Write(p("b"), b"x".to_vec()));
    pair.sync();
    pair.home
        .mutate(&Mutation::Write(p("b"), b"project".to_vec()));
    pair.sync();
    assert_eq!(pair.last_stated(), vec![p("a"), p("b")]);
    check_union_matches(&pair.union, &pair.home).unwrap();
}
