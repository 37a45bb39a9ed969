//! An in-memory model of both sides, for property tests and fuzzing
//! (feature `model`).
//!
//! The project is a plain tree. The compute side is an upper tree and a set
//! of whiteouts over the project as its lower, with union semantics as the
//! FUSE layer has them: copy-up of ancestors and of modified lower files,
//! whiteouts for deleted lower paths, and a journal of what the compute saw
//! in the lower before it first changed a path. Both sides run the same
//! [`Mutation`]s, each with its own clock (both start at the same value, so a
//! decision that compared timestamps across sides would show).
//!
//! A [`World::sync`] builds [`Inputs`] as the project side will, plans,
//! applies the plan with compare-and-swap checks, and records the new base.
//! The `check_*` functions state the invariants.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};

use crate::meta::{ContentHash, Meta, Sameness};
use crate::path::RelPath;
use crate::plan::{reconcile, ComputeOp, Plan, ProjectOp};
use crate::reconcile::{needs_project_subtree, BaseEntry, Decision, Inputs, PathInput, Reported};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Content {
    File(Vec<u8>),
    Dir,
    Symlink(Vec<u8>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub content: Content,
    pub mode: u32,
    pub mtime: i64,
    /// Set by the side that stores the node, on every change.
    pub ctime: i64,
}

impl Node {
    /// This node's metadata; files carry a hash when `hashes` is set.
    pub fn meta(&self, hashes: bool) -> Meta {
        match &self.content {
            Content::File(data) => {
                let meta =
                    Meta::file(self.mode, data.len() as u64, self.mtime).with_ctime(self.ctime);
                if hashes {
                    meta.with_hash(hash_of(data))
                } else {
                    meta
                }
            }
            Content::Dir => Meta::dir(self.mode, self.mtime),
            Content::Symlink(target) => Meta::symlink(target.clone(), self.mtime),
        }
    }

    fn is_dir(&self) -> bool {
        self.content == Content::Dir
    }

    /// Content and mode: what a user would call "the same file".
    fn same_as(&self, other: &Node) -> bool {
        let mode_counts = !matches!(self.content, Content::Symlink(_));
        self.content == other.content && (!mode_counts || self.mode == other.mode)
    }
}

fn hash_of(data: &[u8]) -> ContentHash {
    let mut out = [0u8; 32];
    for (i, chunk) in out.chunks_mut(8).enumerate() {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (i, data).hash(&mut h);
        chunk.copy_from_slice(&h.finish().to_le_bytes());
    }
    ContentHash(out)
}

/// A user action on one side.
#[derive(Clone, Debug)]
pub enum Mutation {
    /// Create or overwrite a file (a directory there is removed first),
    /// creating missing parent directories.
    Write(RelPath, Vec<u8>),
    /// `mkdir -p` (a non-directory there is removed first).
    Mkdir(RelPath),
    /// `rm -r`.
    Remove(RelPath),
    Chmod(RelPath, u32),
    /// Create or retarget a symlink (a directory there is removed first).
    Symlink(RelPath, Vec<u8>),
    /// Move a file or directory tree, replacing what is at the destination.
    Rename(RelPath, RelPath),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Actor {
    Compute,
    Project,
}

/// What a side's mutations see: its whole tree, however stored.
trait Fs {
    fn get(&self, path: &RelPath) -> Option<Node>;
    fn put(&mut self, path: &RelPath, node: Node);
    fn remove(&mut self, path: &RelPath);
    /// Every visible descendant of `path`, parents first.
    fn descendants(&self, path: &RelPath) -> Vec<RelPath>;
    fn tick(&mut self) -> i64;
}

/// Both sides, the base, the compute journal and the conflicts area.
#[derive(Clone, Debug)]
pub struct World {
    pub project: BTreeMap<RelPath, Node>,
    pub upper: BTreeMap<RelPath, Node>,
    pub whiteouts: BTreeSet<RelPath>,
    pub base: BTreeMap<RelPath, BaseEntry>,
    /// Compute side: paths changed since the last sync with no base, and the
    /// lower metadata seen just before the first change.
    pub journal: BTreeMap<RelPath, Option<Meta>>,
    /// Preserved compute-side losers: (path, node).
    pub conflicts: Vec<(RelPath, Node)>,
    /// Whether metadata carries content hashes.
    pub hashes: bool,
    project_clock: i64,
    compute_clock: i64,
}

/// Everything a sync saw and did, for the invariant checks.
#[derive(Clone, Debug)]
pub struct SyncRecord {
    pub inputs: Inputs,
    pub plan: Plan,
    pub project_before: BTreeMap<RelPath, Node>,
    /// Compute-side files and symlinks written since the last sync.
    pub compute_writes: Vec<(RelPath, Node)>,
}

struct ProjectFs<'a>(&'a mut World);
struct ComputeFs<'a>(&'a mut World);

