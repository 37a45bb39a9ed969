//! The lower going away (its network mount dies): the upper keeps working,
//! lower content fails with EIO at once, nothing hangs.

use std::path::Path;
use std::time::{Duration, Instant};

use unionsync_tests::{fuse_available, Scene, UnionMount};

fn write(path: &Path, data: &[u8]) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(path, data).unwrap();
}

#[test]
fn a_dead_lower_gives_eio_for_its_content_and_leaves_the_upper_working() {
    if !fuse_available() {
        return;
    }
    let scene = Scene::new();
    write(&scene.home.join("remote.txt"), b"over the network");
    // A stand-in for the network mount of the project home: another FUSE
    // process, which the test can kill like a dropped connection.
    let network = scene.mount_dirs(1);
    let network_daemon = scene.start_compute_mount(&network);
    let union = UnionMount::over(&network.mount);
    let mnt = union.mnt.clone();
    assert_eq!(
        std::fs::read(mnt.join("remote.txt")).unwrap(),
        b"over the network"
    );
    write(&mnt.join("local/work.txt"), b"mine");

    network_daemon.kill();
    let started = Instant::now();
    let error = std::fs::read(mnt.join("remote.txt")).unwrap_err();
    assert_eq!(error.raw_os_error(), Some(5), "EIO, got {error}");
    assert_eq!(std::fs::read(mnt.join("local/work.txt")).unwrap(), b"mine");
    write(&mnt.join("local/more.txt"), b"still writable");
    assert_eq!(
        std::fs::read(mnt.join("local/more.txt")).unwrap(),
        b"still writable"
    );
    assert!(started.elapsed() < Duration::from_secs(10), "nothing hung");
}
