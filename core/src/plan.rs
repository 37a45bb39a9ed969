//! From resolutions to ordered steps for each side.
//!
//! Each side's steps run in four phases, so no step destroys a path that
//! another step still needs:
//! 1. preserve conflict losers (project side);
//! 2. removals, deepest first (a directory is removed only once empty, and
//!    never recursively);
//! 3. creations, writes and takes, shallowest first (parents exist first);
//! 4. mode changes.
//!
//! Every step that changes an existing path carries what the plan saw there
//! (`expect`), so the shell can compare-and-swap and defer a path the user
//! changed since.
//!
//! Across sides: the compute side's file data for `Create`, `Write` and
//! `PreserveConflict` is shipped before the compute side runs any step, and
//! the compute side's steps run after the project's (a `Take` copies the
//! project's final state).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::meta::{Kind, Meta, Sameness};
use crate::path::RelPath;
use crate::reconcile::{
    resolve, BaseEntry, ComputeView, Decision, InputError, Inputs, Resolution, Resolved, Side,
};

/// A step on the project home.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProjectOp {
    /// Copy the compute side's losing version into the conflicts area
    /// ([`conflict_path`]).
    PreserveConflict { path: RelPath, compute: Meta },
    /// Remove a file, symlink or empty directory (never recursive).
    Remove { path: RelPath, expect: Meta },
    /// Create the compute side's state where the project has nothing.
    Create { path: RelPath, meta: Meta },
    /// Replace a file's content with the compute side's.
    Write {
        path: RelPath,
        meta: Meta,
        expect: Meta,
    },
    /// Change only the mode.
    SetMode {
        path: RelPath,
        mode: u32,
        expect: Meta,
    },
}

/// A step on the compute side's upper layer and whiteouts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ComputeOp {
    /// Remove the upper entry (never recursive).
    Remove { path: RelPath, expect: Meta },
    /// Drop a whiteout: the project no longer has the path either. Deferred
    /// when the upper holds the path again (recreated since the plan).
    DropWhiteout { path: RelPath },
    /// Make the union show the project's state: fetch it into the upper (or
    /// drop the upper entry and let the lower show through). `expect` is the
    /// upper entry the plan saw, `None` for a whiteout or a hidden path.
    Take {
        path: RelPath,
        meta: Meta,
        expect: Option<Meta>,
    },
}

/// The steps of one sync, and what was decided for every input path.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub resolutions: BTreeMap<RelPath, Resolution>,
    pub project_ops: Vec<ProjectOp>,
    pub compute_ops: Vec<ComputeOp>,
}

impl ProjectOp {
    pub fn path(&self) -> &RelPath {
        match self {
            ProjectOp::PreserveConflict { path, .. }
            | ProjectOp::Remove { path, .. }
            | ProjectOp::Create { path, .. }
            | ProjectOp::Write { path, .. }
            | ProjectOp::SetMode { path, .. } => path,
        }
    }

    fn phase(&self) -> Phase {
        match self {
            ProjectOp::PreserveConflict { .. } => Phase::Preserve,
            ProjectOp::Remove { .. } => Phase::Remove,
            ProjectOp::Create { .. } | ProjectOp::Write { .. } => Phase::Create,
            ProjectOp::SetMode { .. } => Phase::Mode,
        }
    }
}

impl ComputeOp {
    pub fn path(&self) -> &RelPath {
        match self {
            ComputeOp::Remove { path, .. }
            | ComputeOp::DropWhiteout { path }
            | ComputeOp::Take { path, .. } => path,
        }
    }

