//! `unionsync status | sync | clear-error`: ask the daemon running on this
//! machine over its control socket ([`unionsync::control`]).
//!
//! ```text
//! --control PATH ─┐
//! (none) ─ compute.sock, then project.sock ─► connect ─► one request ─► print the response
//! sync --wait: the request on one connection; on a terminal, a progress
//!              line on stderr from polling status on others
//! ```

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::Args;
use unionsync::control::{
    self, CallError, ComputeStatusView, ProjectStatusView, Request, Response, Side, StatusView,
    SyncSummary,
};
use unionsync_core::Phase;

#[derive(Args)]
pub struct ControlArgs {
    /// The daemon's control socket (what its --control was). Default: the
    /// compute daemon's, then the project daemon's:
    /// $XDG_RUNTIME_DIR/unionsync/{compute,project}.sock, or
    /// /tmp/unionsync-<uid>/… without XDG_RUNTIME_DIR.
    #[arg(long, value_name = "PATH")]
    pub control: Option<PathBuf>,
}

#[derive(Args)]
pub struct StatusArgs {
    /// Print the status as one JSON object ("side": "compute" or
    /// "project") instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    target: ControlArgs,
}

#[derive(Args)]
pub struct SyncArgs {
    /// Return only once a sync that started after this command has
    /// finished; exit non-zero if it failed. Shows progress on stderr when
    /// that is a terminal.
    #[arg(long)]
    wait: bool,
    #[command(flatten)]
    target: ControlArgs,
}

/// The daemon that answers: the given socket, else the compute daemon's,
/// else the project daemon's.
fn daemon(target: &ControlArgs) -> anyhow::Result<(PathBuf, std::os::unix::net::UnixStream)> {
    let candidates = match &target.control {
        Some(path) => vec![path.clone()],
        None => vec![
            control::default_socket(Side::Compute),
            control::default_socket(Side::Project),
        ],
    };
    let mut tried = Vec::new();
    for path in candidates {
        match control::connect(&path) {
            Ok(stream) => return Ok((path, stream)),
            Err(CallError::NoDaemon { cause, .. }) => {
                let why = if cause.kind() == std::io::ErrorKind::NotFound {
                    "no socket".to_string()
                } else {
                    "nothing listens".to_string()
                };
                tried.push(format!("{} ({why})", path.display()));
            }
            Err(error) => return Err(error.into()),
        }
    }
    bail!(
        "no unionsync daemon is running here: tried {}. Start one (unionsync compute run|mount, \
         unionsync project serve), or pass the --control PATH it was given.",
        tried.join(", ")
    )
}

pub fn ask(target: &ControlArgs, request: &Request) -> anyhow::Result<(PathBuf, Response)> {
    let (path, stream) = daemon(target)?;
    let response = control::call_on(&path, stream, request)?;
    Ok((path, response))
}

pub fn status(args: StatusArgs) -> anyhow::Result<()> {
    let (path, response) = ask(&args.target, &Request::Status)?;
    let view = match response {
        Response::Status(view) => view,
        Response::Error(error) => bail!("{}: {error}", path.display()),
        other => bail!("{}: unexpected answer {other:?}", path.display()),
    };
    let mut out = std::io::stdout().lock();
    if args.json {
        let line = control::encode(&view).context("encoding the status")?;
        out.write_all(&line)?;
    } else {
        let now = control::unix_now();
        let text = match &view {
            StatusView::Compute(view) => compute_text(view, now),
            StatusView::Project(view) => project_text(view, now),
        };
        out.write_all(text.as_bytes())?;
    }
    out.flush()?;
    Ok(())
}

