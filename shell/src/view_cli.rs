//! `unionsync remote …` (project host: act on a connected compute
//! server's view) and `unionsync copy --from-project …` (compute host:
//! take the project's version now), over the daemons' control sockets.
//!
//! ```text
//! remote ls|rm|mv|rename ─► project daemon ─► connection of --compute ID ─► its view
//! copy --from-project    ─► compute daemon ─► the union: the lower's version copied up
//! ```

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context};
use clap::{Args, Subcommand};
use unionsync::control::{self, Request, Response, Side};
use unionsync_core::{Kind, RelPath, RemoteEntry, RemoteOp};

use crate::control_cli::{ask, ControlArgs};

#[derive(Subcommand)]
pub enum RemoteCommand {
    /// List a directory of the compute server's view (default: its root).
    ///
    /// Example: unionsync remote ls --compute 1 src
    Ls {
        #[command(flatten)]
        target: RemoteTarget,
        /// A path relative to the home.
        path: Option<OsString>,
    },
    /// Remove paths from the compute server's view (a lower path becomes a
    /// whiteout there); the next sync deletes them in the project too.
    ///
    /// Example: unionsync remote rm --compute 1 -r build
    Rm {
        #[command(flatten)]
        target: RemoteTarget,
        /// Remove directories and everything below them.
        #[arg(short, long)]
        recursive: bool,
        #[arg(required = true)]
        paths: Vec<OsString>,
    },
    /// Move paths within the view: into DEST when it is a directory (or
    /// when there are several), else renamed to DEST.
    ///
    /// Example: unionsync remote mv --compute 1 a.log b.log logs
    Mv {
        #[command(flatten)]
        target: RemoteTarget,
        /// SOURCE... DEST
        #[arg(required = true, num_args = 2..)]
        paths: Vec<OsString>,
    },
    /// Rename one path of the view (fails if TO exists).
    ///
    /// Example: unionsync remote rename --compute 1 results results-old
    Rename {
        #[command(flatten)]
        target: RemoteTarget,
        from: OsString,
        to: OsString,
    },
}

#[derive(Args)]
pub struct RemoteTarget {
    /// The compute server's id (its --id; see `unionsync status`).
    #[arg(long, value_name = "ID")]
    compute: u64,
    /// The project daemon's control socket. Default: its default socket.
    #[arg(long, value_name = "PATH")]
    control: Option<PathBuf>,
}

#[derive(Args)]
#[group(id = "direction", required = true, args = ["from_project", "to_project"])]
pub struct CopyArgs {
    /// Make PATHs show the project's current version now, whatever the
    /// sync state; what this side had there is kept in
    /// <upper>/.unionsync/replaced/<time>/.
    #[arg(long)]
    from_project: bool,
    /// Put PATHs (trees included) in the project now, whatever the sync
    /// state; a different project version is kept in the project's
    /// .unionsync/conflicts/<id>/<time>-copy/.
    #[arg(long, conflicts_with = "from_project")]
    to_project: bool,
    /// Paths in the mount (absolute, or relative to the current directory
    /// when it is in the mount, else to the mount's root).
    #[arg(required = true, value_name = "PATH")]
    paths: Vec<OsString>,
    #[command(flatten)]
    target: ControlArgs,
}

fn rel(path: &OsString) -> anyhow::Result<RelPath> {
    let trimmed = path
        .as_bytes()
        .strip_suffix(b"/")
        .unwrap_or(path.as_bytes());
    RelPath::new(trimmed.to_vec()).map_err(|e| {
        anyhow!(
            "{}: {e} (paths are relative to the home)",
            path.to_string_lossy()
        )
    })
}

/// Asks the project daemon for `op` on `target`'s view.
fn remote_op(target: &RemoteTarget, op: RemoteOp) -> anyhow::Result<Vec<RemoteEntry>> {
    let control = ControlArgs {
        control: Some(
            target
                .control
                .clone()
                .unwrap_or_else(|| control::default_socket(Side::Project)),
        ),
    };
    let request = Request::Remote {
        compute: target.compute,
        op,
    };
    match ask(&control, &request)? {
        (_, Response::Remote(entries)) => Ok(entries),
        (_, Response::Error(error)) => Err(anyhow!("{error}")),
        (path, other) => bail!("{}: unexpected answer {other:?}", path.display()),
    }
}

