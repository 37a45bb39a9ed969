//! What one side knows about one path: kind, mode, size, mtime, content hash.
//!
//! Two comparisons, kept apart on purpose:
//! - [`Meta::changed_since`] compares two observations *by the same machine*
//!   and may use its mtimes;
//! - [`Meta::same_content`] compares observations from *different machines*
//!   and never looks at a timestamp: only kind, mode, symlink target, size
//!   and content hash.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Permission bits a local `chmod` sets (no file-type bits).
pub const PERM_MASK: u32 = 0o7777;

/// Set-user-ID and set-group-ID.
pub const SET_ID_BITS: u32 = 0o6000;

/// The permission bits that cross the sync or come from the lower into the
/// upper: [`PERM_MASK`] without the set-id bits (the sticky bit stays).
/// Both daemons run as root, so a set-id bit carried to the other host
/// would make a root-owned set-id program there out of any user's file.
pub const fn carried_perm(mode: u32) -> u32 {
    mode & PERM_MASK & !SET_ID_BITS
}

/// A content digest (BLAKE3 or similar, computed by the shell).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ContentHash(pub [u8; 32]);

impl fmt::Debug for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0[..4] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

#[derive(Clone, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub enum Kind {
    File,
    Dir,
    /// A symbolic link; its target is bytes and is never followed.
    Symlink {
        target: Vec<u8>,
    },
}

/// One side's observation of one path.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Meta {
    pub kind: Kind,
    /// Permission bits; only [`carried_perm`] of them counts (a peer may
    /// send anything here).
    pub mode: u32,
    /// Bytes of content (files); target length (symlinks); 0 (directories).
    pub size: u64,
    /// Modification time in ns on the observing machine's clock. Meaningful
    /// only against another observation by the same machine.
    pub mtime_ns: i64,
    /// Status-change time in ns on the observing machine's clock (0 when
    /// unknown). Unlike the mtime, no transfer can set it, so it catches an
    /// edit that keeps size and mtime (coarse timestamps, a preserved mtime).
    pub ctime_ns: i64,
    /// Content digest when the observer computed one.
    pub hash: Option<ContentHash>,
}

/// The answer to "do these hold the same content?" across machines.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Sameness {
    Same,
    Different,
    /// Two files of equal size and mode whose hashes are not both known.
    Unknown,
}

impl Meta {
    pub fn file(mode: u32, size: u64, mtime_ns: i64) -> Meta {
        Meta {
            kind: Kind::File,
            mode: carried_perm(mode),
            size,
            mtime_ns,
            ctime_ns: 0,
            hash: None,
        }
    }

    pub fn dir(mode: u32, mtime_ns: i64) -> Meta {
        Meta {
            kind: Kind::Dir,
            mode: carried_perm(mode),
            size: 0,
            mtime_ns,
            ctime_ns: 0,
            hash: None,
        }
    }

    pub fn symlink(target: impl Into<Vec<u8>>, mtime_ns: i64) -> Meta {
        let target = target.into();
        Meta {
            size: target.len() as u64,
            kind: Kind::Symlink { target },
            mode: 0o777,
            mtime_ns,
            ctime_ns: 0,
            hash: None,
        }
    }

    pub fn with_ctime(mut self, ctime_ns: i64) -> Meta {
        self.ctime_ns = ctime_ns;
        self
    }

    pub fn with_hash(mut self, hash: ContentHash) -> Meta {
        self.hash = Some(hash);
        self
    }

    pub fn is_dir(&self) -> bool {
        self.kind == Kind::Dir
    }

    /// The permission bits that count, never a set-id bit.
    pub fn perm(&self) -> u32 {
        carried_perm(self.mode)
    }

    /// Did this path change between an `earlier` observation and this one,
    /// both taken on the same machine?
    ///
    /// A directory changes only by kind or mode (its children are paths of
    /// their own); a symlink by its target; a file by mode, size, or content
    /// (a differing hash, the mtime or the ctime).
    pub fn changed_since(&self, earlier: &Meta) -> bool {
        self.changed(earlier, |now, then| {
            now.mtime_ns != then.mtime_ns || now.ctime_ns != then.ctime_ns
        })
    }

    /// Did the project's own observation `self` change since `seen`, its
    /// view through a network mount (sshfs, NFS)? Such a mount reports
    /// whole-second mtimes and a made-up ctime, so this compares kind,
    /// mode, size, symlink target, a hash where both have one, and the mtime
    /// at whole seconds; [`Meta::changed_since`] would call every file
    /// changed.
    pub fn changed_since_mount_view(&self, seen: &Meta) -> bool {
        let secs = |ns: i64| ns.div_euclid(1_000_000_000);
        self.changed(seen, |now, then| secs(now.mtime_ns) != secs(then.mtime_ns))
    }

