//! A file far bigger than the memory either daemon may use crosses the
//! real daemons intact: file bodies stream in chunks end to end.
//!
//! The size: big enough that a daemon holding the body whole (as it once
//! did, twice over) would show it in its peak RSS many times over the
//! bound, small enough to take a few seconds in a debug build (lz4 and
//! blake3 are optimised even there).

use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use unionsync_tests::{wait_for, Daemon, Scene};

const SIZE: u64 = 384 << 20;
/// Far below `SIZE`; a daemon idles at a few tens of MiB.
const PEAK_RSS_BOUND: u64 = 128 << 20;
const ARRIVE: Duration = Duration::from_secs(180);

/// `SIZE` bytes lz4 cannot squash: a 4 MiB pseudo-random block (beyond
/// lz4's 64 KiB window) over and over, each copy stamped with its number.
fn write_big(path: &Path) {
    let mut block = vec![0u8; 4 << 20];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for word in block.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        word.copy_from_slice(&x.to_le_bytes());
    }
    let mut file = std::fs::File::create(path).unwrap();
    for n in 0..SIZE / block.len() as u64 {
        block[..8].copy_from_slice(&n.to_le_bytes());
        file.write_all(&block).unwrap();
    }
}

/// Whether two files hold the same bytes (read a piece at a time).
fn same_content(a: &Path, b: &Path) -> bool {
    let (mut a, mut b) = (
        std::fs::File::open(a).unwrap(),
        std::fs::File::open(b).unwrap(),
    );
    let (mut x, mut y) = (vec![0; 1 << 20], vec![0; 1 << 20]);
    loop {
        let n = a.read(&mut x).unwrap();
        if n == 0 {
            return b.read(&mut y).unwrap() == 0;
        }
        if b.read_exact(&mut y[..n]).is_err() || x[..n] != y[..n] {
            return false;
        }
    }
}

fn size_of(path: &Path) -> Option<u64> {
    std::fs::metadata(path).ok().map(|m| m.len())
}

fn assert_bounded(name: &str, daemon: &Daemon) {
    let peak = daemon.peak_rss();
    assert!(
        peak < PEAK_RSS_BOUND,
        "{name} peaked at {} MiB syncing a {} MiB file (bound {} MiB)",
        peak >> 20,
        SIZE >> 20,
        PEAK_RSS_BOUND >> 20
    );
}

#[test]
fn a_big_compute_file_reaches_the_project_intact_in_bounded_memory() {
    let scene = Scene::new();
    let c = scene.compute_dirs(1);
    write_big(&c.upper.join("big"));
    let project = scene.start_project();
    let compute = scene.start_compute(&c);
    let arrived = scene.home.join("big");
    // Staged content is renamed into place whole: the full size is the end.
    wait_for("the big file in the project", ARRIVE, || {
        size_of(&arrived) == Some(SIZE)
    });
    assert!(same_content(&arrived, &c.upper.join("big")));
    assert_bounded("the compute daemon", &compute);
    assert_bounded("the project server", &project);
}

#[test]
fn a_big_project_file_reaches_the_upper_intact_in_bounded_memory() {
    let scene = Scene::new();
    let c = scene.compute_dirs(1);
    std::fs::write(c.upper.join("big"), b"to be replaced").unwrap();
    let project = scene.start_project();
    let compute = scene.start_compute(&c);
    wait_for("the first push", ARRIVE, || {
        size_of(&scene.home.join("big")) == Some(14)
    });
    write_big(&scene.home.join("big.tmp"));
    std::fs::rename(scene.home.join("big.tmp"), scene.home.join("big")).unwrap();
    let pulled = c.upper.join("big");
    wait_for("the big file in the upper", ARRIVE, || {
        size_of(&pulled) == Some(SIZE)
    });
    assert!(same_content(&pulled, &scene.home.join("big")));
    assert_bounded("the compute daemon", &compute);
    assert_bounded("the project server", &project);
}
