//! In-memory stores for the simulated hosts, over the core's model of a
//! project home and a compute union.
//!
//! What a real disk keeps across a crash lives in [`Disks`] (shared by all
//! hosts, outside any host's software): the project home, each compute
//! server's base on the project side, each compute server's upper layer,
//! whiteouts, journal and committed epoch. What a process holds in memory
//! (staged content of a sync in flight) lives in the store value, which a
//! crash drops with the host's software.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use unionsync::store::{Applied, ComputeStore, ProjectStore, Snapshot, StoreResult};
use unionsync_core::model::{ComputeUnion, Deferred, Node, ProjectHome, Staged};
use unionsync_core::{BaseEntry, Change, ComputeOp, ContentHash, Meta, ProjectOp, RelPath};

/// Everything durable in the simulated world.
pub struct Disks {
    pub project: ProjectHome,
    /// Per compute id: committed epoch and base, as the project stores them.
    pub bases: BTreeMap<u64, (u64, BTreeMap<RelPath, BaseEntry>)>,
    /// Per compute id: the union and its committed epoch.
    pub computes: BTreeMap<u64, (ComputeUnion, u64)>,
    /// Structural violations seen while applying (checked at the end).
    pub violations: Vec<String>,
    /// Every step applied or deferred, for `--trace` (not hashed).
    pub steps: Vec<String>,
    /// Compute content that reached the project: (compute id, path, node).
    /// Once delivered, other users may rightly change or delete it.
    pub delivered: Vec<(u64, RelPath, Node)>,
}

pub type SharedDisks = Rc<RefCell<Disks>>;

pub struct SimProjectStore {
    disks: SharedDisks,
    /// Content received per compute server for the sync in flight, and the
    /// file still being received.
    staged: BTreeMap<u64, (Staged, Option<RelPath>)>,
}

impl SimProjectStore {
    pub fn new(disks: SharedDisks) -> SimProjectStore {
        SimProjectStore {
            disks,
            staged: BTreeMap::new(),
        }
    }
}

/// Appends a received chunk (chunks of one file arrive in order, files one
/// after another); a file's first chunk replaces what an older sync left.
fn stage_into(
    staged: &mut Staged,
    receiving: &mut Option<RelPath>,
    path: &RelPath,
    data: &[u8],
    last: bool,
) {
    if receiving.as_ref() != Some(path) {
        staged.insert(path.clone(), Vec::new());
    }
    staged
        .entry(path.clone())
        .or_default()
        .extend_from_slice(data);
    *receiving = (!last).then(|| path.clone());
}

impl Clone for SimProjectStore {
    /// Each connection gets its own staging; the disks are shared.
    fn clone(&self) -> SimProjectStore {
        SimProjectStore::new(self.disks.clone())
    }
}

impl ProjectStore for SimProjectStore {
    type Reader = Snapshot;

    async fn load_base(
        &mut self,
        compute_id: u64,
    ) -> StoreResult<(u64, BTreeMap<RelPath, BaseEntry>)> {
        self.staged.remove(&compute_id);
        Ok(self
            .disks
            .borrow()
            .bases
            .get(&compute_id)
            .cloned()
            .unwrap_or_default())
    }

    async fn stat(&mut self, paths: &[RelPath]) -> StoreResult<Vec<(RelPath, Option<Meta>)>> {
        let disks = self.disks.borrow();
        Ok(paths
            .iter()
            .map(|p| (p.clone(), disks.project.meta(p)))
            .collect())
    }

    async fn list_subtrees(&mut self, dirs: &[RelPath]) -> StoreResult<Vec<(RelPath, Meta)>> {
        let disks = self.disks.borrow();
        Ok(dirs.iter().flat_map(|d| disks.project.subtree(d)).collect())
    }

    async fn hashes(
        &mut self,
        paths: &[RelPath],
    ) -> StoreResult<Vec<(RelPath, Option<ContentHash>)>> {
        let disks = self.disks.borrow();
        Ok(paths
            .iter()
            .map(|p| (p.clone(), disks.project.hash(p)))
            .collect())
    }

    async fn open_file(&mut self, path: &RelPath, expect: &Meta) -> StoreResult<Option<Snapshot>> {
        Ok(self
            .disks
            .borrow()
            .project
            .read(path, expect)
            .map(Snapshot::new))
    }

    async fn stage(
        &mut self,
        compute_id: u64,
        path: &RelPath,
        data: &[u8],
        last: bool,
    ) -> StoreResult<()> {
        let (staged, receiving) = self.staged.entry(compute_id).or_default();
        stage_into(staged, receiving, path, data, last);
        Ok(())
    }

    async fn apply(
        &mut self,
        compute_id: u64,
        _sync: u64,
        ops: &[ProjectOp],
        skipped: &[RelPath],
    ) -> StoreResult<Applied> {
        let (staged, _) = self.staged.remove(&compute_id).unwrap_or_default();
        let mut disks = self.disks.borrow_mut();
        check_project_wins(ops, &mut disks.violations);
        let mut applied = Applied::default();
        for op in ops {
            if skipped.contains(op.path()) || applied.deferred.contains(op.path()) {
                continue;
            }
            match disks.project.apply(compute_id, op, &staged) {
                Ok(after) => {
                    disks
                        .steps
                        .push(format!("project for compute-{compute_id}: {op}"));
                    if let Some(node) = disks.project.tree.get(op.path()).cloned() {
                        disks.delivered.push((compute_id, op.path().clone(), node));
                    }
                    applied.after.push((op.path().clone(), after))
                }
                Err(Deferred(why)) => {
                    disks.steps.push(format!(
                        "project for compute-{compute_id}: deferred {op}: {why}"
                    ));
                    applied.deferred.push(op.path().clone())
                }
            }
        }
        Ok(applied)
    }

