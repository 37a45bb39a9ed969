//! A lower that a test can break: an in-process, read-only FUSE view of a
//! directory that can be switched, at any moment, between working,
//! failing (every request EIO, like a dropped sshfs session) and hanging
//! (every request waits until switched back, like a stalled network).
//!
//! ```text
//! TestLower::new(fill) ── dir/ (filled by `fill`) ◄── FUSE passthrough ── mnt/
//!                                                     └─ Switch: Working │ Failing │ Hanging
//! ```
//!
//! The kernel keeps nothing (every TTL is zero), so every access through
//! `mnt` reaches the switch. [`TestLower::waiting`] tells how many requests
//! a hang holds right now, so a test can wait until a process is stuck
//! instead of sleeping. Dropping it releases every held request and
//! unmounts, also when a test panics.
//!
//! ```no_run
//! use unionsync_tests::test_lower::{Behaviour, TestLower};
//! let lower = TestLower::new(|dir| std::fs::write(dir.join("f"), b"x").unwrap());
//! lower.set(Behaviour::Hanging);
//! // … a thread reading lower.mnt.join("f") is now stuck until:
//! lower.set(Behaviour::Working);
//! ```

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    LockOwner, MountOption, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, Request,
};

use crate::detach;

/// How the lower answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behaviour {
    /// Like the directory it shows.
    Working,
    /// Every request fails with EIO.
    Failing,
    /// Every request waits until the behaviour changes.
    Hanging,
}

#[derive(Default)]
struct State {
    behaviour: Option<Behaviour>,
    waiting: usize,
}

/// The switch every request passes first.
#[derive(Default)]
struct Switch {
    state: Mutex<State>,
    changed: Condvar,
}

impl Switch {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits while hanging; `Err(EIO)` while failing.
    fn pass(&self) -> Result<(), Errno> {
        let mut state = self.state();
        loop {
            match state.behaviour.unwrap_or(Behaviour::Working) {
                Behaviour::Working => return Ok(()),
                Behaviour::Failing => return Err(Errno::EIO),
                Behaviour::Hanging => {
                    state.waiting += 1;
                    state = self.changed.wait(state).unwrap_or_else(|p| p.into_inner());
                    state.waiting -= 1;
                }
            }
        }
    }

    fn set(&self, behaviour: Behaviour) {
        self.state().behaviour = Some(behaviour);
        self.changed.notify_all();
    }
}

/// A mounted [`TestLower`] filesystem; see the module documentation.
pub struct TestLower {
    /// Where it is mounted: the lower to give a union.
    pub mnt: PathBuf,
    /// The directory it shows (change it directly to change the lower).
    pub dir: PathBuf,
    switch: Arc<Switch>,
    session: Option<fuser::BackgroundSession>,
    _temp: Option<tempfile::TempDir>,
}

impl TestLower {
    /// A working lower showing a directory that `fill` fills first.
    pub fn new(fill: impl FnOnce(&Path)) -> TestLower {
        let temp = tempfile::tempdir().expect("a temp dir for the test lower");
        let (dir, mnt) = (temp.path().join("dir"), temp.path().join("mnt"));
        for d in [&dir, &mnt] {
            std::fs::create_dir(d).expect("creating the test lower's directories");
        }
        fill(&dir);
        TestLower::mount(dir, mnt, Some(temp))
    }

    /// A working lower showing `dir` (a project home, say) at `mnt`,
    /// which is created if missing.
    pub fn over(dir: &Path, mnt: &Path) -> TestLower {
        std::fs::create_dir_all(mnt).expect("creating the test lower's mountpoint");
        TestLower::mount(dir.to_path_buf(), mnt.to_path_buf(), None)
    }

    fn mount(dir: PathBuf, mnt: PathBuf, temp: Option<tempfile::TempDir>) -> TestLower {
        let switch = Arc::new(Switch::default());
        let fs = Passthrough {
            root: dir.clone(),
            switch: switch.clone(),
            inodes: Mutex::new(Inodes::default()),
            files: Mutex::new(HashMap::new()),
        };
        let mut config = Config::default();
        config.mount_options = vec![
            MountOption::FSName("unionsync-test-lower".into()),
            MountOption::RO,
        ];
        // Enough threads that the requests a hang holds leave others served.
        config.n_threads = Some(32);
        config.clone_fd = true;
        let session = fuser::spawn_mount2(fs, &mnt, &config).expect("mounting the test lower");
        TestLower {
            mnt,
            dir,
            switch,
            session: Some(session),
            _temp: temp,
        }
    }

    /// From now on, answers as `behaviour` says (releasing the requests a
    /// hang held, unless hanging still).
    pub fn set(&self, behaviour: Behaviour) {
        self.switch.set(behaviour);
    }

    /// How many requests a hang holds right now.
    pub fn waiting(&self) -> usize {
        self.switch.state().waiting
    }
}

impl Drop for TestLower {
    fn drop(&mut self) {
        self.set(Behaviour::Working);
        if let Some(session) = self.session.take() {
            if let Err(e) = session.umount_and_join() {
                eprintln!("unmounting the test lower {}: {e}", self.mnt.display());
            }
        }
        detach(&self.mnt);
    }
}

