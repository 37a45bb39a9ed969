//! The lower going away (its network mount dies): the upper keeps working,
//! lower content fails with EIO at once, nothing hangs.

use std::path::Path;
use std::time::{Duration, Instant};

use unionsync_tests::Scene;

fn write(path: &Path, data: &[u8]) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(path, data).unwrap();
}

/// Unmounts on drop, even when the test fails.
struct Mounted(Option<unionsync::union::Mounted>, std::path::PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Some(mounted) = self.0.take() {
            let _ = mounted.unmount();
        }
        unionsync_tests::detach(&self.1);
    }
}

#[test]
fn a_dead_lower_gives_eio_for_its_content_and_leaves_the_upper_working() {
    if !Path::new("/dev/fuse").exists() {
        eprintln!("skipped: /dev/fuse is absent on this machine");
        return;
    }
    let scene = Scene::new();
    write(&scene.home.join("remote.txt"), b"over the network");
    // A stand-in for the network mount of the project home: another FUSE
    // process, which the test can kill like a dropped connection.
    let network = scene.mount_dirs(1);
    let network_daemon = scene.start_compute_mount(&network);
    let dir = tempfile::tempdir().unwrap();
    let (mnt, upper, whiteouts) = (
        dir.path().join("m"),
        dir.path().join("u"),
        dir.path().join("w"),
    );
    std::fs::create_dir_all(&mnt).unwrap();
    let union = unionsync::union::mount(
        &mnt,
        &upper,
        &whiteouts,
        &network.mount,
        Vec::new(),
        Default::default(),
    )
    .unwrap();
    let _guard = Mounted(Some(union), mnt.clone());
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
