//! The swarm: random user operations through a real union mount, mixed
//! with faults, while syncs run; then, once everything is quiet, the four
//! promises of FAULTS.md checked directly.
//!
//! ```text
//! scene/home ◄── project serve ◄──────── ws ─────────┐
//!     │  ▲ project-side edits                        │
//!     ▼                                              │
//! TestLower (working | failing | hanging) ──► compute mount (kill -9, restart)
//!                                                    ▲ user operations (a worker thread)
//! ```
//!
//! A case is drawn from a seed: a home to start from, then steps, each a
//! user operation through the mount (write, append, truncate, chmod,
//! symlink, mkdir, rename, rm -r), an edit made directly in the home, a
//! forced `unionsync sync --wait`, or a fault: the lower failing every call
//! (EIO), the lower hanging (then recovering), `kill -9` of the compute
//! daemon and its restart. Every case has a failing-lower episode during
//! which the user works on files only the lower holds (their copy-up
//! fails) and a sync runs. What each step did is recorded in a [`Ledger`]
//! as events in order: writes (with the state read back through the
//! mount, for the user's), deletions (by a user, either side) and
//! operations that failed (their paths' content is then unknown).
//!
//! After quiescence (the lower working, the error cleared, two
//! `sync --wait` in a row done):
//! 1. the union equals the project (paths, types, content, mode, symlink
//!    targets);
//! 2. the project lost a path only where a user deleted it;
//! 3. every write acknowledged through the mount is in the project or in
//!    the conflicts area, unless the user changed that path again later or
//!    the project changed it after;
//! 4. a conflict only where the project changed the path (or an ancestor
//!    or descendant of it).
//!
//! ```text
//! cargo test -p unionsync-tests --test swarm                  # the in-suite seeds
//! SWARM_SEEDS=200 SWARM_START=1000 cargo test -p unionsync-tests --test swarm -- --nocapture
//! SWARM_SEED=1234 cargo test -p unionsync-tests --test swarm -- --nocapture   # replay one
//! ```
//! (`cargo build -p unionsync --bin unionsync` first: the test runs that
//! binary.) A failing case prints its seed, what failed, the trace of its
//! steps, and where the daemons' logs were kept.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use unionsync_tests::test_lower::{Behaviour, TestLower};
use unionsync_tests::{binary, detach, fuse_available, tree, Daemon, Entry, MountDirs, Scene};

/// The seeds `cargo test` runs; each has its failing-lower episode.
/// (2011: a step the recovery scan found and the sync deferred was never
/// reported again after a kill -9 restart.)
const SUITE_SEEDS: &[u64] = &[1, 2, 3, 4, 1003, 1005, 1014, 1021, 2011];
/// Steps per case.
const STEPS: usize = 40;
/// How long an operation may take before the mount counts as frozen.
const FROZEN: Duration = Duration::from_secs(30);
/// How long an operation may wait on a hanging lower before the test
/// lifts the hang (and notes the stall).
const STALL: Duration = Duration::from_secs(2);
/// How long a quiet system may take to sync.
const SYNC: Duration = Duration::from_secs(60);

/// The names a case plays with: few, so that operations collide.
const DIRS: [&str; 3] = ["a", "b", "a/c"];
const FILES: [&str; 6] = ["f0", "-f 1", "a/f0", "a/f1", "a/c/f0", "b/f0"];
const LINKS: [&str; 2] = ["l0", "a/l1"];
const LINK_TARGETS: [&str; 3] = ["f0", "../f0", "nowhere"];
const MODES: [Mode; 3] = [Mode(0o644), Mode(0o600), Mode(0o755)];

/// Permission bits, shown in octal in the trace.
#[derive(Clone, Copy)]
struct Mode(u32);

impl fmt::Debug for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:o}", self.0)
    }
}

impl Mode {
    fn permissions(self) -> std::fs::Permissions {
        std::fs::Permissions::from_mode(self.0)
    }
}

#[test]
fn acknowledged_writes_survive_and_only_user_deletions_delete_under_faults() {
    if !fuse_available() {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "CI must be able to mount FUSE"
        );
        return;
    }
    let seeds = seeds();
    let mut failed = Vec::new();
    for &seed in &seeds {
        let started = Instant::now();
        let outcome = std::panic::catch_unwind(|| run_case(seed))
            .unwrap_or_else(|panic| Err(Failure::panicked(seed, panic)));
        match outcome {
            Ok(summary) => eprintln!(
                "swarm seed {seed}: ok in {:?} ({summary})",
                started.elapsed()
            ),
            Err(failure) => {
                eprintln!("{failure}\n  (after {:?})", started.elapsed());
                failed.push(seed);
            }
        }
    }
    assert!(
        failed.is_empty(),
        "swarm: {} of {} seeds failed: {failed:?} (replay one with SWARM_SEED=<seed> cargo test \
         -p unionsync-tests --test swarm -- --nocapture)",
        failed.len(),
        seeds.len()
    );
}

