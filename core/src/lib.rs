//! # unionsync-core
//!
//! The pure heart of unionsync: no IO, no clock, no threads. It decides what
//! a sync does; the shell moves the bytes.
//!
//! ```text
//!  compute side reports          project side states           base store
//!  (upper entries, whiteouts,    (stat of those paths, their    (what both agreed
//!   what it saw in the lower)     ancestors, deleted subtrees)   at the last sync)
//!            \                          |                          /
//!             +-------------> Inputs (path -> PathInput) <--------+
//!                                       |
//!                                  reconcile()
//!                                       |
//!                     Plan { resolutions, project_ops, compute_ops }
//!                        |                 |                   |
//!                 sync report       project shell applies   compute shell applies
//!                 (conflicts)       (CAS on `expect`)       (after the project)
//!                                       |
//!                     BaseEntry::after_sync(upper, project) per path
//! ```
//!
//! ```
//! use unionsync_core::{reconcile, Inputs, Meta, PathInput, RelPath, Reported};
//!
//! // The compute side created `notes.txt`; the project has never seen it.
//! let mut inputs = Inputs::new();
//! inputs.insert(
//!     RelPath::new("notes.txt").unwrap(),
//!     PathInput {
//!         compute: Some(Reported::Present(Meta::file(0o644, 5, 1_000))),
//!         ..PathInput::default()
//!     },
//! );
//! let plan = reconcile(&inputs).unwrap();
//! assert_eq!(plan.project_ops.len(), 1); // create notes.txt in the project
//! assert!(plan.compute_ops.is_empty()); // the upper already has it
//! ```

pub mod compute_session;
pub mod meta;
#[cfg(feature = "model")]
pub mod model;
pub mod parts;
pub mod path;
pub mod plan;
pub mod project_session;
pub mod reconcile;
pub mod schedule;
pub mod wire;

pub use compute_session::{
    ComputeConfig, ComputeEvent, ComputeIo, ComputeSession, ComputeStatus, IndexUpdate, Phase,
    SessionError, SyncReport,
};
pub use meta::{
    carried_perm, same_state, ContentHash, Kind, Meta, Sameness, PERM_MASK, SET_ID_BITS,
};
pub use path::{PathError, RelPath, RESERVED_DIR};
pub use plan::{conflict_path, reconcile, ComputeOp, Plan, ProjectOp};
pub use project_session::{ProjectConfig, ProjectError, ProjectEvent, ProjectIo, ProjectSession};
pub use reconcile::{
    needs_hashes, needs_project_subtree, BaseEntry, ComputeView, Decision, InputError, Inputs,
    PathInput, Reported, Resolution, Side,
};
pub use schedule::{Schedule, Timing};
pub use wire::{Change, ErrorCode, Message, RemoteEntry, RemoteOp, WireError, PROTOCOL_VERSION};
