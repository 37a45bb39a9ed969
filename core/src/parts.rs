//! Big list messages cut into frames, and put back together.
//!
//! A sync of a million paths carries lists far over
//! [`MAX_MESSAGE_LEN`](crate::wire::MAX_MESSAGE_LEN): the changes, the hash
//! requests and answers, the plan, what each side applied, the index. A
//! session queues such a message whole in its [`Outbox`], which cuts it into
//! parts of at most [`PART_BYTES`] of entries per list; every part but the
//! last says `more: true`. The receiving session's [`Inbox`] joins the parts
//! and hands the whole message on, so the rules above never see a part.
//!
//! ```text
//!  session ── push_back(Plan{ops: 1M}) ──► Outbox ──► Plan{more} Plan{more} … Plan{last}
//!                                                              │ frames, in order
//!  session ◄── Some(Plan{ops: 1M}) ◄─── Inbox::accept ◄────────┘ (None until the last)
//! ```
//!
//! The parts of one message are queued in one go and sent in queue order,
//! so they arrive contiguously: anything else between them is a protocol
//! error, and so is a whole beyond [`MAX_WHOLE_BYTES`] (a peer cannot make
//! the receiver hold more than that).
//!
//! An [`Message::IndexDelta`] is cut into several deltas, which apply one by
//! one: it needs no joining.

use std::collections::VecDeque;

use serde::Serialize;

use crate::wire::Message;

/// Encoded bytes of entries per list in one part: a message has at most
/// three lists, so a part stays well under the frame limit.
pub const PART_BYTES: usize = 4 << 20;

