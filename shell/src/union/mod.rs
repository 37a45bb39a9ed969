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

use std::io;
use std::path::Path;
use std::sync::{Arc, RwLock};

use fuser::{BackgroundSession, Config, MountOption};

use crate::beneath::Root;
use fs::UnionFs;
use journal::SharedJournal;
use layers::Layers;

/// A mounted union; dropping it unmounts.
pub struct Mounted {
    session: BackgroundSession,
    pub journal: SharedJournal,
    /// Held exclusively by the sync while it changes the upper.
    pub tree: Arc<RwLock<()>>,
}

impl Mounted {
    pub fn notifier(&self) -> fuser::Notifier {
        self.session.notifier()
    }

    /// Unmounts and waits for the request threads to end.
    pub fn unmount(self) -> io::Result<()> {
        self.session.umount_and_join()
    }
}

/// Mounts the union of `upper` (with `whiteouts`) over `lower` at `mountpoint`.
pub fn mount(
    mountpoint: &Path,
    upper: &Path,
    whiteouts: &Path,
    lower: &Path,
    journal: SharedJournal,
) -> io::Result<Mounted> {
    let layers = Layers::new(
        Root::create(upper)?,
        Root::open(lower)?,
        Root::create(whiteouts)?,
    )?;
    let tree = Arc::new(RwLock::new(()));
    let fs = UnionFs::new(layers, journal.clone(), tree.clone());
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName("unionsync".into()),
        MountOption::Subtype("unionsync".into()),
        MountOption::DefaultPermissions,
    ];
    config.n_threads = Some(4);
    config.clone_fd = true;
    let session = fuser::spawn_mount2(fs, mountpoint, &config)?;
    Ok(Mounted {
        session,
        journal,
        tree,
    })
}
