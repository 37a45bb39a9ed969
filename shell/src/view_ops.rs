//! The project's operations on a compute server's view (`unionsync remote
//! ls|rm|mv|rename`), performed through the union mount exactly as a user
//! would: copy-up, whiteouts and the change journal apply, and the next sync
//! carries the result to the project.
//!
//! ```text
//! project CLI ─► project daemon ─► Remote{op} ─► compute agent ─► perform(mountpoint, op)
//! ```
//!
//! Paths resolve beneath the mountpoint with [`Root`]: the view holds
//! symlinks the project synced (`l -> /`), and `rm -r l/var` must never
//! reach the compute host's `/var`.

use std::io;

use rustix::fs::{FileType, RenameFlags};
use rustix::io::Errno;
use unionsync_core::{RelPath, RemoteEntry, RemoteOp};

use crate::beneath::{meta_of, Root};

/// Runs `op` against the view mounted at `mountpoint`; the error text says
/// which path and why.
pub fn perform(mountpoint: &std::path::Path, op: &RemoteOp) -> Result<Vec<RemoteEntry>, String> {
    let describe = |what: &str, path: &dyn std::fmt::Display| {
        let what = format!("{what} {path}");
        move |error: io::Error| format!("{what}: {error}")
    };
    let view = Root::open(mountpoint).map_err(describe("opening the view", &"the root"))?;
    match op {
        RemoteOp::List { path: None } => {
            list(&view, None).map_err(describe("listing", &"the root"))
        }
        RemoteOp::List { path: Some(path) } => {
            list(&view, Some(path)).map_err(describe("listing", path))
        }
        RemoteOp::Remove { path, recursive } => {
            let stat = view
                .lstat(path)
                .and_then(|stat| stat.ok_or_else(|| Errno::NOENT.into()))
                .map_err(describe("removing", path))?;
            let is_dir = FileType::from_raw_mode(stat.st_mode) == FileType::Directory;
            let result = if is_dir && *recursive {
                view.remove_tree(path)
            } else {
                view.remove(path, is_dir)
            };
            result
                .map(|()| Vec::new())
                .map_err(describe("removing", path))
        }
        // Never replace what is there: the operator asked for a move, not
        // for a deletion of the target.
        RemoteOp::Rename { from, to } => match view.rename(from, to, RenameFlags::NOREPLACE) {
            Ok(()) => Ok(Vec::new()),
            Err(e) if Errno::from_io_error(&e) == Some(Errno::EXIST) => {
                Err(format!("renaming {from} to {to}: {to} exists"))
            }
            Err(e) => Err(describe("renaming", from)(e)),
        },
    }
}

/// The entries of directory `dir` (`None`: the root), or the entry itself
/// when it is not one.
fn list(view: &Root, dir: Option<&RelPath>) -> io::Result<Vec<RemoteEntry>> {
    if let Some(path) = dir {
        let stat = view.lstat(path)?.ok_or(Errno::NOENT)?;
        if FileType::from_raw_mode(stat.st_mode) != FileType::Directory {
            return Ok(vec![entry(view, path, &stat)?]);
        }
    }
    let mut out = Vec::new();
    for name in view.names(dir)? {
        let path = match dir {
            Some(dir) => dir.join(&name),
            None => RelPath::new(name),
        }
        .map_err(io::Error::other)?;
        // Gone since the listing: not an entry any more.
        let Some(stat) = view.lstat(&path)? else {
            continue;
        };
        out.push(entry(view, &path, &stat)?);
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

fn entry(view: &Root, path: &RelPath, stat: &rustix::fs::Stat) -> io::Result<RemoteEntry> {
    let target = match FileType::from_raw_mode(stat.st_mode) {
        FileType::Symlink => Some(view.read_link(path)?),
        _ => None,
    };
    Ok(RemoteEntry {
        name: path.file_name().to_vec(),
        meta: meta_of(stat, target),
    })
}
