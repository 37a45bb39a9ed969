//! [`ComputeStore`] over an upper directory and a whiteouts directory (the
//! compute side without a mount: for tests, debugging, and the recovery
//! scan after an unclean stop).
//!
//! ```text
//! <upper>/…                              the compute side's own entries
//! <whiteouts>/<parent>/.wh.<name>        "<parent>/<name> was deleted here"
//! <state>/compute                        epoch + what the last commit recorded
//! <upper>/.unionsync/staging/            content received for the sync in flight
//! ```
//!
//! Changes are found by a scan compared with what the last commit recorded
//! (same machine, so `changed_since` may use mtime and ctime); the upper's
//! state after a sync's own steps is recorded at its commit, so those steps
//! are not reported back as changes.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use unionsync_core::{
    Change, ComputeOp, ContentHash, IndexUpdate, Meta, RelPath, RemoteEntry, RemoteOp, Reported,
};

use crate::beneath::{is_absent, Root, ShippedFile};
use crate::persist;
use crate::staging::{deferral, finish_dirs, still_matches, Deferred, Staging, StepResult};
use crate::store::{Applied, ComputeStore, StoreError, StoreResult};
use crate::union::journal::{Seen, SharedJournal};
use crate::union::layers::is_local_only;
use crate::union::MountLink;

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const STATE_FILE: &str = "compute";

/// Where the compute side keeps things.
#[derive(Clone, Debug)]
pub struct ComputeDirs {
    pub upper: PathBuf,
    pub whiteouts: PathBuf,
    /// The union's lower (the project home as mounted here), if any: new
    /// ancestors copied into the upper take their mode from it.
    pub lower: Option<PathBuf>,
    pub state: PathBuf,
    /// Paths that never sync (served from the upper alone by the mount).
    pub local_only: Vec<RelPath>,
}

impl ComputeDirs {
    /// State under `<upper>/.unionsync/state` (reserved: never synced).
    pub fn new(upper: &Path, whiteouts: &Path) -> ComputeDirs {
        ComputeDirs {
            upper: upper.to_path_buf(),
            whiteouts: whiteouts.to_path_buf(),
            lower: None,
            state: upper.join(".unionsync/state"),
            local_only: Vec::new(),
        }
    }
}

#[derive(Default, Serialize, Deserialize)]
struct ComputeState {
    epoch: u64,
    recorded: Vec<(RelPath, Reported)>,
    seen: Vec<(RelPath, Seen)>,
}

/// The whiteout marker of `path` inside the whiteouts directory.
pub fn whiteout_marker(path: &RelPath) -> io::Result<RelPath> {
    let mut name = WHITEOUT_PREFIX.to_vec();
    name.extend_from_slice(path.file_name());
    let marker = match path.parent() {
        Some(parent) => parent.join(&name),
        None => RelPath::new(name),
    };
    marker.map_err(|e| io::Error::other(format!("{path}: no whiteout possible: {e}")))
}

fn whiteout_of_marker(marker: &RelPath) -> Option<RelPath> {
    let name = marker.file_name().strip_prefix(WHITEOUT_PREFIX)?;
    match marker.parent() {
        Some(parent) => parent.join(name).ok(),
        None => RelPath::new(name.to_vec()).ok(),
    }
}

pub struct DiskComputeStore {
    upper: Root,
    whiteouts: Root,
    lower: Option<Root>,
    state: Root,
    local_only: Vec<RelPath>,
    staging: Staging,
    epoch: u64,
    recorded: BTreeMap<RelPath, Reported>,
    /// For changed paths with no record: what the lower showed when a scan
    /// first noticed the change. Kept until a commit covers the path, so a
    /// crash before that cannot replace it with a later project state.
    seen: BTreeMap<RelPath, Seen>,
    /// The live mount, when there is one: changes come from its journal,
    /// not a scan, and steps are applied under its lock.
    mount: Option<MountLink>,
    /// Scan once before trusting the journal (it did not survive the last
    /// stop, or this is the first start).
    recovering: bool,
    /// The state of every path of the sync in flight: as scanned, then as a
    /// step left it; recorded for the paths its commit names.
    pending: BTreeMap<RelPath, Reported>,
    /// Paths whose whiteout the sync dropped while the user re-created them.
    recreated: Vec<RelPath>,
}

