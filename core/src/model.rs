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

use crate::meta::{ContentHash, Kind, Meta, Sameness};
use crate::path::RelPath;
use crate::plan::{reconcile, ComputeOp, Plan, ProjectOp};
use crate::reconcile::{needs_project_subtree, BaseEntry, Decision, Inputs, PathInput, Reported};
use crate::wire::Change;

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
    pub fn same_as(&self, other: &Node) -> bool {
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
    /// A write, chmod or rename of a path only the lower shows that the
    /// union journaled but whose copy-up failed (the lower mount is down, the upper full):
    /// the user got an error and nothing changed. (No-op in the project.)
    FailedCopyUp(RelPath),
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

/// A tree of nodes by path.
pub type Tree = BTreeMap<RelPath, Node>;

/// Content received for a later step, by path.
pub type Staged = BTreeMap<RelPath, Vec<u8>>;

/// The project home: a plain tree, its clock and its conflicts area.
#[derive(Clone, Debug)]
pub struct ProjectHome {
    pub tree: Tree,
    /// Preserved compute-side losers: (compute id, path, node).
    pub conflicts: Vec<(u64, RelPath, Node)>,
    pub hashes: bool,
    clock: i64,
    /// Every path the home ever held.
    pub ever: BTreeSet<RelPath>,
    /// Paths the project's users removed.
    pub user_removed: BTreeSet<RelPath>,
    /// Who changed which path here: `None` for the project's users, else
    /// the compute server whose sync did.
    pub changed_by: BTreeSet<(Option<u64>, RelPath)>,
}

/// One compute server's union: an upper tree and whiteouts over the
/// project's tree as its lower, and the journal of changes since the last
/// commit.
#[derive(Clone, Debug)]
pub struct ComputeUnion {
    pub upper: Tree,
    pub whiteouts: BTreeSet<RelPath>,
    /// Paths this side's users removed through the union.
    pub user_removed: BTreeSet<RelPath>,
    pub journal: BTreeMap<RelPath, JournalEntry>,
    pub hashes: bool,
    clock: i64,
    seq: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalEntry {
    /// What the lower showed before the first change (no base then).
    pub seen: Option<Meta>,
    /// Bumped on every change, so a commit keeps entries changed since.
    pub seq: u64,
    /// The last change was a sync's own step: a commit of that sync clears
    /// it; if the commit never comes, the next sync re-reports the path
    /// (else the base would describe an upper state that is gone).
    pub by_sync: bool,
}

/// Why a step did not apply: its precondition no longer held. The path is
/// left as it is and decided again at the next sync.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deferred(pub String);

fn descendants_in(tree: &Tree, path: &RelPath) -> Vec<RelPath> {
    tree.range(path.clone()..)
        .skip_while(|(p, _)| *p == path)
        .take_while(|(p, _)| path.is_ancestor_of(p))
        .map(|(p, _)| p.clone())
        .collect()
}

/// A node for `meta`, with file content from `staged`; `None` when the
/// content is missing or does not match.
fn node_from(meta: &Meta, path: &RelPath, staged: &Staged, ctime: i64) -> Option<Node> {
    let content = match &meta.kind {
        Kind::File => {
            let data = staged.get(path)?;
            if data.len() as u64 != meta.size || meta.hash.is_some_and(|h| h != hash_of(data)) {
                return None;
            }
            Content::File(data.clone())
        }
        Kind::Dir => Content::Dir,
        Kind::Symlink { target } => Content::Symlink(target.clone()),
    };
    Some(Node {
        content,
        mode: meta.perm(),
        mtime: meta.mtime_ns,
        ctime,
    })
}

fn expect_node(
    tree: &Tree,
    path: &RelPath,
    expect: Option<&Meta>,
    hashes: bool,
) -> Result<(), Deferred> {
    let now = tree.get(path).map(|n| n.meta(hashes));
    let matches = match (&now, expect) {
        (None, None) => true,
        (Some(now), Some(expect)) => now.matches(expect),
        _ => false,
    };
    if matches {
        Ok(())
    } else {
        Err(Deferred(format!(
            "{path}: plan saw {expect:?}, now {now:?}"
        )))
    }
}

fn read_matching(tree: &Tree, path: &RelPath, expect: &Meta, hashes: bool) -> Option<Vec<u8>> {
    match tree.get(path) {
        Some(Node {
            content: Content::File(data),
            ..
        }) if tree[path].meta(hashes).matches(expect) => Some(data.clone()),
        _ => None,
    }
}

impl ProjectHome {
    pub fn new(hashes: bool) -> ProjectHome {
        ProjectHome {
            tree: Tree::new(),
            conflicts: Vec::new(),
            hashes,
            clock: 1000,
            ever: BTreeSet::new(),
            user_removed: BTreeSet::new(),
            changed_by: BTreeSet::new(),
        }
    }

    fn tick(&mut self) -> i64 {
        self.clock += 1;
        self.clock
    }

    pub fn mutate(&mut self, mutation: &Mutation) {
        mutate(&mut ProjectFs(self), mutation);
    }

    pub fn meta(&self, path: &RelPath) -> Option<Meta> {
        self.tree.get(path).map(|n| n.meta(self.hashes))
    }

    /// Every descendant of `dir` with its metadata.
    pub fn subtree(&self, dir: &RelPath) -> Vec<(RelPath, Meta)> {
        descendants_in(&self.tree, dir)
            .into_iter()
            .map(|p| {
                let meta = self.tree[&p].meta(self.hashes);
                (p, meta)
            })
            .collect()
    }

    /// Whether `node` survives here: at `path` in the tree, or preserved
    /// for `path` in the conflicts area (by `compute_id`, if given).
    pub fn keeps(&self, compute_id: Option<u64>, path: &RelPath, node: &Node) -> bool {
        self.tree.get(path).is_some_and(|n| n.same_as(node))
            || self.conflicts.iter().any(|(c, p, n)| {
                compute_id.is_none_or(|id| *c == id) && p == path && n.same_as(node)
            })
    }

    /// A file's content if it still matches what the plan saw.
    pub fn read(&self, path: &RelPath, expect: &Meta) -> Option<Vec<u8>> {
        read_matching(&self.tree, path, expect, self.hashes)
    }

    pub fn hash(&self, path: &RelPath) -> Option<ContentHash> {
        self.meta(path).and_then(|m| {
            m.hash.or(match &self.tree[path].content {
                Content::File(data) => Some(hash_of(data)),
                _ => None,
            })
        })
    }

    /// Applies one step with compare-and-swap; returns the path's metadata
    /// afterwards.
    pub fn apply(
        &mut self,
        compute_id: u64,
        op: &ProjectOp,
        staged: &Staged,
    ) -> Result<Option<Meta>, Deferred> {
        let missing = |path: &RelPath| Deferred(format!("{path}: content not received"));
        match op {
            ProjectOp::PreserveConflict { path, compute } => {
                let node = node_from(compute, path, staged, 0).ok_or_else(|| missing(path))?;
                self.conflicts.push((compute_id, path.clone(), node));
                return Ok(self.meta(path));
            }
            ProjectOp::Remove { path, expect } => {
                expect_node(&self.tree, path, Some(expect), self.hashes)?;
                if !descendants_in(&self.tree, path).is_empty() {
                    return Err(Deferred(format!("{path}: directory not empty")));
                }
                self.tree.remove(path);
                self.changed_by.insert((Some(compute_id), path.clone()));
            }
            ProjectOp::Create { path, meta } => {
                expect_node(&self.tree, path, None, self.hashes)?;
                if let Some(parent) = path.parent() {
                    if !self.tree.get(&parent).is_some_and(Node::is_dir) {
                        return Err(Deferred(format!("{path}: parent is not a directory")));
                    }
                }
                let ctime = self.tick();
                let node = node_from(meta, path, staged, ctime).ok_or_else(|| missing(path))?;
                self.tree.insert(path.clone(), node);
                self.ever.insert(path.clone());
                self.changed_by.insert((Some(compute_id), path.clone()));
            }
            ProjectOp::Write { path, meta, expect } => {
                expect_node(&self.tree, path, Some(expect), self.hashes)?;
                let ctime = self.tick();
                let node = node_from(meta, path, staged, ctime).ok_or_else(|| missing(path))?;
                self.tree.insert(path.clone(), node);
                self.changed_by.insert((Some(compute_id), path.clone()));
            }
            ProjectOp::SetMode { path, mode, expect } => {
                expect_node(&self.tree, path, Some(expect), self.hashes)?;
                let ctime = self.tick();
                if let Some(node) = self.tree.get_mut(path) {
                    node.mode = *mode;
                    node.ctime = ctime;
                }
                self.changed_by.insert((Some(compute_id), path.clone()));
            }
        }
        Ok(self.meta(op.path()))
    }
}

impl ComputeUnion {
    pub fn new(hashes: bool) -> ComputeUnion {
        ComputeUnion {
            upper: Tree::new(),
            whiteouts: BTreeSet::new(),
            user_removed: BTreeSet::new(),
            journal: BTreeMap::new(),
            hashes,
            clock: 1000,
            seq: 0,
        }
    }

    fn tick(&mut self) -> i64 {
        self.clock += 1;
        self.clock
    }

    pub fn mutate(&mut self, lower: &Tree, mutation: &Mutation) {
        if let Mutation::FailedCopyUp(path) = mutation {
            // Only a path the lower shows needs a copy-up (one in the upper
            // is changed in place); it is journaled before the copy-up, as
            // the FUSE handlers do.
            if matches!(self.get(lower, path), Some((_, false))) {
                self.note(lower, path);
            }
            return;
        }
        mutate(&mut ComputeFs { union: self, lower }, mutation);
    }

    /// The union view of `path`, and whether it comes from the upper.
    pub fn get(&self, lower: &Tree, path: &RelPath) -> Option<(Node, bool)> {
        let mut prefixes: Vec<RelPath> = path.ancestors().collect();
        prefixes.reverse();
        prefixes.push(path.clone());
        let mut found: Option<(Node, bool)> = None;
        for prefix in prefixes {
            if found.as_ref().is_some_and(|(node, _)| !node.is_dir()) {
                return None;
            }
            if self.whiteouts.contains(&prefix) {
                return None;
            }
            found = match (self.upper.get(&prefix), lower.get(&prefix)) {
                (Some(node), _) => Some((node.clone(), true)),
                (None, Some(node)) => Some((node.clone(), false)),
                (None, None) => return None,
            };
        }
        found
    }

    /// Every path the union shows.
    pub fn view(&self, lower: &Tree) -> Tree {
        self.upper
            .keys()
            .chain(lower.keys())
            .filter_map(|p| self.get(lower, p).map(|(n, _)| (p.clone(), n)))
            .collect()
    }

    /// Journals a change of `path`; the first one since the last commit
    /// records what the lower showed.
    fn note(&mut self, lower: &Tree, path: &RelPath) {
        self.journal_change(lower, path, false);
    }

    fn journal_change(&mut self, lower: &Tree, path: &RelPath, by_sync: bool) {
        self.seq += 1;
        let seq = self.seq;
        if let Some(entry) = self.journal.get_mut(path) {
            entry.seq = seq;
            entry.by_sync = by_sync;
            return;
        }
        let seen = match self.get(lower, path) {
            Some((node, false)) => Some(node.meta(self.hashes)),
            _ => None,
        };
        self.journal
            .insert(path.clone(), JournalEntry { seen, seq, by_sync });
    }

    /// The upper's state of `path`: an entry, a whiteout, or neither (the
    /// union shows the lower).
    pub fn reported(&self, path: &RelPath) -> Reported {
        Reported::observe(
            self.upper.get(path).map(|node| node.meta(self.hashes)),
            self.whiteouts.contains(path),
        )
    }

    /// What the compute side sends: journaled paths (or, `full`, every
    /// upper entry and whiteout) with every ancestor the upper holds, and
    /// the journal mark for the commit. A journaled path with neither entry
    /// nor whiteout is reported as showing the lower: never a deletion.
    /// Ancestors go along because only the compute side knows for sure what
    /// its upper holds: a project-side base can lag behind it after a sync
    /// that never committed.
    pub fn changes(&self, full: bool) -> (u64, Vec<Change>) {
        let mut paths: BTreeSet<&RelPath> = if full {
            self.upper
                .keys()
                .chain(&self.whiteouts)
                .chain(self.journal.keys())
                .collect()
        } else {
            self.journal.keys().collect()
        };
        let ancestors: Vec<&RelPath> = paths
            .iter()
            .flat_map(|p| p.ancestors())
            .filter_map(|a| self.upper.get_key_value(&a).map(|(k, _)| k))
            .collect();
        paths.extend(ancestors);
        let changes = paths
            .into_iter()
            .map(|path| Change {
                path: path.clone(),
                state: self.reported(path),
                seen: self.journal.get(path).and_then(|e| e.seen.clone()),
                seen_via_mount: false,
            })
            .collect();
        (self.seq, changes)
    }

    /// Drops committed paths from the journal unless a user changed them
    /// after `mark`.
    pub fn commit(&mut self, mark: u64, paths: &[RelPath]) {
        for path in paths {
            if self
                .journal
                .get(path)
                .is_some_and(|e| e.seq <= mark || e.by_sync)
            {
                self.journal.remove(path);
            }
        }
    }

    /// An upper file's content if it still matches what the plan saw.
    pub fn read(&self, path: &RelPath, expect: &Meta) -> Option<Vec<u8>> {
        read_matching(&self.upper, path, expect, self.hashes)
    }

    pub fn hash(&self, path: &RelPath) -> Option<ContentHash> {
        match &self.upper.get(path)?.content {
            Content::File(data) => Some(hash_of(data)),
            _ => None,
        }
    }

    /// Applies one step with compare-and-swap; returns the upper's state
    /// afterwards of the path and of every ancestor the step copied up (the
    /// base must cover all the upper holds).
    pub fn apply(
        &mut self,
        lower: &Tree,
        op: &ComputeOp,
        staged: &Staged,
    ) -> Result<Vec<(RelPath, Option<Meta>)>, Deferred> {
        let mut after = Vec::new();
        let mut recreated = false;
        match op {
            ComputeOp::Remove { path, expect } => {
                expect_node(&self.upper, path, Some(expect), self.hashes)?;
                if !descendants_in(&self.upper, path).is_empty() {
                    return Err(Deferred(format!("{path}: upper directory not empty")));
                }
                self.upper.remove(path);
            }
            ComputeOp::DropWhiteout { path } => {
                // The plan saw a whiteout; the user may have created the
                // path again since. The step only records that both sides
                // agree the old entry is gone, which still holds: the new
                // entry is a fresh change against "nothing there" (as the
                // shell's compute store does).
                recreated = self.upper.contains_key(path);
                self.whiteouts.remove(path);
            }
            ComputeOp::Take { path, meta, expect } => {
                expect_node(&self.upper, path, expect.as_ref(), self.hashes)?;
                // Replacing a directory the user filled since the plan would
                // orphan its children (a real rename fails likewise).
                if !meta.is_dir() && !descendants_in(&self.upper, path).is_empty() {
                    return Err(Deferred(format!("{path}: upper directory not empty")));
                }
                let ctime = self.tick();
                let node = node_from(meta, path, staged, ctime)
                    .ok_or_else(|| Deferred(format!("{path}: content not received")))?;
                // The path becomes visible: its ancestors are visible
                // directories by now (parents first); the upper holds them.
                let mut ancestors: Vec<RelPath> = path.ancestors().collect();
                ancestors.reverse();
                for a in ancestors {
                    match self.get(lower, &a) {
                        Some((dir, _)) if dir.is_dir() => {
                            if !self.upper.contains_key(&a) {
                                after.push((a.clone(), Some(dir.meta(self.hashes))));
                                self.upper.insert(a, dir);
                            }
                        }
                        _ => return Err(Deferred(format!("{path}: ancestor {a} not visible"))),
                    }
                }
                self.whiteouts.remove(path);
                self.upper.insert(path.clone(), node);
            }
        }
        after.push((
            op.path().clone(),
            self.upper.get(op.path()).map(|n| n.meta(self.hashes)),
        ));
        for (path, _) in &after {
            self.journal_change(lower, path, true);
        }
        if recreated {
            if let Some(entry) = self.journal.get_mut(op.path()) {
                entry.by_sync = false;
                entry.seen = None;
            }
        }
        Ok(after)
    }
}

struct ProjectFs<'a>(&'a mut ProjectHome);

struct ComputeFs<'a> {
    union: &'a mut ComputeUnion,
    lower: &'a Tree,
}

