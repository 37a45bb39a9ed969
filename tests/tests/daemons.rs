//! The two daemons syncing real directories over loopback.

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use unionsync_tests::{conflicts, self_signed, tree, wait_for, write_whiteout, Entry, Scene};

const CONVERGE: Duration = Duration::from_secs(60);

fn write(path: &Path, data: &[u8]) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(path, data).unwrap();
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn odd(name: &[u8]) -> &Path {
    Path::new(std::ffi::OsStr::from_bytes(name))
}

fn wait_converged(scene: &Scene, dirs: &unionsync_tests::ComputeDirs) {
    unionsync_tests::wait_converged(&scene.home, dirs, CONVERGE);
}

fn file_data(root: &Path, path: &str) -> Option<Vec<u8>> {
    std::fs::read(root.join(path)).ok()
}

#[test]
fn compute_files_directories_symlinks_modes_and_odd_names_reach_the_project() {
    let scene = Scene::new();
    let c = scene.compute_dirs(1);
    write(&c.upper.join("notes.txt"), b"hello");
    write(&c.upper.join("src/deep/main.rs"), b"fn main() {}");
    write(&c.upper.join("run.sh"), b"#!/bin/sh\n");
    chmod(&c.upper.join("run.sh"), 0o755);
    symlink("notes.txt", c.upper.join("link")).unwrap();
    for name in [&b"--dash"[..], b"new\nline", b"sp ace", b"\xff\xfebytes"] {
        write(&c.upper.join(odd(name)), name);
    }
    let _project = scene.start_project();
    let _compute = scene.start_compute(&c);
    wait_converged(&scene, &c);
    let home = tree(&scene.home);
    assert_eq!(home, tree(&c.upper), "the project holds exactly the upper");
    assert!(matches!(
        home[&b"run.sh"[..]],
        Entry::File { mode: 0o755, .. }
    ));
    assert_eq!(
        home[&b"link"[..]],
        Entry::Symlink {
            target: b"notes.txt".to_vec()
        }
    );
}

#[test]
fn a_project_edit_of_a_synced_file_reaches_the_upper() {
    let scene = Scene::new();
    let c = scene.compute_dirs(1);
    write(&c.upper.join("shared.txt"), b"v1");
    let _project = scene.start_project();
    let _compute = scene.start_compute(&c);
    wait_for("the first push", CONVERGE, || {
        file_data(&scene.home, "shared.txt").as_deref() == Some(b"v1")
    });
    write(&scene.home.join("shared.txt"), b"v2 from the project");
    chmod(&scene.home.join("shared.txt"), 0o600);
    wait_for("the pull", CONVERGE, || {
        file_data(&c.upper, "shared.txt").as_deref() == Some(b"v2 from the project")
    });
    wait_converged(&scene, &c);
    assert!(conflicts(&scene.home).is_empty());
}

#[test]
fn a_conflict_keeps_the_project_version_and_the_loser_in_the_conflicts_area() {
    let scene = Scene::new();
    let c = scene.compute_dirs(1);
    write(&c.upper.join("both.txt"), b"base");
    let project = scene.start_project();
    let compute = scene.start_compute(&c);
    wait_for("the first push", CONVERGE, || {
        file_data(&scene.home, "both.txt").as_deref() == Some(b"base")
    });
    wait_converged(&scene, &c);
    // Both sides edit while the compute agent is down.
    compute.kill();
    write(&scene.home.join("both.txt"), b"project wins");
    write(&c.upper.join("both.txt"), b"compute loses");
    let _compute = scene.start_compute(&c);
    wait_for("the conflict to resolve", CONVERGE, || {
        file_data(&c.upper, "both.txt").as_deref() == Some(b"project wins")
    });
    assert_eq!(
        file_data(&scene.home, "both.txt").as_deref(),
        Some(&b"project wins"[..])
    );
    assert_eq!(
        conflicts(&scene.home),
        vec![(b"both.txt".to_vec(), b"compute loses".to_vec())]
    );
    drop(project);
}

#[test]
fn deletes_travel_both_ways() {
    let scene = Scene::new();
    let c = scene.compute_dirs(1);
    write(&scene.home.join("old/project-only.txt"), b"lower");
    write(&c.upper.join("mine.txt"), b"mine");
    write(&c.upper.join("gone-dir/child"), b"x");
    let _project = scene.start_project();
    let _compute = scene.start_compute(&c);
    wait_for("the first push", CONVERGE, || {
        scene.home.join("gone-dir/child").exists()
    });
    // Compute side: delete a project path and a synced directory, each
    // with its whiteout, as the union does (absence alone is no deletion).
    write_whiteout(&c.whiteouts, "old/project-only.txt");
    std::fs::remove_dir_all(c.upper.join("gone-dir")).unwrap();
    write_whiteout(&c.whiteouts, "gone-dir");
    // Project side: delete a synced file.
    std::fs::remove_file(scene.home.join("mine.txt")).unwrap();
    wait_for("deletes both ways", CONVERGE, || {
        !scene.home.join("old/project-only.txt").exists()
            && !scene.home.join("gone-dir").exists()
            && !c.upper.join("mine.txt").exists()
    });
    assert!(scene.home.join("old").is_dir(), "only the file was deleted");
    wait_for("the whiteout to go", CONVERGE, || {
        unionsync_tests::whiteouts(&c.whiteouts).is_empty()
    });
    assert!(conflicts(&scene.home).is_empty());
}