    /// The change rule of both, with `times_differ` telling whether a file's
    /// timestamps moved at the precision the observations have.
    fn changed(&self, earlier: &Meta, times_differ: impl Fn(&Meta, &Meta) -> bool) -> bool {
        if self.kind != earlier.kind {
            return true;
        }
        match self.kind {
            Kind::Dir => self.perm() != earlier.perm(),
            // A symlink made again, even with the same target, is a new
            // entry another side may have decided about (sim seed 100255: a
            // path went link, dir, same link again, and a stale deletion of
            // the first link removed the last).
            Kind::Symlink { .. } => times_differ(self, earlier),
            Kind::File => {
                if self.perm() != earlier.perm() || self.size != earlier.size {
                    return true;
                }
                // Equal hashes do not make a rewrite "no change": a file
                // deleted and created again with the same bytes is a new
                // file another side may have decided about.
                let content_differs =
                    matches!((self.hash, earlier.hash), (Some(a), Some(b)) if a != b);
                content_differs || times_differ(self, earlier)
            }
        }
    }

    /// True when `self` differs from `earlier` (same machine) in its mode
    /// alone: a pure `chmod`. For a file that needs both hashes: a chmod
    /// bumps the ctime just as an edit does, so without hashes an edit that
    /// kept size and mtime would pass for a chmod and never ship.
    pub fn is_chmod_of(&self, earlier: &Meta) -> bool {
        let content_kept = match (self.hash, earlier.hash) {
            (Some(now), Some(then)) => now == then,
            _ => false,
        };
        self.kind == earlier.kind
            && self.perm() != earlier.perm()
            && self.size == earlier.size
            && (self.kind != Kind::File || content_kept)
    }

    /// Is this the observation `expected` describes (same machine)? The
    /// compare-and-swap test of every apply step: all fields equal, the
    /// hash only where both carry one (a plan may add hashes to a stat).
    pub fn matches(&self, expected: &Meta) -> bool {
        self.kind == expected.kind
            && self.perm() == expected.perm()
            && self.size == expected.size
            && self.mtime_ns == expected.mtime_ns
            && self.ctime_ns == expected.ctime_ns
            && match (self.hash, expected.hash) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            }
    }

    /// Do two observations, possibly by different machines, hold the same
    /// content? Never looks at mtimes.
    pub fn same_content(&self, other: &Meta) -> Sameness {
        if self.kind != other.kind {
            return Sameness::Different;
        }
        match self.kind {
            Kind::Symlink { .. } => Sameness::Same,
            Kind::Dir if self.perm() == other.perm() => Sameness::Same,
            Kind::Dir => Sameness::Different,
            Kind::File => {
                if self.perm() != other.perm() || self.size != other.size {
                    return Sameness::Different;
                }
                match (self.hash, other.hash) {
                    (Some(a), Some(b)) if a == b => Sameness::Same,
                    (Some(_), Some(_)) => Sameness::Different,
                    _ => Sameness::Unknown,
                }
            }
        }
    }
}

/// [`Meta::same_content`] over "present or absent" states.
pub fn same_state(a: Option<&Meta>, b: Option<&Meta>) -> Sameness {
    match (a, b) {
        (None, None) => Sameness::Same,
        (Some(a), Some(b)) => a.same_content(b),
        _ => Sameness::Different,
    }
}

