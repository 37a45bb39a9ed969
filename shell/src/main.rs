//! The `unionsync` command: the two daemons, the commands that talk to
//! them over their control sockets, and the demo.
//!
//! ```text
//! unionsync project serve --home DIR [--listen ADDR] [--token-file F] [--control SOCK]
//! unionsync compute mount --mount DIR --lower DIR --upper DIR --project URL [--id N] [--control SOCK]
//! unionsync compute run --upper DIR --whiteouts DIR --project URL [--id N]
//! unionsync status [--json] | sync [--wait] | clear-error | copy --to-project|--from-project PATH…
//! unionsync remote ls|rm|mv|rename --compute ID …        (on the project host)
//! unionsync demo [DIR] [--duration SECS] [--no-mount] | --plan
//! any command: --config FILE (TOML; keys are the long options)
//! ```

mod config;
mod control_cli;
mod demo;
mod demo_plan;
mod view_cli;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use unionsync::compute_disk::ComputeDirs;
use unionsync::control;
use unionsync::daemon::{self, ComputeOptions, ProjectOptions};
use unionsync_core::{RelPath, Timing};

/// A disk-fast, copy-on-write view of a remote project home, synced both
/// ways; the project wins conflicts and the other side's data is kept.
#[derive(Parser)]
#[command(name = "unionsync", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Read options from this TOML file; its keys are the command's long
    /// options, e.g. `home = "/srv/project"`, `local_only = ["scratch",
    /// ".cache"]`, `allow_insecure = true`. Options after --config override
    /// the file's.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
}

/// Parses the command line, `--config` files expanded, each option
/// overriding earlier occurrences of itself (so later flags beat the file).
fn parse_cli() -> anyhow::Result<Cli> {
    use clap::{CommandFactory, FromArgMatches};
    fn override_self(command: clap::Command) -> clap::Command {
        let names: Vec<String> = command
            .get_subcommands()
            .map(|s| s.get_name().to_string())
            .collect();
        names
            .iter()
            .fold(command.args_override_self(true), |c, name| {
                c.mut_subcommand(name, override_self)
            })
    }
    let given: Vec<_> = std::env::args_os().collect();
    let from_file = given
        .iter()
        .any(|a| a.to_string_lossy().starts_with("--config"));
    let args = config::expand(given)?;
    let matches = match override_self(Cli::command()).try_get_matches_from(args) {
        Ok(matches) => matches,
        Err(error) if from_file && error.kind() == clap::error::ErrorKind::UnknownArgument => {
            eprintln!("note: --config file keys are the command's long options");
            error.exit()
        }
        Err(error) => error.exit(),
    };
    Cli::from_arg_matches(&matches).map_err(|e| e.exit())
}

#[derive(Subcommand)]
enum Command {
    /// Run both sides on this machine: a project server on a sample home
    /// and a compute server with the union mounted over it, syncing every
    /// few seconds. Prints what to try; Ctrl-C stops both and unmounts.
    ///
    /// Example: unionsync demo /tmp/try-unionsync
    Demo(DemoArgs),
    /// The project side: serve the home directory to compute servers.
    #[command(subcommand)]
    Project(ProjectCommand),
    /// The compute side: sync a local upper layer with the project.
    #[command(subcommand)]
    Compute(ComputeCommand),
    /// Show what the daemon on this machine is doing.
    ///
    /// Compute side: phase and progress, the last sync (when, files
    /// pushed/pulled, conflicts), the next one, failures in a row, the last
    /// error, whether syncing is paused. Project side: the compute servers
    /// connected now. Exits non-zero when no daemon answers.
    ///
    /// Example: unionsync status --json
    Status(control_cli::StatusArgs),
    /// Sync now (on the compute side).
    ///
    /// Also while syncing is paused after failures: a sync that succeeds
    /// ends the pause.
    ///
    /// Example: unionsync sync --wait && make test
    Sync(control_cli::SyncArgs),
    /// Resume syncing after repeated failures paused it.
    ///
    /// The error is in `unionsync status`, and in <state>/last-error
    /// (default <upper>/.unionsync/state/last-error) until a sync succeeds.
    ///
    /// Example: unionsync clear-error
    ClearError(control_cli::ControlArgs),
    /// On the compute host: copy now, whatever the sync state, either way.
    ///
    /// Example: unionsync copy --to-project ~/work/results/run-12
    Copy(view_cli::CopyArgs),
    /// On the project host: act on a connected compute server's view
    /// (journaled and synced there like its user's own changes).
    ///
    /// Example: unionsync remote ls --compute 1
    #[command(subcommand)]
    Remote(view_cli::RemoteCommand),
}

