//! The FUSE edge: inode and handle tables over [`Layers`], every mutation
//! journaled. FUSE types stay in this file; the helpers return
//! `Result<_, Errno>` and the trait methods only reply.
//!
//! ```text
//! kernel ─► lookup/getattr/readdir/open ─► Tree::consistent (no lock) ─► Layers::resolve / list
//!        ─► create/write/unlink/rename/setattr ─► fetch a lower file's copy (no lock)
//!                                                 ─► write lock ─► journal.note(path, seen)
//!                                                 ─► place the copy-up ─► upper / whiteouts
//!        ─► read/write on an open handle ─► pread/pwrite (no lock)
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLockWriteGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr,
    Request, TimeOrNow, WriteFlags,
};
use rustix::fs::{OFlags, Stat, Timespec};
use unionsync_core::{Meta, RelPath};

use super::journal::{Seen, SharedJournal};
use super::layers::{is_dir, path_error, Layer, Layers};
use super::tree::Tree;
use crate::beneath::meta_of;

/// How long the kernel may cache an upper entry, its attributes, and a
/// name known to be absent from both layers: only this mount and the sync
/// change those, and the sync invalidates what it changes.
const UPPER_TTL: Duration = Duration::from_secs(60);
/// The same for an entry the lower shows, which the project may change
/// behind our back.
const LOWER_TTL: Duration = Duration::from_secs(1);

type Result<T> = std::result::Result<T, Errno>;

/// The errno for a failed operation. A lower whose network is gone fails
/// with connection errors (ENOTCONN from a dead FUSE mount, ETIMEDOUT …);
/// to a program those are EIO, the error of a disk that cannot be read.
fn errno(error: std::io::Error) -> Errno {
    use rustix::io::Errno as E;
    let gone = [
        E::NOTCONN,
        E::CONNABORTED,
        E::CONNRESET,
        E::TIMEDOUT,
        E::HOSTDOWN,
        E::HOSTUNREACH,
        E::NETDOWN,
        E::NETUNREACH,
    ];
    match E::from_io_error(&error) {
        Some(e) if gone.contains(&e) => Errno::EIO,
        _ => Errno::from(error),
    }
}

/// Inode numbers, stable for the life of the mount: one per path the
/// kernel has seen. A path removed loses its number (a new file there gets
/// a new one); its open handles keep working.
#[derive(Default)]
pub(crate) struct Inodes {
    paths: HashMap<u64, RelPath>,
    /// Ordered so that a path's descendants follow it (`RelPath` order).
    numbers: BTreeMap<RelPath, u64>,
    next: u64,
}

pub(crate) const ROOT: u64 = 1;

impl Inodes {
    /// The number of `path` if the kernel was told one (`None`: the root).
    pub(crate) fn known(&self, path: Option<&RelPath>) -> Option<u64> {
        match path {
            None => Some(ROOT),
            Some(path) => self.numbers.get(path).copied(),
        }
    }

    fn number(&mut self, path: &RelPath) -> u64 {
        if let Some(ino) = self.numbers.get(path) {
            return *ino;
        }
        self.next = self.next.max(ROOT) + 1;
        self.numbers.insert(path.clone(), self.next);
        self.paths.insert(self.next, path.clone());
        self.next
    }

    /// `None` for the root.
    fn path(&self, ino: u64) -> Result<Option<RelPath>> {
        if ino == ROOT {
            return Ok(None);
        }
        self.paths.get(&ino).cloned().map(Some).ok_or(Errno::ENOENT)
    }

    /// `path` and everything below it that has a number.
    fn below(&self, path: &RelPath) -> Vec<(RelPath, u64)> {
        self.numbers
            .range(path.clone()..)
            .take_while(|(p, _)| *p == path || path.is_ancestor_of(p))
            .map(|(p, ino)| (p.clone(), *ino))
            .collect()
    }

    fn forget_path(&mut self, path: &RelPath) {
        for (p, ino) in self.below(path) {
            self.numbers.remove(&p);
            self.paths.remove(&ino);
        }
    }

    /// Moves `from` and everything below it to `to`, keeping their numbers.
    fn rename(&mut self, from: &RelPath, to: &RelPath) {
        self.forget_path(to);
        for (old, ino) in self.below(from) {
            let rest = &old.as_bytes()[from.as_bytes().len()..];
            let mut bytes = to.as_bytes().to_vec();
            bytes.extend_from_slice(rest);
            let Ok(new) = RelPath::new(bytes) else {
                continue;
            };
            self.numbers.remove(&old);
            self.numbers.insert(new.clone(), ino);
            self.paths.insert(ino, new);
        }
    }
}

struct Handle {
    file: File,
    ino: u64,
    /// Opened for writing: its path is journaled again at release, since
    /// writes through passthrough never reach this process.
    writable: bool,
    /// An upper file (`false`: a lower one, read-only, never changed).
    upper: bool,
    /// How the kernel serves it, kept until release.
    serving: Mutex<Serving>,
}

/// How the kernel serves an open file's reads and writes.
enum Serving {
    /// Not decided yet (the open's reply is being made).
    Pending,
    /// Through `read`/`write` here.
    Here,
    /// By the kernel (passthrough), through this backing id.
    Kernel(Arc<fuser::BackingId>),
}

