//! Arbitrary reconcile inputs over a tiny namespace of odd byte names.
//!
//! `reconcile` must never panic (an `Err` is fine). When it returns `Err`,
//! the error must name a path that really breaks the input contract; when it
//! returns a plan, the plan must be well-formed:
//! - one resolution per input path, steps only on input paths, none reserved;
//!   and only inputs that meet the checked contract (parents listed, nothing
//!   reserved, project states a tree) get a plan at all;
//! - each side's steps in phases (preserve < remove < create/write/take <
//!   chmod), at most one step per path and phase, a removal never before the
//!   removal of a descendant, a creation never before its parent's, and no
//!   removal after a creation beneath it;
//! - a preserved loser only for a `Conflict`, never a directory;
//! - the winner's current state is the final state; a conflict keeps the
//!   project's; create, write and take carry the final state;
//! - the final states form a tree;
//! - when every base entry is self-consistent (both sides agreed on kind,
//!   mode and size, as after a real sync), replaying the project steps on the
//!   project states meets every step's precondition and ends in the final
//!   states (kind, mode, size).
#![no_main]

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use libfuzzer_sys::arbitrary::{Arbitrary, Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use unionsync_core::{
    reconcile, BaseEntry, ComputeOp, ContentHash, Decision, InputError, Inputs, Kind, Meta,
    PathInput, Plan, ProjectOp, RelPath, Reported, Side,
};

const NAMES: [&[u8]; 6] = [b"a", b"b", b"-x", b"a b", b"\n", b"\xff"];
const MODES: [u32; 6] = [0o644, 0o600, 0o755, 0o555, 0o4755, 0o100644];
const TIMES: [i64; 5] = [0, 1, 2, i64::MIN, i64::MAX];
const CTIMES: [i64; 3] = [0, 1, 2];
const TARGETS: [&[u8]; 4] = [b"a", b"../b", b"\xff", b"-x"];

/// One fuzz case: the reconcile input, and whether the generator made it
/// meet the contract (ancestors listed, both sides trees) or left it raw.
struct Case {
    tidy: bool,
    inputs: Inputs,
}

/// Rust source that rebuilds the input (with `p(b"..")` for
/// `RelPath::new(&b".."[..]).unwrap()`), for a regression test.
impl fmt::Debug for Case {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "// generated tidy: {}", self.tidy)?;
        writeln!(f, "let mut inputs = Inputs::new();")?;
        for (path, input) in &self.inputs {
            writeln!(f, "inputs.insert(p(b\"{path}\"), PathInput {{")?;
            match &input.base {
                None => writeln!(f, "    base: None,")?,
                Some(b) => writeln!(
                    f,
                    "    base: Some(BaseEntry {{\n        compute: {},\n        project: {},\n    }}),",
                    rust_meta(&b.compute),
                    rust_meta(&b.project)
                )?,
            }
            writeln!(f, "    seen: {},", rust_option(input.seen.as_ref()))?;
            writeln!(f, "    seen_via_mount: {},", input.seen_via_mount)?;
            match &input.compute {
                None => writeln!(f, "    compute: None,")?,
                Some(Reported::Deleted) => writeln!(f, "    compute: Some(Reported::Deleted),")?,
                Some(Reported::Lower) => writeln!(f, "    compute: Some(Reported::Lower),")?,
                Some(Reported::Present(m)) => {
                    writeln!(f, "    compute: Some(Reported::Present({})),", rust_meta(m))?
                }
            }
            writeln!(f, "    project: {},", rust_option(input.project.as_ref()))?;
            writeln!(f, "}});")?;
        }
        Ok(())
    }
}

fn rust_meta(m: &Meta) -> String {
    let kind = match &m.kind {
        Kind::File => "Kind::File".to_string(),
        Kind::Dir => "Kind::Dir".to_string(),
        Kind::Symlink { target } => format!(
            "Kind::Symlink {{ target: b\"{}\".to_vec() }}",
            target.escape_ascii()
        ),
    };
    let hash = match m.hash {
        None => "None".to_string(),
        Some(ContentHash(h)) if h.iter().all(|&b| b == h[0]) => {
            format!("Some(ContentHash([{}; 32]))", h[0])
        }
        Some(ContentHash(h)) => format!("Some(ContentHash({h:?}))"),
    };
    format!(
        "Meta {{ kind: {kind}, mode: {:#o}, size: {}, mtime_ns: {}, ctime_ns: {}, hash: {hash} }}",
        m.mode, m.size, m.mtime_ns, m.ctime_ns
    )
}