#[derive(Args)]
struct DemoArgs {
    /// Where to put the project home, the compute side and the mount (kept
    /// afterwards). Default: a temporary directory, removed at the end.
    dir: Option<PathBuf>,
    /// Stop after this many seconds instead of waiting for Ctrl-C.
    #[arg(long, value_name = "SECS")]
    duration: Option<f64>,
    /// Sync a plain directory instead of mounting (no FUSE needed).
    #[arg(long)]
    no_mount: bool,
    /// Instead: print what one sync decides for a scripted set of edits on
    /// both sides (conflicts, deletes against edits, type changes, odd
    /// filenames), without running anything.
    #[arg(long, conflicts_with_all = ["dir", "duration", "no_mount"])]
    plan: bool,
}

#[derive(Subcommand)]
enum ProjectCommand {
    /// Serve the project home: each compute server that presents the token
    /// syncs against it, with its own base under <home>/.unionsync/bases.
    /// Conflict losers land in <home>/.unionsync/conflicts/<id>/<time>/.
    ///
    /// Example: unionsync project serve --home ~/project --listen 127.0.0.1:7171 --token-file ~/.config/unionsync/token
    Serve(ServeArgs),
}

#[derive(Subcommand)]
enum ComputeCommand {
    /// Sync an upper directory and its whiteouts with the project, without
    /// a mount (for tests and debugging): changes are found by scanning.
    ///
    /// Example: unionsync compute run --upper /var/lib/unionsync/upper --whiteouts /var/lib/unionsync/whiteouts --project ws://127.0.0.1:7171/ --id 1
    Run(RunArgs),
    /// Mount the union (local upper over the project home mounted read-only
    /// at --lower) at --mount and sync it from its change journal. Unmounts
    /// on Ctrl-C or SIGTERM.
    ///
    /// Example: unionsync compute mount --mount ~/work --lower /mnt/project --upper /var/lib/unionsync/upper --project ws://127.0.0.1:7171/ --id 1
    Mount(MountArgs),
}

#[derive(Args)]
struct TokenArgs {
    /// File holding the shared secret (trailing newline ignored). Create one
    /// with: head -c 32 /dev/urandom | base64 > FILE; chmod 600 FILE.
    /// Default: $UNIONSYNC_TOKEN_FILE, else ~/.config/unionsync/token.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Allow plain ws:// beyond loopback (the token then crosses the
    /// network unencrypted).
    #[arg(long)]
    allow_insecure: bool,
}

#[derive(Args)]
struct ServeArgs {
    /// The project home directory (the truth).
    #[arg(long, value_name = "DIR")]
    home: PathBuf,
    /// Address to listen on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7171")]
    listen: SocketAddr,
    /// Serve wss:// with this PEM certificate chain (with --tls-key); then
    /// any listen address is allowed.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// The control socket for `unionsync status`. Default:
    /// $XDG_RUNTIME_DIR/unionsync/project.sock, or
    /// /tmp/unionsync-<uid>/project.sock without XDG_RUNTIME_DIR.
    #[arg(long, value_name = "PATH")]
    control: Option<PathBuf>,
    #[command(flatten)]
    token: TokenArgs,
}

