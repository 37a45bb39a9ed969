//! What the union mount does with its layers, one behaviour per test:
//! copy-up, whiteouts, renames of lower-only trees, merged listings, inode
//! numbers, the change journal and the reserved directory.
//!
//! ```text
//! mnt/ (FUSE) ── upper/      read-write, what changed (+ .unionsync/)
//!             ├─ whiteouts/  <parent>/.wh.<name>: lower paths deleted
//!             └─ lower/      read-only, never written
//! ```

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{symlink, DirEntryExt, FileExt, MetadataExt, PermissionsExt};
use std::path::Path;

use rustix::fs::{AtFlags, Timespec, Timestamps, CWD};
use unionsync::beneath::meta_of;
use unionsync_core::Meta;

use unionsync_tests::{absent, fuse_available, names, UnionMount as Scene};

const FIXED_MTIME: i64 = 1_500_000_000;

fn set_fixed_times(path: &Path) {
    let at = Timespec {
        tv_sec: FIXED_MTIME,
        tv_nsec: 250,
    };
    let times = Timestamps {
        last_access: at,
        last_modification: at,
    };
    rustix::fs::utimensat(CWD, path, &times, AtFlags::SYMLINK_NOFOLLOW).unwrap();
}

fn put(root: &Path, path: &str, content: &[u8], mode: u32) {
    let full = root.join(path);
    if let Some(parent) = full.parent() {
        fs::create_dir_all(parent).unwrap();
    }
    fs::write(&full, content).unwrap();
    fs::set_permissions(&full, fs::Permissions::from_mode(mode)).unwrap();
    set_fixed_times(&full);
}

fn put_dir(root: &Path, path: &str, mode: u32) {
    let full = root.join(path);
    fs::create_dir_all(&full).unwrap();
    fs::set_permissions(&full, fs::Permissions::from_mode(mode)).unwrap();
    set_fixed_times(&full);
}

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().mode() & 0o7777
}

fn mtime(path: &Path) -> (i64, i64) {
    let meta = fs::symlink_metadata(path).unwrap();
    (meta.mtime(), meta.mtime_nsec())
}

