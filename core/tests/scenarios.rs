//! Readable plans for hand-built sync scenarios, as insta snapshots.
//!
//! Each test builds the reconcile input by hand (following the contract on
//! [`Inputs`]), snapshots `plan.to_string()` and asserts the key decision
//! directly, so a blindly accepted snapshot still cannot hide a wrong plan.
//!
//! Timestamps: the compute server and the project have unrelated clocks, so
//! compute-side observations use `C*` values and project-side observations
//! (project now, base.project, seen) use `P*` values. The plan never shows
//! them: no decision may compare the two.

use unionsync_core::{
    reconcile, BaseEntry, ComputeOp, ContentHash, Decision, InputError, Inputs, Meta, PathInput,
    Plan, ProjectOp, RelPath, Reported, Side,
};

// Compute-clock times (ns).
const C1: i64 = 1_000;
const C2: i64 = 2_000;
const C3: i64 = 3_000;
// Project-clock times (ns), deliberately far from the compute clock.
const P1: i64 = 7_000_000;
const P2: i64 = 8_000_000;

fn p(s: &str) -> RelPath {
    RelPath::try_from(s).expect("valid test path")
}

fn pb(bytes: &[u8]) -> RelPath {
    RelPath::new(bytes).expect("valid test path")
}

fn file(mode: u32, size: u64, mtime: i64) -> Meta {
    Meta::file(mode, size, mtime)
}

fn dir(mode: u32, mtime: i64) -> Meta {
    Meta::dir(mode, mtime)
}

fn link(target: &str, mtime: i64) -> Meta {
    Meta::symlink(target, mtime)
}

fn hash(n: u8) -> ContentHash {
    ContentHash([n; 32])
}

/// Builder for one [`PathInput`]; starts with nothing known.
#[derive(Default)]
struct In(PathInput);

fn input() -> In {
    In::default()
}

impl In {
    /// Both sides' observations at the last sync, each by its own clock.
    fn base(mut self, compute: Meta, project: Meta) -> Self {
        self.0.base = Some(BaseEntry { compute, project });
        self
    }

    /// The project's metadata as the compute side saw it in the lower before
    /// it first changed the path (only without a base).
    fn seen(mut self, project: Meta) -> Self {
        self.0.seen = Some(project);
        self
    }

    /// The compute side holds this in its upper layer.
    fn upper(mut self, compute: Meta) -> Self {
        self.0.compute = Some(Reported::Present(compute));
        self
    }

    /// The compute side whited the path out (deleted it through the union).
    fn whiteout(mut self) -> Self {
        self.0.compute = Some(Reported::Deleted);
        self
    }

    /// The compute side holds neither an entry nor a whiteout: its union
    /// shows the lower (a copy-up that failed, say).
    fn shows_lower(mut self) -> Self {
        self.0.compute = Some(Reported::Lower);
        self
    }

    /// `seen` was read through the lower mount (coarse metadata).
    fn seen_via_mount(mut self, project: Meta) -> Self {
        self.0.seen = Some(project);
        self.0.seen_via_mount = true;
        self
    }

    /// The project's state now.
    fn project(mut self, project: Meta) -> Self {
        self.0.project = Some(project);
        self
    }
}

fn inputs(entries: impl IntoIterator<Item = (RelPath, In)>) -> Inputs {
    entries.into_iter().map(|(path, i)| (path, i.0)).collect()
}

fn plan(entries: impl IntoIterator<Item = (RelPath, In)>) -> Plan {
    reconcile(&inputs(entries)).expect("valid input")
}

fn decision(plan: &Plan, path: &str) -> Decision {
    plan.resolutions[&p(path)].decision
}

/// The final state both sides hold for `path` after the sync.
fn final_state(plan: &Plan, path: &str) -> Option<Meta> {
    plan.resolutions[&p(path)].final_state.clone()
}

fn project_ops_on(plan: &Plan, path: &str) -> Vec<ProjectOp> {
    plan.project_ops
        .iter()
        .filter(|op| *op.path() == p(path))
        .cloned()
        .collect()
}

fn compute_ops_on(plan: &Plan, path: &str) -> Vec<ComputeOp> {
    plan.compute_ops
        .iter()
        .filter(|op| *op.path() == p(path))
        .cloned()
        .collect()
}