/// Lower files read between two syncs that are remembered for caching.
const MAX_PENDING_READS: usize = 10_000;

/// One entry of an open directory: inode, type, name.
type Listing = (u64, FileType, Vec<u8>);

pub struct UnionFs {
    layers: Arc<Layers>,
    journal: SharedJournal,
    /// Lower files read since the last sync (cached at its start).
    reads: Arc<Mutex<BTreeSet<RelPath>>>,
    /// Structure changes (and the sync's steps) exclusive; reads hold
    /// nothing (see [`Tree`]).
    tree: Arc<Tree>,
    inodes: Arc<Mutex<Inodes>>,
    files: Mutex<HashMap<u64, Arc<Handle>>>,
    dirs: Mutex<HashMap<u64, Vec<Listing>>>,
    next_handle: AtomicU64,
    /// Upper files are served by the kernel directly (FUSE passthrough)
    /// while this holds; off if the kernel or our privileges refuse.
    passthrough: std::sync::atomic::AtomicBool,
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Tables stay consistent across a panicking request: each update is a
    // single insert or remove.
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

fn kind_of(stat: &Stat) -> FileType {
    use rustix::fs::FileType as F;
    match F::from_raw_mode(stat.st_mode) {
        F::Directory => FileType::Directory,
        F::Symlink => FileType::Symlink,
        F::Fifo => FileType::NamedPipe,
        F::Socket => FileType::Socket,
        F::CharacterDevice => FileType::CharDevice,
        F::BlockDevice => FileType::BlockDevice,
        _ => FileType::RegularFile,
    }
}

fn time(sec: i64, nsec: u64) -> SystemTime {
    let nanos = Duration::from_nanos(nsec);
    if sec >= 0 {
        UNIX_EPOCH + Duration::from_secs(sec as u64) + nanos
    } else {
        UNIX_EPOCH - Duration::from_secs(sec.unsigned_abs()) + nanos
    }
}

fn attr(ino: u64, stat: &Stat) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size: stat.st_size as u64,
        blocks: stat.st_blocks as u64,
        atime: time(stat.st_atime, stat.st_atime_nsec),
        mtime: time(stat.st_mtime, stat.st_mtime_nsec),
        ctime: time(stat.st_ctime, stat.st_ctime_nsec),
        crtime: UNIX_EPOCH,
        kind: kind_of(stat),
        perm: (stat.st_mode & 0o7777) as u16,
        nlink: stat.st_nlink as u32,
        uid: stat.st_uid,
        gid: stat.st_gid,
        rdev: stat.st_rdev as u32,
        blksize: stat.st_blksize as u32,
        flags: 0,
    }
}

fn timespec(time: TimeOrNow) -> Timespec {
    let time = match time {
        TimeOrNow::SpecificTime(time) => time,
        TimeOrNow::Now => SystemTime::now(),
    };
    let (sec, nsec) = match time.duration_since(UNIX_EPOCH) {
        Ok(d) => (d.as_secs() as i64, d.subsec_nanos()),
        Err(e) => {
            let d = e.duration();
            (-(d.as_secs() as i64) - 1, 1_000_000_000 - d.subsec_nanos())
        }
    };
    Timespec {
        tv_sec: sec,
        tv_nsec: nsec as _,
    }
}

impl UnionFs {
    pub(crate) fn new(
        layers: Arc<Layers>,
        reads: Arc<Mutex<BTreeSet<RelPath>>>,
        journal: SharedJournal,
        tree: Arc<Tree>,
        inodes: Arc<Mutex<Inodes>>,
    ) -> UnionFs {
        UnionFs {
            layers,
            reads,
            journal,
            tree,
            inodes,
            files: Mutex::new(HashMap::new()),
            dirs: Mutex::new(HashMap::new()),
            next_handle: AtomicU64::new(1),
            passthrough: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn path(&self, ino: INodeNo) -> Result<Option<RelPath>> {
        lock(&self.inodes).path(ino.0)
    }

    fn child(&self, parent: INodeNo, name: &OsStr) -> Result<RelPath> {
        let name = name.as_bytes();
        match self.path(parent)? {
            Some(dir) => dir.join(name),
            None => RelPath::new(name.to_vec()),
        }
        .map_err(|e| errno(path_error(e)))
    }

    /// Held by every structural change (and by the sync's steps): one at
    /// a time. Never held while waiting on the lower.
    fn exclusive(&self) -> RwLockWriteGuard<'_, ()> {
        self.tree.exclusive()
    }

    /// The exclusive lock, with `path` copied up first if the lower shows
    /// it (and journaled). A lower file's content is fetched before the
    /// lock is taken, so a hung lower holds up this request alone; it is
    /// placed under the lock if the lower still shows what was fetched
    /// (else copied there).
    fn copied_up(&self, path: &RelPath) -> Result<RwLockWriteGuard<'_, ()>> {
        let paths = std::slice::from_ref(path);
        let mut fetched = self.layers.fetch_for_copy_up(paths).map_err(errno)?;
        let tree = self.exclusive();
        self.note(path);
        self.layers
            .copy_up_fetched(path, &mut fetched)
            .map_err(errno)?;
        Ok(tree)
    }

