//! A file far bigger than the memory either daemon may use crosses the
//! real daemons intact: file bodies stream in chunks end to end.
//!
//! The size: big enough that a daemon holding the body whole shows it in
//! its peak RSS several times over the bound (the code that read files
//! whole peaked at 776 MiB for 384 MiB), small enough to take a quarter
//! of a minute per test in a debug build (lz4 and blake3 are optimised
//! even there). A daemon streaming it peaks at about 12 MiB (debug).

use std::path::Path;
use std::time::Duration;

use unionsync_tests::{same_content, wait_for, write_incompressible, Daemon, Scene};

const SIZE: u64 = 320 << 20;
/// Far below `SIZE`; a daemon idles at a few tens of MiB.
const PEAK_RSS_BOUND: u64 = 128 << 20;
const ARRIVE: Duration = Duration::from_secs(180);

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
    write_incompressible(&c.upper.join("big"), SIZE);
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
    write_incompressible(&scene.home.join("big.tmp"), SIZE);
    std::fs::rename(scene.home.join("big.tmp"), scene.home.join("big")).unwrap();
    let pulled = c.upper.join("big");
    wait_for("the big file in the upper", ARRIVE, || {
        size_of(&pulled) == Some(SIZE)
    });
    assert!(same_content(&pulled, &scene.home.join("big")));
    assert_bounded("the compute daemon", &compute);
    assert_bounded("the project server", &project);
}