// ---------------------------------------------------------------------------
// 1. The four steps of the original design.

#[test]
fn compute_deletes_file_project_removes_it() {
    let plan = plan([
        // Only in the lower until the compute side deleted it.
        (
            p("lower-only"),
            input()
                .seen(file(0o644, 3, P1))
                .whiteout()
                .project(file(0o644, 3, P1)),
        ),
        // Synced before (in the upper with a base), then deleted.
        (
            p("synced"),
            input()
                .base(file(0o644, 4, C1), file(0o644, 4, P1))
                .whiteout()
                .project(file(0o644, 4, P1)),
        ),
    ]);
    insta::assert_snapshot!("compute_deletes_file_project_removes_it", plan.to_string());
    for path in ["lower-only", "synced"] {
        assert_eq!(decision(&plan, path), Decision::Push, "{path}");
        assert!(
            matches!(&project_ops_on(&plan, path)[..], [ProjectOp::Remove { .. }]),
            "{path}"
        );
        assert!(
            matches!(
                &compute_ops_on(&plan, path)[..],
                [ComputeOp::DropWhiteout { .. }]
            ),
            "{path}"
        );
    }
}

#[test]
fn project_deletes_file_compute_has_in_upper_compute_removes_it() {
    let plan = plan([(
        p("a"),
        input()
            .base(file(0o644, 3, C1), file(0o644, 3, P1))
            .upper(file(0o644, 3, C1)),
    )]);
    insta::assert_snapshot!(
        "project_deletes_file_compute_has_in_upper_compute_removes_it",
        plan.to_string()
    );
    assert_eq!(decision(&plan, "a"), Decision::Pull);
    assert!(plan.project_ops.is_empty());
    assert_eq!(
        plan.compute_ops,
        vec![ComputeOp::Remove {
            path: p("a"),
            expect: file(0o644, 3, C1)
        }]
    );
}

#[test]
fn compute_writes_files_pushed_to_project() {
    let plan = plan([
        // Copied up from the lower, then edited: no base yet.
        (
            p("copied-up"),
            input()
                .seen(file(0o644, 3, P1))
                .upper(file(0o644, 6, C2))
                .project(file(0o644, 3, P1)),
        ),
        // Synced before, edited since.
        (
            p("edited"),
            input()
                .base(file(0o644, 3, C1), file(0o644, 3, P1))
                .upper(file(0o644, 9, C2))
                .project(file(0o644, 3, P1)),
        ),
        // Created on the compute side; the project never had it.
        (p("new"), input().upper(file(0o600, 5, C2))),
    ]);
    insta::assert_snapshot!("compute_writes_files_pushed_to_project", plan.to_string());
    for path in ["copied-up", "edited", "new"] {
        assert_eq!(decision(&plan, path), Decision::Push, "{path}");
    }
    assert!(matches!(
        &project_ops_on(&plan, "copied-up")[..],
        [ProjectOp::Write { .. }]
    ));
    assert!(matches!(
        &project_ops_on(&plan, "new")[..],
        [ProjectOp::Create { meta, .. }] if *meta == file(0o600, 5, C2)
    ));
    assert!(plan.compute_ops.is_empty());
}

#[test]
fn project_writes_file_compute_has_in_upper_compute_takes_it() {
    let plan = plan([(
        p("a"),
        input()
            .base(file(0o644, 3, C1), file(0o644, 3, P1))
            .upper(file(0o644, 3, C1))
            .project(file(0o644, 5, P2)),
    )]);
    insta::assert_snapshot!(
        "project_writes_file_compute_has_in_upper_compute_takes_it",
        plan.to_string()
    );
    assert_eq!(decision(&plan, "a"), Decision::Pull);
    assert!(plan.project_ops.is_empty());
    assert_eq!(
        plan.compute_ops,
        vec![ComputeOp::Take {
            path: p("a"),
            meta: file(0o644, 5, P2),
            expect: Some(file(0o644, 3, C1)),
        }]
    );
}

// ---------------------------------------------------------------------------
// 2. Both sides write the same file.

