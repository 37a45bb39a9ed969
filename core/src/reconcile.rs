//! The three-way reconcile: (base, compute now, project now) → a decision
//! and a final state for every path, consistent as a tree.
//!
//! Per path, each side is compared with the base *by its own clock*
//! ([`Meta::changed_since`]); the two sides are compared with each other only
//! by content ([`Meta::same_content`]):
//!
//! | compute   | project   | decision                                  |
//! |-----------|-----------|-------------------------------------------|
//! | unchanged | unchanged | `Nothing`                                 |
//! | changed   | unchanged | `Push` (compute's state wins)             |
//! | unchanged | changed   | `Pull` (project's state wins)             |
//! | changed   | changed   | `Same` if equal content, else `Conflict`  |
//!
//! A conflict takes the project's state and preserves the compute side's
//! file or symlink in the conflicts area. Then the tree is made consistent,
//! so no step destroys a path that carries a decision:
//! - a deletion of a directory (either side) under which something survives
//!   is undone for that directory (`KeepParent`);
//! - a compute-side path under a project-side non-directory loses (project
//!   wins the type change; the compute content is preserved);
//! - a compute-side non-directory replacing a project directory under which
//!   the project still has something loses likewise.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::meta::{same_state, Kind, Meta, Sameness};
use crate::path::RelPath;

/// What both sides agreed on at the last successful sync, each side's
/// observation by its own clock. Kept only for paths the compute side holds
/// in its upper layer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseEntry {
    pub compute: Meta,
    pub project: Meta,
}

impl BaseEntry {
    /// The base to record for a path once a sync applied all its steps:
    /// kept while the compute side holds a copy in its upper layer (and the
    /// project has it too), dropped otherwise (the union shows the lower).
    /// Both sides hold the same content after a clean sync; where they do
    /// not (the project changed under a step that did not touch it), no
    /// base either: the next sync decides by content, project wins.
    pub fn after_sync(compute_upper: Option<Meta>, project: Option<Meta>) -> Option<BaseEntry> {
        let (compute, project) = (compute_upper?, project?);
        match same_state(Some(&compute), Some(&project)) {
            Sameness::Different => None,
            Sameness::Same | Sameness::Unknown => Some(BaseEntry { compute, project }),
        }
    }
}

/// What the compute side reports for a path it changed or holds.
///
/// Built by [`Reported::observe`] from what its disk holds, so that a
/// deletion is only ever a durable whiteout: **absence is never a
/// deletion**.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reported {
    /// The path is in the upper layer with this metadata.
    Present(Meta),
    /// The path is whited out: a user deleted it through the union.
    Deleted,
    /// Neither an upper entry nor a whiteout: the union shows the lower's
    /// version here (a copy-up that failed, a state that could not be read,
    /// an entry created and removed again before any sync saw it, a sync's
    /// own removal). No change of the compute side, whatever the base says.
    Lower,
}

impl Reported {
    /// The report for a path whose upper entry is `upper` and whose
    /// whiteout marker exists when `whiteout`. The upper entry wins (a
    /// whiteout beneath it only hides the lower).
    pub fn observe(upper: Option<Meta>, whiteout: bool) -> Reported {
        match (upper, whiteout) {
            (Some(meta), _) => Reported::Present(meta),
            (None, true) => Reported::Deleted,
            (None, false) => Reported::Lower,
        }
    }

    /// The upper entry's metadata, if the report is one.
    pub fn present(&self) -> Option<&Meta> {
        match self {
            Reported::Present(meta) => Some(meta),
            Reported::Deleted | Reported::Lower => None,
        }
    }
}