impl Fs for ProjectFs<'_> {
    fn get(&self, path: &RelPath) -> Option<Node> {
        self.0.project.get(path).cloned()
    }
    fn put(&mut self, path: &RelPath, mut node: Node) {
        node.ctime = self.tick();
        self.0.project.insert(path.clone(), node);
    }
    fn remove(&mut self, path: &RelPath) {
        self.0.project.remove(path);
    }
    fn descendants(&self, path: &RelPath) -> Vec<RelPath> {
        descendants_in(&self.0.project, path)
    }
    fn tick(&mut self) -> i64 {
        self.0.project_tick()
    }
}

impl Fs for ComputeFs<'_> {
    fn get(&self, path: &RelPath) -> Option<Node> {
        self.0.union_get(path).map(|(node, _)| node)
    }
    fn put(&mut self, path: &RelPath, mut node: Node) {
        node.ctime = self.tick();
        let w = &mut *self.0;
        // Copy-up: the upper holds every ancestor of what it holds.
        let mut ancestors: Vec<RelPath> = path.ancestors().collect();
        ancestors.reverse();
        for a in ancestors {
            if !w.upper.contains_key(&a) {
                if let Some((mut dir, _)) = w.union_get(&a) {
                    w.note(&a);
                    dir.ctime = node.ctime;
                    w.upper.insert(a, dir);
                }
            }
        }
        w.note(path);
        w.whiteouts.remove(path);
        w.upper.insert(path.clone(), node);
    }
    fn remove(&mut self, path: &RelPath) {
        let w = &mut *self.0;
        w.note(path);
        w.upper.remove(path);
        if w.union_get(path).is_some() {
            w.whiteouts.insert(path.clone());
        }
    }
    fn descendants(&self, path: &RelPath) -> Vec<RelPath> {
        let w = &*self.0;
        let candidates = descendants_in(&w.upper, path)
            .into_iter()
            .chain(descendants_in(&w.project, path));
        let visible: BTreeSet<RelPath> = candidates.filter(|p| w.union_get(p).is_some()).collect();
        visible.into_iter().collect()
    }
    fn tick(&mut self) -> i64 {
        self.0.compute_tick()
    }
}

fn descendants_in(tree: &BTreeMap<RelPath, Node>, path: &RelPath) -> Vec<RelPath> {
    tree.range(path.clone()..)
        .skip_while(|(p, _)| *p == path)
        .take_while(|(p, _)| path.is_ancestor_of(p))
        .map(|(p, _)| p.clone())
        .collect()
}

fn mkdir_p(fs: &mut impl Fs, dir: &RelPath) -> bool {
    let mut chain: Vec<RelPath> = dir.ancestors().collect();
    chain.reverse();
    chain.push(dir.clone());
    for d in chain {
        match fs.get(&d) {
            Some(node) if node.is_dir() => {}
            Some(_) => return false,
            None => {
                let mtime = fs.tick();
                fs.put(
                    &d,
                    Node {
                        content: Content::Dir,
                        mode: 0o755,
                        mtime,
                        ctime: mtime,
                    },
                );
            }
        }
    }
    true
}

fn parent_ready(fs: &mut impl Fs, path: &RelPath) -> bool {
    match path.parent() {
        Some(parent) => mkdir_p(fs, &parent),
        None => true,
    }
}

