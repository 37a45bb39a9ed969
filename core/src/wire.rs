//! Wire messages between a compute agent and the project server, and their
//! codec.
//!
//! Every message is one websocket binary frame holding a postcard-encoded
//! [`Message`]; a message with long lists goes as several, its parts (see
//! [`crate::parts`]). A frame is checked against [`MAX_MESSAGE_LEN`] before it is
//! decoded, and decoding never panics: malformed input is a [`WireError`].
//!
//! One sync, as the two sessions drive it (project decides, compute obeys):
//!
//! ```text
//!  compute                                   project
//!     Hello{version, id, token, epoch} ──►
//!                                       ◄── Welcome{epoch, full}
//!     Changes{sync, epoch, entries} ────►   (+ base, project stats)
//!                                       ◄── HashRequest{paths}      (only if needed)
//!     Hashes{..} ───────────────────────►
//!                                       ◄── Plan{compute ops, want}
//!     Archive*/FileSkipped*, DataDone ──►   (project applies, CAS)
//!                                       ◄── Archive*, DataDone, ProjectApplied{deferred}
//!     ComputeApplied{deferred, upper} ──►   (project records the new base)
//!                                       ◄── Commit{epoch}
//!     CommitAck{epoch} ─────────────────►
//! ```
//!
//! The project may also ask a welcomed compute server to act on its view
//! (`unionsync remote …`): [`Message::Remote`] in, [`Message::RemoteDone`]
//! back, at any time, between or during syncs.
//!
//! The project also pushes the lower metadata index at any time after
//! Welcome, syncs or not: [`Message::IndexSnapshot`] (the whole home) right
//! after Welcome and again whenever its
//! watcher lost events, and [`Message::IndexDelta`] when it sees a change.

use serde::{Deserialize, Serialize};

use crate::meta::{ContentHash, Meta};
use crate::path::RelPath;
use crate::plan::ComputeOp;
use crate::reconcile::Reported;

/// Bumped on any incompatible change of [`Message`].
pub const PROTOCOL_VERSION: u16 = 6;
/// Largest frame accepted (file data comes in chunks far below this).
pub const MAX_MESSAGE_LEN: usize = 16 << 20;
/// Size of the file data chunks senders cut files into.
pub const CHUNK_LEN: usize = 256 << 10;

/// One compute-side change: the path's state in the union and, with no
/// base, what the lower showed before the first change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub path: RelPath,
    pub state: Reported,
    pub seen: Option<Meta>,
    /// `seen` came through the lower mount, not the project's index (see
    /// [`crate::PathInput::seen_via_mount`]).
    pub seen_via_mount: bool,
}

/// An operation the project asks of a compute server's view (through its
/// union, so it is journaled and synced like a user's own change).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RemoteOp {
    /// The entries of a directory (`None`: the root), or the entry itself
    /// when `path` is not a directory.
    List { path: Option<RelPath> },
    /// Remove a file, symlink or (with `recursive`) a whole tree.
    Remove { path: RelPath, recursive: bool },
    /// Rename within the view (fails if `to` exists).
    Rename { from: RelPath, to: RelPath },
}

/// One entry of a [`RemoteOp::List`] answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteEntry {
    pub name: Vec<u8>,
    pub meta: Meta,
}

