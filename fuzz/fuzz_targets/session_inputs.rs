//! Arbitrary input sequences into a compute session and a project session
//! wired to each other: messages delivered, dropped or forged from any
//! bytes, storage answers that say what the fuzzer likes, time that jumps.
//! Neither session may panic, and every message either queues must fit
//! one frame (big lists go as parts).
#![no_main]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use unionsync_core::{
    Change, ComputeConfig, ComputeIo, ComputeSession, Message, Meta, ProjectConfig, ProjectIo,
    ProjectSession, RelPath, Reported, Timing,
};

const NAMES: [&str; 5] = ["a", "b", "d/c", "-e", ".unionsync/x"];

struct Wire {
    to_project: Vec<Message>,
    to_compute: Vec<Message>,
}

fn path(u: &mut Unstructured) -> Result<RelPath> {
    let name = *u.choose(&NAMES)?;
    Ok(RelPath::new(name).expect("the fuzzer's names are valid"))
}

fn meta(u: &mut Unstructured) -> Result<Meta> {
    Ok(match u.int_in_range(0..=2)? {
        0 => Meta::file(0o644, u.int_in_range(0..=3)?, u.int_in_range(0..=3)?),
        1 => Meta::dir(0o755, 1),
        _ => Meta::symlink("t", 1),
    })
}

fn maybe_meta(u: &mut Unstructured) -> Result<Option<Meta>> {
    Ok(if u.arbitrary()? { Some(meta(u)?) } else { None })
}

fn change(u: &mut Unstructured) -> Result<Change> {
    let state = match u.int_in_range(0..=2)? {
        0 => Reported::Present(meta(u)?),
        1 => Reported::Deleted,
        _ => Reported::Lower,
    };
    Ok(Change {
        path: path(u)?,
        state,
        seen: maybe_meta(u)?,
        seen_via_mount: u.arbitrary()?,
    })
}

/// Takes everything the sessions queued, checking that it fits a frame.
fn collect(compute: &mut ComputeSession, project: &mut ProjectSession, wire: &mut Wire) {
    let framed = |m: Message| {
        let frame = m.encode().expect("every queued message fits one frame");
        Message::decode(&frame).expect("every frame decodes")
    };
    while let Some(m) = compute.poll_transmit() {
        wire.to_project.push(framed(m));
    }
    while let Some(m) = project.poll_transmit() {
        wire.to_compute.push(framed(m));
    }
    while compute.poll_event().is_some() {}
    while project.poll_event().is_some() {}
    let _ = compute.poll_close();
    let _ = project.poll_close();
}

fn compute_io(u: &mut Unstructured, s: &mut ComputeSession, now: Instant, io: ComputeIo) -> Result<()> {
    match io {
        ComputeIo::CollectChanges { .. } => {
            let n = u.int_in_range(0..=4)?;
            let changes = (0..n).map(|_| change(u)).collect::<Result<_>>()?;
            s.handle_changes(now, u.arbitrary()?, changes);
        }
        ComputeIo::Hash { paths } => {
            s.handle_hashes(now, paths.into_iter().map(|p| (p, None)).collect())
        }
        ComputeIo::SendFiles { files } => {
            s.handle_files_sent(now, files.into_iter().map(|(p, _)| p).collect())
        }
        ComputeIo::Apply { ops } => {
            let upper = ops
                .iter()
                .map(|op| Ok((op.path().clone(), maybe_meta(u)?)))
                .collect::<Result<_>>()?;
            s.handle_applied(now, Vec::new(), upper);
        }
        ComputeIo::Commit { .. } => s.handle_committed(now),
        ComputeIo::Remote { id, .. } => s.handle_remote_done(id, Err("no".into())),
        ComputeIo::Stage { .. } | ComputeIo::UpdateIndex(_) => {}
    }
    if u.ratio(1, 16)? {
        s.handle_io_error(now, "disk full".into());
    }
    Ok(())
}

