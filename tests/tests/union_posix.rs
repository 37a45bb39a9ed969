//! The union mount behaves like a plain directory: the same operations run
//! on a plain temp directory and on the mount give the same results, op by
//! op (value or errno), and leave the same tree.
//!
//! ```text
//! ops ─► plain/            (ext4, the reference)      ─► outcomes, tree ─┐
//!     └► mnt/ (FUSE union: upper │ whiteouts │ lower) ─► outcomes, tree ─┴─ equal
//! ```
//!
//! Two families: over an empty lower (the union is just the upper), and
//! over a populated lower whose tree is also written into the plain
//! directory (copy-up, whiteouts and renames of lower-only entries).
//!
//! Left out by design:
//! - `st_nlink` and `st_size` of directories (the union shows the upper's
//!   or the lower's directory, whose link count and size depend on which
//!   layer holds the children);
//! - inode numbers and devices (the union numbers paths itself);
//! - hard links, as the kernel caches them: the union gives every path its
//!   own inode number, so the kernel caches each name's attributes apart
//!   and a change through one name (chmod, write, unlink of another name)
//!   shows in `stat` of the other only after the attribute timeout (1 s).
//!   The hand-written sequences stat a link only right after making it;
//!   the random sequences, which make links anywhere, stat with
//!   `AT_STATX_FORCE_SYNC` so the filesystem itself answers.

use std::collections::hash_map::DefaultHasher;
use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::hash::{Hash, Hasher};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use proptest::prelude::*;
use rustix::fs::{
    AtFlags, FileType, RenameFlags, StatxFlags, Timespec, Timestamps, CWD, UTIME_OMIT,
};
use unionsync_tests::{fuse_available, UnionMount};

// ---------------------------------------------------------------------------
// The mount, always unmounted
// ---------------------------------------------------------------------------

/// A plain directory `plain` and a union (`union`) whose lower started out
/// as the plain directory did.
struct Scene {
    union: UnionMount,
    plain: PathBuf,
    _plain_dir: tempfile::TempDir,
}

impl Scene {
    /// `populate` fills the lower and the plain directory alike (before the
    /// mount); pass `|_| {}` for an empty lower.
    fn new(populate: impl Fn(&Path)) -> Scene {
        let plain_dir = tempfile::tempdir().unwrap();
        let plain = plain_dir.path().join("plain");
        fs::create_dir(&plain).unwrap();
        populate(&plain);
        Scene {
            union: UnionMount::new(&populate, |_| {}),
            plain,
            _plain_dir: plain_dir,
        }
    }
}

// ---------------------------------------------------------------------------
// Operations and what they return
// ---------------------------------------------------------------------------

