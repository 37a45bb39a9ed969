//! The change journal: every path changed through the mount since the last
//! commit, with what the lower showed before its first change. The compute
//! agent syncs from it instead of walking the upper.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::mpsc::UnboundedSender;

use serde::{Deserialize, Serialize};
use unionsync_core::{Meta, RelPath};

use crate::compute_agent::AgentCommand;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// What the lower showed before the first change (a sync without a base
    /// compares the project with it).
    pub seen: Seen,
    /// Bumped on every change, so a commit keeps entries changed since.
    pub seq: u64,
    /// The last change was a sync's own step: that sync's commit clears it.
    pub by_sync: bool,
    /// Created through the mount over nothing, and no sync has collected
    /// it since: it exists nowhere else, so removing it needs no whiteout.
    /// Cleared by [`Journal::changes`] (from then on the sync may have
    /// pushed it, and only a whiteout can record its deletion).
    pub created_here: bool,
}

/// What the lower showed at a path, and whether that came through the
/// lower mount (coarse metadata) rather than the project's index.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seen {
    pub meta: Option<Meta>,
    pub via_mount: bool,
}

impl Seen {
    pub fn nothing() -> Seen {
        Seen::default()
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Journal {
    entries: BTreeMap<RelPath, Entry>,
    seq: u64,
}

impl Journal {
    /// Notes a change of `path`; `seen` runs only for its first change
    /// since the last commit (it may cost a look at the lower).
    pub fn note(&mut self, path: &RelPath, by_sync: bool, seen: impl FnOnce() -> Seen) {
        self.note_entry(path, by_sync, false, seen);
    }

    /// Notes the creation of `path` through the mount where neither layer
    /// had anything (see [`Entry::created_here`]).
    pub fn note_created(&mut self, path: &RelPath) {
        self.note_entry(path, false, true, Seen::nothing);
    }

    fn note_entry(
        &mut self,
        path: &RelPath,
        by_sync: bool,
        created_here: bool,
        seen: impl FnOnce() -> Seen,
    ) {
        self.seq += 1;
        let seq = self.seq;
        match self.entries.get_mut(path) {
            Some(entry) => {
                entry.seq = seq;
                entry.by_sync = by_sync;
            }
            None => {
                let entry = Entry {
                    seen: seen(),
                    seq,
                    by_sync,
                    created_here,
                };
                self.entries.insert(path.clone(), entry);
            }
        }
    }

    /// Whether `path` exists only here (created over nothing since the
    /// last collection): its removal needs no whiteout.
    pub fn created_here(&self, path: &RelPath) -> bool {
        self.entries.get(path).is_some_and(|e| e.created_here)
    }

    /// The sync recorded that the project has nothing at `path`: a change
    /// journaled since compares with that, not with what the lower showed
    /// before.
    pub fn project_has_nothing(&mut self, path: &RelPath) {
        if let Some(entry) = self.entries.get_mut(path) {
            entry.seen = Seen::nothing();
        }
    }

    pub fn contains(&self, path: &RelPath) -> bool {
        self.entries.contains_key(path)
    }

    /// The journaled paths with what each replaced, and the mark a commit
    /// of them hands back. From now on the sync may push any of them, so
    /// none counts as existing only here any more.
    pub fn changes(&mut self) -> (u64, Vec<(RelPath, Seen)>) {
        let changes = self
            .entries
            .iter_mut()
            .map(|(path, entry)| {
                entry.created_here = false;
                (path.clone(), entry.seen.clone())
            })
            .collect();
        (self.seq, changes)
    }

    /// Drops `path` if no change came after `mark`: a path whose report
    /// says nothing changed (it shows the lower) needs no further sync.
    pub fn forget_unchanged(&mut self, mark: u64, path: &RelPath) {
        if self.entries.get(path).is_some_and(|e| e.seq <= mark) {
            self.entries.remove(path);
        }
    }

    /// Drops committed paths unless a user changed them after `mark`.
    pub fn commit(&mut self, mark: u64, paths: &[RelPath]) {
        for path in paths {
            if self
                .entries
                .get(path)
                .is_some_and(|e| e.seq <= mark || e.by_sync)
            {
                self.entries.remove(path);
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The journal as the mount's threads and the agent share it, and how a
/// user's change tells the agent to sync soon.
#[derive(Clone, Debug, Default)]
pub struct SharedJournal {
    journal: Arc<Mutex<Journal>>,
    /// Woken once per sync at most: set on the first user change after
    /// [`SharedJournal::rearm`].
    wake: Arc<Mutex<Option<UnboundedSender<AgentCommand>>>>,
    woken: Arc<AtomicBool>,
}

impl SharedJournal {
    pub fn new(journal: Journal) -> SharedJournal {
        SharedJournal {
            journal: Arc::new(Mutex::new(journal)),
            ..SharedJournal::default()
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, Journal> {
        // A panic while holding the lock left at worst one more entry; the
        // journal is still a valid over-approximation of what changed.
        self.journal
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Sends [`AgentCommand::Activity`] to `agent` on user changes (the
    /// schedule then syncs at its shortest interval).
    pub fn wake(&self, agent: UnboundedSender<AgentCommand>) {
        *self.wake.lock().unwrap_or_else(|p| p.into_inner()) = Some(agent);
    }

    /// A user changed something: wake the agent, once until re-armed.
    pub fn changed(&self) {
        if self.woken.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Some(agent) = &*self.wake.lock().unwrap_or_else(|p| p.into_inner()) {
            let _ = agent.send(AgentCommand::Activity);
        }
    }

    /// A sync is collecting changes: the next user change wakes again.
    pub fn rearm(&self) {
        self.woken.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> RelPath {
        RelPath::new(s).unwrap()
    }

    #[test]
    fn what_was_seen_is_taken_at_the_first_change_only() {
        let mut journal = Journal::default();
        let seen = Seen {
            meta: Some(Meta::file(0o644, 1, 1)),
            via_mount: false,
        };
        journal.note(&p("f"), false, || seen.clone());
        journal.note(&p("f"), false, || panic!("not asked again"));
        assert_eq!(journal.changes().1, vec![(p("f"), seen)]);
    }

    #[test]
    fn a_commit_keeps_paths_changed_after_its_mark() {
        let mut journal = Journal::default();
        journal.note(&p("a"), false, Seen::nothing);
        journal.note(&p("b"), false, Seen::nothing);
        let (mark, _) = journal.changes();
        journal.note(&p("b"), false, Seen::nothing);
        journal.commit(mark, &[p("a"), p("b")]);
        let paths: Vec<RelPath> = journal.changes().1.into_iter().map(|(p, _)| p).collect();
        assert_eq!(paths, vec![p("b")]);
    }

    #[test]
    fn the_agent_is_woken_once_per_sync_by_user_changes() {
        let shared = SharedJournal::default();
        let (agent, mut commands) = tokio::sync::mpsc::unbounded_channel();
        shared.wake(agent);
        shared.changed();
        shared.changed();
        assert!(matches!(commands.try_recv(), Ok(AgentCommand::Activity)));
        assert!(commands.try_recv().is_err(), "one wake until re-armed");
        shared.rearm();
        shared.changed();
        assert!(matches!(commands.try_recv(), Ok(AgentCommand::Activity)));
    }

    #[test]
    fn a_path_created_here_needs_a_whiteout_once_a_sync_collected_it() {
        let mut journal = Journal::default();
        journal.note_created(&p("tmp.o"));
        assert!(journal.created_here(&p("tmp.o")));
        journal.changes();
        assert!(
            !journal.created_here(&p("tmp.o")),
            "the sync may push it now"
        );
        journal.note_created(&p("tmp.o"));
        assert!(!journal.created_here(&p("tmp.o")));
    }

    #[test]
    fn a_change_to_a_lower_path_is_never_created_here() {
        let mut journal = Journal::default();
        journal.note(&p("f"), false, Seen::nothing);
        journal.note_created(&p("f"));
        assert!(!journal.created_here(&p("f")));
    }

    #[test]
    fn forgetting_an_unchanged_path_keeps_one_changed_after_the_mark() {
        let mut journal = Journal::default();
        journal.note(&p("a"), false, Seen::nothing);
        journal.note(&p("b"), false, Seen::nothing);
        let (mark, _) = journal.changes();
        journal.note(&p("b"), false, Seen::nothing);
        journal.forget_unchanged(mark, &p("a"));
        journal.forget_unchanged(mark, &p("b"));
        assert!(!journal.contains(&p("a")));
        assert!(journal.contains(&p("b")));
    }

    #[test]
    fn a_sync_step_after_the_mark_is_cleared_by_its_own_commit() {
        let mut journal = Journal::default();
        let (mark, _) = journal.changes();
        journal.note(&p("pulled"), true, Seen::nothing);
        journal.commit(mark, &[p("pulled")]);
        assert!(journal.is_empty());
    }
}