/// Everything known about one path when a sync is planned.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathInput {
    pub base: Option<BaseEntry>,
    /// With no base: the project's metadata as the compute side saw it in the
    /// lower just before it first changed the path (copy-up or delete). It is
    /// a project-clock observation, so it is compared with project now.
    pub seen: Option<Meta>,
    /// `seen` was read through the lower mount rather than from the
    /// project's own metadata (its index): network filesystems round mtimes
    /// to seconds and fake ctimes, so it is compared only at that precision
    /// ([`Meta::changed_since_mount_view`]).
    pub seen_via_mount: bool,
    /// The compute side's report; `None` when it reported nothing, in which
    /// case its union shows the lower (or hides the path under a deleted or
    /// replaced ancestor).
    pub compute: Option<Reported>,
    /// The project's state now.
    pub project: Option<Meta>,
}

/// The input of a reconcile, sorted parents first.
///
/// Contract (the first three are checked, see [`InputError`]):
/// - every ancestor of an input path is an input path too;
/// - each side's states form a tree (a present path has a directory parent);
/// - no path is reserved (`.unionsync/…`);
/// - where the compute side deleted a path or holds a non-directory at it and
///   the project holds a directory there, every project descendant is an
///   input path ([`needs_project_subtree`]); otherwise a directory removal
///   can fail at apply time (it is never recursive) and be deferred.
pub type Inputs = BTreeMap<RelPath, PathInput>;

/// True when the project side must list its whole subtree at `path` for the
/// reconcile to be complete.
pub fn needs_project_subtree(compute: Option<&Reported>, project: Option<&Meta>) -> bool {
    let project_dir = project.is_some_and(Meta::is_dir);
    let compute_not_dir = match compute {
        Some(Reported::Deleted) => true,
        Some(Reported::Present(m)) => !m.is_dir(),
        Some(Reported::Lower) | None => false,
    };
    project_dir && compute_not_dir
}

/// True when a side changed a file to the same size and mode as the other
/// side's: the reconcile needs both hashes to tell an identical edit from a
/// conflict, and the plan to see that a change needs no copy (a clean
/// cached copy is never pushed back). A path neither side changed needs
/// none (its decision is `Nothing` whatever the content), so an unchanged
/// tree costs no reads.
pub fn needs_hashes(input: &PathInput) -> bool {
    match (&input.compute, &input.project) {
        (Some(Reported::Present(c)), Some(p)) => {
            c.same_content(p) == Sameness::Unknown
                && (compute_changed(ComputeView::Upper, input) || project_changed(input))
        }
        _ => false,
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    #[error("input path {path} has no entry for its parent")]
    MissingParent { path: RelPath },
    #[error("the project has {path} but not a directory at its parent")]
    ProjectNotATree { path: RelPath },
    #[error("the compute side has {path} but not a directory at its parent")]
    ComputeNotATree { path: RelPath },
    #[error("{path} is inside the reserved .unionsync directory")]
    Reserved { path: RelPath },
}

/// How the compute side's union shows a path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ComputeView {
    /// In the upper layer.
    Upper,
    /// Whited out.
    Whiteout,
    /// Under a whited-out or non-directory ancestor: not visible.
    Hidden,
    /// Not in the upper: the union shows the project's lower live.
    Lower,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Decision {
    /// Neither side changed.
    Nothing,
    /// Only the compute side changed: its state goes to the project.
    Push,
    /// Only the project changed: its state goes to the compute side.
    Pull,
    /// Both changed to the same content.
    Same,
    /// Both changed differently (or the tree forced it): the project's state
    /// wins; the compute side's file or symlink is preserved.
    Conflict,
    /// A directory deletion undone because something beneath it survives.
    KeepParent,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Side {
    Compute,
    Project,
}

/// The outcome for one path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resolution {
    pub decision: Decision,
    /// Whose current state becomes the final one.
    pub winner: Side,
    /// The state both sides hold after the sync (`None`: absent).
    pub final_state: Option<Meta>,
    /// The compute side's state, to be kept in the conflicts area.
    pub preserve: Option<Meta>,
    pub view: ComputeView,
}

/// The per-path reconcile of a whole input, before it becomes steps.
pub(crate) struct Resolved<'a> {
    pub paths: Vec<&'a RelPath>,
    pub inputs: Vec<&'a PathInput>,
    pub resolutions: Vec<Resolution>,
}

