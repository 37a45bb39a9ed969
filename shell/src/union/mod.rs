//! The union mount: a local, read-write upper over a read-only lower (the
//! project home through a network mount), served with FUSE.
//!
//! ```text
//! user processes ─► kernel ─► UnionFs (fuser, several threads)
//!                               ├─ Layers: upper │ whiteouts │ lower
//!                               └─ Journal ◄── compute agent (syncs what changed)
//! ```
//!
//! - [`layers`]: the union by path (resolution, copy-up, whiteouts);
//! - [`fs`]: the FUSE edge (inodes, handles, errno);
//! - [`index`]: the project's metadata of the lower, answering without
//!   the network;
//! - [`journal`]: what changed since the last sync.

pub mod fs;
pub mod gate;
pub mod index;
pub mod journal;
pub mod layers;
pub mod tree;

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLockWriteGuard};

use fuser::{BackgroundSession, Config, INodeNo, MountOption, Notifier};
use unionsync_core::{IndexUpdate, Meta, RelPath};

use crate::beneath::Root;
use fs::{lock, Inodes, UnionFs};
use journal::{Seen, SharedJournal};
use layers::Layers;
use tree::Tree;

/// A mounted union; dropping it unmounts.
pub struct Mounted {
    session: BackgroundSession,
    mountpoint: PathBuf,
    pub journal: SharedJournal,
    /// Held exclusively by the sync while it changes the upper.
    pub tree: Arc<Tree>,
    inodes: Arc<Mutex<Inodes>>,
    layers: Arc<Layers>,
    reads: Arc<Mutex<BTreeSet<RelPath>>>,
}

/// What the sync needs of a live mount: the journal, the lock that keeps
/// its steps apart from the user's, and a way to make the kernel forget
/// what it cached about the paths it changed.
#[derive(Clone)]
pub struct MountLink {
    pub journal: SharedJournal,
    /// Where the union is mounted (operations on the view go through it).
    pub mountpoint: PathBuf,
    tree: Arc<Tree>,
    inodes: Arc<Mutex<Inodes>>,
    notifier: Notifier,
    layers: Arc<Layers>,
    reads: Arc<Mutex<BTreeSet<RelPath>>>,
}

/// Read caching bounds: files larger than this are never cached, and one
/// sync caches at most `CACHE_PER_SYNC` bytes (the rest wait for the next).
const MAX_CACHED_FILE: u64 = 64 << 20;
const CACHE_PER_SYNC: u64 = 256 << 20;