#[test]
fn both_write_same_file_differently_project_wins_compute_content_preserved() {
    let plan = plan([
        (
            p("a"),
            input()
                .base(file(0o644, 3, C1), file(0o644, 3, P1))
                .upper(file(0o644, 4, C2))
                .project(file(0o644, 6, P2)),
        ),
        // Same size and mode: only the hashes tell the edits apart.
        (
            p("b"),
            input()
                .base(
                    file(0o644, 3, C1).with_hash(hash(1)),
                    file(0o644, 3, P1).with_hash(hash(1)),
                )
                .upper(file(0o644, 3, C2).with_hash(hash(2)))
                .project(file(0o644, 3, P2).with_hash(hash(3))),
        ),
    ]);
    insta::assert_snapshot!(
        "both_write_same_file_differently_project_wins_compute_content_preserved",
        plan.to_string()
    );
    for path in ["a", "b"] {
        let r = &plan.resolutions[&p(path)];
        assert_eq!(r.decision, Decision::Conflict, "{path}");
        assert_eq!(r.winner, Side::Project, "{path}");
    }
    assert_eq!(final_state(&plan, "a"), Some(file(0o644, 6, P2)));
    assert!(plan.project_ops.contains(&ProjectOp::PreserveConflict {
        path: p("a"),
        compute: file(0o644, 4, C2),
    }));
    assert!(matches!(
        &compute_ops_on(&plan, "a")[..],
        [ComputeOp::Take { meta, .. }] if *meta == file(0o644, 6, P2)
    ));
}

// ---------------------------------------------------------------------------
// 3. and 4. A directory deleted on one side, a child changed on the other.

#[test]
fn compute_deletes_dir_while_project_edits_child_keeps_child_and_parent() {
    // `d` and its children were only in the lower; the compute side ran
    // `rm -r d`, which whited out everything it saw there. Meanwhile the
    // project edited `d/edited` and created `d/project-new`. The compute side
    // deleted a path where the project has a directory, so the project lists
    // its whole subtree.
    let plan = plan([
        (
            p("d"),
            input()
                .seen(dir(0o755, P1))
                .whiteout()
                .project(dir(0o755, P1)),
        ),
        (
            p("d/edited"),
            input()
                .seen(file(0o644, 3, P1))
                .whiteout()
                .project(file(0o644, 10, P2)),
        ),
        (p("d/project-new"), input().project(file(0o644, 2, P2))),
        (
            p("d/untouched"),
            input()
                .seen(file(0o644, 4, P1))
                .whiteout()
                .project(file(0o644, 4, P1)),
        ),
    ]);
    insta::assert_snapshot!(
        "compute_deletes_dir_while_project_edits_child_keeps_child_and_parent",
        plan.to_string()
    );
    // Delete vs edit: the project's edit wins; nothing to preserve.
    assert_eq!(decision(&plan, "d/edited"), Decision::Conflict);
    assert_eq!(final_state(&plan, "d/edited"), Some(file(0o644, 10, P2)));
    assert_eq!(decision(&plan, "d"), Decision::KeepParent);
    assert_eq!(final_state(&plan, "d"), Some(dir(0o755, P1)));
    assert_eq!(decision(&plan, "d/untouched"), Decision::Push);
    assert_eq!(
        plan.project_ops,
        vec![ProjectOp::Remove {
            path: p("d/untouched"),
            expect: file(0o644, 4, P1)
        }]
    );
    // The compute side gets the directory back before its children.
    let takes: Vec<&RelPath> = plan
        .compute_ops
        .iter()
        .filter(|op| matches!(op, ComputeOp::Take { .. }))
        .map(ComputeOp::path)
        .collect();
    assert_eq!(takes, [&p("d"), &p("d/edited"), &p("d/project-new")]);
}

