//! Received content waits in temp files until a step places it, and the
//! one way both stores place a state at a path: compare-and-swap against
//! what the plan saw, then an atomic rename (or mkdir), never a clobber.
//!
//! ```text
//! FileData chunks ─► Staging::receive ─► .unionsync/staging/<key>/<n>  (hashed as it comes)
//! step ─► install(to, meta, expect): stat(to) matches expect? ─► chmod, mtime ─► rename
//!                                     └─ no: Deferred (decided again next sync)
//! ```

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Write};

use rustix::io::Errno;
use unionsync_core::{ContentHash, Kind, Meta, RelPath};

use crate::beneath::{is_absent, Root};

/// A step did not apply because its precondition no longer held; the path
/// is left alone and decided again at the next sync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deferred(pub String);

/// The result of one step: applied, deferred, or a storage failure (which
/// fails the sync).
pub type StepResult = io::Result<Result<(), Deferred>>;

/// Errors that mean "the tree is not as the plan saw it" rather than a
/// broken disk: the step is deferred.
pub fn deferral(error: io::Error, path: &RelPath) -> StepResult {
    let raced = is_absent(&error)
        || matches!(
            Errno::from_io_error(&error),
            Some(Errno::EXIST | Errno::NOTEMPTY | Errno::ISDIR)
        );
    if raced {
        Ok(Err(Deferred(format!("{path}: {error}"))))
    } else {
        Err(io::Error::new(error.kind(), format!("{path}: {error}")))
    }
}

/// Is `now` still the state the plan saw? Directories compare by kind and
/// mode only: their times move whenever a child comes or goes (this very
/// sync's steps included).
pub fn still_matches(now: Option<&Meta>, expect: Option<&Meta>) -> bool {
    match (now, expect) {
        (None, None) => true,
        (Some(now), Some(expect)) if now.is_dir() && expect.is_dir() => now.perm() == expect.perm(),
        (Some(now), Some(expect)) => now.matches(expect),
        _ => false,
    }
}

struct StagedFile {
    name: RelPath,
    size: u64,
    hash: ContentHash,
}

/// Content received for the sync in flight, one temp file per path.
pub struct Staging {
    dir: Root,
    files: BTreeMap<RelPath, StagedFile>,
    receiving: Option<(RelPath, File, blake3::Hasher, u64)>,
    next: u64,
}

impl Staging {
    /// Staging in `root/<dir>`, emptied of what an earlier process left.
    pub fn new(root: &Root, dir: &RelPath) -> io::Result<Staging> {
        let dir = root.subdir(dir, true)?;
        for (path, meta) in dir.walk(None)?.into_iter().rev() {
            dir.remove(&path, meta.is_dir())?;
        }
        Ok(Staging {
            dir,
            files: BTreeMap::new(),
            receiving: None,
            next: 0,
        })
    }

    fn temp_name(&mut self) -> RelPath {
        self.next += 1;
        RelPath::new(format!("{}", self.next)).expect("a number is a valid path")
    }

    /// Appends a chunk of `path`'s content; a file's first chunk replaces
    /// what was staged for it before.
    pub fn receive(&mut self, path: &RelPath, data: &[u8], last: bool) -> io::Result<()> {
        if self.receiving.as_ref().is_none_or(|(p, ..)| p != path) {
            self.drop_file(path)?;
            let name = self.temp_name();
            let file = self.dir.create_file(&name)?;
            self.files.insert(
                path.clone(),
                StagedFile {
                    name,
                    size: 0,
                    hash: ContentHash([0; 32]),
                },
            );
            self.receiving = Some((path.clone(), file, blake3::Hasher::new(), 0));
        }
        let (_, file, hasher, size) = self.receiving.as_mut().expect("set just above");
        file.write_all(data)?;
        hasher.update(data);
        *size += data.len() as u64;
        if last {
            let (path, _, hasher, size) = self.receiving.take().expect("set just above");
            let staged = self.files.get_mut(&path).expect("inserted with receiving");
            staged.size = size;
            staged.hash = ContentHash(*hasher.finalize().as_bytes());
        }
        Ok(())
    }

    /// The content hash of what was staged for `path`, once complete.
    pub fn staged_hash(&self, path: &RelPath) -> Option<ContentHash> {
        let receiving = self.receiving.as_ref().is_some_and(|(p, ..)| p == path);
        (!receiving)
            .then(|| self.files.get(path).map(|f| f.hash))
            .flatten()
    }

    fn drop_file(&mut self, path: &RelPath) -> io::Result<()> {
        if let Some(old) = self.files.remove(path) {
            ignore_absent(self.dir.remove(&old.name, false))?;
        }
        Ok(())
    }

