//! `unionsync demo [DIR]`: both sides on this machine — a project server
//! on a sample home and a mounted compute server over it — until Ctrl-C.
//!
//! ```text
//! DIR/project   the project home (the truth), served on 127.0.0.1:<free port>
//! DIR/mnt       the union mount: work here (upper DIR/compute/upper over DIR/project)
//! DIR/token     the shared secret
//! ```
//!
//! On a real compute server the lower is the project home through sshfs or
//! NFS; here both sides share a disk, so the lower is the home itself.

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use unionsync::compute_disk::ComputeDirs;
use unionsync::daemon::{self, ComputeOptions, ProjectOptions};
use unionsync_core::{RelPath, Timing};

/// Quick syncs, so what you do shows on the other side within seconds.
const DEMO_TIMING: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(3));

pub struct DemoOptions {
    /// Where both sides live; a new temporary directory when `None`
    /// (removed at the end).
    pub dir: Option<PathBuf>,
    /// Stop after this long instead of waiting for Ctrl-C.
    pub duration: Option<Duration>,
    /// Sync a plain directory instead of mounting (no FUSE needed).
    pub no_mount: bool,
}

pub fn run(options: DemoOptions) -> anyhow::Result<()> {
    let temp;
    let dir = match &options.dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            dir.canonicalize()
                .with_context(|| format!("resolving {}", dir.display()))?
        }
        None => {
            temp = tempfile::Builder::new()
                .prefix("unionsync-demo-")
                .tempdir()
                .context("creating a temporary directory")?;
            temp.path().to_path_buf()
        }
    };
    let home = dir.join("project");
    let fresh = !home.exists();
    if fresh {
        sample_home(&home)?;
    }
    let token = demo_token(&dir.join("token"))?;
    let port = free_port()?;
    let mount = !options.no_mount && fuse_usable();
    let work = if mount {
        dir.join("mnt")
    } else {
        dir.join("compute/upper")
    };
    let project = ProjectOptions {
        home: home.clone(),
        listen: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        token: token.clone(),
        allow_insecure: false,
        step_timeout: crate::STEP_TIMEOUT,
        tls: None,
    };
    let upper = dir.join("compute/upper");
    let mut dirs = ComputeDirs::new(&upper, &dir.join("compute/whiteouts"));
    dirs.lower = Some(home.clone());
    dirs.local_only = ["scratch", ".cache", ".local"]
        .into_iter()
        .map(|p| RelPath::new(p).expect("valid constant"))
        .collect();
    let compute = ComputeOptions {
        dirs,
        project: format!("ws://127.0.0.1:{port}/"),
        token,
        compute_id: 1,
        allow_insecure: false,
        timing: Timing {
            min: DEMO_TIMING.0,
            max: DEMO_TIMING.1,
            ..Timing::default()
        },
        step_timeout: crate::STEP_TIMEOUT,
        ca_cert: None,
    };
    print_guide(
        &mut std::io::stdout().lock(),
        &dir,
        &home,
        &work,
        mount,
        options.duration,
    )?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let until_stopped = |mut stopped: tokio::sync::watch::Receiver<bool>| async move {
        let _ = stopped.wait_for(|s| *s).await;
    };
    let (status, _) = tokio::sync::watch::channel(Default::default());
    let (project_socket, compute_socket) = (dir.join("project.sock"), dir.join("compute.sock"));
    let result = crate::run_local(async move {
        let project = daemon::run_project_server_with_control(
            project,
            Some(&project_socket),
            until_stopped(stopped.clone()),
        );
        let compute = async {
            let stop = until_stopped(stopped.clone());
            if mount {
                let control = Some(compute_socket.as_path());
                daemon::run_compute_mount_with_control(compute, work, control, stop, status).await
            } else {
                daemon::run_compute_with_control(compute, Some(&compute_socket), stop, status).await
            }
        };
        let stopper = async {
            let limit = async {
                match options.duration {
                    Some(duration) => tokio::time::sleep(duration).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = limit => {}
                () = crate::shutdown_signal() => {}
            }
            let _ = stop.send(true);
        };
        // Either side failing ends the demo (the other is stopped too).
        let (project, compute, ()) = tokio::join!(
            async {
                let r = project.await;
                let _ = stop.send(true);
                r
            },
            async {
                let r = compute.await;
                let _ = stop.send(true);
                r
            },
            stopper
        );
        project.context("the project server")?;
        compute.context("the compute server")
    })?;
    println!("demo stopped{}", if mount { "; unmounted" } else { "" });
    if options.dir.is_some() {
        println!("everything is still in {}", dir.display());
    }
    result
}