#[test]
fn project_deletes_dir_while_compute_creates_child_pushes_child_and_recreates_parent() {
    // `d` and `d/old` were synced into the upper. The project then ran
    // `rm -r d` while the compute side created `d/new`.
    let plan = plan([
        (
            p("d"),
            input()
                .base(dir(0o755, C1), dir(0o755, P1))
                .upper(dir(0o755, C1)),
        ),
        (p("d/new"), input().upper(file(0o644, 5, C2))),
        (
            p("d/old"),
            input()
                .base(file(0o644, 3, C1), file(0o644, 3, P1))
                .upper(file(0o644, 3, C1)),
        ),
    ]);
    insta::assert_snapshot!(
        "project_deletes_dir_while_compute_creates_child_pushes_child_and_recreates_parent",
        plan.to_string()
    );
    assert_eq!(decision(&plan, "d/new"), Decision::Push);
    let d = &plan.resolutions[&p("d")];
    assert_eq!(d.decision, Decision::KeepParent);
    assert_eq!(d.winner, Side::Compute);
    assert_eq!(
        plan.project_ops,
        vec![
            ProjectOp::Create {
                path: p("d"),
                meta: dir(0o755, C1)
            },
            ProjectOp::Create {
                path: p("d/new"),
                meta: file(0o644, 5, C2)
            },
        ]
    );
    assert_eq!(decision(&plan, "d/old"), Decision::Pull);
    assert!(matches!(
        &plan.compute_ops[..],
        [ComputeOp::Remove { path, .. }] if *path == p("d/old")
    ));
}

#[test]
fn project_deletes_dir_while_compute_edits_existing_child_project_wins_edit_preserved() {
    // As above, but the compute side edited a child the project had too:
    // that child is a delete-vs-edit conflict, which the project wins, so
    // nothing beneath `d` survives and `d` goes too; the edit is preserved.
    let plan = plan([
        (
            p("d"),
            input()
                .base(dir(0o755, C1), dir(0o755, P1))
                .upper(dir(0o755, C1)),
        ),
        (
            p("d/edited"),
            input()
                .base(file(0o644, 3, C1), file(0o644, 3, P1))
                .upper(file(0o644, 8, C2)),
        ),
    ]);
    insta::assert_snapshot!(
        "project_deletes_dir_while_compute_edits_existing_child_project_wins_edit_preserved",
        plan.to_string()
    );
    assert_eq!(decision(&plan, "d/edited"), Decision::Conflict);
    assert_eq!(final_state(&plan, "d/edited"), None);
    assert_eq!(
        plan.project_ops,
        vec![ProjectOp::PreserveConflict {
            path: p("d/edited"),
            compute: file(0o644, 8, C2)
        }]
    );
    let removed: Vec<&RelPath> = plan.compute_ops.iter().map(ComputeOp::path).collect();
    assert_eq!(removed, [&p("d/edited"), &p("d")], "deepest first");
}

// ---------------------------------------------------------------------------
// 5. Delete vs edit on a single file.

#[test]
fn compute_deletes_file_project_edits_it_project_wins_file_restored() {
    let plan = plan([(
        p("a"),
        input()
            .base(file(0o644, 3, C1), file(0o644, 3, P1))
            .whiteout()
            .project(file(0o644, 9, P2)),
    )]);
    insta::assert_snapshot!(
        "compute_deletes_file_project_edits_it_project_wins_file_restored",
        plan.to_string()
    );
    let r = &plan.resolutions[&p("a")];
    assert_eq!(r.decision, Decision::Conflict);
    assert_eq!(r.final_state, Some(file(0o644, 9, P2)));
    assert!(plan.project_ops.is_empty(), "the project keeps its edit");
    assert_eq!(
        plan.compute_ops,
        vec![ComputeOp::Take {
            path: p("a"),
            meta: file(0o644, 9, P2),
            expect: None
        }]
    );
}

#[test]
fn compute_edits_file_project_deletes_it_project_wins_edit_preserved() {
    let plan = plan([(
        p("a"),
        input()
            .base(file(0o644, 3, C1), file(0o644, 3, P1))
            .upper(file(0o644, 7, C2)),
    )]);
    insta::assert_snapshot!(
        "compute_edits_file_project_deletes_it_project_wins_edit_preserved",
        plan.to_string()
    );
    let r = &plan.resolutions[&p("a")];
    assert_eq!(r.decision, Decision::Conflict);
    assert_eq!(r.final_state, None);
    assert_eq!(
        plan.project_ops,
        vec![ProjectOp::PreserveConflict {
            path: p("a"),
            compute: file(0o644, 7, C2)
        }]
    );
    assert!(matches!(
        &plan.compute_ops[..],
        [ComputeOp::Remove { path, .. }] if *path == p("a")
    ));
}

// ---------------------------------------------------------------------------
// 6. chmod alone.