/// `SWARM_SEED=S` replays one seed; `SWARM_SEEDS=N [SWARM_START=S]` sweeps
/// N seeds from S; else the in-suite seeds.
fn seeds() -> Vec<u64> {
    let var = |name: &str| {
        std::env::var(name).ok().map(|v| {
            v.parse::<u64>()
                .unwrap_or_else(|_| panic!("{name}={v}: a whole number"))
        })
    };
    if let Some(seed) = var("SWARM_SEED") {
        return vec![seed];
    }
    match var("SWARM_SEEDS") {
        Some(count) => {
            let start = var("SWARM_START").unwrap_or(1000);
            (start..start + count).collect()
        }
        None => SUITE_SEEDS.to_vec(),
    }
}

// ---------------------------------------------------------------------------
// What a path holds, and the ledger of what happened to paths.

/// A path's state as sync promises to carry it (no times).
#[derive(Clone, Debug, PartialEq, Eq)]
enum State {
    File { data: Vec<u8>, mode: u32 },
    Dir { mode: u32 },
    Symlink { target: Vec<u8> },
}

impl From<Entry> for State {
    fn from(entry: Entry) -> State {
        match entry {
            Entry::File { mode, data, .. } => State::File { data, mode },
            Entry::Dir { mode } => State::Dir { mode },
            Entry::Symlink { target } => State::Symlink { target },
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            State::File { data, mode } => {
                write!(f, "file {mode:o} {:?}", String::from_utf8_lossy(data))
            }
            State::Dir { mode } => write!(f, "dir {mode:o}"),
            State::Symlink { target } => {
                write!(f, "symlink -> {}", String::from_utf8_lossy(target))
            }
        }
    }
}

/// Every entry beneath `root` by relative path, `.unionsync` aside.
fn states(root: &Path) -> BTreeMap<PathBuf, State> {
    tree(root)
        .into_iter()
        .map(|(path, entry)| (PathBuf::from(OsStr::from_bytes(&path)), entry.into()))
        .collect()
}

/// `rel` and everything beneath it in `root`, as they are now; `None`
/// where it cannot be read in full.
fn snapshot(root: &Path, rel: &Path) -> Option<Vec<(PathBuf, State)>> {
    let path = root.join(rel);
    let meta = std::fs::symlink_metadata(&path).ok()?;
    let mode = meta.permissions().mode() & 0o7777;
    let own = if meta.file_type().is_symlink() {
        let target = std::fs::read_link(&path).ok()?;
        State::Symlink {
            target: target.as_os_str().as_bytes().to_vec(),
        }
    } else if meta.is_dir() {
        State::Dir { mode }
    } else {
        State::File {
            data: std::fs::read(&path).ok()?,
            mode,
        }
    };
    let mut out = vec![(rel.to_path_buf(), own)];
    if meta.is_dir() {
        // `tree` reads what it can: count the names to see it read all.
        let listed = count_entries(&path)?;
        let below = states(&path);
        if below.len() != listed {
            return None;
        }
        out.extend(below.into_iter().map(|(p, s)| (rel.join(p), s)));
    }
    Some(out)
}

fn count_entries(dir: &Path) -> Option<usize> {
    let mut n = 0;
    for entry in std::fs::read_dir(dir).ok()? {
        let entry = entry.ok()?;
        n += 1;
        if entry.file_type().ok()?.is_dir() {
            n += count_entries(&entry.path())?;
        }
    }
    Some(n)
}

/// Which side did something.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    /// The home as the case began.
    Initial,
    /// Directly in the home.
    Project,
    /// Through the mount.
    Compute,
}

#[derive(Clone, Debug)]
enum Event {
    /// The path holds `state`, acknowledged to whoever wrote it.
    Wrote { side: Side, state: State },
    /// A user removed the path and everything beneath it.
    Deleted { side: Side },
    /// An operation on the path (or beneath it) failed: what it holds now
    /// is not known, but nothing deleted it.
    Unknown,
}

/// What happened to paths, in order.
#[derive(Default)]
struct Ledger {
    events: Vec<(PathBuf, Event)>,
}

/// `a` is `b` or lies beneath it.
fn within(a: &Path, b: &Path) -> bool {
    a.starts_with(b)
}

/// One is the other or lies beneath it.
fn related(a: &Path, b: &Path) -> bool {
    within(a, b) || within(b, a)
}

impl Ledger {
    fn record(&mut self, path: &Path, event: Event) {
        self.events.push((path.to_path_buf(), event));
    }

    fn wrote(&mut self, side: Side, path: &Path, state: State) {
        self.record(path, Event::Wrote { side, state });
    }

    /// What the project must show at the end, path by path.
    fn expectations(&self) -> BTreeMap<PathBuf, Expect> {
        let mut out = BTreeMap::new();
        for (path, _) in &self.events {
            if out.contains_key(path) {
                continue;
            }
            out.insert(path.clone(), self.expect(path));
        }
        out
    }

