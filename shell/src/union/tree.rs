//! The lock that keeps the union's structural changes apart, and lets the
//! reads beside them (which may wait on the lower) hold nothing.
//!
//! ```text
//! change (create, rename, copy-up placed, a sync's step) ─► exclusive(): one at a time, counted
//! read (lookup, getattr, readdir, open) ─► consistent(read): runs holding nothing,
//!                                           again if a change began meanwhile
//! ```
//!
//! A read that waits on a hung lower therefore holds up nobody else: a
//! change never waits for it, and (std's lock making new readers wait
//! behind a waiting writer) no other read waits behind such a change.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{RwLock, RwLockWriteGuard};

/// Reads that overlapped a change this many times in a row run once more
/// under the shared lock (changes that never pause must not starve them).
const OPTIMISTIC_TRIES: usize = 64;

#[derive(Default)]
pub struct Tree {
    lock: RwLock<()>,
    /// How many exclusive sections began.
    changes: AtomicU64,
}

impl Tree {
    /// Held by every structural change: one at a time. A poisoned lock is
    /// still sound: each change leaves the layers consistent step by step.
    pub fn exclusive(&self) -> RwLockWriteGuard<'_, ()> {
        let guard = self.lock.write().unwrap_or_else(|p| p.into_inner());
        self.changes.fetch_add(1, Ordering::SeqCst);
        guard
    }

    /// `read`'s answer as if no change ran beside it: it runs holding no
    /// lock, and again when a change began while it ran. (So it must not
    /// change anything but idempotently: inode numbers, say.)
    pub fn consistent<T, E>(&self, mut read: impl FnMut() -> Result<T, E>) -> Result<T, E> {
        for _ in 0..OPTIMISTIC_TRIES {
            let before = {
                // Waits for a change in progress to end.
                let _between_changes = self.lock.read().unwrap_or_else(|p| p.into_inner());
                self.changes.load(Ordering::SeqCst)
            };
            let answer = read();
            if self.changes.load(Ordering::SeqCst) == before {
                return answer;
            }
        }
        let _shared = self.lock.read().unwrap_or_else(|p| p.into_inner());
        read()
    }
}