/// A small home to look at: a note, some code, a symlink.
fn sample_home(home: &Path) -> anyhow::Result<()> {
    let files: [(&str, &str); 3] = [
        (
            "README.txt",
            "This is the project home: the truth. Edit here or in the mount;\n\
             both sides converge within seconds, and the project wins conflicts.\n",
        ),
        ("notes.txt", "edit me on either side\n"),
        (
            "src/main.c",
            "#include <stdio.h>\nint main(void) { puts(\"hello\"); return 0; }\n",
        ),
    ];
    for (path, content) in files {
        let path = home.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&path, content).with_context(|| format!("writing {}", path.display()))?;
    }
    std::os::unix::fs::symlink("src/main.c", home.join("main.c"))
        .context("creating a sample symlink")?;
    Ok(())
}

/// The demo's token: kept in `path` (0600) so a second run reuses it.
fn demo_token(path: &Path) -> anyhow::Result<Vec<u8>> {
    if !path.exists() {
        let mut bytes = [0u8; 24];
        let mut random = std::fs::File::open("/dev/urandom").context("opening /dev/urandom")?;
        std::io::Read::read_exact(&mut random, &mut bytes).context("reading /dev/urandom")?;
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("creating {}", path.display()))?;
        writeln!(file, "{hex}").with_context(|| format!("writing {}", path.display()))?;
    }
    daemon::read_token(path).with_context(|| format!("reading {}", path.display()))
}

fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("finding a free port")?;
    Ok(listener.local_addr().context("finding a free port")?.port())
}

/// Can this process mount FUSE filesystems?
fn fuse_usable() -> bool {
    let device = Path::new("/dev/fuse").exists();
    let helper = ["/usr/bin/fusermount3", "/bin/fusermount3"]
        .iter()
        .any(|p| Path::new(p).exists());
    if !device || !helper {
        eprintln!(
            "note: FUSE is not usable here ({}); syncing a plain directory instead of mounting. \
             Install it with: apt-get install fuse3",
            if device {
                "no fusermount3"
            } else {
                "no /dev/fuse"
            }
        );
    }
    device && helper
}

fn print_guide(
    out: &mut impl Write,
    dir: &Path,
    home: &Path,
    work: &Path,
    mount: bool,
    duration: Option<Duration>,
) -> anyhow::Result<()> {
    let (w, h) = (work.display(), home.display());
    writeln!(out, "unionsync demo in {}", dir.display())?;
    writeln!(out, "  project home (the truth):  {h}")?;
    if mount {
        writeln!(
            out,
            "  compute mount (work here): {w}   (local upper over the home)"
        )?;
    } else {
        writeln!(
            out,
            "  compute directory:         {w}   (no mount: FUSE unavailable)"
        )?;
    }
    writeln!(out)?;
    writeln!(out, "Try, in another terminal:")?;
    let tries = [
        (
            format!("echo hello > {w}/hello.txt"),
            "in the project within seconds".to_string(),
        ),
        (
            format!("echo edited > {h}/notes.txt"),
            format!("shows in {w}"),
        ),
        (
            format!("rm {w}/README.txt"),
            "deleted in the project too".to_string(),
        ),
        (
            format!("mkdir {w}/scratch; echo x > {w}/scratch/x"),
            "local only: never synced".to_string(),
        ),
    ];
    let width = tries.iter().map(|(c, _)| c.len()).max().unwrap_or(0);
    for (command, effect) in &tries {
        writeln!(out, "  {command:width$}   # {effect}")?;
    }
    writeln!(
        out,
        "  edit one file on both sides at once: the project's version wins, the other is kept"
    )?;
    writeln!(out, "    in {h}/.unionsync/conflicts/")?;
    let control = dir.join("compute.sock");
    writeln!(out, "  unionsync status --control {}", control.display())?;
    writeln!(
        out,
        "  unionsync sync --wait --control {}",
        control.display()
    )?;
    match duration {
        Some(d) => writeln!(
            out,
            "Stopping by itself after {} s (or on Ctrl-C).",
            d.as_secs_f64()
        )?,
        None => writeln!(
            out,
            "Ctrl-C stops both sides{}.",
            if mount { " and unmounts" } else { "" }
        )?,
    }
    out.flush()?;
    Ok(())
}
