//! What the agents need from each side's filesystem. Production implements
//! these over real directories; the simulation over in-memory trees. The
//! agents are generic over them, so both run the same agent code.
//!
//! Every path is a validated [`RelPath`] and implementations must stay
//! beneath their roots without following symlinks.

use std::collections::BTreeMap;

use unionsync_core::{
    BaseEntry, Change, ComputeOp, ContentHash, IndexUpdate, Meta, ProjectOp, RelPath, RemoteEntry,
    RemoteOp,
};

/// A storage failure: the sync in flight fails, nothing is half-applied
/// beyond what compare-and-swap and deferral already allow.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StoreError(pub String);

impl From<std::io::Error> for StoreError {
    fn from(e: std::io::Error) -> StoreError {
        StoreError(e.to_string())
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Why a compute store without a union cannot act on its view.
pub fn no_mounted_view() -> StoreError {
    StoreError("this compute server runs without a mount: it has no view to act on".into())
}

/// Result of applying one side's steps: the paths deferred (a precondition
/// did not hold) and the state after of every path a step changed —
/// including, on the compute side, ancestors a step copied into the upper,
/// so the base covers everything the upper holds.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Applied {
    pub deferred: Vec<RelPath>,
    pub after: Vec<(RelPath, Option<Meta>)>,
}

/// A file opened to be shipped, read a chunk at a time so that memory does
/// not grow with its size.
pub trait FileReader {
    /// The next bytes of the file into `buf`; 0 at its end.
    fn read(&mut self, buf: &mut [u8]) -> StoreResult<usize>;
    /// Asked after the last read: the file is still as it was when opened
    /// (it did not change while being read, so what was read is not torn).
    fn unchanged(&mut self) -> StoreResult<bool>;
}

/// A file's content taken whole when opened (in-memory stores): it cannot
/// change while being read.
pub struct Snapshot {
    data: Vec<u8>,
    at: usize,
}

impl Snapshot {
    pub fn new(data: Vec<u8>) -> Snapshot {
        Snapshot { data, at: 0 }
    }
}

impl FileReader for Snapshot {
    fn read(&mut self, buf: &mut [u8]) -> StoreResult<usize> {
        let rest = &self.data[self.at..];
        let n = rest.len().min(buf.len());
        buf[..n].copy_from_slice(&rest[..n]);
        self.at += n;
        Ok(n)
    }

    fn unchanged(&mut self) -> StoreResult<bool> {
        Ok(true)
    }
}

/// The compute server's side: the upper layer, whiteouts and journal.
#[allow(async_fn_in_trait)] // agents run on a current-thread runtime
pub trait ComputeStore {
    type Reader: FileReader;
    /// The last committed epoch (0: none).
    async fn load_epoch(&mut self) -> StoreResult<u64>;
    /// Journaled changes (or, `full`, every upper entry and whiteout), with
    /// every ancestor of those that the upper holds, and a mark that
    /// [`ComputeStore::commit`] gets back.
    async fn collect_changes(&mut self, full: bool) -> StoreResult<(u64, Vec<Change>)>;
    async fn hashes(
        &mut self,
        paths: &[RelPath],
    ) -> StoreResult<Vec<(RelPath, Option<ContentHash>)>>;
    /// An upper file opened for reading, if it still matches `expect`.
    async fn open_file(
        &mut self,
        path: &RelPath,
        expect: &Meta,
    ) -> StoreResult<Option<Self::Reader>>;
    /// Receive content for a later `Take`.
    async fn stage(&mut self, path: &RelPath, data: &[u8], last: bool) -> StoreResult<()>;
    async fn apply(&mut self, ops: &[ComputeOp]) -> StoreResult<Applied>;
    /// Durably record `epoch`; drop `paths` from the journal unless changed
    /// after `mark`.
    async fn commit(&mut self, epoch: u64, mark: u64, paths: &[RelPath]) -> StoreResult<()>;
    /// The project's lower metadata index changed. Only a store serving a
    /// union mount has a use for it; the others ignore it.
    async fn update_index(&mut self, _update: IndexUpdate) -> StoreResult<()> {
        Ok(())
    }
    /// Act on the view for the project (`unionsync remote …`), through the
    /// union so the change is journaled like a user's.
    async fn remote(&mut self, _op: RemoteOp) -> StoreResult<Vec<RemoteEntry>> {
        Err(no_mounted_view())
    }
}

/// The project server's side: the home directory and every compute
/// server's base.
#[allow(async_fn_in_trait)]
pub trait ProjectStore {
    type Reader: FileReader;
    async fn load_base(
        &mut self,
        compute_id: u64,
    ) -> StoreResult<(u64, BTreeMap<RelPath, BaseEntry>)>;
    async fn stat(&mut self, paths: &[RelPath]) -> StoreResult<Vec<(RelPath, Option<Meta>)>>;
    async fn list_subtrees(&mut self, dirs: &[RelPath]) -> StoreResult<Vec<(RelPath, Meta)>>;
    async fn hashes(
        &mut self,
        paths: &[RelPath],
    ) -> StoreResult<Vec<(RelPath, Option<ContentHash>)>>;
    /// A home file opened for reading, if it still matches `expect`.
    async fn open_file(
        &mut self,
        path: &RelPath,
        expect: &Meta,
    ) -> StoreResult<Option<Self::Reader>>;
    async fn stage(
        &mut self,
        compute_id: u64,
        path: &RelPath,
        data: &[u8],
        last: bool,
    ) -> StoreResult<()>;
    /// Apply with compare-and-swap; conflict losers go to
    /// `.unionsync/conflicts/<compute_id>/<stamp>/…`.
    async fn apply(
        &mut self,
        compute_id: u64,
        sync: u64,
        ops: &[ProjectOp],
        skipped: &[RelPath],
    ) -> StoreResult<Applied>;
    async fn commit_base(
        &mut self,
        compute_id: u64,
        epoch: u64,
        replace: bool,
        updates: &[(RelPath, Option<BaseEntry>)],
    ) -> StoreResult<()>;
    /// A piece of a `copy --to-project` entry (see `ProjectIo::CopyIn`):
    /// staged; with `last`, put at `path`, a different version there kept
    /// in the conflicts area first.
    async fn copy_in(
        &mut self,
        _compute_id: u64,
        _path: &RelPath,
        _meta: &Meta,
        _data: &[u8],
        _last: bool,
    ) -> StoreResult<()> {
        Err(StoreError("this store cannot take copies".into()))
    }
    /// Every entry beneath the home but the reserved directory (the lower
    /// metadata index), parents before children.
    async fn index_snapshot(&mut self) -> StoreResult<Vec<(RelPath, Meta)>> {
        Err(StoreError("this store keeps no lower index".into()))
    }
}
