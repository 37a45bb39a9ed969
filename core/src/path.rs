//! Relative paths inside a synced tree, as bytes.
//!
//! Filenames on Linux are bytes, not text: a leading `-`, spaces, newlines and
//! non-UTF-8 names must all sync. [`RelPath`] accepts every such name and
//! refuses only what could escape the root or confuse the tree: empty paths,
//! absolute paths, `.`/`..` components, empty components and NUL bytes.

use std::cmp::Ordering;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Longest path accepted, as Linux's `PATH_MAX`.
pub const MAX_PATH_LEN: usize = 4096;
/// Longest single component accepted, as Linux's `NAME_MAX`.
pub const MAX_NAME_LEN: usize = 255;
/// The top-level name reserved for unionsync's own data (conflicts, state).
/// It is never synced and no peer may name a path beneath it.
pub const RESERVED_DIR: &[u8] = b".unionsync";

/// Why bytes are not a valid [`RelPath`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path is empty")]
    Empty,
    #[error("path is absolute")]
    Absolute,
    #[error("path has an empty component (`//` or a trailing `/`)")]
    EmptyComponent,
    #[error("path has a `.` or `..` component")]
    DotComponent,
    #[error("path contains a NUL byte")]
    Nul,
    #[error("path is longer than {MAX_PATH_LEN} bytes")]
    TooLong,
    #[error("a path component is longer than {MAX_NAME_LEN} bytes")]
    NameTooLong,
    #[error("a single name contains `/`")]
    SlashInName,
}

/// A validated relative path: components of arbitrary bytes joined by `/`.
///
/// Ordered component by component, so a directory sorts right before its
/// descendants (`a` < `a/b` < `a/c` < `a-b`): walking a sorted set forwards
/// visits parents before children, backwards children before parents.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "Vec<u8>", into = "Vec<u8>")]
pub struct RelPath(Vec<u8>);

impl RelPath {
    /// Validates `bytes` as a relative path.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<Self, PathError> {
        let bytes = bytes.into();
        validate(&bytes)?;
        Ok(RelPath(bytes))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The components, outermost first.
    pub fn components(&self) -> impl DoubleEndedIterator<Item = &[u8]> {
        self.0.split(|&b| b == b'/')
    }

    /// The last component.
    pub fn file_name(&self) -> &[u8] {
        match self.0.iter().rposition(|&b| b == b'/') {
            Some(i) => &self.0[i + 1..],
            None => &self.0,
        }
    }

    /// The bytes of the parent path, `None` for a top-level name.
    pub fn parent_bytes(&self) -> Option<&[u8]> {
        self.0
            .iter()
            .rposition(|&b| b == b'/')
            .map(|i| &self.0[..i])
    }

    pub fn parent(&self) -> Option<RelPath> {
        self.parent_bytes().map(|p| RelPath(p.to_vec()))
    }

    /// Proper ancestors, nearest first.
    pub fn ancestors(&self) -> impl Iterator<Item = RelPath> + '_ {
        self.0
            .iter()
            .enumerate()
            .rev()
            .filter(|(_, &b)| b == b'/')
            .map(|(i, _)| RelPath(self.0[..i].to_vec()))
    }

    /// `self/name`; `name` must be a single valid component.
    pub fn join(&self, name: &[u8]) -> Result<RelPath, PathError> {
        if name.contains(&b'/') {
            return Err(PathError::SlashInName);
        }
        let mut bytes = Vec::with_capacity(self.0.len() + 1 + name.len());
        bytes.extend_from_slice(&self.0);
        bytes.push(b'/');
        bytes.extend_from_slice(name);
        RelPath::new(bytes)
    }

    /// True when `self` is a proper ancestor of `other`.
    pub fn is_ancestor_of(&self, other: &RelPath) -> bool {
        other.0.len() > self.0.len()
            && other.0.starts_with(&self.0)
            && other.0[self.0.len()] == b'/'
    }

    /// Number of components.
    pub fn depth(&self) -> usize {
        1 + self.0.iter().filter(|&&b| b == b'/').count()
    }

    /// True for `.unionsync` and everything beneath it.
    pub fn is_reserved(&self) -> bool {
        self.components().next() == Some(RESERVED_DIR)
    }
}

fn validate(bytes: &[u8]) -> Result<(), PathError> {
    if bytes.is_empty() {
        return Err(PathError::Empty);
    }
    if bytes.len() > MAX_PATH_LEN {
        return Err(PathError::TooLong);
    }
    if bytes[0] == b'/' {
        return Err(PathError::Absolute);
    }
    if bytes.contains(&0) {
        return Err(PathError::Nul);
    }
    for name in bytes.split(|&b| b == b'/') {
        match name {
            b"" => return Err(PathError::EmptyComponent),
            b"." | b".." => return Err(PathError::DotComponent),
            _ if name.len() > MAX_NAME_LEN => return Err(PathError::NameTooLong),
            _ => {}
        }
    }
    Ok(())
}