/// Every entry below `root`: kind, mode, content or target (no times).
fn tree(root: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, rel: &str, out: &mut BTreeMap<String, String>) {
        for name in names(&root.join(rel)) {
            let path = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let full = root.join(&path);
            let meta = fs::symlink_metadata(&full).unwrap();
            let perm = meta.mode() & 0o7777;
            if meta.file_type().is_symlink() {
                let target = fs::read_link(&full).unwrap();
                out.insert(path, format!("symlink -> {}", target.display()));
            } else if meta.is_dir() {
                out.insert(path.clone(), format!("dir {perm:o}"));
                walk(root, &path, out);
            } else {
                let content = String::from_utf8_lossy(&fs::read(&full).unwrap()).into_owned();
                out.insert(path, format!("file {perm:o} {content:?}"));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, "", &mut out);
    out
}

/// The lower's metadata of `path`, as the journal records it.
fn lower_meta(lower: &Path, path: &str) -> Meta {
    let full = lower.join(path);
    let stat = rustix::fs::lstat(&full).unwrap();
    let target = fs::read_link(&full)
        .ok()
        .map(|t| t.as_os_str().as_encoded_bytes().to_vec());
    meta_of(&stat, target)
}

#[test]
fn a_write_to_a_lower_file_copies_it_up_with_its_mode_and_mtime() {
    if !fuse_available() {
        return;
    }
    let scene = Scene::new(
        |lower| {
            put_dir(lower, "deep", 0o750);
            put_dir(lower, "deep/er", 0o711);
            put(lower, "deep/er/f", b"lower content", 0o640);
        },
        |_| {},
    );
    let (lower_f, upper_f) = (scene.lower.join("deep/er/f"), scene.upper.join("deep/er/f"));
    assert!(absent(&upper_f));

    // Opening for writing copies up, before anything is written.
    let file = OpenOptions::new()
        .write(true)
        .open(scene.m("deep/er/f"))
        .unwrap();
    assert_eq!(fs::read(&upper_f).unwrap(), b"lower content");
    assert_eq!(mode(&upper_f), 0o640, "the copy keeps the mode");
    assert_eq!(
        mtime(&upper_f),
        (FIXED_MTIME, 250),
        "the copy keeps the mtime"
    );
    // Its directories come up with the lower's modes. (Not their mtimes:
    // what lands in a directory created in the upper moves its mtime, as
    // in overlayfs.)
    assert_eq!(mode(&scene.upper.join("deep")), 0o750);
    assert_eq!(mode(&scene.upper.join("deep/er")), 0o711);

    file.write_all_at(b"NEW", 0).unwrap();
    drop(file);
    assert_eq!(fs::read(&upper_f).unwrap(), b"NEWer content");
    assert_eq!(fs::read(scene.m("deep/er/f")).unwrap(), b"NEWer content");
    assert_ne!(
        mtime(&upper_f),
        (FIXED_MTIME, 250),
        "the write moved the mtime"
    );
    assert_eq!(mode(&scene.m("deep/er/f")), 0o640);

    // The lower is as it was.
    assert_eq!(fs::read(&lower_f).unwrap(), b"lower content");
    assert_eq!(mode(&lower_f), 0o640);
    assert_eq!(mtime(&lower_f), (FIXED_MTIME, 250));
}

#[test]
fn chmod_of_a_lower_file_copies_it_up() {
    if !fuse_available() {
        return;
    }
    let scene = Scene::new(
        |lower| {
            put(lower, "x", b"content", 0o644);
            put_dir(lower, "d", 0o755);
            put(lower, "d/child", b"child", 0o644);
        },
        |_| {},
    );
    fs::set_permissions(scene.m("x"), fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(mode(&scene.m("x")), 0o600);
    let upper_x = scene.upper.join("x");
    assert_eq!(mode(&upper_x), 0o600);
    assert_eq!(fs::read(&upper_x).unwrap(), b"content");
    assert_eq!(mtime(&upper_x), (FIXED_MTIME, 250), "chmod keeps the mtime");
    assert_eq!(
        mode(&scene.lower.join("x")),
        0o644,
        "the lower keeps its mode"
    );

    // A directory comes up alone: its children stay in the lower.
    fs::set_permissions(scene.m("d"), fs::Permissions::from_mode(0o700)).unwrap();
    assert_eq!(mode(&scene.upper.join("d")), 0o700);
    assert!(absent(&scene.upper.join("d/child")));
    assert_eq!(fs::read(scene.m("d/child")).unwrap(), b"child");
    assert_eq!(mode(&scene.lower.join("d")), 0o755);
}

#[test]
fn deleting_a_lower_file_leaves_a_whiteout_and_the_lower_untouched() {
    if !fuse_available() {
        return;
    }
    let scene = Scene::new(
        |lower| {
            put(lower, "top", b"top", 0o644);
            put(lower, "d/f", b"f", 0o644);
            put(lower, "d/keep", b"keep", 0o644);
            symlink("f", lower.join("d/link")).unwrap();
        },
        |_| {},
    );
    fs::remove_file(scene.m("d/f")).unwrap();
    fs::remove_file(scene.m("top")).unwrap();
    fs::remove_file(scene.m("d/link")).unwrap();

    assert!(scene.whiteouts.join("d/.wh.f").exists());
    assert!(scene.whiteouts.join(".wh.top").exists());
    assert!(scene.whiteouts.join("d/.wh.link").exists());
    assert_eq!(fs::read(scene.lower.join("d/f")).unwrap(), b"f");
    assert_eq!(fs::read(scene.lower.join("top")).unwrap(), b"top");
    assert!(fs::symlink_metadata(scene.lower.join("d/link")).is_ok());
    assert!(absent(&scene.upper.join("d/f")));

    assert!(absent(&scene.m("d/f")));
    assert!(absent(&scene.m("top")));
    assert!(absent(&scene.m("d/link")));
    assert_eq!(names(&scene.m("d")), ["keep"]);
    assert!(!names(&scene.mnt).contains(&"top".to_string()));
    assert_eq!(
        fs::remove_file(scene.m("d/f")).unwrap_err().kind(),
        ErrorKind::NotFound
    );

    // A new file there shows instead; the lower's stays hidden.
    fs::write(scene.m("d/f"), b"new").unwrap();
    assert_eq!(fs::read(scene.m("d/f")).unwrap(), b"new");
    assert_eq!(names(&scene.m("d")), ["f", "keep"]);
    assert_eq!(fs::read(scene.lower.join("d/f")).unwrap(), b"f");
}

#[test]
fn a_lower_directory_deleted_and_created_again_hides_its_old_children() {
    if !fuse_available() {
        return;
    }
    let scene = Scene::new(
        |lower| {
            put(lower, "d/a", b"a", 0o644);
            put(lower, "d/b", b"b", 0o644);
            put(lower, "d/sub/c", b"c", 0o644);
        },
        |_| {},
    );
    let lower_before = tree(&scene.lower);
    fs::remove_dir_all(scene.m("d")).unwrap();
    assert!(absent(&scene.m("d")));
    assert!(scene.whiteouts.join(".wh.d").exists());
    // The markers of its children went with it.
    assert!(absent(&scene.whiteouts.join("d")));

    fs::create_dir(scene.m("d")).unwrap();
    assert!(names(&scene.m("d")).is_empty());
    for old in ["d/a", "d/b", "d/sub", "d/sub/c"] {
        assert!(absent(&scene.m(old)), "{old} shows again");
    }
    fs::remove_dir(scene.m("d")).expect("the new directory is empty");
    fs::create_dir(scene.m("d")).unwrap();
    fs::write(scene.m("d/a"), b"new a").unwrap();
    assert_eq!(names(&scene.m("d")), ["a"]);
    assert_eq!(fs::read(scene.m("d/a")).unwrap(), b"new a");
    assert_eq!(tree(&scene.lower), lower_before);
}

#[test]
fn renaming_a_lower_only_directory_moves_all_its_content() {
    if !fuse_available() {
        return;
    }
    let scene = Scene::new(
        |lower| {
            put_dir(lower, "proj", 0o750);
            put(lower, "proj/f", b"f", 0o644);
            put(lower, "proj/run.sh", b"#!/bin/sh", 0o755);
            put_dir(lower, "proj/sub", 0o700);
            put(lower, "proj/sub/g", b"g", 0o600);
            put(lower, "proj/sub/deep/h", b"h", 0o644);
            put_dir(lower, "proj/empty", 0o755);
            symlink("f", lower.join("proj/link")).unwrap();
            put_dir(lower, "other", 0o755);
        },
        |_| {},
    );
    let lower_before = tree(&scene.lower);
    let proj = tree(&scene.lower.join("proj"));

    fs::rename(scene.m("proj"), scene.m("moved")).expect("no EXDEV");
    assert!(absent(&scene.m("proj")));
    assert_eq!(tree(&scene.m("moved")), proj);
    assert_eq!(tree(&scene.upper.join("moved")), proj);
    assert!(scene.whiteouts.join(".wh.proj").exists());
    assert_eq!(tree(&scene.lower), lower_before, "the lower is untouched");

    // Into another lower directory, then over its old name again.
    fs::rename(scene.m("moved"), scene.m("other/proj")).unwrap();
    assert_eq!(tree(&scene.m("other/proj")), proj);
    fs::rename(scene.m("other/proj"), scene.m("proj")).unwrap();
    assert_eq!(
        tree(&scene.m("proj")),
        proj,
        "nothing of the lower's shows twice"
    );
    assert_eq!(names(&scene.m("other")), Vec::<String>::new());
    assert_eq!(tree(&scene.lower), lower_before);
}

#[test]
fn readdir_merges_the_layers_without_duplicates_or_the_reserved_directory() {
    if !fuse_available() {
        return;
    }
    let scene = Scene::new(
        |lower| {
            put(lower, "a", b"lower a", 0o644);
            put(lower, "b", b"lower b", 0o644);
            put(lower, "gone", b"gone", 0o644);
            put(lower, "dir/x", b"lower x", 0o644);
            put(lower, "dir/shared", b"lower shared", 0o644);
            put(lower, ".unionsync/junk", b"junk", 0o644);
        },
        |upper| {
            put(upper, "b", b"upper b", 0o644);
            put(upper, "c", b"upper c", 0o644);
            put(upper, "dir/y", b"upper y", 0o644);
            put(upper, "dir/shared", b"upper shared", 0o644);
        },
    );
    assert!(scene.upper.join(".unionsync").is_dir());
    // Deleted through the mount: its marker hides it from then on.
    fs::remove_file(scene.m("gone")).unwrap();

    assert_eq!(names(&scene.mnt), ["a", "b", "c", "dir"]);
    assert_eq!(names(&scene.m("dir")), ["shared", "x", "y"]);
    assert_eq!(fs::read(scene.m("b")).unwrap(), b"upper b");
    assert_eq!(fs::read(scene.m("dir/shared")).unwrap(), b"upper shared");
    assert_eq!(fs::read(scene.m("dir/x")).unwrap(), b"lower x");
    // Kinds and inode numbers come with the listing.
    for entry in fs::read_dir(scene.m("dir")).unwrap() {
        let entry = entry.unwrap();
        assert!(entry.file_type().unwrap().is_file());
        assert_eq!(entry.ino(), fs::metadata(entry.path()).unwrap().ino());
    }
    // A listing longer than one readdir reply.
    for i in 0..300 {
        fs::write(
            scene.m(&format!("dir/upper-{i:03}-{}", "n".repeat(40))),
            b"",
        )
        .unwrap();
    }
    let listed = names(&scene.m("dir"));
    assert_eq!(listed.len(), 303);
    let mut unique = listed.clone();
    unique.dedup();
    assert_eq!(unique, listed);
}

#[test]
fn inode_numbers_stay_the_same_across_stats_and_renames() {
    if !fuse_available() {
        return;
    }
    let scene = Scene::new(
        |lower| {
            put(lower, "l", b"lower", 0o644);
            put(lower, "d/x", b"x", 0o644);
        },
        |_| {},
    );
    let ino = |p: &str| fs::symlink_metadata(scene.m(p)).unwrap().ino();
    // The number the filesystem itself lists (not the kernel's cache).
    let listed = |dir: &str, name: &str| {
        fs::read_dir(scene.m(dir))
            .unwrap()
            .map(Result::unwrap)
            .find(|e| e.file_name() == name)
            .unwrap_or_else(|| panic!("{dir}/{name} not listed"))
            .ino()
    };

    fs::write(scene.m("f"), b"f").unwrap();
    let f = ino("f");
    assert_eq!(ino("f"), f);
    assert_eq!(listed("", "f"), f);
    fs::rename(scene.m("f"), scene.m("g")).unwrap();
    assert_eq!(ino("g"), f);
    assert_eq!(listed("", "g"), f);

    // A lower file keeps its number through its copy-up and a rename.
    let l = ino("l");
    fs::set_permissions(scene.m("l"), fs::Permissions::from_mode(0o600)).unwrap();
    assert!(scene.upper.join("l").exists());
    assert_eq!(ino("l"), l);
    fs::rename(scene.m("l"), scene.m("d/l2")).unwrap();
    assert_eq!(ino("d/l2"), l);
    assert_eq!(listed("d", "l2"), l);

    // Renaming a directory keeps the numbers below it.
    let x = ino("d/x");
    fs::rename(scene.m("d"), scene.m("e")).unwrap();
    assert_eq!(ino("e/x"), x);
    assert_eq!(listed("e", "x"), x);
    assert_eq!(listed("e", "l2"), l);

    let numbers = [f, l, x, ino("e")];
    let mut unique = numbers.to_vec();
    unique.sort();
    unique.dedup();
    assert_eq!(
        unique.len(),
        numbers.len(),
        "distinct paths, distinct numbers"
    );
}

#[test]
fn the_journal_lists_exactly_the_changed_paths() {
    if !fuse_available() {
        return;
    }
    let scene = Scene::new(
        |lower| {
            put(lower, "f", b"f", 0o644);
            put(lower, "keep", b"keep", 0o644);
            put(lower, "gone", b"gone", 0o600);
            put(lower, "r", b"r", 0o755);
            put(lower, "d/g", b"g", 0o640);
            symlink("keep", lower.join("ln")).unwrap();
        },
        |_| {},
    );
    let seen = |p: &str| Some(lower_meta(&scene.lower, p));
    let expected: BTreeMap<String, Option<Meta>> = [
        ("f", seen("f")),
        ("gone", seen("gone")),
        ("r", seen("r")),
        ("r2", None),
        ("d/g", seen("d/g")),
        ("ln", seen("ln")),
        ("new", None),
        ("newdir", None),
        ("newdir/x", None),
    ]
    .into_iter()
    .map(|(p, m)| (p.to_string(), m))
    .collect();
    assert!(matches!(
        expected["ln"].as_ref().unwrap().kind,
        unionsync_core::Kind::Symlink { .. }
    ));

    // Looking, listing and reading change nothing.
    assert_eq!(fs::read(scene.m("keep")).unwrap(), b"keep");
    let _ = names(&scene.mnt);
    let _ = fs::metadata(scene.m("d/g")).unwrap();
    assert!(scene.mounted().journal.lock().is_empty());

    OpenOptions::new()
        .append(true)
        .open(scene.m("f"))
        .unwrap()
        .write_all(b"+more")
        .unwrap();
    fs::write(scene.m("new"), b"new").unwrap();
    fs::remove_file(scene.m("gone")).unwrap();
    fs::rename(scene.m("r"), scene.m("r2")).unwrap();
    fs::set_permissions(scene.m("d/g"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::remove_file(scene.m("ln")).unwrap();
    fs::create_dir(scene.m("newdir")).unwrap();
    fs::write(scene.m("newdir/x"), b"x").unwrap();
    assert_eq!(fs::read(scene.m("keep")).unwrap(), b"keep");

    let (_, changes) = scene.mounted().journal.lock().changes();
    let got: BTreeMap<String, Option<Meta>> = changes
        .into_iter()
        .map(|(p, seen)| (p.to_string(), seen.meta))
        .collect();
    assert_eq!(got, expected);
}

#[test]
fn the_reserved_directory_cannot_be_looked_up() {
    if !fuse_available() {
        return;
    }
    let scene = Scene::new(
        |lower| put(lower, ".unionsync/from-lower", b"x", 0o644),
        |_| {},
    );
    assert!(scene.upper.join(".unionsync/tmp").is_dir());
    let not_found = |p: &str| {
        let e = fs::symlink_metadata(scene.m(p)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound, "{p}: {e}");
    };
    not_found(".unionsync");
    not_found(".unionsync/tmp");
    not_found(".unionsync/from-lower");
    assert_eq!(
        fs::read_dir(scene.m(".unionsync")).unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert_eq!(
        fs::File::open(scene.m(".unionsync/tmp"))
            .unwrap_err()
            .kind(),
        ErrorKind::NotFound
    );
    assert!(!names(&scene.mnt).contains(&".unionsync".to_string()));
    // Nothing through the mount reaches it.
    assert!(fs::write(scene.m(".unionsync"), b"x").is_err());
    assert!(fs::create_dir(scene.m(".unionsync")).is_err());
    fs::write(scene.m("f"), b"f").unwrap();
    assert!(fs::rename(scene.m("f"), scene.m(".unionsync")).is_err());
    assert!(scene.upper.join(".unionsync/tmp").is_dir());
    // Only at the top: deeper, it is an ordinary name.
    fs::create_dir(scene.m("d")).unwrap();
    fs::write(scene.m("d/.unionsync"), b"ordinary").unwrap();
    assert_eq!(names(&scene.m("d")), [".unionsync"]);
}

#[test]
fn a_descriptor_opened_before_a_copy_up_sees_later_changes() {
    if !fuse_available() {
        return;
    }
    let scene = Scene::new(|lower| put(lower, "f", b"lower", 0o644), |_| {});
    let reader = fs::File::open(scene.m("f")).unwrap();
    let mut buf = [0u8; 64];
    let n = reader.read_at(&mut buf, 0).unwrap();
    assert_eq!(&buf[..n], b"lower");

    // Another descriptor copies it up and writes.
    let writer = OpenOptions::new().write(true).open(scene.m("f")).unwrap();
    writer.write_all_at(b"UP", 0).unwrap();
    let n = reader.read_at(&mut buf, 0).unwrap();
    assert_eq!(&buf[..n], b"UPwer");
    writer.write_all_at(b"+longer", 5).unwrap();
    let n = reader.read_at(&mut buf, 0).unwrap();
    assert_eq!(&buf[..n], b"UPwer+longer");
    assert_eq!(reader.metadata().unwrap().len(), 12);
    writer.set_len(3).unwrap();
    let n = reader.read_at(&mut buf, 0).unwrap();
    assert_eq!(&buf[..n], b"UPw");
    assert_eq!(fs::read(scene.lower.join("f")).unwrap(), b"lower");
}

#[test]
fn an_upper_file_can_be_open_several_times() {
    if !fuse_available() {
        return;
    }
    let scene = Scene::new(|lower| put(lower, "l", b"lower", 0o644), |_| {});
    fs::write(scene.m("f"), b"one").unwrap();
    let a = OpenOptions::new()
        .read(true)
        .write(true)
        .open(scene.m("f"))
        .unwrap();
    let b = fs::File::open(scene.m("f")).unwrap();
    let c = OpenOptions::new().append(true).open(scene.m("f")).unwrap();
    a.write_all_at(b"ONE", 0).unwrap();
    (&c).write_all(b"+two").unwrap();
    let mut buf = [0u8; 16];
    let n = b.read_at(&mut buf, 0).unwrap();
    assert_eq!(&buf[..n], b"ONE+two");
    drop((a, b, c));

    // A lower file: open for reading, then for writing (a copy-up).
    let r = fs::File::open(scene.m("l")).unwrap();
    let w = OpenOptions::new().write(true).open(scene.m("l")).unwrap();
    let r2 = fs::File::open(scene.m("l")).unwrap();
    w.write_all_at(b"L", 0).unwrap();
    for reader in [&r, &r2] {
        let n = reader.read_at(&mut buf, 0).unwrap();
        assert_eq!(&buf[..n], b"Lower");
    }
}

#[test]
fn a_lower_file_deleted_while_open_stays_readable() {
    if !fuse_available() {
        return;
    }
    let scene = Scene::new(|lower| put(lower, "f", b"lower", 0o644), |_| {});
    let file = fs::File::open(scene.m("f")).unwrap();
    fs::remove_file(scene.m("f")).unwrap();
    assert!(absent(&scene.m("f")));
    let mut buf = [0u8; 16];
    let n = file.read_at(&mut buf, 0).unwrap();
    assert_eq!(&buf[..n], b"lower");
    assert_eq!(file.metadata().unwrap().len(), 5);
    assert_eq!(fs::read(scene.lower.join("f")).unwrap(), b"lower");
}

#[test]
fn a_copy_up_drops_set_id_bits_and_keeps_the_sticky_bit() {
    if !fuse_available() {
        return;
    }
    let s = Scene::new(
        |lower| {
            put_dir(lower, "shared", 0o3755);
            put(lower, "shared/tool", b"#!/bin/sh\n", 0o6755);
        },
        |_| {},
    );
    // Writing copies the file and its directory up.
    OpenOptions::new()
        .append(true)
        .open(s.m("shared/tool"))
        .unwrap()
        .write_all(b"# edited\n")
        .unwrap();
    assert_eq!(mode(&s.upper.join("shared")), 0o1755);
    assert_eq!(mode(&s.upper.join("shared/tool")), 0o755);
    assert_eq!(mode(&s.m("shared/tool")), 0o755);
}

#[test]
fn the_union_is_mounted_nosuid_and_nodev() {
    if !fuse_available() {
        return;
    }
    let s = Scene::new(|_| {}, |_| {});
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap();
    let mnt = s.mnt.to_string_lossy().into_owned();
    let options = mounts
        .lines()
        .map(|line| line.split(' ').collect::<Vec<_>>())
        .find(|fields| fields.get(1) == Some(&mnt.as_str()))
        .map(|fields| fields[3].to_string())
        .expect("the union is listed");
    let options: Vec<&str> = options.split(',').collect();
    assert!(options.contains(&"nosuid"), "{options:?}");
    assert!(options.contains(&"nodev"), "{options:?}");
}
