//! The lower hanging (the network stalls, nothing answers): a request that
//! needs the lower waits for it, and nothing else does. Upper-only paths
//! and upper files (created or copied up) keep working, and the stuck
//! request completes once the lower answers again.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use unionsync_core::IndexUpdate;
use unionsync_tests::test_lower::{Behaviour, TestLower};
use unionsync_tests::{fuse_available, wait_for, within, UnionMount};

/// Generous: the operations checked take milliseconds when nothing waits.
const DEADLINE: Duration = Duration::from_secs(20);

fn append(path: &Path, data: &[u8]) -> std::io::Result<()> {
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)?
        .write_all(data)
}

/// A union over a [`TestLower`] holding `d/l1`, `d/l2` and `files` more
/// at its root (`f00`, `f01`, …, each holding its name), with an
/// upper-only directory `local/` (made through the mount) holding
/// `work.txt`, and `d/l1` copied up by an append; with `index`, the
/// lower's metadata comes from an index, as when the project is connected.
fn scene(index: bool, files: usize) -> (TestLower, UnionMount) {
    let lower = TestLower::new(|dir| {
        for i in 0..files {
            let name = format!("f{i:02}");
            std::fs::write(dir.join(&name), name.as_bytes()).unwrap();
        }
        std::fs::create_dir(dir.join("d")).unwrap();
        std::fs::write(dir.join("d/l1"), b"lower one\n").unwrap();
        std::fs::write(dir.join("d/l2"), b"lower two\n").unwrap();
    });
    let union = UnionMount::over(&lower.mnt);
    if index {
        let root = unionsync::beneath::Root::open(&lower.dir).unwrap();
        let entries = root.walk(None).unwrap();
        union
            .mounted()
            .link()
            .update_index(IndexUpdate::Snapshot(entries));
    }
    std::fs::create_dir(union.m("local")).unwrap();
    std::fs::write(union.m("local/work.txt"), b"mine\n").unwrap();
    append(&union.m("d/l1"), b"copied up\n").unwrap();
    assert!(union.upper.join("d/l1").exists(), "d/l1 was copied up");
    (lower, union)
}

/// While a thread appends to the lower file `d/l2` with the lower hung:
/// upper paths are stat-ed, read, listed and created within the deadline;
/// then the lower resumes and the append completes.
fn upper_paths_work_while_a_write_waits_on_the_hung_lower(index: bool) {
    if !fuse_available() {
        return;
    }
    let (lower, union) = scene(index, 0);
    lower.set(Behaviour::Hanging);
    let l2 = union.m("d/l2");
    let stuck = {
        let l2 = l2.clone();
        std::thread::spawn(move || append(&l2, b"more\n"))
    };
    wait_for("the append to wait on the lower", DEADLINE, || {
        lower.waiting() > 0
    });

    let m = |p: &str| -> PathBuf { union.m(p) };
    let (work, l1, local, new) = (
        m("local/work.txt"),
        m("d/l1"),
        m("local"),
        m("local/new.txt"),
    );
    within("upper paths while the lower hangs", DEADLINE, move || {
        assert_eq!(std::fs::metadata(&work).unwrap().len(), 5);
        assert_eq!(std::fs::read(&work).unwrap(), b"mine\n");
        assert_eq!(std::fs::read(&l1).unwrap(), b"lower one\ncopied up\n");
        std::fs::write(&new, b"new\n").unwrap();
        assert_eq!(std::fs::read(&new).unwrap(), b"new\n");
        append(&work, b"more of mine\n").unwrap();
        let mut names: Vec<_> = std::fs::read_dir(&local)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(names, ["new.txt", "work.txt"]);
    });
    assert!(lower.waiting() > 0, "the append still waits on the lower");

    lower.set(Behaviour::Working);
    let appended = within("the append once the lower answers", DEADLINE, move || {
        stuck.join()
    });
    appended
        .expect("the appending thread")
        .expect("the append succeeds once the lower answers");
    assert_eq!(std::fs::read(&l2).unwrap(), b"lower two\nmore\n");
}

#[test]
fn a_write_waiting_on_a_hung_lower_holds_up_no_upper_path() {
    upper_paths_work_while_a_write_waits_on_the_hung_lower(false);
}

#[test]
fn with_an_index_a_copy_up_waiting_on_a_hung_lower_holds_up_no_upper_path() {
    upper_paths_work_while_a_write_waits_on_the_hung_lower(true);
}

