//! The union of an upper and a lower directory, by path: which layer
//! answers, whiteouts, copy-up, merged listings. No FUSE types here.
//!
//! ```text
//! resolve(p): upper has p ─► Upper
//!             p or an ancestor whited out, or an ancestor an upper non-dir ─► absent
//!             lower has p ─► Lower            else absent
//! ```
//!
//! "The lower has p" is answered by the project's [`LowerIndex`] once one
//! arrived (no network), else by the lower mount.
//!
//! A whiteout marker (`<whiteouts>/<parent>/.wh.<name>`, the format the
//! compute store reads) means "the lower's version of this path, and
//! everything below it, is deleted here": a directory created again over
//! one is therefore opaque without a marker of its own.

use std::collections::{HashMap, HashSet};
use std::io;
use std::sync::RwLock;

use rustix::fs::{OFlags, Stat, Timespec};
use rustix::io::Errno;
use unionsync_core::{carried_perm, Meta, RelPath};

use crate::beneath::{is_absent, meta_of, Root};
use crate::compute_disk::whiteout_marker;

use super::gate::{Gate, GatedReader};
use super::index::{stat_of, LowerIndex};
use super::journal::Seen;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layer {
    Upper,
    Lower,
}

/// One name in a merged listing.
#[derive(Clone, Debug)]
pub struct Listed {
    pub name: Vec<u8>,
    pub layer: Layer,
    pub stat: Stat,
}

pub struct Layers {
    pub upper: Root,
    pub lower: Root,
    pub whiteouts: Root,
    /// Temp files of copy-ups, beneath the upper (same filesystem).
    tmp: Root,
    /// Until an index arrives: directories this mount created where the
    /// lower had nothing, so building in a new directory never waits on
    /// the network. (A project-side addition below one shows once the
    /// index arrives.)
    lower_absent: RwLock<HashSet<RelPath>>,
    /// The project's index and a stat of the lower root for the fields the
    /// index lacks; `None` until the first snapshot.
    index: RwLock<Option<(LowerIndex, Stat)>>,
    /// Paths that live only here (caches, scratch space): the lower is
    /// never consulted below them and the sync never sees them.
    local_only: Vec<RelPath>,
    /// Every call of the lower passes it: a hung lower holds a bounded
    /// number of request threads.
    gate: Gate,
}

/// How many requests may wait on the lower at once (of the mount's
/// request threads), and after how long without an answer it counts as
/// hung (see [`Gate`]).
pub const LOWER_CALLERS: usize = 16;
const LOWER_HUNG_AFTER: std::time::Duration = std::time::Duration::from_secs(5);

/// Copies of lower files made for a copy-up and not placed yet (see
/// [`Layers::fetch_for_copy_up`]); those never placed are removed when it
/// is dropped.
pub struct Fetched<'a> {
    layers: &'a Layers,
    files: HashMap<RelPath, (RelPath, Stat)>,
}

impl Drop for Fetched<'_> {
    fn drop(&mut self) {
        for (temp, _) in self.files.values() {
            match self.layers.tmp.remove(temp, false) {
                Err(error) if !is_absent(&error) => {
                    tracing::warn!(%temp, %error, "temp copy left behind");
                }
                _ => {}
            }
        }
    }
}

/// Is `path` at or below one of `local_only`?
pub fn is_local_only(local_only: &[RelPath], path: &RelPath) -> bool {
    local_only
        .iter()
        .any(|l| l == path || l.is_ancestor_of(path))
}

pub fn is_dir(stat: &Stat) -> bool {
    rustix::fs::FileType::from_raw_mode(stat.st_mode) == rustix::fs::FileType::Directory
}

fn join(dir: Option<&RelPath>, name: &[u8]) -> io::Result<RelPath> {
    match dir {
        Some(dir) => dir.join(name),
        None => RelPath::new(name.to_vec()),
    }
    .map_err(path_error)
}

/// A name no path can hold: too long, or not a name at all.
pub fn path_error(error: unionsync_core::PathError) -> io::Error {
    use unionsync_core::PathError::{NameTooLong, TooLong};
    match error {
        TooLong | NameTooLong => Errno::NAMETOOLONG.into(),
        _ => Errno::INVAL.into(),
    }
}

