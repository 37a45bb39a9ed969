//! `unionsync demo`: the README's "run" command, both sides on this
//! machine, syncing, and cleaning up after itself.

use std::process::{Command, Stdio};
use std::time::Duration;

use unionsync_tests::{binary, detach, fuse_available, is_mounted, wait_for};

/// Kills the demo (if still there) and detaches its mount on drop.
struct Cleanup {
    pid: u32,
    mount: std::path::PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", &self.pid.to_string()])
            .stderr(Stdio::null())
            .status();
        if is_mounted(&self.mount) {
            detach(&self.mount);
        }
    }
}

#[test]
fn the_demo_syncs_both_ways_and_unmounts_on_ctrl_c() {
    let dir = tempfile::tempdir().unwrap();
    let mount = fuse_available();
    let mut args = vec![
        dir.path().as_os_str().to_owned(),
        "--duration".into(),
        "120".into(),
    ];
    if !mount {
        args.push("--no-mount".into());
    }
    let mut demo = Command::new(binary())
        .arg("demo")
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let work = if mount {
        dir.path().join("mnt")
    } else {
        dir.path().join("compute/upper")
    };
    // Whatever happens below: no demo process or mount left behind.
    let _cleanup = Cleanup {
        pid: demo.id(),
        mount: work.clone(),
    };
    let home = dir.path().join("project");
    wait_for(
        "the sample home in the work directory",
        Duration::from_secs(20),
        || std::fs::read(work.join("notes.txt")).is_ok(),
    );
    std::fs::write(work.join("hello.txt"), b"from the compute side").unwrap();
    std::fs::write(home.join("notes.txt"), b"from the project").unwrap();
    wait_for(
        "both changes on the other side",
        Duration::from_secs(20),
        || {
            std::fs::read(home.join("hello.txt")).ok().as_deref() == Some(b"from the compute side")
                && std::fs::read(work.join("notes.txt")).ok().as_deref()
                    == Some(b"from the project")
        },
    );
    let status = Command::new(binary())
        .args(["status", "--control"])
        .arg(dir.path().join("compute.sock"))
        .output()
        .unwrap();
    assert!(status.status.success(), "{status:?}");
    assert!(String::from_utf8_lossy(&status.stdout).contains("last sync"));
    // What Ctrl-C sends.
    let interrupt = Command::new("kill")
        .args(["-INT", &demo.id().to_string()])
        .status()
        .unwrap();
    assert!(interrupt.success());
    let status = demo.wait().unwrap();
    let mut out = String::new();
    std::io::Read::read_to_string(&mut demo.stdout.take().unwrap(), &mut out).unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut demo.stderr.take().unwrap(), &mut err).unwrap();
    assert!(status.success(), "demo failed ({status}): {out}{err}");
    assert!(out.contains("Try, in another terminal"), "{out}");
    assert!(!is_mounted(&work), "the demo unmounts when it stops");
}
