//! [`ProjectStore`] over the real home directory.
//!
//! ```text
//! <home>/                         the user's files (the truth)
//! <home>/.unionsync/bases/<id>    each compute server's base (crash-safe file)
//! <home>/.unionsync/staging/<id>/ content received for the sync in flight
//! <home>/.unionsync/staging/<id>-copy/ content of `copy --to-project`
//! <home>/.unionsync/conflicts/<id>/<stamp>/<path>   every losing version
//! ```
//!
//! It reads only the paths the session asks about (what the compute side
//! reported plus what the base holds), never follows a symlink and never
//! leaves the home ([`Root`]).

use std::collections::BTreeMap;
use std::io;
use std::rc::Rc;

use serde::{Deserialize, Serialize};
use unionsync_core::{conflict_path, BaseEntry, ContentHash, Kind, Meta, ProjectOp, RelPath};

use crate::beneath::{Root, ShippedFile};
use crate::persist;
use crate::staging::{deferral, finish_dirs, still_matches, Deferred, Staging, StepResult};
use crate::store::{Applied, ProjectStore, StoreResult};

#[derive(Serialize, Deserialize)]
struct BaseFile {
    epoch: u64,
    entries: Vec<(RelPath, BaseEntry)>,
}

fn reserved(path: &str) -> RelPath {
    RelPath::new(path).expect("a constant reserved path is valid")
}

/// One per connection (cloning shares the home and gives fresh staging).
pub struct DiskProjectStore {
    home: Rc<Root>,
    staging: BTreeMap<u64, Staging>,
    /// For `copy --to-project`, apart from the sync's staging (which a
    /// sync clears when it applies).
    copies: Option<Staging>,
}

impl DiskProjectStore {
    pub fn open(home: &std::path::Path) -> io::Result<DiskProjectStore> {
        Ok(DiskProjectStore {
            home: Rc::new(Root::open(home)?),
            staging: BTreeMap::new(),
            copies: None,
        })
    }

    fn bases(&self) -> io::Result<Root> {
        self.home.subdir(&reserved(".unionsync/bases"), true)
    }

    fn staging(&mut self, compute_id: u64) -> io::Result<&mut Staging> {
        if !self.staging.contains_key(&compute_id) {
            let dir = reserved(&format!(".unionsync/staging/{compute_id}"));
            let staging = Staging::new(&self.home, &dir)?;
            self.staging.insert(compute_id, staging);
        }
        Ok(self.staging.get_mut(&compute_id).expect("inserted above"))
    }

    /// Puts a `copy --to-project` entry, staged in `copies` when a file, at
    /// `path`: what the project has there, if different, first goes to
    /// `.unionsync/conflicts/<id>/<stamp>-copy/<path>`.
    fn put_copy(&mut self, compute_id: u64, path: &RelPath, meta: &Meta) -> io::Result<()> {
        let home = self.home.clone();
        let copies = self
            .copies
            .as_mut()
            .ok_or_else(|| io::Error::other("nothing staged"))?;
        let mut now = home.stat(path)?;
        let same = match (&now, &meta.kind) {
            (Some(now), Kind::Dir) => now.is_dir(),
            (Some(now), Kind::File) if now.kind == Kind::File => {
                copies.staged_hash(path).is_some() && home.hash(path)? == copies.staged_hash(path)
            }
            (Some(now), kind) => &now.kind == kind,
            (None, _) => false,
        };
        if now.is_some() && !same {
            let stamp = format!("{}-copy", conflict_stamp_now());
            let to = conflict_path(compute_id, &stamp, path)
                .ok_or_else(|| io::Error::other(format!("{path}: conflict path too long")))?;
            if let Some(parent) = to.parent() {
                home.mkdir_all(&parent)?;
            }
            home.rename(path, &to, rustix::fs::RenameFlags::NOREPLACE)?;
            tracing::info!(compute_id, %path, kept = %to, "copy --to-project: the project's version kept");
            now = None;
        }
        if let Some(parent) = path.parent() {
            home.mkdir_all(&parent)?;
        }
        let mut dirs = Vec::new();
        match copies.install(&home, path, path, meta, now.as_ref(), &mut dirs)? {
            Ok(()) => finish_dirs(&home, &mut dirs),
            Err(Deferred(why)) => Err(io::Error::other(why)),
        }
    }