fn remove_tree(fs: &mut impl Fs, path: &RelPath) {
    for d in fs.descendants(path).iter().rev() {
        fs.remove(d);
    }
    if fs.get(path).is_some() {
        fs.remove(path);
    }
}

fn mutate(fs: &mut impl Fs, mutation: &Mutation) {
    match mutation {
        Mutation::Write(path, data) => {
            if !parent_ready(fs, path) {
                return;
            }
            let mode = match fs.get(path) {
                Some(node) if node.is_dir() => {
                    remove_tree(fs, path);
                    0o644
                }
                Some(Node {
                    content: Content::File(_),
                    mode,
                    ..
                }) => mode,
                _ => 0o644,
            };
            let mtime = fs.tick();
            fs.put(
                path,
                Node {
                    content: Content::File(data.clone()),
                    mode,
                    mtime,
                    ctime: mtime,
                },
            );
        }
        Mutation::Mkdir(path) => {
            if let Some(node) = fs.get(path) {
                if !node.is_dir() {
                    fs.remove(path);
                }
            }
            mkdir_p(fs, path);
        }
        Mutation::Remove(path) => remove_tree(fs, path),
        Mutation::Chmod(path, mode) => {
            if let Some(mut node) = fs.get(path) {
                if !matches!(node.content, Content::Symlink(_)) {
                    // chmod changes ctime, not mtime.
                    node.mode = *mode;
                    fs.put(path, node);
                }
            }
        }
        Mutation::Symlink(path, target) => {
            if !parent_ready(fs, path) {
                return;
            }
            if fs.get(path).is_some_and(|n| n.is_dir()) {
                remove_tree(fs, path);
            }
            let mtime = fs.tick();
            fs.put(
                path,
                Node {
                    content: Content::Symlink(target.clone()),
                    mode: 0o777,
                    mtime,
                    ctime: mtime,
                },
            );
        }
        Mutation::Rename(from, to) => {
            if from == to || from.is_ancestor_of(to) || to.is_ancestor_of(from) {
                return;
            }
            let Some(node) = fs.get(from) else { return };
            if !parent_ready(fs, to) {
                return;
            }
            let moved: Vec<(RelPath, Node)> = std::iter::once((from.clone(), node))
                .chain(fs.descendants(from).into_iter().filter_map(|p| {
                    let n = fs.get(&p)?;
                    Some((p, n))
                }))
                .collect();
            remove_tree(fs, to);
            for (path, node) in moved {
                let rest = &path.as_bytes()[from.as_bytes().len()..];
                let mut bytes = to.as_bytes().to_vec();
                bytes.extend_from_slice(rest);
                // `to` and a suffix of a valid path form a valid path.
                let dest = RelPath::new(bytes).expect("renamed path is valid");
                fs.put(&dest, node);
            }
            remove_tree(fs, from);
        }
    }
}

impl World {
    pub fn new(hashes: bool) -> World {
        World {
            project: BTreeMap::new(),
            upper: BTreeMap::new(),
            whiteouts: BTreeSet::new(),
            base: BTreeMap::new(),
            journal: BTreeMap::new(),
            conflicts: Vec::new(),
            hashes,
            project_clock: 1000,
            compute_clock: 1000,
        }
    }

    pub fn mutate(&mut self, actor: Actor, mutation: &Mutation) {
        match actor {
            Actor::Project => mutate(&mut ProjectFs(self), mutation),
            Actor::Compute => mutate(&mut ComputeFs(self), mutation),
        }
    }

    /// The compute side's union view of `path`, and whether it comes from
    /// the upper layer.
    pub fn union_get(&self, path: &RelPath) -> Option<(Node, bool)> {
        let mut prefixes: Vec<RelPath> = path.ancestors().collect();
        prefixes.reverse();
        prefixes.push(path.clone());
        let mut found = None;
        for prefix in prefixes {
            if let Some((node, _)) = &found {
                if !Node::is_dir(node) {
                    return None;
                }
            }
            if self.whiteouts.contains(&prefix) {
                return None;
            }
            found = match (self.upper.get(&prefix), self.project.get(&prefix)) {
                (Some(node), _) => Some((node.clone(), true)),
                (None, Some(node)) => Some((node.clone(), false)),
                (None, None) => return None,
            };
        }
        found
    }

