//! A real network filesystem for the end-to-end tests: a throwaway `sshd`
//! on 127.0.0.1 and an `sshfs` mount of the project home through it, the
//! way a compute server reaches its project.
//!
//! ```text
//! Sshd (temp dir: host key, client key, authorized_keys, sshd_config, log)
//!   └─ /usr/sbin/sshd -D -e -f sshd_config   (127.0.0.1:<free port>)
//!   ready once `ssh` completes a handshake and a login with its keys
//! Sshfs: sshfs root@127.0.0.1:<home> <mountpoint> -o ro,reconnect,…   (host key pinned)
//! Tmpfs: a small tmpfs mounted over a directory (a project disk that fills)
//! ```
//!
//! Every guard undoes itself on drop, also when a test panics: the mounts
//! are detached, sshd and every session process it forked are killed, and
//! the keys go with the temp directory. Drop them in this order: the union
//! daemon first, then [`Sshfs`], then [`Sshd`], then [`Tmpfs`].

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{detach, free_port, is_mounted, read, wait_for};

const SSHD: &str = "/usr/sbin/sshd";

/// Whether the sshfs end-to-end tests can run here: as root, with
/// `/dev/fuse`, `/usr/sbin/sshd`, `sshfs`, `ssh`, `ssh-keygen`, `git` and
/// `fusermount3`; says why not when they cannot. Under CI (`CI=true`) a
/// missing tool is a failure, not a skip, so that a `.ci/run` which forgot
/// to install one is noticed.
pub fn sshfs_e2e_available() -> bool {
    let mut missing = Vec::new();
    if !is_root() {
        missing.push("root (to log in over ssh as root and mount a tmpfs)".to_string());
    }
    if !Path::new("/dev/fuse").exists() {
        missing.push("/dev/fuse".to_string());
    }
    if !Path::new(SSHD).exists() {
        missing.push(format!("{SSHD} (apt-get install openssh-server)"));
    }
    for (tool, package) in [
        ("sshfs", "sshfs"),
        ("ssh", "openssh-client"),
        ("ssh-keygen", "openssh-client"),
        ("git", "git"),
        ("fusermount3", "fuse3"),
    ] {
        if which(tool).is_none() {
            missing.push(format!("{tool} (apt-get install {package})"));
        }
    }
    if missing.is_empty() {
        return true;
    }
    let why = format!(
        "the sshfs end-to-end tests need what is missing here: {}",
        missing.join(", ")
    );
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{why} (CI=true: a missing tool fails instead of skipping; see .ci/run)");
    }
    eprintln!("skipping: {why}");
    false
}

/// Whether this process runs as root (effective uid 0).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("Uid:"))?;
            line.split_whitespace().nth(2).map(|euid| euid == "0")
        })
        .unwrap_or(false)
}

/// `tool` found on `PATH`.
pub fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(tool))
        .find(|candidate| candidate.is_file())
}