/// Inode numbers by path (the root is 1).
#[derive(Default)]
struct Inodes {
    paths: HashMap<u64, PathBuf>,
    numbers: HashMap<PathBuf, u64>,
}

impl Inodes {
    fn path(&self, ino: INodeNo) -> Result<PathBuf, Errno> {
        if ino.0 == 1 {
            return Ok(PathBuf::new());
        }
        self.paths.get(&ino.0).cloned().ok_or(Errno::ENOENT)
    }

    fn number(&mut self, path: &Path) -> u64 {
        if path.as_os_str().is_empty() {
            return 1;
        }
        if let Some(ino) = self.numbers.get(path) {
            return *ino;
        }
        let ino = self.paths.len() as u64 + 2;
        self.paths.insert(ino, path.to_path_buf());
        self.numbers.insert(path.to_path_buf(), ino);
        ino
    }
}

struct Passthrough {
    root: PathBuf,
    switch: Arc<Switch>,
    inodes: Mutex<Inodes>,
    files: Mutex<HashMap<u64, Arc<File>>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

fn io(error: std::io::Error) -> Errno {
    Errno::from(error)
}

fn time(sec: i64, nsec: i64) -> SystemTime {
    let at = UNIX_EPOCH + Duration::from_secs(sec.unsigned_abs());
    at + Duration::from_nanos(nsec.unsigned_abs())
}

fn kind(meta: &std::fs::Metadata) -> FileType {
    let t = meta.file_type();
    if t.is_dir() {
        FileType::Directory
    } else if t.is_symlink() {
        FileType::Symlink
    } else if t.is_fifo() {
        FileType::NamedPipe
    } else if t.is_socket() {
        FileType::Socket
    } else {
        FileType::RegularFile
    }
}

fn attr(ino: u64, meta: &std::fs::Metadata) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size: meta.size(),
        blocks: meta.blocks(),
        atime: time(meta.atime(), meta.atime_nsec()),
        mtime: time(meta.mtime(), meta.mtime_nsec()),
        ctime: time(meta.ctime(), meta.ctime_nsec()),
        crtime: UNIX_EPOCH,
        kind: kind(meta),
        perm: (meta.mode() & 0o7777) as u16,
        nlink: meta.nlink() as u32,
        uid: meta.uid(),
        gid: meta.gid(),
        rdev: meta.rdev() as u32,
        blksize: meta.blksize() as u32,
        flags: 0,
    }
}

impl Passthrough {
    /// The backing path of `ino` (after the switch let the request pass).
    fn path(&self, ino: INodeNo) -> Result<PathBuf, Errno> {
        self.switch.pass()?;
        lock(&self.inodes).path(ino)
    }

    fn entry(&self, rel: &Path) -> Result<FileAttr, Errno> {
        let meta = std::fs::symlink_metadata(self.root.join(rel)).map_err(io)?;
        Ok(attr(lock(&self.inodes).number(rel), &meta))
    }

    fn listing(&self, ino: INodeNo) -> Result<Vec<(u64, FileType, Vec<u8>)>, Errno> {
        let rel = self.path(ino)?;
        let mut out = vec![
            (ino.0, FileType::Directory, b".".to_vec()),
            (1, FileType::Directory, b"..".to_vec()),
        ];
        for entry in std::fs::read_dir(self.root.join(&rel)).map_err(io)? {
            let entry = entry.map_err(io)?;
            let meta = entry.metadata().map_err(io)?;
            let ino = lock(&self.inodes).number(&rel.join(entry.file_name()));
            out.push((ino, kind(&meta), entry.file_name().as_bytes().to_vec()));
        }
        Ok(out)
    }
}

impl Filesystem for Passthrough {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self
            .path(parent)
            .and_then(|dir| self.entry(&dir.join(name)))
        {
            Ok(attr) => reply.entry(&Duration::ZERO, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.path(ino).and_then(|path| self.entry(&path)) {
            Ok(attr) => reply.attr(&Duration::ZERO, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let target = self
            .path(ino)
            .and_then(|path| std::fs::read_link(self.root.join(path)).map_err(io));
        match target {
            Ok(target) => reply.data(target.as_os_str().as_bytes()),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let file = self
            .path(ino)
            .and_then(|path| File::open(self.root.join(path)).map_err(io));
        match file {
            Ok(file) => {
                let mut files = lock(&self.files);
                let fh = (1..).find(|fh| !files.contains_key(fh)).unwrap_or(0);
                files.insert(fh, Arc::new(file));
                reply.opened(FileHandle(fh), FopenFlags::empty());
            }
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let data = self.switch.pass().and_then(|()| {
            let file = lock(&self.files).get(&fh.0).cloned().ok_or(Errno::EBADF)?;
            let mut buf = vec![0; size as usize];
            let n = file.read_at(&mut buf, offset).map_err(io)?;
            buf.truncate(n);
            Ok(buf)
        });
        match data {
            Ok(data) => reply.data(&data),
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
        // Never held: a file closed must stay closed whatever the switch.
        lock(&self.files).remove(&fh.0);
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.path(ino) {
            Ok(_) => reply.opened(FileHandle(0), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        match self.listing(ino) {
            Ok(entries) => {
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
            Err(e) => reply.error(e),
        }
    }
}
