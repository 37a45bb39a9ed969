//! Project-side change detection for the lower metadata index.
//!
//! The compute server answers `lookup`/`getattr`/`readdir` for lower paths
//! from an index the project server sends it, and treats a name the index
//! does not list as absent. That is only honest if a file created in the
//! project home shows up on the compute side within a couple of seconds, so
//! the project server pushes index deltas as soon as it sees a change. This
//! watcher is where it sees them:
//!
//! ```text
//!   project home ─inotify─► notify thread ─events─► flushing thread ─WatchNews─► project server
//!                                                   (settle, lstat,             (index deltas to
//!                                                    walk new dirs)              compute servers)
//! ```
//!
//! A batch is reported once events have settled, so a burst (an untar, a
//! build) becomes one delta instead of thousands. Each path is reported with
//! its metadata as it is *now* (`lstat`), never as the event described it:
//! events only say where to look.
//!
//! Receivers must read a directory reported gone, or replaced by a
//! non-directory, as "its whole subtree is gone": its descendants are not
//! listed one by one (nothing here remembers them).

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use notify::event::{AccessKind, AccessMode, ModifyKind};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use rustix::fs::FileType;
use tokio::sync::mpsc::UnboundedSender;
use unionsync_core::{Meta, RelPath};

use crate::beneath::{is_absent, meta_of, Root};

/// What the watcher reports.
#[derive(Debug, Clone, PartialEq)]
pub enum WatchNews {
    /// These paths changed; `None` = gone. Sorted, deduplicated.
    Changed(Vec<(RelPath, Option<Meta>)>),
    /// Events were lost (inotify queue overflow or a watch error): the
    /// receiver must resend whole snapshots.
    Rescan,
}

/// Watches the project home until dropped.
pub struct ProjectWatch {
    /// Wakes the flushing thread on drop, even while notify is still
    /// shutting down (and so still holds its own sender).
    stop: mpsc::Sender<Msg>,
    _watcher: RecommendedWatcher,
    _flusher: JoinHandle<()>,
}

impl fmt::Debug for ProjectWatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProjectWatch").finish_non_exhaustive()
    }
}

impl Drop for ProjectWatch {
    fn drop(&mut self) {
        // Not joined: a flush in progress (a large walk) must not block the
        // dropping task; the thread exits right after it.
        let _ = self.stop.send(Msg::Stop);
    }
}

enum Msg {
    Event(notify::Result<Event>),
    Stop,
}

impl ProjectWatch {
    /// Watches `home` recursively; batches events, waits until `settle` has
    /// passed without new events (but never longer than 4×settle after the
    /// first event of a batch), then reports the batch on `news`.
    pub fn start(
        home: &Path,
        settle: Duration,
        news: UnboundedSender<WatchNews>,
    ) -> io::Result<ProjectWatch> {
        // notify names events by the path it was given: make it absolute so
        // stripping it off is exact.
        let home = if home.is_absolute() {
            home.to_path_buf()
        } else {
            std::env::current_dir()?.join(home)
        };
        let root = Root::open(&home)?;
        let (tx, events) = mpsc::channel();
        let handler = {
            let tx = tx.clone();
            move |event| {
                let _ = tx.send(Msg::Event(event));
            }
        };
        // Following symlinks would watch (and report) trees outside the
        // home; a symlink is an entry like any other.
        let config = notify::Config::default().with_follow_symlinks(false);
        let mut watcher = RecommendedWatcher::new(handler, config).map_err(io_error)?;
        watcher
            .watch(&home, RecursiveMode::Recursive)
            .map_err(io_error)?;
        let flusher = Flusher {
            home,
            root,
            // Bounded so that deadlines cannot overflow an `Instant`.
            settle: settle.min(Duration::from_secs(3600)),
            news,
            pending: BTreeMap::new(),
            rescan: false,
            first: None,
            last: Instant::now(),
        };
        let flusher = thread::Builder::new()
            .name("project-watch".into())
            .spawn(move || flusher.run(events))?;
        Ok(ProjectWatch {
            stop: tx,
            _watcher: watcher,
            _flusher: flusher,
        })
    }
}

fn io_error(error: notify::Error) -> io::Error {
    match error.kind {
        notify::ErrorKind::Io(error) => error,
        _ => io::Error::other(error),
    }
}

