//! How many requests may wait on the lower at once, so that a lower that
//! stops answering never takes every request thread.
//!
//! ```text
//! lower call ─► Gate::enter ─► fewer than `limit` inside ─► Pass (dropped when the call returns)
//!                           ─► else: wait for one to leave … unless the oldest inside has
//!                                waited `hung_after` ─► EIO at once (the lower is not answering)
//! ```
//!
//! A slow lower only queues its callers; a hung one holds `limit` request
//! threads at most, and every other request is served (lower ones fail with
//! EIO, as for a lower that is gone, until it answers again).

use std::collections::BTreeMap;
use std::io;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rustix::io::Errno;

pub struct Gate {
    inside: Mutex<Inside>,
    left: Condvar,
    limit: usize,
    hung_after: Duration,
}

#[derive(Default)]
struct Inside {
    /// When each caller inside entered, by ticket.
    since: BTreeMap<u64, Instant>,
    next: u64,
}

/// Leave to call the lower, until dropped.
pub struct Pass<'a> {
    gate: &'a Gate,
    ticket: u64,
}

impl Gate {
    pub fn new(limit: usize, hung_after: Duration) -> Gate {
        Gate {
            inside: Mutex::new(Inside::default()),
            left: Condvar::new(),
            limit: limit.max(1),
            hung_after,
        }
    }

    fn inside(&self) -> MutexGuard<'_, Inside> {
        // Each update is one insert or remove: consistent after a panic.
        self.inside.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Leave to call the lower (see the module documentation).
    pub fn enter(&self) -> io::Result<Pass<'_>> {
        let mut inside = self.inside();
        loop {
            if inside.since.len() < self.limit {
                let ticket = inside.next;
                inside.next += 1;
                inside.since.insert(ticket, Instant::now());
                return Ok(Pass { gate: self, ticket });
            }
            let waited = inside
                .since
                .values()
                .map(Instant::elapsed)
                .max()
                .unwrap_or_default();
            if waited >= self.hung_after {
                return Err(Errno::IO.into());
            }
            inside = self
                .left
                .wait_timeout(inside, self.hung_after - waited)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// `f` with leave to call the lower.
    pub fn call<T>(&self, f: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
        let _pass = self.enter()?;
        f()
    }
}

impl Drop for Pass<'_> {
    fn drop(&mut self) {
        self.gate.inside().since.remove(&self.ticket);
        self.gate.left.notify_one();
    }
}

/// A reader of a lower file whose every read passes the gate.
pub struct GatedReader<'a, R> {
    pub gate: &'a Gate,
    pub inner: R,
}

impl<R: io::Read> io::Read for GatedReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let inner = &mut self.inner;
        self.gate.call(|| inner.read(buf))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caller_over_the_limit_fails_at_once_when_the_oldest_inside_is_hung() {
        let gate = Gate::new(1, Duration::from_millis(50));
        let _stuck = gate.enter().unwrap();
        let started = Instant::now();
        let error = gate.enter().err().expect("no leave while the lower hangs");
        assert_eq!(Errno::from_io_error(&error), Some(Errno::IO));
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(gate.enter().is_err(), "nor later");
    }

    #[test]
    fn a_caller_over_the_limit_enters_when_one_inside_leaves() {
        let gate = std::sync::Arc::new(Gate::new(1, Duration::from_secs(60)));
        let pass = gate.enter().unwrap();
        let waiting = {
            let gate = gate.clone();
            std::thread::spawn(move || gate.enter().map(drop).is_ok())
        };
        drop(pass);
        assert!(waiting.join().unwrap());
    }
}