impl Resolved<'_> {
    /// The compute side's visible state at index `i`.
    pub fn compute_state(&self, i: usize) -> Option<&Meta> {
        compute_state(self.resolutions[i].view, self.inputs[i])
    }
}

fn compute_state(view: ComputeView, input: &PathInput) -> Option<&Meta> {
    match (view, &input.compute) {
        (ComputeView::Upper, Some(Reported::Present(m))) => Some(m),
        (ComputeView::Lower, _) => input.project.as_ref(),
        _ => None,
    }
}

fn is_dir(state: Option<&Meta>) -> bool {
    state.is_some_and(Meta::is_dir)
}

fn holds_content(state: Option<&Meta>) -> bool {
    state.is_some_and(|m| !m.is_dir())
}

pub(crate) fn resolve(inputs: &Inputs) -> Result<Resolved<'_>, InputError> {
    let paths: Vec<&RelPath> = inputs.keys().collect();
    let values: Vec<&PathInput> = inputs.values().collect();
    let index: HashMap<&[u8], usize> = paths
        .iter()
        .enumerate()
        .map(|(i, p)| (p.as_bytes(), i))
        .collect();
    let mut parents = Vec::with_capacity(paths.len());
    let mut resolutions: Vec<Resolution> = Vec::with_capacity(paths.len());

    // Forward (parents first): validate, derive views, decide per path.
    for (&path, &input) in paths.iter().zip(&values) {
        if path.is_reserved() {
            return Err(InputError::Reserved { path: path.clone() });
        }
        let parent = match path.parent_bytes() {
            None => None,
            Some(bytes) => match index.get(bytes) {
                Some(&pi) => Some(pi),
                None => return Err(InputError::MissingParent { path: path.clone() }),
            },
        };
        parents.push(parent);
        let (parent_view, parent_project, parent_compute) = match parent {
            None => (ComputeView::Upper, None, None),
            Some(pi) => (
                resolutions[pi].view,
                values[pi].project.as_ref(),
                compute_state(resolutions[pi].view, values[pi]),
            ),
        };
        let parent_hides = match parent {
            None => false,
            Some(_) => {
                matches!(parent_view, ComputeView::Whiteout | ComputeView::Hidden)
                    || !is_dir(parent_compute)
            }
        };
        let view = match &input.compute {
            Some(Reported::Present(_)) => ComputeView::Upper,
            Some(Reported::Deleted) => ComputeView::Whiteout,
            Some(Reported::Lower) | None if parent_hides => ComputeView::Hidden,
            Some(Reported::Lower) | None => ComputeView::Lower,
        };
        if parent.is_some() && input.project.is_some() && !is_dir(parent_project) {
            return Err(InputError::ProjectNotATree { path: path.clone() });
        }
        if parent.is_some() && compute_state(view, input).is_some() && parent_hides {
            return Err(InputError::ComputeNotATree { path: path.clone() });
        }
        resolutions.push(decide(input, view));
    }

    // Forward: a compute-side path under a project-side non-directory that
    // wins loses (rule B). Such ancestors are never changed by the next pass.
    let mut under_project_file = vec![false; paths.len()];
    for i in 0..paths.len() {
        let Some(pi) = parents[i] else { continue };
        let parent = &resolutions[pi];
        under_project_file[i] = under_project_file[pi]
            || (parent.winner == Side::Project && holds_content(parent.final_state.as_ref()));
        if under_project_file[i] && resolutions[i].final_state.is_some() {
            let r = &mut resolutions[i];
            r.preserve = compute_state(r.view, values[i])
                .filter(|m| !m.is_dir())
                .cloned();
            r.decision = Decision::Conflict;
            r.winner = Side::Project;
            r.final_state = None;
        }
    }

    // Backward (children first): whatever survives needs a directory parent.
    for i in (0..paths.len()).rev() {
        if resolutions[i].final_state.is_none() {
            continue;
        }
        let Some(pi) = parents[i] else { continue };
        match resolutions[pi].final_state.as_ref() {
            Some(m) if m.is_dir() => {}
            None => {
                // A deletion of the parent, undone. The surviving child came
                // from a side that still has the parent as a directory.
                let parent = &mut resolutions[pi];
                parent.decision = Decision::KeepParent;
                parent.preserve = None;
                if is_dir(values[pi].project.as_ref()) {
                    parent.winner = Side::Project;
                    parent.final_state = values[pi].project.clone();
                } else {
                    parent.winner = Side::Compute;
                    parent.final_state = compute_state(parent.view, values[pi]).cloned();
                    // Input validation made both trees consistent, so a
                    // child that survives from the compute side has a
                    // compute-side directory parent.
                    assert!(is_dir(parent.final_state.as_ref()), "compute tree broken");
                }
            }
            Some(_) => {
                // The compute side replaced a project directory with a
                // non-directory, but the project keeps something beneath it:
                // the project's directory wins (rule C).
                let parent = &mut resolutions[pi];
                parent.preserve = compute_state(parent.view, values[pi]).cloned();
                parent.decision = Decision::Conflict;
                parent.winner = Side::Project;
                parent.final_state = values[pi].project.clone();
                // Rule B left only compute-side non-directories here, and the
                // surviving child can then only be the project's.
                assert!(is_dir(parent.final_state.as_ref()), "project tree broken");
            }
        }
    }

    Ok(Resolved {
        paths,
        inputs: values,
        resolutions,
    })
}