/// Runs `command`, panicking with its output if it fails.
fn run(command: &mut Command) {
    let output = command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A throwaway sshd on 127.0.0.1 with its own host key and one authorized
/// client key (for root). Killed, with every session it forked, on drop.
pub struct Sshd {
    dir: tempfile::TempDir,
    pub port: u16,
    config: PathBuf,
    /// The private key a client logs in with.
    pub client_key: PathBuf,
    /// Its host key, the only one a client accepts for its address.
    known_hosts: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
}

impl Sshd {
    /// Creates the keys and the config and starts sshd; returns once its
    /// port accepts connections.
    pub fn start_new() -> Sshd {
        let dir = tempfile::tempdir().expect("a temp dir for sshd");
        let host_key = dir.path().join("host_ed25519");
        let client_key = dir.path().join("client_ed25519");
        for key in [&host_key, &client_key] {
            run(Command::new("ssh-keygen")
                .args(["-q", "-N", "", "-t", "ed25519", "-C", "unionsync-e2e", "-f"])
                .arg(key));
        }
        let authorized = dir.path().join("authorized_keys");
        std::fs::copy(client_key.with_extension("pub"), &authorized)
            .expect("writing authorized_keys");
        let port = free_port();
        // A client talks to this sshd only: whatever else may answer on
        // the port (another test's daemon) fails the host key check.
        let known_hosts = dir.path().join("known_hosts");
        let host_public =
            std::fs::read_to_string(host_key.with_extension("pub")).expect("reading the host key");
        std::fs::write(&known_hosts, format!("[127.0.0.1]:{port} {host_public}"))
            .expect("writing known_hosts");
        let config = dir.path().join("sshd_config");
        let pid_file = dir.path().join("sshd.pid");
        std::fs::write(
            &config,
            format!(
                "ListenAddress 127.0.0.1\n\
                 Port {port}\n\
                 HostKey {host_key}\n\
                 AuthorizedKeysFile {authorized}\n\
                 PidFile {pid_file}\n\
                 StrictModes no\n\
                 PasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\n\
                 PubkeyAuthentication yes\n\
                 UsePAM no\n\
                 PermitRootLogin prohibit-password\n\
                 UseDNS no\n\
                 PrintMotd no\n\
                 MaxStartups 100\n\
                 Subsystem sftp internal-sftp\n",
                host_key = host_key.display(),
                authorized = authorized.display(),
                pid_file = pid_file.display(),
            ),
        )
        .expect("writing sshd_config");
        // The privilege separation directory (normally made by systemd).
        std::fs::create_dir_all("/run/sshd").expect("creating /run/sshd");
        let log = dir.path().join("sshd.log");
        let mut sshd = Sshd {
            dir,
            port,
            config,
            client_key,
            known_hosts,
            log,
            child: None,
        };
        sshd.start();
        sshd
    }

    /// Options of an ssh client (as `-o` takes them) that logs in to this
    /// sshd with its key, and trusts its host key only.
    fn client_options(&self) -> Vec<String> {
        vec![
            format!("IdentityFile={}", self.client_key.display()),
            "IdentitiesOnly=yes".into(),
            format!("UserKnownHostsFile={}", self.known_hosts.display()),
            "StrictHostKeyChecking=yes".into(),
            "BatchMode=yes".into(),
            "LogLevel=ERROR".into(),
            "ConnectTimeout=5".into(),
            "ServerAliveInterval=2".into(),
            "ServerAliveCountMax=3".into(),
        ]
    }

    /// Starts sshd (again, on the same port); returns once `ssh` logs in
    /// through it. (Accepting a TCP connection is not enough: something
    /// else may hold the port, and sshd may accept and still drop a
    /// session: readiness is what sshfs needs, a handshake and a login.)
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "sshd is already running");
        let listening = format!("Server listening on 127.0.0.1 port {}.", self.port);
        let listened_before = read(&self.log).matches(&listening).count();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("opening the sshd log");
        let child = Command::new(SSHD)
            .arg("-D")
            .arg("-e")
            .arg("-f")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file handle"))
            .stderr(log)
            .spawn()
            .expect("starting sshd");
        self.child = Some(child);
        let mut login = Command::new("ssh");
        login
            .args(["-F", "/dev/null", "-p"])
            .arg(self.port.to_string());
        for option in self.client_options() {
            login.arg("-o").arg(option);
        }
        login
            .args(["root@127.0.0.1", "true"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = self.child.as_mut().expect("just started");
        let log = &self.log;
        wait_for("sshd to let ssh log in", Duration::from_secs(20), || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("sshd exited ({status}): {}", read(log));
            }
            // It says it listens itself before a login is tried.
            read(log).matches(&listening).count() > listened_before
                && login.status().is_ok_and(|s| s.success())
        });
    }

    /// Stops sshd and every session it serves, as a network outage would:
    /// connections break and new ones are refused.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // Freeze the tree (no more forks or accepts) before killing it, so
        // no session escapes by being reparented away from us.
        let listener = child.id();
        let mut frozen = vec![listener];
        signal(SIGSTOP, &frozen);
        loop {
            let found: Vec<u32> = descendants(listener)
                .into_iter()
                .filter(|pid| !frozen.contains(pid))
                .collect();
            if found.is_empty() {
                break;
            }
            signal(SIGSTOP, &found);
            frozen.extend(found);
        }
        signal(SIGKILL, &frozen);
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Whether sshd is running.
    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// The directory of the keys and the config.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!("===== {} =====\n{}", self.log.display(), read(&self.log));
        }
    }
}

const SIGKILL: i32 = 9;
const SIGSTOP: i32 = 19;

extern "C" {
    /// kill(2) from the C library std already links (no `kill` binary,
    /// which a minimal Debian lacks, and no extra crate).
    fn kill(pid: i32, sig: i32) -> i32;
}