    fn expect(&self, path: &Path) -> Expect {
        // The events that bear on `path`: its own, and the deletions and
        // failures of an ancestor.
        let bearing: Vec<(usize, &Event)> = self
            .events
            .iter()
            .enumerate()
            .filter(|(_, (p, event))| {
                p == path || (within(path, p) && !matches!(event, Event::Wrote { .. }))
            })
            .map(|(i, (_, event))| (i, event))
            .collect();
        let Some(&(at, last)) = bearing
            .iter()
            .rev()
            .find(|(_, e)| !matches!(e, Event::Unknown))
        else {
            return Expect::Nothing;
        };
        let unknown_since = bearing
            .iter()
            .any(|(i, e)| *i > at && matches!(e, Event::Unknown));
        match last {
            Event::Deleted { .. } | Event::Unknown => Expect::Nothing,
            Event::Wrote {
                side: Side::Initial | Side::Project,
                ..
            } => Expect::Present,
            Event::Wrote {
                side: Side::Compute,
                state,
            } => {
                // The project changed it since: the project's version wins,
                // and may have replaced this one after it synced.
                if project_touches(&self.events[at + 1..], path) {
                    return Expect::Nothing;
                }
                // Nothing ever changed it on the project side: this side's
                // last word is the project's.
                let only_here = !project_touches(&self.events[..at], path);
                // Otherwise only a state it never had before is sure to
                // differ from the last agreed one (a changed path, which
                // must survive in the project or in conflicts); a
                // directory made again is the same directory.
                let fresh = !matches!(state, State::Dir { .. })
                    && !self.events[..at].iter().any(|(p, e)| {
                        p == path && matches!(e, Event::Wrote { state: s, .. } if s == state)
                    });
                match (unknown_since, only_here || fresh) {
                    (_, false) => Expect::Nothing,
                    (true, true) => Expect::PresentOrConflict,
                    (false, true) => Expect::Kept(state.clone()),
                }
            }
        }
    }

    /// Whether the project changed `path`, an ancestor or a descendant.
    fn project_changed(&self, path: &Path) -> bool {
        project_touches(&self.events, path)
    }
}

/// Whether one of `events` is a project-side change of `path`, an ancestor
/// or a descendant.
fn project_touches(events: &[(PathBuf, Event)], path: &Path) -> bool {
    events.iter().any(|(p, e)| {
        related(p, path)
            && matches!(
                e,
                Event::Wrote {
                    side: Side::Project,
                    ..
                } | Event::Deleted {
                    side: Side::Project
                }
            )
    })
}

/// What the project must show at one path at the end.
#[derive(Debug, PartialEq)]
enum Expect {
    Nothing,
    /// Not lost: nobody deleted it.
    Present,
    /// An acknowledged write whose content a later failed operation may
    /// have changed: the path, or something in conflicts at it.
    PresentOrConflict,
    /// An acknowledged write: exactly this, or its content in conflicts.
    Kept(State),
}

// ---------------------------------------------------------------------------
// Steps.

#[derive(Clone, Debug)]
enum UserOp {
    Write(PathBuf, String),
    Append(PathBuf, String),
    Truncate(PathBuf, u64),
    Chmod(PathBuf, Mode),
    Symlink(PathBuf, PathBuf),
    Mkdir(PathBuf),
    Rename(PathBuf, PathBuf),
    Remove(PathBuf),
}

#[derive(Clone, Debug)]
enum ProjectOp {
    Write(PathBuf, String),
    Chmod(PathBuf, Mode),
    Remove(PathBuf),
}

#[derive(Clone, Debug)]
enum Step {
    User(UserOp),
    Project(ProjectOp),
    SyncNow,
    Lower(Behaviour),
    Crash,
}

/// What a user operation did: the effects it acknowledged, in order, and
/// its error if it failed.
struct Done {
    effects: Vec<(PathBuf, Event)>,
    error: Option<String>,
}

impl Done {
    fn failed(error: std::io::Error, unknown: &[&Path]) -> Done {
        Done {
            effects: unknown
                .iter()
                .map(|p| (p.to_path_buf(), Event::Unknown))
                .collect(),
            error: Some(error.to_string()),
        }
    }
}

