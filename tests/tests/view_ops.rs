//! The project's operations on a compute server's view (`unionsync remote
//! …`), performed through a real union mount.

use std::fs;

use unionsync::view_ops::perform;
use unionsync_core::{Kind, RelPath, RemoteOp};
use unionsync_tests::{absent, fuse_available, names, UnionMount as Scene};

fn p(s: &str) -> RelPath {
    RelPath::new(s).unwrap()
}

fn lower_tree(lower: &std::path::Path) {
    fs::create_dir_all(lower.join("data/deep")).unwrap();
    fs::write(lower.join("data/deep/f"), b"lower").unwrap();
    fs::write(lower.join("notes"), b"n").unwrap();
    std::os::unix::fs::symlink("notes", lower.join("link")).unwrap();
}

#[test]
fn listing_the_root_shows_both_layers_with_their_kinds() {
    if !fuse_available() {
        return;
    }
    let s = Scene::new(lower_tree, |u| fs::write(u.join("mine"), b"upper").unwrap());
    let entries = perform(&s.mnt, &RemoteOp::List { path: None }).unwrap();
    let shown: Vec<(String, &Kind)> = entries
        .iter()
        .map(|e| (String::from_utf8_lossy(&e.name).into_owned(), &e.meta.kind))
        .collect();
    let link = Kind::Symlink {
        target: b"notes".to_vec(),
    };
    assert_eq!(
        shown,
        [
            ("data".to_string(), &Kind::Dir),
            ("link".to_string(), &link),
            ("mine".to_string(), &Kind::File),
            ("notes".to_string(), &Kind::File),
        ]
    );
}

#[test]
fn listing_a_file_shows_the_file_itself() {
    if !fuse_available() {
        return;
    }
    let s = Scene::new(lower_tree, |_| {});
    let entries = perform(
        &s.mnt,
        &RemoteOp::List {
            path: Some(p("data/deep/f")),
        },
    )
    .unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(
        (entries[0].name.as_slice(), entries[0].meta.size),
        (&b"f"[..], 5)
    );
}

#[test]
fn removing_a_lower_tree_hides_it_and_leaves_the_lower_alone() {
    if !fuse_available() {
        return;
    }
    let s = Scene::new(lower_tree, |_| {});
    let remove = RemoteOp::Remove {
        path: p("data"),
        recursive: true,
    };
    perform(&s.mnt, &remove).unwrap();
    assert!(absent(&s.m("data")));
    assert!(s.lower.join("data/deep/f").exists());
}

#[test]
fn removing_a_full_directory_without_recursive_is_refused() {
    if !fuse_available() {
        return;
    }
    let s = Scene::new(lower_tree, |_| {});
    let remove = RemoteOp::Remove {
        path: p("data"),
        recursive: false,
    };
    let error = perform(&s.mnt, &remove).unwrap_err();
    assert!(error.contains("data"), "{error}");
    assert!(s.m("data/deep/f").exists());
}

#[test]
fn renaming_moves_a_lower_directory_within_the_view() {
    if !fuse_available() {
        return;
    }
    let s = Scene::new(lower_tree, |_| {});
    let rename = RemoteOp::Rename {
        from: p("data"),
        to: p("moved"),
    };
    perform(&s.mnt, &rename).unwrap();
    assert_eq!(names(&s.mnt), ["link", "moved", "notes"]);
    assert_eq!(fs::read(s.m("moved/deep/f")).unwrap(), b"lower");
}

#[test]
fn renaming_onto_an_existing_path_is_refused_and_changes_nothing() {
    if !fuse_available() {
        return;
    }
    let s = Scene::new(lower_tree, |_| {});
    let rename = RemoteOp::Rename {
        from: p("notes"),
        to: p("link"),
    };
    let error = perform(&s.mnt, &rename).unwrap_err();
    assert!(error.contains("exists"), "{error}");
    assert_eq!(fs::read(s.m("notes")).unwrap(), b"n");
    assert!(fs::symlink_metadata(s.m("link")).unwrap().is_symlink());
}

#[test]
fn an_error_names_the_missing_path() {
    if !fuse_available() {
        return;
    }
    let s = Scene::new(|_| {}, |_| {});
    let error = perform(
        &s.mnt,
        &RemoteOp::List {
            path: Some(p("nope")),
        },
    )
    .unwrap_err();
    assert!(error.contains("nope"), "{error}");
}

/// A view with `l` pointing out of it, at a directory that must survive.
fn escape_scene() -> (Scene, tempfile::TempDir) {
    let outside = tempfile::tempdir().unwrap();
    fs::create_dir(outside.path().join("var")).unwrap();
    fs::write(outside.path().join("var/keep"), b"host data").unwrap();
    let target = outside.path().to_path_buf();
    let s = Scene::new(
        move |lower| {
            std::os::unix::fs::symlink(&target, lower.join("l")).unwrap();
            fs::write(lower.join("notes"), b"n").unwrap();
        },
        |_| {},
    );
    (s, outside)
}

#[test]
fn remote_operations_never_follow_a_symlink_in_the_middle_of_a_path() {
    if !fuse_available() {
        return;
    }
    let (s, outside) = escape_scene();
    let ops = [
        RemoteOp::Remove {
            path: p("l/var"),
            recursive: true,
        },
        RemoteOp::Remove {
            path: p("l/var/keep"),
            recursive: false,
        },
        RemoteOp::Rename {
            from: p("l/var/keep"),
            to: p("stolen"),
        },
        RemoteOp::Rename {
            from: p("notes"),
            to: p("l/planted"),
        },
        RemoteOp::List {
            path: Some(p("l/var")),
        },
    ];
    for op in &ops {
        assert!(perform(&s.mnt, op).is_err(), "{op:?} went through the link");
    }
    assert_eq!(
        fs::read(outside.path().join("var/keep")).unwrap(),
        b"host data"
    );
    assert_eq!(names(outside.path()), ["var"]);
    // The link itself is an entry of the view, and removable as one.
    let remove = RemoteOp::Remove {
        path: p("l"),
        recursive: true,
    };
    perform(&s.mnt, &remove).unwrap();
    assert!(absent(&s.m("l")));
    assert!(outside.path().join("var/keep").exists());
}
