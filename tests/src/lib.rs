//! End-to-end harness: real `unionsync` processes over loopback and temp
//! directories.
//!
//! ```text
//! Scene (temp dir) ── home/ ◄── `unionsync project serve` (Daemon) ◄── ws ──┐
//!                  ├─ compute-N/upper, compute-N/whiteouts ◄── `unionsync compute run` (Daemon)
//!                  └─ token, logs/
//! ```
//!
//! Every [`Daemon`] is killed and reaped when dropped, so a failing test
//! leaves no process behind; the temp directory goes with the [`Scene`],
//! which prints the daemons' logs if the test is failing.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub mod sshd;
pub mod test_lower;

/// The `unionsync` binary of this build (`cargo test --workspace` builds it
/// for the shell's own integration tests, next to this test's `deps/`).
pub fn binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test knows its own path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binaries live in target/<profile>/deps");
    let binary = dir.join("unionsync");
    assert!(
        binary.exists(),
        "{} is missing: build it with `cargo build -p unionsync` (cargo test --workspace does)",
        binary.display()
    );
    binary
}

/// A running daemon, killed (SIGKILL) and reaped on drop; a mount it
/// served is detached then too.
pub struct Daemon {
    child: Child,
    pub log: PathBuf,
    mountpoint: Option<PathBuf>,
}

/// Whether `path` is a mountpoint now.
pub fn is_mounted(path: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let path = path.to_string_lossy();
    mounts
        .lines()
        .any(|line| line.split(' ').nth(1) == Some(path.as_ref()))
}

/// Detaches whatever is mounted at `path` (a crashed daemon's mount).
pub fn detach(path: &Path) {
    if is_mounted(path) {
        let _ = Command::new("fusermount3")
            .arg("-u")
            .arg("-z")
            .arg(path)
            .stderr(Stdio::null())
            .status();
    }
}

impl Daemon {
    /// The peak resident memory of the process so far (`VmHWM`), in bytes.
    pub fn peak_rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("the daemon's /proc status");
        let kib = status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|rest| rest.trim().strip_suffix("kB"))
            .and_then(|kib| kib.trim().parse::<u64>().ok())
            .expect("VmHWM in /proc/<pid>/status");
        kib << 10
    }

    /// SIGTERM: a clean stop.
    pub fn terminate(&self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
    }

    /// `kill -9`, as a crash would.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A mount of a killed daemon stays (stale) until detached: keep it
        // for the test to see, but never past the scene.
        self.mountpoint = None;
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits for it to exit on its own; its exit status and log.
    pub fn wait_exit(mut self, timeout: Duration) -> (Option<i32>, String) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                return (status.code(), log);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("{} did not exit within {timeout:?}", self.log.display());
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(mountpoint) = &self.mountpoint {
            detach(mountpoint);
        }
    }
}

/// One compute server's directories.
#[derive(Clone, Debug)]
pub struct ComputeDirs {
    pub id: u64,
    pub upper: PathBuf,
    pub whiteouts: PathBuf,
}

/// A project home, a token and a port, in a temp directory.
pub struct Scene {
    dir: tempfile::TempDir,
    pub home: PathBuf,
    pub token: PathBuf,
    pub port: u16,
    logs: std::cell::RefCell<Vec<PathBuf>>,
    mounts: std::cell::RefCell<Vec<PathBuf>>,
}

/// A port that was free a moment ago (the daemon binds it right after),
/// and that no other caller in this process got: tests run side by side
/// and keep their ports for restarts (a project server killed and started
/// again, sshd stopped and started), so a port released for a while must
/// not be handed to another test's daemon meanwhile.
fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("binding an ephemeral loopback port");
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

impl Default for Scene {
    fn default() -> Self {
        Self::new()
    }
}

