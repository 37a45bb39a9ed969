//! The two daemons as the CLI runs them: real directories, real TCP.
//!
//! ```text
//! unionsync project serve ─► run_project_server: bind ─► serve(DiskProjectStore) until shutdown
//! unionsync compute run   ─► run_compute:  DiskComputeStore ─► run_compute_agent(TcpConnector)
//! ```
//!
//! Both run on the caller's current-thread runtime inside a `LocalSet`.
//! The `*_with_control` variants also answer a control socket
//! ([`crate::control`]: `unionsync status`, `sync`, `clear-error`).

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, watch};
use tokio_tungstenite::tungstenite::http::Uri;
use unionsync_core::{ComputeConfig, ComputeStatus, ProjectConfig, RelPath, Timing};

use crate::beneath::Root;
use crate::compute_agent::{run_compute_agent, AgentCommand, ComputeAgentConfig, TcpConnector};
use crate::compute_disk::{ComputeDirs, DiskComputeStore};
use crate::control::{self, ComputeInfo, ComputeLink, ControlError, ControlListener, Side};
use crate::persist;
use crate::project_disk::DiskProjectStore;
use crate::project_server::{serve_observed, Observer, ServeLimits};
use crate::project_watch::{ProjectWatch, WatchNews};
use crate::tls::{self, TlsError, TlsListener, TlsTcpConnector};
use crate::union::{self, journal::Journal, journal::SharedJournal, MountLink};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// (`cause` is shown in the message, so it is not also a `source`
    /// that would print twice.)
    #[error("{what}: {cause}")]
    Io { what: String, cause: std::io::Error },
    #[error("invalid project URL {url:?}: {why}")]
    Url { url: String, why: String },
    #[error(
        "refusing unencrypted ws:// to {0}, which is not a loopback address \
         (the token would cross the network in clear); pass --allow-insecure to do it anyway"
    )]
    Insecure(String),
    #[error("the token is empty: put a secret in the token file")]
    EmptyToken,
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Control(#[from] ControlError),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DaemonError {
    let what = what.into();
    move |cause| DaemonError::Io { what, cause }
}

/// Reads a token file: its content minus trailing whitespace.
pub fn read_token(path: &std::path::Path) -> Result<Vec<u8>, DaemonError> {
    let mut token = std::fs::read(path).map_err(io(format!("token file {}", path.display())))?;
    while token.last().is_some_and(u8::is_ascii_whitespace) {
        token.pop();
    }
    if token.is_empty() {
        return Err(DaemonError::EmptyToken);
    }
    Ok(token)
}

#[derive(Clone, Debug)]
pub struct ProjectOptions {
    pub home: PathBuf,
    pub listen: SocketAddr,
    pub token: Vec<u8>,
    pub allow_insecure: bool,
    pub step_timeout: Duration,
    /// PEM certificate chain and key: serve `wss://`.
    pub tls: Option<(PathBuf, PathBuf)>,
}

