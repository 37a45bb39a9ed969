//! End to end over a real network filesystem: a throwaway sshd on
//! 127.0.0.1, the project home mounted through it with sshfs as the
//! compute server's lower, a real `unionsync project serve` and a real
//! `unionsync compute mount`.
//!
//! ```text
//!  scene/home ◄── project serve ◄──── ws ────┐
//!      ▲                                      │
//!      └── sshd ◄── sshfs (scene/sshfs) ◄── compute mount (scene/mounted-1/mnt)
//! ```
//!
//! Every test ends by waiting for quiescence and comparing the union with
//! the home: same paths, types, contents, modes and symlink targets
//! (local-only paths and `.unionsync` aside), and `diff -r` agrees.
//! The guards (daemons, mounts, sshd and its keys) are undone on drop, in
//! the order of [`Rig`]'s fields, also when a test fails.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use unionsync_tests::sshd::{sshfs_e2e_available, Sshd, Sshfs, Tmpfs};
use unionsync_tests::{binary, conflicts, tree, wait_for, within, Daemon, Entry, MountDirs, Scene};

/// How long a quiet system may take to converge.
const CONVERGE: Duration = Duration::from_secs(60);
/// The defaults of `compute mount --local-only`.
const LOCAL_ONLY: [&str; 3] = ["scratch", ".cache", ".local"];

/// One project (home, server, sshd, sshfs) and one mounted compute server.
/// Fields drop in order: the union first, then the project server, the
/// sshfs mount, sshd, the tmpfs under the home, and the scene.
struct Rig {
    compute: Option<Daemon>,
    project: Option<Daemon>,
    _sshfs: Sshfs,
    sshd: Sshd,
    _tmpfs: Option<Tmpfs>,
    m: MountDirs,
    scene: Scene,
}

impl Rig {
    /// `home` fills the project home before anything starts; with
    /// `tmpfs_size` the home is a tmpfs of that size.
    fn new(tmpfs_size: Option<&str>, home: impl FnOnce(&Path)) -> Rig {
        let scene = Scene::new();
        let tmpfs = tmpfs_size.map(|size| Tmpfs::mount(&scene.home, size));
        home(&scene.home);
        let sshd = Sshd::start_new();
        let sshfs = Sshfs::mount(&sshd, &scene.home, &scene.path().join("sshfs"));
        let project = scene.start_project();
        let m = scene.mount_dirs(1);
        let compute = scene.start_compute_mount_over(&m, &sshfs.mountpoint, &[]);
        Rig {
            compute: Some(compute),
            project: Some(project),
            _sshfs: sshfs,
            sshd,
            _tmpfs: tmpfs,
            m,
            scene,
        }
    }

    /// `path` through the mount.
    fn mnt(&self, path: &str) -> PathBuf {
        self.m.mount.join(path)
    }

    /// `path` in the project home.
    fn home(&self, path: &str) -> PathBuf {
        self.scene.home.join(path)
    }

    /// `kill -9` of the project server.
    fn kill_project(&mut self) {
        if let Some(project) = self.project.take() {
            project.kill();
        }
    }

    fn start_project(&mut self) {
        assert!(self.project.is_none());
        self.project = Some(self.scene.start_project());
    }