impl Fs for ProjectFs<'_> {
    fn get(&self, path: &RelPath) -> Option<Node> {
        self.0.tree.get(path).cloned()
    }
    fn put(&mut self, path: &RelPath, mut node: Node) {
        node.ctime = self.tick();
        self.0.tree.insert(path.clone(), node);
        self.0.ever.insert(path.clone());
        self.0.changed_by.insert((None, path.clone()));
    }
    fn remove(&mut self, path: &RelPath) {
        self.0.tree.remove(path);
        self.0.user_removed.insert(path.clone());
        self.0.changed_by.insert((None, path.clone()));
    }
    fn descendants(&self, path: &RelPath) -> Vec<RelPath> {
        descendants_in(&self.0.tree, path)
    }
    fn tick(&mut self) -> i64 {
        self.0.tick()
    }
}

impl Fs for ComputeFs<'_> {
    fn get(&self, path: &RelPath) -> Option<Node> {
        self.union.get(self.lower, path).map(|(node, _)| node)
    }
    fn put(&mut self, path: &RelPath, mut node: Node) {
        node.ctime = self.tick();
        let (u, lower) = (&mut *self.union, self.lower);
        // Copy-up: the upper holds every ancestor of what it holds.
        let mut ancestors: Vec<RelPath> = path.ancestors().collect();
        ancestors.reverse();
        for a in ancestors {
            if !u.upper.contains_key(&a) {
                if let Some((mut dir, _)) = u.get(lower, &a) {
                    u.note(lower, &a);
                    dir.ctime = node.ctime;
                    u.upper.insert(a, dir);
                }
            }
        }
        u.note(lower, path);
        u.whiteouts.remove(path);
        u.upper.insert(path.clone(), node);
    }
    fn remove(&mut self, path: &RelPath) {
        let (u, lower) = (&mut *self.union, self.lower);
        u.note(lower, path);
        u.user_removed.insert(path.clone());
        u.upper.remove(path);
        if u.get(lower, path).is_some() {
            u.whiteouts.insert(path.clone());
        }
    }
    fn descendants(&self, path: &RelPath) -> Vec<RelPath> {
        let candidates = descendants_in(&self.union.upper, path)
            .into_iter()
            .chain(descendants_in(self.lower, path));
        let visible: BTreeSet<RelPath> = candidates
            .filter(|p| self.union.get(self.lower, p).is_some())
            .collect();
        visible.into_iter().collect()
    }
    fn tick(&mut self) -> i64 {
        self.union.tick()
    }
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
        // Changes nothing on either side (the compute union journals it).
        Mutation::FailedCopyUp(_) => {}
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