/// One operation on paths relative to the directory it runs in.
#[derive(Clone, Debug)]
enum Op {
    /// `open(O_WRONLY|O_CREAT|O_TRUNC)` and write.
    Write(String, Vec<u8>),
    /// `open(O_WRONLY|O_APPEND)` (no create) and write.
    Append(String, Vec<u8>),
    /// `open(O_WRONLY)` and `pwrite` at an offset.
    WriteAt(String, u64, Vec<u8>),
    /// `open(O_WRONLY)` and `ftruncate`.
    Truncate(String, u64),
    /// `open(O_WRONLY|O_CREAT|O_EXCL, 0640)`.
    CreateExcl(String),
    /// The whole content.
    Read(String),
    Mkdir(String, u32),
    Rmdir(String),
    Unlink(String),
    Rename(String, String),
    /// `renameat2(RENAME_NOREPLACE)`.
    RenameNoReplace(String, String),
    /// `symlink(target, path)`.
    Symlink(String, String),
    Readlink(String),
    /// `link(existing, new)`.
    Link(String, String),
    /// `chmod` (follows a symlink).
    Chmod(String, u32),
    /// `utimensat(mtime, AT_SYMLINK_NOFOLLOW)`, then `lstat` with the mtime.
    SetMtime(String, i64, u32),
    /// `lstat`.
    Stat(String),
    /// The sorted names.
    ReadDir(String),
    /// Writes a few bytes at offset 1 GiB of a new file; its size and what
    /// reads at the start, in the hole and at the end show.
    Sparse(String),
    /// Writes then reads back 10 MiB.
    Large(String),
    /// Opens a file, unlinks it, then writes, `fstat`s and reads through
    /// the open descriptor.
    UnlinkWhileOpen(String),
    /// Opens a file (read-write when `true`, read-only otherwise), runs the
    /// inner op, then through the descriptor: appends and `ftruncate`s
    /// (when writable), reads and `fstat`s.
    Held(String, bool, Box<Op>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Kind {
    File,
    Dir,
    Symlink,
    Other,
}

/// What `lstat` shows that must match (see the module notes).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Attrs {
    kind: Kind,
    /// 0 for a directory.
    size: u64,
    perm: u32,
    /// Files only.
    nlink: Option<u64>,
    /// Only after an explicit `utimensat`.
    mtime: Option<(i64, i64)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Outcome {
    Done,
    /// Short content in full.
    Data(Vec<u8>),
    /// Long content by length and digest.
    Digest(usize, u64),
    Target(Vec<u8>),
    Stat(Attrs),
    Names(Vec<String>),
    Sparse {
        size: u64,
        head: Vec<u8>,
        hole: Vec<u8>,
        tail: Vec<u8>,
    },
    Unlinked {
        size: u64,
        content: Vec<u8>,
    },
    Held {
        inner: Box<Result<Outcome, Errno>>,
        size: u64,
        content: Box<Outcome>,
    },
}

type Errno = i32;

fn os<T>(result: io::Result<T>) -> Result<T, Errno> {
    result.map_err(|e| {
        e.raw_os_error()
            .unwrap_or_else(|| panic!("not an OS error: {e}"))
    })
}

fn digest(bytes: &[u8]) -> u64 {
    let mut hasher = DefaultHasher::new();
    bytes.hash(&mut hasher);
    hasher.finish()
}

fn data(bytes: Vec<u8>) -> Outcome {
    if bytes.len() <= 256 {
        Outcome::Data(bytes)
    } else {
        Outcome::Digest(bytes.len(), digest(&bytes))
    }
}

/// What `lstat` shows, through `statx`: with `sync`
/// (`AT_STATX_FORCE_SYNC`), FUSE asks the filesystem instead of answering
/// from the kernel's attribute cache (see the module notes on hard links).
struct Lstat {
    kind: Kind,
    size: u64,
    perm: u32,
    nlink: u64,
    mtime: (i64, i64),
}

fn lstat(path: &Path, sync: bool) -> Result<Lstat, Errno> {
    let mut flags = AtFlags::SYMLINK_NOFOLLOW;
    if sync {
        flags |= AtFlags::STATX_FORCE_SYNC;
    }
    let stx = rustix::fs::statx(CWD, path, flags, StatxFlags::BASIC_STATS)
        .map_err(|e| e.raw_os_error())?;
    let mode = u32::from(stx.stx_mode);
    let kind = match FileType::from_raw_mode(mode) {
        FileType::RegularFile => Kind::File,
        FileType::Directory => Kind::Dir,
        FileType::Symlink => Kind::Symlink,
        _ => Kind::Other,
    };
    Ok(Lstat {
        kind,
        size: stx.stx_size,
        perm: mode & 0o7777,
        nlink: u64::from(stx.stx_nlink),
        mtime: (stx.stx_mtime.tv_sec, i64::from(stx.stx_mtime.tv_nsec)),
    })
}

/// The size `fstat` shows (`sync`: see [`lstat`]).
fn fstat_size(file: &fs::File, sync: bool) -> Result<u64, Errno> {
    let mut flags = AtFlags::EMPTY_PATH;
    if sync {
        flags |= AtFlags::STATX_FORCE_SYNC;
    }
    let stx = rustix::fs::statx(file, "", flags, StatxFlags::SIZE).map_err(|e| e.raw_os_error())?;
    Ok(stx.stx_size)
}

fn attrs(stat: Lstat, with_mtime: bool) -> Attrs {
    Attrs {
        size: if stat.kind == Kind::Dir { 0 } else { stat.size },
        perm: stat.perm,
        nlink: (stat.kind == Kind::File).then_some(stat.nlink),
        mtime: with_mtime.then_some(stat.mtime),
        kind: stat.kind,
    }
}

fn read_at(file: &fs::File, offset: u64, len: usize) -> Result<Vec<u8>, Errno> {
    let mut buf = vec![0u8; len];
    let n = os(file.read_at(&mut buf, offset))?;
    buf.truncate(n);
    Ok(buf)
}

/// The whole content by `pread`s (no `fstat` first, unlike
/// `read_to_end`: the kernel checks the size it caches itself).
fn read_all(file: &fs::File) -> Result<Vec<u8>, Errno> {
    let mut out = Vec::new();
    loop {
        let chunk = read_at(file, out.len() as u64, 4096)?;
        if chunk.is_empty() {
            return Ok(out);
        }
        out.extend_from_slice(&chunk);
    }
}

const GIB: u64 = 1 << 30;

/// Runs `op` beneath `root` (`sync`: see [`lstat`]).
fn run(root: &Path, op: &Op, sync: bool) -> Result<Outcome, Errno> {
    let p = |rel: &str| root.join(rel);
    match op {
        Op::Write(path, bytes) => os(fs::write(p(path), bytes)).map(|()| Outcome::Done),
        Op::Append(path, bytes) => {
            let mut file = os(OpenOptions::new().append(true).open(p(path)))?;
            os(file.write_all(bytes))?;
            Ok(Outcome::Done)
        }
        Op::WriteAt(path, offset, bytes) => {
            let file = os(OpenOptions::new().write(true).open(p(path)))?;
            os(file.write_all_at(bytes, *offset))?;
            Ok(Outcome::Done)
        }
        Op::Truncate(path, len) => {
            let file = os(OpenOptions::new().write(true).open(p(path)))?;
            os(file.set_len(*len))?;
            Ok(Outcome::Done)
        }
        Op::CreateExcl(path) => {
            os(OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o640)
                .open(p(path)))?;
            Ok(Outcome::Done)
        }
        Op::Read(path) => os(fs::read(p(path))).map(data),
        Op::Mkdir(path, mode) => {
            os(fs::DirBuilder::new().mode(*mode).create(p(path))).map(|()| Outcome::Done)
        }
        Op::Rmdir(path) => os(fs::remove_dir(p(path))).map(|()| Outcome::Done),
        Op::Unlink(path) => os(fs::remove_file(p(path))).map(|()| Outcome::Done),
        Op::Rename(from, to) => os(fs::rename(p(from), p(to))).map(|()| Outcome::Done),
        Op::RenameNoReplace(from, to) => {
            rustix::fs::renameat_with(CWD, p(from), CWD, p(to), RenameFlags::NOREPLACE)
                .map_err(|e| e.raw_os_error())?;
            Ok(Outcome::Done)
        }
        Op::Symlink(target, path) => {
            os(std::os::unix::fs::symlink(target, p(path))).map(|()| Outcome::Done)
        }
        Op::Readlink(path) => {
            os(fs::read_link(p(path))).map(|t| Outcome::Target(t.as_os_str().as_bytes().to_vec()))
        }
        Op::Link(from, to) => os(fs::hard_link(p(from), p(to))).map(|()| Outcome::Done),
        Op::Chmod(path, mode) => os(fs::set_permissions(
            p(path),
            fs::Permissions::from_mode(*mode),
        ))
        .map(|()| Outcome::Done),
        Op::SetMtime(path, sec, nsec) => {
            let times = Timestamps {
                last_access: Timespec {
                    tv_sec: 0,
                    tv_nsec: UTIME_OMIT,
                },
                last_modification: Timespec {
                    tv_sec: *sec,
                    tv_nsec: *nsec as _,
                },
            };
            rustix::fs::utimensat(CWD, p(path), &times, AtFlags::SYMLINK_NOFOLLOW)
                .map_err(|e| e.raw_os_error())?;
            Ok(Outcome::Stat(attrs(lstat(&p(path), sync)?, true)))
        }
        Op::Stat(path) => Ok(Outcome::Stat(attrs(lstat(&p(path), sync)?, false))),
        Op::ReadDir(path) => {
            let mut names = Vec::new();
            for entry in os(fs::read_dir(p(path)))? {
                names.push(os(entry)?.file_name().to_string_lossy().into_owned());
            }
            names.sort();
            Ok(Outcome::Names(names))
        }
        Op::Sparse(path) => {
            let file = os(OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(p(path)))?;
            os(file.write_all_at(b"head", 0))?;
            os(file.write_all_at(b"tail", GIB))?;
            drop(file);
            let size = os(fs::metadata(p(path)))?.len();
            let file = os(fs::File::open(p(path)))?;
            Ok(Outcome::Sparse {
                size,
                head: read_at(&file, 0, 4)?,
                hole: read_at(&file, GIB / 2, 4096)?,
                tail: read_at(&file, GIB, 16)?,
            })
        }
        Op::Large(path) => {
            let bytes: Vec<u8> = (0..10u32 << 20)
                .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
                .collect();
            os(fs::write(p(path), &bytes))?;
            let back = os(fs::read(p(path)))?;
            assert!(back == bytes, "{path}: 10 MiB read back differ");
            Ok(data(back))
        }
        Op::UnlinkWhileOpen(path) => {
            let file = os(OpenOptions::new().read(true).write(true).open(p(path)))?;
            os(fs::remove_file(p(path)))?;
            let end = fstat_size(&file, sync)?;
            os(file.write_all_at(b"+after", end))?;
            let size = fstat_size(&file, sync)?;
            let content = read_all(&file)?;
            Ok(Outcome::Unlinked { size, content })
        }
        Op::Held(path, writable, inner) => {
            let file = os(OpenOptions::new().read(true).write(*writable).open(p(path)))?;
            let inner = run(root, inner, sync);
            if *writable {
                let end = fstat_size(&file, sync)?;
                os(file.write_all_at(b"+held", end))?;
                os(file.set_len(end + 3))?;
            }
            let content = read_all(&file)?;
            let size = fstat_size(&file, sync)?;
            Ok(Outcome::Held {
                inner: Box::new(inner),
                size,
                content: Box::new(data(content)),
            })
        }
    }
}

// Short constructors for the hand-written sequences.
fn s(path: &str) -> String {
    path.to_string()
}
fn write(path: &str, bytes: &[u8]) -> Op {
    Op::Write(s(path), bytes.to_vec())
}
fn append(path: &str, bytes: &[u8]) -> Op {
    Op::Append(s(path), bytes.to_vec())
}
fn read(path: &str) -> Op {
    Op::Read(s(path))
}
fn stat(path: &str) -> Op {
    Op::Stat(s(path))
}
fn ls(path: &str) -> Op {
    Op::ReadDir(s(path))
}
fn mkdir(path: &str) -> Op {
    Op::Mkdir(s(path), 0o755)
}
fn rmdir(path: &str) -> Op {
    Op::Rmdir(s(path))
}
fn unlink(path: &str) -> Op {
    Op::Unlink(s(path))
}
fn rename(from: &str, to: &str) -> Op {
    Op::Rename(s(from), s(to))
}
fn chmod(path: &str, mode: u32) -> Op {
    Op::Chmod(s(path), mode)
}

// ---------------------------------------------------------------------------
// Comparing
// ---------------------------------------------------------------------------

/// Runs `ops` in both directories, stopping at the first difference
/// (`sync`: see [`lstat`]).
fn compare_ops(ops: &[Op], plain: &Path, union: &Path, sync: bool) -> Result<(), String> {
    for (i, op) in ops.iter().enumerate() {
        let want = run(plain, op, sync);
        let got = run(union, op, sync);
        if got != want {
            return Err(format!(
                "op #{i} {op:?}:\n  union: {got:?}\n  plain: {want:?}"
            ));
        }
    }
    Ok(())
}

/// mtime of every entry written by [`populate`].
const FIXED_MTIME: i64 = 1_500_000_000;

/// One entry of a tree as compared (not its times, but whether a file or
/// symlink still has the mtime [`populate`] gave it).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Entry {
    File {
        perm: u32,
        content: Outcome,
        kept_mtime: bool,
    },
    Dir {
        perm: u32,
    },
    Symlink {
        target: Vec<u8>,
        kept_mtime: bool,
    },
}