    /// `unionsync ARGS --control <the compute server's socket>`: its
    /// output (stdout and stderr); panics if it fails.
    fn cli(&self, args: &[&str]) -> String {
        let compute = self.compute.as_ref().expect("a compute server");
        let out = Command::new(binary())
            .args(args)
            .arg("--control")
            .arg(compute.control_socket("compute"))
            .stdin(std::process::Stdio::null())
            .output()
            .expect("running unionsync");
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "unionsync {args:?}: {said}");
        said
    }

    /// The conflicts area is empty (else: which paths lost).
    fn assert_no_conflicts(&self) {
        let lost: Vec<String> = conflicts(&self.scene.home)
            .into_iter()
            .map(|(path, data)| {
                format!("{} ({} bytes)", String::from_utf8_lossy(&path), data.len())
            })
            .collect();
        assert!(
            lost.is_empty(),
            "{} unexpected conflicts: {lost:?}",
            lost.len()
        );
    }

    fn project_log(&self) -> String {
        let log = &self.project.as_ref().expect("a project server").log;
        std::fs::read_to_string(log).unwrap_or_default()
    }

    fn compute_log(&self) -> String {
        let log = &self.compute.as_ref().expect("a compute server").log;
        std::fs::read_to_string(log).unwrap_or_default()
    }

    /// Waits until the union shows exactly the home (see [`view`]), then
    /// checks `diff -r` agrees.
    fn wait_converged(&self, timeout: Duration) {
        let started = Instant::now();
        loop {
            let mount = view(&self.m.mount);
            let home = view(&self.scene.home);
            // Both views agree, and so does `diff -r` right after (a late
            // index delta may still change the mount between the two).
            let disagreement = match mount == home {
                true => diff_r(&self.m.mount, &self.scene.home).err(),
                false => Some(difference(&mount, &home)),
            };
            let Some(disagreement) = disagreement else {
                break;
            };
            if started.elapsed() > timeout {
                panic!(
                    "the mount and the home did not converge within {timeout:?}:\n{disagreement}"
                );
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        eprintln!("converged after {:?}", started.elapsed());
    }
}

/// What the union must agree on with the home: [`tree`] without the
/// local-only paths and without file mtimes (not part of convergence).
fn view(root: &Path) -> BTreeMap<Vec<u8>, Entry> {
    tree(root)
        .into_iter()
        .filter(|(path, _)| !local_only(path))
        .map(|(path, entry)| match entry {
            Entry::File { mode, data, .. } => (
                path,
                Entry::File {
                    mode,
                    mtime_ns: 0,
                    data,
                },
            ),
            other => (path, other),
        })
        .collect()
}

fn local_only(path: &[u8]) -> bool {
    LOCAL_ONLY.iter().any(|top| {
        path == top.as_bytes()
            || (path.starts_with(top.as_bytes()) && path.get(top.len()) == Some(&b'/'))
    })
}

/// The first few paths where two views differ, for a failure message.
fn difference(mount: &BTreeMap<Vec<u8>, Entry>, home: &BTreeMap<Vec<u8>, Entry>) -> String {
    let show = |e: Option<&Entry>| match e {
        None => "absent".to_string(),
        Some(Entry::File { mode, data, .. }) => format!("file {mode:o}, {} bytes", data.len()),
        Some(other) => format!("{other:?}"),
    };
    let mut keys: Vec<&Vec<u8>> = mount.keys().chain(home.keys()).collect();
    keys.sort();
    keys.dedup();
    let differing: Vec<String> = keys
        .into_iter()
        .filter(|k| mount.get(*k) != home.get(*k))
        .map(|k| {
            format!(
                "  {}: mount {}, home {}",
                String::from_utf8_lossy(k),
                show(mount.get(k)),
                show(home.get(k))
            )
        })
        .collect();
    let shown = differing.iter().take(20).cloned().collect::<Vec<_>>();
    format!("{} paths differ:\n{}", differing.len(), shown.join("\n"))
}

/// `diff -r` (symlinks compared as symlinks) finds nothing between the
/// mount and the home, local-only paths and `.unionsync` aside.
fn diff_r(mount: &Path, home: &Path) -> Result<(), String> {
    let mut diff = Command::new("diff");
    diff.args(["-r", "--no-dereference", "-x", ".unionsync"]);
    for top in LOCAL_ONLY {
        diff.args(["-x", top]);
    }
    let out = diff.arg(mount).arg(home).output().expect("running diff");
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "diff -r {} {} ({}):\n{}{}",
        mount.display(),
        home.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

fn write(path: &Path, data: &[u8]) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(path, data).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

fn read(path: &Path) -> Option<Vec<u8>> {
    std::fs::read(path).ok()
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Deterministic incompressible bytes.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Reads `path`, failing the test if that takes more than `timeout`.
fn read_within(path: &Path, timeout: Duration) -> std::io::Result<Vec<u8>> {
    let what = format!("reading {}", path.display());
    let path = path.to_path_buf();
    within(&what, timeout, move || std::fs::read(path))
}

/// Runs a shell script in `dir`; panics with its output if it fails.
fn sh(dir: &Path, script: &str) -> String {
    let out = Command::new("sh")
        .arg("-ec")
        .arg(script)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .output()
        .expect("running sh");
    assert!(
        out.status.success(),
        "in {}: {script}\nfailed ({}):\n{}{}",
        dir.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

macro_rules! require_tools {
    () => {
        if !sshfs_e2e_available() {
            return;
        }
    };
}

/// A repository of ~3000 small files in 300 directories (sources,
/// headers, executable scripts, symlinks) with two commits.
fn make_repository(dir: &Path) {
    for d in 0..300 {
        let module = dir.join(format!("src/mod{d:03}"));
        for f in 0..3 {
            write(
                &module.join(format!("unit{f}.c")),
                format!(
                    "/* mod{d} unit{f} */\nint f{d}_{f}(void) {{ return {}; }}\n",
                    d * f
                )
                .as_bytes(),
            );
        }
        for f in 0..6 {
            write(
                &module.join(format!("unit{f}.h")),
                format!("#define MOD{d}_{f} {f}\n").as_bytes(),
            );
        }
        if d % 10 == 0 {
            let script = module.join("gen.sh");
            write(&script, b"#!/bin/sh\necho generated\n");
            chmod(&script, 0o755);
        } else {
            write(&module.join("NOTES"), format!("module {d}\n").as_bytes());
        }
        if d % 25 == 0 {
            std::os::unix::fs::symlink("unit0.c", module.join("main.c")).unwrap();
        }
    }
    write(&dir.join("README"), b"a test repository\n");
    std::os::unix::fs::symlink("src/mod000", dir.join("first")).unwrap();
    sh(
        dir,
        "git init -q -b main . && git add -A && \
         git -c user.name=t -c user.email=t@t commit -q -m one && \
         for d in src/mod00*; do echo '/* changed */' >> $d/unit1.c; done && \
         git rm -q src/mod299/NOTES && \
         git -c user.name=t -c user.email=t@t commit -q -am two",
    );
}

/// A "build": one object per source, written to a temp file and renamed
/// as compilers do, then a link step.
const BUILD: &str = r#"for d in src/*/; do
             mkdir -p "build/$d"
             for f in "$d"*.c; do
               [ -L "$f" ] && continue
               o="build/${f%.c}.o"
               sha256sum "$f" > "$o.tmp"
               mv "$o.tmp" "$o"
             done
           done
           cat build/src/*/*.o > build/app
           chmod 755 build/app"#;

/// Clones a repository made by [`make_repository`] into `<mount>/repo`,
/// builds in it and waits for the project to hold the same; returns the
/// origin.
fn clone_and_build(rig: &Rig) -> PathBuf {
    let origin = rig.scene.path().join("origin");
    let started = Instant::now();
    make_repository(&origin);
    eprintln!("made the repository in {:?}", started.elapsed());

    let started = Instant::now();
    let url = format!("file://{}", origin.display());
    sh(&rig.m.mount, &format!("git clone -q '{url}' repo"));
    eprintln!("cloned into the mount in {:?}", started.elapsed());

    let started = Instant::now();
    let repo = rig.mnt("repo");
    sh(&repo, BUILD);
    eprintln!("built in the mount in {:?}", started.elapsed());
    let status = sh(&repo, "git --no-optional-locks status --porcelain");
    assert_eq!(status, "?? build/\n", "git status in the mount");
    assert_eq!(
        sh(&repo, "ls build/src/*/*.o | wc -l").trim(),
        "900",
        "one object per source"
    );

    rig.wait_converged(Duration::from_secs(90));
    let home_repo = rig.home("repo");
    sh(&home_repo, "git fsck --full --no-progress");
    assert_eq!(
        sh(&home_repo, "git --no-optional-locks status --porcelain"),
        "?? build/\n",
        "git status in the project"
    );
    assert_eq!(
        sh(&home_repo, "git rev-parse HEAD"),
        sh(&origin, "git rev-parse HEAD")
    );
    origin
}

#[test]
fn a_git_clone_and_a_build_in_the_mount_converge_with_the_project() {
    require_tools!();
    let rig = Rig::new(None, |_| {});
    clone_and_build(&rig);
    rig.assert_no_conflicts();
}

#[test]
fn a_commit_a_clean_rebuild_and_a_repack_in_the_mount_converge_with_the_project() {
    require_tools!();
    let rig = Rig::new(None, |_| {});
    clone_and_build(&rig);
    // A commit that edits, adds and deletes, a clean rebuild and a repack
    // (which deletes and rewrites the packs), while the clone syncs.
    let repo = rig.mnt("repo");
    let started = Instant::now();
    sh(
        &repo,
        "for d in src/mod1[0-4]*; do echo '/* edited */' >> $d/unit2.c; done && \
         git rm -q -r src/mod150 && \
         mkdir src/mod300 && echo 'int g(void) { return 0; }' > src/mod300/unit0.c && \
         git add src/mod300 && \
         git -c user.name=t -c user.email=t@t commit -q -am three && \
         rm -rf build && git gc -q",
    );
    sh(&repo, BUILD);
    eprintln!("committed, rebuilt and repacked in {:?}", started.elapsed());
    assert_eq!(
        sh(&repo, "git --no-optional-locks status --porcelain"),
        "?? build/\n"
    );
    rig.wait_converged(Duration::from_secs(90));
    let home_repo = rig.home("repo");
    sh(&home_repo, "git fsck --full --no-progress");
    assert_eq!(
        sh(&home_repo, "git rev-parse HEAD"),
        sh(&repo, "git rev-parse HEAD")
    );
    assert_eq!(sh(&home_repo, "git rev-list --count HEAD").trim(), "3");
    assert!(!rig.home("repo/src/mod150").exists());
    rig.assert_no_conflicts();
}

/// A child process, killed and reaped on drop.
struct Child(Option<std::process::Child>);

impl Child {
    fn spawn(command: &mut Command) -> Child {
        Child(Some(command.spawn().expect("starting a child process")))
    }

    fn id(&self) -> u32 {
        self.0.as_ref().expect("running").id()
    }

    fn wait_with_output(mut self) -> std::process::Output {
        let child = self.0.take().expect("running");
        child
            .wait_with_output()
            .expect("waiting for a child process")
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The working directory of process `pid` as the kernel reports it
/// (" (deleted)" appended once its directory entry is gone).
fn cwd_of(pid: u32) -> String {
    std::fs::read_link(format!("/proc/{pid}/cwd"))
        .map(|p| p.display().to_string())
        .unwrap_or_else(|e| format!("(unreadable: {e})"))
}

/// Regression: invalidating a directory named in an index delta unhashed
/// it, so every process working there got ENOENT from getcwd.
#[test]
fn processes_in_a_directory_of_the_mount_keep_their_working_directory_across_syncs() {
    require_tools!();
    let rig = Rig::new(None, |home| {
        write(&home.join("from-project/old.txt"), b"old");
    });
    std::fs::create_dir(rig.mnt("made-here")).unwrap();
    // A shell sitting in each: one in a directory made in the mount (which
    // the next sync creates in the project), one in a project directory
    // (which the project then changes).
    let dirs = [rig.mnt("made-here"), rig.mnt("from-project")];
    let shells: Vec<Child> = dirs
        .iter()
        .map(|dir| Child::spawn(Command::new("sleep").arg("120").current_dir(dir)))
        .collect();
    let go = rig.scene.path().join("go");
    let git_waiting = Child::spawn(
        Command::new("sh")
            .arg("-c")
            .arg("while [ ! -e \"$GO\" ]; do sleep 0.05; done; exec git init -q")
            .current_dir(rig.mnt("made-here"))
            .env("GO", &go)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped()),
    );
    write(&rig.mnt("made-here/a.txt"), b"a");
    write(&rig.home("from-project/new.txt"), b"new");
    wait_for("both changes on the other side", CONVERGE, || {
        rig.home("made-here/a.txt").exists()
            && read(&rig.mnt("from-project/new.txt")).as_deref() == Some(b"new")
    });
    rig.wait_converged(CONVERGE);
    // The index deltas of those syncs have been applied by now.
    std::thread::sleep(Duration::from_secs(1));
    let mut wrong: Vec<String> = shells
        .iter()
        .zip(&dirs)
        .map(|(shell, dir)| (cwd_of(shell.id()), dir.display().to_string()))
        .filter(|(cwd, dir)| cwd != dir)
        .map(|(cwd, dir)| format!("a process in {dir} now has its cwd at {cwd:?}"))
        .collect();
    // What a user sees: git run from a shell that sat there.
    std::fs::write(&go, b"").unwrap();
    let out = git_waiting.wait_with_output();
    if !out.status.success() {
        wrong.push(format!(
            "git init from a shell in made-here: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

/// Regression: paths deleted in the mount reappeared for a moment (the
/// sync dropped their whiteouts while the lower index still listed them),
/// so `rm -rf` failed with "Directory not empty".
#[test]
fn rm_rf_of_a_synced_tree_while_a_sync_runs_succeeds_and_nothing_comes_back() {
    require_tools!();
    let rig = Rig::new(None, |_| {});
    for round in 0..3 {
        let tree_dir = format!("tree-{round}");
        for d in 0..300 {
            for f in 0..3 {
                write(
                    &rig.mnt(&format!("{tree_dir}/build/m{d:03}/u{f}.o")),
                    format!("{round} {d} {f}").as_bytes(),
                );
            }
        }
        wait_for("the tree in the project", CONVERGE, || {
            rig.home(&format!("{tree_dir}/build/m299/u2.o")).exists()
        });
        std::thread::sleep(Duration::from_secs(1));
        // Other work starts a sync; the clean runs while it does.
        for i in 0..50 {
            write(&rig.mnt(&format!("other-{round}/f{i}")), b"x");
        }
        let build = rig.mnt(&format!("{tree_dir}/build"));
        let out = Command::new("rm")
            .arg("-rf")
            .arg(&build)
            .output()
            .expect("running rm");
        assert!(
            out.status.success(),
            "round {round}: rm -rf {}: {}",
            build.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let watch = Instant::now();
        while watch.elapsed() < Duration::from_secs(3) {
            assert!(
                !build.exists(),
                "round {round}: {} came back {:?} after rm -rf",
                build.display(),
                watch.elapsed()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    rig.wait_converged(CONVERGE);
    rig.assert_no_conflicts();
}

#[test]
// Regression: a path deleted and re-created in the mount while the sync
// pushing the deletion ran ended up in the conflicts area and was removed
// from the mount (its whiteout drop was deferred, keeping the old base).
fn a_clean_rebuild_while_a_sync_runs_makes_no_conflicts_and_keeps_every_output() {
    require_tools!();
    let rig = Rig::new(None, |_| {});
    let outputs = |round: u32| -> Vec<(String, Vec<u8>)> {
        (0..900)
            .map(|i| {
                (
                    format!("build/m{:03}/u{}.o", i / 3, i % 3),
                    format!("object {i} of build {round}\n").into_bytes(),
                )
            })
            .collect()
    };
    let mut last = Vec::new();
    for round in 0..4 {
        // `make clean && make`: everything removed, then written again.
        // (Retried: `rm -rf` of a synced tree can fail for a moment, the
        // bug of rm_rf_of_a_synced_tree_while_a_sync_runs_….)
        if round > 0 {
            let mut tries = 0;
            while let Err(e) = std::fs::remove_dir_all(rig.mnt("build")) {
                tries += 1;
                assert!(tries < 50, "round {round}: rm -rf build: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        last = outputs(round);
        for (path, data) in &last {
            write(&rig.mnt(path), data);
        }
        std::thread::sleep(Duration::from_millis(700));
    }
    rig.wait_converged(CONVERGE);
    let missing: Vec<&String> = last
        .iter()
        .filter(|(path, data)| read(&rig.mnt(path)).as_ref() != Some(data))
        .map(|(path, _)| path)
        .collect();
    let lost = conflicts(&rig.scene.home);
    let gone = last
        .iter()
        .filter(|(path, data)| {
            missing.contains(&path)
                && !lost
                    .iter()
                    .any(|(p, d)| p.as_slice() == path.as_bytes() && d == data)
        })
        .count();
    assert!(
        missing.is_empty() && lost.is_empty(),
        "{} of {} outputs of the last build are not in the mount (e.g. {:?}), \
         {gone} of them not even in the conflicts area; \
         {} files went to the conflicts area (e.g. {:?})",
        missing.len(),
        last.len(),
        missing.iter().take(3).collect::<Vec<_>>(),
        lost.len(),
        lost.iter()
            .take(3)
            .map(|(p, d)| (String::from_utf8_lossy(p), String::from_utf8_lossy(d)))
            .collect::<Vec<_>>()
    );
}

#[test]
fn edits_and_deletions_on_both_sides_converge_and_a_conflict_keeps_the_loser() {
    require_tools!();
    let mut rig = Rig::new(None, |home| {
        for name in ["p-edit", "p-del", "c-edit", "c-del", "both", "run"] {
            write(
                &home.join(format!("shared/{name}.txt")),
                format!("{name} v1\n").as_bytes(),
            );
        }
        write(&home.join("p-dir/x/y.txt"), b"y");
        write(&home.join("c-dir/x/y.txt"), b"y");
        std::os::unix::fs::symlink("p-edit.txt", home.join("shared/link")).unwrap();
    });
    wait_for("the home through the mount", CONVERGE, || {
        read(&rig.mnt("shared/c-edit.txt")).as_deref() == Some(b"c-edit v1\n")
    });

    // The compute side.
    write(&rig.mnt("shared/c-edit.txt"), b"c-edit v2 from the mount\n");
    std::fs::remove_file(rig.mnt("shared/c-del.txt")).unwrap();
    chmod(&rig.mnt("shared/run.txt"), 0o755);
    write(&rig.mnt("shared/c-new.txt"), b"new in the mount\n");
    std::os::unix::fs::symlink("c-new.txt", rig.mnt("shared/c-link")).unwrap();
    std::fs::remove_dir_all(rig.mnt("c-dir")).unwrap();
    std::fs::create_dir(rig.mnt("c-made")).unwrap();
    chmod(&rig.mnt("c-made"), 0o700);
    // The project side, through its own filesystem.
    write(
        &rig.home("shared/p-edit.txt"),
        b"p-edit v2 in the project\n",
    );
    std::fs::remove_file(rig.home("shared/p-del.txt")).unwrap();
    std::fs::remove_dir_all(rig.home("p-dir")).unwrap();
    write(&rig.home("shared/p-new.txt"), b"new in the project\n");
    std::fs::remove_file(rig.home("shared/link")).unwrap();
    std::os::unix::fs::symlink("p-new.txt", rig.home("shared/link")).unwrap();
    rig.wait_converged(CONVERGE);
    rig.assert_no_conflicts();

    // A conflict: both sides change the same file while no sync can run.
    rig.kill_project();
    write(
        &rig.mnt("shared/both.txt"),
        b"both: the compute's version\n",
    );
    write(
        &rig.home("shared/both.txt"),
        b"both: the project's version\n",
    );
    rig.start_project();
    rig.wait_converged(CONVERGE);

    assert_eq!(
        read(&rig.home("shared/both.txt")).as_deref(),
        Some(&b"both: the project's version\n"[..]),
        "the project wins"
    );
    let expected = [
        (
            "shared/p-edit.txt",
            Some(&b"p-edit v2 in the project\n"[..]),
        ),
        ("shared/p-del.txt", None),
        ("shared/c-edit.txt", Some(b"c-edit v2 from the mount\n")),
        ("shared/c-del.txt", None),
        ("shared/c-new.txt", Some(b"new in the mount\n")),
        ("shared/p-new.txt", Some(b"new in the project\n")),
        ("p-dir", None),
        ("c-dir", None),
    ];
    for (path, data) in expected {
        match data {
            Some(data) => assert_eq!(read(&rig.home(path)).as_deref(), Some(data), "{path}"),
            None => assert!(!rig.home(path).exists(), "{path} deleted"),
        }
    }
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&rig.home("shared/run.txt")), 0o755);
    assert_eq!(mode(&rig.home("c-made")), 0o700);
    assert_eq!(
        std::fs::read_link(rig.home("shared/c-link")).unwrap(),
        Path::new("c-new.txt")
    );
    assert_eq!(
        std::fs::read_link(rig.mnt("shared/link")).unwrap(),
        Path::new("p-new.txt")
    );
    assert_eq!(
        conflicts(&rig.scene.home),
        vec![(
            b"shared/both.txt".to_vec(),
            b"both: the compute's version\n".to_vec()
        )],
        "the conflicts area holds the loser"
    );
}

#[test]
fn local_only_paths_written_in_the_mount_never_reach_the_project() {
    require_tools!();
    let rig = Rig::new(None, |home| {
        write(&home.join(".cache/from-the-project"), b"not shown");
    });
    write(&rig.mnt(".cache/x"), b"local cache");
    write(&rig.mnt("scratch/big/data.bin"), &noise(1, 100_000));
    write(&rig.mnt(".local/lib/site.py"), b"local");
    write(&rig.mnt("synced.txt"), b"synced");
    wait_for("the synced file in the project", CONVERGE, || {
        read(&rig.home("synced.txt")).as_deref() == Some(b"synced")
    });
    rig.wait_converged(CONVERGE);
    // Several more syncs: still nothing of them in the project.
    std::thread::sleep(Duration::from_secs(2));
    assert!(!rig.home(".cache/x").exists());
    assert!(!rig.home("scratch").exists());
    assert!(!rig.home(".local").exists());
    assert_eq!(
        read(&rig.home(".cache/from-the-project")).as_deref(),
        Some(&b"not shown"[..])
    );
    assert!(!rig.mnt(".cache/from-the-project").exists());
    assert_eq!(
        read(&rig.mnt(".cache/x")).as_deref(),
        Some(&b"local cache"[..])
    );
    assert_eq!(
        read(&rig.mnt("scratch/big/data.bin")),
        Some(noise(1, 100_000))
    );
}

#[test]
fn a_file_read_through_the_mount_is_served_while_sshfs_is_down() {
    require_tools!();
    let cached = noise(2, 300_000);
    let uncached = noise(3, 5_000);
    let mut rig = Rig::new(None, |home| {
        write(&home.join("data/cached.bin"), &cached);
        write(&home.join("data/uncached.bin"), &uncached);
    });
    assert_eq!(read(&rig.mnt("data/cached.bin")), Some(cached.clone()));
    wait_for("the read file cached in the upper", CONVERGE, || {
        read(&rig.m.upper.join("data/cached.bin")).as_ref() == Some(&cached)
    });
    write(&rig.mnt("work/mine.txt"), b"mine");

    rig.sshd.stop();
    let started = Instant::now();
    assert_eq!(
        read_within(&rig.mnt("data/cached.bin"), Duration::from_secs(10))
            .expect("the cached file is served without the network"),
        cached
    );
    let error = read_within(&rig.mnt("data/uncached.bin"), Duration::from_secs(20))
        .expect_err("an uncached lower file cannot be read without the network");
    assert_eq!(error.raw_os_error(), Some(5), "EIO, got {error}");
    assert_eq!(
        read_within(&rig.mnt("work/mine.txt"), Duration::from_secs(10)).unwrap(),
        b"mine"
    );
    write(&rig.mnt("work/more.txt"), b"still writable");
    eprintln!("reads with sshfs down took {:?}", started.elapsed());

    rig.sshd.start();
    wait_for("sshfs to reconnect", Duration::from_secs(30), || {
        read_within(&rig.mnt("data/uncached.bin"), Duration::from_secs(20)).ok()
            == Some(uncached.clone())
    });
    rig.wait_converged(CONVERGE);
    rig.assert_no_conflicts();
}

/// Files written in the mount under `dir`: `count` of `size` bytes each.
fn write_many(
    root: &Path,
    dir: &str,
    count: usize,
    size: usize,
    seed: u64,
) -> Vec<(String, Vec<u8>)> {
    let files: Vec<(String, Vec<u8>)> = (0..count)
        .map(|i| {
            (
                format!("{dir}/d{:02}/f{i:04}.bin", i / 100),
                noise(seed + i as u64, size),
            )
        })
        .collect();
    for (path, data) in &files {
        write(&root.join(path), data);
    }
    files
}

/// How many files are beneath `dir` (names only: no content is read).
fn count_files(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.file_type() {
            Ok(t) if t.is_dir() => count_files(&entry.path()),
            Ok(_) => 1,
            Err(_) => 0,
        })
        .sum()
}

#[test]
fn a_project_server_killed_in_the_middle_of_a_large_push_loses_nothing() {
    require_tools!();
    let mut rig = Rig::new(None, |home| {
        write(&home.join("lower.txt"), b"lower");
    });
    let count = 1500;
    let staging = rig.home(".unionsync/staging");
    let mut all = Vec::new();
    // Killed first while the files stream in (staged, none placed yet),
    // then while they are being placed.
    for (round, phase) in ["receiving", "placing"].into_iter().enumerate() {
        let dir = format!("push-{round}");
        let started = Instant::now();
        let files = write_many(&rig.m.mount, &dir, count, 32 * 1024, 100 + round as u64);
        eprintln!("wrote {count} files in {:?}", started.elapsed());
        let placed = rig.home(&dir);
        let watched = if round == 0 { &staging } else { &placed };
        let deadline = Instant::now() + CONVERGE;
        while count_files(watched) == 0 {
            assert!(Instant::now() < deadline, "the push never started");
            std::thread::sleep(Duration::from_millis(5));
        }
        rig.kill_project();
        let (staged, landed) = (count_files(&staging), count_files(&placed));
        eprintln!(
            "killed the project server while {phase}: {staged} files staged, \
             {landed} of {count} placed"
        );
        assert!(
            landed < count,
            "the push was over before the kill: make it larger"
        );
        all.extend(files);
        // More writes while it is away.
        all.extend(write_many(
            &rig.m.mount,
            &format!("during-{round}"),
            50,
            1000,
            9000 + round as u64 * 100,
        ));
        std::thread::sleep(Duration::from_millis(500));
        rig.start_project();
        rig.wait_converged(CONVERGE);
    }
    for (path, data) in &all {
        assert_eq!(read(&rig.home(path)).as_ref(), Some(data), "{path}");
    }

    // And killed while the compute server pulls: the project rewrites every
    // file of the first push (a new size, to see them arrive).
    let size = 33 * 1024;
    let rewritten: Vec<(String, Vec<u8>)> = all
        .iter()
        .filter(|(path, _)| path.starts_with("push-0/"))
        .enumerate()
        .map(|(i, (path, _))| (path.clone(), noise(20_000 + i as u64, size)))
        .collect();
    for (path, data) in &rewritten {
        write(&rig.home(path), data);
    }
    let compute_staging = rig.m.upper.join(".unionsync/staging");
    let arrived = |rig: &Rig| {
        rewritten
            .iter()
            .filter(|(path, _)| {
                std::fs::metadata(rig.m.upper.join(path)).is_ok_and(|m| m.len() == size as u64)
            })
            .count()
    };
    let deadline = Instant::now() + CONVERGE;
    while count_files(&compute_staging) == 0 && arrived(&rig) == 0 {
        assert!(Instant::now() < deadline, "the pull never started");
        std::thread::sleep(Duration::from_millis(5));
    }
    rig.kill_project();
    let (staged, landed) = (count_files(&compute_staging), arrived(&rig));
    eprintln!(
        "killed the project server while the compute server pulls: {staged} files staged, \
         {landed} of {} placed",
        rewritten.len()
    );
    assert!(
        landed < rewritten.len(),
        "the pull was over before the kill"
    );
    std::thread::sleep(Duration::from_millis(500));
    rig.start_project();
    rig.wait_converged(CONVERGE);
    for (path, data) in &rewritten {
        assert_eq!(
            read(&rig.mnt(path)).as_ref(),
            Some(data),
            "{path} in the mount"
        );
    }
    rig.assert_no_conflicts();
    wait_for("no staged temp file left on either side", CONVERGE, || {
        count_files(&staging) == 0 && count_files(&compute_staging) == 0
    });
}

#[test]
fn writes_while_sshd_and_the_project_server_are_down_succeed_and_converge() {
    require_tools!();
    let mut rig = Rig::new(None, |home| {
        write(&home.join("lower/a.txt"), b"a");
        write(&home.join("lower/b.txt"), b"b");
        write(&home.join("lower/c.txt"), b"c");
    });
    write(&rig.mnt("work/early.txt"), b"early\n");
    assert_eq!(read(&rig.mnt("lower/c.txt")).as_deref(), Some(&b"c"[..]));
    rig.wait_converged(CONVERGE);
    // A project file the mount knows of (from the index) but never read
    // (the comparison above read, and so cached, every other one).
    write(&rig.home("lower/unread.txt"), b"unread");
    wait_for("the new project file listed in the mount", CONVERGE, || {
        rig.mnt("lower/unread.txt").exists()
    });

    rig.sshd.stop();
    rig.kill_project();
    let outage = Instant::now();
    let mut written = Vec::new();
    let mut i = 0;
    while outage.elapsed() < Duration::from_secs(5) {
        let path = format!("work/during/{i:03}.txt");
        write(&rig.mnt(&path), format!("during {i}\n").as_bytes());
        written.push(path);
        i += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut early = std::fs::OpenOptions::new()
        .append(true)
        .open(rig.mnt("work/early.txt"))
        .unwrap();
    std::io::Write::write_all(&mut early, b"appended while down\n").unwrap();
    drop(early);
    std::fs::remove_file(rig.mnt("lower/a.txt")).expect("deleting a lower file while down");
    std::fs::rename(rig.mnt("work/during/000.txt"), rig.mnt("work/renamed.txt")).unwrap();
    written.remove(0);
    std::fs::create_dir(rig.mnt("work/new-dir")).unwrap();
    assert_eq!(
        read_within(&rig.mnt("lower/c.txt"), Duration::from_secs(10)).unwrap(),
        b"c",
        "a file read before the outage is cached"
    );
    // Changing a lower file never read needs its content: EIO, at once.
    let never_read = rig.mnt("lower/unread.txt");
    let append = move || {
        let mut file = std::fs::OpenOptions::new().append(true).open(never_read)?;
        std::io::Write::write_all(&mut file, b"more")
    };
    let error = within(
        "appending to an uncached lower file",
        Duration::from_secs(20),
        append,
    )
    .expect_err("an uncached lower file cannot be copied up without the network");
    assert_eq!(error.raw_os_error(), Some(5), "EIO, got {error}");
    eprintln!(
        "{} writes during a {:?} outage",
        written.len(),
        outage.elapsed()
    );

    rig.sshd.start();
    rig.start_project();
    rig.wait_converged(CONVERGE);
    for path in &written {
        assert!(rig.home(path).is_file(), "{path} reached the project");
    }
    assert_eq!(
        read(&rig.home("work/early.txt")).as_deref(),
        Some(&b"early\nappended while down\n"[..])
    );
    assert_eq!(
        read(&rig.home("work/renamed.txt")).as_deref(),
        Some(&b"during 0\n"[..])
    );
    assert!(!rig.home("lower/a.txt").exists());
    assert!(rig.home("work/new-dir").is_dir());
    rig.assert_no_conflicts();
}

#[test]
fn sync_goes_on_while_only_sshfs_is_down() {
    require_tools!();
    let mut rig = Rig::new(None, |home| {
        write(&home.join("lower/a.txt"), b"a");
    });
    rig.wait_converged(CONVERGE);
    rig.sshd.stop();
    write(&rig.mnt("work/while-sshfs-is-down.txt"), b"pushed anyway");
    std::fs::remove_file(rig.mnt("lower/a.txt")).unwrap();
    write(&rig.home("from-the-project.txt"), b"pulled anyway");
    wait_for("the sync over the websocket alone", CONVERGE, || {
        read(&rig.home("work/while-sshfs-is-down.txt")).as_deref() == Some(b"pushed anyway")
            && !rig.home("lower/a.txt").exists()
    });
    rig.sshd.start();
    rig.wait_converged(CONVERGE);
    rig.assert_no_conflicts();
}

#[test]
fn a_full_project_disk_is_a_clear_error_that_loses_nothing_and_heals_when_space_is_freed() {
    require_tools!();
    let big = noise(4, 3 << 20);
    let rig = Rig::new(Some("8m"), |home| {
        write(&home.join("big.bin"), &big);
        write(&home.join("keep.txt"), b"keep");
    });
    // 6 MiB more than the 5 MiB left.
    let files = write_many(&rig.m.mount, "out", 6, 1 << 20, 500);
    wait_for(
        "a \"No space left\" error in the project log",
        CONVERGE,
        || rig.project_log().contains("No space left"),
    );
    std::thread::sleep(Duration::from_secs(2));
    let project_log = rig.project_log();
    let compute_log = rig.compute_log();
    for line in project_log
        .lines()
        .chain(compute_log.lines())
        .filter(|l| l.contains("No space left") || l.contains("paused"))
        .take(6)
    {
        eprintln!("log: {line}");
    }
    // The compute side keeps everything; the home holds whole files only.
    for (path, data) in &files {
        assert_eq!(
            read(&rig.m.upper.join(path)).as_ref(),
            Some(data),
            "{path} in the upper"
        );
        assert_eq!(
            read(&rig.mnt(path)).as_ref(),
            Some(data),
            "{path} in the mount"
        );
        if let Some(there) = read(&rig.home(path)) {
            assert_eq!(&there, data, "{path} in the home is whole");
        }
    }
    assert_eq!(read(&rig.home("big.bin")), Some(big));
    assert_eq!(read(&rig.home("keep.txt")).as_deref(), Some(&b"keep"[..]));
    let home_files: Vec<String> = tree(&rig.scene.home)
        .into_iter()
        .filter(|(_, e)| matches!(e, Entry::File { .. }))
        .map(|(p, _)| String::from_utf8_lossy(&p).into_owned())
        .collect();
    for path in &home_files {
        assert!(
            path == "big.bin" || path == "keep.txt" || files.iter().any(|(p, _)| p == path),
            "{path}: a stray file in the home"
        );
    }

    // The compute side says why its syncs fail.
    assert!(
        compute_log
            .lines()
            .any(|l| l.contains("sync failed") && l.contains("No space left on device")),
        "the compute log names the full disk:\n{compute_log}"
    );

    // And so does `unionsync status`.
    let status = rig.cli(&["status"]);
    eprintln!("unionsync status:\n{status}");
    assert!(
        status.contains("No space left on device"),
        "unionsync status names the full disk:\n{status}"
    );

    // Free space in the project. Syncing paused after three failures in a
    // row (by design, until the user clears the error): clear it.
    std::fs::remove_file(rig.home("big.bin")).unwrap();
    rig.cli(&["clear-error"]);
    rig.wait_converged(CONVERGE);
    let staging = rig.home(".unionsync/staging");
    wait_for("no staged temp file left in the home", CONVERGE, || {
        count_files(&staging) == 0
    });
    for (path, data) in &files {
        assert_eq!(
            read(&rig.home(path)).as_ref(),
            Some(data),
            "{path} in the home"
        );
    }
    rig.assert_no_conflicts();
}

/// Every file of the home with its content (the project's own truth).
fn home_files(home: &Path) -> BTreeMap<Vec<u8>, Entry> {
    view(home)
        .into_iter()
        .filter(|(_, entry)| matches!(entry, Entry::File { .. }))
        .collect()
}

/// Regression (issue "never lose a byte"): with the ssh session under
/// sshfs gone, writes, a chmod, a truncate and a tree rename of lower files
/// fail with EIO because nothing can be copied up. They were journaled
/// before the copy-up, reported as deletions, and the next sync removed
/// every one of those files from the project.
#[test]
fn changes_to_lower_files_that_fail_while_sshfs_is_down_delete_nothing() {
    require_tools!();
    let mut rig = Rig::new(None, |home| write(&home.join("start.txt"), b"start"));
    rig.wait_converged(CONVERGE);
    // Made after convergence and only stat-ed through the mount, so that
    // no read caches them: their content lives in the lower alone.
    for i in 0..8 {
        write(&rig.home(&format!("keep/f{i}.txt")), b"project data\n");
    }
    for i in 0..20 {
        write(&rig.home(&format!("keep/tree/t{i}.txt")), &noise(i, 2_000));
    }
    wait_for("the new files in the mount", CONVERGE, || {
        rig.mnt("keep/f7.txt").exists() && rig.mnt("keep/tree/t19.txt").exists()
    });
    let before = home_files(&rig.scene.home);
    rig.sshd.stop();
    assert!(!rig.m.upper.join("keep/f5.txt").exists(), "not cached");

    let timeout = Duration::from_secs(30);
    let fails = |what: &str, path: PathBuf, op: fn(&Path) -> std::io::Result<()>| {
        let result = within(what, timeout, move || op(&path));
        let error = result.expect_err(what);
        assert_eq!(error.raw_os_error(), Some(5), "{what}: EIO, got {error}");
    };
    fails("append", rig.mnt("keep/f5.txt"), |p| {
        let mut file = std::fs::OpenOptions::new().append(true).open(p)?;
        std::io::Write::write_all(&mut file, b"more\n")
    });
    fails("chmod", rig.mnt("keep/f6.txt"), |p| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600))
    });
    fails("truncate", rig.mnt("keep/f7.txt"), |p| {
        std::fs::OpenOptions::new().write(true).open(p)?.set_len(0)
    });
    let tree = rig.mnt("keep/tree");
    fails("rename of a lower tree", tree.clone(), |p| {
        std::fs::rename(p, p.with_file_name("tree2"))
    });

    // The sync connection is up: two syncs run while the lower is down.
    rig.cli(&["sync", "--wait"]);
    rig.cli(&["sync", "--wait"]);
    let after = home_files(&rig.scene.home);
    assert_eq!(
        after,
        before,
        "the project changed although nothing was:\n{}",
        difference(&after, &before)
    );

    rig.sshd.start();
    rig.wait_converged(CONVERGE);
    assert_eq!(home_files(&rig.scene.home), before);
    rig.assert_no_conflicts();
}

/// Regression: lower files edited through the mount, the compute daemon
/// killed with -9 before it synced them, then restarted. The recovery scan
/// took what the edits replaced through sshfs (whole-second mtimes, ctime =
/// mtime), so the project looked changed: every edit went to the conflicts
/// area and the mount went back to the old content.
#[test]
fn edits_of_lower_files_survive_a_kill_9_before_their_sync_without_conflicts() {
    require_tools!();
    let mut rig = Rig::new(None, |home| {
        for i in 0..3 {
            write(&home.join(format!("notes/n{i}.txt")), b"old\n");
        }
    });
    rig.wait_converged(CONVERGE);
    // No sync can take the edits before the crash.
    rig.kill_project();
    for i in 0..3 {
        let path = rig.mnt(&format!("notes/n{i}.txt"));
        let mut file = std::fs::OpenOptions::new().append(true).open(path).unwrap();
        std::io::Write::write_all(&mut file, b"edited\n").unwrap();
    }
    if let Some(compute) = rig.compute.take() {
        compute.kill();
    }
    rig.start_project();
    let lower = rig._sshfs.mountpoint.clone();
    rig.compute = Some(rig.scene.start_compute_mount_over(&rig.m, &lower, &[]));

    wait_for("the edits in the project", CONVERGE, || {
        (0..3).all(|i| {
            read(&rig.home(&format!("notes/n{i}.txt"))).as_deref() == Some(b"old\nedited\n")
        })
    });
    rig.wait_converged(CONVERGE);
    rig.assert_no_conflicts();
}

/// `mv lowertree moved` in `dir` (the mount), with its output.
fn mv(dir: &Path, from: &str, to: &str) -> std::process::Output {
    let (dir, from, to) = (dir.to_path_buf(), from.to_string(), to.to_string());
    within("mv", Duration::from_secs(300), move || {
        Command::new("mv")
            .arg(from)
            .arg(to)
            .current_dir(dir)
            .output()
            .expect("running mv")
    })
}

/// Regression (issue 11): `mv` of a directory only the lower (sshfs)
/// holds failed with ENOENT after copying part of it up.
#[test]
fn mv_of_a_lower_directory_moves_all_of_it() {
    require_tools!();
    let rig = Rig::new(None, |home| make_repository(&home.join("lowertree")));
    wait_for("the lower index", CONVERGE, || {
        rig.compute_log().contains("lower index snapshot")
    });
    let before = view(&rig.home("lowertree"));
    let out = mv(&rig.m.mount, "lowertree", "moved");
    assert!(
        out.status.success(),
        "mv: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(unionsync_tests::absent(&rig.mnt("lowertree")));
    assert_eq!(view(&rig.mnt("moved")), before);
    rig.wait_converged(CONVERGE);
    assert_eq!(view(&rig.home("moved")), before);
    rig.assert_no_conflicts();
}
