//! The lower metadata index: the project's own listing of its home, pushed
//! by the project server, so the union answers lookups, attributes,
//! listings and symlink targets of lower paths — "no such file" included —
//! without a round trip through the network mount. Only file content is
//! still read through the lower.
//!
//! ```text
//! project watcher ─► IndexDelta ─► agent ─► LowerIndex::apply ─► kernel invalidation
//! Welcome ─► IndexSnapshot parts ─► agent ─► LowerIndex::new (replaces)
//! ```

use std::collections::{BTreeMap, HashMap};

use rustix::fs::Stat;
use unionsync_core::{Kind, Meta, RelPath};

/// Every lower entry, by directory. The root directory's key is empty.
#[derive(Debug, Default)]
pub struct LowerIndex {
    dirs: HashMap<Vec<u8>, BTreeMap<Vec<u8>, Meta>>,
}

fn dir_key(dir: Option<&RelPath>) -> &[u8] {
    dir.map_or(&[][..], RelPath::as_bytes)
}

impl LowerIndex {
    pub fn new(entries: Vec<(RelPath, Meta)>) -> LowerIndex {
        let mut index = LowerIndex::default();
        for (path, meta) in entries {
            index.set(&path, Some(meta));
        }
        index
    }

    pub fn get(&self, path: &RelPath) -> Option<&Meta> {
        self.dirs
            .get(path.parent_bytes().unwrap_or_default())?
            .get(path.file_name())
    }

    /// The entries of directory `dir` (`None`: the root), by name.
    pub fn children(&self, dir: Option<&RelPath>) -> impl Iterator<Item = (&[u8], &Meta)> {
        self.dirs
            .get(dir_key(dir))
            .into_iter()
            .flatten()
            .map(|(name, meta)| (name.as_slice(), meta))
    }

    /// Records `path` as `meta` (`None`: gone, with everything below; a
    /// directory that became something else loses its entries too).
    pub fn set(&mut self, path: &RelPath, meta: Option<Meta>) {
        let parent = path.parent_bytes().unwrap_or_default().to_vec();
        let name = path.file_name().to_vec();
        if !meta.as_ref().is_some_and(Meta::is_dir) {
            self.drop_below(path.as_bytes());
        }
        match meta {
            Some(meta) => {
                self.dirs.entry(parent).or_default().insert(name, meta);
            }
            None => {
                if let Some(siblings) = self.dirs.get_mut(&parent) {
                    siblings.remove(&name);
                }
            }
        }
    }

    fn drop_below(&mut self, dir: &[u8]) {
        let Some(children) = self.dirs.remove(dir) else {
            return;
        };
        for (name, meta) in children {
            if meta.is_dir() {
                let mut child = dir.to_vec();
                child.push(b'/');
                child.extend_from_slice(&name);
                self.drop_below(&child);
            }
        }
    }

    /// The paths whose entry differs between `self` and `other` (for the
    /// kernel's caches when a snapshot replaces an index).
    pub fn differences(&self, other: &LowerIndex) -> Vec<RelPath> {
        let mut out = Vec::new();
        let mut compare = |a: &LowerIndex, b: &LowerIndex, both_ways: bool| {
            for (dir, children) in &a.dirs {
                for (name, meta) in children {
                    let mut path = dir.clone();
                    if !path.is_empty() {
                        path.push(b'/');
                    }
                    path.extend_from_slice(name);
                    let Ok(path) = RelPath::new(path) else {
                        continue;
                    };
                    let theirs = b.get(&path);
                    if theirs != Some(meta) && (both_ways || theirs.is_none()) {
                        out.push(path);
                    }
                }
            }
        };
        compare(self, other, true);
        compare(other, self, false);
        out
    }

    /// How many subdirectories `dir` has (for a directory's link count).
    pub fn subdirs(&self, dir: &RelPath) -> usize {
        self.children(Some(dir)).filter(|(_, m)| m.is_dir()).count()
    }
}