impl DiskComputeStore {
    pub fn open(dirs: &ComputeDirs) -> io::Result<DiskComputeStore> {
        let upper = Root::create(&dirs.upper)?;
        let state = Root::create(&dirs.state)?;
        let saved = match persist::load::<ComputeState>(&state, STATE_FILE) {
            Ok(saved) => saved.unwrap_or_default(),
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                tracing::error!(error = %e, "unreadable compute state: full reconcile");
                ComputeState::default()
            }
            Err(e) => return Err(e),
        };
        let staging_dir = RelPath::new(".unionsync/staging").expect("valid constant");
        Ok(DiskComputeStore {
            staging: Staging::new(&upper, &staging_dir)?,
            upper,
            whiteouts: Root::create(&dirs.whiteouts)?,
            lower: dirs.lower.as_deref().map(Root::open).transpose()?,
            state,
            local_only: dirs.local_only.clone(),
            epoch: saved.epoch,
            recorded: saved.recorded.into_iter().collect(),
            seen: saved.seen.into_iter().collect(),
            mount: None,
            recovering: true,
            pending: BTreeMap::new(),
            recreated: Vec::new(),
        })
    }

    /// Syncs from `mount`'s journal from now on; `clean`: the journal
    /// holds every change since the last commit (it was saved at a clean
    /// stop), else the first sync also scans.
    pub fn with_mount(mut self, mount: MountLink, clean: bool) -> DiskComputeStore {
        self.mount = Some(mount);
        self.recovering = !clean;
        self
    }

    /// Every upper entry and whiteout as it is now.
    fn scan(&self) -> io::Result<BTreeMap<RelPath, Reported>> {
        let local = |path: &RelPath| is_local_only(&self.local_only, path);
        let mut now: BTreeMap<RelPath, Reported> = self
            .upper
            .walk(None)?
            .into_iter()
            .filter(|(path, _)| !local(path))
            .map(|(path, meta)| (path, Reported::Present(meta)))
            .collect();
        for (marker, meta) in self.whiteouts.walk(None)? {
            if let (false, Some(path)) = (meta.is_dir(), whiteout_of_marker(&marker)) {
                if !local(&path) {
                    now.entry(path).or_insert(Reported::Deleted);
                }
            }
        }
        Ok(now)
    }

    /// What the lower showed at a changed path this side has no record of:
    /// what a first edit or a deletion replaced, for a sync without a base.
    /// Noted the first time a scan sees the change (`fresh` tells whether
    /// it was just noted). A project change made between the user's change
    /// and that scan passes for what was replaced; the mount's journal notes
    /// it at the moment of the change instead.
    fn seen(
        &mut self,
        path: &RelPath,
        journaled: Option<&Seen>,
        fresh: &mut bool,
    ) -> io::Result<Seen> {
        if self.recorded.contains_key(path) {
            return Ok(Seen::nothing());
        }
        if let Some(seen) = self.seen.get(path) {
            return Ok(seen.clone());
        }
        if let Some(seen) = journaled {
            self.seen.insert(path.clone(), seen.clone());
            *fresh = true;
            return Ok(seen.clone());
        }
        // The project's own metadata (its index) where the mount has it:
        // the lower mount's is coarse (sshfs: whole seconds, fake ctime).
        let seen = match (&self.mount, &self.lower) {
            (Some(mount), _) => mount.lower_seen(path)?,
            (None, Some(lower)) => Seen {
                meta: lower.stat(path)?,
                via_mount: true,
            },
            (None, None) => Seen::nothing(),
        };
        self.seen.insert(path.clone(), seen.clone());
        *fresh = true;
        Ok(seen)
    }

    /// The journal's paths (with the ancestors the upper holds), each with
    /// its state in the upper now and what the lower showed before.
    fn journal_changes(&mut self, journal: &SharedJournal) -> io::Result<(u64, Vec<Change>)> {
        let (mark, journaled) = journal.lock().changes();
        let mut seen: BTreeMap<RelPath, Seen> = journaled.into_iter().collect();
        let ancestors: BTreeSet<RelPath> = seen.keys().flat_map(|p| p.ancestors()).collect();
        for ancestor in ancestors {
            if !seen.contains_key(&ancestor) && self.upper.stat(&ancestor)?.is_some() {
                seen.insert(ancestor, Seen::nothing());
            }
        }
        let mut changes = Vec::with_capacity(seen.len());
        for (path, seen) in seen {
            let state = self.reported(&path)?;
            if state == Reported::Lower && seen.meta.is_some() {
                // The user touched a lower path and nothing came of it: a
                // copy-up that failed (lower down, upper full). No change.
                tracing::info!(%path, "changed through the mount but neither copied up nor deleted: no change");
            }
            self.pending.insert(path.clone(), state.clone());
            changes.push(self.change(path, state, seen));
        }
        Ok((mark, changes))
    }

    fn save(&self) -> io::Result<()> {
        let state = ComputeState {
            epoch: self.epoch,
            recorded: self
                .recorded
                .iter()
                .map(|(p, s)| (p.clone(), s.clone()))
                .collect(),
            seen: self
                .seen
                .iter()
                .map(|(p, s)| (p.clone(), s.clone()))
                .collect(),
        };
        persist::save(&self.state, STATE_FILE, &state)
    }

    /// The upper's state of one path: an entry, a whiteout, or neither
    /// (the union shows the lower: never a deletion).
    fn reported(&self, path: &RelPath) -> io::Result<Reported> {
        let upper = self.upper.stat(path)?;
        let whiteout = upper.is_none() && self.whited_out(path)?;
        Ok(Reported::observe(upper, whiteout))
    }

    /// Is `path` deleted here by a whiteout of its own or of an ancestor?
    /// (A directory made again over a whiteout is opaque: what the user
    /// deleted beneath it stays deleted.)
    fn whited_out(&self, path: &RelPath) -> io::Result<bool> {
        for candidate in std::iter::once(path.clone()).chain(path.ancestors()) {
            if self
                .whiteouts
                .stat(&whiteout_marker(&candidate)?)?
                .is_some()
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The change to report for `path`; `seen` matters only where no
    /// record exists (with one, the base decides).
    fn change(&self, path: RelPath, state: Reported, seen: Seen) -> Change {
        let seen = match self.recorded.contains_key(&path) {
            true => Seen::nothing(),
            false => seen,
        };
        Change {
            path,
            state,
            seen: seen.meta,
            seen_via_mount: seen.via_mount,
        }
    }

    fn remove_whiteout(&self, path: &RelPath) -> io::Result<()> {
        match self.whiteouts.remove(&whiteout_marker(path)?, false) {
            Err(e) if is_absent(&e) => Ok(()),
            other => other,
        }
    }

    /// Makes every ancestor of `path` a directory in the upper (as the
    /// lower shows it, if there is one); returns those it created.
    fn ancestors_in_upper(&self, path: &RelPath) -> io::Result<Result<Vec<RelPath>, Deferred>> {
        let mut chain: Vec<RelPath> = path.ancestors().collect();
        chain.reverse();
        let mut created = Vec::new();
        for dir in chain {
            match self.upper.stat(&dir)? {
                Some(meta) if meta.is_dir() => continue,
                Some(_) => return Ok(Err(Deferred(format!("{path}: {dir} is not a directory")))),
                None => {}
            }
            if self.whiteouts.stat(&whiteout_marker(&dir)?)?.is_some() {
                return Ok(Err(Deferred(format!("{path}: {dir} was deleted here"))));
            }
            let mode = match &self.lower {
                None => 0o755,
                Some(lower) => match lower.stat(&dir)? {
                    Some(meta) if meta.is_dir() => meta.perm(),
                    _ => return Ok(Err(Deferred(format!("{path}: {dir} is not visible")))),
                },
            };
            if let Err(e) = self.upper.mkdir(&dir, mode) {
                return deferral(e, &dir).map(|r| r.map(|()| Vec::new()));
            }
            created.push(dir);
        }
        Ok(Ok(created))
    }

    fn step(
        &mut self,
        op: &ComputeOp,
        dirs: &mut Vec<(RelPath, u32)>,
        copied: &mut Vec<RelPath>,
    ) -> StepResult {
        match op {
            ComputeOp::Remove { path, expect } => {
                let now = self.upper.stat(path)?;
                if !still_matches(now.as_ref(), Some(expect)) {
                    return Ok(Err(Deferred(format!("{path}: changed since the plan"))));
                }
                match self.upper.remove(path, expect.is_dir()) {
                    Ok(()) => Ok(Ok(())),
                    Err(e) => deferral(e, path),
                }
            }
            ComputeOp::DropWhiteout { path } => {
                if self.upper.stat(path)?.is_some() {
                    // Re-created since the plan. This step only records that
                    // both sides agree the old entry is gone, which holds:
                    // deferring it would keep the old base, and the next sync
                    // would take the project's deletion (our own, pushed) for
                    // a conflict with the new entry. The new entry is a new
                    // change against "nothing there" instead.
                    tracing::debug!(%path, "re-created while its deletion synced");
                    if let Some(mount) = &self.mount {
                        mount.journal.lock().project_has_nothing(path);
                    }
                    self.recreated.push(path.clone());
                }
                if let Some(mount) = &self.mount {
                    // The project has nothing there any more (that is why the
                    // whiteout goes): the lower index must not show its old
                    // entry until the project's own news comes.
                    mount.project_agreed_gone(path);
                }
                self.remove_whiteout(path)?;
                Ok(Ok(()))
            }
            ComputeOp::Take { path, meta, expect } => {
                match self.ancestors_in_upper(path)? {
                    Ok(created) => copied.extend(created),
                    Err(deferred) => return Ok(Err(deferred)),
                }
                let upper = &self.upper;
                let placed =
                    self.staging
                        .install(upper, path, path, meta, expect.as_ref(), dirs)?;
                if placed.is_ok() {
                    self.remove_whiteout(path)?;
                }
                Ok(placed)
            }
        }
    }
}

fn differs(recorded: Option<&Reported>, now: &Reported) -> bool {
    match (recorded, now) {
        (Some(Reported::Present(then)), Reported::Present(now)) => now.changed_since(then),
        (Some(Reported::Deleted), Reported::Deleted) => false,
        _ => true,
    }
}

impl ComputeStore for DiskComputeStore {
    type Reader = ShippedFile;

    async fn load_epoch(&mut self) -> StoreResult<u64> {
        Ok(self.epoch)
    }

    async fn collect_changes(&mut self, full: bool) -> StoreResult<(u64, Vec<Change>)> {
        self.staging.clear()?;
        self.pending.clear();
        if let Some(mount) = &self.mount {
            mount.journal.rearm();
            let cached = mount.cache_reads();
            if cached > 0 {
                tracing::info!(
                    cached,
                    "lower files read since the last sync now cached locally"
                );
            }
            if !full && !self.recovering {
                // Under the union's lock: a change through the mount (a
                // rename copying a tree up, say) is seen whole or not at
                // all, never half made.
                let mount = mount.clone();
                let _exclusive = mount.exclusive();
                return Ok(self.journal_changes(&mount.journal)?);
            }
        }
        let (mark, journaled) = match &self.mount {
            Some(mount) => mount.journal.lock().changes(),
            None => (0, Vec::new()),
        };
        self.recovering = false;
        let now = self.scan()?;
        let mut paths: BTreeSet<&RelPath> = if full {
            now.keys().chain(self.recorded.keys()).collect()
        } else {
            let changed = now
                .iter()
                .filter(|(path, state)| differs(self.recorded.get(*path), state))
                .map(|(path, _)| path);
            let gone = self.recorded.keys().filter(|path| !now.contains_key(*path));
            changed.chain(gone).collect()
        };
        paths.extend(journaled.iter().map(|(path, _)| path));
        // Ancestors go along: only this side knows for sure what its upper
        // holds (see the model's `ComputeUnion::changes`).
        let ancestors: Vec<&RelPath> = paths
            .iter()
            .flat_map(|p| p.ancestors())
            .filter_map(|a| match now.get_key_value(&a) {
                Some((key, Reported::Present(_))) => Some(key),
                _ => None,
            })
            .collect();
        paths.extend(ancestors);
        let paths: Vec<RelPath> = paths.into_iter().cloned().collect();
        let journaled: BTreeMap<RelPath, Seen> = journaled.into_iter().collect();
        let mut changes = Vec::with_capacity(paths.len());
        let mut fresh = false;
        for path in paths {
            let state = match now.get(&path) {
                Some(state) => state.clone(),
                None => self.reported(&path)?,
            };
            if state == Reported::Lower && self.recorded.contains_key(&path) {
                // Recorded, yet neither in the upper nor whited out: not a
                // user's deletion (that leaves a whiteout). No change.
                tracing::info!(%path, "synced entry missing from the upper without a whiteout: no change");
            }
            let seen = self.seen(&path, journaled.get(&path), &mut fresh)?;
            if let Some(mount) = &self.mount {
                // From now on the journal alone says what to sync: what the
                // scan found must be in it, or a step of it that this sync
                // defers is never reported again. As a sync's own note, the
                // commit that covers it clears it.
                let mut journal = mount.journal.lock();
                if !journal.contains(&path) {
                    journal.note(&path, true, || seen.clone());
                }
            }
            changes.push(self.change(path.clone(), state.clone(), seen));
            self.pending.insert(path, state);
        }
        if fresh {
            self.save()?;
        }
        Ok((mark, changes))
    }

    async fn hashes(
        &mut self,
        paths: &[RelPath],
    ) -> StoreResult<Vec<(RelPath, Option<ContentHash>)>> {
        Ok(self.upper.hashes(paths)?)
    }

    async fn open_file(
        &mut self,
        path: &RelPath,
        expect: &Meta,
    ) -> StoreResult<Option<ShippedFile>> {
        Ok(self.upper.open_to_ship(path, expect)?)
    }

    async fn stage(&mut self, path: &RelPath, data: &[u8], last: bool) -> StoreResult<()> {
        Ok(self.staging.receive(path, data, last)?)
    }

    async fn apply(&mut self, ops: &[ComputeOp]) -> StoreResult<Applied> {
        let Some(mount) = self.mount.clone() else {
            return Ok(self.apply_steps(ops)?);
        };
        let changed: Vec<RelPath>;
        let applied = {
            let _exclusive = mount.exclusive();
            let applied = self.apply_steps(ops)?;
            changed = applied.after.iter().map(|(p, _)| p.clone()).collect();
            let mut journal = mount.journal.lock();
            for path in &changed {
                // A sync that never commits must report these again; an
                // entry the user re-created must be reported after it too.
                let by_sync = !self.recreated.contains(path);
                journal.note(path, by_sync, Seen::nothing);
            }
            applied
        };
        mount.invalidate(&changed);
        Ok(applied)
    }

    async fn remote(&mut self, op: RemoteOp) -> StoreResult<Vec<RemoteEntry>> {
        match &self.mount {
            Some(mount) => crate::view_ops::perform(&mount.mountpoint, &op).map_err(StoreError),
            None => Err(crate::store::no_mounted_view()),
        }
    }

    async fn update_index(&mut self, update: IndexUpdate) -> StoreResult<()> {
        if let Some(mount) = &self.mount {
            mount.update_index(update);
        }
        Ok(())
    }

    async fn commit(&mut self, epoch: u64, mark: u64, paths: &[RelPath]) -> StoreResult<()> {
        if let Some(mount) = &self.mount {
            mount.journal.lock().commit(mark, paths);
        }
        let agreed = self.commit_recorded(epoch, paths)?;
        if let Some(mount) = &self.mount {
            // The project now holds what was just recorded: tell the lower
            // index at once, or a path pushed a moment ago and deleted
            // before the project's own news arrives would get no whiteout
            // and come back through the lower.
            mount.project_agreed(&agreed);
        }
        Ok(())
    }
}

impl DiskComputeStore {
    fn apply_steps(&mut self, ops: &[ComputeOp]) -> io::Result<Applied> {
        self.staging.make_durable()?;
        self.recreated.clear();
        let mut applied = Applied::default();
        let mut done: Vec<RelPath> = Vec::new();
        let mut dirs = Vec::new();
        for op in ops {
            let path = op.path();
            let mut copied = Vec::new();
            match self.step(op, &mut dirs, &mut copied)? {
                Ok(()) => {
                    tracing::debug!(%op, "applied");
                    done.extend(copied);
                    done.push(path.clone());
                }
                Err(Deferred(why)) => {
                    tracing::info!(%why, "deferred to the next sync");
                    applied.deferred.push(path.clone());
                }
            }
        }
        finish_dirs(&self.upper, &mut dirs)?;
        self.staging.clear()?;
        done.dedup();
        let recreated = &self.recreated;
        for path in done {
            let state = self.reported(&path)?;
            let meta = state.present().cloned();
            // A re-created entry is recorded as what was agreed (nothing), so
            // that a scan reports it as new.
            let recorded = if recreated.contains(&path) {
                Reported::Lower
            } else {
                state
            };
            self.pending.insert(path.clone(), recorded);
            applied.after.push((path, meta));
        }
        Ok(applied)
    }

    /// Records the committed paths' states; returns those both sides now
    /// agree on (`None`: whited out). A path showing the lower is left out:
    /// whatever the project has there stands.
    fn commit_recorded(
        &mut self,
        epoch: u64,
        paths: &[RelPath],
    ) -> io::Result<Vec<(RelPath, Option<Meta>)>> {
        let mut agreed = Vec::with_capacity(paths.len());
        // What the recorded state describes must be on disk before it is.
        self.upper.sync_filesystem()?;
        for path in paths {
            let state = match self.pending.remove(path) {
                Some(state) => state,
                None => self.reported(path)?,
            };
            match state {
                Reported::Lower => {
                    self.recorded.remove(path);
                }
                state => {
                    agreed.push((path.clone(), state.present().cloned()));
                    self.recorded.insert(path.clone(), state);
                }
            }
            self.seen.remove(path);
        }
        self.pending.clear();
        self.epoch = epoch;
        self.save()?;
        Ok(agreed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whiteout_markers_round_trip_and_keep_parents_as_directories() {
        for path in ["a", "a/b", ".wh.x/y", "d/.wh.z"] {
            let path = RelPath::new(path).unwrap();
            let marker = whiteout_marker(&path).unwrap();
            assert_eq!(marker.parent(), path.parent());
            assert_eq!(whiteout_of_marker(&marker), Some(path));
        }
    }

    fn store(dir: &Path) -> DiskComputeStore {
        let mut dirs = ComputeDirs::new(&dir.join("upper"), &dir.join("whiteouts"));
        dirs.lower = Some(dir.join("lower"));
        DiskComputeStore::open(&dirs).unwrap()
    }

    fn seen_of(changes: &[Change], path: &str) -> Option<Meta> {
        let path = RelPath::new(path).unwrap();
        changes
            .iter()
            .find(|c| c.path == path)
            .unwrap()
            .seen
            .clone()
    }

    /// Regression: after a crash before the first commit, the restarted
    /// agent took the lower's *new* state for what the user's edit
    /// replaced, and pushed the edit over a project change.
    #[tokio::test]
    async fn what_an_edit_replaced_survives_a_crash_before_the_commit() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("lower")).unwrap();
        std::fs::create_dir_all(dir.path().join("upper")).unwrap();
        std::fs::write(dir.path().join("upper/f"), b"user").unwrap();
        let (_, changes) = store(dir.path()).collect_changes(false).await.unwrap();
        assert_eq!(seen_of(&changes, "f"), None, "the lower had no f");
        // The project creates f; the agent crashed before committing.
        std::fs::write(dir.path().join("lower/f"), b"project").unwrap();
        let (_, changes) = store(dir.path()).collect_changes(false).await.unwrap();
        assert_eq!(seen_of(&changes, "f"), None);
    }

    #[tokio::test]
    async fn a_committed_path_is_not_reported_again_until_it_changes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("lower")).unwrap();
        std::fs::create_dir_all(dir.path().join("upper")).unwrap();
        std::fs::write(dir.path().join("upper/f"), b"one").unwrap();
        let mut store = store(dir.path());
        let (mark, changes) = store.collect_changes(false).await.unwrap();
        let paths: Vec<RelPath> = changes.into_iter().map(|c| c.path).collect();
        store.commit(1, mark, &paths).await.unwrap();
        assert!(store.collect_changes(false).await.unwrap().1.is_empty());
        std::fs::write(dir.path().join("upper/f"), b"two!").unwrap();
        let (_, changes) = store.collect_changes(false).await.unwrap();
        assert_eq!(changes.len(), 1);
    }

    #[test]
    fn names_without_the_marker_prefix_are_not_whiteouts() {
        assert_eq!(whiteout_of_marker(&RelPath::new("a/b").unwrap()), None);
    }
}
