//! `unionsync compute mount` against a real project server: the union is
//! what users touch, the journal is what the sync reads.

use std::path::Path;
use std::time::Duration;

use unionsync_tests::{conflicts, fuse_available, is_mounted, wait_for, Scene};

const CONVERGE: Duration = Duration::from_secs(60);

fn write(path: &Path, data: &[u8]) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(path, data).unwrap();
}

fn read(path: &Path) -> Option<Vec<u8>> {
    std::fs::read(path).ok()
}

#[test]
fn changes_made_through_the_mount_reach_the_project() {
    if !fuse_available() {
        return;
    }
    let scene = Scene::new();
    write(&scene.home.join("notes.txt"), b"v1");
    write(&scene.home.join("old/a.txt"), b"a");
    write(&scene.home.join("old/sub/b.txt"), b"b");
    write(&scene.home.join("gone.txt"), b"bye");
    let m = scene.mount_dirs(1);
    let _project = scene.start_project();
    let _compute = scene.start_compute_mount(&m);
    assert_eq!(
        read(&m.mount.join("notes.txt")).as_deref(),
        Some(&b"v1"[..])
    );
    write(&m.mount.join("notes.txt"), b"v2 from the mount");
    write(&m.mount.join("build/out.o"), b"object");
    std::fs::remove_file(m.mount.join("gone.txt")).unwrap();
    std::fs::rename(m.mount.join("old"), m.mount.join("new")).unwrap();
    wait_for("every change in the project", CONVERGE, || {
        read(&scene.home.join("notes.txt")).as_deref() == Some(b"v2 from the mount")
            && read(&scene.home.join("build/out.o")).is_some()
            && !scene.home.join("gone.txt").exists()
            && read(&scene.home.join("new/sub/b.txt")).as_deref() == Some(b"b")
            && !scene.home.join("old").exists()
    });
    assert!(conflicts(&scene.home).is_empty());
}

#[test]
fn a_project_edit_of_a_file_in_the_upper_shows_through_the_mount() {
    if !fuse_available() {
        return;
    }
    let scene = Scene::new();
    let m = scene.mount_dirs(1);
    let _project = scene.start_project();
    let _compute = scene.start_compute_mount(&m);
    write(&m.mount.join("shared.txt"), b"from the mount");
    wait_for("the push", CONVERGE, || {
        read(&scene.home.join("shared.txt")).as_deref() == Some(b"from the mount")
    });
    // Read it through the mount so the kernel caches it, then change it
    // in the project: the pull must not leave a stale cached copy.
    assert_eq!(
        read(&m.mount.join("shared.txt")).as_deref(),
        Some(&b"from the mount"[..])
    );
    write(&scene.home.join("shared.txt"), b"edited in the project");
    wait_for("the pull, visible through the mount", CONVERGE, || {
        read(&m.mount.join("shared.txt")).as_deref() == Some(b"edited in the project")
    });
}

#[test]
fn project_additions_show_through_the_mount_even_under_directories_made_there() {
    if !fuse_available() {
        return;
    }
    let scene = Scene::new();
    let m = scene.mount_dirs(1);
    let _project = scene.start_project();
    let _compute = scene.start_compute_mount(&m);
    write(&m.mount.join("made-here/a.txt"), b"a");
    wait_for("the push", CONVERGE, || {
        read(&scene.home.join("made-here/a.txt")).is_some()
    });
    // Looked up (and found absent) through the mount first.
    assert!(read(&m.mount.join("made-here/b.txt")).is_none());
    assert!(read(&m.mount.join("top.txt")).is_none());
    write(&scene.home.join("made-here/b.txt"), b"from the project");
    write(&scene.home.join("top.txt"), b"top");
    wait_for("the project's files, through the mount", CONVERGE, || {
        read(&m.mount.join("made-here/b.txt")).as_deref() == Some(b"from the project")
            && read(&m.mount.join("top.txt")).as_deref() == Some(b"top")
    });
}

