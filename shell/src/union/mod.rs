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
//! - [`journal`]: what changed since the last sync.

pub mod fs;
pub mod journal;
pub mod layers;

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock, RwLockWriteGuard};

use fuser::{BackgroundSession, Config, INodeNo, MountOption, Notifier};
use unionsync_core::RelPath;

use crate::beneath::Root;
use fs::{lock, Inodes, UnionFs};
use journal::SharedJournal;
use layers::Layers;

/// A mounted union; dropping it unmounts.
pub struct Mounted {
    session: BackgroundSession,
    pub journal: SharedJournal,
    /// Held exclusively by the sync while it changes the upper.
    pub tree: Arc<RwLock<()>>,
    inodes: Arc<Mutex<Inodes>>,
}

/// What the sync needs of a live mount: the journal, the lock that keeps
/// its steps apart from the user's, and a way to make the kernel forget
/// what it cached about the paths it changed.
#[derive(Clone)]
pub struct MountLink {
    pub journal: SharedJournal,
    tree: Arc<RwLock<()>>,
    inodes: Arc<Mutex<Inodes>>,
    notifier: Notifier,
}

impl MountLink {
    /// Excludes every structural change through the mount while held.
    pub fn exclusive(&self) -> RwLockWriteGuard<'_, ()> {
        self.tree.write().unwrap_or_else(|p| p.into_inner())
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
            tree: self.tree.clone(),
            inodes: self.inodes.clone(),
            notifier: self.session.notifier(),
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
    let tree = Arc::new(RwLock::new(()));
    let inodes = Arc::new(Mutex::new(Inodes::default()));
    let fs = UnionFs::new(layers, journal.clone(), tree.clone(), inodes.clone());
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName("unionsync".into()),
        MountOption::Subtype("unionsync".into()),
        MountOption::DefaultPermissions,
    ];
    // Enough threads that requests stuck on a dead lower (until sshfs or NFS
    // gives up on it) do not stall work on the upper.
    config.n_threads = Some(16);
    config.clone_fd = true;
    let session = fuser::spawn_mount2(fs, mountpoint, &config)?;
    Ok(Mounted {
        session,
        journal,
        tree,
        inodes,
    })
}