impl Scene {
    pub fn new() -> Scene {
        let dir = tempfile::tempdir().expect("a temp dir");
        let home = dir.path().join("home");
        std::fs::create_dir(&home).expect("creating home");
        std::fs::create_dir(dir.path().join("logs")).expect("creating logs");
        let token = dir.path().join("token");
        std::fs::write(&token, "e2e-secret\n").expect("writing the token");
        Scene {
            dir,
            home,
            token,
            port: free_port(),
            logs: Default::default(),
            mounts: Default::default(),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn url(&self) -> String {
        format!("ws://127.0.0.1:{}/", self.port)
    }

    fn spawn(&self, name: &str, args: &[&OsStr]) -> Daemon {
        self.spawn_limited(name, args, None)
    }

    /// [`Scene::spawn`] with at most `fd_limit` open files (`ulimit -n`).
    fn spawn_limited(&self, name: &str, args: &[&OsStr], fd_limit: Option<u32>) -> Daemon {
        let log = self
            .dir
            .path()
            .join("logs")
            .join(format!("{name}-{}.log", self.logs.borrow().len()));
        let file = std::fs::File::create(&log).expect("creating a log file");
        let mut command = match fd_limit {
            None => Command::new(binary()),
            Some(limit) => {
                // The shell execs the daemon: the child's pid is its own.
                let mut sh = Command::new("sh");
                sh.arg("-c")
                    .arg(format!("ulimit -n {limit} && exec \"$0\" \"$@\""))
                    .arg(binary());
                sh
            }
        };
        let child = command
            .args(args)
            .env("RUST_LOG", "unionsync=debug")
            // Its default control socket apart from every other daemon's.
            .env("XDG_RUNTIME_DIR", log.with_extension("run"))
            .env_remove("RUST_BACKTRACE")
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file handle"))
            .stderr(file)
            .spawn()
            .expect("starting unionsync");
        self.logs.borrow_mut().push(log.clone());
        Daemon {
            child,
            log,
            mountpoint: None,
        }
    }

    /// `unionsync project serve` on this scene's home and port; returns
    /// once it accepts connections.
    pub fn start_project(&self) -> Daemon {
        self.start_project_with(&[])
    }

    /// [`Scene::start_project`] with more arguments.
    pub fn start_project_with(&self, extra: &[&OsStr]) -> Daemon {
        self.start_project_limited(extra, None)
    }

    /// [`Scene::start_project_with`], allowed at most `fd_limit` open files.
    pub fn start_project_limited(&self, extra: &[&OsStr], fd_limit: Option<u32>) -> Daemon {
        let listen = format!("127.0.0.1:{}", self.port);
        let mut args: Vec<&OsStr> = vec![
            "project".as_ref(),
            "serve".as_ref(),
            "--home".as_ref(),
            self.home.as_os_str(),
            "--listen".as_ref(),
            listen.as_ref(),
            "--token-file".as_ref(),
            self.token.as_os_str(),
        ];
        args.extend_from_slice(extra);
        let mut daemon = self.spawn_limited("project", &args, fd_limit);
        wait_for(
            "the project server to listen",
            Duration::from_secs(20),
            || {
                assert!(
                    daemon.running(),
                    "the project server exited: {}",
                    read(&daemon.log)
                );
                std::net::TcpStream::connect(&listen).is_ok()
            },
        );
        daemon
    }

    /// [`Scene::start_project`] serving `wss://` with `cert` and `key`.
    pub fn start_tls_project(&self, cert: &Path, key: &Path) -> Daemon {
        self.start_project_with(&[
            "--tls-cert".as_ref(),
            cert.as_os_str(),
            "--tls-key".as_ref(),
            key.as_os_str(),
        ])
    }

    /// [`Scene::start_compute`] over `wss://localhost`, trusting `cert`.
    pub fn start_tls_compute(&self, dirs: &ComputeDirs, cert: &Path) -> Daemon {
        let url = format!("wss://localhost:{}/", self.port);
        let trust: [&OsStr; 2] = ["--ca-cert".as_ref(), cert.as_os_str()];
        self.start_compute_with(dirs, &url, &self.token, &trust)
    }

    /// Directories for compute server `id` (created empty).
    pub fn compute_dirs(&self, id: u64) -> ComputeDirs {
        let base = self.dir.path().join(format!("compute-{id}"));
        let dirs = ComputeDirs {
            id,
            upper: base.join("upper"),
            whiteouts: base.join("whiteouts"),
        };
        std::fs::create_dir_all(&dirs.upper).expect("creating the upper");
        std::fs::create_dir_all(&dirs.whiteouts).expect("creating the whiteouts");
        dirs
    }

    /// `unionsync compute run` syncing every few hundred milliseconds, with
    /// the home as its lower (as a mount of it would be).
    pub fn start_compute(&self, dirs: &ComputeDirs) -> Daemon {
        self.start_compute_with_token(dirs, &self.token)
    }

    pub fn start_compute_with_token(&self, dirs: &ComputeDirs, token: &Path) -> Daemon {
        self.start_compute_with(dirs, &self.url(), token, &[])
    }

    /// `unionsync compute run` against `url` with more arguments.
    pub fn start_compute_with(
        &self,
        dirs: &ComputeDirs,
        url: &str,
        token: &Path,
        extra: &[&OsStr],
    ) -> Daemon {
        let id = dirs.id.to_string();
        let mut args: Vec<&OsStr> = vec![
            "compute".as_ref(),
            "run".as_ref(),
            "--upper".as_ref(),
            dirs.upper.as_os_str(),
            "--whiteouts".as_ref(),
            dirs.whiteouts.as_os_str(),
            "--lower".as_ref(),
            self.home.as_os_str(),
            "--project".as_ref(),
            url.as_ref(),
            "--id".as_ref(),
            id.as_ref(),
            "--token-file".as_ref(),
            token.as_os_str(),
            "--interval-min".as_ref(),
            "0.2".as_ref(),
            "--interval-max".as_ref(),
            "0.5".as_ref(),
        ];
        args.extend_from_slice(extra);
        self.spawn(&format!("compute-{id}"), &args)
    }
}

/// One mounted compute server's directories.
#[derive(Clone, Debug)]
pub struct MountDirs {
    pub id: u64,
    pub mount: PathBuf,
    pub upper: PathBuf,
}

impl Scene {
    /// Directories for mounted compute server `id` (created empty).
    pub fn mount_dirs(&self, id: u64) -> MountDirs {
        let base = self.dir.path().join(format!("mounted-{id}"));
        let dirs = MountDirs {
            id,
            mount: base.join("mnt"),
            upper: base.join("upper"),
        };
        std::fs::create_dir_all(&dirs.mount).expect("creating the mountpoint");
        std::fs::create_dir_all(&dirs.upper).expect("creating the upper");
        self.mounts.borrow_mut().push(dirs.mount.clone());
        dirs
    }

    /// `unionsync compute mount` with the home as its lower; returns once
    /// the union is mounted.
    pub fn start_compute_mount(&self, dirs: &MountDirs) -> Daemon {
        self.start_compute_mount_over(dirs, &self.home, &[])
    }

    /// [`Scene::start_compute_mount`] over another lower (an sshfs mount of
    /// the home, say) with more arguments; returns once the union is
    /// mounted.
    pub fn start_compute_mount_over(
        &self,
        dirs: &MountDirs,
        lower: &Path,
        extra: &[&OsStr],
    ) -> Daemon {
        let id = dirs.id.to_string();
        let url = self.url();
        let mut args: Vec<&OsStr> = vec![
            "compute".as_ref(),
            "mount".as_ref(),
            "--mount".as_ref(),
            dirs.mount.as_os_str(),
            "--lower".as_ref(),
            lower.as_os_str(),
            "--upper".as_ref(),
            dirs.upper.as_os_str(),
            "--project".as_ref(),
            url.as_ref(),
            "--id".as_ref(),
            id.as_ref(),
            "--token-file".as_ref(),
            self.token.as_os_str(),
            "--interval-min".as_ref(),
            "0.2".as_ref(),
            "--interval-max".as_ref(),
            "0.5".as_ref(),
        ];
        args.extend_from_slice(extra);
        let mut daemon = self.spawn(&format!("mounted-{id}"), &args);
        daemon.mountpoint = Some(dirs.mount.clone());
        let started = Instant::now();
        wait_for("the union to be mounted", Duration::from_secs(20), || {
            assert!(
                daemon.running(),
                "compute mount exited after {:?}: {}",
                started.elapsed(),
                read(&daemon.log)
            );
            // A stale mount of a killed daemon is listed too, but refuses
            // every access until the new daemon replaces it (a listing, as
            // a stat may be answered from the kernel's attribute cache).
            is_mounted(&dirs.mount) && std::fs::read_dir(&dirs.mount).is_ok()
        });
        daemon
    }
}

impl Drop for Scene {
    fn drop(&mut self) {
        for mount in self.mounts.borrow().iter() {
            detach(mount);
        }
        if std::thread::panicking() {
            for log in self.logs.borrow().iter() {
                eprintln!("===== {} =====\n{}", log.display(), read(log));
            }
        }
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| format!("(unreadable: {e})"))
}

/// Polls `done` until it holds; panics naming `what` after `timeout`.
pub fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `f` on another thread and gives up after `timeout`: a hang fails
/// the test instead of stalling it (the thread, stuck in a mount, is
/// released when the mount goes at the end of the test).
pub fn within<T: Send + 'static>(
    what: &str,
    timeout: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(timeout)
        .unwrap_or_else(|_| panic!("{what} hung for more than {timeout:?}"))
}

/// What a tree holds at one path, as sync promises to carry it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    File {
        mode: u32,
        mtime_ns: i64,
        data: Vec<u8>,
    },
    Dir {
        mode: u32,
    },
    Symlink {
        target: Vec<u8>,
    },
}