/// Why a peer gave up on the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    BadToken,
    BadVersion,
    Malformed,
    Protocol,
    Internal,
    /// Another live connection already speaks for this compute id (added
    /// last: the other codes keep their encoding).
    ComputeIdInUse,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// compute → project, first frame.
    Hello {
        version: u16,
        compute_id: u64,
        token: Vec<u8>,
        /// The last base epoch the compute side committed (0: none).
        epoch: u64,
    },
    /// project → compute: accepted. `full` asks for a full reconcile (the
    /// two bases disagree or one is missing).
    Welcome {
        epoch: u64,
        full: bool,
    },
    /// compute → project: start sync `sync` with every path changed since
    /// `epoch`, or with the whole upper layer when `full`.
    Changes {
        sync: u64,
        epoch: u64,
        full: bool,
        changes: Vec<Change>,
        /// More parts follow (see [`crate::parts`]); likewise below.
        more: bool,
    },
    /// project → compute: content hashes needed to tell identical edits
    /// from conflicts.
    HashRequest {
        sync: u64,
        paths: Vec<RelPath>,
        more: bool,
    },
    Hashes {
        sync: u64,
        hashes: Vec<(RelPath, Option<ContentHash>)>,
        more: bool,
    },
    /// project → compute: the compute side's steps, and the files whose
    /// content the project needs (state as the plan saw it).
    Plan {
        sync: u64,
        ops: Vec<ComputeOp>,
        want: Vec<(RelPath, Meta)>,
        conflicts: Vec<RelPath>,
        more: bool,
    },
    /// A piece of the sync's file stream: one lz4 frame of a tar archive
    /// (see the shell's `archive` module). The receiving shell turns the
    /// archive back into [`Message::FileData`] for the session; a bare
    /// `FileData` on the wire is refused.
    Archive {
        sync: u64,
        data: Vec<u8>,
    },
    /// A piece of one file's content, in order; `last` closes the file.
    FileData {
        sync: u64,
        path: RelPath,
        data: Vec<u8>,
        last: bool,
    },
    /// The sender could not ship `path` as planned (changed since, or
    /// gone): the path is deferred to the next sync. It may follow the
    /// path's content (the file changed while being streamed): that
    /// content is then not used.
    FileSkipped {
        sync: u64,
        path: RelPath,
    },
    /// The sender shipped everything it was going to.
    DataDone {
        sync: u64,
    },
    /// project → compute: project steps applied; these were deferred.
    ProjectApplied {
        sync: u64,
        deferred: Vec<RelPath>,
        more: bool,
    },
    /// compute → project: compute steps applied; these were deferred; the
    /// upper's state of every other decided path afterwards.
    ComputeApplied {
        sync: u64,
        deferred: Vec<RelPath>,
        upper: Vec<(RelPath, Option<Meta>)>,
        more: bool,
    },
    /// project → compute: the new base is durable as `epoch`.
    Commit {
        sync: u64,
        epoch: u64,
    },
    CommitAck {
        sync: u64,
        epoch: u64,
    },
    /// project → compute: a part of the whole lower metadata index; the
    /// last part has `more: false`.
    IndexSnapshot {
        entries: Vec<(RelPath, Meta)>,
        more: bool,
    },
    /// project → compute: index changes (`None`: gone).
    IndexDelta {
        changes: Vec<(RelPath, Option<Meta>)>,
    },
    /// project → compute: act on the compute server's view; answered by
    /// `RemoteDone` with the same `id`.
    Remote {
        id: u64,
        op: RemoteOp,
    },
    /// compute → project: what a `Remote` did (entries for `List`), or why
    /// it could not.
    RemoteDone {
        id: u64,
        result: Result<Vec<RemoteEntry>, String>,
    },
    /// compute → project (`unionsync copy --to-project`): put this entry at
    /// `path` now, whatever the sync state. A file comes in chunks of at
    /// most [`CHUNK_LEN`], `last` on the final one; a symlink or directory
    /// in one message with no data.
    CopyIn {
        id: u64,
        path: RelPath,
        meta: Meta,
        data: Vec<u8>,
        last: bool,
    },
    /// project → compute: the entry of `CopyIn` `id` is in place (the
    /// project's own different version, if any, kept in its conflicts
    /// area), or why not.
    CopyInDone {
        id: u64,
        result: Result<(), String>,
    },
    /// Either way: the sender gives up on this connection.
    Error {
        code: ErrorCode,
        message: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("message of {len} bytes exceeds the limit of {MAX_MESSAGE_LEN}")]
    TooLarge { len: usize },
    #[error("malformed message: {0}")]
    Malformed(String),
}

impl Message {
    /// Encodes for one binary frame.
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        let bytes = postcard::to_allocvec(self).map_err(|e| WireError::Malformed(e.to_string()))?;
        if bytes.len() > MAX_MESSAGE_LEN {
            return Err(WireError::TooLarge { len: bytes.len() });
        }
        Ok(bytes)
    }

    /// Decodes one binary frame; trailing bytes are an error.
    pub fn decode(frame: &[u8]) -> Result<Message, WireError> {
        if frame.len() > MAX_MESSAGE_LEN {
            return Err(WireError::TooLarge { len: frame.len() });
        }
        match postcard::take_from_bytes(frame) {
            Ok((message, [])) => Ok(message),
            Ok((_, rest)) => Err(WireError::Malformed(format!(
                "{} trailing bytes",
                rest.len()
            ))),
            Err(e) => Err(WireError::Malformed(e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Message {
        Message::Changes {
            sync: 7,
            epoch: 3,
            full: false,
            changes: vec![Change {
                path: RelPath::new(&b"--odd\nname\xff"[..]).unwrap(),
                state: Reported::Present(Meta::file(0o644, 5, 1).with_ctime(2)),
                seen: Some(Meta::symlink("t", 9)),
                seen_via_mount: true,
            }],
            more: false,
        }
    }

    #[test]
    fn messages_round_trip() {
        let m = sample();
        assert_eq!(Message::decode(&m.encode().unwrap()).unwrap(), m);
    }

    #[test]
    fn truncated_frames_are_malformed() {
        let bytes = sample().encode().unwrap();
        for len in 0..bytes.len() {
            assert!(matches!(
                Message::decode(&bytes[..len]),
                Err(WireError::Malformed(_))
            ));
        }
    }

    #[test]
    fn trailing_bytes_are_malformed() {
        let mut bytes = sample().encode().unwrap();
        bytes.push(0);
        assert!(matches!(
            Message::decode(&bytes),
            Err(WireError::Malformed(_))
        ));
    }

    #[test]
    fn invalid_paths_inside_messages_are_refused() {
        let m = Message::FileSkipped {
            sync: 1,
            path: RelPath::new("a").unwrap(),
        };
        let mut bytes = m.encode().unwrap();
        // The path is the last field: length 1, then `a`. Make it `/`.
        *bytes.last_mut().unwrap() = b'/';
        assert!(matches!(
            Message::decode(&bytes),
            Err(WireError::Malformed(_))
        ));
    }

    #[test]
    fn oversized_frames_are_refused_before_decoding() {
        let frame = vec![0u8; MAX_MESSAGE_LEN + 1];
        assert_eq!(
            Message::decode(&frame),
            Err(WireError::TooLarge {
                len: MAX_MESSAGE_LEN + 1
            })
        );
    }

    #[test]
    fn huge_length_prefixes_do_not_allocate_or_panic() {
        // A `Changes` claiming u32::MAX entries in a few bytes.
        let frame = [2u8, 1, 1, 0, 0xff, 0xff, 0xff, 0xff, 0x0f];
        assert!(Message::decode(&frame).is_err());
    }
}