/// One compute server and the project, with the base between them, synced
/// by building the reconcile input directly (no protocol).
#[derive(Clone, Debug)]
pub struct World {
    pub project: ProjectHome,
    pub compute: ComputeUnion,
    pub base: BTreeMap<RelPath, BaseEntry>,
}

/// Everything a sync saw and did, for the invariant checks.
#[derive(Clone, Debug)]
pub struct SyncRecord {
    pub inputs: Inputs,
    pub plan: Plan,
    pub project_before: Tree,
    /// Compute-side files and symlinks written since the last sync.
    pub compute_writes: Vec<(RelPath, Node)>,
}

/// The model's compute server id.
pub const COMPUTE_ID: u64 = 1;

impl World {
    pub fn new(hashes: bool) -> World {
        World {
            project: ProjectHome::new(hashes),
            compute: ComputeUnion::new(hashes),
            base: BTreeMap::new(),
        }
    }

    pub fn mutate(&mut self, actor: Actor, mutation: &Mutation) {
        match actor {
            Actor::Project => self.project.mutate(mutation),
            Actor::Compute => self.compute.mutate(&self.project.tree, mutation),
        }
    }

    pub fn union_get(&self, path: &RelPath) -> Option<(Node, bool)> {
        self.compute.get(&self.project.tree, path)
    }

