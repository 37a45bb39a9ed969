//! `unionsync copy --from-project`: the view of a path becomes the
//! project's version now; what the compute side had is kept aside.

use std::fs;

use unionsync_core::RelPath;
use unionsync_tests::{absent, fuse_available, names, UnionMount as Scene};

fn p(s: &str) -> RelPath {
    RelPath::new(s).unwrap()
}

#[test]
fn an_edited_file_shows_the_project_version_and_the_edit_is_kept_aside() {
    if !fuse_available() {
        return;
    }
    let s = Scene::new(|l| fs::write(l.join("f"), b"project").unwrap(), |_| {});
    fs::write(s.m("f"), b"compute edit").unwrap();
    let link = s.mounted().link();
    link.take_project_version(&p("f"), "t1").unwrap();
    assert_eq!(fs::read(s.m("f")).unwrap(), b"project");
    assert_eq!(
        fs::read(s.upper.join(".unionsync/replaced/t1/f")).unwrap(),
        b"compute edit"
    );
    let (_, journaled) = link.journal.lock().changes();
    assert!(journaled.iter().any(|(path, _)| path == &p("f")));
}

#[test]
fn a_deleted_tree_comes_back_and_compute_only_files_in_it_go_aside() {
    if !fuse_available() {
        return;
    }
    let s = Scene::new(
        |l| {
            fs::create_dir_all(l.join("d/sub")).unwrap();
            fs::write(l.join("d/sub/a"), b"a").unwrap();
        },
        |_| {},
    );
    fs::write(s.m("d/only-here"), b"mine").unwrap();
    fs::remove_file(s.m("d/sub/a")).unwrap();
    let link = s.mounted().link();
    link.take_project_version(&p("d"), "t2").unwrap();
    assert_eq!(fs::read(s.m("d/sub/a")).unwrap(), b"a");
    assert!(absent(&s.m("d/only-here")));
    assert_eq!(names(&s.m("d")), ["sub"]);
    assert_eq!(
        fs::read(s.upper.join(".unionsync/replaced/t2/d/only-here")).unwrap(),
        b"mine"
    );
}

#[test]
fn a_path_the_project_does_not_have_is_an_error_and_changes_nothing() {
    if !fuse_available() {
        return;
    }
    let s = Scene::new(|_| {}, |u| fs::write(u.join("mine"), b"m").unwrap());
    let link = s.mounted().link();
    let error = link.take_project_version(&p("mine"), "t3");
    assert!(error.is_err());
    assert_eq!(fs::read(s.m("mine")).unwrap(), b"m");
}

#[test]
fn a_deleted_lower_file_comes_back() {
    if !fuse_available() {
        return;
    }
    let s = Scene::new(|l| fs::write(l.join("f"), b"project").unwrap(), |_| {});
    fs::remove_file(s.m("f")).unwrap();
    s.mounted()
        .link()
        .take_project_version(&p("f"), "t4")
        .unwrap();
    assert_eq!(fs::read(s.m("f")).unwrap(), b"project");
}