/// Serves compute servers from `home` until `shutdown` completes.
pub async fn run_project_server(
    options: ProjectOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DaemonError> {
    run_project_server_with_control(options, None, shutdown).await
}

/// [`run_project_server`], answering the control socket at `control`
/// (bound first: another daemon answering there is an error).
pub async fn run_project_server_with_control(
    options: ProjectOptions,
    control: Option<&Path>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DaemonError> {
    let tls = match &options.tls {
        Some((cert, key)) => Some(tls::acceptor(cert, key)?),
        None if !options.listen.ip().is_loopback() && !options.allow_insecure => {
            return Err(DaemonError::Insecure(options.listen.to_string()))
        }
        None => None,
    };
    let control = control
        .map(|path| ControlListener::bind(path, Side::Project))
        .transpose()?;
    let store = DiskProjectStore::open(&options.home)
        .map_err(io(format!("project home {}", options.home.display())))?;
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .map_err(io(format!("listening on {}", options.listen)))?;
    let bound = listener.local_addr().map_err(io("listening socket"))?;
    let scheme = if tls.is_some() { "wss" } else { "ws" };
    tracing::info!(home = %options.home.display(), url = %format!("{scheme}://{bound}/"), "project server ready");
    let config = ProjectConfig {
        token: options.token,
        step_timeout: options.step_timeout,
        lower_index: true,
    };
    let (news, _watch) = watch_home(&options.home)?;
    let (events, events_rx) = mpsc::unbounded_channel();
    let info = control::ProjectInfo {
        url: format!("{scheme}://{bound}/"),
        home: options.home.clone(),
    };
    let control = control::run_project_control(control, events_rx, info);
    let observer = Some(Observer::Connections(events));
    let limits = ServeLimits::default();
    let served = async move {
        match tls {
            Some(tls) => {
                let listener = TlsListener { tcp: listener, tls };
                serve_observed(listener, store, config, observer, Some(news), limits).await
            }
            None => serve_observed(listener, store, config, observer, Some(news), limits).await,
        }
    };
    tokio::select! {
        served = served => served.map_err(io("accepting connections")),
        never = control => match never {},
        () = shutdown => {
            tracing::info!("project server stopping");
            Ok(())
        }
    }
}

/// How long the home must be quiet before a batch of changes goes out.
const WATCH_SETTLE: Duration = Duration::from_millis(250);

/// Starts the home's watcher and fans its news out to every connection
/// (the returned watch runs until dropped).
fn watch_home(
    home: &Path,
) -> Result<(broadcast::Sender<Arc<WatchNews>>, ProjectWatch), DaemonError> {
    let (sender, mut receiver) = mpsc::unbounded_channel();
    let watch = ProjectWatch::start(home, WATCH_SETTLE, sender)
        .map_err(io(format!("watching {}", home.display())))?;
    let (news, _) = broadcast::channel(64);
    let fan_out = news.clone();
    tokio::spawn(async move {
        while let Some(item) = receiver.recv().await {
            // No connection listening is fine.
            let _ = fan_out.send(Arc::new(item));
        }
    });
    Ok((news, watch))
}

#[derive(Clone, Debug)]
pub struct ComputeOptions {
    pub dirs: ComputeDirs,
    pub project: String,
    pub token: Vec<u8>,
    pub compute_id: u64,
    pub allow_insecure: bool,
    pub timing: Timing,
    pub step_timeout: Duration,
    /// PEM certificates to trust for `wss://` (default: the public roots).
    pub ca_cert: Option<PathBuf>,
}

/// Where a project URL points.
#[derive(Debug, PartialEq, Eq)]
struct ProjectUrl {
    /// `host:port` to connect to.
    address: String,
    host: String,
    tls: bool,
}

/// Parses a `ws://` or `wss://` URL, refusing plain `ws://` to a host that
/// is not loopback unless `allow_insecure`.
async fn project_url(url: &str, allow_insecure: bool) -> Result<ProjectUrl, DaemonError> {
    let bad = |why: &str| DaemonError::Url {
        url: url.to_string(),
        why: why.to_string(),
    };
    let uri: Uri = url
        .parse()
        .map_err(|e: tokio_tungstenite::tungstenite::http::uri::InvalidUri| bad(&e.to_string()))?;
    let tls = match uri.scheme_str() {
        Some("ws") => false,
        Some("wss") => true,
        _ => return Err(bad("expected ws://HOST:PORT/ or wss://HOST:PORT/")),
    };
    let host = uri.host().ok_or_else(|| bad("no host"))?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let address = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    if !tls && !allow_insecure {
        let resolved: Vec<SocketAddr> = tokio::net::lookup_host(address.as_str())
            .await
            .map_err(io(format!("resolving {address}")))?
            .collect();
        if resolved.is_empty() || !resolved.iter().all(|a| a.ip().is_loopback()) {
            return Err(DaemonError::Insecure(address));
        }
    }
    Ok(ProjectUrl { address, host, tls })
}

/// Runs the compute agent on the upper and whiteouts directories until
/// `shutdown` completes. Status goes out on `status`.
pub async fn run_compute(
    options: ComputeOptions,
    shutdown: impl Future<Output = ()>,
    status: watch::Sender<ComputeStatus>,
) -> Result<(), DaemonError> {
    run_compute_with_control(options, None, shutdown, status).await
}

/// [`run_compute`], answering the control socket at `control` (bound
/// first: another daemon answering there is an error).
pub async fn run_compute_with_control(
    options: ComputeOptions,
    control: Option<&Path>,
    shutdown: impl Future<Output = ()>,
    status: watch::Sender<ComputeStatus>,
) -> Result<(), DaemonError> {
    let url = project_url(&options.project, options.allow_insecure).await?;
    let control = control
        .map(|path| ControlListener::bind(path, Side::Compute))
        .transpose()?;
    let store = DiskComputeStore::open(&options.dirs)
        .map_err(io(format!("upper {}", options.dirs.upper.display())))?;
    drive_agent(options, url, store, None, control, shutdown, status).await
}

/// Runs the agent over `store` until `shutdown`, then stops it cleanly;
/// meanwhile follows its events (`<state>/last-error`) and answers the
/// control socket, if any.
async fn drive_agent(
    options: ComputeOptions,
    url: ProjectUrl,
    store: DiskComputeStore,
    mount: Option<MountLink>,
    control: Option<ControlListener>,
    shutdown: impl Future<Output = ()>,
    status: watch::Sender<ComputeStatus>,
) -> Result<(), DaemonError> {
    let config = ComputeAgentConfig {
        session: ComputeConfig {
            compute_id: options.compute_id,
            token: options.token,
            timing: options.timing,
            step_timeout: options.step_timeout,
        },
        url: options.project.clone(),
        reconnect_min: Duration::from_millis(500),
        reconnect_max: Duration::from_secs(30),
    };
    tracing::info!(
        upper = %options.dirs.upper.display(),
        project = %options.project,
        compute_id = options.compute_id,
        "compute agent starting"
    );
    let (commands, command_rx) = mpsc::unbounded_channel();
    if let Some(mount) = &mount {
        // Changes through the mount wake the agent.
        mount.journal.wake(commands.clone());
    }
    let (events, events_rx) = mpsc::unbounded_channel();
    let link = ComputeLink {
        status: status.subscribe(),
        events: events_rx,
        commands: commands.clone(),
        mount,
    };
    let info = ComputeInfo {
        compute_id: options.compute_id,
        project: options.project.clone(),
        error_file: Some(options.dirs.state.join(control::LAST_ERROR_FILE)),
    };
    let control = control::run_compute_control(control, link, info);
    let events = Some(events);
    let agent = async move {
        if url.tls {
            let tls = tls::connector(options.ca_cert.as_deref())?;
            let connector = TlsTcpConnector::new(url.address, &url.host, tls)?;
            run_compute_agent(config, connector, store, command_rx, status, events).await
        } else {
            let connector = TcpConnector(url.address);
            run_compute_agent(config, connector, store, command_rx, status, events).await
        }
        .map_err(|e| DaemonError::Io {
            what: "compute storage".into(),
            cause: std::io::Error::other(e.0),
        })
    };
    tokio::pin!(agent);
    tokio::select! {
        result = &mut agent => return result,
        () = shutdown => {}
        never = control => match never {},
    }
    tracing::info!("compute agent stopping");
    let _ = commands.send(AgentCommand::Shutdown);
    agent.await
}

/// Where a clean stop leaves the journal for the next start.
const JOURNAL_FILE: &str = "journal";

/// The journal a clean stop saved (then removed, so a crash before the
/// next clean stop is seen as one), or `None`: scan once.
fn take_saved_journal(state: &Root) -> std::io::Result<Option<Journal>> {
    let journal = match persist::load::<Journal>(state, JOURNAL_FILE) {
        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
            tracing::warn!(error = %e, "unreadable journal: scanning once");
            None
        }
        other => other?,
    };
    let name = RelPath::new(JOURNAL_FILE).expect("valid constant");
    match state.remove(&name, false) {
        Err(e) if !crate::beneath::is_absent(&e) => return Err(e),
        _ => {}
    }
    state.fsync_dir()?;
    Ok(journal)
}

/// A mount left by a process that died (`kill -9`) answers every access
/// with ENOTCONN; detach it so the mountpoint can be used again.
fn clear_stale_mount(mountpoint: &std::path::Path) {
    // statfs, not stat: the kernel may answer a stat of the dead mount's
    // root from its attribute cache, but always asks the daemon for statfs.
    let stale = rustix::fs::statfs(mountpoint).is_err_and(|e| e == rustix::io::Errno::NOTCONN);
    if !stale {
        return;
    }
    tracing::warn!(mount = %mountpoint.display(), "detaching a stale mount left by a crash");
    let detached = std::process::Command::new("fusermount3")
        .arg("-u")
        .arg("-z")
        .arg(mountpoint)
        .status();
    if !detached.is_ok_and(|s| s.success()) {
        tracing::error!(mount = %mountpoint.display(), "could not detach the stale mount");
    }
}

/// Mounts the union at `mountpoint` (upper over `options.dirs.lower`) and
/// runs the agent from its journal until `shutdown`; then saves the
/// journal and unmounts.
pub async fn run_compute_mount(
    options: ComputeOptions,
    mountpoint: PathBuf,
    shutdown: impl Future<Output = ()>,
    status: watch::Sender<ComputeStatus>,
) -> Result<(), DaemonError> {
    run_compute_mount_with_control(options, mountpoint, None, shutdown, status).await
}

/// [`run_compute_mount`], answering the control socket at `control`
/// (bound before mounting: another daemon answering there is an error).
pub async fn run_compute_mount_with_control(
    options: ComputeOptions,
    mountpoint: PathBuf,
    control: Option<&Path>,
    shutdown: impl Future<Output = ()>,
    status: watch::Sender<ComputeStatus>,
) -> Result<(), DaemonError> {
    let url = project_url(&options.project, options.allow_insecure).await?;
    let control = control
        .map(|path| ControlListener::bind(path, Side::Compute))
        .transpose()?;
    let dirs = &options.dirs;
    let lower = dirs.lower.clone().ok_or_else(|| DaemonError::Io {
        what: "the mount".into(),
        cause: std::io::Error::other("a lower directory is required"),
    })?;
    if !lower.is_dir() {
        return Err(DaemonError::Io {
            what: format!("the lower {}", lower.display()),
            cause: std::io::Error::other(
                "is not a directory: mount the project home there first (sshfs, NFS…)",
            ),
        });
    }
    // A crash's stale mount first: it makes the mountpoint unusable
    // (ENOTCONN), creating it included.
    clear_stale_mount(&mountpoint);
    std::fs::create_dir_all(&mountpoint).map_err(io(format!(
        "creating the mountpoint {}",
        mountpoint.display()
    )))?;
    let state = Root::create(&dirs.state).map_err(io(format!("state {}", dirs.state.display())))?;
    let saved = take_saved_journal(&state).map_err(io("loading the journal"))?;
    let clean = saved.is_some();
    let journal = SharedJournal::new(saved.unwrap_or_default());
    let mounted = union::mount(
        &mountpoint,
        &dirs.upper,
        &dirs.whiteouts,
        &lower,
        dirs.local_only.clone(),
        journal.clone(),
    )
    .map_err(io(format!("mounting {}", mountpoint.display())))?;
    tracing::info!(mount = %mountpoint.display(), lower = %lower.display(), clean, "union mounted");
    let store = DiskComputeStore::open(dirs)
        .map_err(io(format!("upper {}", dirs.upper.display())))
        .map(|store| store.with_mount(mounted.link(), clean));
    let result = match store {
        Ok(store) => {
            let mount = Some(mounted.link());
            drive_agent(
                options.clone(),
                url,
                store,
                mount,
                control,
                shutdown,
                status,
            )
            .await
        }
        Err(e) => Err(e),
    };
    let saved = persist::save(&state, JOURNAL_FILE, &*journal.lock());
    if let Err(e) = &saved {
        tracing::error!(error = %e, "could not save the journal: the next start scans");
    }
    match mounted.unmount() {
        Ok(()) => tracing::info!(mount = %mountpoint.display(), "unmounted"),
        Err(e) => tracing::error!(error = %e, mount = %mountpoint.display(), "unmount failed"),
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn plain_ws_to_a_remote_host_is_refused_unless_allowed() {
        let error = project_url("ws://192.0.2.1:7000/", false)
            .await
            .unwrap_err();
        assert!(matches!(error, DaemonError::Insecure(_)), "{error}");
        let url = project_url("ws://192.0.2.1:7000/", true).await.unwrap();
        assert_eq!(url.address, "192.0.2.1:7000");
    }

    #[tokio::test]
    async fn wss_to_a_remote_host_needs_no_permission() {
        let url = project_url("wss://project.example:7443/", false)
            .await
            .unwrap();
        let expected = ProjectUrl {
            address: "project.example:7443".into(),
            host: "project.example".into(),
            tls: true,
        };
        assert_eq!(url, expected);
    }

    #[tokio::test]
    async fn loopback_urls_resolve_to_host_and_port() {
        let url = project_url("ws://127.0.0.1:7000/", false).await.unwrap();
        assert_eq!(url.address, "127.0.0.1:7000");
    }

    #[tokio::test]
    async fn urls_that_are_not_ws_are_refused() {
        for url in ["http://127.0.0.1:1/", "127.0.0.1:1", ""] {
            let error = project_url(url, false).await.unwrap_err();
            assert!(matches!(error, DaemonError::Url { .. }), "{url}: {error}");
        }
    }

    #[test]
    fn an_empty_token_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "\n").unwrap();
        assert!(matches!(read_token(&path), Err(DaemonError::EmptyToken)));
        std::fs::write(&path, "s3cret\n").unwrap();
        assert_eq!(read_token(&path).unwrap(), b"s3cret");
    }
}
