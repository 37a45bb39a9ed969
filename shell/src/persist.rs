//! Crash-safe state files: postcard in a temp file, fsync, rename over the
//! old one, fsync the directory. A reader sees the old state or the new one,
//! never a torn one; a file that does not decode is reported, not trusted.

use std::io::{self, Read, Write};

use serde::de::DeserializeOwned;
use serde::Serialize;
use unionsync_core::RelPath;

use crate::beneath::{is_absent, Root};

/// Durably replaces `dir/name` with `value`.
pub fn save<T: Serialize>(dir: &Root, name: &str, value: &T) -> io::Result<()> {
    let bytes = postcard::to_allocvec(value).map_err(io::Error::other)?;
    let final_name = RelPath::new(name).map_err(io::Error::other)?;
    let temp = RelPath::new(format!("{name}.tmp")).map_err(io::Error::other)?;
    match dir.remove(&temp, false) {
        Err(e) if !is_absent(&e) => return Err(e),
        _ => {}
    }
    let mut file = dir.create_file(&temp)?;
    file.write_all(&bytes)?;
    file.sync_all()?;
    drop(file);
    dir.rename_from(dir, &temp, &final_name, false)?;
    dir.fsync_dir()?;
    Ok(())
}

/// The state in `dir/name`: `Ok(None)` when there is none; an error when it
/// exists but cannot be read or decoded.
pub fn load<T: DeserializeOwned>(dir: &Root, name: &str) -> io::Result<Option<T>> {
    let path = RelPath::new(name).map_err(io::Error::other)?;
    let mut file = match dir.open_file(&path) {
        Ok(file) => file,
        Err(e) if is_absent(&e) => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    postcard::from_bytes(&bytes)
        .map(Some)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{name}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_state_loads_back_and_replaces_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::open(dir.path()).unwrap();
        assert_eq!(load::<Vec<u64>>(&root, "state").unwrap(), None);
        save(&root, "state", &vec![1u64, 2]).unwrap();
        save(&root, "state", &vec![3u64]).unwrap();
        assert_eq!(load::<Vec<u64>>(&root, "state").unwrap(), Some(vec![3]));
        assert!(!dir.path().join("state.tmp").exists());
    }

    #[test]
    fn a_corrupt_state_file_is_an_error_not_an_empty_state() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::open(dir.path()).unwrap();
        std::fs::write(dir.path().join("state"), [0xff; 3]).unwrap();
        let error = load::<Vec<u64>>(&root, "state").unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
    }
}
