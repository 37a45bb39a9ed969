//! The project's operations on a compute server's view (`unionsync remote
//! ls|rm|mv|rename`), performed through the union mount exactly as a user
//! would: copy-up, whiteouts and the change journal apply, and the next sync
//! carries the result to the project.
//!
//! ```text
//! project CLI ─► project daemon ─► Remote{op} ─► compute agent ─► perform(mountpoint, op)
//! ```

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use rustix::fs::FileType;
use unionsync_core::{RelPath, RemoteEntry, RemoteOp};

use crate::beneath::meta_of;

fn under(mountpoint: &Path, path: &RelPath) -> PathBuf {
    mountpoint.join(OsStr::from_bytes(path.as_bytes()))
}

/// Runs `op` against the view mounted at `mountpoint`; the error text says
/// which path and why.
pub fn perform(mountpoint: &Path, op: &RemoteOp) -> Result<Vec<RemoteEntry>, String> {
    let describe = |what: &str, path: &dyn std::fmt::Display| {
        let what = format!("{what} {path}");
        move |error: io::Error| format!("{what}: {error}")
    };
    match op {
        RemoteOp::List { path: None } => list(mountpoint).map_err(describe("listing", &"the root")),
        RemoteOp::List { path: Some(path) } => {
            list(&under(mountpoint, path)).map_err(describe("listing", path))
        }
        RemoteOp::Remove { path, recursive } => {
            let full = under(mountpoint, path);
            let stat =
                rustix::fs::lstat(&full).map_err(|e| describe("removing", path)(e.into()))?;
            let result = match FileType::from_raw_mode(stat.st_mode) {
                FileType::Directory if *recursive => std::fs::remove_dir_all(&full),
                FileType::Directory => std::fs::remove_dir(&full),
                _ => std::fs::remove_file(&full),
            };
            result
                .map(|()| Vec::new())
                .map_err(describe("removing", path))
        }
        RemoteOp::Rename { from, to } => {
            let (source, target) = (under(mountpoint, from), under(mountpoint, to));
            // Never replace what is there: the operator asked for a move,
            // not for a deletion of the target.
            if std::fs::symlink_metadata(&target).is_ok() {
                return Err(format!("renaming {from} to {to}: {to} exists"));
            }
            std::fs::rename(&source, &target)
                .map(|()| Vec::new())
                .map_err(describe("renaming", from))
        }
    }
}

/// The entries of directory `full`, or the entry itself when it is not one.
fn list(full: &Path) -> io::Result<Vec<RemoteEntry>> {
    let stat = rustix::fs::lstat(full)?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::Directory {
        let name = full
            .file_name()
            .map(|n| n.as_bytes().to_vec())
            .unwrap_or_default();
        return Ok(vec![entry(full, name, &stat)?]);
    }
    let mut out = Vec::new();
    for dirent in std::fs::read_dir(full)? {
        let dirent = dirent?;
        let path = dirent.path();
        // Gone since the listing: not an entry any more.
        let Ok(stat) = rustix::fs::lstat(&path) else {
            continue;
        };
        out.push(entry(&path, dirent.file_name().as_bytes().to_vec(), &stat)?);
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

fn entry(path: &Path, name: Vec<u8>, stat: &rustix::fs::Stat) -> io::Result<RemoteEntry> {
    let target = match FileType::from_raw_mode(stat.st_mode) {
        FileType::Symlink => Some(std::fs::read_link(path)?.into_os_string().into_vec()),
        _ => None,
    };
    Ok(RemoteEntry {
        name,
        meta: meta_of(stat, target),
    })
}