fn project_io(u: &mut Unstructured, s: &mut ProjectSession, now: Instant, io: ProjectIo) -> Result<()> {
    match io {
        ProjectIo::LoadBase { .. } => s.handle_base(now, u.int_in_range(0..=2)?, BTreeMap::new()),
        ProjectIo::Stat { paths } => {
            let stats = paths
                .into_iter()
                .map(|p| Ok((p, maybe_meta(u)?)))
                .collect::<Result<_>>()?;
            s.handle_stats(now, stats);
        }
        ProjectIo::ListSubtrees { .. } => s.handle_subtrees(now, Vec::new()),
        ProjectIo::Hash { paths } => {
            s.handle_hashes(now, paths.into_iter().map(|p| (p, None)).collect())
        }
        ProjectIo::Apply { ops, .. } => {
            let after = ops
                .iter()
                .map(|op| Ok((op.path().clone(), maybe_meta(u)?)))
                .collect::<Result<_>>()?;
            s.handle_applied(now, Vec::new(), after);
        }
        ProjectIo::SendFiles { files } => {
            s.handle_files_sent(now, files.into_iter().map(|(p, _)| p).collect())
        }
        ProjectIo::CommitBase { .. } => s.handle_base_committed(now),
        ProjectIo::IndexSnapshot => s.handle_index_snapshot(Vec::new()),
        ProjectIo::CopyIn { id, last, .. } if last => s.handle_copied_in(id, Ok(())),
        ProjectIo::CopyIn { .. } | ProjectIo::Stage { .. } => {}
    }
    if u.ratio(1, 16)? {
        s.handle_io_error("disk full".into());
    }
    Ok(())
}

fn run(u: &mut Unstructured) -> Result<()> {
    let mut now = Instant::now();
    let token = b"secret".to_vec();
    let timeout = Duration::from_secs(30);
    let mut compute = ComputeSession::new(
        ComputeConfig {
            compute_id: 1,
            token: token.clone(),
            timing: Timing::default(),
            step_timeout: timeout,
        },
        u.int_in_range(0..=2)?,
        now,
    );
    let mut project = ProjectSession::new(
        ProjectConfig {
            token,
            step_timeout: timeout,
            lower_index: u.arbitrary()?,
        },
        now,
    );
    compute.handle_connected(now);
    let mut wire = Wire {
        to_project: Vec::new(),
        to_compute: Vec::new(),
    };
    for _ in 0..256 {
        collect(&mut compute, &mut project, &mut wire);
        if u.is_empty() {
            break;
        }
        match u.int_in_range(0..=9)? {
            0 if !wire.to_project.is_empty() => {
                let m = wire.to_project.remove(0);
                let _ = project.handle_message(now, m);
            }
            1 if !wire.to_compute.is_empty() => {
                let m = wire.to_compute.remove(0);
                let _ = compute.handle_message(now, m);
            }
            2 => {
                // A lost frame, on either way.
                let way = if u.arbitrary()? { &mut wire.to_project } else { &mut wire.to_compute };
                if !way.is_empty() {
                    let i = u.choose_index(way.len())?;
                    way.remove(i);
                }
            }
            3 => {
                let frame: Vec<u8> = u.arbitrary()?;
                if let Ok(m) = Message::decode(&frame) {
                    if u.arbitrary()? {
                        let _ = project.handle_message(now, m);
                    } else {
                        let _ = compute.handle_message(now, m);
                    }
                }
            }
            4 => {
                now += Duration::from_secs(u.int_in_range(0..=90)?);
                compute.handle_timeout(now);
                project.handle_timeout(now);
            }
            5 => {
                if let Some(io) = compute.poll_io() {
                    compute_io(u, &mut compute, now, io)?;
                }
            }
            6 => {
                if let Some(io) = project.poll_io() {
                    project_io(u, &mut project, now, io)?;
                }
            }
            7 => compute.sync_now(now),
            8 => {
                let changes = vec![(path(u)?, maybe_meta(u)?)];
                project.handle_index_delta(changes);
            }
            _ => {
                // A fresh connection: both sides start over.
                compute.handle_disconnected(now, "fuzz");
                project = ProjectSession::new(
                    ProjectConfig {
                        token: b"secret".to_vec(),
                        step_timeout: timeout,
                        lower_index: true,
                    },
                    now,
                );
                wire.to_project.clear();
                wire.to_compute.clear();
                compute.handle_connected(now);
            }
        }
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});