/// The batching side. Real time (`std::time::Instant`), not the agents'
/// clock: it only ever watches a real filesystem, never the simulation.
struct Flusher {
    home: PathBuf,
    root: Root,
    settle: Duration,
    news: UnboundedSender<WatchNews>,
    /// Paths seen in this batch; `true` when the path may be a directory
    /// that just appeared, whose content must be walked.
    pending: BTreeMap<RelPath, bool>,
    rescan: bool,
    /// When the batch's first and latest events arrived.
    first: Option<Instant>,
    last: Instant,
}

impl Flusher {
    fn run(mut self, events: mpsc::Receiver<Msg>) {
        loop {
            let msg = match self.deadline() {
                None => events.recv().map_err(|_| RecvTimeoutError::Disconnected),
                Some(deadline) => {
                    let now = Instant::now();
                    // Checked before receiving: under a steady stream of
                    // events `recv_timeout` never times out, and the 4×settle
                    // cap would never apply.
                    if now >= deadline {
                        if !self.flush() {
                            return;
                        }
                        continue;
                    }
                    events.recv_timeout(deadline - now)
                }
            };
            match msg {
                Ok(Msg::Event(event)) => self.absorb(event),
                Ok(Msg::Stop) | Err(RecvTimeoutError::Disconnected) => return,
                Err(RecvTimeoutError::Timeout) => {}
            }
        }
    }

    fn deadline(&self) -> Option<Instant> {
        let first = self.first?;
        Some((self.last + self.settle).min(first + self.settle * 4))
    }

    fn touch(&mut self) {
        let now = Instant::now();
        self.first.get_or_insert(now);
        self.last = now;
    }

    fn absorb(&mut self, event: notify::Result<Event>) {
        let event = match event {
            Ok(event) if !event.need_rescan() => event,
            Ok(_) => {
                tracing::warn!("project watch: inotify queue overflowed, asking for a rescan");
                self.rescan = true;
                return self.touch();
            }
            Err(error) => {
                tracing::warn!(%error, "project watch: events may be lost, asking for a rescan");
                self.rescan = true;
                return self.touch();
            }
        };
        let appeared = match event.kind {
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => false,
            // Opening and reading change nothing, and our own walks open
            // directories: counting those would follow every walk with a
            // useless batch.
            EventKind::Access(_) => return,
            EventKind::Create(_) | EventKind::Modify(ModifyKind::Name(_)) => true,
            _ => false,
        };
        let mut any = false;
        for path in &event.paths {
            // Reserved paths (bases, staging, conflicts) change all the time
            // during a sync and never belong in the index; they do not delay
            // the batch either.
            let Some(path) = self.relative(path).filter(|p| !p.is_reserved()) else {
                continue;
            };
            *self.pending.entry(path).or_insert(false) |= appeared;
            any = true;
        }
        if any {
            self.touch();
        }
    }

    /// `path` relative to the home; `None` for the home itself or a name no
    /// `RelPath` can hold.
    fn relative(&self, path: &Path) -> Option<RelPath> {
        let rest = path.strip_prefix(&self.home).ok()?.as_os_str().as_bytes();
        if rest.is_empty() {
            return None;
        }
        RelPath::new(rest)
            .inspect_err(|error| tracing::debug!(?path, %error, "project watch: unsyncable name"))
            .ok()
    }

    /// Reports the batch; `false` when nobody listens any more.
    fn flush(&mut self) -> bool {
        self.first = None;
        let mut todo = std::mem::take(&mut self.pending);
        if self.news.is_closed() {
            return false;
        }
        if std::mem::take(&mut self.rescan) {
            // The receiver resends everything, which covers this batch too.
            return self.news.send(WatchNews::Rescan).is_ok();
        }
        // An entry created, removed or renamed changes its parent's mtime.
        let parents: Vec<RelPath> = todo.keys().filter_map(RelPath::parent).collect();
        for parent in parents {
            todo.entry(parent).or_insert(false);
        }
        let mut report = BTreeMap::new();
        for (path, appeared) in todo {
            let meta = match self.meta(&path) {
                Ok(meta) => meta,
                Err(error) => {
                    // Syncs stat only what the watch reported: a change it
                    // cannot read must not go unreported. (A vanished entry
                    // is `None`, not an error: this is EACCES, EIO…)
                    tracing::warn!(%path, %error, "project watch: cannot stat, asking for a rescan");
                    return self.news.send(WatchNews::Rescan).is_ok();
                }
            };
            // Entries created in a new directory before notify put a watch
            // on it (`mkdir -p a/b && echo > a/b/c`, a tree moved in) have no
            // events of their own. Only for new directories: walking the
            // parent of every change would cost O(files), not O(changes).
            if appeared && meta.as_ref().is_some_and(Meta::is_dir) {
                match self.root.walk(Some(&path)) {
                    Ok(entries) => {
                        report.extend(entries.into_iter().map(|(path, meta)| (path, Some(meta))))
                    }
                    Err(error) => {
                        tracing::warn!(%path, %error, "project watch: cannot walk, asking for a rescan");
                        return self.news.send(WatchNews::Rescan).is_ok();
                    }
                }
            }
            report.insert(path, meta);
        }
        if report.is_empty() {
            return true;
        }
        self.news
            .send(WatchNews::Changed(report.into_iter().collect()))
            .is_ok()
    }