/// The attributes the union shows for an indexed lower entry. Fields the
/// index does not carry (owner, device, block size) come from `template`,
/// a stat of the lower's root.
pub fn stat_of(meta: &Meta, subdirs: usize, template: &Stat) -> Stat {
    let mut stat = *template;
    let (kind_bits, nlink) = match meta.kind {
        Kind::File => (libc_mode::REG, 1),
        Kind::Dir => (libc_mode::DIR, 2 + subdirs as u64),
        Kind::Symlink { .. } => (libc_mode::LNK, 1),
    };
    stat.st_mode = kind_bits | meta.perm();
    // The sync does not carry a directory's size; one block, as on ext4.
    let size = if meta.is_dir() { 4096 } else { meta.size };
    stat.st_size = size as _;
    stat.st_blocks = size.div_ceil(512) as _;
    stat.st_nlink = nlink as _;
    stat.st_rdev = 0;
    stat.st_ino = 0;
    let split = |ns: i64| (ns.div_euclid(1_000_000_000), ns.rem_euclid(1_000_000_000));
    let (sec, nsec) = split(meta.mtime_ns);
    (stat.st_mtime, stat.st_mtime_nsec) = (sec as _, nsec as _);
    (stat.st_atime, stat.st_atime_nsec) = (sec as _, nsec as _);
    let (sec, nsec) = split(if meta.ctime_ns != 0 {
        meta.ctime_ns
    } else {
        meta.mtime_ns
    });
    (stat.st_ctime, stat.st_ctime_nsec) = (sec as _, nsec as _);
    stat
}

/// File type bits of `st_mode`.
mod libc_mode {
    pub const REG: u32 = 0o100000;
    pub const DIR: u32 = 0o040000;
    pub const LNK: u32 = 0o120000;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> RelPath {
        RelPath::new(s).unwrap()
    }

    fn sample() -> LowerIndex {
        LowerIndex::new(vec![
            (p("a"), Meta::dir(0o755, 1)),
            (p("a/b"), Meta::dir(0o755, 1)),
            (p("a/b/f"), Meta::file(0o644, 3, 1)),
            (p("a/g"), Meta::file(0o600, 5, 1)),
            (p("top"), Meta::symlink("a/g", 1)),
        ])
    }

    fn names(index: &LowerIndex, dir: Option<&str>) -> Vec<String> {
        let dir = dir.map(p);
        index
            .children(dir.as_ref())
            .map(|(n, _)| String::from_utf8_lossy(n).into_owned())
            .collect()
    }

    #[test]
    fn entries_are_found_by_path_and_listed_by_directory() {
        let index = sample();
        assert_eq!(index.get(&p("a/b/f")), Some(&Meta::file(0o644, 3, 1)));
        assert_eq!(index.get(&p("a/nothing")), None);
        assert_eq!(names(&index, None), ["a", "top"]);
        assert_eq!(names(&index, Some("a")), ["b", "g"]);
    }

    #[test]
    fn removing_a_directory_removes_everything_below() {
        let mut index = sample();
        index.set(&p("a"), None);
        assert_eq!(index.get(&p("a/b/f")), None);
        assert!(names(&index, Some("a/b")).is_empty());
        assert_eq!(names(&index, None), ["top"]);
    }

    #[test]
    fn a_directory_replaced_by_a_file_loses_its_entries() {
        let mut index = sample();
        index.set(&p("a/b"), Some(Meta::file(0o644, 1, 2)));
        assert_eq!(index.get(&p("a/b/f")), None);
        assert_eq!(index.get(&p("a/b")), Some(&Meta::file(0o644, 1, 2)));
    }

    #[test]
    fn differences_name_changed_added_and_removed_paths() {
        let old = sample();
        let mut new = sample();
        new.set(&p("a/g"), Some(Meta::file(0o600, 6, 2)));
        new.set(&p("top"), None);
        new.set(&p("new"), Some(Meta::dir(0o755, 1)));
        let mut diff: Vec<String> = old
            .differences(&new)
            .iter()
            .map(|p| p.to_string())
            .collect();
        diff.sort();
        assert_eq!(diff, ["a/g", "new", "top"]);
    }

    #[test]
    fn stats_carry_kind_mode_size_times_and_link_count() {
        let template = rustix::fs::stat("/").unwrap();
        let meta = Meta::file(0o640, 1000, 1_500_000_000_250).with_ctime(1_600_000_000_000);
        let stat = stat_of(&meta, 0, &template);
        assert_eq!(stat.st_mode, 0o100640);
        assert_eq!(stat.st_size, 1000);
        assert_eq!(stat.st_blocks, 2);
        assert_eq!((stat.st_mtime, stat.st_mtime_nsec), (1500, 250));
        assert_eq!(stat.st_ctime, 1600);
        let dir = stat_of(&Meta::dir(0o755, 0), 3, &template);
        assert_eq!((dir.st_mode, dir.st_nlink), (0o040755, 5));
        assert_eq!(dir.st_uid, template.st_uid);
    }
}