/// Sends `sig` to `pids` (processes this test started, or forked by them).
fn signal(sig: i32, pids: &[u32]) {
    for &pid in pids {
        if let Ok(pid) = i32::try_from(pid) {
            if pid > 0 {
                // SAFETY: kill(2) takes plain integers and touches no memory.
                unsafe { kill(pid, sig) };
            }
        }
    }
}

/// Every process below `pid` (children, their children, …).
fn descendants(pid: u32) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(child) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // "pid (comm) state ppid …"; comm may hold spaces and parens.
            let Some(rest) = stat.rsplit_once(')').map(|(_, rest)| rest) else {
                continue;
            };
            if let Some(ppid) = rest.split_whitespace().nth(1).and_then(|p| p.parse().ok()) {
                parents.push((child, ppid));
            }
        }
    }
    let mut out = Vec::new();
    let mut todo = vec![pid];
    while let Some(parent) = todo.pop() {
        for &(child, ppid) in &parents {
            if ppid == parent && !out.contains(&child) {
                out.push(child);
                todo.push(child);
            }
        }
    }
    out
}

/// `sshfs root@127.0.0.1:<remote> <mountpoint>` through an [`Sshd`],
/// read-only, reconnecting, with sshfs's own caches off (the union's index
/// answers metadata; content must be what the project has now). Detached
/// on drop, also when a test panics.
pub struct Sshfs {
    pub mountpoint: PathBuf,
    pub log: PathBuf,
}

impl Sshfs {
    pub fn mount(sshd: &Sshd, remote: &Path, mountpoint: &Path) -> Sshfs {
        std::fs::create_dir_all(mountpoint).expect("creating the sshfs mountpoint");
        let log = sshd
            .dir()
            .join(format!("sshfs-{}.log", mountpoint.display()).replace('/', "_"));
        let mut options = sshd.client_options();
        options.extend(
            [
                "reconnect",
                "ro",
                "dir_cache=no",
                "entry_timeout=0",
                "attr_timeout=0",
                "negative_timeout=0",
            ]
            .map(String::from),
        );
        let options = options.join(",");
        let source = format!("root@127.0.0.1:{}", remote.display());
        let guard = Sshfs {
            mountpoint: mountpoint.to_path_buf(),
            log,
        };
        // sshd let ssh log in already; a connection that still breaks on
        // the way (a session dropped, the machine loaded) is tried again
        // within the deadline. Every attempt is in the log.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&guard.log)
                .expect("opening the sshfs log");
            // Normal (daemon) mode: sshfs returns once the mount is up.
            let status = Command::new("sshfs")
                .arg(&source)
                .arg(mountpoint)
                .args(["-F", "/dev/null", "-p"])
                .arg(sshd.port.to_string())
                .arg("-o")
                .arg(&options)
                .stdin(Stdio::null())
                .stdout(file.try_clone().expect("log file handle"))
                .stderr(file)
                .status()
                .expect("running sshfs");
            if status.success() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "sshfs {source} {} failed ({status}), also when tried again: {}",
                mountpoint.display(),
                read(&guard.log)
            );
            detach(mountpoint);
            std::thread::sleep(Duration::from_millis(200));
        }
        wait_for("the sshfs mount", Duration::from_secs(20), || {
            is_mounted(mountpoint) && std::fs::metadata(mountpoint).is_ok()
        });
        guard
    }
}

impl Drop for Sshfs {
    fn drop(&mut self) {
        if is_mounted(&self.mountpoint) {
            // A clean unmount ends the sshfs process; a busy or dead mount
            // is detached lazily (sshfs exits once it is released).
            let clean = Command::new("fusermount3")
                .arg("-u")
                .arg(&self.mountpoint)
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !clean {
                detach(&self.mountpoint);
            }
        }
        if std::thread::panicking() {
            eprintln!("===== {} =====\n{}", self.log.display(), read(&self.log));
        }
    }
}

/// A tmpfs of `size` (as `mount -o size=`, e.g. "8m") mounted over `dir`,
/// a project disk that can fill up. Unmounted on drop.
pub struct Tmpfs {
    pub dir: PathBuf,
}

impl Tmpfs {
    pub fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).expect("creating the tmpfs mountpoint");
        run(Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={size},mode=0755"))
            .arg("unionsync-e2e")
            .arg(dir));
        Tmpfs {
            dir: dir.to_path_buf(),
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if is_mounted(&self.dir) {
            // Lazy: a process still holding a file there does not keep
            // the mount in place.
            let _ = Command::new("umount")
                .arg("-l")
                .arg(&self.dir)
                .stderr(Stdio::null())
                .status();
        }
    }
}