#[test]
fn compute_chmod_only_project_sets_mode_without_write() {
    let plan = plan([
        (
            p("bin"),
            input()
                .base(dir(0o755, C1), dir(0o755, P1))
                .upper(dir(0o700, C1))
                .project(dir(0o755, P1)),
        ),
        // A chmod bumps the ctime but keeps size, mtime and content hash.
        (
            p("run.sh"),
            input()
                .base(
                    file(0o644, 12, C1).with_ctime(C1).with_hash(hash(4)),
                    file(0o644, 12, P1).with_ctime(P1).with_hash(hash(4)),
                )
                .upper(file(0o755, 12, C1).with_ctime(C3).with_hash(hash(4)))
                .project(file(0o644, 12, P1).with_ctime(P1).with_hash(hash(4))),
        ),
    ]);
    insta::assert_snapshot!(
        "compute_chmod_only_project_sets_mode_without_write",
        plan.to_string()
    );
    assert_eq!(decision(&plan, "run.sh"), Decision::Push);
    assert_eq!(
        plan.project_ops,
        vec![
            ProjectOp::SetMode {
                path: p("bin"),
                mode: 0o700,
                expect: dir(0o755, P1)
            },
            ProjectOp::SetMode {
                path: p("run.sh"),
                mode: 0o755,
                expect: file(0o644, 12, P1).with_ctime(P1).with_hash(hash(4))
            },
        ]
    );
    assert!(plan.compute_ops.is_empty());
}

// ---------------------------------------------------------------------------
// 7. Type changes.

#[test]
fn compute_turns_file_into_dir_project_replaces_file_with_dir() {
    let plan = plan([
        (
            p("x"),
            input()
                .base(file(0o644, 3, C1), file(0o644, 3, P1))
                .upper(dir(0o755, C2))
                .project(file(0o644, 3, P1)),
        ),
        (p("x/inner"), input().upper(file(0o644, 2, C2))),
    ]);
    insta::assert_snapshot!(
        "compute_turns_file_into_dir_project_replaces_file_with_dir",
        plan.to_string()
    );
    assert_eq!(decision(&plan, "x"), Decision::Push);
    assert_eq!(
        plan.project_ops,
        vec![
            ProjectOp::Remove {
                path: p("x"),
                expect: file(0o644, 3, P1)
            },
            ProjectOp::Create {
                path: p("x"),
                meta: dir(0o755, C2)
            },
            ProjectOp::Create {
                path: p("x/inner"),
                meta: file(0o644, 2, C2)
            },
        ]
    );
    assert!(plan.compute_ops.is_empty());
}

#[test]
fn project_turns_file_into_dir_compute_takes_dir_and_children() {
    // The compute side holds a file at `y` and the project a directory, so
    // the project lists its subtree.
    let plan = plan([
        (
            p("y"),
            input()
                .base(file(0o644, 3, C1), file(0o644, 3, P1))
                .upper(file(0o644, 3, C1))
                .project(dir(0o755, P2)),
        ),
        (p("y/sub"), input().project(file(0o644, 4, P2))),
    ]);
    insta::assert_snapshot!(
        "project_turns_file_into_dir_compute_takes_dir_and_children",
        plan.to_string()
    );
    assert_eq!(decision(&plan, "y"), Decision::Pull);
    assert_eq!(final_state(&plan, "y"), Some(dir(0o755, P2)));
    assert!(plan.project_ops.is_empty());
    assert_eq!(
        plan.compute_ops,
        vec![
            ComputeOp::Take {
                path: p("y"),
                meta: dir(0o755, P2),
                expect: Some(file(0o644, 3, C1))
            },
            ComputeOp::Take {
                path: p("y/sub"),
                meta: file(0o644, 4, P2),
                expect: None
            },
        ]
    );
}

// ---------------------------------------------------------------------------
// 8. Symlinks.

#[test]
fn compute_retargets_symlink_project_replaces_it() {
    let plan = plan([(
        p("current"),
        input()
            .base(link("v1", C1), link("v1", P1))
            .upper(link("v2", C2))
            .project(link("v1", P1)),
    )]);
    insta::assert_snapshot!(
        "compute_retargets_symlink_project_replaces_it",
        plan.to_string()
    );
    assert_eq!(decision(&plan, "current"), Decision::Push);
    assert_eq!(
        plan.project_ops,
        vec![
            ProjectOp::Remove {
                path: p("current"),
                expect: link("v1", P1)
            },
            ProjectOp::Create {
                path: p("current"),
                meta: link("v2", C2)
            },
        ]
    );
    assert!(plan.compute_ops.is_empty());
}