/// Runs `op` against `root` (the mount), reading back what it left.
fn apply_user(root: &Path, op: &UserOp) -> Done {
    use std::io::Write;
    let at = |p: &Path| root.join(p);
    // An edit of the file at a path: never through a symlink (its target
    // would change unrecorded).
    let edit = |path: &Path, change: &dyn Fn(&Path) -> std::io::Result<()>| {
        if std::fs::symlink_metadata(at(path)).is_ok_and(|m| m.file_type().is_symlink()) {
            return Done {
                effects: Vec::new(),
                error: Some("skipped: a symlink".into()),
            };
        }
        match change(&at(path)) {
            Ok(()) => read_back(root, path, Vec::new()),
            Err(e) => Done::failed(e, &[path]),
        }
    };
    match op {
        UserOp::Write(path, data) => edit(path, &|file| {
            std::fs::create_dir_all(file.parent().expect("beneath the mount"))?;
            std::fs::write(file, data)
        }),
        UserOp::Append(path, data) => edit(path, &|file| {
            let mut f = std::fs::OpenOptions::new().append(true).open(file)?;
            f.write_all(data.as_bytes())
        }),
        UserOp::Truncate(path, len) => edit(path, &|file| {
            let f = std::fs::OpenOptions::new().write(true).open(file)?;
            f.set_len(*len)
        }),
        UserOp::Chmod(path, mode) => edit(path, &|file| {
            std::fs::set_permissions(file, mode.permissions())
        }),
        UserOp::Symlink(target, path) => match std::os::unix::fs::symlink(target, at(path)) {
            Ok(()) => read_back(root, path, Vec::new()),
            Err(e) => Done::failed(e, &[]),
        },
        UserOp::Mkdir(path) => match std::fs::create_dir(at(path)) {
            Ok(()) => read_back(root, path, Vec::new()),
            Err(e) => Done::failed(e, &[]),
        },
        UserOp::Rename(from, to) => match std::fs::rename(at(from), at(to)) {
            // Whatever was at `to` is gone, and so is `from`.
            Ok(()) => read_back(
                root,
                to,
                vec![
                    (
                        to.clone(),
                        Event::Deleted {
                            side: Side::Compute,
                        },
                    ),
                    (
                        from.clone(),
                        Event::Deleted {
                            side: Side::Compute,
                        },
                    ),
                ],
            ),
            Err(e) => Done::failed(e, &[from, to]),
        },
        UserOp::Remove(path) => {
            let (removed, error) = remove_tree(root, path);
            Done {
                effects: removed
                    .into_iter()
                    .map(|p| {
                        (
                            p,
                            Event::Deleted {
                                side: Side::Compute,
                            },
                        )
                    })
                    .collect(),
                error: error.map(|e| e.to_string()),
            }
        }
    }
}

/// `before`, then what `path` holds now through the mount, as writes
/// acknowledged by the compute side (unknown if it cannot be read).
fn read_back(root: &Path, path: &Path, mut effects: Vec<(PathBuf, Event)>) -> Done {
    match snapshot(root, path) {
        Some(found) => effects.extend(found.into_iter().map(|(p, state)| {
            (
                p,
                Event::Wrote {
                    side: Side::Compute,
                    state,
                },
            )
        })),
        None => effects.push((path.to_path_buf(), Event::Unknown)),
    }
    Done {
        effects,
        error: None,
    }
}

/// `rm -r root/rel`: the paths it removed (children before parents), and
/// the first error, if any.
fn remove_tree(root: &Path, rel: &Path) -> (Vec<PathBuf>, Option<std::io::Error>) {
    let mut removed = Vec::new();
    let mut error = None;
    remove_into(root, rel, &mut removed, &mut error);
    (removed, error)
}

fn remove_into(
    root: &Path,
    rel: &Path,
    removed: &mut Vec<PathBuf>,
    error: &mut Option<std::io::Error>,
) {
    let path = root.join(rel);
    let result = match std::fs::symlink_metadata(&path) {
        Ok(meta) if meta.is_dir() => {
            match std::fs::read_dir(&path) {
                Ok(entries) => {
                    for entry in entries {
                        match entry {
                            Ok(entry) => {
                                remove_into(root, &rel.join(entry.file_name()), removed, error)
                            }
                            Err(e) => {
                                error.get_or_insert(e);
                            }
                        }
                    }
                }
                Err(e) => {
                    error.get_or_insert(e);
                }
            }
            std::fs::remove_dir(&path)
        }
        Ok(_) => std::fs::remove_file(&path),
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => removed.push(rel.to_path_buf()),
        Err(e) => {
            error.get_or_insert(e);
        }
    }
}

/// Runs `op` directly in the home; records what it did.
fn apply_project(home: &Path, op: &ProjectOp, ledger: &mut Ledger) -> String {
    let at = |p: &Path| home.join(p);
    let outcome = match op {
        ProjectOp::Write(path, data) => {
            let parent = path.parent().unwrap_or(Path::new(""));
            let blocked = path
                .ancestors()
                .skip(1)
                .any(|a| std::fs::symlink_metadata(at(a)).is_ok_and(|m| !m.is_dir()))
                || std::fs::symlink_metadata(at(path)).is_ok_and(|m| !m.is_file());
            if blocked {
                return "skipped: not a file there".into();
            }
            let made: Vec<&Path> = parent
                .ancestors()
                .filter(|a| !a.as_os_str().is_empty() && !at(a).exists())
                .collect();
            let result = std::fs::create_dir_all(at(parent)).and_then(|()| {
                for dir in made.iter().rev() {
                    ledger.wrote(Side::Project, dir, State::Dir { mode: 0o755 });
                }
                std::fs::write(at(path), data)
            });
            result.map(|()| path)
        }
        ProjectOp::Chmod(path, mode) => {
            if !std::fs::symlink_metadata(at(path)).is_ok_and(|m| m.is_file()) {
                return "skipped: not a file".into();
            }
            std::fs::set_permissions(at(path), mode.permissions()).map(|()| path)
        }
        ProjectOp::Remove(path) => {
            let (removed, error) = remove_tree(home, path);
            for p in &removed {
                ledger.record(
                    p,
                    Event::Deleted {
                        side: Side::Project,
                    },
                );
            }
            return match error {
                Some(e) => format!("removed {}, then {e}", removed.len()),
                None => format!("removed {}", removed.len()),
            };
        }
    };
    match outcome {
        Ok(path) => match snapshot(home, path) {
            Some(found) => {
                let (p, state) = found.into_iter().next().expect("the path itself");
                let shown = state.to_string();
                ledger.wrote(Side::Project, &p, state);
                format!("ok: {shown}")
            }
            None => {
                ledger.record(path, Event::Unknown);
                "ok, unreadable after".into()
            }
        },
        Err(e) => {
            if let ProjectOp::Write(path, _) | ProjectOp::Chmod(path, _) = op {
                ledger.record(path, Event::Unknown);
            }
            format!("failed: {e}")
        }
    }
}