    async fn commit_base(
        &mut self,
        compute_id: u64,
        epoch: u64,
        replace: bool,
        updates: &[(RelPath, Option<BaseEntry>)],
    ) -> StoreResult<()> {
        let mut disks = self.disks.borrow_mut();
        let summary: Vec<String> = updates
            .iter()
            .map(|(p, e)| format!("{p}{}", if e.is_some() { "" } else { " (dropped)" }))
            .collect();
        disks.steps.push(format!(
            "project base for compute-{compute_id}: epoch {epoch}{} {}",
            if replace { " replace" } else { "" },
            summary.join(", ")
        ));
        let (stored_epoch, base) = disks.bases.entry(compute_id).or_default();
        if replace {
            base.clear();
        }
        for (path, entry) in updates {
            match entry {
                Some(entry) => base.insert(path.clone(), entry.clone()),
                None => base.remove(path),
            };
        }
        *stored_epoch = epoch;
        Ok(())
    }
}

/// Invariant 2, checked on every project-side step list: where the compute
/// version is preserved as a loser, the project's state is not replaced.
fn check_project_wins(ops: &[ProjectOp], violations: &mut Vec<String>) {
    for op in ops {
        if let ProjectOp::PreserveConflict { path, .. } = op {
            if ops
                .iter()
                .any(|o| o.path() == path && !matches!(o, ProjectOp::PreserveConflict { .. }))
            {
                violations.push(format!("{path}: conflict lost by the project"));
            }
        }
    }
}

pub struct SimComputeStore {
    disks: SharedDisks,
    id: u64,
    staged: Staged,
    receiving: Option<RelPath>,
}

impl SimComputeStore {
    pub fn new(disks: SharedDisks, id: u64) -> SimComputeStore {
        SimComputeStore {
            disks,
            id,
            staged: Staged::new(),
            receiving: None,
        }
    }

    fn with_union<T>(&self, f: impl FnOnce(&mut ComputeUnion, &ProjectHome) -> T) -> T {
        let mut disks = self.disks.borrow_mut();
        let Disks {
            project, computes, ..
        } = &mut *disks;
        let (union, _) = computes.get_mut(&self.id).expect("compute disk exists");
        f(union, project)
    }
}

impl ComputeStore for SimComputeStore {
    type Reader = Snapshot;

    async fn load_epoch(&mut self) -> StoreResult<u64> {
        Ok(self
            .disks
            .borrow()
            .computes
            .get(&self.id)
            .map_or(0, |(_, epoch)| *epoch))
    }

    async fn collect_changes(&mut self, full: bool) -> StoreResult<(u64, Vec<Change>)> {
        self.staged.clear();
        Ok(self.with_union(|union, _| union.changes(full)))
    }

    async fn hashes(
        &mut self,
        paths: &[RelPath],
    ) -> StoreResult<Vec<(RelPath, Option<ContentHash>)>> {
        Ok(self.with_union(|union, _| paths.iter().map(|p| (p.clone(), union.hash(p))).collect()))
    }

    async fn open_file(&mut self, path: &RelPath, expect: &Meta) -> StoreResult<Option<Snapshot>> {
        Ok(self.with_union(|union, _| union.read(path, expect).map(Snapshot::new)))
    }

    async fn stage(&mut self, path: &RelPath, data: &[u8], last: bool) -> StoreResult<()> {
        stage_into(&mut self.staged, &mut self.receiving, path, data, last);
        Ok(())
    }

    async fn apply(&mut self, ops: &[ComputeOp]) -> StoreResult<Applied> {
        let staged = std::mem::take(&mut self.staged);
        let id = self.id;
        let mut disks = self.disks.borrow_mut();
        let Disks {
            project,
            computes,
            steps,
            ..
        } = &mut *disks;
        let (union, _) = computes.get_mut(&id).expect("compute disk exists");
        let mut applied = Applied::default();
        for op in ops {
            match union.apply(&project.tree, op, &staged) {
                Ok(after) => {
                    steps.push(format!("compute-{id}: {op}"));
                    applied.after.extend(after)
                }
                Err(Deferred(why)) => {
                    steps.push(format!("compute-{id}: deferred {op}: {why}"));
                    applied.deferred.push(op.path().clone())
                }
            }
        }
        Ok(applied)
    }

    async fn commit(&mut self, epoch: u64, mark: u64, paths: &[RelPath]) -> StoreResult<()> {
        let mut disks = self.disks.borrow_mut();
        let (union, stored) = disks
            .computes
            .get_mut(&self.id)
            .expect("compute disk exists");
        union.commit(mark, paths);
        *stored = epoch;
        Ok(())
    }
}