fn tree(root: &Path, sync: bool) -> BTreeMap<String, Entry> {
    fn walk(root: &Path, rel: &str, sync: bool, out: &mut BTreeMap<String, Entry>) {
        let dir = if rel.is_empty() {
            root.to_path_buf()
        } else {
            root.join(rel)
        };
        for entry in fs::read_dir(&dir).unwrap() {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            let path = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let full = root.join(&path);
            let stat = lstat(&full, sync).unwrap();
            let kept_mtime = stat.mtime.0 == FIXED_MTIME;
            let perm = stat.perm;
            let entry = match stat.kind {
                Kind::File => Entry::File {
                    perm,
                    content: data(fs::read(&full).unwrap()),
                    kept_mtime,
                },
                Kind::Dir => Entry::Dir { perm },
                Kind::Symlink => Entry::Symlink {
                    target: fs::read_link(&full)
                        .unwrap()
                        .as_os_str()
                        .as_bytes()
                        .to_vec(),
                    kept_mtime,
                },
                Kind::Other => panic!("{path}: unexpected special file"),
            };
            let is_dir = matches!(entry, Entry::Dir { .. });
            out.insert(path.clone(), entry);
            if is_dir {
                walk(root, &path, sync, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, "", sync, &mut out);
    out
}

fn compare_trees(plain: &Path, union: &Path, sync: bool) -> Result<(), String> {
    let (want, got) = (tree(plain, sync), tree(union, sync));
    if want == got {
        return Ok(());
    }
    let mut diff = String::new();
    for path in want
        .keys()
        .chain(got.keys())
        .collect::<std::collections::BTreeSet<_>>()
    {
        if want.get(path) != got.get(path) {
            diff += &format!(
                "\n  {path}:\n    union: {:?}\n    plain: {:?}",
                got.get(path),
                want.get(path)
            );
        }
    }
    Err(format!("the trees differ:{diff}"))
}

/// Runs `ops` over a fresh scene (`populate` written into the lower and
/// the plain directory), then compares the trees and checks that the lower
/// was never written.
fn check(populate: impl Fn(&Path), ops: &[Op]) {
    if !fuse_available() {
        return;
    }
    let scene = Scene::new(populate);
    let lower_before = tree(&scene.union.lower, false);
    if let Err(e) = compare_ops(ops, &scene.plain, &scene.union.mnt, false) {
        panic!("{e}");
    }
    if let Err(e) = compare_trees(&scene.plain, &scene.union.mnt, false) {
        panic!("after all ops, {e}");
    }
    assert_eq!(
        tree(&scene.union.lower, false),
        lower_before,
        "the lower was written"
    );
}

fn set_mtime(path: &Path) {
    let times = Timestamps {
        last_access: Timespec {
            tv_sec: FIXED_MTIME,
            tv_nsec: 0,
        },
        last_modification: Timespec {
            tv_sec: FIXED_MTIME,
            tv_nsec: 0,
        },
    };
    rustix::fs::utimensat(CWD, path, &times, AtFlags::SYMLINK_NOFOLLOW).unwrap();
}

fn put_file(root: &Path, path: &str, content: &[u8], mode: u32) {
    let full = root.join(path);
    fs::write(&full, content).unwrap();
    fs::set_permissions(&full, fs::Permissions::from_mode(mode)).unwrap();
    set_mtime(&full);
}

fn put_dir(root: &Path, path: &str, mode: u32) {
    let full = root.join(path);
    fs::create_dir(&full).unwrap();
    fs::set_permissions(&full, fs::Permissions::from_mode(mode)).unwrap();
}

fn put_symlink(root: &Path, path: &str, target: &str) {
    let full = root.join(path);
    std::os::unix::fs::symlink(target, &full).unwrap();
    set_mtime(&full);
}

/// The starting tree of the lower-edit tests.
fn populate(root: &Path) {
    put_file(root, "top.txt", b"top", 0o644);
    put_file(root, "script.sh", b"#!/bin/sh\necho hi\n", 0o755);
    put_file(root, "secret", b"s3cret", 0o600);
    put_file(root, "ro.txt", b"read only", 0o444);
    put_dir(root, "docs", 0o755);
    put_file(root, "docs/readme.md", b"read me", 0o644);
    put_dir(root, "docs/guide", 0o750);
    put_file(root, "docs/guide/intro.txt", b"intro", 0o640);
    put_dir(root, "docs/guide/deep", 0o755);
    put_file(root, "docs/guide/deep/leaf", b"leaf", 0o644);
    put_dir(root, "src", 0o755);
    put_file(root, "src/main.rs", b"fn main() {}", 0o644);
    put_dir(root, "src/lib", 0o700);
    put_file(root, "src/lib/mod.rs", b"mod x;", 0o644);
    put_dir(root, "empty", 0o755);
    put_dir(root, "empty2", 0o711);
    put_symlink(root, "link", "top.txt");
    put_symlink(root, "src/up", "../docs");
    put_symlink(root, "dangling", "missing");
}

fn nothing(_: &Path) {}

// ---------------------------------------------------------------------------
// Over an empty lower
// ---------------------------------------------------------------------------

#[test]
fn file_operations_match_a_plain_directory() {
    check(
        nothing,
        &[
            write("f", b"hello"),
            read("f"),
            stat("f"),
            append("f", b", world"),
            read("f"),
            write("f", b"over"),
            read("f"),
            stat("f"),
            Op::Truncate(s("f"), 2),
            read("f"),
            Op::Truncate(s("f"), 10),
            read("f"),
            Op::WriteAt(s("f"), 4, b"mid".to_vec()),
            read("f"),
            Op::WriteAt(s("f"), 20, b"past the end".to_vec()),
            read("f"),
            stat("f"),
            Op::CreateExcl(s("new")),
            stat("new"),
            read("new"),
            append("new", b"appended"),
            append("new", b" twice"),
            read("new"),
            chmod("new", 0o600),
            stat("new"),
            chmod("new", 0o4755),
            stat("new"),
            Op::SetMtime(s("new"), 1_234_567_890, 123_456_789),
            read("new"),
            Op::SetMtime(s("new"), 86_400, 0),
            write("empty", b""),
            stat("empty"),
            read("empty"),
            Op::Symlink(s("f"), s("sym")),
            Op::Readlink(s("sym")),
            stat("sym"),
            read("sym"),
            append("sym", b"+via link"),
            read("f"),
            Op::SetMtime(s("sym"), 1_000_000, 5),
            Op::Symlink(s("nowhere"), s("dangling")),
            Op::Readlink(s("dangling")),
            read("dangling"),
            write("dangling", b"made through a dangling symlink"),
            read("nowhere"),
            Op::Symlink(s(&"x".repeat(200)), s("longtarget")),
            Op::Readlink(s("longtarget")),
            // Hard links: compared right after they are made.
            write("orig", b"linked"),
            Op::Link(s("orig"), s("hard")),
            stat("hard"),
            read("hard"),
            unlink("f"),
            stat("f"),
            read("sym"),
            write("open", b"still open"),
            Op::UnlinkWhileOpen(s("open")),
            stat("open"),
            // Two descriptors on one file.
            write("held", b"held"),
            Op::Held(s("held"), true, Box::new(read("held"))),
            Op::Held(s("held"), false, Box::new(append("held", b"+more"))),
            Op::Held(s("held"), true, Box::new(write("held", b"rewritten"))),
            Op::Held(s("held"), true, Box::new(rename("orig", "held"))),
            read("held"),
            Op::Held(s("held"), false, Box::new(unlink("held"))),
            Op::Sparse(s("sparse")),
            stat("sparse"),
            Op::Large(s("large")),
            stat("large"),
            ls(""),
        ],
    );
}

#[test]
fn directory_operations_match_a_plain_directory() {
    check(
        nothing,
        &[
            mkdir("d"),
            stat("d"),
            ls("d"),
            Op::Mkdir(s("d/private"), 0o700),
            stat("d/private"),
            Op::Mkdir(s("d/odd"), 0o2751),
            stat("d/odd"),
            mkdir("d/a"),
            mkdir("d/a/b"),
            mkdir("d/a/b/c"),
            write("d/a/b/c/f", b"deep"),
            write("d/a/g", b"g"),
            Op::Symlink(s("a/b"), s("d/to_b")),
            ls("d"),
            ls("d/a"),
            ls("d/to_b"),
            read("d/to_b/c/f"),
            ls("d/a/b/c"),
            chmod("d/a", 0o711),
            stat("d/a"),
            ls("d/a"),
            Op::SetMtime(s("d/a/b"), 1_111_111_111, 0),
            unlink("d/a/b/c/f"),
            ls("d/a/b/c"),
            rmdir("d/a/b/c"),
            ls("d/a/b"),
            stat("d/a/b/c"),
            rmdir("d/a/b"),
            mkdir("d/a/b"),
            ls("d/a/b"),
            rmdir("d/private"),
            rmdir("d/odd"),
            unlink("d/to_b"),
            ls("d"),
            ls(""),
        ],
    );
}

#[test]
fn renames_match_a_plain_directory() {
    check(
        nothing,
        &[
            write("a", b"a"),
            write("b", b"b"),
            mkdir("d"),
            write("d/x", b"x"),
            mkdir("d/sub"),
            write("d/sub/y", b"y"),
            mkdir("empty"),
            mkdir("full"),
            write("full/z", b"z"),
            // A file, to a new name and over an existing file.
            rename("a", "a2"),
            stat("a"),
            read("a2"),
            rename("a2", "b"),
            read("b"),
            stat("a2"),
            // Into a directory and back.
            rename("b", "d/b"),
            read("d/b"),
            rename("d/b", "b"),
            // To itself.
            rename("b", "b"),
            read("b"),
            // A directory with its content.
            rename("d", "e"),
            ls("e"),
            ls("e/sub"),
            read("e/sub/y"),
            stat("d"),
            // Over an empty directory, over a non-empty one.
            rename("e", "empty"),
            ls("empty"),
            read("empty/sub/y"),
            rename("empty", "full"),
            ls("empty"),
            // Kinds that cannot replace each other.
            rename("b", "full"),
            rename("full", "b"),
            // Into its own subdirectory, over its own parent.
            rename("empty", "empty/sub/inside"),
            rename("empty/sub", "empty"),
            // RENAME_NOREPLACE.
            Op::RenameNoReplace(s("b"), s("full/z")),
            read("full/z"),
            Op::RenameNoReplace(s("b"), s("b2")),
            read("b2"),
            stat("b"),
            Op::RenameNoReplace(s("empty/sub"), s("full")),
            Op::RenameNoReplace(s("empty/sub"), s("moved")),
            ls("moved"),
            // What is not there, and where cannot be.
            rename("nothing", "x"),
            rename("b2", "nodir/x"),
            rename("b2", "b2/x"),
            // Symlinks move as themselves.
            Op::Symlink(s("b2"), s("sym")),
            rename("sym", "full/sym"),
            Op::Readlink(s("full/sym")),
            read("full/sym"),
            // Renames of fresh deep trees, then reading everything.
            mkdir("t"),
            mkdir("t/u"),
            mkdir("t/u/v"),
            write("t/u/v/w", b"w"),
            rename("t/u", "moved/u"),
            ls("moved/u/v"),
            read("moved/u/v/w"),
            rename("moved", "t/moved"),
            ls("t/moved/u/v"),
            write("t/moved/u/v/w", b"rewritten after two renames"),
            read("t/moved/u/v/w"),
            ls(""),
        ],
    );
}

#[test]
fn errors_match_a_plain_directory() {
    let long = "n".repeat(256);
    let longest = "n".repeat(255);
    check(
        nothing,
        &[
            write("f", b"file"),
            mkdir("d"),
            write("d/x", b"x"),
            // O_CREAT|O_EXCL on an existing name, opening what is missing.
            Op::CreateExcl(s("f")),
            Op::CreateExcl(s("d")),
            read("missing"),
            append("missing", b"x"),
            Op::Truncate(s("missing"), 0),
            stat("missing"),
            ls("missing"),
            Op::Readlink(s("missing")),
            write("missing/x", b"x"),
            // Directories and files confused.
            mkdir("f"),
            mkdir("d"),
            rmdir("d"),
            unlink("d"),
            rmdir("f"),
            unlink("missing"),
            rmdir("missing"),
            read("d"),
            write("d", b"x"),
            Op::Truncate(s("d"), 0),
            Op::Readlink(s("f")),
            Op::Readlink(s("d")),
            ls("f"),
            Op::Symlink(s("x"), s("f")),
            Op::Symlink(s("x"), s("d")),
            Op::Link(s("f"), s("d/x")),
            Op::Link(s("d"), s("dlink")),
            Op::Link(s("missing"), s("l")),
            // A 256-byte name (255 is fine).
            write(&long, b"x"),
            mkdir(&long),
            stat(&long),
            Op::CreateExcl(s(&long)),
            Op::Symlink(s("f"), s(&long)),
            rename("f", &long),
            write(&format!("d/{long}"), b"x"),
            write(&longest, b"longest"),
            read(&longest),
            rename(&longest, "short"),
            read("short"),
            // A file as a parent.
            write("f/x", b"x"),
            read("f/x"),
            stat("f/x"),
            mkdir("f/x"),
            rmdir("f/x"),
            unlink("f/x"),
            ls("f/x"),
            rename("f/x", "y"),
            rename("d/x", "f/x"),
            Op::Symlink(s("t"), s("f/x")),
            Op::Chmod(s("f/x"), 0o600),
            Op::SetMtime(s("f/x"), 1, 0),
            // The state is untouched by all of that.
            ls(""),
            ls("d"),
            read("f"),
        ],
    );
}

// ---------------------------------------------------------------------------
// Over a populated lower
// ---------------------------------------------------------------------------

#[test]
fn lower_file_edits_match_a_plain_directory() {
    check(
        populate,
        &[
            ls(""),
            ls("docs"),
            stat("top.txt"),
            stat("script.sh"),
            read("top.txt"),
            // Writes copy up; the original mode stays.
            append("top.txt", b" appended"),
            read("top.txt"),
            stat("top.txt"),
            write("docs/readme.md", b"rewritten"),
            stat("docs/readme.md"),
            Op::WriteAt(s("docs/guide/intro.txt"), 2, b"XY".to_vec()),
            read("docs/guide/intro.txt"),
            Op::Truncate(s("secret"), 3),
            read("secret"),
            stat("secret"),
            Op::Truncate(s("docs/guide/deep/leaf"), 100),
            read("docs/guide/deep/leaf"),
            // Attribute changes copy up and keep the content and mtime.
            chmod("script.sh", 0o700),
            stat("script.sh"),
            read("script.sh"),
            chmod("ro.txt", 0o644),
            append("ro.txt", b"+w"),
            chmod("docs/guide", 0o755),
            stat("docs/guide"),
            ls("docs/guide"),
            Op::SetMtime(s("src/main.rs"), 1_600_000_000, 42),
            Op::SetMtime(s("link"), 1_600_000_001, 0),
            Op::SetMtime(s("src/lib"), 1_600_000_002, 0),
            // Through lower symlinks.
            read("link"),
            append("link", b" via link"),
            read("top.txt"),
            Op::Readlink(s("src/up")),
            ls("src/up"),
            read("src/up/guide/intro.txt"),
            write("src/up/via_symlink", b"new"),
            ls("docs"),
            read("dangling"),
            Op::Readlink(s("dangling")),
            // Deletions whiteout.
            unlink("src/main.rs"),
            stat("src/main.rs"),
            ls("src"),
            unlink("link"),
            stat("link"),
            unlink("dangling"),
            ls(""),
            Op::CreateExcl(s("src/main.rs")),
            read("src/main.rs"),
            write("dangling", b"a file where a symlink was"),
            stat("dangling"),
            Op::Symlink(s("docs"), s("link")),
            ls("link"),
            // A hard link of a lower file, then the rest of it.
            Op::Link(s("docs/readme.md"), s("readme.hard")),
            stat("readme.hard"),
            read("readme.hard"),
            Op::UnlinkWhileOpen(s("src/lib/mod.rs")),
            // A lower file held open while it is copied up and changed.
            Op::Held(
                s("docs/guide/deep/leaf"),
                false,
                Box::new(append("docs/guide/deep/leaf", b"+1")),
            ),
            Op::Held(s("ro.txt"), false, Box::new(Op::Truncate(s("ro.txt"), 2))),
            Op::Held(s("exec.sh"), false, Box::new(chmod("exec.sh", 0o600))),
            Op::Held(s("script.sh"), false, Box::new(chmod("script.sh", 0o600))),
            Op::Held(s("script.sh"), true, Box::new(read("script.sh"))),
            Op::Held(s("secret"), false, Box::new(rename("top.txt", "secret"))),
            read("secret"),
            stat("src/lib/mod.rs"),
            ls("src/lib"),
            // Errors over lower entries.
            Op::CreateExcl(s("secret")),
            mkdir("docs"),
            rmdir("docs"),
            unlink("docs"),
            rmdir("top.txt"),
            write("top.txt/x", b"x"),
            ls("top.txt"),
            Op::Link(s("docs"), s("x")),
            ls(""),
        ],
    );
}

#[test]
fn lower_directory_edits_match_a_plain_directory() {
    check(
        populate,
        &[
            // Emptying a lower directory and removing it.
            unlink("docs/guide/deep/leaf"),
            ls("docs/guide/deep"),
            rmdir("docs/guide/deep"),
            ls("docs/guide"),
            stat("docs/guide/deep"),
            // Creating it again: none of its old children.
            mkdir("docs/guide/deep"),
            ls("docs/guide/deep"),
            stat("docs/guide/deep/leaf"),
            read("docs/guide/deep/leaf"),
            write("docs/guide/deep/new", b"new"),
            ls("docs/guide/deep"),
            // Removing a whole lower tree bottom-up, then the parent again.
            unlink("docs/guide/intro.txt"),
            unlink("docs/guide/deep/new"),
            rmdir("docs/guide/deep"),
            rmdir("docs/guide"),
            unlink("docs/readme.md"),
            ls("docs"),
            rmdir("docs"),
            ls(""),
            ls("src/up"),
            mkdir("docs"),
            ls("docs"),
            ls("src/up"),
            stat("docs/guide"),
            mkdir("docs/guide"),
            ls("docs/guide"),
            // Empty lower directories.
            rmdir("empty"),
            stat("empty"),
            mkdir("empty"),
            stat("empty"),
            chmod("empty2", 0o755),
            Op::Mkdir(s("empty2/child"), 0o700),
            ls("empty2"),
            rmdir("empty2/child"),
            rmdir("empty2"),
            // Non-empty lower directories refuse rmdir.
            rmdir("src"),
            rmdir("src/lib"),
            // A new directory in a lower one, and a file beside its lower files.
            mkdir("src/lib/inner"),
            write("src/lib/inner/f", b"f"),
            write("src/new.rs", b"new"),
            ls("src"),
            ls("src/lib"),
            ls(""),
        ],
    );
}

#[test]
fn renames_of_lower_entries_match_a_plain_directory() {
    check(
        populate,
        &[
            // A lower file to a new name, over a lower file, over an upper file.
            rename("top.txt", "top2.txt"),
            read("top2.txt"),
            stat("top.txt"),
            rename("secret", "script.sh"),
            read("script.sh"),
            stat("script.sh"),
            write("upper.txt", b"upper"),
            rename("ro.txt", "upper.txt"),
            read("upper.txt"),
            rename("upper.txt", "top.txt"),
            read("top.txt"),
            // A lower-only directory with all its content (no EXDEV).
            rename("docs", "manual"),
            ls("manual"),
            ls("manual/guide"),
            read("manual/guide/deep/leaf"),
            stat("docs"),
            ls("src/up"),
            // And back: nothing of the old one shows twice.
            rename("manual", "docs"),
            ls("docs/guide/deep"),
            read("docs/guide/intro.txt"),
            // Into a deeper lower directory, and over lower empty dirs.
            rename("docs/guide", "src/lib/guide"),
            ls("src/lib/guide"),
            ls("docs"),
            rename("src/lib/guide/deep", "empty"),
            ls("empty"),
            read("empty/leaf"),
            rename("src/lib", "empty2"),
            ls("empty2"),
            ls("empty2/guide"),
            stat("src/lib"),
            // Over non-empty lower directories, into its own subdirectory.
            rename("empty", "src"),
            rename("empty2", "empty2/guide/x"),
            rename("docs", "docs/y"),
            // File over directory and back, with lower entries.
            rename("script.sh", "docs"),
            rename("docs", "script.sh"),
            // RENAME_NOREPLACE over lower entries.
            Op::RenameNoReplace(s("top.txt"), s("top2.txt")),
            Op::RenameNoReplace(s("src"), s("docs")),
            Op::RenameNoReplace(s("src"), s("code")),
            ls("code"),
            Op::Readlink(s("code/up")),
            ls("code/up"),
            // A lower symlink renamed.
            rename("link", "code/link"),
            Op::Readlink(s("code/link")),
            read("code/link"),
            rename("dangling", "dangling2"),
            Op::Readlink(s("dangling2")),
            // Re-creating names renamed away.
            mkdir("docs2"),
            rename("docs2", "src"),
            ls("src"),
            write("src/main.rs", b"fresh"),
            ls("src"),
            ls(""),
        ],
    );
}

// ---------------------------------------------------------------------------
// Random sequences over a populated lower
// ---------------------------------------------------------------------------

/// The random tests' starting tree, within the name space `{a,b,c,d}`
/// (`d` absent at the top), depth up to 3.
fn populate_small(root: &Path) {
    put_dir(root, "a", 0o755);
    put_file(root, "a/a", b"one", 0o644);
    put_dir(root, "a/b", 0o750);
    put_file(root, "a/b/a", b"deep", 0o600);
    put_dir(root, "a/b/b", 0o755);
    put_symlink(root, "a/c", "../c");
    put_dir(root, "a/d", 0o700);
    put_file(root, "b", b"bee", 0o755);
    put_dir(root, "c", 0o755);
    put_file(root, "c/a", b"sea", 0o644);
    put_symlink(root, "c/c", "a");
    put_dir(root, "c/d", 0o755);
    put_dir(root, "c/d/a", 0o755);
    put_file(root, "c/d/b", b"cdb", 0o640);
}

fn name() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec!["a", "b", "c", "d"])
}

/// `path` with its last name replaced by `name`.
fn sibling(path: &str, name: &str) -> String {
    match path.rsplit_once('/') {
        Some((parent, _)) => format!("{parent}/{name}"),
        None => name.to_string(),
    }
}

fn path() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => name().prop_map(|a| a.to_string()),
        4 => (name(), name()).prop_map(|(a, b)| format!("{a}/{b}")),
        2 => (name(), name(), name()).prop_map(|(a, b, c)| format!("{a}/{b}/{c}")),
    ]
}

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(Vec::new()),
        prop::collection::vec(any::<u8>(), 1..40),
        Just(vec![b'z'; 5000]),
    ]
}