// ---------------------------------------------------------------------------
// Drawing a case from its seed.

fn pick<'a, T>(rng: &mut SmallRng, items: &'a [T]) -> &'a T {
    &items[rng.random_range(0..items.len())]
}

fn any_path(rng: &mut SmallRng) -> PathBuf {
    let all: Vec<&str> = DIRS.iter().chain(&FILES).chain(&LINKS).copied().collect();
    PathBuf::from(*pick(rng, &all))
}

fn content(seed: u64, step: usize, what: &str) -> String {
    format!("{what} {seed}/{step}\n")
}

/// The home a case starts from.
fn initial_home(rng: &mut SmallRng, home: &Path, ledger: &mut Ledger) {
    for dir in DIRS {
        let parent_there = Path::new(dir)
            .parent()
            .is_none_or(|p| p.as_os_str().is_empty() || home.join(p).is_dir());
        if parent_there && rng.random_bool(0.8) {
            std::fs::create_dir(home.join(dir)).expect("a home directory");
        }
    }
    for file in FILES {
        if home.join(file).parent().is_some_and(Path::is_dir) && rng.random_bool(0.7) {
            let mode = *pick(rng, &MODES);
            std::fs::write(home.join(file), format!("initial {file}\n")).expect("a home file");
            std::fs::set_permissions(home.join(file), mode.permissions()).expect("its mode");
        }
    }
    for link in LINKS {
        if home.join(link).parent().is_some_and(Path::is_dir) && rng.random_bool(0.5) {
            std::os::unix::fs::symlink(pick(rng, &LINK_TARGETS), home.join(link))
                .expect("a home symlink");
        }
    }
    for (path, state) in states(home) {
        ledger.wrote(Side::Initial, &path, state);
    }
}

/// A user operation; with `lower_only`, one that needs the lower's copy
/// of a file the home started with (a copy-up).
fn user_op(rng: &mut SmallRng, seed: u64, step: usize, lower_only: &[PathBuf]) -> UserOp {
    if !lower_only.is_empty() && rng.random_bool(0.7) {
        let path = pick(rng, lower_only).clone();
        return match rng.random_range(0..4) {
            0 => UserOp::Append(path, content(seed, step, "appended")),
            1 => UserOp::Chmod(path, *pick(rng, &MODES)),
            2 => UserOp::Truncate(path, rng.random_range(0..4)),
            _ => UserOp::Rename(path, any_path(rng)),
        };
    }
    let path = any_path(rng);
    match rng.random_range(0..100) {
        0..25 => UserOp::Write(path, content(seed, step, "written")),
        25..40 => UserOp::Append(path, content(seed, step, "appended")),
        40..48 => UserOp::Truncate(path, rng.random_range(0..8)),
        48..58 => UserOp::Chmod(path, *pick(rng, &MODES)),
        58..64 => UserOp::Symlink(PathBuf::from(pick(rng, &LINK_TARGETS)), path),
        64..72 => UserOp::Mkdir(path),
        72..88 => UserOp::Rename(path, any_path(rng)),
        _ => UserOp::Remove(path),
    }
}

fn project_op(rng: &mut SmallRng, seed: u64, step: usize) -> ProjectOp {
    let path = any_path(rng);
    match rng.random_range(0..10) {
        0..5 => ProjectOp::Write(path, content(seed, step, "project")),
        5..7 => ProjectOp::Chmod(path, *pick(rng, &MODES)),
        _ => ProjectOp::Remove(path),
    }
}