/// Every entry beneath `root` (never following symlinks), keyed by the
/// relative path's bytes; the reserved `.unionsync` directory is left out.
pub fn tree(root: &Path) -> BTreeMap<Vec<u8>, Entry> {
    let mut out = BTreeMap::new();
    walk(root, Path::new(""), &mut out);
    out
}

fn walk(root: &Path, rel: &Path, out: &mut BTreeMap<Vec<u8>, Entry>) {
    let Ok(entries) = std::fs::read_dir(root.join(rel)) else {
        return;
    };
    for entry in entries.flatten() {
        let rel = rel.join(entry.file_name());
        if rel == Path::new(".unionsync") {
            continue;
        }
        let path = root.join(&rel);
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        let mode = meta.permissions().mode() & 0o7777;
        let key = rel.as_os_str().as_bytes().to_vec();
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&path).unwrap_or_default();
            let target = target.as_os_str().as_bytes().to_vec();
            out.insert(key, Entry::Symlink { target });
        } else if meta.is_dir() {
            out.insert(key, Entry::Dir { mode });
            walk(root, &rel, out);
        } else {
            let data = std::fs::read(&path).unwrap_or_default();
            let mtime_ns = meta.mtime() * 1_000_000_000 + meta.mtime_nsec();
            out.insert(
                key,
                Entry::File {
                    mode,
                    mtime_ns,
                    data,
                },
            );
        }
    }
}