impl TryFrom<Vec<u8>> for RelPath {
    type Error = PathError;
    fn try_from(bytes: Vec<u8>) -> Result<Self, PathError> {
        RelPath::new(bytes)
    }
}

impl From<RelPath> for Vec<u8> {
    fn from(path: RelPath) -> Vec<u8> {
        path.0
    }
}

impl TryFrom<&str> for RelPath {
    type Error = PathError;
    fn try_from(s: &str) -> Result<Self, PathError> {
        RelPath::new(s.as_bytes())
    }
}

impl Ord for RelPath {
    fn cmp(&self, other: &Self) -> Ordering {
        // `/` sorts below every other byte (NUL cannot occur), which makes the
        // byte order the component order.
        let key = |b: &u8| if *b == b'/' { 0 } else { *b };
        self.0.iter().map(key).cmp(other.0.iter().map(key))
    }
}

impl PartialOrd for RelPath {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Printable ASCII as is, everything else escaped (`\n`, `\xff`), so odd
/// names stay readable in logs and reports.
impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.escape_ascii())
    }
}

impl fmt::Debug for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> RelPath {
        RelPath::try_from(s).unwrap()
    }

    #[test]
    fn accepts_names_that_shells_and_text_apis_trip_over() {
        for ok in [
            &b"--x"[..],
            b"-",
            b"a b/ c ",
            b"line\nbreak",
            b"\xff\xfe",
            b"...",
            b".hidden",
        ] {
            assert!(RelPath::new(ok).is_ok(), "{:?}", ok.escape_ascii());
        }
    }

    #[test]
    fn refuses_anything_that_could_escape_the_root() {
        assert_eq!(RelPath::new(&b""[..]), Err(PathError::Empty));
        assert_eq!(RelPath::new(&b"/etc"[..]), Err(PathError::Absolute));
        assert_eq!(RelPath::new(&b"a/../b"[..]), Err(PathError::DotComponent));
        assert_eq!(RelPath::new(&b".."[..]), Err(PathError::DotComponent));
        assert_eq!(RelPath::new(&b"./a"[..]), Err(PathError::DotComponent));
        assert_eq!(RelPath::new(&b"a//b"[..]), Err(PathError::EmptyComponent));
        assert_eq!(RelPath::new(&b"a/"[..]), Err(PathError::EmptyComponent));
        assert_eq!(RelPath::new(&b"a\0b"[..]), Err(PathError::Nul));
        assert_eq!(RelPath::new(vec![b'a'; 256]), Err(PathError::NameTooLong));
        assert_eq!(RelPath::new(vec![b'a'; 4097]), Err(PathError::TooLong));
    }

    #[test]
    fn join_refuses_a_slash_in_the_name() {
        assert!(p("a").join(b"b/c").is_err());
        assert_eq!(p("a").join(b"b").unwrap(), p("a/b"));
    }

    #[test]
    fn orders_parents_right_before_their_descendants() {
        let mut v = vec![p("a-b"), p("a/c"), p("a"), p("a/b/c"), p("a/b"), p("b")];
        v.sort();
        assert_eq!(
            v,
            vec![p("a"), p("a/b"), p("a/b/c"), p("a/c"), p("a-b"), p("b")]
        );
    }

    #[test]
    fn knows_parents_ancestors_and_names() {
        let x = p("a/b/c");
        assert_eq!(x.parent(), Some(p("a/b")));
        assert_eq!(p("a").parent(), None);
        assert_eq!(x.ancestors().collect::<Vec<_>>(), vec![p("a/b"), p("a")]);
        assert_eq!(x.file_name(), b"c");
        assert_eq!(x.depth(), 3);
        assert!(p("a").is_ancestor_of(&x));
        assert!(!p("a/b/c").is_ancestor_of(&x));
        assert!(!p("a/b").is_ancestor_of(&p("a/bc")));
    }

    #[test]
    fn reserves_the_unionsync_directory() {
        assert!(p(".unionsync").is_reserved());
        assert!(p(".unionsync/conflicts/1").is_reserved());
        assert!(!p(".unionsyncx").is_reserved());
        assert!(!p("a/.unionsync").is_reserved());
    }

    #[test]
    fn displays_odd_bytes_escaped() {
        assert_eq!(
            RelPath::new(&b"a\nb\xff"[..]).unwrap().to_string(),
            "a\\nb\\xff"
        );
    }
}