/// The steps of a case: random work with fault episodes placed in it.
fn plan(rng: &mut SmallRng, seed: u64, lower_only: &[PathBuf]) -> Vec<Step> {
    let fail_at = rng.random_range(4..16);
    let fail_len = rng.random_range(5..10);
    let hang_at = rng
        .random_bool(0.6)
        .then(|| fail_at + fail_len + rng.random_range(2..8));
    let hang_len = rng.random_range(3..7);
    let crash_at = rng.random_bool(0.5).then(|| rng.random_range(1..STEPS));
    let mut steps = Vec::new();
    for step in 0..STEPS {
        let failing = (fail_at..fail_at + fail_len).contains(&step);
        if step == fail_at {
            steps.push(Step::Lower(Behaviour::Failing));
        }
        if step == fail_at + fail_len {
            steps.push(Step::Lower(Behaviour::Working));
        }
        if hang_at == Some(step) {
            steps.push(Step::Lower(Behaviour::Hanging));
        }
        if hang_at.map(|h| h + hang_len) == Some(step) {
            steps.push(Step::Lower(Behaviour::Working));
        }
        let hanging = hang_at.is_some_and(|h| (h..h + hang_len).contains(&step));
        // (A start over a lower that does not answer is another story.)
        if crash_at == Some(step) && !failing && !hanging {
            steps.push(Step::Crash);
        }
        // A sync while copy-ups fail, right in the middle of the episode.
        if failing && step == fail_at + fail_len / 2 {
            steps.push(Step::SyncNow);
        }
        let draw = rng.random_range(0..100);
        steps.push(match draw {
            0..72 => Step::User(user_op(
                rng,
                seed,
                step,
                if failing { lower_only } else { &[] },
            )),
            72..88 => Step::Project(project_op(rng, seed, step)),
            _ => Step::SyncNow,
        });
    }
    steps.push(Step::Lower(Behaviour::Working));
    steps
}

// ---------------------------------------------------------------------------
// The rig: a project, a switchable lower and a mounted compute server.

/// Fields drop in order: the compute daemon first (its mount detached),
/// then the project server, the lower, and the scene.
struct Rig {
    compute: Option<Daemon>,
    _project: Daemon,
    lower: TestLower,
    m: MountDirs,
    scene: Scene,
}

impl Rig {
    fn start(scene: Scene) -> Rig {
        let lower = TestLower::over(&scene.home, &scene.path().join("lower"));
        let project = scene.start_project();
        let m = scene.mount_dirs(1);
        let compute = scene.start_compute_mount_over(&m, &lower.mnt, &[]);
        Rig {
            compute: Some(compute),
            _project: project,
            lower,
            m,
            scene,
        }
    }

    /// `kill -9` of the compute daemon, and a new one over its stale mount,
    /// which the new one must detach; what went wrong, if anything (then
    /// the test detaches it, so that the case goes on).
    fn crash_and_restart(&mut self) -> Option<String> {
        if let Some(daemon) = self.compute.take() {
            daemon.kill();
        }
        // Started means serving: a stale mount may still answer `stat`
        // from the kernel's cache, but never a listing.
        let start = || {
            let mut daemon = self
                .scene
                .start_compute_mount_over(&self.m, &self.lower.mnt, &[]);
            let serving = wait_until(Duration::from_secs(20), || {
                !daemon.running() || std::fs::read_dir(&self.m.mount).is_ok()
            });
            match daemon.running() && serving {
                true => Ok(daemon),
                false => Err(std::fs::read_to_string(&daemon.log).unwrap_or_default()),
            }
        };
        match start() {
            Ok(daemon) => {
                self.compute = Some(daemon);
                None
            }
            Err(log) => {
                detach(&self.m.mount);
                self.compute = Some(start().expect("a start over a detached mountpoint"));
                let last = log.lines().last().unwrap_or("").to_string();
                Some(format!(
                    "the compute daemon restarted after kill -9 did not take over its stale \
                     mount: {last}"
                ))
            }
        }
    }

    /// `unionsync ARGS --control <the compute daemon's socket>`, given up
    /// (killed) after `timeout`: its success and what it said.
    fn cli(&self, args: &[&str], timeout: Duration) -> Result<String, String> {
        let socket = self
            .compute
            .as_ref()
            .expect("a compute daemon")
            .control_socket("compute");
        let mut child = Command::new(binary())
            .args(args)
            .env_remove("RUST_BACKTRACE")
            .env("RUST_LIB_BACKTRACE", "0")
            .arg("--control")
            .arg(&socket)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running unionsync");
        let deadline = Instant::now() + timeout;
        while child.try_wait().expect("polling the CLI").is_none() {
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("no answer within {timeout:?}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = child.wait_with_output().expect("the CLI's output");
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        if out.status.success() {
            Ok(said)
        } else {
            Err(said)
        }
    }

    fn sync_wait(&self, timeout: Duration) -> Result<String, String> {
        self.cli(&["sync", "--wait"], timeout)
    }
}

/// A thread that runs user operations, so that one stuck in the mount
/// can be waited for with a deadline (and abandoned when the mount froze).
struct Worker {
    jobs: mpsc::Sender<UserOp>,
    done: mpsc::Receiver<Done>,
}

impl Worker {
    fn new(root: PathBuf) -> Worker {
        let (jobs, inbox) = mpsc::channel::<UserOp>();
        let (outbox, done) = mpsc::channel();
        std::thread::spawn(move || {
            for op in inbox {
                if outbox.send(apply_user(&root, &op)).is_err() {
                    break;
                }
            }
        });
        Worker { jobs, done }
    }
}

// ---------------------------------------------------------------------------
// One case.

struct Failure {
    seed: u64,
    problems: Vec<String>,
    trace: Vec<String>,
    logs: Option<PathBuf>,
}

impl Failure {
    fn panicked(seed: u64, panic: Box<dyn std::any::Any + Send>) -> Failure {
        Failure {
            seed,
            problems: vec![format!("panicked: {}", panic_text(&*panic))],
            trace: Vec::new(),
            logs: None,
        }
    }
}

/// Polls `done` until it holds or `timeout` passes; whether it held.
fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "a panic".into())
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "===== swarm seed {} FAILED =====", self.seed)?;
        for problem in &self.problems {
            writeln!(f, "  {problem}")?;
        }
        writeln!(f, "  trace:")?;
        for line in &self.trace {
            writeln!(f, "    {line}")?;
        }
        if let Some(logs) = &self.logs {
            writeln!(f, "  daemon logs kept in {}", logs.display())?;
        }
        write!(
            f,
            "  replay: SWARM_SEED={} cargo test -p unionsync-tests --test swarm -- --nocapture",
            self.seed
        )
    }
}