    /// Puts what was staged on disk before any of it is renamed into
    /// place: after a power loss a renamed file must hold its content, not
    /// nothing (the next scan would take an empty file for an edit). One
    /// `syncfs` per sync, not one fsync per file.
    pub fn make_durable(&self) -> io::Result<()> {
        if self.files.is_empty() {
            return Ok(());
        }
        self.dir.sync_filesystem()
    }

    /// Forgets everything staged (a new sync starts).
    pub fn clear(&mut self) -> io::Result<()> {
        self.receiving = None;
        let paths: Vec<RelPath> = self.files.keys().cloned().collect();
        for path in paths {
            self.drop_file(&path)?;
        }
        Ok(())
    }

    /// The staged temp file holding exactly `meta`'s content for `path`.
    fn complete(&self, path: &RelPath, meta: &Meta) -> Option<&RelPath> {
        let staged = self.files.get(path)?;
        let receiving = self.receiving.as_ref().is_some_and(|(p, ..)| p == path);
        let right = staged.size == meta.size && meta.hash.is_none_or(|h| h == staged.hash);
        (!receiving && right).then_some(&staged.name)
    }

    /// Makes `to` beneath `target` hold `meta` (a file's content staged for
    /// `path`), provided `to` is still `expect` (`None`: nothing there). A
    /// new directory is created owner-writable and returned so its final
    /// mode can be set after its children (see [`finish_dirs`]).
    pub fn install(
        &mut self,
        target: &Root,
        path: &RelPath,
        to: &RelPath,
        meta: &Meta,
        expect: Option<&Meta>,
        new_dirs: &mut Vec<(RelPath, u32)>,
    ) -> StepResult {
        let now = target.stat(to)?;
        if !still_matches(now.as_ref(), expect) {
            return Ok(Err(Deferred(format!(
                "{to}: changed since the plan (plan saw {expect:?}, now {now:?})"
            ))));
        }
        let step = match &meta.kind {
            Kind::Dir => match &now {
                Some(now) if now.is_dir() => target.chmod(to, meta.perm()),
                _ => {
                    if now.is_some() {
                        if let Err(e) = target.remove(to, false) {
                            return deferral(e, to);
                        }
                    }
                    new_dirs.push((to.clone(), meta.perm()));
                    target.mkdir(to, 0o700)
                }
            },
            Kind::File => {
                let Some(name) = self.complete(path, meta).cloned() else {
                    return Ok(Err(Deferred(format!("{path}: content not received"))));
                };
                self.dir.chmod(&name, meta.perm())?;
                self.dir.set_mtime(&name, meta.mtime_ns)?;
                let result = replace(target, &self.dir, &name, to, now.as_ref());
                if result.is_ok() {
                    self.files.remove(path);
                }
                result
            }
            Kind::Symlink { target: link } => {
                let name = self.temp_name();
                self.dir.symlink(&name, link)?;
                self.dir.set_mtime(&name, meta.mtime_ns)?;
                let result = replace(target, &self.dir, &name, to, now.as_ref());
                if result.is_err() {
                    ignore_absent(self.dir.remove(&name, false))?;
                }
                result
            }
        };
        match step {
            Ok(()) => Ok(Ok(())),
            Err(e) => deferral(e, to),
        }
    }
}

/// Renames the staged `name` onto `to`, which is `now`: an empty directory
/// in the way is removed first (never a full one), and with nothing there
/// the rename refuses to replace whatever appeared since.
fn replace(
    target: &Root,
    staging: &Root,
    name: &RelPath,
    to: &RelPath,
    now: Option<&Meta>,
) -> io::Result<()> {
    let was_dir = now.is_some_and(Meta::is_dir);
    if was_dir {
        target.remove(to, true)?;
    }
    target.rename_from(staging, name, to, now.is_none() || was_dir)
}

/// Gives directories created by [`Staging::install`] their final mode,
/// deepest first (a read-only directory is made read-only after its
/// children were created in it).
pub fn finish_dirs(target: &Root, new_dirs: &mut Vec<(RelPath, u32)>) -> io::Result<()> {
    new_dirs.sort();
    for (dir, mode) in new_dirs.drain(..).rev() {
        ignore_absent(target.chmod(&dir, mode))?;
    }
    Ok(())
}