/// The paths the union's journal holds for the next sync.
fn journaled(union: &UnionMount) -> Vec<String> {
    let (_, changes) = union.mounted().journal.lock().changes();
    changes
        .into_iter()
        .map(|(path, _)| path.to_string())
        .collect()
}

/// A rename of a lower directory reads the lower before it changes
/// anything: while it waits on the hung lower, nothing of it shows in the
/// union, the upper or the journal (a sync then sees nothing half made),
/// and upper paths keep working; when the lower then fails, the rename
/// fails with EIO and leaves nothing behind.
#[test]
fn a_rename_of_a_lower_directory_that_the_lower_fails_leaves_nothing_half_done() {
    if !fuse_available() {
        return;
    }
    let (lower, union) = scene(true, 0);
    let journaled_before = journaled(&union);
    lower.set(Behaviour::Hanging);
    let renaming = {
        let (from, to) = (union.m("d"), union.m("moved"));
        std::thread::spawn(move || std::fs::rename(from, to))
    };
    wait_for("the rename to wait on the lower", DEADLINE, || {
        lower.waiting() > 0
    });
    assert_eq!(journaled(&union), journaled_before);
    let (upper, moved) = (union.upper.clone(), union.m("moved"));
    let work = union.m("local/work.txt");
    within("upper paths while a rename waits", DEADLINE, move || {
        assert_eq!(std::fs::read(&work).unwrap(), b"mine\n");
        assert!(unionsync_tests::absent(&moved));
        assert!(unionsync_tests::absent(&upper.join("moved")));
    });

    lower.set(Behaviour::Failing);
    let renamed = within("the rename once the lower fails", DEADLINE, move || {
        renaming.join()
    });
    let error = renamed
        .expect("the renaming thread")
        .expect_err("the rename cannot read the lower");
    assert_eq!(error.raw_os_error(), Some(5), "EIO, got {error}");
    lower.set(Behaviour::Working);
    assert_eq!(journaled(&union), journaled_before);
    assert!(unionsync_tests::absent(&union.m("moved")));
    assert!(unionsync_tests::absent(&union.upper.join("moved")));
    assert!(unionsync_tests::absent(&union.upper.join("d/l2")));
    assert_eq!(std::fs::read(union.m("d/l2")).unwrap(), b"lower two\n");
    assert!(unionsync_tests::names(&union.whiteouts).is_empty());
    assert!(unionsync_tests::names(&union.upper.join(".unionsync/tmp")).is_empty());
}

/// More reads of lower files than the mount has request threads, with
/// the lower hung: a bounded number wait on the lower, the others fail
/// with EIO without waiting for it, and upper paths keep being served;
/// once the lower answers, every read has ended.
#[test]
fn reads_waiting_on_a_hung_lower_never_take_every_request_thread() {
    if !fuse_available() {
        return;
    }
    let readers = 3 * unionsync::union::layers::LOWER_CALLERS;
    let (lower, union) = scene(true, readers);
    lower.set(Behaviour::Hanging);
    let (tx, results) = std::sync::mpsc::channel();
    for i in 0..readers {
        let (tx, file) = (tx.clone(), union.m(&format!("f{i:02}")));
        std::thread::spawn(move || {
            let _ = tx.send(std::fs::read(file));
        });
    }
    wait_for("reads to wait on the lower", DEADLINE, || {
        lower.waiting() >= unionsync::union::layers::LOWER_CALLERS
    });

    let failed_at_once = readers - unionsync::union::layers::LOWER_CALLERS;
    for _ in 0..failed_at_once {
        let read = results
            .recv_timeout(DEADLINE)
            .expect("reads over the limit end while the lower hangs");
        let error = read.expect_err("the lower does not answer");
        assert_eq!(error.raw_os_error(), Some(5), "EIO, got {error}");
    }
    let (work, new) = (union.m("local/work.txt"), union.m("local/new.txt"));
    within("upper paths while reads wait", DEADLINE, move || {
        assert_eq!(std::fs::read(&work).unwrap(), b"mine\n");
        std::fs::write(&new, b"new\n").unwrap();
        assert_eq!(std::fs::read(&new).unwrap(), b"new\n");
    });

    lower.set(Behaviour::Working);
    for _ in failed_at_once..readers {
        let read = results
            .recv_timeout(DEADLINE)
            .expect("every read ends once the lower answers");
        if let Err(error) = read {
            assert_eq!(error.raw_os_error(), Some(5), "EIO, got {error}");
        }
    }
}