    fn phase(&self) -> Phase {
        match self {
            ComputeOp::Remove { .. } | ComputeOp::DropWhiteout { .. } => Phase::Remove,
            ComputeOp::Take { .. } => Phase::Create,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Preserve,
    Remove,
    Create,
    Mode,
}

/// Where the losing compute version of `path` goes in the project home:
/// `.unionsync/conflicts/<compute-id>/<stamp>/<path>`.
pub fn conflict_path(compute_id: u64, stamp: &str, path: &RelPath) -> Option<RelPath> {
    let mut bytes = format!(".unionsync/conflicts/{compute_id}/{stamp}/").into_bytes();
    bytes.extend_from_slice(path.as_bytes());
    RelPath::new(bytes).ok()
}

/// Reconciles every input path and orders the steps that apply the result.
pub fn reconcile(inputs: &Inputs) -> Result<Plan, InputError> {
    let resolved = resolve(inputs)?;
    let mut project_ops = Vec::new();
    let mut compute_ops = Vec::new();
    for i in 0..resolved.paths.len() {
        project_steps(&resolved, i, &mut project_ops);
        compute_steps(&resolved, i, &mut compute_ops);
    }
    order(&mut project_ops, ProjectOp::phase, ProjectOp::path);
    order(&mut compute_ops, ComputeOp::phase, ComputeOp::path);
    let resolutions = resolved
        .paths
        .iter()
        .map(|p| (*p).clone())
        .zip(resolved.resolutions)
        .collect();
    Ok(Plan {
        resolutions,
        project_ops,
        compute_ops,
    })
}

/// Stable sort into phases; removals deepest first, the rest parents first.
/// Steps are generated in path order, so within a phase they already are
/// parents first.
fn order<T>(ops: &mut [T], phase: fn(&T) -> Phase, path: fn(&T) -> &RelPath) {
    ops.sort_by(|a, b| {
        phase(a).cmp(&phase(b)).then_with(|| match phase(a) {
            Phase::Remove => path(b).cmp(path(a)),
            _ => std::cmp::Ordering::Equal,
        })
    });
}

fn project_steps(resolved: &Resolved<'_>, i: usize, ops: &mut Vec<ProjectOp>) {
    let r = &resolved.resolutions[i];
    let path = resolved.paths[i].clone();
    let input = resolved.inputs[i];
    if let Some(compute) = &r.preserve {
        ops.push(ProjectOp::PreserveConflict {
            path: path.clone(),
            compute: compute.clone(),
        });
    }
    if r.winner == Side::Project {
        return;
    }
    match (input.project.clone(), r.final_state.clone()) {
        (None, None) => {}
        (Some(expect), None) => ops.push(ProjectOp::Remove { path, expect }),
        (None, Some(meta)) => ops.push(ProjectOp::Create { path, meta }),
        (Some(expect), Some(meta)) => {
            if expect.same_content(&meta) == Sameness::Same {
                // Equal content already: nothing to ship.
            } else if only_mode_differs(&expect, &meta, input.base.as_ref()) {
                ops.push(ProjectOp::SetMode {
                    path,
                    mode: meta.perm(),
                    expect,
                });
            } else if expect.kind == Kind::File && meta.kind == Kind::File {
                ops.push(ProjectOp::Write { path, meta, expect });
            } else {
                // A type change or a symlink retarget: remove, then create.
                ops.push(ProjectOp::Remove {
                    path: path.clone(),
                    expect,
                });
                ops.push(ProjectOp::Create { path, meta });
            }
        }
    }
}

/// Whether the project's `current` state becomes the compute side's `wanted`
/// by a chmod alone: known from the compute side's own history (a pure chmod
/// since the base, whose content the project still has) or from content.
fn only_mode_differs(current: &Meta, wanted: &Meta, base: Option<&BaseEntry>) -> bool {
    if base.is_some_and(|base| wanted.is_chmod_of(&base.compute)) {
        return true;
    }
    let mut with_current_mode = wanted.clone();
    with_current_mode.mode = current.mode;
    current.perm() != wanted.perm() && with_current_mode.same_content(current) == Sameness::Same
}

fn compute_steps(resolved: &Resolved<'_>, i: usize, ops: &mut Vec<ComputeOp>) {
    let r = &resolved.resolutions[i];
    let path = resolved.paths[i].clone();
    let now = resolved.compute_state(i).cloned();
    match (r.view, &r.final_state) {
        // The union shows the project live: nothing to do here.
        (ComputeView::Lower, _) | (ComputeView::Hidden, None) => {}
        (ComputeView::Whiteout, None) => ops.push(ComputeOp::DropWhiteout { path }),
        (ComputeView::Upper, None) => ops.push(ComputeOp::Remove {
            path,
            // An upper view always has a reported state.
            expect: now.expect("upper entry without metadata"),
        }),
        (_, Some(_)) if r.winner == Side::Compute => {}
        // Both sides already hold the same content (unchanged since the
        // base, or changed alike), even where hashes cannot show it.
        (_, Some(_)) if matches!(r.decision, Decision::Nothing | Decision::Same) => {}
        (_, Some(meta)) => {
            let same = now
                .as_ref()
                .is_some_and(|now| now.same_content(meta) == Sameness::Same);
            if !same {
                ops.push(ComputeOp::Take {
                    path,
                    meta: meta.clone(),
                    expect: now,
                });
            }
        }
    }
}

impl Plan {
    /// True when applying the plan changes nothing on either side.
    pub fn is_empty(&self) -> bool {
        self.project_ops.is_empty() && self.compute_ops.is_empty()
    }

    /// Every path where the project won a conflict (the sync report's
    /// list), including losing compute deletions, which leave nothing to
    /// preserve.
    pub fn conflicts(&self) -> impl Iterator<Item = &RelPath> {
        self.resolutions
            .iter()
            .filter(|(_, r)| r.decision == Decision::Conflict)
            .map(|(p, _)| p)
    }

    /// Compute-side versions kept in the conflicts area.
    pub fn preserved(&self) -> impl Iterator<Item = (&RelPath, &Meta)> {
        self.resolutions
            .iter()
            .filter_map(|(p, r)| r.preserve.as_ref().map(|m| (p, m)))
    }
}

impl fmt::Display for ProjectOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProjectOp::PreserveConflict { path, compute } => {
                write!(f, "preserve {path} ({compute}) in conflicts")
            }
            ProjectOp::Remove { path, expect } => write!(f, "remove   {path} (was {expect})"),
            ProjectOp::Create { path, meta } => write!(f, "create   {path} ({meta})"),
            ProjectOp::Write { path, meta, expect } => {
                write!(f, "write    {path} ({expect} -> {meta})")
            }
            ProjectOp::SetMode { path, mode, .. } => write!(f, "chmod    {path} {mode:04o}"),
        }
    }
}