impl MountLink {
    /// Excludes every structural change through the mount while held.
    pub fn exclusive(&self) -> RwLockWriteGuard<'_, ()> {
        self.tree.exclusive()
    }

    /// Copies the lower files read since the last call into the upper as
    /// clean copies (later reads are local), journaled so the sync records
    /// them: their content equals the project's, so no data moves, and a
    /// later project change is pulled into them like into any upper file.
    /// Returns how many were cached.
    pub fn cache_reads(&self) -> usize {
        let pending: Vec<RelPath> = std::mem::take(&mut *lock(&self.reads))
            .into_iter()
            .collect();
        let (mut budget, mut cached) = (CACHE_PER_SYNC, Vec::new());
        for (i, path) in pending.iter().enumerate() {
            if budget == 0 {
                // Over budget: the rest wait for the next sync.
                lock(&self.reads).extend(pending[i..].iter().cloned());
                break;
            }
            let fetched = match self
                .layers
                .fetch_for_cache(path, MAX_CACHED_FILE.min(budget))
            {
                Ok(Some(fetched)) => fetched,
                Ok(None) => continue,
                Err(error) => {
                    tracing::debug!(%path, %error, "not cached");
                    continue;
                }
            };
            let (temp, stat) = fetched;
            let placed = {
                let _exclusive = self.exclusive();
                let seen = Seen {
                    meta: Some(crate::beneath::meta_of(&stat, None)),
                    via_mount: !self.layers.has_index(),
                };
                match self.layers.place_fetched(path, &temp, &stat) {
                    Ok(true) => {
                        self.journal.lock().note(path, false, || seen);
                        true
                    }
                    Ok(false) => false,
                    Err(error) => {
                        tracing::debug!(%path, %error, "not cached");
                        false
                    }
                }
            };
            if placed {
                budget = budget.saturating_sub(stat.st_size as u64);
                cached.push(path.clone());
            }
        }
        self.invalidate(&cached);
        cached.len()
    }

    /// `unionsync copy --from-project`: the view of `path` becomes the
    /// project's current version, now, whatever the sync is doing. What the
    /// compute side had there is kept in `<upper>/.unionsync/replaced/
    /// <stamp>/<path>` (never synced). The change is journaled like a
    /// user's, so the next sync records both sides as equal. Returns how many
    /// entries the view changed.
    pub fn take_project_version(&self, path: &RelPath, stamp: &str) -> io::Result<usize> {
        let mut aside = format!(".unionsync/replaced/{stamp}/").into_bytes();
        aside.extend_from_slice(path.as_bytes());
        let aside = RelPath::new(aside).map_err(layers::path_error)?;
        let changed = {
            let _exclusive = self.exclusive();
            let changed = self.layers.take_lower_version(path, &aside)?;
            let mut journal = self.journal.lock();
            for changed in &changed {
                journal.note(changed, false, || {
                    self.layers.lower_seen(changed).unwrap_or_default()
                });
            }
            changed
        };
        self.journal.changed();
        self.invalidate(&changed);
        Ok(changed.len())
    }

    /// What the lower shows at `path` (see [`Layers::lower_seen`]).
    pub fn lower_seen(&self, path: &RelPath) -> io::Result<Seen> {
        self.layers.lower_seen(path)
    }

    /// A sync committed: the project holds these states now (`None`:
    /// nothing). The lower index learns them before the project's own news
    /// arrives. (Present ones are in the upper, which shows them already;
    /// absent ones may have shown through the lower until now.)
    pub fn project_agreed(&self, states: &[(RelPath, Option<Meta>)]) {
        self.layers.update_index(states);
        let gone: Vec<RelPath> = states
            .iter()
            .filter(|(_, meta)| meta.is_none())
            .map(|(path, _)| path.clone())
            .collect();
        self.invalidate(&gone);
    }

    /// A whiteout is dropped because the project no longer has `path`: the
    /// index forgets it too. (Called under [`MountLink::exclusive`]: the
    /// kernel saw nothing there and still does, so nothing to invalidate.)
    pub fn project_agreed_gone(&self, path: &RelPath) {
        self.layers.update_index(&[(path.clone(), None)]);
    }

    /// Applies the project's index news and makes the kernel forget what
    /// it cached about the paths it changes.
    pub fn update_index(&self, update: IndexUpdate) {
        let changed = match update {
            IndexUpdate::Snapshot(entries) => {
                tracing::debug!(entries = entries.len(), "lower index snapshot");
                self.layers.replace_index(entries)
            }
            IndexUpdate::Delta(changes) => {
                tracing::debug!(changes = changes.len(), "lower index delta");
                self.layers.update_index(&changes);
                changes.into_iter().map(|(path, _)| path).collect()
            }
        };
        self.invalidate(&changed);
    }

    /// Drops the kernel's cached entry, attributes and pages of `paths`
    /// (call without holding [`MountLink::exclusive`]: the kernel may wait
    /// for requests that wait for that lock).
    pub fn invalidate(&self, paths: &[RelPath]) {
        for path in paths {
            let (ino, parent) = {
                let inodes = lock(&self.inodes);
                (
                    inodes.known(Some(path)),
                    inodes.known(path.parent().as_ref()),
                )
            };
            // ENOENT: the kernel holds nothing for it; nothing to drop.
            if let Some(ino) = ino {
                let _ = self.notifier.inval_inode(INodeNo(ino), 0, 0);
            }
            // A directory that is still one keeps its entry: dropping it
            // would unhash it under every process working in it (getcwd
            // fails, `git` cannot find its repository). Its attributes and
            // listing are refreshed by the line above; a child that changed
            // is invalidated by its own name.
            let still_a_directory = self
                .layers
                .resolve(path)
                .is_ok_and(|view| view.is_some_and(|(_, stat)| layers::is_dir(&stat)));
            if still_a_directory && ino.is_some() {
                continue;
            }
            if let Some(parent) = parent {
                let name = OsStr::from_bytes(path.file_name());
                let _ = self.notifier.inval_entry(INodeNo(parent), name);
            }
        }
    }
}

impl Mounted {
    pub fn link(&self) -> MountLink {
        MountLink {
            journal: self.journal.clone(),
            mountpoint: self.mountpoint.clone(),
            tree: self.tree.clone(),
            inodes: self.inodes.clone(),
            notifier: self.session.notifier(),
            layers: self.layers.clone(),
            reads: self.reads.clone(),
        }
    }

    /// Unmounts and waits for the request threads to end.
    pub fn unmount(self) -> io::Result<()> {
        self.session.umount_and_join()
    }
}

/// Mounts the union of `upper` (with `whiteouts`) over `lower` at
/// `mountpoint`; `local_only` paths live in the upper alone and never sync.
pub fn mount(
    mountpoint: &Path,
    upper: &Path,
    whiteouts: &Path,
    lower: &Path,
    local_only: Vec<RelPath>,
    journal: SharedJournal,
) -> io::Result<Mounted> {
    let layers = Layers::new(
        Root::create(upper)?,
        Root::open(lower)?,
        Root::create(whiteouts)?,
        local_only,
    )?;
    let tree = Arc::new(Tree::default());
    let inodes = Arc::new(Mutex::new(Inodes::default()));
    let layers = Arc::new(layers);
    let reads = Arc::new(Mutex::new(BTreeSet::new()));
    let fs = UnionFs::new(
        layers.clone(),
        reads.clone(),
        journal.clone(),
        tree.clone(),
        inodes.clone(),
    );
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName("unionsync".into()),
        MountOption::Subtype("unionsync".into()),
        MountOption::DefaultPermissions,
        // The daemon runs as root and the view holds what any user of
        // either host wrote: nothing in it may raise privileges.
        MountOption::NoSuid,
        MountOption::NoDev,
    ];
    // Twice as many threads as may wait on the lower (see `gate`): requests
    // stuck on a hung lower never stall work on the upper.
    config.n_threads = Some(2 * layers::LOWER_CALLERS);
    config.clone_fd = true;
    let session = fuser::spawn_mount2(fs, mountpoint, &config)?;
    Ok(Mounted {
        session,
        mountpoint: mountpoint.to_path_buf(),
        journal,
        tree,
        inodes,
        layers,
        reads,
    })
}
