//! `unionsync demo --plan`: one sync of a scripted day, decided by the core.

use std::io::Write;

use anyhow::Context;
use unionsync_core::{
    reconcile, BaseEntry, ContentHash, Inputs, Meta, PathInput, RelPath, Reported,
};

/// Both sides' observations of a file both agreed on at the last sync; the
/// two clocks differ, as they do between machines.
fn agreed(size: u64) -> BaseEntry {
    BaseEntry {
        compute: Meta::file(0o644, size, 5_000).with_ctime(5_000),
        project: Meta::file(0o644, size, 9_000).with_ctime(9_000),
    }
}

/// The same entry with the content hash both sides computed.
fn hashed(entry: BaseEntry) -> BaseEntry {
    let hash = ContentHash([3; 32]);
    BaseEntry {
        compute: entry.compute.with_hash(hash),
        project: entry.project.with_hash(hash),
    }
}

fn path(bytes: &[u8]) -> anyhow::Result<RelPath> {
    RelPath::new(bytes).with_context(|| format!("demo path {:?}", bytes.escape_ascii().to_string()))
}

/// The scripted edits, one entry per path (ancestors included, as the
/// reconcile requires).
fn scripted_inputs() -> anyhow::Result<Inputs> {
    let dir = Meta::dir(0o755, 1);
    let dir_entry = BaseEntry {
        compute: dir.clone(),
        project: dir.clone(),
    };
    let entries = vec![
        // Edited on the compute server only: pushed.
        (
            &b"train.py"[..],
            PathInput {
                base: Some(agreed(100)),
                compute: Some(Reported::Present(
                    Meta::file(0o644, 120, 6_000).with_ctime(6_000),
                )),
                project: Some(agreed(100).project),
                ..PathInput::default()
            },
        ),
        // Edited on both sides differently: the project wins, the compute
        // version goes to the conflicts area.
        (
            b"notes.md",
            PathInput {
                base: Some(agreed(10)),
                compute: Some(Reported::Present(
                    Meta::file(0o644, 11, 6_100).with_ctime(6_100),
                )),
                project: Some(Meta::file(0o644, 12, 9_500).with_ctime(9_500)),
                ..PathInput::default()
            },
        ),
        // Edited identically on both sides: nothing to do.
        (
            b"same.txt",
            PathInput {
                base: Some(agreed(3)),
                compute: Some(Reported::Present(
                    Meta::file(0o644, 4, 6_200).with_hash(ContentHash([7; 32])),
                )),
                project: Some(Meta::file(0o644, 4, 9_600).with_hash(ContentHash([7; 32]))),
                ..PathInput::default()
            },
        ),
        // chmod +x on the compute server: a mode change, no data shipped
        // (the unchanged hash shows the content is the same).
        (
            b"run.sh",
            PathInput {
                base: Some(hashed(agreed(30))),
                compute: Some(Reported::Present(
                    Meta::file(0o755, 30, 5_000)
                        .with_ctime(6_300)
                        .with_hash(ContentHash([3; 32])),
                )),
                project: Some(hashed(agreed(30)).project),
                ..PathInput::default()
            },
        ),
        // The compute server removed `data/` while the project added a file
        // to it: the new file and its directory survive, the rest goes.
        (
            b"data",
            PathInput {
                base: Some(dir_entry.clone()),
                compute: Some(Reported::Deleted),
                project: Some(dir.clone()),
                ..PathInput::default()
            },
        ),
        (
            b"data/old.csv",
            PathInput {
                base: Some(agreed(50)),
                compute: Some(Reported::Deleted),
                project: Some(agreed(50).project),
                ..PathInput::default()
            },
        ),
        (
            b"data/new.csv",
            PathInput {
                project: Some(Meta::file(0o644, 70, 9_700).with_ctime(9_700)),
                ..PathInput::default()
            },
        ),
        // A filename that breaks naive tools, created on the compute server.
        (
            b"--force\nme",
            PathInput {
                compute: Some(Reported::Present(Meta::file(0o600, 1, 6_400))),
                ..PathInput::default()
            },
        ),
    ];
    entries
        .into_iter()
        .map(|(p, input)| Ok((path(p)?, input)))
        .collect()
}

pub fn run(out: &mut impl Write) -> anyhow::Result<()> {
    let inputs = scripted_inputs()?;
    let plan = reconcile(&inputs).context("the scripted demo input is inconsistent")?;
    writeln!(
        out,
        "unionsync demo: one sync of a scripted day of edits on both sides\n"
    )?;
    write!(out, "{plan}")?;
    let conflicts: Vec<String> = plan.conflicts().map(|p| p.to_string()).collect();
    writeln!(
        out,
        "\n{} path(s) decided, {} project step(s), {} compute step(s), conflicts kept: {}",
        plan.resolutions.len(),
        plan.project_ops.len(),
        plan.compute_ops.len(),
        if conflicts.is_empty() {
            "none".to_string()
        } else {
            conflicts.join(", ")
        }
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use unionsync_core::{Decision, ProjectOp};

    use super::*;

    #[test]
    fn demo_plan_keeps_the_new_project_file_and_its_directory() {
        let plan = reconcile(&scripted_inputs().unwrap()).unwrap();
        let decision = |p: &[u8]| plan.resolutions[&RelPath::new(p).unwrap()].decision;
        assert_eq!(decision(b"data"), Decision::KeepParent);
        assert_eq!(decision(b"data/new.csv"), Decision::Pull);
        assert_eq!(decision(b"notes.md"), Decision::Conflict);
        assert!(plan
            .project_ops
            .iter()
            .any(|op| matches!(op, ProjectOp::SetMode { mode: 0o755, .. })));
    }

    #[test]
    fn demo_prints_every_decided_path() {
        let mut out = Vec::new();
        run(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("notes.md: conflict"), "{text}");
        assert!(text.contains("--force\\nme: push"), "{text}");
    }
}