/// The largest whole message an [`Inbox`] assembles, counted in the encoded
/// bytes of its parts (a home of a few million paths fits).
pub const MAX_WHOLE_BYTES: usize = 1 << 30;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PartsError {
    #[error("{got} arrived while the parts of {pending} were arriving")]
    Interleaved {
        got: &'static str,
        pending: &'static str,
    },
    #[error("a part of {0} does not continue the message it follows")]
    Mismatched(&'static str),
    #[error("parts of {0} add up to more than {1} bytes")]
    TooLarge(&'static str, usize),
}

/// A session's queue of messages to send, cutting big ones into parts.
#[derive(Debug, Default)]
pub struct Outbox {
    queue: VecDeque<Message>,
}

impl Outbox {
    pub fn push_back(&mut self, message: Message) {
        self.queue.extend(cut(message));
    }

    pub fn pop_front(&mut self) -> Option<Message> {
        self.queue.pop_front()
    }

    pub fn clear(&mut self) {
        self.queue.clear();
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Message> {
        self.queue.iter()
    }
}

/// A session's receiving end: joins the parts of a message.
#[derive(Debug)]
pub struct Inbox {
    /// The parts so far, joined, and their encoded bytes.
    pending: Option<(Message, usize)>,
    limit: usize,
}

impl Default for Inbox {
    fn default() -> Inbox {
        Inbox::with_limit(MAX_WHOLE_BYTES)
    }
}

impl Inbox {
    /// An inbox that refuses wholes of more than `limit` encoded bytes.
    pub fn with_limit(limit: usize) -> Inbox {
        Inbox {
            pending: None,
            limit,
        }
    }

    /// The whole message `message` completes, `None` while more parts are
    /// due.
    pub fn accept(&mut self, message: Message) -> Result<Option<Message>, PartsError> {
        let Some(more) = more_flag(&message) else {
            return match &self.pending {
                None => Ok(Some(message)),
                Some((pending, _)) => Err(PartsError::Interleaved {
                    got: name(&message),
                    pending: name(pending),
                }),
            };
        };
        let bytes = encoded_len(&message);
        let (whole, total) = match self.pending.take() {
            None if !more => return Ok(Some(message)),
            None => (message, bytes),
            Some((mut whole, total)) => {
                join(&mut whole, message)?;
                (whole, total.saturating_add(bytes))
            }
        };
        if total > self.limit {
            return Err(PartsError::TooLarge(name(&whole), self.limit));
        }
        if more {
            self.pending = Some((whole, total));
            return Ok(None);
        }
        Ok(Some(whole))
    }

    /// Forgets a half-received message (the connection is gone).
    pub fn clear(&mut self) {
        self.pending = None;
    }
}

/// `Some(more)` for the messages that come in parts.
fn more_flag(message: &Message) -> Option<bool> {
    match message {
        Message::Changes { more, .. }
        | Message::HashRequest { more, .. }
        | Message::Hashes { more, .. }
        | Message::Plan { more, .. }
        | Message::ProjectApplied { more, .. }
        | Message::ComputeApplied { more, .. }
        | Message::IndexSnapshot { more, .. } => Some(*more),
        _ => None,
    }
}

fn name(message: &Message) -> &'static str {
    crate::compute_session::message_name(message)
}

/// Appends the lists of `next` to those of `whole` and takes its `more`,
/// if `next` is a part of the same message.
fn join(whole: &mut Message, next: Message) -> Result<(), PartsError> {
    use Message as M;
    let name = name(&next);
    match (whole, next) {
        (
            M::Changes {
                sync,
                epoch,
                full,
                changes,
                more,
            },
            M::Changes {
                sync: s,
                epoch: e,
                full: f,
                changes: c,
                more: m,
            },
        ) if (*sync, *epoch, *full) == (s, e, f) => {
            changes.extend(c);
            *more = m;
        }
        (
            M::HashRequest { sync, paths, more },
            M::HashRequest {
                sync: s,
                paths: p,
                more: m,
            },
        ) if *sync == s => {
            paths.extend(p);
            *more = m;
        }
        (
            M::Hashes { sync, hashes, more },
            M::Hashes {
                sync: s,
                hashes: h,
                more: m,
            },
        ) if *sync == s => {
            hashes.extend(h);
            *more = m;
        }
        (
            M::Plan {
                sync,
                ops,
                want,
                conflicts,
                more,
            },
            M::Plan {
                sync: s,
                ops: o,
                want: w,
                conflicts: c,
                more: m,
            },
        ) if *sync == s => {
            ops.extend(o);
            want.extend(w);
            conflicts.extend(c);
            *more = m;
        }
        (
            M::ProjectApplied {
                sync,
                deferred,
                more,
            },
            M::ProjectApplied {
                sync: s,
                deferred: d,
                more: m,
            },
        ) if *sync == s => {
            deferred.extend(d);
            *more = m;
        }
        (
            M::ComputeApplied {
                sync,
                deferred,
                upper,
                more,
            },
            M::ComputeApplied {
                sync: s,
                deferred: d,
                upper: u,
                more: m,
            },
        ) if *sync == s => {
            deferred.extend(d);
            upper.extend(u);
            *more = m;
        }
        (
            M::IndexSnapshot { entries, more },
            M::IndexSnapshot {
                entries: e,
                more: m,
            },
        ) => {
            entries.extend(e);
            *more = m;
        }
        _ => return Err(PartsError::Mismatched(name)),
    }
    Ok(())
}

/// The parts `message` goes out as (itself, when it is small or has no
/// lists).
fn cut(message: Message) -> Vec<Message> {
    match message {
        Message::Changes {
            sync,
            epoch,
            full,
            changes,
            more: _,
        } => flagged(chunks(changes), |changes, more| Message::Changes {
            sync,
            epoch,
            full,
            changes,
            more,
        }),
        Message::HashRequest { sync, paths, .. } => flagged(chunks(paths), |paths, more| {
            Message::HashRequest { sync, paths, more }
        }),
        Message::Hashes { sync, hashes, .. } => flagged(chunks(hashes), |hashes, more| {
            Message::Hashes { sync, hashes, more }
        }),
        Message::Plan {
            sync,
            ops,
            want,
            conflicts,
            ..
        } => flagged(
            zip3(chunks(ops), chunks(want), chunks(conflicts)),
            |(ops, want, conflicts), more| Message::Plan {
                sync,
                ops,
                want,
                conflicts,
                more,
            },
        ),
        Message::ProjectApplied { sync, deferred, .. } => {
            flagged(chunks(deferred), |deferred, more| Message::ProjectApplied {
                sync,
                deferred,
                more,
            })
        }
        Message::ComputeApplied {
            sync,
            deferred,
            upper,
            ..
        } => flagged(
            zip3(chunks(deferred), chunks(upper), vec![Vec::<()>::new()]),
            |(deferred, upper, _), more| Message::ComputeApplied {
                sync,
                deferred,
                upper,
                more,
            },
        ),
        Message::IndexSnapshot { entries, .. } => flagged(chunks(entries), |entries, more| {
            Message::IndexSnapshot { entries, more }
        }),
        Message::IndexDelta { changes } => chunks(changes)
            .into_iter()
            .map(|changes| Message::IndexDelta { changes })
            .collect(),
        other => vec![other],
    }
}

/// One message per part, `more` on all but the last.
fn flagged<T>(parts: Vec<T>, mut make: impl FnMut(T, bool) -> Message) -> Vec<Message> {
    let last = parts.len().saturating_sub(1);
    parts
        .into_iter()
        .enumerate()
        .map(|(i, part)| make(part, i < last))
        .collect()
}

/// Cuts `items` into runs of at most [`PART_BYTES`] encoded (at least one
/// run, possibly empty; an item is never split).
fn chunks<T: Serialize>(items: Vec<T>) -> Vec<Vec<T>> {
    let mut runs = vec![Vec::new()];
    let mut bytes = 0;
    for item in items {
        let len = encoded_len(&item);
        if bytes + len > PART_BYTES && runs.last().is_some_and(|run| !run.is_empty()) {
            runs.push(Vec::new());
            bytes = 0;
        }
        bytes += len;
        runs.last_mut().expect("never empty").push(item);
    }
    runs
}

/// Runs of three lists side by side, as many as the longest has.
fn zip3<A, B, C>(a: Vec<Vec<A>>, b: Vec<Vec<B>>, c: Vec<Vec<C>>) -> Vec<(Vec<A>, Vec<B>, Vec<C>)> {
    let len = a.len().max(b.len()).max(c.len());
    let (mut a, mut b, mut c) = (a.into_iter(), b.into_iter(), c.into_iter());
    (0..len)
        .map(|_| {
            (
                a.next().unwrap_or_default(),
                b.next().unwrap_or_default(),
                c.next().unwrap_or_default(),
            )
        })
        .collect()
}

pub(crate) fn encoded_len<T: Serialize>(item: &T) -> usize {
    // Encoding into a counter cannot fail for these plain data types; a
    // failure would show at the real encoding anyway.
    postcard::experimental::serialized_size(item).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::Meta;
    use crate::path::RelPath;
    use crate::plan::ComputeOp;

    fn long_path(i: usize) -> RelPath {
        let deep = vec!["d".repeat(200); 19].join("/");
        RelPath::new(format!("{deep}/{i}")).unwrap()
    }

    fn plan(n: usize) -> Message {
        Message::Plan {
            sync: 3,
            ops: (0..n)
                .map(|i| ComputeOp::DropWhiteout { path: long_path(i) })
                .collect(),
            want: (0..n / 2)
                .map(|i| (long_path(i), Meta::file(0o644, 1, 1)))
                .collect(),
            conflicts: vec![long_path(7)],
            more: false,
        }
    }

    fn sent(message: Message) -> Vec<Message> {
        let mut outbox = Outbox::default();
        outbox.push_back(message);
        std::iter::from_fn(|| outbox.pop_front()).collect()
    }

    fn received(parts: Vec<Message>) -> Result<Vec<Message>, PartsError> {
        let mut inbox = Inbox::default();
        let mut whole = Vec::new();
        for part in parts {
            whole.extend(inbox.accept(part)?);
        }
        Ok(whole)
    }

    #[test]
    fn a_message_over_the_frame_limit_goes_as_parts_that_each_encode() {
        let parts = sent(plan(5000));
        assert!(parts.len() > 1);
        for part in &parts {
            part.encode().expect("each part fits a frame");
        }
        let flags: Vec<_> = parts.iter().map(|p| more_flag(p).unwrap()).collect();
        assert!(flags[..flags.len() - 1].iter().all(|m| *m));
        assert!(!flags[flags.len() - 1]);
    }

    #[test]
    fn parts_join_back_into_the_message_that_was_sent() {
        assert_eq!(received(sent(plan(5000))), Ok(vec![plan(5000)]));
    }

    #[test]
    fn a_small_message_goes_whole() {
        assert_eq!(sent(plan(3)), vec![plan(3)]);
        assert_eq!(received(vec![plan(3)]), Ok(vec![plan(3)]));
    }

    #[test]
    fn an_index_delta_goes_as_deltas_that_need_no_joining() {
        let changes: Vec<_> = (0..5000)
            .map(|i| (long_path(i), Some(Meta::file(0o644, 1, 1))))
            .collect();
        let parts = sent(Message::IndexDelta {
            changes: changes.clone(),
        });
        assert!(parts.len() > 1);
        let mut joined = Vec::new();
        for part in received(parts).unwrap() {
            let Message::IndexDelta { changes } = part else {
                panic!("not a delta: {part:?}");
            };
            joined.extend(changes);
        }
        assert_eq!(joined, changes);
    }

    #[test]
    fn another_message_between_parts_is_refused() {
        let mut parts = sent(plan(5000));
        parts.insert(1, Message::DataDone { sync: 3 });
        assert_eq!(
            received(parts),
            Err(PartsError::Interleaved {
                got: "DataDone",
                pending: "Plan"
            })
        );
    }

    #[test]
    fn a_part_of_another_sync_is_refused() {
        let mut parts = sent(plan(5000));
        if let Message::Plan { sync, .. } = &mut parts[1] {
            *sync = 4;
        }
        assert_eq!(received(parts), Err(PartsError::Mismatched("Plan")));
    }

    #[test]
    fn parts_beyond_the_whole_bound_are_refused() {
        let part = Message::HashRequest {
            sync: 1,
            paths: (0..1000).map(long_path).collect(),
            more: true,
        };
        let limit = 10 * encoded_len(&part);
        let mut inbox = Inbox::with_limit(limit);
        for _ in 0..10 {
            assert_eq!(inbox.accept(part.clone()), Ok(None));
        }
        assert_eq!(
            inbox.accept(part),
            Err(PartsError::TooLarge("HashRequest", limit))
        );
    }
}