impl fmt::Display for ComputeOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ComputeOp::Remove { path, expect } => write!(f, "remove   {path} (was {expect})"),
            ComputeOp::DropWhiteout { path } => write!(f, "unwhiteout {path}"),
            ComputeOp::Take { path, meta, .. } => write!(f, "take     {path} ({meta})"),
        }
    }
}

fn describe(state: Option<&Meta>) -> String {
    state.map_or_else(|| "absent".to_string(), |m| m.to_string())
}

/// A readable report: one line per decided path, then each side's steps.
impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "decisions:")?;
        for (path, r) in &self.resolutions {
            let decision = match r.decision {
                Decision::Nothing => "nothing",
                Decision::Push => "push",
                Decision::Pull => "pull",
                Decision::Same => "same",
                Decision::Conflict => "conflict",
                Decision::KeepParent => "keep-parent",
            };
            let view = match r.view {
                ComputeView::Upper => "upper",
                ComputeView::Whiteout => "whiteout",
                ComputeView::Hidden => "hidden",
                ComputeView::Lower => "lower",
            };
            writeln!(
                f,
                "  {path}: {decision} [{view}] -> {}",
                describe(r.final_state.as_ref())
            )?;
        }
        writeln!(f, "project:")?;
        for op in &self.project_ops {
            writeln!(f, "  {op}")?;
        }
        writeln!(f, "compute:")?;
        for op in &self.compute_ops {
            writeln!(f, "  {op}")?;
        }
        Ok(())
    }
}