fn rust_option(m: Option<&Meta>) -> String {
    m.map_or_else(|| "None".to_string(), |m| format!("Some({})", rust_meta(m)))
}

fn name(u: &mut Unstructured<'_>) -> Result<&'static [u8]> {
    if u.ratio(1, 48)? {
        Ok(b".unionsync")
    } else {
        u.choose(&NAMES).copied()
    }
}

fn path(u: &mut Unstructured<'_>) -> Result<RelPath> {
    let depth = u.int_in_range(1..=3)?;
    let mut bytes = Vec::new();
    for i in 0..depth {
        if i > 0 {
            bytes.push(b'/');
        }
        bytes.extend_from_slice(name(u)?);
    }
    Ok(RelPath::new(bytes).expect("names are valid components"))
}

fn hash(u: &mut Unstructured<'_>) -> Result<Option<ContentHash>> {
    Ok(match u.int_in_range(0..=3)? {
        0 => None,
        n => Some(ContentHash([n; 32])),
    })
}

/// Random metadata; `dir_bias` makes directories likely (for paths with
/// descendants, so that the trees are not mostly pruned).
fn meta(u: &mut Unstructured<'_>, dir_bias: bool) -> Result<Meta> {
    let kind = if dir_bias {
        match u.int_in_range(0..=5)? {
            0..=3 => 1,
            4 => 0,
            _ => 2,
        }
    } else {
        u.int_in_range(0..=2)?
    };
    let mode = *u.choose(&MODES)?;
    let mtime_ns = *u.choose(&TIMES)?;
    let ctime_ns = *u.choose(&CTIMES)?;
    let odd = u.ratio(1, 8)?;
    let (kind, size, hash) = match kind {
        0 => (Kind::File, u.int_in_range(0..=3)?, hash(u)?),
        1 => (
            Kind::Dir,
            if odd { 1 } else { 0 },
            if odd { hash(u)? } else { None },
        ),
        _ => {
            let target = u.choose(&TARGETS)?.to_vec();
            let size = if odd { 7 } else { target.len() as u64 };
            (Kind::Symlink { target }, size, None)
        }
    };
    Ok(Meta {
        kind,
        mode,
        size,
        mtime_ns,
        ctime_ns,
        hash,
    })
}

/// `m` with one field changed.
fn tweak(u: &mut Unstructured<'_>, m: &Meta, dir_bias: bool) -> Result<Meta> {
    let mut m = m.clone();
    match u.int_in_range(0..=5)? {
        0 => m.mode = *u.choose(&MODES)?,
        1 => m.size = u.int_in_range(0..=3)?,
        2 => m.mtime_ns = *u.choose(&TIMES)?,
        3 => m.ctime_ns = *u.choose(&CTIMES)?,
        4 => m.hash = hash(u)?,
        _ => return meta(u, dir_bias),
    }
    Ok(m)
}

/// The same content observed by another clock: times differ, hash may be
/// missing.
fn restamp(u: &mut Unstructured<'_>, m: &Meta) -> Result<Meta> {
    let mut m = m.clone();
    m.mtime_ns = *u.choose(&TIMES)?;
    m.ctime_ns = *u.choose(&CTIMES)?;
    if u.ratio(1, 4)? {
        m.hash = None;
    }
    Ok(m)
}

/// A state related to `anchor`: the same, tweaked, the same content
/// restamped, or unrelated.
fn near(u: &mut Unstructured<'_>, anchor: Option<&Meta>, dir_bias: bool) -> Result<Meta> {
    match (anchor, u.int_in_range(0..=3)?) {
        (Some(a), 0) => Ok(a.clone()),
        (Some(a), 1) => tweak(u, a, dir_bias),
        (Some(a), 2) => restamp(u, a),
        _ => meta(u, dir_bias),
    }
}

fn path_input(u: &mut Unstructured<'_>, dir_bias: bool) -> Result<PathInput> {
    let base = if u.arbitrary()? {
        let compute = meta(u, dir_bias)?;
        let project = if u.ratio(7, 8)? {
            restamp(u, &compute)?
        } else {
            meta(u, dir_bias)?
        };
        Some(BaseEntry { compute, project })
    } else {
        None
    };
    let project = match u.int_in_range(0..=4)? {
        0 => None,
        _ => Some(near(u, base.as_ref().map(|b| &b.project), dir_bias)?),
    };
    let seen = match (&base, u.int_in_range(0..=7)?) {
        (None, 0..=3) => Some(near(u, project.as_ref(), dir_bias)?),
        (Some(_), 0) => Some(meta(u, dir_bias)?),
        _ => None,
    };
    let compute = match u.int_in_range(0..=6)? {
        0 => None,
        1 => Some(Reported::Deleted),
        6 => Some(Reported::Lower),
        2 if project.is_some() => Some(Reported::Present(restamp(u, project.as_ref().unwrap())?)),
        _ => {
            let anchor = base.as_ref().map(|b| &b.compute).or(seen.as_ref());
            Some(Reported::Present(near(u, anchor, dir_bias)?))
        }
    };
    Ok(PathInput {
        base,
        seen_via_mount: seen.is_some() && u.arbitrary()?,
        seen,
        compute,
        project,
    })
}

fn is_dir(m: Option<&Meta>) -> bool {
    m.is_some_and(Meta::is_dir)
}

/// What the compute side's union shows at each input path (its upper entry,
/// nothing, or the project's state through the lower), and whether a path is
/// hidden by its parent — as the reconcile module documents the views.
struct Union {
    visible: BTreeMap<RelPath, Option<Meta>>,
    hidden_by_parent: BTreeSet<RelPath>,
}

fn union_of(inputs: &Inputs) -> Union {
    let mut visible: BTreeMap<RelPath, Option<Meta>> = BTreeMap::new();
    let mut hidden_by_parent = BTreeSet::new();
    for (path, input) in inputs {
        let parent_hides = match path.parent() {
            None => false,
            Some(parent) => match visible.get(&parent) {
                Some(state) => !is_dir(state.as_ref()),
                None => false,
            },
        };
        if parent_hides {
            hidden_by_parent.insert(path.clone());
        }
        let state = match &input.compute {
            Some(Reported::Present(m)) => Some(m.clone()),
            Some(Reported::Deleted) => None,
            Some(Reported::Lower) | None if parent_hides => None,
            Some(Reported::Lower) | None => input.project.clone(),
        };
        visible.insert(path.clone(), state);
    }
    Union {
        visible,
        hidden_by_parent,
    }
}

impl<'a> Arbitrary<'a> for Case {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        let tidy = !u.ratio(1, 16)?;
        let mut paths = BTreeSet::new();
        for _ in 0..u.int_in_range(1..=8)? {
            paths.insert(path(u)?);
        }
        if tidy {
            let ancestors: Vec<RelPath> = paths.iter().flat_map(|p| p.ancestors()).collect();
            paths.extend(ancestors);
        }
        let parents: BTreeSet<RelPath> = paths.iter().filter_map(|p| p.parent()).collect();
        let mut inputs = Inputs::new();
        for p in paths {
            let input = path_input(u, parents.contains(&p))?;
            inputs.insert(p, input);
        }
        if tidy {
            // Parents first: prune what a non-directory parent cannot hold.
            let keys: Vec<RelPath> = inputs.keys().cloned().collect();
            for p in keys {
                let Some(parent) = p.parent() else { continue };
                if !is_dir(inputs[&parent].project.as_ref()) {
                    inputs.get_mut(&p).unwrap().project = None;
                }
                let union = union_of(&inputs);
                if union.hidden_by_parent.contains(&p) {
                    let input = inputs.get_mut(&p).unwrap();
                    if matches!(input.compute, Some(Reported::Present(_))) {
                        input.compute = None;
                    }
                }
            }
        }
        Ok(Case { tidy, inputs })
    }
}