fn ignore_absent(result: io::Result<()>) -> io::Result<()> {
    match result {
        Err(e) if is_absent(&e) => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> RelPath {
        RelPath::new(s).unwrap()
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        root: Root,
        staging: Staging,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::open(dir.path()).unwrap();
        let staging = Staging::new(&root, &p(".unionsync/staging/t")).unwrap();
        Fixture {
            _dir: dir,
            root,
            staging,
        }
    }

    fn file_meta(data: &[u8]) -> Meta {
        Meta::file(0o640, data.len() as u64, 1_700_000_000_000_000_000)
    }

    impl Fixture {
        fn install(&mut self, path: &str, meta: &Meta, expect: Option<&Meta>) -> StepResult {
            let mut dirs = Vec::new();
            let result =
                self.staging
                    .install(&self.root, &p(path), &p(path), meta, expect, &mut dirs);
            finish_dirs(&self.root, &mut dirs).unwrap();
            result
        }
    }

    #[test]
    fn a_staged_file_lands_with_its_mode_and_mtime() {
        let mut f = fixture();
        f.staging.receive(&p("f"), b"hel", false).unwrap();
        f.staging.receive(&p("f"), b"lo", true).unwrap();
        let meta = file_meta(b"hello");
        f.install("f", &meta, None).unwrap().unwrap();
        let now = f.root.stat(&p("f")).unwrap().unwrap();
        assert_eq!(
            (now.size, now.mode, now.mtime_ns),
            (5, 0o640, meta.mtime_ns)
        );
        assert_eq!(std::fs::read(f.root.path().join("f")).unwrap(), b"hello");
    }

    #[test]
    fn a_file_created_since_the_plan_is_not_clobbered() {
        let mut f = fixture();
        f.staging.receive(&p("f"), b"sync", true).unwrap();
        std::fs::write(f.root.path().join("f"), b"user").unwrap();
        let result = f.install("f", &file_meta(b"sync"), None).unwrap();
        assert!(result.is_err());
        assert_eq!(std::fs::read(f.root.path().join("f")).unwrap(), b"user");
    }

    #[test]
    fn a_file_edited_since_the_plan_is_not_clobbered() {
        let mut f = fixture();
        std::fs::write(f.root.path().join("f"), b"old").unwrap();
        let seen = f.root.stat(&p("f")).unwrap().unwrap();
        std::fs::write(f.root.path().join("f"), b"user!").unwrap();
        f.staging.receive(&p("f"), b"sync", true).unwrap();
        let result = f.install("f", &file_meta(b"sync"), Some(&seen)).unwrap();
        assert!(result.is_err());
        assert_eq!(std::fs::read(f.root.path().join("f")).unwrap(), b"user!");
    }

    #[test]
    fn content_that_does_not_match_the_plan_is_not_placed() {
        let mut f = fixture();
        f.staging.receive(&p("f"), b"short", true).unwrap();
        let result = f.install("f", &file_meta(b"longer!"), None).unwrap();
        assert!(result.is_err());
        assert!(f.root.stat(&p("f")).unwrap().is_none());
    }

    #[test]
    fn a_read_only_directory_gets_its_mode_after_its_children() {
        let mut f = fixture();
        let mut dirs = Vec::new();
        f.staging.receive(&p("d/f"), b"x", true).unwrap();
        for (path, meta) in [("d", Meta::dir(0o555, 0)), ("d/f", file_meta(b"x"))] {
            f.staging
                .install(&f.root, &p(path), &p(path), &meta, None, &mut dirs)
                .unwrap()
                .unwrap();
            // Until the apply ends, the new directory stays writable.
            assert_eq!(f.root.stat(&p("d")).unwrap().unwrap().mode, 0o700);
        }
        finish_dirs(&f.root, &mut dirs).unwrap();
        assert_eq!(f.root.stat(&p("d")).unwrap().unwrap().mode, 0o555);
        assert!(f.root.stat(&p("d/f")).unwrap().is_some());
    }

    #[test]
    fn an_empty_directory_is_replaced_by_a_file_but_a_full_one_is_not() {
        let mut f = fixture();
        std::fs::create_dir(f.root.path().join("d")).unwrap();
        let seen = f.root.stat(&p("d")).unwrap().unwrap();
        f.staging.receive(&p("d"), b"x", true).unwrap();
        f.install("d", &file_meta(b"x"), Some(&seen))
            .unwrap()
            .unwrap();
        assert_eq!(f.root.stat(&p("d")).unwrap().unwrap().kind, Kind::File);

        std::fs::create_dir_all(f.root.path().join("e/child")).unwrap();
        let seen = f.root.stat(&p("e")).unwrap().unwrap();
        f.staging.receive(&p("e"), b"x", true).unwrap();
        assert!(f
            .install("e", &file_meta(b"x"), Some(&seen))
            .unwrap()
            .is_err());
        assert!(f.root.path().join("e/child").is_dir());
    }

    #[test]
    fn a_symlink_is_placed_as_a_symlink() {
        let mut f = fixture();
        f.install("l", &Meta::symlink("../x", 5_000_000_000), None)
            .unwrap()
            .unwrap();
        let target = std::fs::read_link(f.root.path().join("l")).unwrap();
        assert_eq!(target, std::path::Path::new("../x"));
    }
}