    pub fn union_view(&self) -> Tree {
        self.compute.view(&self.project.tree)
    }

    fn hashes(&self) -> bool {
        self.project.hashes
    }

    /// The paths a sync must look at: the upper, the whiteouts and the base.
    pub fn sync_set(&self) -> BTreeSet<RelPath> {
        self.compute
            .upper
            .keys()
            .chain(&self.compute.whiteouts)
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
                needs_project_subtree(
                    Some(&self.compute.reported(p)),
                    self.project.meta(p).as_ref(),
                )
            })
            .flat_map(|p| descendants_in(&self.project.tree, p))
            .collect();
        paths.extend(subtrees);
        paths
            .into_iter()
            .map(|path| {
                let input = PathInput {
                    base: self.base.get(&path).cloned(),
                    seen: self.compute.journal.get(&path).and_then(|e| e.seen.clone()),
                    seen_via_mount: false,
                    compute: Some(self.compute.reported(&path)),
                    project: self.project.meta(&path),
                };
                (path, input)
            })
            .collect()
    }

    /// Compute-side files and symlinks changed from where the compute side
    /// started: its base, or else what it saw in the lower.
    fn compute_writes(&self) -> Vec<(RelPath, Node)> {
        self.compute
            .upper
            .iter()
            .filter(|(_, node)| !node.is_dir())
            .filter(|(path, node)| {
                let meta = node.meta(self.hashes());
                match (self.base.get(*path), self.compute.journal.get(*path)) {
                    (Some(base), _) => meta.changed_since(&base.compute),
                    (None, Some(entry)) => entry
                        .seen
                        .as_ref()
                        .is_none_or(|seen| meta.same_content(seen) != Sameness::Same),
                    (None, None) => false,
                }
            })
            .map(|(p, n)| (p.clone(), n.clone()))
            .collect()
    }

    /// Plans and applies one sync, shipping content as the protocol does.
    /// An `Err` is an invariant broken on the way: an input the reconcile
    /// refused, or a step that had to be deferred although nothing changed
    /// concurrently.
    pub fn sync(&mut self) -> Result<SyncRecord, String> {
        let inputs = self.inputs();
        let plan = reconcile(&inputs).map_err(|e| format!("reconcile refused: {e}"))?;
        let record = SyncRecord {
            project_before: self.project.tree.clone(),
            compute_writes: self.compute_writes(),
            inputs,
            plan,
        };
        let mut to_project = Staged::new();
        for op in &record.plan.project_ops {
            if let Some(data) = self
                .compute
                .upper
                .get(op.path())
                .and_then(|n| match &n.content {
                    Content::File(data) => Some(data.clone()),
                    _ => None,
                })
            {
                to_project.insert(op.path().clone(), data);
            }
        }
        for op in &record.plan.project_ops {
            self.project
                .apply(COMPUTE_ID, op, &to_project)
                .map_err(|Deferred(why)| format!("project step {op} deferred: {why}"))?;
        }
        let mut to_compute = Staged::new();
        for op in &record.plan.compute_ops {
            if let ComputeOp::Take { path, meta, .. } = op {
                if let Some(data) = self.project.read(path, meta) {
                    to_compute.insert(path.clone(), data);
                }
            }
        }
        for op in &record.plan.compute_ops {
            self.compute
                .apply(&self.project.tree, op, &to_compute)
                .map_err(|Deferred(why)| format!("compute step {op} deferred: {why}"))?;
        }
        for path in record.plan.resolutions.keys() {
            let upper = self.compute.upper.get(path).map(|n| n.meta(self.hashes()));
            match BaseEntry::after_sync(upper, self.project.meta(path)) {
                Some(entry) => self.base.insert(path.clone(), entry),
                None => self.base.remove(path),
            };
        }
        self.compute.journal.clear();
        Ok(record)
    }
}