/// The paths whose deletion `whiteouts` records (`<parent>/.wh.<name>`).
pub fn whiteouts(whiteouts: &Path) -> Vec<Vec<u8>> {
    tree(whiteouts)
        .into_iter()
        .filter_map(|(path, entry)| {
            let Entry::File { .. } = entry else {
                return None;
            };
            let path = PathBuf::from(OsStr::from_bytes(&path));
            let name = path.file_name()?.as_bytes().strip_prefix(b".wh.")?.to_vec();
            let mut out = path.parent()?.as_os_str().as_bytes().to_vec();
            if !out.is_empty() {
                out.push(b'/');
            }
            out.extend(name);
            Some(out)
        })
        .collect()
}

/// Records the deletion of `path` as the union would: a whiteout marker.
pub fn write_whiteout(whiteouts: &Path, path: &str) {
    let path = Path::new(path);
    let name = path.file_name().expect("a path with a name");
    let dir = whiteouts.join(path.parent().unwrap_or(Path::new("")));
    std::fs::create_dir_all(&dir).expect("creating whiteout parents");
    let mut marker = b".wh.".to_vec();
    marker.extend_from_slice(name.as_bytes());
    std::fs::write(dir.join(OsStr::from_bytes(&marker)), b"").expect("writing a whiteout");
}