/// Copies the extended attributes of `from` in `source` to `to` in
/// `target` (a filesystem without them on either side is not an error).
fn copy_xattrs(source: &Root, from: &RelPath, target: &Root, to: &RelPath) -> io::Result<()> {
    let names = match source.xattr_list(from) {
        Ok(names) => names,
        Err(e) if Errno::from_io_error(&e) == Some(Errno::NOTSUP) => return Ok(()),
        Err(e) => return Err(e),
    };
    // File capabilities are set-id bits by another name: never copied.
    let copied = |name: &&[u8]| !name.is_empty() && *name != b"security.capability";
    for name in names.split(|b| *b == 0).filter(copied) {
        let value = source.xattr_get(from, name)?;
        match target.xattr_set(to, name, &value, 0) {
            // Namespaces this process may not write (trusted.*, …).
            Err(e) if matches!(Errno::from_io_error(&e), Some(Errno::NOTSUP | Errno::PERM)) => {}
            other => other?,
        }
    }
    Ok(())
}

/// Gives `path` in `root` the access and modification times of `from`.
fn copy_times(root: &Root, path: &RelPath, from: &Stat) -> io::Result<()> {
    let ts = |sec: i64, nsec: u64| Timespec {
        tv_sec: sec,
        tv_nsec: nsec as _,
    };
    root.set_times(
        path,
        Some(ts(from.st_atime, from.st_atime_nsec)),
        Some(ts(from.st_mtime, from.st_mtime_nsec)),
    )
}

impl Layers {
    pub fn new(
        upper: Root,
        lower: Root,
        whiteouts: Root,
        local_only: Vec<RelPath>,
    ) -> io::Result<Layers> {
        let tmp = RelPath::new(".unionsync/tmp").expect("valid constant");
        let tmp = upper.subdir(&tmp, true)?;
        for (path, meta) in tmp.walk(None)?.into_iter().rev() {
            tmp.remove(&path, meta.is_dir())?;
        }
        Ok(Layers {
            upper,
            lower,
            whiteouts,
            tmp,
            lower_absent: RwLock::new(HashSet::new()),
            index: RwLock::new(None),
            local_only,
            gate: Gate::new(LOWER_CALLERS, LOWER_HUNG_AFTER),
        })
    }

    /// `f` on the lower, once the gate lets it (EIO at once while the
    /// lower is not answering).
    pub fn on_lower<T>(&self, f: impl FnOnce(&Root) -> io::Result<T>) -> io::Result<T> {
        self.gate.call(|| f(&self.lower))
    }

    fn read_index(&self) -> std::sync::RwLockReadGuard<'_, Option<(LowerIndex, Stat)>> {
        self.index.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Does the project's index answer for the lower?
    pub fn has_index(&self) -> bool {
        self.read_index().is_some()
    }

    /// Replaces the index with a snapshot; returns the paths whose lower
    /// entry changed (none the first time: until then the kernel kept lower
    /// entries only briefly).
    pub fn replace_index(&self, entries: Vec<(RelPath, Meta)>) -> Vec<RelPath> {
        let new = LowerIndex::new(entries);
        // Owner and device for the entries; the upper's root if the lower
        // is unreachable right now.
        let template = self
            .on_lower(Root::root_stat)
            .or_else(|_| self.upper.root_stat());
        let mut index = self.index.write().unwrap_or_else(|p| p.into_inner());
        let changed = match index.as_ref() {
            Some((old, _)) => old.differences(&new),
            None => Vec::new(),
        };
        let template = match (template, index.as_ref()) {
            (Ok(stat), _) => stat,
            (Err(_), Some((_, old))) => *old,
            // Neither root can be read: keep answering live.
            (Err(error), None) => {
                tracing::warn!(%error, "cannot use the lower index");
                return changed;
            }
        };
        *index = Some((new, template));
        self.lower_absent
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        changed
    }

    /// Applies the project's changes to the index (ignored before the first
    /// snapshot, which will hold them).
    pub fn update_index(&self, changes: &[(RelPath, Option<Meta>)]) {
        let mut index = self.index.write().unwrap_or_else(|p| p.into_inner());
        if let Some((index, _)) = index.as_mut() {
            for (path, meta) in changes {
                index.set(path, meta.clone());
            }
        }
    }