fn project_phase(op: &ProjectOp) -> u8 {
    match op {
        ProjectOp::PreserveConflict { .. } => 0,
        ProjectOp::Remove { .. } => 1,
        ProjectOp::Create { .. } | ProjectOp::Write { .. } => 2,
        ProjectOp::SetMode { .. } => 3,
    }
}

fn compute_phase(op: &ComputeOp) -> u8 {
    match op {
        ComputeOp::Remove { .. } | ComputeOp::DropWhiteout { .. } => 1,
        ComputeOp::Take { .. } => 2,
    }
}

fn check_order(side: &str, steps: &[(u8, &RelPath)], plan: &Plan) {
    let mut seen = BTreeSet::new();
    for (i, &(phase, path)) in steps.iter().enumerate() {
        assert!(
            seen.insert((phase, path)),
            "{side}: two steps of phase {phase} on {path}\n{plan}"
        );
        for &(later_phase, later) in &steps[i + 1..] {
            assert!(
                phase <= later_phase,
                "{side}: phase {phase} step on {path} before phase {later_phase} step on {later}\n{plan}"
            );
            if phase == 1 && later_phase == 1 {
                assert!(
                    !path.is_ancestor_of(later),
                    "{side}: removes {path} before its descendant {later}\n{plan}"
                );
            }
            if phase == 2 && later_phase == 2 {
                assert!(
                    !later.is_ancestor_of(path),
                    "{side}: creates {path} before its parent {later}\n{plan}"
                );
            }
            if phase == 2 && later_phase == 1 {
                assert!(
                    !later.is_ancestor_of(path),
                    "{side}: removes {later} after creating {path} beneath it\n{plan}"
                );
            }
        }
    }
}