/// Did the compute side change the path since the base (or since what it
/// saw in the lower, without one)? By its own clock only.
fn compute_changed(view: ComputeView, input: &PathInput) -> bool {
    let compute_now = compute_state(view, input);
    match (view, &input.base, &input.seen) {
        (ComputeView::Lower, _, _) => false,
        (ComputeView::Hidden, base, _) => base.is_some(),
        (_, Some(base), _) => compute_now.is_none_or(|now| now.changed_since(&base.compute)),
        (_, None, Some(seen)) => {
            compute_now.is_none_or(|now| now.same_content(seen) != Sameness::Same)
        }
        (_, None, None) => compute_now.is_some(),
    }
}

/// Did the project change the path since the base (or since what the
/// compute side saw in the lower, without one)? By the project's clock.
fn project_changed(input: &PathInput) -> bool {
    let project_now = input.project.as_ref();
    match (&input.base, &input.seen) {
        (Some(base), _) => project_now.is_none_or(|now| now.changed_since(&base.project)),
        (None, Some(seen)) if input.seen_via_mount => {
            project_now.is_none_or(|now| now.changed_since_mount_view(seen))
        }
        (None, Some(seen)) => project_now.is_none_or(|now| now.changed_since(seen)),
        (None, None) => project_now.is_some(),
    }
}

/// The per-path table, before tree consistency.
fn decide(input: &PathInput, view: ComputeView) -> Resolution {
    let compute_now = compute_state(view, input);
    let project_now = input.project.as_ref();
    let (decision, winner) = match (compute_changed(view, input), project_changed(input)) {
        (false, false) => (Decision::Nothing, Side::Project),
        (true, false) => (Decision::Push, Side::Compute),
        (false, true) => (Decision::Pull, Side::Project),
        (true, true) => match same_state(compute_now, project_now) {
            Sameness::Same => (Decision::Same, Side::Project),
            // Unknown content is treated as different: the project wins and
            // the compute copy is preserved, so nothing is lost either way.
            Sameness::Different | Sameness::Unknown => (Decision::Conflict, Side::Project),
        },
    };
    let final_state = match winner {
        Side::Compute => compute_now.cloned(),
        Side::Project => project_now.cloned(),
    };
    let preserve = match decision {
        Decision::Conflict => compute_now.filter(|m| m.kind != Kind::Dir).cloned(),
        _ => None,
    };
    Resolution {
        decision,
        winner,
        final_state,
        preserve,
        view,
    }
}