pub fn sync(args: SyncArgs) -> anyhow::Result<()> {
    let request = Request::SyncNow { wait: args.wait };
    if !args.wait {
        let (path, response) = ask(&args.target, &request)?;
        return match response {
            Response::Ok => {
                println!("sync requested (see unionsync status)");
                Ok(())
            }
            Response::Error(error) => Err(anyhow!("{error}")),
            other => bail!("{}: unexpected answer {other:?}", path.display()),
        };
    }
    let (path, stream) = daemon(&args.target)?;
    let call = {
        let path = path.clone();
        std::thread::spawn(move || control::call_on(&path, stream, &request))
    };
    if std::io::stderr().is_terminal() {
        show_progress(&path, &call);
    }
    let response = call
        .join()
        .map_err(|_| anyhow!("the request thread panicked"))??;
    match response {
        Response::SyncDone(summary) => {
            println!("{}", done_text(&summary));
            Ok(())
        }
        Response::Error(error) => Err(anyhow!("{error}")),
        other => bail!("{}: unexpected answer {other:?}", path.display()),
    }
}

pub fn clear_error(args: ControlArgs) -> anyhow::Result<()> {
    let before = match ask(&args, &Request::Status)? {
        (_, Response::Status(StatusView::Compute(view))) => Some(view),
        _ => None,
    };
    let (path, response) = ask(&args, &Request::ClearError)?;
    match response {
        Response::Ok => {
            match before {
                Some(view) if view.paused => println!(
                    "error cleared: syncing resumes (it was paused after {})",
                    plural(view.failures_in_a_row.into(), "failure")
                ),
                _ => println!("error cleared (syncing was not paused)"),
            }
            Ok(())
        }
        Response::Error(error) => Err(anyhow!("{error}")),
        other => bail!("{}: unexpected answer {other:?}", path.display()),
    }
}

/// A spinner line on stderr, from the daemon's status, until `call` ends.
fn show_progress<T>(path: &Path, call: &std::thread::JoinHandle<T>) {
    const FRAMES: [char; 4] = ['|', '/', '-', '\\'];
    let mut stderr = std::io::stderr();
    let mut frame = 0;
    let mut text = String::from("asking for a sync");
    let mut polled = std::time::Instant::now() - Duration::from_secs(1);
    while !call.is_finished() {
        if polled.elapsed() >= Duration::from_millis(250) {
            polled = std::time::Instant::now();
            if let Ok(Response::Status(StatusView::Compute(view))) =
                control::call(path, &Request::Status)
            {
                text = progress_text(&view);
            }
        }
        let _ = write!(stderr, "\r\x1b[2K{} {text}", FRAMES[frame % FRAMES.len()]);
        let _ = stderr.flush();
        frame += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = write!(stderr, "\r\x1b[2K");
    let _ = stderr.flush();
}

fn progress_text(view: &ComputeStatusView) -> String {
    match (&view.syncing, view.phase) {
        (Some(progress), phase) => {
            let mut text = format!("sync {}: {}", progress.sync, phase_name(phase));
            if progress.files_total > 0 {
                text += &format!(
                    ", {} of {} files",
                    progress.files_done, progress.files_total
                );
            }
            if progress.bytes_done > 0 {
                text += &format!(", {} received", bytes(progress.bytes_done));
            }
            text
        }
        (None, Phase::Disconnected) => format!("waiting for the project at {}", view.project),
        (None, Phase::Handshake) => format!("connecting to {}", view.project),
        (None, _) => "waiting for the sync to start".into(),
    }
}

fn done_text(summary: &SyncSummary) -> String {
    let mut text = format!(
        "sync {} done: pushed {}, pulled {}, conflicts {} (epoch {})",
        summary.sync, summary.pushed, summary.pulled, summary.conflicts, summary.epoch
    );
    if summary.deferred > 0 {
        text += &format!(
            "; {} changed while syncing, left for the next sync",
            summary.deferred
        );
    }
    text
}

fn phase_name(phase: Phase) -> &'static str {
    match phase {
        Phase::Disconnected => "disconnected",
        Phase::Handshake => "connecting",
        Phase::Idle => "idle",
        Phase::Collecting => "collecting changes",
        Phase::Planning => "planning",
        Phase::Hashing => "hashing",
        Phase::Sending => "sending",
        Phase::Receiving => "receiving",
        Phase::Applying => "applying",
        Phase::Committing => "committing",
    }
}