#[test]
fn changes_made_while_the_project_is_away_survive_a_clean_restart() {
    if !fuse_available() {
        return;
    }
    let scene = Scene::new();
    write(&scene.home.join("lower.txt"), b"lower");
    let m = scene.mount_dirs(1);
    // No project server yet: the change can only wait in the journal.
    let compute = scene.start_compute_mount(&m);
    write(&m.mount.join("offline.txt"), b"written offline");
    std::fs::remove_file(m.mount.join("lower.txt")).unwrap();
    compute.terminate();
    let (status, log) = compute.wait_exit(Duration::from_secs(20));
    assert_eq!(status, Some(0), "{log}");
    assert!(!is_mounted(&m.mount), "a clean stop unmounts");
    let _project = scene.start_project();
    let _compute = scene.start_compute_mount(&m);
    wait_for("the offline changes in the project", CONVERGE, || {
        read(&scene.home.join("offline.txt")).as_deref() == Some(b"written offline")
            && !scene.home.join("lower.txt").exists()
    });
}

#[test]
fn after_kill_9_the_next_start_clears_the_stale_mount_and_syncs() {
    if !fuse_available() {
        return;
    }
    let scene = Scene::new();
    let m = scene.mount_dirs(1);
    let _project = scene.start_project();
    let compute = scene.start_compute_mount(&m);
    write(&m.mount.join("before-crash.txt"), b"kept");
    compute.kill();
    let _compute = scene.start_compute_mount(&m);
    assert_eq!(
        read(&m.mount.join("before-crash.txt")).as_deref(),
        Some(&b"kept"[..])
    );
    wait_for("the file written before the crash", CONVERGE, || {
        read(&scene.home.join("before-crash.txt")).as_deref() == Some(b"kept")
    });
}

#[test]
fn local_only_paths_stay_on_the_compute_server() {
    if !fuse_available() {
        return;
    }
    let scene = Scene::new();
    write(&scene.home.join(".cache/project-side"), b"not shown here");
    let m = scene.mount_dirs(1);
    let _project = scene.start_project();
    let _compute = scene.start_compute_mount(&m);
    assert!(
        !m.mount.join(".cache/project-side").exists(),
        "the lower is never looked at below a local-only path"
    );
    write(&m.mount.join("scratch/data.bin"), b"local");
    write(&m.mount.join(".cache/pip/wheel"), b"local");
    write(&m.mount.join("synced.txt"), b"synced");
    wait_for("the synced file", CONVERGE, || {
        read(&scene.home.join("synced.txt")).as_deref() == Some(b"synced")
    });
    // A few more syncs: the local-only files never follow.
    std::thread::sleep(Duration::from_secs(2));
    assert!(!scene.home.join("scratch").exists());
    assert!(!scene.home.join(".cache/pip").exists());
    assert_eq!(
        read(&m.mount.join("scratch/data.bin")).as_deref(),
        Some(&b"local"[..])
    );
}

#[test]
fn a_lower_file_read_is_cached_locally_never_pushed_back_and_refreshed_by_the_project() {
    use std::os::unix::fs::MetadataExt;
    if !fuse_available() {
        return;
    }
    let scene = Scene::new();
    write(&scene.home.join("dataset/train.csv"), b"a,b\n1,2\n");
    let before = std::fs::metadata(scene.home.join("dataset/train.csv")).unwrap();
    let m = scene.mount_dirs(1);
    let _project = scene.start_project();
    let _compute = scene.start_compute_mount(&m);
    assert_eq!(
        read(&m.mount.join("dataset/train.csv")).as_deref(),
        Some(&b"a,b\n1,2\n"[..])
    );
    wait_for("the read file cached in the upper", CONVERGE, || {
        read(&m.upper.join("dataset/train.csv")).as_deref() == Some(b"a,b\n1,2\n")
    });
    // A few syncs later the project's file is the very same inode: the
    // clean copy was not sent back.
    std::thread::sleep(Duration::from_secs(2));
    let after = std::fs::metadata(scene.home.join("dataset/train.csv")).unwrap();
    assert_eq!((after.ino(), after.ctime()), (before.ino(), before.ctime()));
    write(&scene.home.join("dataset/train.csv"), b"a,b\n1,2\n3,4\n");
    wait_for("the cached copy refreshed", CONVERGE, || {
        read(&m.upper.join("dataset/train.csv")).as_deref() == Some(b"a,b\n1,2\n3,4\n")
            && read(&m.mount.join("dataset/train.csv")).as_deref() == Some(b"a,b\n1,2\n3,4\n")
    });
    assert!(conflicts(&scene.home).is_empty());
}