fn mode() -> impl Strategy<Value = u32> {
    prop::sample::select(vec![0o644, 0o600, 0o755, 0o700, 0o444, 0o1777])
}

/// Everything but the big files. A sequence with hard links is compared
/// with `AT_STATX_FORCE_SYNC` stats (see the module notes).
fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => (path(), path()).prop_map(|(f, t)| Op::Link(f, t)),
        4 => (path(), bytes()).prop_map(|(p, b)| Op::Write(p, b)),
        2 => (path(), bytes()).prop_map(|(p, b)| Op::Append(p, b)),
        1 => (path(), 0..6000u64, bytes()).prop_map(|(p, o, b)| Op::WriteAt(p, o, b)),
        1 => (path(), 0..6000u64).prop_map(|(p, n)| Op::Truncate(p, n)),
        1 => path().prop_map(Op::CreateExcl),
        3 => path().prop_map(Op::Read),
        4 => (path(), mode()).prop_map(|(p, m)| Op::Mkdir(p, m)),
        2 => path().prop_map(Op::Rmdir),
        2 => path().prop_map(Op::Unlink),
        4 => (path(), path()).prop_map(|(f, t)| Op::Rename(f, t)),
        3 => (path(), name()).prop_map(|(f, n)| Op::Rename(f.clone(), sibling(&f, n))),
        1 => (path(), path()).prop_map(|(f, t)| Op::RenameNoReplace(f, t)),
        1 => (prop::sample::select(vec!["a", "b", "d", "a/a", "c/d", "missing"]), path())
            .prop_map(|(t, p)| Op::Symlink(t.to_string(), p)),
        1 => path().prop_map(Op::Readlink),
        1 => (path(), mode()).prop_map(|(p, m)| Op::Chmod(p, m)),
        1 => (path(), 0..2_000_000_000i64, 0..1_000_000_000u32)
            .prop_map(|(p, s, n)| Op::SetMtime(p, s, n)),
        2 => path().prop_map(Op::Stat),
        3 => prop_oneof![Just(String::new()), path()].prop_map(Op::ReadDir),
        1 => path().prop_map(Op::UnlinkWhileOpen),
        3 => held(),
    ]
}