// ---------------------------------------------------------------------------
// 9. Identical edits.

#[test]
fn identical_edits_on_both_sides_are_same_with_no_ops() {
    let plan = plan([(
        p("a"),
        input()
            .base(
                file(0o644, 3, C1).with_hash(hash(1)),
                file(0o644, 3, P1).with_hash(hash(1)),
            )
            .upper(file(0o644, 5, C2).with_hash(hash(2)))
            .project(file(0o644, 5, P2).with_hash(hash(2))),
    )]);
    insta::assert_snapshot!(
        "identical_edits_on_both_sides_are_same_with_no_ops",
        plan.to_string()
    );
    assert_eq!(decision(&plan, "a"), Decision::Same);
    assert!(plan.is_empty());
    assert_eq!(plan.conflicts().count(), 0);
}

// ---------------------------------------------------------------------------
// 10. Odd filenames.

#[test]
fn odd_filenames_created_on_compute_are_pushed_and_shown_escaped() {
    let names: [&[u8]; 3] = [b"--x", b"line\nbreak", b"caf\xe9"];
    let plan = plan(
        names
            .iter()
            .map(|name| (pb(name), input().upper(file(0o644, 1, C1)))),
    );
    insta::assert_snapshot!(
        "odd_filenames_created_on_compute_are_pushed_and_shown_escaped",
        plan.to_string()
    );
    let created: Vec<&[u8]> = plan
        .project_ops
        .iter()
        .map(|op| {
            assert!(matches!(op, ProjectOp::Create { .. }));
            op.path().as_bytes()
        })
        .collect();
    assert_eq!(created, [&b"--x"[..], b"caf\xe9", b"line\nbreak"]);
    let text = plan.to_string();
    assert!(text.contains("line\\nbreak") && text.contains("caf\\xe9"));
}

// ---------------------------------------------------------------------------
// 11. The compute side replaced a directory with a file, the project added
//     something beneath it.

#[test]
fn compute_replaces_dir_with_file_while_project_adds_child_project_wins_file_preserved() {
    // The compute side saw the empty directory `d` in the lower and replaced
    // it with a file; the project created `d/new` meanwhile. The compute side
    // holds a non-directory where the project has a directory, so the
    // project lists its subtree.
    let plan = plan([
        (
            p("d"),
            input()
                .seen(dir(0o755, P1))
                .upper(file(0o644, 4, C2))
                .project(dir(0o755, P1)),
        ),
        (p("d/new"), input().project(file(0o644, 2, P2))),
    ]);
    insta::assert_snapshot!(
        "compute_replaces_dir_with_file_while_project_adds_child_project_wins_file_preserved",
        plan.to_string()
    );
    let d = &plan.resolutions[&p("d")];
    assert_eq!(d.decision, Decision::Conflict);
    assert_eq!(d.final_state, Some(dir(0o755, P1)));
    assert_eq!(
        plan.project_ops,
        vec![ProjectOp::PreserveConflict {
            path: p("d"),
            compute: file(0o644, 4, C2)
        }]
    );
    assert_eq!(decision(&plan, "d/new"), Decision::Pull);
    let takes: Vec<&RelPath> = plan.compute_ops.iter().map(ComputeOp::path).collect();
    assert_eq!(takes, [&p("d"), &p("d/new")]);
}

// ---------------------------------------------------------------------------
// 12. Inputs the reconcile refuses.

#[test]
fn input_without_its_parent_is_refused() {
    let bad = inputs([(p("a/b"), input().upper(file(0o644, 1, C1)))]);
    assert_eq!(
        reconcile(&bad),
        Err(InputError::MissingParent { path: p("a/b") })
    );
}

#[test]
fn input_inside_the_reserved_directory_is_refused() {
    let bad = inputs([(p(".unionsync/x"), input().upper(file(0o644, 1, C1)))]);
    assert_eq!(
        reconcile(&bad),
        Err(InputError::Reserved {
            path: p(".unionsync/x")
        })
    );
}