    /// Every path the compute side's union shows.
    pub fn union_view(&self) -> BTreeMap<RelPath, Node> {
        self.upper
            .keys()
            .chain(self.project.keys())
            .filter_map(|p| self.union_get(p).map(|(n, _)| (p.clone(), n)))
            .collect()
    }

    /// Journal the first change of a path that has no base.
    fn note(&mut self, path: &RelPath) {
        if self.base.contains_key(path) || self.journal.contains_key(path) {
            return;
        }
        let seen = match self.union_get(path) {
            Some((node, false)) => Some(node.meta(self.hashes)),
            _ => None,
        };
        self.journal.insert(path.clone(), seen);
    }

    fn reported(&self, path: &RelPath) -> Option<Reported> {
        if let Some(node) = self.upper.get(path) {
            Some(Reported::Present(node.meta(self.hashes)))
        } else if self.whiteouts.contains(path) {
            Some(Reported::Deleted)
        } else {
            None
        }
    }

    /// The paths a sync must look at: the upper, the whiteouts and the base.
    pub fn sync_set(&self) -> BTreeSet<RelPath> {
        self.upper
            .keys()
            .chain(&self.whiteouts)
            .chain(self.base.keys())
            .cloned()
            .collect()
    }

    /// The reconcile input, built as the project side builds it: the sync
    /// set, its ancestors, and the project subtrees the contract asks for.
    pub fn inputs(&self) -> Inputs {
        let mut paths = self.sync_set();
        let ancestors: Vec<RelPath> = paths.iter().flat_map(|p| p.ancestors()).collect();
        paths.extend(ancestors);
        let subtrees: Vec<RelPath> = paths
            .iter()
            .filter(|p| {
                let project = self.project.get(p).map(|n| n.meta(self.hashes));
                needs_project_subtree(self.reported(p).as_ref(), project.as_ref())
            })
            .flat_map(|p| descendants_in(&self.project, p))
            .collect();
        paths.extend(subtrees);
        paths
            .into_iter()
            .map(|path| {
                let base = self.base.get(&path).cloned();
                let input = PathInput {
                    seen: self.journal.get(&path).cloned().flatten(),
                    compute: self.reported(&path),
                    project: self.project.get(&path).map(|n| n.meta(self.hashes)),
                    base,
                };
                (path, input)
            })
            .collect()
    }

    /// Plans and applies one sync. An `Err` is an invariant broken on the
    /// way: an input the reconcile refused, or a step whose precondition
    /// (compare-and-swap, empty directory, existing parent) did not hold.
    pub fn sync(&mut self) -> Result<SyncRecord, String> {
        let inputs = self.inputs();
        let plan = reconcile(&inputs).map_err(|e| format!("reconcile refused: {e}"))?;
        let record = SyncRecord {
            project_before: self.project.clone(),
            compute_writes: self
                .journal
                .keys()
                .chain(self.base.keys())
                .filter_map(|p| {
                    let node = self.upper.get(p)?;
                    let meta = node.meta(self.hashes);
                    // A write is a change from where the compute side
                    // started: its base, or else what it saw in the lower.
                    let changed = match (self.base.get(p), self.journal.get(p)) {
                        (Some(base), _) => meta.changed_since(&base.compute),
                        (None, Some(Some(seen))) => meta.same_content(seen) != Sameness::Same,
                        (None, _) => true,
                    };
                    (changed && !node.is_dir()).then(|| (p.clone(), node.clone()))
                })
                .collect(),
            inputs,
            plan,
        };
        for op in &record.plan.project_ops {
            self.apply_project(op)?;
        }
        for op in &record.plan.compute_ops {
            self.apply_compute(op)?;
        }
        for path in record.plan.resolutions.keys() {
            let upper = self.upper.get(path).map(|n| n.meta(self.hashes));
            let project = self.project.get(path).map(|n| n.meta(self.hashes));
            match BaseEntry::after_sync(upper, project) {
                Some(entry) => self.base.insert(path.clone(), entry),
                None => self.base.remove(path),
            };
        }
        self.journal.clear();
        Ok(record)
    }