pub fn remote(command: RemoteCommand) -> anyhow::Result<()> {
    match command {
        RemoteCommand::Ls { target, path } => {
            // `.` (or nothing) is the root.
            let path = path
                .filter(|p| !matches!(p.as_bytes(), b"." | b"./" | b""))
                .as_ref()
                .map(rel)
                .transpose()?;
            for entry in remote_op(&target, RemoteOp::List { path })? {
                println!("{}", listing_line(&entry));
            }
        }
        RemoteCommand::Rm {
            target,
            recursive,
            paths,
        } => {
            for path in &paths {
                let path = rel(path)?;
                remote_op(&target, RemoteOp::Remove { path, recursive })?;
            }
        }
        RemoteCommand::Mv { target, mut paths } => {
            let dest = rel(&paths.pop().context("mv needs SOURCE... DEST")?)?;
            let into = paths.len() > 1 || is_dir(&target, &dest)?;
            for source in &paths {
                let from = rel(source)?;
                let to = if into {
                    dest.join(from.file_name())?
                } else {
                    dest.clone()
                };
                remote_op(&target, RemoteOp::Rename { from, to })?;
            }
        }
        RemoteCommand::Rename { target, from, to } => {
            let (from, to) = (rel(&from)?, rel(&to)?);
            remote_op(&target, RemoteOp::Rename { from, to })?;
        }
    }
    Ok(())
}

/// Is `path` a directory in the view (absent: no)?
fn is_dir(target: &RemoteTarget, path: &RelPath) -> anyhow::Result<bool> {
    let listing = remote_op(
        target,
        RemoteOp::List {
            path: path.parent(),
        },
    );
    Ok(listing?
        .iter()
        .any(|e| e.name == path.file_name() && e.meta.kind == Kind::Dir))
}

/// `drwxr-xr-x     4096 name` / `-rw-r--r--       12 name -> target`.
fn listing_line(entry: &RemoteEntry) -> String {
    let kind = match &entry.meta.kind {
        Kind::Dir => 'd',
        Kind::File => '-',
        Kind::Symlink { .. } => 'l',
    };
    let mut mode = String::new();
    for shift in [6, 3, 0] {
        let bits = (entry.meta.mode >> shift) & 7;
        mode.push(if bits & 4 != 0 { 'r' } else { '-' });
        mode.push(if bits & 2 != 0 { 'w' } else { '-' });
        mode.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    let name = String::from_utf8_lossy(&entry.name);
    let target = match &entry.meta.kind {
        Kind::Symlink { target } => format!(" -> {}", String::from_utf8_lossy(target)),
        _ => String::new(),
    };
    format!("{kind}{mode} {:>12} {name}{target}", entry.meta.size)
}

pub fn copy(args: CopyArgs) -> anyhow::Result<()> {
    let cwd = std::env::current_dir().context("the current directory")?;
    let paths = args.paths.into_iter().map(OsString::into_vec).collect();
    let cwd = cwd.into_os_string().into_vec();
    let (request, done) = if args.to_project {
        (
            Request::CopyToProject { paths, cwd },
            "copied to the project",
        )
    } else {
        (
            Request::CopyFromProject { paths, cwd },
            "now show the project's version",
        )
    };
    let control = ControlArgs {
        control: Some(
            args.target
                .control
                .unwrap_or_else(|| control::default_socket(Side::Compute)),
        ),
    };
    match ask(&control, &request)? {
        (_, Response::Copied(entries)) => {
            println!("{entries} entries {done}");
            Ok(())
        }
        (_, Response::Error(error)) => Err(anyhow!("{error}")),
        (path, other) => bail!("{}: unexpected answer {other:?}", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use unionsync_core::Meta;

    #[test]
    fn listing_lines_read_like_ls() {
        let file = RemoteEntry {
            name: b"notes".to_vec(),
            meta: Meta::file(0o640, 12, 0),
        };
        assert_eq!(listing_line(&file), "-rw-r-----           12 notes");
        let link = RemoteEntry {
            name: b"l".to_vec(),
            meta: Meta::symlink("notes", 0),
        };
        assert!(listing_line(&link).ends_with("l -> notes"));
    }
}