#[derive(Args)]
struct RunArgs {
    /// The upper directory: this side's files.
    #[arg(long, value_name = "DIR")]
    upper: PathBuf,
    /// Where deletions of project paths are recorded (<dir>/<parent>/.wh.<name>).
    #[arg(long, value_name = "DIR")]
    whiteouts: PathBuf,
    /// The project home as mounted here, read-only (sshfs, NFS…), if any:
    /// tells the scan what a deletion or a first edit replaced.
    #[arg(long, value_name = "DIR")]
    lower: Option<PathBuf>,
    #[command(flatten)]
    agent: AgentArgs,
}

#[derive(Args)]
struct MountArgs {
    /// Where to mount the union (an empty directory): work here.
    #[arg(long, value_name = "DIR")]
    mount: PathBuf,
    /// The project home as mounted on this machine (sshfs, NFS…): the
    /// read-only lower layer.
    #[arg(long, value_name = "DIR")]
    lower: PathBuf,
    /// The upper directory on local disk: everything written through the
    /// mount lands here.
    #[arg(long, value_name = "DIR")]
    upper: PathBuf,
    /// Where deletions of lower paths are recorded. Default:
    /// <upper>/.unionsync/whiteouts.
    #[arg(long, value_name = "DIR")]
    whiteouts: Option<PathBuf>,
    /// Paths (relative to the home) that stay on this machine: served from
    /// the upper, never synced, never looked up in the project. Empty to
    /// sync everything.
    #[arg(
        long,
        value_name = "PATHS",
        value_delimiter = ',',
        default_value = "scratch,.cache,.local"
    )]
    local_only: Vec<String>,
    #[command(flatten)]
    agent: AgentArgs,
}

/// What the compute agent needs, mounted or not.
#[derive(Args)]
struct AgentArgs {
    /// The project server: ws://127.0.0.1:7171/ on loopback, wss://HOST:PORT/
    /// across a network.
    #[arg(long, value_name = "URL")]
    project: String,
    /// For wss://: trust the certificates in this PEM file (e.g. the
    /// project's self-signed one) instead of the public web roots.
    #[arg(long, value_name = "FILE")]
    ca_cert: Option<PathBuf>,
    /// This compute server's id: each id has its own base on the project.
    #[arg(long, value_name = "N", default_value_t = 1)]
    id: u64,
    /// Where the committed state lives. Default: <upper>/.unionsync/state.
    #[arg(long, value_name = "DIR")]
    state: Option<PathBuf>,
    /// Shortest and longest time between syncs, in seconds (the interval
    /// adapts between them: short after activity, longer when idle).
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    interval_min: f64,
    #[arg(long, value_name = "SECS", default_value_t = 30.0)]
    interval_max: f64,
    /// The control socket for `unionsync status`, `sync` and `clear-error`
    /// (one compute daemon per socket: give a second daemon its own).
    /// Default: $XDG_RUNTIME_DIR/unionsync/compute.sock, or
    /// /tmp/unionsync-<uid>/compute.sock without XDG_RUNTIME_DIR.
    #[arg(long, value_name = "PATH")]
    control: Option<PathBuf>,
    #[command(flatten)]
    token: TokenArgs,
}

impl AgentArgs {
    fn control_socket(&self) -> PathBuf {
        self.control
            .clone()
            .unwrap_or_else(|| control::default_socket(control::Side::Compute))
    }

    fn options(self, mut dirs: ComputeDirs) -> anyhow::Result<ComputeOptions> {
        if let Some(state) = self.state {
            dirs.state = state;
        }
        Ok(ComputeOptions {
            dirs,
            project: self.project,
            token: token(&self.token)?,
            compute_id: self.id,
            allow_insecure: self.token.allow_insecure,
            timing: Timing {
                min: seconds(self.interval_min, "--interval-min")?,
                max: seconds(self.interval_max, "--interval-max")?,
                ..Timing::default()
            },
            step_timeout: STEP_TIMEOUT,
            ca_cert: self.ca_cert,
        })
    }
}

/// How long a peer may make no progress within a sync.
const STEP_TIMEOUT: Duration = Duration::from_secs(60);