/// The error names a path that really breaks the contract as stated.
fn check_error(inputs: &Inputs, union: &Union, err: &InputError) {
    match err {
        InputError::Reserved { path } => assert!(path.is_reserved(), "{err}"),
        InputError::MissingParent { path } => {
            let parent = path.parent().expect("a top-level path has no parent to miss");
            assert!(!inputs.contains_key(&parent), "{err}");
        }
        InputError::ProjectNotATree { path } => {
            let parent = path.parent().expect("top-level paths are always in a tree");
            assert!(inputs[path].project.is_some(), "{err}");
            assert!(!is_dir(inputs[&parent].project.as_ref()), "{err}");
        }
        InputError::ComputeNotATree { path } => {
            assert!(
                matches!(inputs[path].compute, Some(Reported::Present(_))),
                "{err}"
            );
            assert!(union.hidden_by_parent.contains(path), "{err}");
        }
    }
}

/// Both sides agreed on the content at the base, as after a real sync.
fn base_consistent(base: &BaseEntry) -> bool {
    let (c, p) = (&base.compute, &base.project);
    c.kind == p.kind
        && c.perm() == p.perm()
        && c.size == p.size
        && match (c.hash, p.hash) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        }
}

/// Replays the project steps on the project's states: every precondition
/// holds and the result is the planned final state.
fn replay_project(inputs: &Inputs, plan: &Plan) {
    let mut tree: BTreeMap<&RelPath, Option<Meta>> =
        inputs.iter().map(|(p, i)| (p, i.project.clone())).collect();
    for op in &plan.project_ops {
        let path = op.path();
        let now = tree[path].clone();
        match op {
            ProjectOp::PreserveConflict { .. } => {}
            ProjectOp::Remove { expect, .. } => {
                assert_eq!(now.as_ref(), Some(expect), "replay: {op}\n{plan}");
                let child = tree
                    .iter()
                    .find(|(p, m)| path.is_ancestor_of(p) && m.is_some());
                assert!(
                    child.is_none(),
                    "replay: {op}, but {} is still there\n{plan}",
                    child.unwrap().0
                );
                tree.insert(path, None);
            }
            ProjectOp::Create { meta, .. } => {
                assert_eq!(now, None, "replay: {op}\n{plan}");
                if let Some(parent) = path.parent() {
                    assert!(
                        is_dir(tree[&parent].as_ref()),
                        "replay: {op}, parent {parent} is {:?}\n{plan}",
                        tree[&parent]
                    );
                }
                tree.insert(path, Some(meta.clone()));
            }
            ProjectOp::Write { meta, expect, .. } => {
                assert_eq!(now.as_ref(), Some(expect), "replay: {op}\n{plan}");
                assert!(
                    expect.kind == Kind::File && meta.kind == Kind::File,
                    "replay: {op}\n{plan}"
                );
                tree.insert(path, Some(meta.clone()));
            }
            ProjectOp::SetMode { mode, expect, .. } => {
                assert_eq!(now.as_ref(), Some(expect), "replay: {op}\n{plan}");
                let mut m = expect.clone();
                m.mode = *mode;
                tree.insert(path, Some(m));
            }
        }
    }
    for (path, r) in &plan.resolutions {
        let got = tree[path].as_ref();
        let want = r.final_state.as_ref();
        let ok = match (got, want) {
            (None, None) => true,
            (Some(g), Some(w)) => {
                g.kind == w.kind
                    && (matches!(g.kind, Kind::Symlink { .. }) || g.perm() == w.perm())
                    && (g.kind != Kind::File || g.size == w.size)
            }
            _ => false,
        };
        assert!(
            ok,
            "replay: {path} ends as {got:?} on the project, planned {want:?}\n{plan}"
        );
    }
}