    /// The lower files of `path`'s subtree, fetched for its copy-up before
    /// a rename takes the exclusive lock (see [`UnionFs::copied_up`]).
    fn fetch_subtree(&self, path: &RelPath) -> Result<super::layers::Fetched<'_>> {
        let paths = self.tree.consistent(|| self.subtree(path))?;
        self.layers.fetch_for_copy_up(&paths).map_err(errno)
    }

    /// How long the kernel may keep an entry of `layer`: lower entries
    /// only briefly unless the index answers for them (its changes are
    /// invalidated).
    fn ttl(&self, layer: Layer) -> Duration {
        match layer {
            Layer::Lower if !self.layers.has_index() => LOWER_TTL,
            _ => UPPER_TTL,
        }
    }

    fn number(&self, path: &RelPath) -> u64 {
        lock(&self.inodes).number(path)
    }

    fn stat(&self, path: Option<&RelPath>) -> Result<Stat> {
        self.stat_layer(path).map(|(_, stat)| stat)
    }

    /// The layer showing `path` (the root is the upper's) and its stat.
    fn stat_layer(&self, path: Option<&RelPath>) -> Result<(Layer, Stat)> {
        match path {
            None => Ok((Layer::Upper, self.layers.root_stat().map_err(errno)?)),
            Some(path) => self
                .layers
                .resolve(path)
                .map_err(errno)?
                .ok_or(Errno::ENOENT),
        }
    }

    /// The entry the kernel gets for `path`, with how long it may keep it.
    fn entry(&self, path: &RelPath) -> Result<(FileAttr, Duration)> {
        let (layer, stat) = self.stat_layer(Some(path))?;
        Ok((attr(self.number(path), &stat), self.ttl(layer)))
    }

    /// Journals a change of `path` (before making it): the first change
    /// since the last commit records what the lower showed.
    fn note(&self, path: &RelPath) {
        let layers = &self.layers;
        if layers.is_local_only(path) {
            return;
        }
        // An unreadable lower counts as "nothing seen": the project's
        // version then wins a conflict, and this side's is preserved.
        self.journal
            .lock()
            .note(path, false, || layers.lower_seen(path).unwrap_or_default());
        self.journal.changed();
    }

    /// Journals `path` again once its change is made: a sync that collected
    /// between the first note and the change (a copy-up can take long) saw
    /// no change yet, and its commit dropped the entry.
    fn noted_after(&self, path: &RelPath) {
        if !self.layers.is_local_only(path) {
            self.journal.lock().note(path, false, Seen::nothing);
        }
    }

    /// Journals the creation of `path` over nothing in either layer.
    fn note_created(&self, path: &RelPath) {
        if self.layers.is_local_only(path) {
            return;
        }
        self.journal.lock().note_created(path);
        self.journal.changed();
    }

    /// Whether removing `path` from the union must leave a whiteout: always,
    /// unless it exists only here (created over nothing since the last sync
    /// collected changes). A deletion is synced only from a whiteout, so a
    /// path that a sync may have pushed meanwhile, or that the lower shows
    /// (the index may lag behind a push), gets one.
    fn removal_needs_whiteout(&self, path: &RelPath, in_lower: bool) -> bool {
        !self.layers.is_local_only(path) && (in_lower || !self.journal.lock().created_here(path))
    }

    /// `path` and everything below it in the union, parents first.
    fn subtree(&self, path: &RelPath) -> Result<Vec<RelPath>> {
        let mut out = vec![path.clone()];
        let mut i = 0;
        while i < out.len() {
            let dir = out[i].clone();
            if self
                .layers
                .resolve(&dir)
                .map_err(errno)?
                .is_some_and(|(_, s)| is_dir(&s))
            {
                for listed in self.layers.list(Some(&dir)).map_err(errno)? {
                    out.push(dir.join(&listed.name).map_err(|e| errno(path_error(e)))?);
                }
            }
            i += 1;
        }
        Ok(out)
    }

    /// The parent directory of a new entry must exist in the union.
    fn parent_dir(&self, path: &RelPath) -> Result<()> {
        let stat = self.stat(path.parent().as_ref())?;
        if is_dir(&stat) {
            Ok(())
        } else {
            Err(Errno::ENOTDIR)
        }
    }

    fn create_entry(
        &self,
        path: &RelPath,
        make: impl FnOnce(&Layers) -> std::io::Result<()>,
    ) -> Result<(FileAttr, Duration)> {
        let _tree = self.exclusive();
        self.parent_dir(path)?;
        // Absent from the union means absent from both layers here (or
        // hidden in the lower): the new entry is made over nothing.
        if self.layers.resolve(path).map_err(errno)?.is_some() {
            return Err(Errno::EEXIST);
        }
        self.note_created(path);
        self.layers
            .upper_dirs(path.parent().as_ref())
            .map_err(errno)?;
        make(&self.layers).map_err(errno)?;
        self.noted_after(path);
        let (attr, ttl) = self.entry(path)?;
        if attr.kind == FileType::Directory {
            self.layers.created_over_nothing(path);
        }
        Ok((attr, ttl))
    }

    fn do_create(
        &self,
        path: &RelPath,
        mode: u32,
        umask: u32,
        flags: i32,
    ) -> Result<(FileAttr, u64)> {
        let open_flags = OFlags::from_bits_retain(flags as u32)
            & (OFlags::RWMODE | OFlags::APPEND | OFlags::SYNC | OFlags::DSYNC | OFlags::NONBLOCK);
        let mut file = None;
        let (attr, _) = self.create_entry(path, |layers| {
            file = Some(layers.upper.open_with(
                path,
                open_flags | OFlags::CREATE | OFlags::EXCL,
                mode & !umask & 0o7777,
            )?);
            Ok(())
        })?;
        let file = file.ok_or(Errno::EIO)?;
        let writable = open_flags.intersects(OFlags::WRONLY | OFlags::RDWR);
        Ok((attr, self.add_handle(file, attr.ino.0, writable, true)))
    }

    fn add_handle(&self, file: File, ino: u64, writable: bool, upper: bool) -> u64 {
        let fh = self.next_handle.fetch_add(1, Ordering::Relaxed);
        let handle = Handle {
            file,
            ino,
            writable,
            upper,
            serving: Mutex::new(Serving::Pending),
        };
        lock(&self.files).insert(fh, Arc::new(handle));
        fh
    }

    /// Decides how the kernel serves handle `fh`: by passthrough (the
    /// backing id to reply with) or through `read`/`write` here (`None`).
    /// The kernel serves all open files of an inode alike, through one
    /// backing file, and fails an open that differs with EIO: so an open of
    /// an inode already open follows the others (a lower file, never
    /// passthrough, keeps its inode served here while it is open).
    fn backing(
        &self,
        fh: u64,
        upper: bool,
        open: impl FnOnce(&File) -> std::io::Result<fuser::BackingId>,
    ) -> Option<Arc<fuser::BackingId>> {
        // Held throughout, so concurrent opens of one inode agree.
        let files = lock(&self.files);
        let handle = files.get(&fh)?.clone();
        let (mut shared, mut here) = (None, false);
        for other in files.values() {
            if other.ino != handle.ino || Arc::ptr_eq(other, &handle) {
                continue;
            }
            match &*lock(&other.serving) {
                Serving::Pending => {}
                Serving::Here => here = true,
                Serving::Kernel(id) => shared = Some(id.clone()),
            }
        }
        let serving = match shared {
            Some(id) if upper => Serving::Kernel(id),
            _ if here || !upper || !self.passthrough.load(Ordering::Relaxed) => Serving::Here,
            _ => match open(&handle.file) {
                Ok(id) => Serving::Kernel(Arc::new(id)),
                Err(error) => {
                    tracing::warn!(%error, "FUSE passthrough refused: serving reads and writes here");
                    self.passthrough.store(false, Ordering::Relaxed);
                    Serving::Here
                }
            },
        };
        let id = match &serving {
            Serving::Kernel(id) => Some(id.clone()),
            _ => None,
        };
        *lock(&handle.serving) = serving;
        id
    }

    fn handle(&self, fh: FileHandle) -> Result<Arc<Handle>> {
        lock(&self.files).get(&fh.0).cloned().ok_or(Errno::EBADF)
    }

    /// Opens a handle; `true` when it is an upper file (passthrough-able).
    fn do_open(&self, ino: INodeNo, flags: OpenFlags) -> Result<(u64, bool)> {
        let path = self.path(ino)?.ok_or(Errno::EISDIR)?;
        let raw = OFlags::from_bits_retain(flags.0 as u32);
        let writes = raw.intersects(OFlags::WRONLY | OFlags::RDWR | OFlags::TRUNC);
        let keep = OFlags::RWMODE | OFlags::APPEND | OFlags::TRUNC | OFlags::SYNC | OFlags::DSYNC;
        let (file, upper) = if writes {
            let _tree = self.copied_up(&path)?;
            let file = self.layers.upper.open_with(&path, raw & keep, 0);
            self.noted_after(&path);
            (file, true)
        } else {
            // Opened holding no lock (a lower's open may hang). A lower
            // file copied up meanwhile is read from its copy (see `read`).
            let (path, layer) = self.tree.consistent(|| {
                // Read again: a rename may have moved it meanwhile.
                let path = self.path(ino)?.ok_or(Errno::EISDIR)?;
                let (layer, _) = self.stat_layer(Some(&path))?;
                Ok::<_, Errno>((path, layer))
            })?;
            match layer {
                Layer::Upper => (self.layers.upper.open_with(&path, raw & keep, 0), true),
                Layer::Lower => {
                    let mut reads = lock(&self.reads);
                    if reads.len() < MAX_PENDING_READS && !self.layers.is_local_only(&path) {
                        reads.insert(path.clone());
                    }
                    drop(reads);
                    let lower =
                        |root: &crate::beneath::Root| root.open_with(&path, OFlags::RDONLY, 0);
                    (self.layers.on_lower(lower), false)
                }
            }
        };
        let writable = raw.intersects(OFlags::WRONLY | OFlags::RDWR);
        Ok((
            self.add_handle(file.map_err(errno)?, ino.0, writable, upper),
            upper,
        ))
    }

    fn do_setattr(
        &self,
        ino: INodeNo,
        mode: Option<u32>,
        owner: (Option<u32>, Option<u32>),
        size: Option<u64>,
        times: (Option<TimeOrNow>, Option<TimeOrNow>),
        fh: Option<FileHandle>,
    ) -> Result<FileAttr> {
        let path = match self.path(ino) {
            Ok(Some(path)) => path,
            // The root is the upper's own directory.
            Ok(None) => return Err(Errno::EPERM),
            // Unlinked (or renamed over) while open.
            Err(_) => return self.setattr_unlinked(ino.0, fh, mode, owner, size, times),
        };
        let _tree = self.copied_up(&path)?;
        let upper = &self.layers.upper;
        if let Some(mode) = mode {
            upper.chmod(&path, mode).map_err(errno)?;
        }
        if owner.0.is_some() || owner.1.is_some() {
            upper.chown(&path, owner.0, owner.1).map_err(errno)?;
        }
        if let Some(size) = size {
            match fh.map(|fh| self.handle(fh)).transpose()? {
                Some(handle) => handle.file.set_len(size),
                None => upper
                    .open_with(&path, OFlags::WRONLY, 0)
                    .and_then(|f| f.set_len(size)),
            }
            .map_err(errno)?;
        }
        if times.0.is_some() || times.1.is_some() {
            upper
                .set_times(&path, times.0.map(timespec), times.1.map(timespec))
                .map_err(errno)?;
        }
        self.noted_after(&path);
        let stat = upper.lstat(&path).map_err(errno)?.ok_or(Errno::ENOENT)?;
        Ok(attr(ino.0, &stat))
    }

    /// `setattr` of a file unlinked (or renamed over) while open: there is
    /// no path left, so it goes through an open upper handle.
    fn setattr_unlinked(
        &self,
        ino: u64,
        fh: Option<FileHandle>,
        mode: Option<u32>,
        owner: (Option<u32>, Option<u32>),
        size: Option<u64>,
        times: (Option<TimeOrNow>, Option<TimeOrNow>),
    ) -> Result<FileAttr> {
        let handle = match fh {
            Some(fh) => self.handle(fh)?,
            None => lock(&self.files)
                .values()
                .find(|h| h.ino == ino && h.upper)
                .cloned()
                .ok_or(Errno::ENOENT)?,
        };
        if !handle.upper {
            // Never a change to the lower.
            return Err(Errno::EROFS);
        }
        let file = &handle.file;
        let sys = |e: rustix::io::Errno| errno(e.into());
        if let Some(mode) = mode {
            rustix::fs::fchmod(file, rustix::fs::Mode::from_raw_mode(mode & 0o7777))
                .map_err(sys)?;
        }
        if owner.0.is_some() || owner.1.is_some() {
            let uid = owner.0.map(rustix::fs::Uid::from_raw);
            let gid = owner.1.map(rustix::fs::Gid::from_raw);
            rustix::fs::fchown(file, uid, gid).map_err(sys)?;
        }
        if let Some(size) = size {
            file.set_len(size).map_err(errno)?;
        }
        if times.0.is_some() || times.1.is_some() {
            let omit = Timespec {
                tv_sec: 0,
                tv_nsec: rustix::fs::UTIME_OMIT,
            };
            let times = rustix::fs::Timestamps {
                last_access: times.0.map(timespec).unwrap_or(omit),
                last_modification: times.1.map(timespec).unwrap_or(omit),
            };
            rustix::fs::futimens(file, &times).map_err(sys)?;
        }
        let stat = rustix::fs::fstat(file).map_err(sys)?;
        Ok(attr(ino, &stat))
    }

    fn do_unlink(&self, path: &RelPath, dir: bool) -> Result<()> {
        let _tree = self.exclusive();
        let (layer, stat) = self.stat_layer(Some(path))?;
        match (dir, is_dir(&stat)) {
            (false, true) => return Err(Errno::EISDIR),
            (true, false) => return Err(Errno::ENOTDIR),
            (true, true) if !self.layers.list(Some(path)).map_err(errno)?.is_empty() => {
                return Err(Errno::ENOTEMPTY)
            }
            _ => {}
        }
        let in_lower = self.layers.lower_view(path).map_err(errno)?.is_some();
        let whiteout = self.removal_needs_whiteout(path, in_lower);
        self.note(path);
        // The whiteout first: a crash in between leaves the upper entry,
        // which shows over it, rather than a deletion nobody recorded.
        let fresh_whiteout = whiteout && !self.layers.is_whiteout(path).map_err(errno)?;
        if fresh_whiteout {
            self.layers.whiteout(path).map_err(errno)?;
        }
        if layer == Layer::Upper {
            if let Err(error) = self.layers.upper.remove(path, dir) {
                // Nothing was removed: nor is the lower hidden (a whiteout
                // under an upper directory would make it opaque).
                if fresh_whiteout {
                    let _ = self.layers.remove_whiteout(path);
                }
                return Err(errno(error));
            }
        }
        if dir {
            self.layers.clear_whiteouts_below(path).map_err(errno)?;
        }
        self.noted_after(path);
        lock(&self.inodes).forget_path(path);
        Ok(())
    }

    fn do_rename(&self, from: &RelPath, to: &RelPath, flags: RenameFlags) -> Result<()> {
        if flags.contains(RenameFlags::RENAME_EXCHANGE)
            || flags.contains(RenameFlags::RENAME_WHITEOUT)
        {
            return Err(Errno::EINVAL);
        }
        // What the lower holds of `from` is read before the lock is taken.
        let mut fetched = self.fetch_subtree(from)?;
        let _tree = self.exclusive();
        let (_, source) = self.stat_layer(Some(from))?;
        if from == to {
            return Ok(());
        }
        if from.is_ancestor_of(to) {
            return Err(Errno::EINVAL);
        }
        self.parent_dir(to)?;
        if let Some((_, target)) = self.layers.resolve(to).map_err(errno)? {
            if flags.contains(RenameFlags::RENAME_NOREPLACE) {
                return Err(Errno::EEXIST);
            }
            match (is_dir(&source), is_dir(&target)) {
                (true, false) => return Err(Errno::ENOTDIR),
                (false, true) => return Err(Errno::EISDIR),
                (true, true) if !self.layers.list(Some(to)).map_err(errno)?.is_empty() => {
                    return Err(Errno::ENOTEMPTY)
                }
                _ => {}
            }
        }
        let from_in_lower = self.layers.lower_view(from).map_err(errno)?.is_some();
        let to_in_lower = self.layers.lower_view(to).map_err(errno)?.is_some();
        let whiteout_from = self.removal_needs_whiteout(from, from_in_lower);
        let moved = self.subtree(from)?;
        let mut renamed = Vec::with_capacity(moved.len());
        for old in &moved {
            // What existed only here still does at its new name.
            let only_here = !to_in_lower && self.journal.lock().created_here(old);
            self.note(old);
            let rest = &old.as_bytes()[from.as_bytes().len()..];
            let mut new = to.as_bytes().to_vec();
            new.extend_from_slice(rest);
            match RelPath::new(new) {
                Ok(new) if only_here => {
                    self.note_created(&new);
                    renamed.push(new);
                }
                Ok(new) => {
                    self.note(&new);
                    renamed.push(new);
                }
                Err(_) => {}
            }
        }
        if is_dir(&source) {
            self.layers
                .copy_up_tree(from, &mut fetched)
                .map_err(errno)?;
        } else {
            self.layers
                .copy_up_fetched(from, &mut fetched)
                .map_err(errno)?;
        }
        self.layers
            .upper_dirs(to.parent().as_ref())
            .map_err(errno)?;
        self.layers
            .upper
            .rename(from, to, rustix::fs::RenameFlags::empty())
            .map_err(errno)?;
        self.layers.clear_whiteouts_below(from).map_err(errno)?;
        if whiteout_from {
            self.layers.whiteout(from).map_err(errno)?;
        }
        if to_in_lower {
            self.layers.whiteout(to).map_err(errno)?;
        } else if is_dir(&source) {
            self.layers.created_over_nothing(to);
        }
        for path in moved.iter().chain(&renamed) {
            self.noted_after(path);
        }
        lock(&self.inodes).rename(from, to);
        Ok(())
    }

    fn do_readdir(&self, ino: INodeNo) -> Result<Vec<Listing>> {
        self.tree.consistent(|| self.listing(ino))
    }

    fn listing(&self, ino: INodeNo) -> Result<Vec<Listing>> {
        let dir = self.path(ino)?;
        let parent_ino = match dir.as_ref().and_then(RelPath::parent) {
            Some(parent) => self.number(&parent),
            None => ROOT,
        };
        let mut out = vec![
            (ino.0, FileType::Directory, b".".to_vec()),
            (parent_ino, FileType::Directory, b"..".to_vec()),
        ];
        for listed in self.layers.list(dir.as_ref()).map_err(errno)? {
            let path = match &dir {
                Some(dir) => dir.join(&listed.name),
                None => RelPath::new(listed.name.clone()),
            }
            .map_err(|e| errno(path_error(e)))?;
            out.push((self.number(&path), kind_of(&listed.stat), listed.name));
        }
        Ok(out)
    }

    /// Extended attributes are read from whichever layer shows the path.
    fn read_xattrs(
        &self,
        ino: INodeNo,
        read: impl Fn(&crate::beneath::Root, &RelPath) -> std::io::Result<Vec<u8>>,
    ) -> Result<Vec<u8>> {
        let path = self.path(ino)?.ok_or(Errno::ENOTSUP)?;
        self.tree
            .consistent(|| match self.layers.resolve(&path).map_err(errno)? {
                Some((Layer::Upper, _)) => read(&self.layers.upper, &path).map_err(errno),
                Some((Layer::Lower, _)) => self
                    .layers
                    .on_lower(|lower| read(lower, &path))
                    .map_err(errno),
                None => Err(Errno::ENOENT),
            })
    }

    /// Changing one copies the path up first, like any metadata change.
    fn write_xattrs(
        &self,
        ino: INodeNo,
        write: impl FnOnce(&crate::beneath::Root, &RelPath) -> std::io::Result<()>,
    ) -> Result<()> {
        let path = self.path(ino)?.ok_or(Errno::ENOTSUP)?;
        let _tree = self.copied_up(&path)?;
        write(&self.layers.upper, &path).map_err(errno)?;
        self.noted_after(&path);
        Ok(())
    }

    /// The union's view of `path` as metadata, for the sync.
    pub fn meta(&self, path: &RelPath) -> Option<Meta> {
        let (_, stat) = self.layers.resolve(path).ok()??;
        Some(meta_of(&stat, None))
    }
}

