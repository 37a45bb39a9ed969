//! `unionsync status | sync | clear-error` against real daemons, over
//! their control sockets (each test passes its own `--control`).

use std::ffi::OsStr;
use std::io::{BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use unionsync::control::{
    self, ComputeStatusView, ProjectStatusView, Request, Response, StatusView,
};
use unionsync_tests::{binary, wait_for, Scene};

const PATIENCE: Duration = Duration::from_secs(60);

/// `unionsync ARGS` to completion.
fn cli(args: &[&OsStr]) -> Output {
    Command::new(binary())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running unionsync")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `unionsync status --json --control SOCKET`, parsed; `None` while no
/// daemon answers there.
fn status(socket: &Path) -> Option<StatusView> {
    let out = cli(&[
        "status".as_ref(),
        "--json".as_ref(),
        "--control".as_ref(),
        socket.as_os_str(),
    ]);
    if !out.status.success() {
        return None;
    }
    match control::decode::<StatusView>(&out.stdout) {
        Ok(view) => Some(view),
        Err(error) => panic!("status --json printed {:?}: {error}", text(&out.stdout)),
    }
}

fn compute_status(socket: &Path) -> Option<ComputeStatusView> {
    match status(socket)? {
        StatusView::Compute(view) => Some(view),
        other => panic!("a compute socket answered {other:?}"),
    }
}

fn project_status(socket: &Path) -> Option<ProjectStatusView> {
    match status(socket)? {
        StatusView::Project(view) => Some(view),
        other => panic!("a project socket answered {other:?}"),
    }
}

/// Polls the compute daemon's status until `done` holds for it.
fn wait_compute(
    socket: &Path,
    what: &str,
    done: impl Fn(&ComputeStatusView) -> bool,
) -> ComputeStatusView {
    let mut seen = None;
    wait_for(what, PATIENCE, || {
        seen = compute_status(socket).filter(|view| done(view));
        seen.is_some()
    });
    seen.expect("seen when done")
}

fn socket(scene: &Scene, name: &str) -> PathBuf {
    scene.path().join(format!("{name}.sock"))
}

fn control_arg(socket: &Path) -> [&OsStr; 2] {
    ["--control".as_ref(), socket.as_os_str()]
}

#[test]
fn compute_status_shows_the_last_sync_after_one_happened() {
    let scene = Scene::new();
    let c = scene.compute_dirs(1);
    std::fs::write(c.upper.join("a.txt"), b"a").unwrap();
    let sock = socket(&scene, "compute");
    let _project = scene.start_project();
    let _compute = scene.start_compute_with(&c, &scene.url(), &scene.token, &control_arg(&sock));
    let view = wait_compute(&sock, "a sync in the status", |v| v.last_sync.is_some());
    let last = view.last_sync.as_ref().unwrap();
    assert!(last.sync >= 1, "{view:?}");
    assert!(last.epoch >= 1, "{view:?}");
    assert!(
        control::unix_now().abs_diff(last.finished_at) < 60,
        "{view:?}"
    );
    assert!(
        view.totals.syncs >= 1 && view.totals.pushed >= 1,
        "{view:?}"
    );
    assert_eq!(view.compute_id, 1);
    assert_eq!(view.project, scene.url());
    assert!(!view.paused);
    assert_eq!(view.failures_in_a_row, 0);
    assert_eq!(view.last_error, None);
    // And in words.
    let out = cli(&["status".as_ref(), "--control".as_ref(), sock.as_os_str()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let words = text(&out.stdout);
    for line in [
        "phase",
        "last sync",
        "ago, pushed",
        "next sync",
        "paused",
        "no",
    ] {
        assert!(words.contains(line), "{line:?} missing from:\n{words}");
    }
}

#[test]
fn project_status_lists_the_connected_compute_id() {
    let scene = Scene::new();
    let c = scene.compute_dirs(7);
    let sock = socket(&scene, "project");
    let _project = scene.start_project_with(&control_arg(&sock));
    let _compute = scene.start_compute(&c);
    let mut seen = None;
    wait_for("compute 7 in the project's status", PATIENCE, || {
        seen = project_status(&sock).filter(|v| v.computes.iter().any(|c| c.compute_id == 7));
        seen.is_some()
    });
    let view = seen.unwrap();
    assert_eq!(view.computes.len(), 1, "{view:?}");
    assert!(view.computes[0].peer.starts_with("127.0.0.1:"), "{view:?}");
    assert_eq!(view.url, scene.url());
    let out = cli(&["status".as_ref(), "--control".as_ref(), sock.as_os_str()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let words = text(&out.stdout);
    assert!(words.contains("1 compute server connected"), "{words}");
    assert!(words.contains("PEER"), "{words}");
}

#[test]
fn project_status_drops_a_compute_server_that_disconnected() {
    let scene = Scene::new();
    let c = scene.compute_dirs(3);
    let sock = socket(&scene, "project");
    let _project = scene.start_project_with(&control_arg(&sock));
    let compute = scene.start_compute(&c);
    wait_for("compute 3 connected", PATIENCE, || {
        project_status(&sock).is_some_and(|v| v.computes.len() == 1)
    });
    compute.kill();
    wait_for("compute 3 gone from the status", PATIENCE, || {
        project_status(&sock).is_some_and(|v| v.computes.is_empty())
    });
}

#[test]
fn sync_wait_returns_after_a_sync_that_includes_a_file_written_just_before() {
    let scene = Scene::new();
    let c = scene.compute_dirs(1);
    let sock = socket(&scene, "compute");
    let _project = scene.start_project();
    // Syncing once a minute: only the requested sync can carry the file.
    let extra: [&OsStr; 6] = [
        "--control".as_ref(),
        sock.as_os_str(),
        "--interval-min".as_ref(),
        "60".as_ref(),
        "--interval-max".as_ref(),
        "60".as_ref(),
    ];
    let _compute = scene.start_compute_with(&c, &scene.url(), &scene.token, &extra);
    wait_compute(&sock, "the first sync", |v| v.last_sync.is_some());
    std::fs::write(c.upper.join("fresh.txt"), b"written just before").unwrap();
    let out = cli(&[
        "sync".as_ref(),
        "--wait".as_ref(),
        "--control".as_ref(),
        sock.as_os_str(),
    ]);
    let home = std::fs::read(scene.home.join("fresh.txt")).ok();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(home.as_deref(), Some(&b"written just before"[..]));
    let said = text(&out.stdout);
    assert!(said.contains("done: pushed 1"), "{said}");
}

#[test]
fn clear_error_resumes_a_paused_agent() {
    let scene = Scene::new();
    let c = scene.compute_dirs(1);
    let sock = socket(&scene, "compute");
    let wrong = scene.path().join("wrong-token");
    std::fs::write(&wrong, "not the secret\n").unwrap();
    let _project = scene.start_project();
    let _compute = scene.start_compute_with(&c, &scene.url(), &wrong, &control_arg(&sock));
    let view = wait_compute(&sock, "the agent to pause", |v| v.paused);
    assert!(view.failures_in_a_row >= 3, "{view:?}");
    let error = view
        .last_error
        .clone()
        .expect("the last error in the status");
    assert!(error.contains("token"), "{error}");
    let recorded = c.upper.join(".unionsync/state/last-error");
    let file = std::fs::read_to_string(&recorded).expect("the last-error file");
    assert!(file.contains("token"), "{file}");
    let out = cli(&[
        "clear-error".as_ref(),
        "--control".as_ref(),
        sock.as_os_str(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let view = compute_status(&sock).expect("the status");
    assert!(!view.paused, "{view:?}");
    assert!(view.failures_in_a_row < 3, "{view:?}");
}

#[test]
fn status_with_no_daemon_exits_non_zero_naming_the_paths_tried() {
    let runtime = tempfile::tempdir().unwrap();
    let out = Command::new(binary())
        .arg("status")
        .env("XDG_RUNTIME_DIR", runtime.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let said = text(&out.stderr);
    assert!(said.contains("no unionsync daemon is running"), "{said}");
    for side in ["compute", "project"] {
        let path = runtime.path().join(format!("unionsync/{side}.sock"));
        assert!(said.contains(&path.display().to_string()), "{said}");
    }
}

#[test]
fn a_garbage_line_gets_an_error_and_the_daemon_keeps_answering() {
    let scene = Scene::new();
    let c = scene.compute_dirs(1);
    let sock = socket(&scene, "compute");
    let _project = scene.start_project();
    let mut compute = scene.start_compute_with(&c, &scene.url(), &scene.token, &control_arg(&sock));
    wait_compute(&sock, "the control socket", |_| true);
    let long = vec![b'x'; 100 * 1024];
    for garbage in [&b"this is not json\n"[..], b"{\"SyncNow\":{}}\n", &long] {
        let mut stream = std::os::unix::net::UnixStream::connect(&sock).unwrap();
        // The daemon may answer before reading all of a long line.
        let _ = stream.write_all(garbage);
        let line = control::read_line_blocking(BufReader::new(stream), control::MAX_RESPONSE)
            .unwrap()
            .expect("an answer");
        let answer = control::decode::<Response>(&line).unwrap();
        assert!(matches!(answer, Response::Error(_)), "{answer:?}");
    }
    assert!(compute.running());
    let answer = control::call(&sock, &Request::Status).unwrap();
    assert!(matches!(answer, Response::Status(StatusView::Compute(_))));
}

#[test]
fn a_second_compute_daemon_on_the_same_socket_is_refused() {
    let scene = Scene::new();
    let sock = socket(&scene, "compute");
    let _first = scene.start_compute_with(
        &scene.compute_dirs(1),
        &scene.url(),
        &scene.token,
        &control_arg(&sock),
    );
    wait_compute(&sock, "the first daemon's socket", |_| true);
    let second = scene.start_compute_with(
        &scene.compute_dirs(2),
        &scene.url(),
        &scene.token,
        &control_arg(&sock),
    );
    let (code, log) = second.wait_exit(PATIENCE);
    assert_ne!(code, Some(0), "{log}");
    assert!(log.contains("another compute daemon is running"), "{log}");
    assert!(
        compute_status(&sock).is_some(),
        "the first one still answers"
    );
}

#[test]
fn sync_on_the_project_side_says_to_run_it_on_the_compute_server() {
    let scene = Scene::new();
    let sock = socket(&scene, "project");
    let _project = scene.start_project_with(&control_arg(&sock));
    wait_for("the project's control socket", PATIENCE, || {
        project_status(&sock).is_some()
    });
    let out = cli(&["sync".as_ref(), "--control".as_ref(), sock.as_os_str()]);
    assert!(!out.status.success());
    let said = text(&out.stderr);
    assert!(said.contains(control::NOT_ON_PROJECT), "{said}");
}