#[test]
fn a_synced_file_missing_from_the_upper_without_a_whiteout_is_not_deleted() {
    let scene = Scene::new();
    let c = scene.compute_dirs(1);
    write(&c.upper.join("kept.txt"), b"mine");
    let _project = scene.start_project();
    let _compute = scene.start_compute(&c);
    wait_for("the first push", CONVERGE, || {
        file_data(&scene.home, "kept.txt").as_deref() == Some(&b"mine"[..])
    });
    // Gone from the upper, but no user deleted it: no whiteout.
    std::fs::remove_file(c.upper.join("kept.txt")).unwrap();
    write(&c.upper.join("marker.txt"), b"later");
    wait_for("a later sync", CONVERGE, || {
        scene.home.join("marker.txt").exists()
    });
    assert_eq!(
        file_data(&scene.home, "kept.txt").as_deref(),
        Some(&b"mine"[..])
    );
}

#[test]
fn a_read_only_directory_arrives_with_its_children() {
    let scene = Scene::new();
    let c = scene.compute_dirs(1);
    write(&c.upper.join("ro/inside.txt"), b"x");
    chmod(&c.upper.join("ro"), 0o555);
    let _project = scene.start_project();
    let _compute = scene.start_compute(&c);
    wait_converged(&scene, &c);
    assert_eq!(
        file_data(&scene.home, "ro/inside.txt").as_deref(),
        Some(&b"x"[..])
    );
    let mode = std::fs::metadata(scene.home.join("ro"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o555);
}

#[test]
fn set_id_bits_never_cross_the_sync_either_way() {
    let scene = Scene::new();
    let c = scene.compute_dirs(1);
    // Pushed: made setuid in the upper (as root would be able to).
    write(&c.upper.join("pushed"), b"#!/bin/sh\n");
    chmod(&c.upper.join("pushed"), 0o4755);
    // Pulled: a file both sides have, rewritten and made setgid in the
    // project after the first sync.
    write(&c.upper.join("shared"), b"v1");
    let _project = scene.start_project();
    let _compute = scene.start_compute(&c);
    let mode = |p: &Path| std::fs::symlink_metadata(p).map(|m| m.permissions().mode() & 0o7777);
    wait_for("the push", CONVERGE, || {
        mode(&scene.home.join("pushed")).is_ok() && mode(&scene.home.join("shared")).is_ok()
    });
    assert_eq!(mode(&scene.home.join("pushed")).unwrap(), 0o755);
    write(&scene.home.join("shared"), b"v2 from the project");
    chmod(&scene.home.join("shared"), 0o2755);
    wait_for("the pull", CONVERGE, || {
        file_data(&c.upper, "shared").as_deref() == Some(&b"v2 from the project"[..])
    });
    assert_eq!(mode(&c.upper.join("shared")).unwrap(), 0o755);
}

#[test]
fn several_compute_servers_sync_against_one_project_each_with_its_own_base() {
    let scene = Scene::new();
    let one = scene.compute_dirs(1);
    let two = scene.compute_dirs(2);
    write(&one.upper.join("from-one.txt"), b"1");
    write(&two.upper.join("from-two.txt"), b"2");
    let _project = scene.start_project();
    let _a = scene.start_compute(&one);
    let _b = scene.start_compute(&two);
    wait_for("both pushes", CONVERGE, || {
        scene.home.join("from-one.txt").exists() && scene.home.join("from-two.txt").exists()
    });
    wait_converged(&scene, &one);
    wait_converged(&scene, &two);
    wait_for("a base per compute server", CONVERGE, || {
        ["1", "2"]
            .iter()
            .all(|id| scene.home.join(".unionsync/bases").join(id).is_file())
    });
}

#[test]
fn a_wrong_token_is_refused_and_changes_nothing() {
    let scene = Scene::new();
    let c = scene.compute_dirs(1);
    write(&c.upper.join("intruder.txt"), b"x");
    let wrong = scene.path().join("wrong-token");
    std::fs::write(&wrong, "not-the-secret").unwrap();
    let project = scene.start_project();
    let _compute = scene.start_compute_with_token(&c, &wrong);
    wait_for("the refusal in the compute log", CONVERGE, || {
        std::fs::read_to_string(&project.log).is_ok_and(|log| log.contains("token"))
    });
    std::thread::sleep(Duration::from_millis(500));
    assert!(tree(&scene.home).is_empty(), "nothing reached the home");
    assert!(!scene.home.join(".unionsync/bases/1").exists());
}

/// Big enough that a transfer is still running when the test kills a side.
const BIG: usize = 192 << 20;

fn big_content(seed: u8) -> Vec<u8> {
    // Poorly compressible, so lz4 does not make it instant.
    let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ u64::from(seed);
    (0..BIG)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// Waits until some content sits in `staging` (a transfer is under way).
fn wait_staging(staging: &Path) {
    wait_for("a transfer in flight", CONVERGE, || {
        tree(staging)
            .values()
            .any(|e| matches!(e, Entry::File { data, .. } if !data.is_empty()))
    });
}

#[test]
fn kill_9_of_the_project_server_mid_transfer_loses_nothing() {
    let scene = Scene::new();
    let c = scene.compute_dirs(1);
    let big = big_content(1);
    write(&c.upper.join("big.bin"), &big);
    write(&c.upper.join("small.txt"), b"small");
    let project = scene.start_project();
    let _compute = scene.start_compute(&c);
    wait_staging(&scene.home.join(".unionsync/staging/1"));
    project.kill();
    let _project = scene.start_project();
    wait_converged(&scene, &c);
    assert!(file_data(&scene.home, "big.bin") == Some(big));
    assert_eq!(
        file_data(&c.upper, "small.txt").as_deref(),
        Some(&b"small"[..])
    );
    assert!(conflicts(&scene.home).is_empty());
}

#[test]
fn kill_9_of_the_compute_agent_mid_transfer_loses_nothing() {
    let scene = Scene::new();
    let c = scene.compute_dirs(1);
    write(&c.upper.join("model.bin"), b"v1");
    write(&c.upper.join("keep.txt"), b"keep");
    let _project = scene.start_project();
    let compute = scene.start_compute(&c);
    wait_converged(&scene, &c);
    let big = big_content(2);
    write(&scene.home.join("model.bin"), &big);
    wait_staging(&c.upper.join(".unionsync/staging"));
    compute.kill();
    let _compute = scene.start_compute(&c);
    wait_for("the pull after the restart", CONVERGE, || {
        std::fs::metadata(c.upper.join("model.bin")).is_ok_and(|m| m.len() == BIG as u64)
    });
    wait_converged(&scene, &c);
    assert!(file_data(&c.upper, "model.bin") == Some(big));
    assert_eq!(
        file_data(&scene.home, "keep.txt").as_deref(),
        Some(&b"keep"[..])
    );
    assert!(conflicts(&scene.home).is_empty());
}

#[test]
fn wss_with_a_trusted_certificate_syncs() {
    let scene = Scene::new();
    let (cert, key) = self_signed(scene.path());
    let c = scene.compute_dirs(1);
    write(&c.upper.join("over-tls.txt"), b"encrypted on the way");
    let _project = scene.start_tls_project(&cert, &key);
    let _compute = scene.start_tls_compute(&c, &cert);
    wait_converged(&scene, &c);
    wait_for("the file over TLS", CONVERGE, || {
        file_data(&scene.home, "over-tls.txt").is_some()
    });
}

#[test]
fn wss_to_an_untrusted_certificate_moves_nothing() {
    let scene = Scene::new();
    let (cert, key) = self_signed(scene.path());
    let c = scene.compute_dirs(1);
    write(&c.upper.join("secret.txt"), b"not for an impostor");
    let project = scene.start_tls_project(&cert, &key);
    // No --ca-cert: the self-signed certificate is not trusted.
    let url = format!("wss://localhost:{}/", scene.port);
    let _compute = scene.start_compute_with(&c, &url, &scene.token, &[]);
    wait_for("the failed handshake in the project log", CONVERGE, || {
        std::fs::read_to_string(&project.log).is_ok_and(|log| log.contains("TLS handshake failed"))
    });
    assert!(tree(&scene.home).is_empty());
}

/// More changes than one 16 MiB frame holds (about 20 MiB of `Changes`,
/// and as much of `ComputeApplied` and of the index) still make one sync:
/// every list goes in parts. (Long symlink targets make big entries, so
/// few paths are enough.)
#[test]
fn a_first_sync_of_more_paths_than_one_frame_holds_completes() {
    let scene = Scene::new();
    let c = scene.compute_dirs(1);
    let target = "t/".repeat(2000);
    for dir in 0..5 {
        let dir = c.upper.join(format!("d{dir}"));
        std::fs::create_dir(&dir).unwrap();
        for link in 0..1000 {
            symlink(&target, dir.join(format!("link{link:04}"))).unwrap();
        }
    }
    let _project = scene.start_project();
    let _compute = scene.start_compute(&c);
    wait_converged(&scene, &c);
    assert_eq!(tree(&scene.home).len(), 5 * 1001);
}