fn reply_entry(reply: ReplyEntry, result: Result<(FileAttr, Duration)>) {
    match result {
        Ok((attr, ttl)) => reply.entry(&ttl, &attr, Generation(0)),
        Err(e) => reply.error(e),
    }
}

/// `size` 0 asks for the length; a buffer too small is ERANGE.
fn reply_xattr(reply: ReplyXattr, size: u32, result: Result<Vec<u8>>) {
    match result {
        Ok(value) if size == 0 => reply.size(value.len() as u32),
        Ok(value) if value.len() > size as usize => reply.error(Errno::ERANGE),
        Ok(value) => reply.data(&value),
        Err(e) => reply.error(e),
    }
}

fn reply_empty(reply: ReplyEmpty, result: Result<()>) {
    match result {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

impl Filesystem for UnionFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Passthrough needs the kernel's consent and a stacking depth for
        // the upper's filesystem beneath this one.
        let passthrough = config
            .add_capabilities(fuser::InitFlags::FUSE_PASSTHROUGH)
            .is_ok()
            && config.set_max_stack_depth(1).is_ok();
        self.passthrough.store(passthrough, Ordering::Relaxed);
        // Fewer round trips: no security.capability lookup before every
        // write (the upper's own filesystem drops privileges on write), and
        // lookups in one directory may run in parallel. (No `flush` either:
        // its ENOSYS tells the kernel not to send one at every close.)
        let _ = config.add_capabilities(
            fuser::InitFlags::FUSE_HANDLE_KILLPRIV_V2 | fuser::InitFlags::FUSE_PARALLEL_DIROPS,
        );
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let result = self.child(parent, name).and_then(|path| {
            if path.is_reserved() {
                return Err(Errno::ENOENT);
            }
            self.tree.consistent(|| match self.entry(&path) {
                // Absent from both layers where only this mount (or the
                // sync, which invalidates) can create it: let the kernel
                // remember that (inode 0 is a negative entry).
                Err(e) if e.code() == Errno::ENOENT.code() && self.layers.lower_skipped(&path) => {
                    let absent = attr(0, &self.stat(None)?);
                    Ok((absent, UPPER_TTL))
                }
                other => other,
            })
        });
        reply_entry(reply, result);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let result = (|| {
            // A lower file's handle is not asked: the file may have been
            // copied up (and changed) since it was opened.
            if let Some(handle) = fh.map(|fh| self.handle(fh)).transpose()? {
                if handle.upper {
                    let stat = rustix::fs::fstat(&handle.file).map_err(|e| errno(e.into()))?;
                    return Ok((attr(handle.ino, &stat), UPPER_TTL));
                }
            }
            let path = match self.path(ino) {
                Ok(path) => path,
                // Unlinked (or renamed over) while open: an open handle
                // still holds the file (fstat sends no handle).
                Err(e) => {
                    let handle = lock(&self.files)
                        .values()
                        .find(|h| h.ino == ino.0)
                        .cloned()
                        .ok_or(e)?;
                    let stat = rustix::fs::fstat(&handle.file).map_err(|e| errno(e.into()))?;
                    return Ok((attr(ino.0, &stat), LOWER_TTL));
                }
            };
            self.tree.consistent(|| {
                let (layer, stat) = self.stat_layer(path.as_ref())?;
                Ok((attr(ino.0, &stat), self.ttl(layer)))
            })
        })();
        match result {
            Ok((attr, ttl)) => reply.attr(&ttl, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        match self.do_setattr(ino, mode, (uid, gid), size, (atime, mtime), fh) {
            Ok(attr) => reply.attr(&UPPER_TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let result = (|| {
            let path = self.path(ino)?.ok_or(Errno::EINVAL)?;
            self.tree
                .consistent(|| match self.layers.resolve(&path).map_err(errno)? {
                    Some((Layer::Upper, _)) => self.layers.upper.read_link(&path).map_err(errno),
                    Some((Layer::Lower, _)) => self.layers.lower_read_link(&path).map_err(errno),
                    None => Err(Errno::ENOENT),
                })
        })();
        match result {
            Ok(target) => reply.data(&target),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        // Only regular files: device nodes and fifos never sync.
        let regular =
            rustix::fs::FileType::from_raw_mode(mode) == rustix::fs::FileType::RegularFile;
        let result = if regular {
            self.child(parent, name)
                // Created read-only: the handle is dropped at once.
                .and_then(|path| self.do_create(&path, mode, umask, 0))
                .map(|(attr, fh)| {
                    lock(&self.files).remove(&fh);
                    (attr, UPPER_TTL)
                })
        } else {
            Err(Errno::EPERM)
        };
        reply_entry(reply, result);
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let result = self.child(parent, name).and_then(|path| {
            self.create_entry(&path, |layers| {
                layers.upper.mkdir(&path, mode & !umask & 0o7777)
            })
        });
        reply_entry(reply, result);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let result = self
            .child(parent, name)
            .and_then(|p| self.do_unlink(&p, false));
        reply_empty(reply, result);
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let result = self
            .child(parent, name)
            .and_then(|p| self.do_unlink(&p, true));
        reply_empty(reply, result);
    }

    fn symlink(
        &self,
        _req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let result = self.child(parent, link_name).and_then(|path| {
            self.create_entry(&path, |layers| {
                layers.upper.symlink(&path, target.as_os_str().as_bytes())
            })
        });
        reply_entry(reply, result);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let result = self.child(parent, name).and_then(|from| {
            let to = self.child(newparent, newname)?;
            self.do_rename(&from, &to, flags)
        });
        reply_empty(reply, result);
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let result = (|| {
            let from = self.path(ino)?.ok_or(Errno::EPERM)?;
            let to = self.child(newparent, newname)?;
            {
                let _tree = self.copied_up(&from)?;
                self.noted_after(&from);
            }
            self.create_entry(&to, |layers| layers.upper.link(&from, &to))
        })();
        reply_entry(reply, result);
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        match self.do_open(ino, flags) {
            Ok((fh, upper)) => match self.backing(fh, upper, |file| reply.open_backing(file)) {
                Some(id) => reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), &id),
                None => reply.opened(FileHandle(fh), FopenFlags::empty()),
            },
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let result = self.handle(fh).and_then(|handle| {
            // A lower file copied up since it was opened: its copy holds
            // what was written since (through other handles).
            let copy = match self.path(ino) {
                Ok(Some(path)) if !handle.upper => {
                    self.layers.upper.open_with(&path, OFlags::RDONLY, 0).ok()
                }
                _ => None,
            };
            let file = copy.as_ref().unwrap_or(&handle.file);
            // Only the lower's own file waits on the lower.
            let on_lower = copy.is_none() && !handle.upper;
            let mut buf = vec![0u8; size as usize];
            let mut done = 0;
            while done < buf.len() {
                let at = offset + done as u64;
                let read = match on_lower {
                    true => self.layers.on_lower(|_| file.read_at(&mut buf[done..], at)),
                    false => file.read_at(&mut buf[done..], at),
                };
                match read {
                    Ok(0) => break,
                    Ok(n) => done += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(errno(e)),
                }
            }
            buf.truncate(done);
            Ok(buf)
        });
        match result {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let result = (|| {
            let handle = self.handle(fh)?;
            // Every write bumps the journal, so a sync that committed
            // between two writes does not forget the second. A file
            // unlinked (or renamed over) while open has no path left: its
            // writes still go through, with nothing to journal.
            if let Ok(Some(path)) = self.path(ino) {
                self.note(&path);
            }
            handle.file.write_all_at(data, offset).map_err(errno)?;
            Ok(data.len() as u32)
        })();
        match result {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(e),
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let handle = lock(&self.files).remove(&fh.0);
        if let Some(handle) = handle.filter(|h| h.writable) {
            if let Ok(Some(path)) = lock(&self.inodes).path(handle.ino) {
                self.note(&path);
            }
        }
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let result = self.handle(fh).and_then(|handle| {
            if datasync {
                handle.file.sync_data()
            } else {
                handle.file.sync_all()
            }
            .map_err(errno)
        });
        reply_empty(reply, result);
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.do_readdir(ino) {
            Ok(entries) => {
                let fh = self.next_handle.fetch_add(1, Ordering::Relaxed);
                lock(&self.dirs).insert(fh, entries);
                reply.opened(FileHandle(fh), FopenFlags::empty());
            }
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let dirs = lock(&self.dirs);
        let Some(entries) = dirs.get(&fh.0) else {
            return reply.error(Errno::EBADF);
        };
        for (i, (ino, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(
                INodeNo(*ino),
                (i + 1) as u64,
                *kind,
                OsStr::from_bytes(name),
            ) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        lock(&self.dirs).remove(&fh.0);
        reply.ok();
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let result = self.read_xattrs(ino, |root, path| root.xattr_get(path, name.as_bytes()));
        reply_xattr(reply, size, result);
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let result = self.read_xattrs(ino, |root, path| root.xattr_list(path));
        reply_xattr(reply, size, result);
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let result = self.write_xattrs(ino, |root, path| {
            root.xattr_set(path, name.as_bytes(), value, flags)
        });
        reply_empty(reply, result);
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let result = self.write_xattrs(ino, |root, path| root.xattr_remove(path, name.as_bytes()));
        reply_empty(reply, result);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.layers.upper.statvfs() {
            Ok(s) => reply.statfs(
                s.f_blocks,
                s.f_bfree,
                s.f_bavail,
                s.f_files,
                s.f_ffree,
                s.f_bsize as u32,
                s.f_namemax as u32,
                s.f_frsize as u32,
            ),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let result = self
            .child(parent, name)
            .and_then(|path| self.do_create(&path, mode, umask, flags));
        match result {
            Ok((attr, fh)) => {
                let id = self.backing(fh, true, |file| reply.open_backing(file));
                let (ttl, generation, fh, flags) = (
                    &UPPER_TTL,
                    Generation(0),
                    FileHandle(fh),
                    FopenFlags::empty(),
                );
                match id {
                    Some(id) => reply.created_passthrough(ttl, &attr, generation, fh, flags, &id),
                    None => reply.created(ttl, &attr, generation, fh, flags),
                }
            }
            Err(e) => reply.error(e),
        }
    }
}