/// A file held open while an op runs: on the held path itself (or its
/// renamed-over target) half the time.
fn held() -> impl Strategy<Value = Op> {
    (path(), any::<bool>()).prop_flat_map(|(held, writable)| {
        let target = prop_oneof![Just(held.clone()), path()];
        let source = prop_oneof![Just(held.clone()), path()];
        let inner = prop_oneof![
            (target.clone(), bytes()).prop_map(|(p, b)| Op::Write(p, b)),
            (target.clone(), bytes()).prop_map(|(p, b)| Op::Append(p, b)),
            (target.clone(), 0..6000u64).prop_map(|(p, n)| Op::Truncate(p, n)),
            target.clone().prop_map(Op::Unlink),
            (target.clone(), mode()).prop_map(|(p, m)| Op::Chmod(p, m)),
            (target.clone(), 0..2_000_000_000i64).prop_map(|(p, s)| Op::SetMtime(p, s, 0)),
            (source.clone(), target.clone()).prop_map(|(f, t)| Op::Rename(f, t)),
            (path(), target.clone()).prop_map(|(f, t)| Op::Rename(f, t)),
            (source, name()).prop_map(|(f, n)| Op::Rename(f.clone(), sibling(&f, n))),
            path().prop_map(Op::Rmdir),
            target.prop_map(Op::Read),
        ];
        inner.prop_map(move |op| Op::Held(held.clone(), writable, Box::new(op)))
    })
}

