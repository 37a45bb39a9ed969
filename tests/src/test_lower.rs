//! A network lower with a switch: a read-only FUSE passthrough of a
//! directory (the project home), served by this test process, that can be
//! told to work, to fail every call with EIO (a dropped sshfs session), or
//! to hang every call until it is switched back (a stalled network).
//!
//! ```text
//! home/ ◄── TestLower (fuser, in this process) ──► lower/ ◄── compute mount --lower lower/
//!                 ▲ set_mode(Working | Failing | Hanging)
//! ```
//!
//! No caching: entries and attributes live 0 s and file contents are read
//! anew at every open, so a project-side edit shows at once, as over sshfs
//! with its caches off. Unmounted on drop (hanging calls released first),
//! also when a test panics.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    LockOwner, MountOption, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, Request,
};

/// What every call on the lower does now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LowerMode {
    Working,
    /// EIO at once.
    Failing,
    /// No answer until the mode changes.
    Hanging,
}

/// The switch, shared by the test and the filesystem's threads.
#[derive(Default)]
struct Switch {
    mode: Mutex<Option<LowerMode>>,
    changed: Condvar,
}

impl Switch {
    fn set(&self, mode: LowerMode) {
        *lock(&self.mode) = Some(mode);
        self.changed.notify_all();
    }

    /// Waits out a hang; whether the call may go on (else EIO).
    fn admit(&self) -> Result<(), Errno> {
        let mut mode = lock(&self.mode);
        loop {
            match mode.unwrap_or(LowerMode::Working) {
                LowerMode::Working => return Ok(()),
                LowerMode::Failing => return Err(Errno::EIO),
                LowerMode::Hanging => {
                    mode = self
                        .changed
                        .wait(mode)
                        .unwrap_or_else(|poisoned| poisoned.into_inner())
                }
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The mounted passthrough; unmounted on drop.
pub struct TestLower {
    session: Option<fuser::BackgroundSession>,
    switch: Arc<Switch>,
    pub mountpoint: PathBuf,
}

impl TestLower {
    /// Mounts a view of `source` at `mountpoint` (an empty directory),
    /// working.
    pub fn mount(source: &Path, mountpoint: &Path) -> TestLower {
        std::fs::create_dir_all(mountpoint).expect("creating the lower's mountpoint");
        let switch = Arc::new(Switch::default());
        let fs = Passthrough {
            source: source.to_path_buf(),
            switch: switch.clone(),
            inodes: Mutex::new(Inodes::default()),
            files: Mutex::new(HashMap::new()),
        };
        let mut config = Config::default();
        config.mount_options = vec![
            MountOption::FSName("unionsync-test-lower".into()),
            MountOption::RO,
        ];
        // Hung calls occupy threads: leave some for the calls that come
        // after a hang is lifted.
        config.n_threads = Some(8);
        let session =
            fuser::spawn_mount2(fs, mountpoint, &config).expect("mounting the test lower");
        TestLower {
            session: Some(session),
            switch,
            mountpoint: mountpoint.to_path_buf(),
        }
    }

    pub fn set_mode(&self, mode: LowerMode) {
        self.switch.set(mode);
    }
}

impl Drop for TestLower {
    fn drop(&mut self) {
        // A hung call would keep its thread, and the unmount, waiting.
        self.switch.set(LowerMode::Failing);
        if let Some(session) = self.session.take() {
            if let Err(e) = session.umount_and_join() {
                eprintln!("unmounting {}: {e}", self.mountpoint.display());
            }
        }
        crate::detach(&self.mountpoint);
    }
}

/// Inode numbers for the relative paths looked up so far (1 is the root).
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
        self.paths.get(&ino.0).cloned().ok_or(Errno::ESTALE)
    }

    fn number(&mut self, path: &Path) -> u64 {
        if path.as_os_str().is_empty() {
            return 1;
        }
        if let Some(&ino) = self.numbers.get(path) {
            return ino;
        }
        let ino = self.paths.len() as u64 + 2;
        self.paths.insert(ino, path.to_path_buf());
        self.numbers.insert(path.to_path_buf(), ino);
        ino
    }
}

struct Passthrough {
    source: PathBuf,
    switch: Arc<Switch>,
    inodes: Mutex<Inodes>,
    files: Mutex<HashMap<u64, File>>,
}

const TTL: Duration = Duration::ZERO;

fn errno(e: std::io::Error) -> Errno {
    e.raw_os_error().map_or(Errno::EIO, Errno::from_i32)
}

fn kind(meta: &std::fs::Metadata) -> FileType {
    let t = meta.file_type();
    if t.is_dir() {
        FileType::Directory
    } else if t.is_symlink() {
        FileType::Symlink
    } else {
        FileType::RegularFile
    }
}

fn time(sec: i64, nsec: i64) -> SystemTime {
    UNIX_EPOCH + Duration::new(sec.max(0) as u64, nsec as u32)
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
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

impl Passthrough {
    /// The relative path of `ino`, once the switch lets the call through.
    fn admitted(&self, ino: INodeNo) -> Result<PathBuf, Errno> {
        self.switch.admit()?;
        lock(&self.inodes).path(ino)
    }

    fn stat(&self, rel: &Path) -> Result<(u64, std::fs::Metadata), Errno> {
        let meta = std::fs::symlink_metadata(self.source.join(rel)).map_err(errno)?;
        Ok((lock(&self.inodes).number(rel), meta))
    }
}

impl Filesystem for Passthrough {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self
            .admitted(parent)
            .and_then(|dir| self.stat(&dir.join(name)))
        {
            Ok((ino, meta)) => reply.entry(&TTL, &attr(ino, &meta), Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.admitted(ino).and_then(|path| self.stat(&path)) {
            Ok((ino, meta)) => reply.attr(&TTL, &attr(ino, &meta)),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let target = self
            .admitted(ino)
            .and_then(|path| std::fs::read_link(self.source.join(path)).map_err(errno));
        match target {
            Ok(target) => reply.data(target.as_os_str().as_encoded_bytes()),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let file = self
            .admitted(ino)
            .and_then(|path| File::open(self.source.join(path)).map_err(errno));
        match file {
            Ok(file) => {
                let mut files = lock(&self.files);
                let fh = (0..)
                    .find(|fh| !files.contains_key(fh))
                    .expect("a free handle");
                files.insert(fh, file);
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
        let data = self.switch.admit().and_then(|()| {
            let files = lock(&self.files);
            let file = files.get(&fh.0).ok_or(Errno::EBADF)?;
            let mut buf = vec![0; size as usize];
            let n = file.read_at(&mut buf, offset).map_err(errno)?;
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
        lock(&self.files).remove(&fh.0);
        reply.ok();
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let listed = self.admitted(ino).and_then(|dir| {
            let mut names: Vec<_> = std::fs::read_dir(self.source.join(&dir))
                .map_err(errno)?
                .filter_map(|entry| entry.ok())
                .map(|entry| entry.file_name())
                .collect();
            names.sort();
            let mut out = vec![
                (ino.0, FileType::Directory, ".".into()),
                (1, FileType::Directory, "..".into()),
            ];
            for name in names {
                if let Ok((child, meta)) = self.stat(&dir.join(&name)) {
                    out.push((child, kind(&meta), name));
                }
            }
            Ok(out)
        });
        match listed {
            Ok(entries) => {
                for (i, (ino, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
                    if reply.add(INodeNo(*ino), i as u64 + 1, *kind, name) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(e),
        }
    }
}