    fn load(&self, compute_id: u64) -> io::Result<Option<BaseFile>> {
        match persist::load::<BaseFile>(&self.bases()?, &compute_id.to_string()) {
            // A base that cannot be read is a lost base: the session then
            // runs a full reconcile, where differing content is a conflict.
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                tracing::error!(compute_id, error = %e, "unreadable base: full reconcile");
                Ok(None)
            }
            other => other,
        }
    }

    fn step(
        &mut self,
        compute_id: u64,
        stamp: &str,
        op: &ProjectOp,
        dirs: &mut Vec<(RelPath, u32)>,
    ) -> StepResult {
        let home = self.home.clone();
        match op {
            ProjectOp::PreserveConflict { path, compute } => {
                let Some(to) = conflict_path(compute_id, stamp, path) else {
                    return Ok(Err(Deferred(format!("{path}: conflict path too long"))));
                };
                if let Some(parent) = to.parent() {
                    home.mkdir_all(&parent)?;
                }
                self.staging(compute_id)?
                    .install(&home, path, &to, compute, None, dirs)
            }
            ProjectOp::Remove { path, expect } => {
                let now = home.stat(path)?;
                if !still_matches(now.as_ref(), Some(expect)) {
                    return Ok(Err(Deferred(format!("{path}: changed since the plan"))));
                }
                match home.remove(path, expect.is_dir()) {
                    Ok(()) => Ok(Ok(())),
                    Err(e) => deferral(e, path),
                }
            }
            ProjectOp::Create { path, meta } => self
                .staging(compute_id)?
                .install(&home, path, path, meta, None, dirs),
            ProjectOp::Write { path, meta, expect } => {
                self.staging(compute_id)?
                    .install(&home, path, path, meta, Some(expect), dirs)
            }
            ProjectOp::SetMode { path, mode, expect } => {
                let now = home.stat(path)?;
                if !still_matches(now.as_ref(), Some(expect)) {
                    return Ok(Err(Deferred(format!("{path}: changed since the plan"))));
                }
                match home.chmod(path, *mode) {
                    Ok(()) => Ok(Ok(())),
                    Err(e) => deferral(e, path),
                }
            }
        }
    }
}

impl Clone for DiskProjectStore {
    fn clone(&self) -> DiskProjectStore {
        DiskProjectStore {
            home: self.home.clone(),
            staging: BTreeMap::new(),
            copies: None,
        }
    }
}

/// Names a sync's conflicts folder: readable wall-clock time (only a name,
/// never compared) plus the sync number, so two syncs never share one.
fn conflict_stamp(sync: u64) -> String {
    format!("{}-sync{sync}", conflict_stamp_now())
}

fn conflict_stamp_now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

impl ProjectStore for DiskProjectStore {
    type Reader = ShippedFile;

    async fn load_base(
        &mut self,
        compute_id: u64,
    ) -> StoreResult<(u64, BTreeMap<RelPath, BaseEntry>)> {
        self.staging(compute_id)?.clear()?;
        Ok(match self.load(compute_id)? {
            Some(base) => (base.epoch, base.entries.into_iter().collect()),
            None => (0, BTreeMap::new()),
        })
    }

    async fn stat(&mut self, paths: &[RelPath]) -> StoreResult<Vec<(RelPath, Option<Meta>)>> {
        paths
            .iter()
            .map(|p| Ok((p.clone(), self.home.stat(p)?)))
            .collect()
    }

