//! The union answering for the lower from the project's metadata index:
//! once a snapshot arrived, lookups, attributes, listings and symlink
//! targets come from it (never from the lower mount), and index deltas
//! reach processes at once, kernel caches included.

use std::fs;
use std::os::unix::fs::{symlink, MetadataExt};
use std::path::Path;

use unionsync::beneath::Root;
use unionsync_core::{IndexUpdate, Meta, RelPath};
use unionsync_tests::{absent, fuse_available, names, UnionMount as Scene};

fn p(s: &str) -> RelPath {
    RelPath::new(s).unwrap()
}

/// What the project would send for `home`: every entry, parents first.
fn snapshot_of(home: &Path) -> IndexUpdate {
    IndexUpdate::Snapshot(Root::open(home).unwrap().walk(None).unwrap())
}

fn meta_of(home: &Path, path: &str) -> Option<Meta> {
    Root::open(home).unwrap().stat(&p(path)).unwrap()
}

#[test]
fn with_an_index_the_lower_is_what_the_index_says_not_what_the_mount_shows() {
    if !fuse_available() {
        return;
    }
    let s = Scene::new(
        |l| fs::write(l.join("only-in-the-mount"), b"x").unwrap(),
        |_| {},
    );
    let link = s.mounted().link();
    link.update_index(IndexUpdate::Snapshot(vec![
        (p("indexed"), Meta::dir(0o750, 1_000_000_000)),
        (p("indexed/f"), Meta::file(0o640, 3, 2_000_000_000)),
    ]));
    assert_eq!(names(&s.mnt), ["indexed"]);
    assert!(absent(&s.m("only-in-the-mount")));
    let f = fs::symlink_metadata(s.m("indexed/f")).unwrap();
    assert_eq!((f.len(), f.mode(), f.mtime()), (3, 0o100640, 2));
    let d = fs::symlink_metadata(s.m("indexed")).unwrap();
    assert_eq!((d.mode(), d.nlink()), (0o040750, 2));
}

#[test]
fn a_delta_shows_a_new_lower_file_even_where_a_lookup_just_found_nothing() {
    if !fuse_available() {
        return;
    }
    let s = Scene::new(|_| {}, |_| {});
    let link = s.mounted().link();
    link.update_index(snapshot_of(&s.lower));
    // The kernel may now cache "absent" for a long time.
    assert!(absent(&s.m("new.txt")));
    fs::write(s.lower.join("new.txt"), b"from the project").unwrap();
    link.update_index(IndexUpdate::Delta(vec![(
        p("new.txt"),
        meta_of(&s.lower, "new.txt"),
    )]));
    assert_eq!(fs::read(s.m("new.txt")).unwrap(), b"from the project");
}

#[test]
fn a_delta_removing_a_lower_file_hides_it_at_once() {
    if !fuse_available() {
        return;
    }
    let s = Scene::new(|l| fs::write(l.join("f"), b"x").unwrap(), |_| {});
    let link = s.mounted().link();
    link.update_index(snapshot_of(&s.lower));
    assert_eq!(fs::read(s.m("f")).unwrap(), b"x");
    link.update_index(IndexUpdate::Delta(vec![(p("f"), None)]));
    assert!(absent(&s.m("f")));
    assert!(names(&s.mnt).is_empty());
}

#[test]
fn a_delta_changing_a_lower_file_shows_its_new_size_and_content() {
    if !fuse_available() {
        return;
    }
    let s = Scene::new(|l| fs::write(l.join("f"), b"old").unwrap(), |_| {});
    let link = s.mounted().link();
    link.update_index(snapshot_of(&s.lower));
    assert_eq!(fs::read(s.m("f")).unwrap(), b"old");
    fs::write(s.lower.join("f"), b"new and longer").unwrap();
    link.update_index(IndexUpdate::Delta(vec![(p("f"), meta_of(&s.lower, "f"))]));
    assert_eq!(fs::read(s.m("f")).unwrap(), b"new and longer");
}

#[test]
fn a_directory_made_through_the_mount_shows_project_additions_once_indexed() {
    if !fuse_available() {
        return;
    }
    let s = Scene::new(|_| {}, |_| {});
    // Made over nothing before any index: the lower is not asked below it.
    fs::create_dir(s.m("build")).unwrap();
    fs::create_dir(s.lower.join("build")).unwrap();
    fs::write(s.lower.join("build/from-project"), b"p").unwrap();
    let link = s.mounted().link();
    link.update_index(snapshot_of(&s.lower));
    link.update_index(IndexUpdate::Delta(vec![(
        p("build/from-project"),
        meta_of(&s.lower, "build/from-project"),
    )]));
    assert_eq!(fs::read(s.m("build/from-project")).unwrap(), b"p");
}

#[test]
fn a_directory_made_through_the_mount_after_the_index_arrived_shows_project_additions() {
    if !fuse_available() {
        return;
    }
    let s = Scene::new(|_| {}, |_| {});
    let link = s.mounted().link();
    link.update_index(snapshot_of(&s.lower));
    fs::create_dir(s.m("build")).unwrap();
    assert!(absent(&s.m("build/from-project")));
    fs::create_dir(s.lower.join("build")).unwrap();
    fs::write(s.lower.join("build/from-project"), b"p").unwrap();
    link.update_index(IndexUpdate::Delta(vec![
        (p("build"), meta_of(&s.lower, "build")),
        (
            p("build/from-project"),
            meta_of(&s.lower, "build/from-project"),
        ),
    ]));
    assert_eq!(fs::read(s.m("build/from-project")).unwrap(), b"p");
}

#[test]
fn symlink_targets_come_from_the_index() {
    if !fuse_available() {
        return;
    }
    let s = Scene::new(|l| symlink("on-disk", l.join("link")).unwrap(), |_| {});
    let link = s.mounted().link();
    link.update_index(IndexUpdate::Snapshot(vec![(
        p("link"),
        Meta::symlink("from-index", 1),
    )]));
    assert_eq!(fs::read_link(s.m("link")).unwrap(), Path::new("from-index"));
}

#[test]
fn whiteouts_and_upper_entries_still_win_over_the_index() {
    if !fuse_available() {
        return;
    }
    let s = Scene::new(
        |l| {
            fs::write(l.join("deleted"), b"d").unwrap();
            fs::write(l.join("edited"), b"lower").unwrap();
        },
        |_| {},
    );
    let link = s.mounted().link();
    link.update_index(snapshot_of(&s.lower));
    fs::remove_file(s.m("deleted")).unwrap();
    fs::write(s.m("edited"), b"upper").unwrap();
    link.update_index(snapshot_of(&s.lower));
    assert!(absent(&s.m("deleted")));
    assert_eq!(fs::read(s.m("edited")).unwrap(), b"upper");
    assert_eq!(names(&s.mnt), ["edited"]);
}