fn check(case: &Case) {
    let inputs = &case.inputs;
    let union = union_of(inputs);
    let plan = match reconcile(inputs) {
        Ok(plan) => plan,
        Err(err) => return check_error(inputs, &union, &err),
    };

    // Only inputs meeting the checked contract get a plan.
    for (path, input) in inputs {
        assert!(!path.is_reserved(), "planned for reserved {path}\n{plan}");
        if let Some(parent) = path.parent() {
            let parent_input = inputs
                .get(&parent)
                .unwrap_or_else(|| panic!("planned for {path} without its parent\n{plan}"));
            if input.project.is_some() {
                assert!(
                    is_dir(parent_input.project.as_ref()),
                    "planned although the project's {path} has no directory parent\n{plan}"
                );
            }
        }
    }
    assert!(
        plan.resolutions.keys().eq(inputs.keys()),
        "resolutions do not cover exactly the input paths\n{plan}"
    );

    let project: Vec<(u8, &RelPath)> = plan
        .project_ops
        .iter()
        .map(|op| (project_phase(op), op.path()))
        .collect();
    let compute: Vec<(u8, &RelPath)> = plan
        .compute_ops
        .iter()
        .map(|op| (compute_phase(op), op.path()))
        .collect();
    for (_, path) in project.iter().chain(&compute) {
        assert!(inputs.contains_key(*path), "step on {path}, not an input\n{plan}");
        assert!(!path.is_reserved(), "step on reserved {path}\n{plan}");
    }
    check_order("project", &project, &plan);
    check_order("compute", &compute, &plan);

    for op in &plan.project_ops {
        let r = &plan.resolutions[op.path()];
        match op {
            ProjectOp::PreserveConflict { path, compute } => {
                assert_eq!(r.decision, Decision::Conflict, "{op}\n{plan}");
                assert_eq!(r.preserve.as_ref(), Some(compute), "{path}\n{plan}");
                assert!(!compute.is_dir(), "{op}: a directory preserved\n{plan}");
            }
            ProjectOp::Create { meta, .. } | ProjectOp::Write { meta, .. } => {
                assert_eq!(r.final_state.as_ref(), Some(meta), "{op}\n{plan}");
                assert_eq!(r.winner, Side::Compute, "{op}\n{plan}");
            }
            ProjectOp::Remove { .. } | ProjectOp::SetMode { .. } => {
                assert_eq!(r.winner, Side::Compute, "{op}\n{plan}");
            }
        }
    }
    for op in &plan.compute_ops {
        let r = &plan.resolutions[op.path()];
        match op {
            ComputeOp::Take { meta, .. } => {
                assert_eq!(r.final_state.as_ref(), Some(meta), "{op}\n{plan}")
            }
            ComputeOp::Remove { .. } | ComputeOp::DropWhiteout { .. } => {
                assert_eq!(r.final_state, None, "{op}\n{plan}")
            }
        }
    }

    for (path, r) in &plan.resolutions {
        let input = &inputs[path];
        let preserved = plan
            .project_ops
            .iter()
            .any(|op| matches!(op, ProjectOp::PreserveConflict { path: p, .. } if p == path));
        assert_eq!(
            r.preserve.is_some(),
            preserved,
            "{path}: preserve {:?} without a matching step\n{plan}",
            r.preserve
        );
        if r.decision == Decision::Conflict {
            assert_eq!(r.winner, Side::Project, "{path}: conflict\n{plan}");
        }
        let winners_state = match r.winner {
            Side::Project => input.project.as_ref(),
            Side::Compute => union.visible[path].as_ref(),
        };
        assert_eq!(
            r.final_state.as_ref(),
            winners_state,
            "{path}: final state is not the winner's ({:?})\n{plan}",
            r.winner
        );
        if r.final_state.is_some() {
            if let Some(parent) = path.parent() {
                if let Some(pr) = plan.resolutions.get(&parent) {
                    assert!(
                        is_dir(pr.final_state.as_ref()),
                        "{path} survives under {parent}, which ends as {:?}\n{plan}",
                        pr.final_state
                    );
                }
            }
        }
    }

    if inputs
        .values()
        .all(|i| i.base.as_ref().is_none_or(base_consistent))
    {
        replay_project(inputs, &plan);
    }
}

fuzz_target!(|case: Case| {
    check(&case);
});