/// Invariant 1: the compute side's union view equals the project home.
pub fn check_convergence(world: &World) -> Result<(), String> {
    check_union_matches(&world.compute, &world.project)
}

/// A compute union shows exactly the project's tree (content and mode).
pub fn check_union_matches(union: &ComputeUnion, project: &ProjectHome) -> Result<(), String> {
    let view = union.view(&project.tree);
    for (path, node) in &project.tree {
        match view.get(path) {
            Some(seen) if seen.same_as(node) => {}
            other => {
                return Err(format!(
                    "{path}: project has {node:?}, union shows {other:?}"
                ))
            }
        }
    }
    match view.keys().find(|p| !project.tree.contains_key(*p)) {
        Some(path) => Err(format!("{path}: union shows it, the project lacks it")),
        None => Ok(()),
    }
}

/// Invariant 2: where both sides changed a path differently, the project's
/// state is the final one.
pub fn check_project_wins(record: &SyncRecord, world: &World) -> Result<(), String> {
    for (path, r) in &record.plan.resolutions {
        if r.decision != Decision::Conflict {
            continue;
        }
        let before = record.project_before.get(path);
        let after = world.project.tree.get(path);
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
        if !world.project.keeps(None, path, node) {
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
        let unchanged = world
            .project
            .tree
            .get(path)
            .is_some_and(|n| n.same_as(before));
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

/// Are `a` and `b` the same path, or is one beneath the other?
fn related(a: &RelPath, b: &RelPath) -> bool {
    a == b || a.is_ancestor_of(b) || b.is_ancestor_of(a)
}

/// Absence is never a deletion: every path the project ever held and no
/// longer holds was removed by a user, on the project or through a compute
/// server's union (that path or an ancestor of it).
pub fn check_losses_caused_by_users<'a>(
    project: &ProjectHome,
    computes: impl IntoIterator<Item = &'a ComputeUnion> + Clone,
) -> Result<(), String> {
    for path in project
        .ever
        .iter()
        .filter(|p| !project.tree.contains_key(*p))
    {
        let removed_at = |removed: &BTreeSet<RelPath>| {
            removed.contains(path) || path.ancestors().any(|a| removed.contains(&a))
        };
        let by_user = removed_at(&project.user_removed)
            || computes
                .clone()
                .into_iter()
                .any(|c| removed_at(&c.user_removed));
        if !by_user {
            return Err(format!(
                "{path}: gone from the project, but no user removed it"
            ));
        }
    }
    Ok(())
}

/// A conflict only where the project changed the path: its users, or the
/// syncs of *other* compute servers, changed that path, an ancestor or a
/// descendant of it (a compute server's own pushes are no project change).
pub fn check_conflicts_where_project_changed(project: &ProjectHome) -> Result<(), String> {
    for (id, path, _) in &project.conflicts {
        let changed = project
            .changed_by
            .iter()
            .any(|(by, p)| *by != Some(*id) && related(p, path));
        if !changed {
            return Err(format!(
                "{path}: a conflict for compute-{id}, but the project never changed it"
            ));
        }
    }
    Ok(())
}