    /// The entry at `path` now; `None` when absent or a special file (those
    /// never sync, so they are not entries).
    fn meta(&self, path: &RelPath) -> io::Result<Option<Meta>> {
        let Some(stat) = self.root.lstat(path)? else {
            return Ok(None);
        };
        Ok(match FileType::from_raw_mode(stat.st_mode) {
            FileType::RegularFile | FileType::Directory => Some(meta_of(&stat, None)),
            FileType::Symlink => match self.root.read_link(path) {
                Ok(target) => Some(meta_of(&stat, Some(target))),
                Err(error) if is_absent(&error) => None,
                Err(error) => return Err(error),
            },
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;
    use std::fs;

    use tokio::sync::mpsc::error::TryRecvError;
    use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};
    use unionsync_core::Kind;

    use super::*;

    const SETTLE: Duration = Duration::from_millis(50);
    const PATIENCE: Duration = Duration::from_secs(10);

    fn p(bytes: impl Into<Vec<u8>>) -> RelPath {
        RelPath::new(bytes).unwrap()
    }

    /// A temporary directory holding `home` (watched) and room beside it.
    fn setup() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        fs::create_dir(&home).unwrap();
        (dir, home)
    }

    fn watch(home: &Path) -> (ProjectWatch, UnboundedReceiver<WatchNews>) {
        let (tx, rx) = unbounded_channel();
        (ProjectWatch::start(home, SETTLE, tx).unwrap(), rx)
    }

    /// Receives until a batch reports `path`; returns what it reported and
    /// every piece of news received on the way (that batch last).
    fn wait_for(
        rx: &mut UnboundedReceiver<WatchNews>,
        path: &RelPath,
    ) -> (Option<Meta>, Vec<WatchNews>) {
        let deadline = Instant::now() + PATIENCE;
        let mut seen = Vec::new();
        loop {
            match rx.try_recv() {
                Ok(news) => {
                    let found = match &news {
                        WatchNews::Changed(batch) => {
                            assert!(
                                batch.windows(2).all(|w| w[0].0 < w[1].0),
                                "batch not sorted and deduplicated: {batch:?}"
                            );
                            batch
                                .iter()
                                .find(|(p, _)| p == path)
                                .map(|(_, m)| m.clone())
                        }
                        WatchNews::Rescan => None,
                    };
                    seen.push(news);
                    if let Some(meta) = found {
                        return (meta, seen);
                    }
                }
                Err(TryRecvError::Empty) => {
                    assert!(
                        Instant::now() < deadline,
                        "{path} never reported; got {seen:?}"
                    );
                    thread::sleep(Duration::from_millis(10));
                }
                Err(TryRecvError::Disconnected) => panic!("watcher gone; got {seen:?}"),
            }
        }
    }

    #[test]
    fn a_created_file_is_reported_with_its_size() {
        let (_dir, home) = setup();
        let (_watch, mut rx) = watch(&home);
        fs::write(home.join("new"), b"hello").unwrap();
        let (meta, _) = wait_for(&mut rx, &p("new"));
        let meta = meta.expect("reported as present");
        assert_eq!(meta.kind, Kind::File);
        assert_eq!(meta.size, 5);
    }

    #[test]
    fn later_batches_are_reported_too() {
        let (_dir, home) = setup();
        let (_watch, mut rx) = watch(&home);
        fs::write(home.join("first"), b"1").unwrap();
        wait_for(&mut rx, &p("first"));
        fs::create_dir_all(home.join(".unionsync/bases")).unwrap();
        fs::write(home.join(".unionsync/bases/1"), b"base").unwrap();
        fs::create_dir_all(home.join("d")).unwrap();
        fs::write(home.join("d/second"), b"22").unwrap();
        wait_for(&mut rx, &p("d/second"));
        fs::write(home.join("d/third"), b"333").unwrap();
        wait_for(&mut rx, &p("d/third"));
        fs::write(home.join("top"), b"4444").unwrap();
        wait_for(&mut rx, &p("top"));
    }

    #[test]
    fn a_deleted_file_is_reported_gone() {
        let (_dir, home) = setup();
        fs::write(home.join("old"), b"x").unwrap();
        let (_watch, mut rx) = watch(&home);
        fs::remove_file(home.join("old")).unwrap();
        assert_eq!(wait_for(&mut rx, &p("old")).0, None);
    }

    #[test]
    fn the_parent_directory_of_a_change_is_reported() {
        let (_dir, home) = setup();
        fs::create_dir(home.join("dir")).unwrap();
        let (_watch, mut rx) = watch(&home);
        fs::write(home.join("dir/f"), b"x").unwrap();
        let (meta, _) = wait_for(&mut rx, &p("dir"));
        assert!(meta.expect("reported as present").is_dir());
    }

    #[test]
    fn a_file_written_into_a_directory_just_created_is_reported() {
        let (_dir, home) = setup();
        let (_watch, mut rx) = watch(&home);
        fs::create_dir_all(home.join("a/b")).unwrap();
        fs::write(home.join("a/b/c"), b"c").unwrap();
        let (meta, _) = wait_for(&mut rx, &p("a/b/c"));
        assert_eq!(meta.expect("reported as present").size, 1);
    }

    #[test]
    fn a_tree_moved_in_reports_its_deep_files() {
        let (dir, home) = setup();
        let outside = dir.path().join("outside");
        fs::create_dir_all(outside.join("t/u/v")).unwrap();
        fs::write(outside.join("t/u/v/deep"), b"deep").unwrap();
        let (_watch, mut rx) = watch(&home);
        fs::rename(outside.join("t"), home.join("t")).unwrap();
        let (meta, _) = wait_for(&mut rx, &p("t/u/v/deep"));
        assert_eq!(meta.expect("reported as present").size, 4);
    }

    #[test]
    fn nothing_under_the_reserved_directory_is_reported() {
        let (_dir, home) = setup();
        fs::create_dir_all(home.join(".unionsync/staging")).unwrap();
        let (_watch, mut rx) = watch(&home);
        fs::write(home.join(".unionsync/staging/tmp"), b"x").unwrap();
        fs::create_dir_all(home.join(".unionsync/conflicts/a")).unwrap();
        fs::write(home.join(".unionsync/conflicts/a/f"), b"x").unwrap();
        fs::write(home.join("visible"), b"x").unwrap();
        let (_, mut seen) = wait_for(&mut rx, &p("visible"));
        // Later batches too: the reserved writes may land after `visible`.
        thread::sleep(SETTLE * 8);
        while let Ok(news) = rx.try_recv() {
            seen.push(news);
        }
        for news in &seen {
            if let WatchNews::Changed(batch) = news {
                assert!(
                    batch.iter().all(|(path, _)| !path.is_reserved()),
                    "reserved path reported: {batch:?}"
                );
            }
        }
    }

    #[test]
    fn a_non_utf8_name_is_reported() {
        let (_dir, home) = setup();
        let (_watch, mut rx) = watch(&home);
        let name = b"caf\xe9".to_vec();
        fs::write(home.join(OsStr::from_bytes(&name)), b"x").unwrap();
        let (meta, _) = wait_for(&mut rx, &p(name));
        assert!(meta.is_some());
    }

    #[test]
    fn a_fifo_is_reported_as_no_entry() {
        let (_dir, home) = setup();
        let (_watch, mut rx) = watch(&home);
        rustix::fs::mknodat(
            rustix::fs::CWD,
            home.join("fifo"),
            FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        assert_eq!(wait_for(&mut rx, &p("fifo")).0, None);
    }

    #[test]
    fn dropping_the_watch_ends_the_thread() {
        let (_dir, home) = setup();
        let (watch, mut rx) = watch(&home);
        drop(watch);
        let deadline = Instant::now() + PATIENCE;
        loop {
            match rx.try_recv() {
                Err(TryRecvError::Disconnected) => return,
                Err(TryRecvError::Empty) | Ok(_) => {
                    assert!(Instant::now() < deadline, "thread still running");
                    thread::sleep(Duration::from_millis(10));
                }
            }
        }
    }
}