    async fn list_subtrees(&mut self, dirs: &[RelPath]) -> StoreResult<Vec<(RelPath, Meta)>> {
        let mut out = Vec::new();
        for dir in dirs {
            out.extend(self.home.walk(Some(dir))?);
        }
        Ok(out)
    }

    async fn hashes(
        &mut self,
        paths: &[RelPath],
    ) -> StoreResult<Vec<(RelPath, Option<ContentHash>)>> {
        Ok(self.home.hashes(paths)?)
    }

    async fn copy_in(
        &mut self,
        compute_id: u64,
        path: &RelPath,
        meta: &Meta,
        data: &[u8],
        last: bool,
    ) -> StoreResult<()> {
        if self.copies.is_none() {
            let dir = reserved(&format!(".unionsync/staging/{compute_id}-copy"));
            self.copies = Some(Staging::new(&self.home, &dir)?);
        }
        if meta.kind == Kind::File {
            let copies = self.copies.as_mut().expect("made above");
            copies.receive(path, data, last)?;
        }
        if !last {
            return Ok(());
        }
        self.put_copy(compute_id, path, meta)
            .map_err(|e| crate::store::StoreError(format!("{path}: {e}")))
    }

    async fn index_snapshot(&mut self) -> StoreResult<Vec<(RelPath, Meta)>> {
        Ok(self.home.walk(None)?)
    }

    async fn open_file(
        &mut self,
        path: &RelPath,
        expect: &Meta,
    ) -> StoreResult<Option<ShippedFile>> {
        Ok(self.home.open_to_ship(path, expect)?)
    }

    async fn stage(
        &mut self,
        compute_id: u64,
        path: &RelPath,
        data: &[u8],
        last: bool,
    ) -> StoreResult<()> {
        Ok(self.staging(compute_id)?.receive(path, data, last)?)
    }

    async fn apply(
        &mut self,
        compute_id: u64,
        sync: u64,
        ops: &[ProjectOp],
        skipped: &[RelPath],
    ) -> StoreResult<Applied> {
        let stamp = conflict_stamp(sync);
        self.staging(compute_id)?.make_durable()?;
        let mut applied = Applied::default();
        let mut done: Vec<RelPath> = Vec::new();
        let mut dirs = Vec::new();
        for op in ops {
            let path = op.path();
            if skipped.contains(path) || applied.deferred.contains(path) {
                continue;
            }
            match self.step(compute_id, &stamp, op, &mut dirs)? {
                Ok(()) => {
                    tracing::debug!(compute_id, %op, "applied");
                    if !done.contains(path) {
                        done.push(path.clone());
                    }
                }
                Err(Deferred(why)) => {
                    tracing::info!(compute_id, %why, "deferred to the next sync");
                    applied.deferred.push(path.clone());
                }
            }
        }
        finish_dirs(&self.home, &mut dirs)?;
        self.staging(compute_id)?.clear()?;
        for path in done {
            let meta = self.home.stat(&path)?;
            applied.after.push((path, meta));
        }
        Ok(applied)
    }

    async fn commit_base(
        &mut self,
        compute_id: u64,
        epoch: u64,
        replace: bool,
        updates: &[(RelPath, Option<BaseEntry>)],
    ) -> StoreResult<()> {
        // What the base describes must be on disk before the base is.
        self.home.sync_filesystem()?;
        let mut base: BTreeMap<RelPath, BaseEntry> = match self.load(compute_id)? {
            Some(old) if !replace => old.entries.into_iter().collect(),
            _ => BTreeMap::new(),
        };
        for (path, entry) in updates {
            match entry {
                Some(entry) => base.insert(path.clone(), entry.clone()),
                None => base.remove(path),
            };
        }
        let file = BaseFile {
            epoch,
            entries: base.into_iter().collect(),
        };
        persist::save(&self.bases()?, &compute_id.to_string(), &file)?;
        Ok(())
    }
}