fn token(args: &TokenArgs) -> anyhow::Result<Vec<u8>> {
    let path = match &args.token_file {
        Some(path) => path.clone(),
        None => match std::env::var_os("UNIONSYNC_TOKEN_FILE") {
            Some(path) => PathBuf::from(path),
            None => Path::new(&std::env::var_os("HOME").context("HOME is not set")?)
                .join(".config/unionsync/token"),
        },
    };
    daemon::read_token(&path).with_context(|| {
        format!(
            "a token is required: pass --token-file (tried {})",
            path.display()
        )
    })
}

fn seconds(value: f64, what: &str) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(value).with_context(|| format!("{what}: {value} is not a duration"))
}

/// Completes on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler (the runtime has signals enabled)");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn run_local<F: std::future::Future>(future: F) -> anyhow::Result<F::Output> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    Ok(tokio::task::LocalSet::new().block_on(&runtime, future))
}

fn init_logging() {
    init_logging_default("info")
}

/// Logs to stderr at `default` level unless `RUST_LOG` says otherwise.
fn init_logging_default(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn main() -> anyhow::Result<()> {
    match parse_cli()?.command {
        Command::Demo(args) if args.plan => demo_plan::run(&mut std::io::stdout().lock()),
        Command::Demo(args) => {
            init_logging_default("warn");
            demo::run(demo::DemoOptions {
                dir: args.dir,
                duration: args
                    .duration
                    .map(|d| seconds(d, "--duration"))
                    .transpose()?,
                no_mount: args.no_mount,
            })
        }
        Command::Project(ProjectCommand::Serve(args)) => {
            init_logging();
            let options = ProjectOptions {
                home: args.home,
                listen: args.listen,
                token: token(&args.token)?,
                allow_insecure: args.token.allow_insecure,
                step_timeout: STEP_TIMEOUT,
                tls: args.tls_cert.zip(args.tls_key),
            };
            let control = args
                .control
                .unwrap_or_else(|| control::default_socket(control::Side::Project));
            let run =
                daemon::run_project_server_with_control(options, Some(&control), shutdown_signal());
            run_local(run)??;
            Ok(())
        }
        Command::Compute(ComputeCommand::Run(args)) => {
            init_logging();
            let mut dirs = ComputeDirs::new(&args.upper, &args.whiteouts);
            dirs.lower = args.lower;
            let control = args.agent.control_socket();
            let options = args.agent.options(dirs)?;
            let (status, _) = tokio::sync::watch::channel(Default::default());
            let run = daemon::run_compute_with_control(
                options,
                Some(&control),
                shutdown_signal(),
                status,
            );
            run_local(run)??;
            Ok(())
        }
        Command::Compute(ComputeCommand::Mount(args)) => {
            init_logging();
            let whiteouts = args
                .whiteouts
                .unwrap_or_else(|| args.upper.join(".unionsync/whiteouts"));
            let mut dirs = ComputeDirs::new(&args.upper, &whiteouts);
            dirs.lower = Some(args.lower);
            dirs.local_only = args
                .local_only
                .iter()
                .filter(|p| !p.is_empty())
                .map(|p| {
                    RelPath::new(p.trim_end_matches('/'))
                        .with_context(|| format!("--local-only {p:?} is not a relative path"))
                })
                .collect::<anyhow::Result<_>>()?;
            let control = args.agent.control_socket();
            let options = args.agent.options(dirs)?;
            let (status, _) = tokio::sync::watch::channel(Default::default());
            let run = daemon::run_compute_mount_with_control(
                options,
                args.mount,
                Some(&control),
                shutdown_signal(),
                status,
            );
            run_local(run)??;
            Ok(())
        }
        Command::Status(args) => control_cli::status(args),
        Command::Sync(args) => control_cli::sync(args),
        Command::ClearError(args) => control_cli::clear_error(args),
        Command::Copy(args) => view_cli::copy(args),
        Command::Remote(command) => view_cli::remote(command),
    }
}