    fn project_tick(&mut self) -> i64 {
        self.project_clock += 1;
        self.project_clock
    }

    fn compute_tick(&mut self) -> i64 {
        self.compute_clock += 1;
        self.compute_clock
    }

    fn expect_project(&self, path: &RelPath, expect: &Meta) -> Result<Node, String> {
        match self.project.get(path) {
            Some(node) if node.meta(self.hashes) == *expect => Ok(node.clone()),
            other => Err(format!(
                "project {path}: expected {expect}, found {other:?}"
            )),
        }
    }

    fn compute_node(&self, path: &RelPath, meta: &Meta) -> Result<Node, String> {
        match self.upper.get(path) {
            Some(node) if node.meta(self.hashes) == *meta => Ok(node.clone()),
            other => Err(format!(
                "compute {path}: expected {meta} to ship, found {other:?}"
            )),
        }
    }

    fn project_parent_is_dir(&self, path: &RelPath) -> Result<(), String> {
        match path.parent() {
            None => Ok(()),
            Some(parent) if self.project.get(&parent).is_some_and(Node::is_dir) => Ok(()),
            Some(parent) => Err(format!(
                "project {path}: parent {parent} is not a directory"
            )),
        }
    }

    fn apply_project(&mut self, op: &ProjectOp) -> Result<(), String> {
        match op {
            ProjectOp::PreserveConflict { path, compute } => {
                let node = self.compute_node(path, compute)?;
                self.conflicts.push((path.clone(), node));
            }
            ProjectOp::Remove { path, expect } => {
                self.expect_project(path, expect)?;
                if !descendants_in(&self.project, path).is_empty() {
                    return Err(format!("project {path}: removing a non-empty directory"));
                }
                self.project.remove(path);
            }
            ProjectOp::Create { path, meta } => {
                if self.project.contains_key(path) {
                    return Err(format!("project {path}: create over an existing path"));
                }
                self.project_parent_is_dir(path)?;
                let mut node = self.compute_node(path, meta)?;
                node.ctime = self.project_tick();
                self.project.insert(path.clone(), node);
            }
            ProjectOp::Write { path, meta, expect } => {
                self.expect_project(path, expect)?;
                let mut node = self.compute_node(path, meta)?;
                node.ctime = self.project_tick();
                self.project.insert(path.clone(), node);
            }
            ProjectOp::SetMode { path, mode, expect } => {
                let mut node = self.expect_project(path, expect)?;
                node.mode = *mode;
                node.ctime = self.project_tick();
                self.project.insert(path.clone(), node);
            }
        }
        Ok(())
    }

    fn apply_compute(&mut self, op: &ComputeOp) -> Result<(), String> {
        match op {
            ComputeOp::Remove { path, expect } => {
                match self.upper.get(path) {
                    Some(node) if node.meta(self.hashes) == *expect => {}
                    other => {
                        return Err(format!("upper {path}: expected {expect}, found {other:?}"))
                    }
                }
                if !descendants_in(&self.upper, path).is_empty() {
                    return Err(format!("upper {path}: removing a non-empty directory"));
                }
                self.upper.remove(path);
            }
            ComputeOp::DropWhiteout { path } => {
                if !self.whiteouts.remove(path) {
                    return Err(format!("whiteout {path}: not there"));
                }
            }
            ComputeOp::Take { path, meta, expect } => {
                let now = self.upper.get(path).map(|n| n.meta(self.hashes));
                if now != *expect {
                    return Err(format!("upper {path}: expected {expect:?}, found {now:?}"));
                }
                let node = match self.project.get(path) {
                    Some(node) if node.meta(self.hashes) == *meta => node.clone(),
                    other => {
                        return Err(format!("take {path}: project has {other:?}, plan {meta}"))
                    }
                };
                // Taking a path makes it visible: its ancestors are visible
                // directories by now (parents first), held in the upper.
                for a in path.ancestors() {
                    match self.union_get(&a) {
                        Some((n, _)) if n.is_dir() => {
                            if !self.upper.contains_key(&a) {
                                self.upper.insert(a.clone(), n);
                            }
                        }
                        _ => return Err(format!("take {path}: ancestor {a} is not visible")),
                    }
                }
                self.whiteouts.remove(path);
                let mut node = node;
                node.ctime = self.compute_tick();
                self.upper.insert(path.clone(), node);
            }
        }
        Ok(())
    }
}

