//! # unionsync (the shell)
//!
//! The real world around `unionsync-core`: storage, transport, the agents
//! that drive the core's sessions, and the CLI. It moves bytes and calls the
//! core; it makes no sync decisions.
//!
//! ```text
//!   compute host                                   project host
//!   ComputeStore ◄─ compute_agent ─ ws frames ─► project_server ─► ProjectStore
//!                    (ComputeSession)                (ProjectSession per connection)
//! ```
//!
//! The agents are generic over the byte stream and the store, so the
//! simulation (`unionsync-sim`) runs this very code over simulated network
//! and in-memory trees.

pub mod archive;
pub mod beneath;
pub mod compute_agent;
pub mod compute_disk;
pub mod control;
pub mod daemon;
pub mod persist;
pub mod project_disk;
pub mod project_server;
pub mod project_watch;
pub mod staging;
pub mod store;
pub mod tls;
pub mod transport;
pub mod union;
pub mod view_ops;

/// The agents' clock: tokio's, which turmoil virtualises (never
/// `std::time::Instant::now` or `SystemTime`).
pub(crate) fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

/// Sleeps until a session's `poll_timeout`; forever when it has none.
pub(crate) async fn sleep_until(deadline: Option<std::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)).await,
        None => std::future::pending().await,
    }
}