/// Short human form: `file 0644 12B`, `dir 0755`, `link -> target`.
impl fmt::Display for Meta {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::File => write!(f, "file {:04o} {}B", self.perm(), self.size),
            Kind::Dir => write!(f, "dir {:04o}", self.perm()),
            Kind::Symlink { target } => write!(f, "link -> {}", target.escape_ascii()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H1: ContentHash = ContentHash([1; 32]);
    const H2: ContentHash = ContentHash([2; 32]);

    #[test]
    fn set_id_bits_are_never_carried_but_the_sticky_bit_is() {
        assert_eq!(carried_perm(0o104755), 0o755);
        assert_eq!(carried_perm(0o2775), 0o775);
        assert_eq!(carried_perm(0o1777), 0o1777);
        assert_eq!(Meta::file(0o6755, 1, 1).mode, 0o755);
        assert_eq!(Meta::dir(0o3770, 1).perm(), 0o1770);
        // What a peer sent, deserialized as is: perm() still drops them.
        let sent = Meta {
            mode: 0o4755,
            ..Meta::file(0o755, 1, 1)
        };
        assert_eq!(sent.perm(), 0o755);
        assert!(!sent.changed_since(&Meta::file(0o755, 1, 1)));
    }

    #[test]
    fn a_file_changes_with_its_mtime_when_no_hashes_are_known() {
        assert!(Meta::file(0o644, 3, 2).changed_since(&Meta::file(0o644, 3, 1)));
        assert!(!Meta::file(0o644, 3, 1).changed_since(&Meta::file(0o644, 3, 1)));
    }

    #[test]
    fn a_file_changes_with_its_ctime_even_when_the_mtime_was_kept() {
        let then = Meta::file(0o644, 3, 1).with_ctime(10);
        assert!(Meta::file(0o644, 3, 1).with_ctime(11).changed_since(&then));
    }

    #[test]
    fn a_rewrite_with_the_same_bytes_is_still_a_change() {
        let then = Meta::file(0o644, 3, 1).with_hash(H1);
        assert!(Meta::file(0o644, 3, 9).with_hash(H1).changed_since(&then));
        assert!(Meta::file(0o644, 3, 1).with_hash(H2).changed_since(&then));
        assert!(!Meta::file(0o644, 3, 1).with_hash(H1).changed_since(&then));
    }

    #[test]
    fn a_mount_view_is_unchanged_despite_its_rounded_mtime_and_fake_ctime() {
        let project = Meta::file(0o644, 3, 5_123_456_789).with_ctime(5_200_000_000);
        let through_sshfs = Meta::file(0o644, 3, 5_000_000_000).with_ctime(5_000_000_000);
        assert!(project.changed_since(&through_sshfs));
        assert!(!project.changed_since_mount_view(&through_sshfs));
    }

    #[test]
    fn a_mount_view_sees_edits_of_size_mode_and_whole_seconds() {
        let seen = Meta::file(0o644, 3, 5_000_000_000);
        assert!(Meta::file(0o644, 4, 5_100_000_000).changed_since_mount_view(&seen));
        assert!(Meta::file(0o600, 3, 5_100_000_000).changed_since_mount_view(&seen));
        assert!(Meta::file(0o644, 3, 6_000_000_000).changed_since_mount_view(&seen));
        assert!(Meta::dir(0o755, 1).changed_since_mount_view(&seen));
    }

    #[test]
    fn chmod_alone_is_a_change() {
        let then = Meta::file(0o644, 3, 1).with_hash(H1);
        let now = Meta::file(0o600, 3, 1).with_hash(H1);
        assert!(now.changed_since(&then));
        assert!(now.is_chmod_of(&then));
        assert!(!Meta::file(0o600, 4, 1).with_hash(H1).is_chmod_of(&then));
    }

    #[test]
    fn without_hashes_a_file_chmod_cannot_be_told_from_an_edit() {
        // An edit that kept size and mtime, plus a chmod: both bump ctime.
        let then = Meta::file(0o644, 3, 1).with_ctime(1);
        let now = Meta::file(0o755, 3, 1).with_ctime(2);
        assert!(!now.is_chmod_of(&then));
    }

    #[test]
    fn a_directory_changes_only_by_mode_or_kind() {
        assert!(!Meta::dir(0o755, 9).changed_since(&Meta::dir(0o755, 1)));
        assert!(Meta::dir(0o700, 1).changed_since(&Meta::dir(0o755, 1)));
        assert!(Meta::file(0o755, 0, 1).changed_since(&Meta::dir(0o755, 1)));
    }

    #[test]
    fn a_symlink_changes_with_its_target() {
        assert!(Meta::symlink("b", 1).changed_since(&Meta::symlink("a", 1)));
        assert!(!Meta::symlink("a", 1).changed_since(&Meta::symlink("a", 1)));
    }

    #[test]
    fn a_symlink_made_again_with_the_same_target_is_a_change() {
        let first = Meta::symlink("a", 1).with_ctime(1);
        assert!(Meta::symlink("a", 5).with_ctime(5).changed_since(&first));
        let secs = 1_000_000_000;
        let seen = Meta::symlink("a", 3 * secs);
        assert!(!Meta::symlink("a", 3 * secs + 7).changed_since_mount_view(&seen));
        assert!(Meta::symlink("a", 4 * secs).changed_since_mount_view(&seen));
    }

    #[test]
    fn a_stat_matches_the_planned_observation_with_or_without_its_hash() {
        let stat = Meta::file(0o644, 3, 1).with_ctime(2);
        assert!(stat.matches(&stat.clone().with_hash(H1)));
        assert!(!stat
            .clone()
            .with_hash(H2)
            .matches(&stat.clone().with_hash(H1)));
        assert!(!stat.matches(&Meta::file(0o644, 3, 1).with_ctime(3)));
    }

    #[test]
    fn content_across_machines_ignores_mtimes() {
        let here = Meta::file(0o644, 3, 1).with_hash(H1);
        let there = Meta::file(0o644, 3, 999).with_hash(H1);
        assert_eq!(here.same_content(&there), Sameness::Same);
        assert_eq!(
            Meta::file(0o644, 3, 1).same_content(&Meta::file(0o644, 3, 1)),
            Sameness::Unknown,
            "equal mtimes from two clocks prove nothing"
        );
        assert_eq!(
            here.same_content(&Meta::file(0o600, 3, 1).with_hash(H1)),
            Sameness::Different
        );
    }
}