    pub fn is_whiteout(&self, path: &RelPath) -> io::Result<bool> {
        // A name too long to take the marker's prefix has no marker.
        let Ok(marker) = whiteout_marker(path) else {
            return Ok(false);
        };
        Ok(self.whiteouts.lstat(&marker)?.is_some())
    }

    /// Is the lower's `path` out of sight: it or an ancestor whited out, or
    /// an ancestor replaced by an upper non-directory?
    fn lower_hidden(&self, path: &RelPath) -> io::Result<bool> {
        if self.is_whiteout(path)? {
            return Ok(true);
        }
        for ancestor in path.ancestors() {
            if self.is_whiteout(&ancestor)? {
                return Ok(true);
            }
            if let Some(stat) = self.upper.lstat(&ancestor)? {
                if !is_dir(&stat) {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    /// What the lower shows at `path` through the union (`None`: nothing,
    /// or hidden).
    pub fn lower_view(&self, path: &RelPath) -> io::Result<Option<Stat>> {
        if self.is_local_only(path) || self.known_absent(path) || self.lower_hidden(path)? {
            return Ok(None);
        }
        if let Some((index, template)) = self.read_index().as_ref() {
            return Ok(index.get(path).map(|meta| {
                let subdirs = if meta.is_dir() {
                    index.subdirs(path)
                } else {
                    0
                };
                stat_of(meta, subdirs, template)
            }));
        }
        self.on_lower(|lower| lower.lstat(path))
    }

    /// What the lower shows at `path` through the union, as sync metadata
    /// (what the journal records as seen before a first change): the
    /// project's own metadata from its index, else the lower mount's.
    pub fn lower_seen(&self, path: &RelPath) -> io::Result<Seen> {
        if self.is_local_only(path) || self.known_absent(path) || self.lower_hidden(path)? {
            return Ok(Seen::nothing());
        }
        if let Some((index, _)) = self.read_index().as_ref() {
            return Ok(Seen {
                meta: index.get(path).cloned(),
                via_mount: false,
            });
        }
        Ok(Seen {
            meta: self.lower_mount_meta(path)?,
            via_mount: true,
        })
    }

    /// `path` as the lower mount itself shows it.
    fn lower_mount_meta(&self, path: &RelPath) -> io::Result<Option<Meta>> {
        let Some(stat) = self.on_lower(|lower| lower.lstat(path))? else {
            return Ok(None);
        };
        let symlink =
            rustix::fs::FileType::from_raw_mode(stat.st_mode) == rustix::fs::FileType::Symlink;
        let target = if symlink {
            Some(self.on_lower(|lower| lower.read_link(path))?)
        } else {
            None
        };
        Ok(Some(meta_of(&stat, target)))
    }

    /// The target of the lower symlink `path` (from the index when there is
    /// one).
    pub fn lower_read_link(&self, path: &RelPath) -> io::Result<Vec<u8>> {
        if let Some((index, _)) = self.read_index().as_ref() {
            return match index.get(path).map(|m| &m.kind) {
                Some(unionsync_core::Kind::Symlink { target }) => Ok(target.clone()),
                Some(_) => Err(Errno::INVAL.into()),
                None => Err(Errno::NOENT.into()),
            };
        }
        self.on_lower(|lower| lower.read_link(path))
    }

    pub fn is_local_only(&self, path: &RelPath) -> bool {
        is_local_only(&self.local_only, path)
    }

    /// Is the lower's answer for `path` known without asking it? (Below a
    /// local-only path or a directory this mount created over nothing, or
    /// anywhere once the index arrived: it is invalidated when it changes.)
    pub fn lower_skipped(&self, path: &RelPath) -> bool {
        self.is_local_only(path) || self.has_index() || self.known_absent(path)
    }

    fn known_absent(&self, path: &RelPath) -> bool {
        // With an index, the index knows (it is told what the sync pushes).
        if self.has_index() {
            return false;
        }
        let absent = self.lower_absent.read().unwrap_or_else(|p| p.into_inner());
        !absent.is_empty()
            && (absent.contains(path) || path.ancestors().any(|a| absent.contains(&a)))
    }

    /// Notes that the lower has nothing at `dir`, which this mount just
    /// created in the upper (see `lower_absent`).
    pub fn created_over_nothing(&self, dir: &RelPath) {
        if self.has_index() {
            return;
        }
        let mut absent = self.lower_absent.write().unwrap_or_else(|p| p.into_inner());
        absent.insert(dir.clone());
    }

    /// The union's entry at `path`.
    pub fn resolve(&self, path: &RelPath) -> io::Result<Option<(Layer, Stat)>> {
        if let Some(stat) = self.upper.lstat(path)? {
            return Ok(Some((Layer::Upper, stat)));
        }
        Ok(self.lower_view(path)?.map(|stat| (Layer::Lower, stat)))
    }

    /// The root's attributes (always the upper's root).
    pub fn root_stat(&self) -> io::Result<Stat> {
        self.upper.root_stat()
    }

    /// The names of directory `dir` (`None`: the root) in the union: upper
    /// names, then lower names not shadowed or whited out. The reserved
    /// directory at the top is never shown.
    pub fn list(&self, dir: Option<&RelPath>) -> io::Result<Vec<Listed>> {
        let mut out: Vec<Listed> = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        let in_upper = match dir {
            None => true,
            Some(dir) => self.upper.lstat(dir)?.is_some_and(|s| is_dir(&s)),
        };
        if in_upper {
            for name in self.upper.names(dir)? {
                let path = join(dir, &name)?;
                if path.is_reserved() {
                    continue;
                }
                if let Some(stat) = self.upper.lstat(&path)? {
                    seen.insert(name.clone());
                    out.push(Listed {
                        name,
                        layer: Layer::Upper,
                        stat,
                    });
                }
            }
        }
        let lower_dir = match dir {
            None => true,
            Some(dir) => self.lower_view(dir)?.is_some_and(|s| is_dir(&s)),
        };
        if lower_dir {
            if let Some((index, template)) = self.read_index().as_ref() {
                for (name, meta) in index.children(dir) {
                    if seen.contains(name) {
                        continue;
                    }
                    let path = join(dir, name)?;
                    if path.is_reserved() || self.is_whiteout(&path)? {
                        continue;
                    }
                    let subdirs = if meta.is_dir() {
                        index.subdirs(&path)
                    } else {
                        0
                    };
                    out.push(Listed {
                        name: name.to_vec(),
                        layer: Layer::Lower,
                        stat: stat_of(meta, subdirs, template),
                    });
                }
                return Ok(out);
            }
            let names = match self.on_lower(|lower| lower.names(dir)) {
                Ok(names) => names,
                Err(e) if is_absent(&e) => Vec::new(),
                Err(e) => return Err(e),
            };
            for name in names {
                if seen.contains(&name) {
                    continue;
                }
                let path = join(dir, &name)?;
                if path.is_reserved() || self.is_whiteout(&path)? {
                    continue;
                }
                if let Some(stat) = self.on_lower(|lower| lower.lstat(&path))? {
                    out.push(Listed {
                        name,
                        layer: Layer::Lower,
                        stat,
                    });
                }
            }
        }
        Ok(out)
    }

    /// Makes `dir` and its ancestors directories in the upper, each with
    /// the mode and times the union shows for it.
    pub fn upper_dirs(&self, dir: Option<&RelPath>) -> io::Result<()> {
        let Some(dir) = dir else { return Ok(()) };
        // The common case: the directory is in the upper already, and so
        // (the upper holds no orphans) are its ancestors.
        if self.upper.lstat(dir)?.is_some_and(|s| is_dir(&s)) {
            return Ok(());
        }
        let mut chain: Vec<RelPath> = dir.ancestors().collect();
        chain.reverse();
        chain.push(dir.clone());
        for path in chain {
            match self.upper.lstat(&path)? {
                Some(stat) if is_dir(&stat) => continue,
                Some(_) => return Err(io::Error::from(Errno::NOTDIR)),
                None => {}
            }
            let lower = self
                .lower_view(&path)?
                .ok_or_else(|| io::Error::from(Errno::NOENT))?;
            if !is_dir(&lower) {
                return Err(io::Error::from(Errno::NOTDIR));
            }
            self.upper.mkdir(&path, carried_perm(lower.st_mode))?;
            self.copy_times(&path, &lower)?;
        }
        Ok(())
    }

    fn copy_xattrs(&self, path: &RelPath) -> io::Result<()> {
        self.gate
            .call(|| copy_xattrs(&self.lower, path, &self.upper, path))
    }

    fn copy_times(&self, path: &RelPath, from: &Stat) -> io::Result<()> {
        copy_times(&self.upper, path, from)
    }

    /// Copies the lower's `path` (a file, symlink or directory without its
    /// children) into the upper: content and symlinks through a temp file
    /// and a rename, so the upper never holds half a copy; mode and times
    /// kept.
    pub fn copy_up(&self, path: &RelPath) -> io::Result<()> {
        if self.upper.lstat(path)?.is_some() {
            return Ok(());
        }
        let stat = self
            .lower_view(path)?
            .ok_or_else(|| io::Error::from(Errno::NOENT))?;
        self.upper_dirs(path.parent().as_ref())?;
        let kind = rustix::fs::FileType::from_raw_mode(stat.st_mode);
        match kind {
            rustix::fs::FileType::Directory => {
                self.upper.mkdir(path, carried_perm(stat.st_mode))?;
                self.copy_xattrs(path)?;
                self.copy_times(path, &stat)?;
            }
            rustix::fs::FileType::Symlink => {
                let target = self.lower_read_link(path)?;
                let temp = self.temp_name();
                self.tmp.symlink(&temp, &target)?;
                self.upper.rename_from(&self.tmp, &temp, path, true)?;
                self.copy_times(path, &stat)?;
            }
            rustix::fs::FileType::RegularFile => {
                let temp = self.temp_name();
                self.copy_from_lower(path, &temp)?;
                self.tmp.chmod(&temp, carried_perm(stat.st_mode))?;
                self.upper.rename_from(&self.tmp, &temp, path, true)?;
                self.copy_xattrs(path)?;
                self.copy_times(path, &stat)?;
            }
            _ => return Err(io::Error::from(Errno::PERM)),
        }
        Ok(())
    }

    /// Copies the lower's file `path` to the temp file `temp`, durably: it
    /// is renamed into the upper next, and after a power loss the upper must
    /// not hold an empty or torn copy that a recovery scan would take for
    /// the user's edit. (A temp file that fails half-way is removed.)
    fn copy_from_lower(&self, path: &RelPath, temp: &RelPath) -> io::Result<()> {
        let copied = (|| {
            let mut source = self.lower_reader(path)?;
            let mut copy = self.tmp.create_file(temp)?;
            std::io::copy(&mut source, &mut copy)?;
            copy.sync_data()
        })();
        if copied.is_err() {
            let _ = self.tmp.remove(temp, false);
        }
        copied
    }

    /// The first half of caching a lower file that was read: a private copy
    /// in the upper's temp area, made without any lock (it reads through the
    /// network). `None` when `path` is no longer a lower file of at most
    /// `max` bytes.
    pub fn fetch_for_cache(&self, path: &RelPath, max: u64) -> io::Result<Option<(RelPath, Stat)>> {
        if self.upper.lstat(path)?.is_some() {
            return Ok(None);
        }
        let Some(stat) = self.lower_view(path)? else {
            return Ok(None);
        };
        if stat.st_size as u64 > max {
            return Ok(None);
        }
        let Some(temp) = self.fetch(path, &stat)? else {
            return Ok(None);
        };
        // The index is the project's word, the content came through the
        // mount: a mount that lags behind the index may have served older
        // bytes, which must not become a clean copy. (Seconds only: sshfs
        // has no finer mtimes.)
        let agrees = self
            .on_lower(|lower| lower.lstat(path))?
            .is_some_and(|live| (live.st_size, live.st_mtime) == (stat.st_size, stat.st_mtime));
        if !agrees {
            self.tmp.remove(&temp, false)?;
            return Ok(None);
        }
        Ok(Some((temp, stat)))
    }

    /// The first half of copying up `paths`, without any lock (a hung
    /// lower holds up only the caller): a copy in the upper's temp area of
    /// each that the lower shows as a regular file, the upper not having
    /// it yet. Directories, symlinks and the rest are left to
    /// [`Layers::copy_up`], which needs nothing but metadata. On an error,
    /// nothing fetched is kept.
    pub fn fetch_for_copy_up(&self, paths: &[RelPath]) -> io::Result<Fetched<'_>> {
        let mut fetched = Fetched {
            layers: self,
            files: HashMap::new(),
        };
        for path in paths {
            if self.upper.lstat(path)?.is_some() {
                continue;
            }
            let Some(stat) = self.lower_view(path)? else {
                continue;
            };
            if let Some(temp) = self.fetch(path, &stat)? {
                fetched.files.insert(path.clone(), (temp, stat));
            }
        }
        Ok(fetched)
    }

    /// Copies the lower regular file `path`, which the lower shows as
    /// `stat`, into a temp file with its content, mode, extended attributes
    /// and times (`None`: not a regular file).
    fn fetch(&self, path: &RelPath, stat: &Stat) -> io::Result<Option<RelPath>> {
        let regular =
            rustix::fs::FileType::from_raw_mode(stat.st_mode) == rustix::fs::FileType::RegularFile;
        if !regular {
            return Ok(None);
        }
        let temp = self.temp_name();
        let copied = (|| {
            self.copy_from_lower(path, &temp)?;
            self.tmp.chmod(&temp, carried_perm(stat.st_mode))?;
            self.gate
                .call(|| copy_xattrs(&self.lower, path, &self.tmp, &temp))?;
            copy_times(&self.tmp, &temp, stat)
        })();
        match copied {
            Ok(()) => Ok(Some(temp)),
            Err(error) => {
                // Nothing half-copied stays behind.
                match self.tmp.remove(&temp, false) {
                    Err(e) if !is_absent(&e) => tracing::warn!(%temp, error = %e, "temp copy left"),
                    _ => {}
                }
                Err(error)
            }
        }
    }

    /// The second half, under the union's exclusive lock: places a copy
    /// that [`Layers::fetch_for_cache`] or [`Layers::fetch_for_copy_up`]
    /// made if the upper still has nothing there and the lower still shows
    /// the file as it was copied (else drops it). `true` when placed.
    pub fn place_fetched(&self, path: &RelPath, temp: &RelPath, copied: &Stat) -> io::Result<bool> {
        let unchanged = self.lower_view(path)?.is_some_and(|now| {
            (now.st_size, now.st_mtime, now.st_mtime_nsec, now.st_ino)
                == (
                    copied.st_size,
                    copied.st_mtime,
                    copied.st_mtime_nsec,
                    copied.st_ino,
                )
        });
        if !unchanged || self.upper.lstat(path)?.is_some() {
            self.tmp.remove(temp, false)?;
            return Ok(false);
        }
        self.upper_dirs(path.parent().as_ref())?;
        self.upper.rename_from(&self.tmp, temp, path, true)?;
        Ok(true)
    }

    /// [`Layers::copy_up`], placing the copy of `path` in `fetched` if
    /// the lower still shows what was fetched (under the union's exclusive
    /// lock: then no content is read here).
    pub fn copy_up_fetched(&self, path: &RelPath, fetched: &mut Fetched<'_>) -> io::Result<()> {
        if let Some((temp, stat)) = fetched.files.remove(path) {
            if self.place_fetched(path, &temp, &stat)? {
                return Ok(());
            }
        }
        self.copy_up(path)
    }

    /// Copies a whole lower directory tree into the upper (before renaming
    /// it: the renamed directory must carry everything it showed), placing
    /// the files already `fetched`.
    pub fn copy_up_tree(&self, dir: &RelPath, fetched: &mut Fetched<'_>) -> io::Result<()> {
        self.copy_up(dir)?;
        for listed in self.list(Some(dir))? {
            let path = join(Some(dir), &listed.name)?;
            if listed.layer == Layer::Lower {
                self.copy_up_fetched(&path, fetched)?;
            }
            if is_dir(&listed.stat) {
                self.copy_up_tree(&path, fetched)?;
            }
        }
        Ok(())
    }

    /// The lower file `path` opened for reading, each read through the gate.
    fn lower_reader(&self, path: &RelPath) -> io::Result<GatedReader<'_, std::fs::File>> {
        let file = self.on_lower(|lower| lower.open_file(path))?;
        Ok(GatedReader {
            gate: &self.gate,
            inner: file,
        })
    }

    fn temp_name(&self) -> RelPath {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        RelPath::new(format!("copy-up-{}-{n}", std::process::id())).expect("valid name")
    }

    /// Makes the union show the project's (lower's) version of `path`: the
    /// upper's own version, if any, moves to `aside` (a reserved path in the
    /// upper: kept, never synced), whiteouts at and below `path` go, and the
    /// lower's version is copied up. Returns every path whose view changed.
    /// Call under the union's exclusive lock.
    pub fn take_lower_version(&self, path: &RelPath, aside: &RelPath) -> io::Result<Vec<RelPath>> {
        if let Some(parent) = path.parent() {
            if self.lower_hidden(&parent)? || self.lower_view(&parent)?.is_none() {
                // Its parent is deleted or replaced here: there is nothing
                // of the project's to show at `path` without undoing that.
                return Err(Errno::NOENT.into());
            }
        }
        // Whiteouts at `path` are about to go: ask the lower itself.
        let in_lower = match self.read_index().as_ref() {
            Some((index, _)) => index.get(path).is_some(),
            None => self.on_lower(|lower| lower.lstat(path))?.is_some(),
        };
        if !in_lower {
            return Err(Errno::NOENT.into());
        }
        let mut changed: Vec<RelPath> = self.subtree_of(&self.upper, path)?;
        if self.upper.lstat(path)?.is_some() {
            if let Some(parent) = aside.parent() {
                self.upper.mkdir_all(&parent)?;
            }
            self.upper
                .rename(path, aside, rustix::fs::RenameFlags::NOREPLACE)?;
        }
        self.remove_whiteout(path)?;
        self.clear_whiteouts_below(path)?;
        let lower = self
            .lower_view(path)?
            .ok_or_else(|| io::Error::from(Errno::NOENT))?;
        if is_dir(&lower) {
            self.copy_up_tree(path, &mut self.fetch_for_copy_up(&[])?)?;
        } else {
            self.copy_up(path)?;
        }
        changed.extend(self.subtree_of(&self.upper, path)?);
        changed.sort();
        changed.dedup();
        Ok(changed)
    }

    /// `path` and everything below it in `root` (nothing if absent).
    fn subtree_of(&self, root: &Root, path: &RelPath) -> io::Result<Vec<RelPath>> {
        let Some(stat) = root.lstat(path)? else {
            return Ok(Vec::new());
        };
        let mut out = vec![path.clone()];
        if is_dir(&stat) {
            out.extend(root.walk(Some(path))?.into_iter().map(|(p, _)| p));
        }
        Ok(out)
    }

    /// Records the deletion of the lower's `path`.
    pub fn whiteout(&self, path: &RelPath) -> io::Result<()> {
        let marker = whiteout_marker(path)?;
        if let Some(parent) = marker.parent() {
            self.whiteouts.mkdir_all(&parent)?;
        }
        self.whiteouts
            .open_with(&marker, OFlags::WRONLY | OFlags::CREATE, 0o600)
            .map(drop)
    }

    /// Drops the whiteout marker of `path` (none there is fine).
    pub fn remove_whiteout(&self, path: &RelPath) -> io::Result<()> {
        match self.whiteouts.remove(&whiteout_marker(path)?, false) {
            Err(e) if !is_absent(&e) => Err(e),
            _ => Ok(()),
        }
    }

    /// Drops the whiteouts recorded beneath directory `dir` (its lower
    /// children are out of sight once `dir` itself is whited out).
    pub fn clear_whiteouts_below(&self, dir: &RelPath) -> io::Result<()> {
        for (path, meta) in self.whiteouts.walk(Some(dir))?.into_iter().rev() {
            self.whiteouts.remove(&path, meta.is_dir())?;
        }
        match self.whiteouts.remove(dir, true) {
            Err(e) if !is_absent(&e) => Err(e),
            _ => Ok(()),
        }
    }
}