/// Does the union of `dirs` over `home` show exactly the home? Every upper
/// entry must equal the home's, and no whited-out path may exist there.
/// (Paths only in the home are what the lower shows: nothing to compare.)
pub fn converged(home: &Path, dirs: &ComputeDirs) -> Result<(), String> {
    let home_tree = tree(home);
    for (path, entry) in tree(&dirs.upper) {
        let shown = String::from_utf8_lossy(&path).into_owned();
        match home_tree.get(&path) {
            Some(project) if *project == entry => {}
            project => return Err(format!("{shown}: upper {entry:?}, project {project:?}")),
        }
    }
    for path in whiteouts(&dirs.whiteouts) {
        if home_tree.contains_key(&path) {
            let shown = String::from_utf8_lossy(&path).into_owned();
            return Err(format!(
                "{shown}: deleted on compute-{}, still in the project",
                dirs.id
            ));
        }
    }
    Ok(())
}

/// Waits until [`converged`]; panics with the last difference seen.
pub fn wait_converged(home: &Path, dirs: &ComputeDirs, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        match converged(home, dirs) {
            Ok(()) => return,
            Err(why) if Instant::now() >= deadline => {
                panic!(
                    "compute-{} did not converge within {timeout:?}: {why}",
                    dirs.id
                )
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Every file in the conflicts area of `home`: (path below the stamp, content).
pub fn conflicts(home: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let root = home.join(".unionsync/conflicts");
    tree(&root)
        .into_iter()
        .filter_map(|(path, entry)| match entry {
            Entry::File { data, .. } => {
                // <id>/<stamp>/<path>
                let mut parts = path.splitn(3, |b| *b == b'/');
                let (_, _, rest) = (parts.next()?, parts.next()?, parts.next()?);
                Some((rest.to_vec(), data))
            }
            _ => None,
        })
        .collect()
}

/// Whether FUSE mounts are possible here (says why not when they are not).
pub fn fuse_available() -> bool {
    if Path::new("/dev/fuse").exists() {
        return true;
    }
    eprintln!("skipping: /dev/fuse is absent, so no FUSE mount is possible here");
    false
}

/// A union mounted by this process at `mnt` over `upper`, `whiteouts` and
/// `lower` in a temp directory; unmounted on drop, even when a test panics.
/// The names in `dir`, sorted.
pub fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("listing a directory")
        .map(|e| {
            e.expect("a directory entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    names
}

/// Is nothing at `path` (not even a dangling symlink)?
pub fn absent(path: &Path) -> bool {
    matches!(std::fs::symlink_metadata(path), Err(e) if e.kind() == std::io::ErrorKind::NotFound)
}

pub struct UnionMount {
    mounted: Option<unionsync::union::Mounted>,
    pub mnt: PathBuf,
    pub upper: PathBuf,
    pub whiteouts: PathBuf,
    pub lower: PathBuf,
    _dir: tempfile::TempDir,
}

impl UnionMount {
    /// `lower` and `upper` fill the layers before the mount.
    pub fn new(lower: impl FnOnce(&Path), upper: impl FnOnce(&Path)) -> UnionMount {
        let dir = tempfile::tempdir().expect("a temp dir");
        let low = dir.path().join("lower");
        std::fs::create_dir(&low).expect("creating the lower");
        lower(&low);
        UnionMount::with_lower(dir, low, upper)
    }

    /// Over an existing `lower` (another mount, say).
    pub fn over(lower: &Path) -> UnionMount {
        let dir = tempfile::tempdir().expect("a temp dir");
        UnionMount::with_lower(dir, lower.to_path_buf(), |_| {})
    }

    fn with_lower(dir: tempfile::TempDir, lower: PathBuf, upper: impl FnOnce(&Path)) -> UnionMount {
        let [mnt, up, whiteouts] = ["mnt", "upper", "whiteouts"].map(|name| dir.path().join(name));
        for d in [&mnt, &up, &whiteouts] {
            std::fs::create_dir(d).expect("creating a layer");
        }
        upper(&up);
        let mounted = unionsync::union::mount(
            &mnt,
            &up,
            &whiteouts,
            &lower,
            Vec::new(),
            Default::default(),
        )
        .expect("mounting the union");
        UnionMount {
            mounted: Some(mounted),
            mnt,
            upper: up,
            whiteouts,
            lower,
            _dir: dir,
        }
    }

    /// `path` inside the mount.
    pub fn m(&self, path: &str) -> PathBuf {
        self.mnt.join(path)
    }

    pub fn mounted(&self) -> &unionsync::union::Mounted {
        self.mounted.as_ref().expect("mounted until dropped")
    }
}

impl Drop for UnionMount {
    fn drop(&mut self) {
        if let Some(mounted) = self.mounted.take() {
            if let Err(e) = mounted.unmount() {
                eprintln!("unmounting {}: {e}", self.mnt.display());
            }
        }
        detach(&self.mnt);
    }
}

impl Daemon {
    /// Its default control socket (every spawned daemon gets its own
    /// `XDG_RUNTIME_DIR`); `side` is "compute" or "project".
    pub fn control_socket(&self, side: &str) -> PathBuf {
        self.log
            .with_extension("run")
            .join(format!("unionsync/{side}.sock"))
    }
}

/// A throwaway self-signed certificate for `localhost` (openssl CLI).
pub fn self_signed(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let status = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "2", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost"])
        // An end-entity certificate (webpki refuses a CA as a server's).
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null())
        .status()
        .expect("openssl is installed (.ci/run installs it)");
    assert!(status.success());
    (cert, key)
}

/// `size` bytes (a multiple of 4 MiB) lz4 cannot squash: a 4 MiB pseudo-random block (beyond
/// lz4's 64 KiB window) over and over, each copy stamped with its number.
pub fn write_incompressible(path: &Path, size: u64) {
    let mut block = vec![0u8; 4 << 20];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for word in block.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        word.copy_from_slice(&x.to_le_bytes());
    }
    let mut file = std::fs::File::create(path).unwrap();
    for n in 0..size / block.len() as u64 {
        block[..8].copy_from_slice(&n.to_le_bytes());
        std::io::Write::write_all(&mut file, &block).unwrap();
    }
}

/// Whether two files hold the same bytes (read a piece at a time).
pub fn same_content(a: &Path, b: &Path) -> bool {
    let (mut a, mut b) = (
        std::fs::File::open(a).unwrap(),
        std::fs::File::open(b).unwrap(),
    );
    let (mut x, mut y) = (vec![0; 1 << 20], vec![0; 1 << 20]);
    loop {
        let n = std::io::Read::read(&mut a, &mut x).unwrap();
        if n == 0 {
            return std::io::Read::read(&mut b, &mut y).unwrap() == 0;
        }
        if std::io::Read::read_exact(&mut b, &mut y[..n]).is_err() || x[..n] != y[..n] {
            return false;
        }
    }
}