/// "3 s", "4 min", "2 h 5 min", "3 d 4 h".
fn span(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs} s"),
        60..3600 => format!("{} min", secs / 60),
        3600..86400 => format!("{} h {} min", secs / 3600, secs % 3600 / 60),
        _ => format!("{} d {} h", secs / 86400, secs % 86400 / 3600),
    }
}

fn plural(n: u64, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

fn ago(at: u64, now: u64) -> String {
    format!("{} ago", span(now.saturating_sub(at)))
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// `label  value` lines, the values aligned.
fn aligned(rows: &[(&str, String)]) -> String {
    let width = rows.iter().map(|(label, _)| label.len()).max().unwrap_or(0);
    rows.iter()
        .map(|(label, value)| format!("  {label:<width$}  {value}\n"))
        .collect()
}

fn compute_text(view: &ComputeStatusView, now: u64) -> String {
    let phase = match (&view.syncing, view.phase) {
        (Some(_), _) => progress_text(view),
        (None, Phase::Disconnected) => "disconnected (retrying)".into(),
        (None, phase) => phase_name(phase).into(),
    };
    let last_sync = match &view.last_sync {
        Some(last) => format!(
            "{}, pushed {}, pulled {}, conflicts {} (sync {}, epoch {})",
            ago(last.finished_at, now),
            last.pushed,
            last.pulled,
            last.conflicts,
            last.sync,
            last.epoch
        ),
        None => "none since the daemon started".into(),
    };
    let next_sync = match (view.paused, &view.syncing, view.next_sync_in_secs) {
        (true, _, _) => "paused".into(),
        (_, Some(_), _) => "after this one".into(),
        (_, None, Some(secs)) => format!("in {}", span(secs.ceil() as u64)),
        (_, None, None) => "when connected".into(),
    };
    let paused = if view.paused {
        "yes: run `unionsync clear-error` to resume".into()
    } else {
        "no".into()
    };
    let totals = &view.totals;
    let rows = [
        ("phase", phase),
        ("last sync", last_sync),
        ("next sync", next_sync),
        ("failures in a row", view.failures_in_a_row.to_string()),
        (
            "last error",
            view.last_error.clone().unwrap_or_else(|| "none".into()),
        ),
        ("paused", paused),
        (
            "since start",
            format!(
                "{} done, {} failed; pushed {}, pulled {}, conflicts {}",
                plural(totals.syncs, "sync"),
                totals.failed,
                totals.pushed,
                totals.pulled,
                totals.conflicts
            ),
        ),
    ];
    format!(
        "compute server {} syncing with {}\n{}",
        view.compute_id,
        view.project,
        aligned(&rows)
    )
}

fn project_text(view: &ProjectStatusView, now: u64) -> String {
    let mut text = format!("project server {}, home {}\n", view.url, view.home);
    if view.computes.is_empty() {
        text += "  no compute server connected\n";
        return text;
    }
    let count = view.computes.len() as u64;
    text += &format!("  {} connected\n", plural(count, "compute server"));
    let mut table = vec![[
        "ID",
        "PEER",
        "CONNECTED",
        "LAST SYNC",
        "EPOCH",
        "PUSHED",
        "PULLED",
        "CONFLICTS",
    ]
    .map(String::from)];
    for c in &view.computes {
        let last = match (c.last_sync, c.last_sync_at) {
            (Some(sync), Some(at)) => format!("sync {sync}, {}", ago(at, now)),
            _ => "none yet".into(),
        };
        table.push([
            c.compute_id.to_string(),
            c.peer.clone(),
            ago(c.connected_since, now),
            last,
            c.epoch.map_or("-".into(), |e| e.to_string()),
            c.pushed.to_string(),
            c.pulled.to_string(),
            c.conflicts.to_string(),
        ]);
    }
    let widths: Vec<usize> = (0..table[0].len())
        .map(|i| {
            table
                .iter()
                .map(|row| row[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in &table {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        text += &format!("  {}\n", cells.join("  ").trim_end());
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_read_naturally() {
        assert_eq!(span(3), "3 s");
        assert_eq!(span(125), "2 min");
        assert_eq!(span(3600 + 5 * 60), "1 h 5 min");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
    }
}