/// The random cases share one mount: each gets a fresh directory written
/// into the lower (the union reads the lower live) and into the plain
/// directory.
fn random_case(scene: &Scene, ops: &[Op]) -> Result<(), String> {
    static CASE: AtomicU64 = AtomicU64::new(0);
    let name = format!("case-{}", CASE.fetch_add(1, Ordering::Relaxed));
    let (lower, plain, union) = (
        scene.union.lower.join(&name),
        scene.plain.join(&name),
        scene.union.mnt.join(&name),
    );
    for root in [&lower, &plain] {
        fs::create_dir(root).unwrap();
        populate_small(root);
    }
    let lower_before = tree(&lower, false);
    // Hard links: ask the filesystem, not the kernel's per-name caches.
    let links = ops.iter().any(|op| matches!(op, Op::Link(..)));
    compare_ops(ops, &plain, &union, links)?;
    compare_trees(&plain, &union, links)?;
    if tree(&lower, false) != lower_before {
        return Err("the lower was written".into());
    }
    Ok(())
}

#[test]
fn random_operation_sequences_match_a_plain_directory() {
    if !fuse_available() {
        return;
    }
    let scene = Scene::new(nothing);
    // PROPTEST_CASES overrides the 64 cases (for a longer local hunt).
    let cases = match std::env::var("PROPTEST_CASES") {
        Ok(_) => ProptestConfig::default().cases,
        Err(_) => 64,
    };
    let config = ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(config, |(ops in prop::collection::vec(op(), 1..80))| {
        random_case(&scene, &ops).map_err(TestCaseError::fail)?;
    });
}