/// Invariant 1: the compute side's union view equals the project home.
pub fn check_convergence(world: &World) -> Result<(), String> {
    let union = world.union_view();
    for (path, node) in &world.project {
        match union.get(path) {
            Some(seen) if seen.same_as(node) => {}
            other => {
                return Err(format!(
                    "{path}: project has {node:?}, union shows {other:?}"
                ))
            }
        }
    }
    for path in union.keys() {
        if !world.project.contains_key(path) {
            return Err(format!("{path}: union shows it, the project lacks it"));
        }
    }
    Ok(())
}

/// Invariant 2: where both sides changed a path differently, the project's
/// state is the final one.
pub fn check_project_wins(record: &SyncRecord, world: &World) -> Result<(), String> {
    for (path, r) in &record.plan.resolutions {
        if r.decision != Decision::Conflict {
            continue;
        }
        let before = record.project_before.get(path);
        let after = world.project.get(path);
        let kept = match (before, after) {
            (None, None) => true,
            (Some(b), Some(a)) => a.same_as(b),
            _ => false,
        };
        if !kept {
            return Err(format!(
                "{path}: conflict, project had {before:?}, now {after:?}"
            ));
        }
    }
    Ok(())
}

/// Invariant 3: every compute-side write is in the final project or in the
/// conflicts area; every project file the plan did not replace on purpose
/// (a push of an unchanged path) is untouched.
pub fn check_nothing_lost(record: &SyncRecord, world: &World) -> Result<(), String> {
    for (path, node) in &record.compute_writes {
        let in_project = world.project.get(path).is_some_and(|n| n.same_as(node));
        let preserved = world
            .conflicts
            .iter()
            .any(|(p, n)| p == path && n.same_as(node));
        if !in_project && !preserved {
            return Err(format!(
                "{path}: compute wrote {node:?}, now neither in project nor conflicts"
            ));
        }
    }
    for (path, before) in &record.project_before {
        let pushed = record
            .plan
            .resolutions
            .get(path)
            .is_some_and(|r| matches!(r.decision, Decision::Push | Decision::KeepParent));
        let unchanged = world.project.get(path).is_some_and(|n| n.same_as(before));
        if !pushed && !unchanged && !before.is_dir() {
            return Err(format!(
                "{path}: project had {before:?}, lost without a push"
            ));
        }
    }
    Ok(())
}

/// Invariant 5: reconciling again plans nothing.
pub fn check_idempotent(world: &World) -> Result<(), String> {
    let plan = reconcile(&world.inputs()).map_err(|e| format!("reconcile refused: {e}"))?;
    if plan.is_empty() {
        Ok(())
    } else {
        Err(format!("second sync is not empty:\n{plan}"))
    }
}

/// Invariant 4 (for plans): every step is on a path of the sync set, an
/// ancestor or a descendant of one.
pub fn check_confinement(record: &SyncRecord, sync_set: &BTreeSet<RelPath>) -> Result<(), String> {
    let paths = record
        .plan
        .project_ops
        .iter()
        .map(ProjectOp::path)
        .chain(record.plan.compute_ops.iter().map(ComputeOp::path));
    for path in paths {
        let related = sync_set
            .iter()
            .any(|s| s == path || s.is_ancestor_of(path) || path.is_ancestor_of(s));
        if !related || path.is_reserved() {
            return Err(format!("step on {path}, outside the sync set"));
        }
    }
    Ok(())
}
