//! `unionsync remote …` on the project host acting on a mounted compute
//! server's view, and `unionsync copy --from-project` on the compute host,
//! with real daemons.

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use unionsync_tests::{
    binary, fuse_available, same_content, wait_for, write_incompressible, Daemon, Scene,
};

const CONVERGE: Duration = Duration::from_secs(60);

fn cli(args: &[&OsStr]) -> Output {
    Command::new(binary()).args(args).output().unwrap()
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// `unionsync remote <args> --compute 1 --control <project socket>`.
fn remote(project: &Daemon, args: &[&str]) -> Output {
    let socket = project.control_socket("project");
    let mut all: Vec<&OsStr> = vec!["remote".as_ref(), args[0].as_ref()];
    all.extend([
        "--compute".as_ref(),
        "1".as_ref(),
        "--control".as_ref(),
        socket.as_os_str(),
    ]);
    all.extend(args[1..].iter().map(OsStr::new));
    cli(&all)
}

/// `unionsync copy <direction> <path> --control <compute socket>`.
fn copy(compute: &Daemon, direction: &str, path: &Path) -> Output {
    let socket = compute.control_socket("compute");
    let args: [&OsStr; 5] = [
        "copy".as_ref(),
        direction.as_ref(),
        path.as_os_str(),
        "--control".as_ref(),
        socket.as_os_str(),
    ];
    cli(&args)
}

/// A project home with `notes.txt`, served, and compute server 1 mounted
/// over it and connected.
fn connected() -> Option<(Scene, unionsync_tests::MountDirs, Daemon, Daemon)> {
    if !fuse_available() {
        return None;
    }
    let scene = Scene::new();
    std::fs::write(scene.home.join("notes.txt"), b"project notes").unwrap();
    let m = scene.mount_dirs(1);
    let project = scene.start_project();
    let compute = scene.start_compute_mount(&m);
    wait_for("compute server 1 connected", CONVERGE, || {
        remote(&project, &["ls"]).status.success()
    });
    Some((scene, m, project, compute))
}

fn read(path: &Path) -> Option<Vec<u8>> {
    std::fs::read(path).ok()
}

#[test]
fn remote_ls_lists_the_compute_view_with_its_own_files() {
    let Some((_scene, m, project, _compute)) = connected() else {
        return;
    };
    std::fs::write(m.mount.join("only-here.txt"), b"x").unwrap();
    let listed = remote(&project, &["ls"]);
    let out = text(&listed);
    assert!(listed.status.success(), "{out}");
    assert!(
        out.contains("only-here.txt") && out.contains("notes.txt"),
        "{out}"
    );
}

#[test]
fn remote_rm_removes_from_the_view_and_the_sync_deletes_it_in_the_project() {
    let Some((scene, m, project, _compute)) = connected() else {
        return;
    };
    let removed = remote(&project, &["rm", "notes.txt"]);
    assert!(removed.status.success(), "{}", text(&removed));
    assert!(read(&m.mount.join("notes.txt")).is_none());
    wait_for("the deletion in the project", CONVERGE, || {
        !scene.home.join("notes.txt").exists()
    });
}

#[test]
fn remote_mv_moves_into_a_directory_of_the_view() {
    let Some((scene, m, project, _compute)) = connected() else {
        return;
    };
    std::fs::create_dir(m.mount.join("logs")).unwrap();
    let moved = remote(&project, &["mv", "notes.txt", "logs"]);
    assert!(moved.status.success(), "{}", text(&moved));
    assert_eq!(
        read(&m.mount.join("logs/notes.txt")).as_deref(),
        Some(&b"project notes"[..])
    );
    wait_for("the move in the project", CONVERGE, || {
        read(&scene.home.join("logs/notes.txt")).is_some() && !scene.home.join("notes.txt").exists()
    });
}

#[test]
fn remote_rename_onto_an_existing_path_is_refused() {
    let Some((_scene, m, project, _compute)) = connected() else {
        return;
    };
    std::fs::write(m.mount.join("other.txt"), b"o").unwrap();
    let refused = remote(&project, &["rename", "notes.txt", "other.txt"]);
    assert!(!refused.status.success());
    assert!(text(&refused).contains("exists"), "{}", text(&refused));
    assert_eq!(read(&m.mount.join("other.txt")).as_deref(), Some(&b"o"[..]));
}

#[test]
fn remote_for_a_compute_server_that_is_not_connected_says_so() {
    let Some((_scene, _m, project, _compute)) = connected() else {
        return;
    };
    let socket = project.control_socket("project");
    let args: [&OsStr; 7] = [
        "remote".as_ref(),
        "ls".as_ref(),
        "--compute".as_ref(),
        "7".as_ref(),
        "--control".as_ref(),
        socket.as_os_str(),
        ".".as_ref(),
    ];
    let answer = cli(&args);
    assert!(!answer.status.success());
    assert!(text(&answer).contains("not connected"), "{}", text(&answer));
}

#[test]
fn copy_from_project_brings_back_the_project_version_even_with_the_project_away() {
    let Some((_scene, m, project, compute)) = connected() else {
        return;
    };
    project.kill();
    std::fs::write(m.mount.join("notes.txt"), b"local edit").unwrap();
    let copied = copy(&compute, "--from-project", &m.mount.join("notes.txt"));
    assert!(copied.status.success(), "{}", text(&copied));
    assert_eq!(
        read(&m.mount.join("notes.txt")).as_deref(),
        Some(&b"project notes"[..])
    );
    let replaced = std::fs::read_dir(m.upper.join(".unionsync/replaced"))
        .unwrap()
        .map(|stamp| stamp.unwrap().path().join("notes.txt"))
        .find_map(|path| read(&path));
    assert_eq!(replaced.as_deref(), Some(&b"local edit"[..]));
}

#[test]
fn copy_to_project_puts_a_tree_in_the_project_and_keeps_the_project_version() {
    let Some((scene, m, _project, compute)) = connected() else {
        return;
    };
    // `scratch` is local-only: only an explicit copy takes it over.
    std::fs::create_dir_all(m.mount.join("scratch/run/logs")).unwrap();
    std::fs::write(m.mount.join("scratch/run/out.txt"), b"from compute").unwrap();
    std::fs::write(m.mount.join("scratch/run/logs/1.log"), b"log").unwrap();
    std::fs::create_dir_all(scene.home.join("scratch/run")).unwrap();
    std::fs::write(scene.home.join("scratch/run/out.txt"), b"the project's").unwrap();
    let copied = copy(&compute, "--to-project", &m.mount.join("scratch/run"));
    assert!(copied.status.success(), "{}", text(&copied));
    assert_eq!(
        read(&scene.home.join("scratch/run/out.txt")).as_deref(),
        Some(&b"from compute"[..])
    );
    assert_eq!(
        read(&scene.home.join("scratch/run/logs/1.log")).as_deref(),
        Some(&b"log"[..])
    );
    let kept = unionsync_tests::conflicts(&scene.home);
    assert!(
        kept.iter()
            .any(|(path, data)| path == b"scratch/run/out.txt" && data == b"the project's"),
        "{kept:?}"
    );
}

/// Over the 256 MiB that `copy --to-project` once refused (it read each
/// file whole): it streams now, so the compute daemon's memory stays far
/// below the file's size.
#[test]
fn copy_to_project_carries_a_file_over_the_old_cap_in_bounded_memory() {
    const SIZE: u64 = 264 << 20;
    let Some((scene, m, _project, compute)) = connected() else {
        return;
    };
    std::fs::create_dir_all(m.mount.join("scratch")).unwrap();
    write_incompressible(&m.mount.join("scratch/big"), SIZE);
    let before = compute.peak_rss();
    let copied = copy(&compute, "--to-project", &m.mount.join("scratch/big"));
    assert!(copied.status.success(), "{}", text(&copied));
    assert!(same_content(
        &scene.home.join("scratch/big"),
        &m.mount.join("scratch/big")
    ));
    let peak = compute.peak_rss();
    assert!(
        peak < 128 << 20,
        "the compute daemon peaked at {} MiB (before the copy: {} MiB)",
        peak >> 20,
        before >> 20
    );
}

#[test]
fn copy_to_project_without_a_connection_says_so() {
    let Some((_scene, m, project, compute)) = connected() else {
        return;
    };
    project.kill();
    std::fs::write(m.mount.join("new.txt"), b"n").unwrap();
    let refused = copy(&compute, "--to-project", &m.mount.join("new.txt"));
    assert!(!refused.status.success());
    // "not connected", or "connection lost" if the agent had not noticed yet.
    assert!(text(&refused).contains("connect"), "{}", text(&refused));
}