/// Without hashes a chmod cannot be told from a chmod plus an edit that kept
/// size and mtime (both bump the ctime): the content is shipped.
#[test]
fn compute_chmod_without_hashes_ships_the_content() {
    let plan = plan([(
        p("run.sh"),
        input()
            .base(
                file(0o644, 12, C1).with_ctime(C1),
                file(0o644, 12, P1).with_ctime(P1),
            )
            .upper(file(0o755, 12, C1).with_ctime(C3))
            .project(file(0o644, 12, P1).with_ctime(P1)),
    )]);
    assert!(matches!(
        plan.project_ops.as_slice(),
        [ProjectOp::Write { meta, .. }] if meta.perm() == 0o755
    ));
}

// ---------------------------------------------------------------------------
// Absence is never a deletion.

#[test]
fn a_path_whose_copy_up_failed_is_no_change_and_the_project_keeps_it() {
    let plan = plan([(
        p("f5.txt"),
        input()
            .seen(file(0o644, 13, P1))
            .shows_lower()
            .project(file(0o644, 13, P1)),
    )]);
    assert_eq!(decision(&plan, "f5.txt"), Decision::Nothing);
    assert!(plan.project_ops.is_empty(), "{plan}");
    assert!(plan.compute_ops.is_empty(), "{plan}");
}

#[test]
fn a_synced_path_missing_from_the_upper_without_a_whiteout_is_not_deleted() {
    let plan = plan([(
        p("synced"),
        input()
            .base(file(0o644, 4, C1), file(0o644, 4, P1))
            .shows_lower()
            .project(file(0o644, 4, P1)),
    )]);
    assert_eq!(decision(&plan, "synced"), Decision::Nothing);
    assert!(plan.project_ops.is_empty(), "{plan}");
    assert!(plan.compute_ops.is_empty(), "{plan}");
    assert_eq!(final_state(&plan, "synced"), Some(file(0o644, 4, P1)));
}

#[test]
fn a_project_edit_of_a_path_showing_the_lower_needs_no_step_on_either_side() {
    let plan = plan([(
        p("f"),
        input()
            .base(file(0o644, 4, C1), file(0o644, 4, P1))
            .shows_lower()
            .project(file(0o644, 9, P2)),
    )]);
    assert_eq!(decision(&plan, "f"), Decision::Pull);
    assert!(
        plan.project_ops.is_empty() && plan.compute_ops.is_empty(),
        "{plan}"
    );
}

#[test]
fn an_edit_over_a_lower_file_seen_through_sshfs_is_pushed_without_a_conflict() {
    // sshfs showed whole seconds and ctime = mtime; the project's own stat
    // of the same, unchanged file has nanoseconds and a real ctime.
    let through_sshfs = Meta::file(0o644, 4, 5_000_000_000).with_ctime(5_000_000_000);
    let project = Meta::file(0o644, 4, 5_123_456_789).with_ctime(5_200_000_000);
    let plan = plan([(
        p("n.txt"),
        input()
            .seen_via_mount(through_sshfs)
            .upper(file(0o644, 11, C2))
            .project(project),
    )]);
    assert_eq!(decision(&plan, "n.txt"), Decision::Push);
}

#[test]
fn a_project_edit_after_an_sshfs_observation_still_wins_a_conflict() {
    let through_sshfs = Meta::file(0o644, 4, 5_000_000_000).with_ctime(5_000_000_000);
    let plan = plan([(
        p("n.txt"),
        input()
            .seen_via_mount(through_sshfs)
            .upper(file(0o644, 11, C2))
            .project(Meta::file(0o644, 4, 7_000_000_000)),
    )]);
    assert_eq!(decision(&plan, "n.txt"), Decision::Conflict);
}

#[test]
fn no_base_is_recorded_where_the_sides_hold_different_content_after_a_sync() {
    let compute = file(0o644, 5, C1);
    assert_eq!(
        BaseEntry::after_sync(Some(compute.clone()), Some(file(0o644, 9, P1))),
        None
    );
    assert_eq!(
        BaseEntry::after_sync(Some(compute.clone()), Some(dir(0o755, P1))),
        None
    );
    assert_eq!(
        BaseEntry::after_sync(Some(compute.clone()), Some(file(0o644, 5, P1))),
        Some(BaseEntry {
            compute,
            project: file(0o644, 5, P1)
        }),
        "same size and mode, unknown hashes: the sync made them equal"
    );
}