fn run_case(seed: u64) -> Result<String, Failure> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut ledger = Ledger::default();
    let scene = Scene::new();
    initial_home(&mut rng, &scene.home, &mut ledger);
    let lower_only: Vec<PathBuf> = states(&scene.home)
        .into_iter()
        .filter(|(_, s)| matches!(s, State::File { .. }))
        .map(|(p, _)| p)
        .collect();
    let steps = plan(&mut rng, seed, &lower_only);
    let mut rig = Rig::start(scene);
    let mut trace = vec![format!(
        "home: {}",
        states(&rig.scene.home)
            .iter()
            .map(|(p, s)| format!("{} ({s})", p.display()))
            .collect::<Vec<_>>()
            .join(", ")
    )];
    let mut problems = Vec::new();
    let mut stalls = 0;
    let mut froze = false;
    let worker = Worker::new(rig.m.mount.clone());
    let mut mode = Behaviour::Working;
    for (i, step) in steps.iter().enumerate() {
        let line = match step {
            Step::User(op) => {
                worker.jobs.send(op.clone()).expect("the worker runs");
                let patience = if mode == Behaviour::Hanging {
                    STALL
                } else {
                    FROZEN
                };
                let done = match worker.done.recv_timeout(patience) {
                    Ok(done) => Some(done),
                    Err(_) if mode == Behaviour::Hanging => {
                        // Waiting on the hung lower: lift the hang; the
                        // operation must then finish.
                        stalls += 1;
                        rig.lower.set(Behaviour::Working);
                        mode = Behaviour::Working;
                        trace.push(format!("#{i} stalled on the hung lower: lifting the hang"));
                        worker.done.recv_timeout(FROZEN).ok()
                    }
                    Err(_) => None,
                };
                let Some(done) = done else {
                    problems.push(format!(
                        "the mount froze: {op:?} did not finish within {FROZEN:?} (lower {mode:?})"
                    ));
                    trace.push(format!("#{i} user {op:?}: FROZE"));
                    froze = true;
                    break;
                };
                let shown = done.error.clone().unwrap_or_else(|| "ok".into());
                for (path, event) in done.effects {
                    ledger.record(&path, event);
                }
                format!("user {op:?}: {shown}")
            }
            Step::Project(op) => {
                let said = apply_project(&rig.scene.home, op, &mut ledger);
                format!("project {op:?}: {said}")
            }
            Step::SyncNow => {
                let patience = match mode {
                    Behaviour::Working => SYNC,
                    _ => Duration::from_secs(2),
                };
                match rig.sync_wait(patience) {
                    Ok(said) => format!("sync --wait: {said}"),
                    Err(said) => format!("sync --wait failed: {said}"),
                }
            }
            Step::Lower(new) => {
                rig.lower.set(*new);
                mode = *new;
                format!("lower {new:?}")
            }
            Step::Crash => match rig.crash_and_restart() {
                None => "kill -9 compute; restarted".into(),
                Some(problem) => {
                    problems.push(problem);
                    "kill -9 compute; restarted only once the test detached the stale mount".into()
                }
            },
        };
        trace.push(format!("#{i} {line}"));
    }
    rig.lower.set(Behaviour::Working);
    if !froze {
        problems.extend(quiesce_and_check(&rig, &ledger, &mut trace));
    }
    if problems.is_empty() {
        return Ok(format!(
            "{} steps, {stalls} stalled on the hung lower",
            steps.len()
        ));
    }
    let logs = std::env::temp_dir().join(format!("unionsync-swarm-{seed}-logs"));
    let _ = std::fs::remove_dir_all(&logs);
    let kept = Command::new("cp")
        .arg("-r")
        .arg(rig.scene.path().join("logs"))
        .arg(&logs)
        .status()
        .is_ok_and(|s| s.success());
    Err(Failure {
        seed,
        problems,
        trace,
        logs: kept.then_some(logs),
    })
}

