//! Filesystem access confined to one directory tree.
//!
//! Every path is a validated [`RelPath`] resolved beneath a [`Root`] with
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`: a symlink anywhere on
//! the way (planted by a peer or swapped in by a user mid-sync) makes the
//! operation fail instead of leaving the tree. The last component is always
//! acted on with `*at` calls relative to its parent and `NOFOLLOW`, so a
//! symlink is itself an entry (stat, read its target, remove, replace) and
//! never a way out.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{
    self as rfs, AtFlags, Mode, OFlags, RenameFlags, ResolveFlags, Timespec, Timestamps, UTIME_OMIT,
};
use rustix::io::Errno;
use unionsync_core::{carried_perm, ContentHash, Kind, Meta, RelPath, PERM_MASK};

use crate::store::{FileReader, StoreResult};

/// An open directory that every operation stays beneath.
#[derive(Debug)]
pub struct Root {
    dir: OwnedFd,
    path: PathBuf,
}

/// Directory and file descriptors are plain `O_CLOEXEC` opens beneath the
/// root; symlinks, `..` escapes and magic links refuse to resolve.
const RESOLVE: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS);

fn os(bytes: &[u8]) -> &OsStr {
    OsStr::from_bytes(bytes)
}

/// "Not there" as a tree sees it: missing, or an ancestor that is not a
/// directory (a file or a symlink, which resolution refuses with ELOOP/EXDEV).
pub fn is_absent(error: &io::Error) -> bool {
    matches!(
        Errno::from_io_error(error),
        Some(Errno::NOENT | Errno::NOTDIR | Errno::LOOP | Errno::XDEV)
    )
}

fn absent_as_none<T>(result: io::Result<T>) -> io::Result<Option<T>> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(error) if is_absent(&error) => Ok(None),
        Err(error) => Err(error),
    }
}

/// A file being read for shipping ([`Root::open_to_ship`]): what it was
/// when opened, to tell at the end whether it changed while being read.
pub struct ShippedFile {
    file: File,
    before: Meta,
    read: u64,
}

impl FileReader for ShippedFile {
    fn read(&mut self, buf: &mut [u8]) -> StoreResult<usize> {
        let n = loop {
            match self.file.read(buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other?,
            }
        };
        self.read += n as u64;
        Ok(n)
    }

    fn unchanged(&mut self) -> StoreResult<bool> {
        let after = meta_of(
            &rfs::fstat(self.file.as_fd()).map_err(io::Error::from)?,
            None,
        );
        Ok(self.read == self.before.size && after == self.before)
    }
}

/// The metadata of a stat, with the target for a symlink; never a set-id
/// bit (see [`carried_perm`]).
pub fn meta_of(stat: &rfs::Stat, target: Option<Vec<u8>>) -> Meta {
    let kind = match (rfs::FileType::from_raw_mode(stat.st_mode), target) {
        (rfs::FileType::Directory, _) => Kind::Dir,
        (rfs::FileType::Symlink, Some(target)) => Kind::Symlink { target },
        _ => Kind::File,
    };
    let ns = |secs: i64, nsec: u64| {
        secs.saturating_mul(1_000_000_000)
            .saturating_add(nsec as i64)
    };
    Meta {
        size: if kind == Kind::Dir {
            0
        } else {
            stat.st_size as u64
        },
        kind,
        mode: carried_perm(stat.st_mode),
        mtime_ns: ns(stat.st_mtime, stat.st_mtime_nsec),
        ctime_ns: ns(stat.st_ctime, stat.st_ctime_nsec),
        hash: None,
    }
}

fn is_special(stat: &rfs::Stat) -> bool {
    !matches!(
        rfs::FileType::from_raw_mode(stat.st_mode),
        rfs::FileType::RegularFile | rfs::FileType::Directory | rfs::FileType::Symlink
    )
}

fn timespec(ns: i64) -> Timespec {
    Timespec {
        tv_sec: ns.div_euclid(1_000_000_000),
        tv_nsec: ns.rem_euclid(1_000_000_000) as _,
    }
}

/// Hashes everything `reader` yields (BLAKE3).
pub fn hash_reader(mut reader: impl Read) -> io::Result<ContentHash> {
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 256 << 10];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => return Ok(ContentHash(*hasher.finalize().as_bytes())),
            Ok(n) => {
                hasher.update(&buf[..n]);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

impl Root {
    /// Opens an existing directory (it may itself be reached through
    /// symlinks: only what lies beneath it is confined).
    pub fn open(path: &Path) -> io::Result<Root> {
        let dir = rfs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Root {
            dir,
            path: path.to_path_buf(),
        })
    }

    /// Creates the directory (and its parents) if needed, owner-only, then
    /// opens it. The upper and state directories hold the synced files
    /// outside the mount's `nosuid,nodev`: no other local user may reach
    /// them there. (An existing directory keeps its mode.)
    pub fn create(path: &Path) -> io::Result<Root> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)?;
        Root::open(path)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directory `dir` (the root itself for `None`).
    fn dir_fd(&self, dir: Option<&[u8]>) -> io::Result<OwnedFd> {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        match dir {
            None => Ok(rfs::openat2(&self.dir, ".", flags, Mode::empty(), RESOLVE)?),
            Some(dir) => Ok(rfs::openat2(
                &self.dir,
                os(dir),
                flags,
                Mode::empty(),
                RESOLVE,
            )?),
        }
    }

    /// The parent directory of `path` and the last component's name.
    fn parent<'p>(&self, path: &'p RelPath) -> io::Result<(OwnedFd, &'p OsStr)> {
        Ok((self.dir_fd(path.parent_bytes())?, os(path.file_name())))
    }

    /// A subdirectory as a root of its own (created with its parents when
    /// `create`).
    pub fn subdir(&self, path: &RelPath, create: bool) -> io::Result<Root> {
        if create {
            self.mkdir_all(path)?;
        }
        let dir = self.dir_fd(Some(path.as_bytes()))?;
        let mut full = self.path.clone();
        full.push(os(path.as_bytes()));
        Ok(Root { dir, path: full })
    }

    /// The entry at `path` (a symlink is itself the entry); `None` when it
    /// does not exist or something on the way is not a directory. Device
    /// nodes, fifos and sockets are reported as empty files with no way to
    /// read them (they never sync: reading them refuses).
    pub fn stat(&self, path: &RelPath) -> io::Result<Option<Meta>> {
        Ok(absent_as_none(
            self.parent(path)
                .and_then(|(dir, name)| stat_in(&dir, name)),
        )?
        .flatten())
    }

    /// Every entry beneath `dir` (the whole tree for `None`), parents before
    /// children, skipping the reserved directory at the top. Entries that
    /// vanish while being listed are left out.
    pub fn walk(&self, dir: Option<&RelPath>) -> io::Result<Vec<(RelPath, Meta)>> {
        let mut out = Vec::new();
        let Some(fd) = absent_as_none(self.dir_fd(dir.map(RelPath::as_bytes)))? else {
            return Ok(out);
        };
        self.walk_into(fd, dir, &mut out)?;
        Ok(out)
    }

    fn walk_into(
        &self,
        fd: OwnedFd,
        dir: Option<&RelPath>,
        out: &mut Vec<(RelPath, Meta)>,
    ) -> io::Result<()> {
        let mut names: Vec<Vec<u8>> = Vec::new();
        for entry in rfs::Dir::read_from(&fd)? {
            let name = entry?.file_name().to_bytes().to_vec();
            if name != b"." && name != b".." {
                names.push(name);
            }
        }
        names.sort();
        for name in names {
            let path = match dir {
                Some(dir) => dir.join(&name),
                None => RelPath::new(name.clone()),
            };
            // A name no RelPath can hold (over-long) cannot sync; skip it.
            let Ok(path) = path else { continue };
            if dir.is_none() && path.is_reserved() {
                continue;
            }
            let Some(Some(meta)) = absent_as_none(stat_in(&fd, os(&name)))? else {
                continue;
            };
            let is_dir = meta.is_dir();
            out.push((path.clone(), meta));
            if is_dir {
                let child = rfs::openat2(
                    &fd,
                    os(&name),
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                    Mode::empty(),
                    RESOLVE,
                );
                if let Some(child) = absent_as_none(child.map_err(io::Error::from))? {
                    self.walk_into(child, Some(&path), out)?;
                }
            }
        }
        Ok(())
    }

    /// Opens a regular file for reading without following a symlink.
    pub fn open_file(&self, path: &RelPath) -> io::Result<File> {
        let (dir, name) = self.parent(path)?;
        let fd = rfs::openat(
            &dir,
            name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
            Mode::empty(),
        )?;
        let stat = rfs::fstat(&fd)?;
        if rfs::FileType::from_raw_mode(stat.st_mode) != rfs::FileType::RegularFile {
            return Err(io::Error::other(format!("{path}: not a regular file")));
        }
        Ok(File::from(fd))
    }

    /// A file opened for shipping if it is still what `expect` describes
    /// (`None` otherwise: the caller defers it).
    pub fn open_to_ship(&self, path: &RelPath, expect: &Meta) -> io::Result<Option<ShippedFile>> {
        let Some(file) = absent_as_none(self.open_file(path))? else {
            return Ok(None);
        };
        let before = meta_of(&rfs::fstat(file.as_fd())?, None);
        if !before.matches(expect) {
            return Ok(None);
        }
        Ok(Some(ShippedFile {
            file,
            before,
            read: 0,
        }))
    }

    /// The content hash of a regular file (`None`: not a file, or gone).
    pub fn hash(&self, path: &RelPath) -> io::Result<Option<ContentHash>> {
        match self.stat(path)? {
            Some(meta) if meta.kind == Kind::File => {}
            _ => return Ok(None),
        }
        absent_as_none(self.open_file(path))?
            .map(hash_reader)
            .transpose()
    }

    /// [`Root::hash`] of each of `paths`.
    pub fn hashes(&self, paths: &[RelPath]) -> io::Result<Vec<(RelPath, Option<ContentHash>)>> {
        paths
            .iter()
            .map(|p| Ok((p.clone(), self.hash(p)?)))
            .collect()
    }

    pub fn mkdir(&self, path: &RelPath, mode: u32) -> io::Result<()> {
        let (dir, name) = self.parent(path)?;
        rfs::mkdirat(&dir, name, Mode::from_raw_mode(mode))?;
        Ok(())
    }

    /// Creates `path` and its missing ancestors as directories (0o755).
    pub fn mkdir_all(&self, path: &RelPath) -> io::Result<()> {
        let mut chain: Vec<RelPath> = path.ancestors().collect();
        chain.reverse();
        chain.push(path.clone());
        for dir in chain {
            match self.mkdir(&dir, 0o755) {
                Err(e) if Errno::from_io_error(&e) == Some(Errno::EXIST) => {}
                other => other?,
            }
        }
        Ok(())
    }

    /// Removes a file, symlink or empty directory (never recursive).
    pub fn remove(&self, path: &RelPath, is_dir: bool) -> io::Result<()> {
        let (dir, name) = self.parent(path)?;
        let flags = if is_dir {
            AtFlags::REMOVEDIR
        } else {
            AtFlags::empty()
        };
        rfs::unlinkat(&dir, name, flags)?;
        Ok(())
    }

    /// Removes `path` and, when it is a directory, everything beneath it;
    /// a symlink anywhere is removed itself, never followed.
    pub fn remove_tree(&self, path: &RelPath) -> io::Result<()> {
        let stat = self
            .lstat(path)?
            .ok_or_else(|| io::Error::from(Errno::NOENT))?;
        let is_dir = rfs::FileType::from_raw_mode(stat.st_mode) == rfs::FileType::Directory;
        if is_dir {
            for name in self.names(Some(path))? {
                let child = path.join(&name).map_err(io::Error::other)?;
                self.remove_tree(&child)?;
            }
        }
        self.remove(path, is_dir)
    }

    pub fn symlink(&self, path: &RelPath, target: &[u8]) -> io::Result<()> {
        let (dir, name) = self.parent(path)?;
        rfs::symlinkat(os(target), &dir, name)?;
        Ok(())
    }

    /// Runs `f` on a `/proc/self/fd` path naming the inode at `path`, pinned
    /// with `O_PATH | O_NOFOLLOW` first: calls that only take a path (chmod,
    /// xattrs) then act on that inode, never on a path swapped meanwhile. A
    /// symlink is refused (EPERM): those calls would follow it.
    fn pinned<T>(&self, path: &RelPath, f: impl FnOnce(&str) -> io::Result<T>) -> io::Result<T> {
        let (dir, name) = self.parent(path)?;
        let pinned = rfs::openat(
            &dir,
            name,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        if rfs::FileType::from_raw_mode(rfs::fstat(&pinned)?.st_mode) == rfs::FileType::Symlink {
            return Err(Errno::PERM.into());
        }
        let proc = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&pinned));
        f(&proc)
    }

    /// Sets the permission bits of a file or directory (never a symlink's
    /// target).
    pub fn chmod(&self, path: &RelPath, mode: u32) -> io::Result<()> {
        self.pinned(path, |proc| {
            Ok(rfs::chmod(proc, Mode::from_raw_mode(mode & PERM_MASK))?)
        })
    }

    /// The value of extended attribute `name` of `path`.
    pub fn xattr_get(&self, path: &RelPath, name: &[u8]) -> io::Result<Vec<u8>> {
        self.pinned(path, |proc| {
            let len = rfs::getxattr_query(proc, os(name))?;
            let mut value = vec![0u8; len];
            let got = rfs::getxattr(proc, os(name), &mut value[..])?;
            value.truncate(got);
            Ok(value)
        })
    }

    /// The NUL-terminated names of `path`'s extended attributes.
    pub fn xattr_list(&self, path: &RelPath) -> io::Result<Vec<u8>> {
        self.pinned(path, |proc| {
            let len = rfs::listxattr_query(proc)?;
            let mut names = vec![0u8; len];
            let got = rfs::listxattr(proc, &mut names[..])?;
            names.truncate(got);
            Ok(names)
        })
    }

    pub fn xattr_set(
        &self,
        path: &RelPath,
        name: &[u8],
        value: &[u8],
        flags: i32,
    ) -> io::Result<()> {
        let flags = rfs::XattrFlags::from_bits_retain(flags as _);
        self.pinned(path, |proc| {
            Ok(rfs::setxattr(proc, os(name), value, flags)?)
        })
    }

    pub fn xattr_remove(&self, path: &RelPath, name: &[u8]) -> io::Result<()> {
        self.pinned(path, |proc| Ok(rfs::removexattr(proc, os(name))?))
    }

    /// Sets the modification time (not following a symlink).
    pub fn set_mtime(&self, path: &RelPath, mtime_ns: i64) -> io::Result<()> {
        let (dir, name) = self.parent(path)?;
        let times = Timestamps {
            last_access: Timespec {
                tv_sec: 0,
                tv_nsec: UTIME_OMIT,
            },
            last_modification: timespec(mtime_ns),
        };
        rfs::utimensat(&dir, name, &times, AtFlags::SYMLINK_NOFOLLOW)?;
        Ok(())
    }

    /// Creates a new regular file (never an existing one or through a
    /// symlink), mode 0o600 until its owner sets the real one.
    pub fn create_file(&self, path: &RelPath) -> io::Result<File> {
        let (dir, name) = self.parent(path)?;
        let fd = rfs::openat(
            &dir,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )?;
        Ok(File::from(fd))
    }

    /// Moves `from` (beneath `source`, on the same filesystem) to `to`
    /// beneath this root; with `no_replace`, fails if `to` exists.
    pub fn rename_from(
        &self,
        source: &Root,
        from: &RelPath,
        to: &RelPath,
        no_replace: bool,
    ) -> io::Result<()> {
        let (from_dir, from_name) = source.parent(from)?;
        let (to_dir, to_name) = self.parent(to)?;
        let flags = if no_replace {
            RenameFlags::NOREPLACE
        } else {
            RenameFlags::empty()
        };
        rfs::renameat_with(&from_dir, from_name, &to_dir, to_name, flags)?;
        Ok(())
    }

    /// Makes renames and creations in this directory durable.
    pub fn fsync_dir(&self) -> io::Result<()> {
        rfs::fsync(&self.dir)?;
        Ok(())
    }

    /// The raw `lstat` of `path` (`None`: absent), for the union's
    /// attributes.
    pub fn lstat(&self, path: &RelPath) -> io::Result<Option<rfs::Stat>> {
        absent_as_none(
            self.parent(path)
                .and_then(|(dir, name)| Ok(rfs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW)?)),
        )
    }

    /// The raw `stat` of the root itself.
    pub fn root_stat(&self) -> io::Result<rfs::Stat> {
        Ok(rfs::fstat(&self.dir)?)
    }

    /// Opens `path` beneath the root (never through a symlink, the last
    /// component included) with `flags`; `mode` for a creation.
    pub fn open_with(&self, path: &RelPath, flags: OFlags, mode: u32) -> io::Result<File> {
        let (dir, name) = self.parent(path)?;
        let fd = rfs::openat(
            &dir,
            name,
            flags | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(mode),
        )?;
        Ok(File::from(fd))
    }

    /// The target of the symlink at `path`.
    pub fn read_link(&self, path: &RelPath) -> io::Result<Vec<u8>> {
        let (dir, name) = self.parent(path)?;
        Ok(rfs::readlinkat(&dir, name, Vec::new())?.into_bytes())
    }

    /// The names in directory `dir` (the root for `None`), without `.`/`..`.
    pub fn names(&self, dir: Option<&RelPath>) -> io::Result<Vec<Vec<u8>>> {
        let fd = self.dir_fd(dir.map(RelPath::as_bytes))?;
        let mut names = Vec::new();
        for entry in rfs::Dir::read_from(&fd)? {
            let name = entry?.file_name().to_bytes().to_vec();
            if name != b"." && name != b".." {
                names.push(name);
            }
        }
        Ok(names)
    }

    /// Renames within this root (`flags`: no-replace, exchange).
    pub fn rename(&self, from: &RelPath, to: &RelPath, flags: RenameFlags) -> io::Result<()> {
        let (from_dir, from_name) = self.parent(from)?;
        let (to_dir, to_name) = self.parent(to)?;
        rfs::renameat_with(&from_dir, from_name, &to_dir, to_name, flags)?;
        Ok(())
    }

    /// A hard link `to` of `from`, both beneath this root.
    pub fn link(&self, from: &RelPath, to: &RelPath) -> io::Result<()> {
        let (from_dir, from_name) = self.parent(from)?;
        let (to_dir, to_name) = self.parent(to)?;
        rfs::linkat(&from_dir, from_name, &to_dir, to_name, AtFlags::empty())?;
        Ok(())
    }

    /// Sets owner and group (either may be left alone), not following a
    /// symlink.
    pub fn chown(&self, path: &RelPath, uid: Option<u32>, gid: Option<u32>) -> io::Result<()> {
        let (dir, name) = self.parent(path)?;
        let uid = uid.map(rfs::Uid::from_raw);
        let gid = gid.map(rfs::Gid::from_raw);
        rfs::chownat(&dir, name, uid, gid, AtFlags::SYMLINK_NOFOLLOW)?;
        Ok(())
    }

    /// Sets access and modification times (`None`: leave), not following a
    /// symlink.
    pub fn set_times(
        &self,
        path: &RelPath,
        atime: Option<Timespec>,
        mtime: Option<Timespec>,
    ) -> io::Result<()> {
        let (dir, name) = self.parent(path)?;
        let omit = Timespec {
            tv_sec: 0,
            tv_nsec: UTIME_OMIT,
        };
        let times = Timestamps {
            last_access: atime.unwrap_or(omit),
            last_modification: mtime.unwrap_or(omit),
        };
        rfs::utimensat(&dir, name, &times, AtFlags::SYMLINK_NOFOLLOW)?;
        Ok(())
    }

    /// Filesystem statistics of the filesystem holding the root.
    pub fn statvfs(&self) -> io::Result<rfs::StatVfs> {
        Ok(rfs::fstatvfs(&self.dir)?)
    }

    /// Flushes the whole filesystem holding this root to disk: once before
    /// a base commit instead of one fsync per file.
    pub fn sync_filesystem(&self) -> io::Result<()> {
        rfs::syncfs(&self.dir)?;
        Ok(())
    }
}

/// The entry `name` in `dir`: `Some(None)` for a special file (device,
/// fifo, socket), which never syncs.
fn stat_in(dir: &OwnedFd, name: &OsStr) -> io::Result<Option<Meta>> {
    let stat = rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?;
    if is_special(&stat) {
        return Ok(None);
    }
    let target = if rfs::FileType::from_raw_mode(stat.st_mode) == rfs::FileType::Symlink {
        Some(
            rfs::readlinkat(dir, name, Vec::new())?
                .into_bytes()
                .to_vec(),
        )
    } else {
        None
    };
    Ok(Some(meta_of(&stat, target)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> RelPath {
        RelPath::new(s).unwrap()
    }

    fn root() -> (tempfile::TempDir, Root) {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::open(dir.path()).unwrap();
        (dir, root)
    }

    #[test]
    fn a_symlinked_directory_is_not_a_way_out() {
        let (dir, root) = root();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"s").unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("link")).unwrap();
        assert_eq!(root.stat(&p("link/secret")).unwrap(), None);
        assert!(root.create_file(&p("link/new")).is_err());
        assert!(root.mkdir(&p("link/d"), 0o755).is_err());
        assert!(!outside.path().join("new").exists());
        assert!(!outside.path().join("d").exists());
    }

    #[test]
    fn remove_tree_removes_a_symlink_and_never_what_it_points_to() {
        let (dir, root) = root();
        let outside = tempfile::tempdir().unwrap();
        std::fs::create_dir(outside.path().join("var")).unwrap();
        std::fs::write(outside.path().join("var/keep"), b"k").unwrap();
        std::fs::create_dir_all(dir.path().join("d/e")).unwrap();
        std::fs::write(dir.path().join("d/e/f"), b"x").unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("d/l")).unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("l")).unwrap();
        assert!(root.remove_tree(&p("l/var")).is_err());
        root.remove_tree(&p("d")).unwrap();
        assert!(!dir.path().join("d").exists());
        assert!(outside.path().join("var/keep").exists());
    }

    #[test]
    fn created_roots_are_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/upper");
        Root::create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn a_set_id_file_is_observed_without_its_set_id_bits() {
        use std::os::unix::fs::PermissionsExt;
        let (dir, root) = root();
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o6755)).unwrap();
        assert_eq!(root.stat(&p("f")).unwrap().unwrap().mode, 0o755);
    }

    #[test]
    fn a_symlink_is_an_entry_with_its_target() {
        let (dir, root) = root();
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("l")).unwrap();
        let meta = root.stat(&p("l")).unwrap().unwrap();
        assert_eq!(
            meta.kind,
            Kind::Symlink {
                target: b"/etc/passwd".to_vec()
            }
        );
        assert!(root.open_file(&p("l")).is_err());
        assert!(root.chmod(&p("l"), 0o777).is_err());
    }

    /// Everything a shipped file yields, and whether it stayed unchanged.
    fn ship_all(mut file: ShippedFile) -> (Vec<u8>, bool) {
        let mut data = Vec::new();
        let mut buf = [0; 4];
        loop {
            match file.read(&mut buf).unwrap() {
                0 => break,
                n => data.extend_from_slice(&buf[..n]),
            }
        }
        (data, file.unchanged().unwrap())
    }

    #[test]
    fn a_file_that_changed_since_the_plan_is_not_opened_to_ship() {
        let (dir, root) = root();
        std::fs::write(dir.path().join("f"), b"one").unwrap();
        let seen = root.stat(&p("f")).unwrap().unwrap();
        let file = root.open_to_ship(&p("f"), &seen).unwrap().unwrap();
        assert_eq!(ship_all(file), (b"one".to_vec(), true));
        std::fs::write(dir.path().join("f"), b"three").unwrap();
        assert!(root.open_to_ship(&p("f"), &seen).unwrap().is_none());
    }

    #[test]
    fn a_file_written_while_being_shipped_is_not_unchanged() {
        let (dir, root) = root();
        std::fs::write(dir.path().join("f"), b"one two").unwrap();
        let seen = root.stat(&p("f")).unwrap().unwrap();
        let mut file = root.open_to_ship(&p("f"), &seen).unwrap().unwrap();
        let mut buf = [0; 4];
        assert_eq!(file.read(&mut buf).unwrap(), 4);
        let mut append = std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join("f"))
            .unwrap();
        std::io::Write::write_all(&mut append, b" three").unwrap();
        assert!(!ship_all(file).1);
    }

    #[test]
    fn a_file_truncated_while_being_shipped_is_not_unchanged() {
        let (dir, root) = root();
        std::fs::write(dir.path().join("f"), b"one two").unwrap();
        let seen = root.stat(&p("f")).unwrap().unwrap();
        let file = root.open_to_ship(&p("f"), &seen).unwrap().unwrap();
        let truncate = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.path().join("f"))
            .unwrap();
        truncate.set_len(2).unwrap();
        assert!(!ship_all(file).1);
    }

    #[test]
    fn walk_lists_parents_first_and_skips_the_reserved_directory() {
        let (dir, root) = root();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        std::fs::write(dir.path().join("a/b/f"), b"x").unwrap();
        std::fs::create_dir_all(dir.path().join(".unionsync/staging")).unwrap();
        let paths: Vec<String> = root
            .walk(None)
            .unwrap()
            .into_iter()
            .map(|(p, _)| p.to_string())
            .collect();
        assert_eq!(paths, ["a", "a/b", "a/b/f"]);
    }

    #[test]
    fn special_files_are_not_entries() {
        let (dir, root) = root();
        let fifo = dir.path().join("fifo");
        rfs::mknodat(
            rfs::CWD,
            &fifo,
            rfs::FileType::Fifo,
            Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        assert_eq!(root.stat(&p("fifo")).unwrap(), None);
        assert!(root.walk(None).unwrap().is_empty());
    }

    #[test]
    fn chmod_and_set_mtime_show_in_stat() {
        let (dir, root) = root();
        std::fs::write(dir.path().join("f"), b"x").unwrap();
        root.chmod(&p("f"), 0o751).unwrap();
        root.set_mtime(&p("f"), 1_234_567_891_000).unwrap();
        let meta = root.stat(&p("f")).unwrap().unwrap();
        assert_eq!((meta.mode, meta.mtime_ns), (0o751, 1_234_567_891_000));
    }
}