/// Clears the error, syncs until two `sync --wait` in a row succeed, then
/// checks the four properties; what is wrong.
fn quiesce_and_check(rig: &Rig, ledger: &Ledger, trace: &mut Vec<String>) -> Vec<String> {
    let said = rig.cli(&["clear-error"], SYNC);
    trace.push(format!("quiet: clear-error: {said:?}"));
    let deadline = Instant::now() + SYNC;
    let mut in_a_row = 0;
    let mut last = String::new();
    let mut differences = Vec::new();
    // Two syncs in a row, and the union equal to the project; a few
    // rounds, for what a sync defers to the next.
    for _round in 0..3 {
        while in_a_row < 2 {
            if Instant::now() >= deadline {
                return vec![format!(
                    "no two syncs in a row succeeded within {SYNC:?}; last: {last}"
                )];
            }
            match rig.sync_wait(SYNC) {
                Ok(said) => {
                    in_a_row += 1;
                    last = said;
                }
                Err(said) => {
                    in_a_row = 0;
                    last = said;
                }
            }
        }
        trace.push(format!("quiet: sync --wait twice: {last}"));
        differences = union_differences(&rig.m.mount, &rig.scene.home);
        if differences.is_empty() {
            break;
        }
        in_a_row = 0;
    }
    let mut problems = differences;
    problems.extend(ledger_problems(&rig.scene.home, ledger));
    problems
}

/// Property 1: the union shows what the project holds.
fn union_differences(mount: &Path, home: &Path) -> Vec<String> {
    let local_only = ["scratch", ".cache", ".local"];
    let shown = |root: &Path| {
        let mut all = states(root);
        all.retain(|p, _| !local_only.iter().any(|l| p.starts_with(l)));
        all
    };
    let (union, project) = (shown(mount), shown(home));
    let mut out = Vec::new();
    for path in union
        .keys()
        .chain(project.keys())
        .collect::<std::collections::BTreeSet<_>>()
    {
        let (u, p) = (union.get(path), project.get(path));
        if u != p {
            let show = |s: Option<&State>| s.map_or("absent".into(), State::to_string);
            out.push(format!(
                "1. union != project at {}: union {}, project {}",
                path.display(),
                show(u),
                show(p)
            ));
        }
    }
    out
}

/// Properties 2–4, from the ledger.
fn ledger_problems(home: &Path, ledger: &Ledger) -> Vec<String> {
    let project = states(home);
    let conflicts = conflicts(home);
    let conflict_states = |path: &Path| -> Vec<&State> {
        conflicts
            .iter()
            .filter(|(p, _)| p == path)
            .map(|(_, s)| s)
            .collect()
    };
    let mut out = Vec::new();
    for (path, expect) in ledger.expectations() {
        let here = project.get(&path);
        let shown = here.map_or("absent".into(), State::to_string);
        match expect {
            Expect::Nothing => {}
            Expect::Present if here.is_none() => out.push(format!(
                "2. the project lost {}, which no user deleted",
                path.display()
            )),
            Expect::Present => {}
            Expect::PresentOrConflict => {
                if here.is_none() && conflict_states(&path).is_empty() {
                    out.push(format!(
                        "3. an acknowledged write to {} is neither in the project nor in conflicts",
                        path.display()
                    ));
                }
            }
            Expect::Kept(state) => {
                let in_conflicts = conflict_states(&path)
                    .iter()
                    .any(|s| same_content(s, &state));
                if here != Some(&state) && !in_conflicts {
                    out.push(format!(
                        "3. the acknowledged {} at {} is neither in the project (which has {shown}) \
                         nor in conflicts",
                        state,
                        path.display()
                    ));
                }
            }
        }
    }
    for (path, state) in &conflicts {
        if !ledger.project_changed(path) {
            out.push(format!(
                "4. a conflict at {} ({state}) where the project changed nothing",
                path.display()
            ));
        }
    }
    out
}

/// Content alike (a preserved copy may not keep its mode).
fn same_content(a: &State, b: &State) -> bool {
    match (a, b) {
        (State::File { data: x, .. }, State::File { data: y, .. }) => x == y,
        _ => a == b,
    }
}

/// Every entry in the conflicts area, `<id>/<stamp>/<path>`: (path, state).
fn conflicts(home: &Path) -> Vec<(PathBuf, State)> {
    states(&home.join(".unionsync/conflicts"))
        .into_iter()
        .filter_map(|(path, state)| {
            let mut parts = path.components();
            let (_id, _stamp) = (parts.next()?, parts.next()?);
            let rest = parts.as_path();
            (!rest.as_os_str().is_empty()).then(|| (rest.to_path_buf(), state))
        })
        .filter(|(_, state)| !matches!(state, State::Dir { .. }))
        .collect()
}
