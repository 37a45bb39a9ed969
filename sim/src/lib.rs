//! # unionsync-sim
//!
//! A deterministic simulation of one project server and several compute
//! servers, running the shell's own agents (`unionsync::compute_agent`,
//! `unionsync::project_server`) over turmoil's simulated network and the
//! in-memory stores of [`store`].
//!
//! ```text
//!  seed ─► turmoil Sim ─┬─ host "project"   : project_server::serve(SimProjectStore)
//!                       ├─ host "compute-N" : compute_agent(SimComputeStore N)
//!                       └─ client "driver"  : random user mutations on every side,
//!                                             then quiescence and the invariants
//!  outer step loop: faults (latency, partitions, holds, crashes + restarts)
//! ```
//!
//! After the mutation phase every fault heals, the user clears any paused
//! error, and syncs run until every compute server completed a sync that
//! changed nothing after the last sync that changed something. Then:
//! 1. every compute union equals the project home;
//! 2. no conflict let the compute side replace the project's state;
//! 3. nothing acknowledged is lost: every compute write still unsynced when
//!    mutations stopped is in the project or in that server's conflicts, and
//!    every project file no compute server touched is unchanged;
//! 4. nothing reserved or outside the trees was written;
//! 5. the final syncs moved nothing;
//! 6. the trace (mutations, faults, sync outcomes) hashes the same for the
//!    same seed.

pub mod store;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::sync::{mpsc, watch};
use unionsync::compute_agent::{run_compute_agent, AgentCommand, ComputeAgentConfig, Connector};
use unionsync::project_server::{serve, Listener};
use unionsync_core::model::{
    check_conflicts_where_project_changed, check_losses_caused_by_users, check_union_matches,
    ComputeUnion, Content, Mutation, Node, ProjectHome,
};
use unionsync_core::{
    ComputeConfig, ComputeEvent, ComputeSession, ProjectConfig, ProjectEvent, RelPath, Sameness,
    Timing,
};

use crate::store::{Disks, SharedDisks, SimComputeStore, SimProjectStore};

const PORT: u16 = 7000;
const TOKEN: &[u8] = b"sim-token";

#[derive(Clone, Debug)]
pub struct SimOptions {
    pub computes: u64,
    /// How long users mutate files (simulated time).
    pub mutate_for: Duration,
    pub faults: bool,
    /// Keep the readable trace (it is always hashed).
    pub trace: bool,
    /// Large-tree mode: the project starts with this many more files, and
    /// compute server 1 with as many new symlinks whose long targets make
    /// every list of its first sync far bigger than one frame.
    pub large: usize,
}

impl Default for SimOptions {
    fn default() -> SimOptions {
        SimOptions {
            computes: 2,
            mutate_for: Duration::from_secs(30),
            faults: true,
            trace: false,
            large: 0,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Outcome {
    pub seed: u64,
    pub failure: Option<String>,
    pub trace_hash: u64,
    pub trace: Vec<String>,
    pub syncs: u64,
    pub sim_time: Duration,
}

/// What the hosts and the driver record, in simulated-time order.
#[derive(Default)]
struct Log {
    keep: bool,
    lines: Vec<String>,
    hasher: DefaultHasher,
    /// Completed syncs as the project saw them: (time, compute id, moved).
    syncs: Vec<(Duration, u64, bool)>,
    crashed: BTreeSet<u64>,
    /// Per compute id: the running agent's command channel.
    commands: BTreeMap<u64, mpsc::UnboundedSender<AgentCommand>>,
    failure: Option<String>,
}

type SharedLog = Rc<RefCell<Log>>;

impl Log {
    /// Records a trace line stamped with simulated time.
    fn record(&mut self, now: Duration, line: String) {
        let line = format!("{:>9.3}s {line}", now.as_secs_f64());
        line.hash(&mut self.hasher);
        if self.keep {
            self.lines.push(line);
        }
    }
}

fn compute_host(id: u64) -> String {
    format!("compute-{id}")
}

struct SimConnector;

impl Connector for SimConnector {
    type Stream = turmoil::net::TcpStream;
    async fn connect(&mut self) -> std::io::Result<Self::Stream> {
        turmoil::net::TcpStream::connect(("project", PORT)).await
    }
}

struct SimListener(turmoil::net::TcpListener);

impl Listener for SimListener {
    type Stream = turmoil::net::TcpStream;
    type Handshake = std::future::Ready<std::io::Result<Self::Stream>>;
    async fn accept(&mut self) -> std::io::Result<(Self::Handshake, SocketAddr)> {
        let (stream, peer) = self.0.accept().await?;
        Ok((std::future::ready(Ok(stream)), peer))
    }
}

/// A fault the outer loop applies at `at` and heals at `until`.
#[derive(Clone, Debug)]
enum Fault {
    Partition(u64),
    Hold(u64),
    CrashCompute(u64),
    CrashProject,
}

fn fault_plan(rng: &mut SmallRng, options: &SimOptions) -> Vec<(Duration, Duration, Fault)> {
    if !options.faults {
        return Vec::new();
    }
    let mut faults = Vec::new();
    let mut t = Duration::from_millis(rng.random_range(500..4000));
    while t < options.mutate_for {
        let id = rng.random_range(1..=options.computes);
        let fault = match rng.random_range(0..10) {
            0..=3 => Fault::Partition(id),
            4..=5 => Fault::Hold(id),
            6..=8 => Fault::CrashCompute(id),
            _ => Fault::CrashProject,
        };
        let length = Duration::from_millis(rng.random_range(200..6000));
        faults.push((t, (t + length).min(options.mutate_for), fault));
        t += length + Duration::from_millis(rng.random_range(500..6000));
    }
    faults
}

fn random_path(rng: &mut SmallRng) -> RelPath {
    const NAMES: [&str; 4] = ["a", "b", "-c", "d e"];
    let depth = rng.random_range(1..=3);
    let names: Vec<&str> = (0..depth)
        .map(|_| NAMES[rng.random_range(0..NAMES.len())])
        .collect();
    RelPath::new(names.join("/")).expect("generated path is valid")
}

fn random_mutation(rng: &mut SmallRng) -> Mutation {
    let path = random_path(rng);
    match rng.random_range(0..12) {
        0..=4 => {
            // Mostly tiny files; now and then one spanning several chunks.
            let len = if rng.random_range(0..50) == 0 {
                rng.random_range(300_000..600_000)
            } else {
                rng.random_range(0..4)
            };
            let byte = rng.random_range(b'x'..=b'z');
            Mutation::Write(path, vec![byte; len])
        }
        5..=6 => Mutation::Mkdir(path),
        7..=8 => Mutation::Remove(path),
        9 => Mutation::Chmod(path, [0o644, 0o600, 0o755][rng.random_range(0..3)]),
        10 => Mutation::Symlink(
            path,
            [&b"a"[..], b"../b", b"t"][rng.random_range(0..3)].to_vec(),
        ),
        _ => Mutation::Rename(path, random_path(rng)),
    }
}

/// A mutation for the trace, with file contents as their length.
/// Now and then a compute-side change fails at its copy-up (the lower
/// mount down, the upper full): journaled, nothing changed. Drawn from its
/// own generator, so the rest of a seed's trace stays as it was.
fn maybe_failed_copy_up(failures: &mut SmallRng, mutation: Mutation) -> Mutation {
    match mutation {
        Mutation::Write(path, _) | Mutation::Chmod(path, _) | Mutation::Rename(path, _)
            if failures.random_ratio(1, 8) =>
        {
            Mutation::FailedCopyUp(path)
        }
        other => other,
    }
}

fn describe(mutation: &Mutation) -> String {
    match mutation {
        Mutation::Write(path, data) => format!("write {path} ({} bytes)", data.len()),
        other => format!("{other:?}"),
    }
}

/// Runs one seed to completion and checks the invariants.
pub fn run_seed(seed: u64, options: &SimOptions) -> Outcome {
    let mut rng = SmallRng::seed_from_u64(seed);
    let hashes = rng.random_bool(0.5);
    let disks: SharedDisks = Rc::new(RefCell::new(Disks {
        project: ProjectHome::new(hashes),
        bases: BTreeMap::new(),
        computes: (1..=options.computes)
            .map(|id| (id, (ComputeUnion::new(hashes), 0)))
            .collect(),
        violations: Vec::new(),
        steps: Vec::new(),
        delivered: Vec::new(),
    }));
    let log: SharedLog = Rc::new(RefCell::new(Log {
        keep: options.trace,
        ..Log::default()
    }));
    // The project starts with some files.
    for _ in 0..rng.random_range(0..12) {
        let m = random_mutation(&mut rng);
        disks.borrow_mut().project.mutate(&m);
    }
    grow_large_tree(&mut disks.borrow_mut(), options.large);

    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .tick_duration(Duration::from_millis(10))
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(Duration::from_millis(rng.random_range(2..80)))
        .simulation_duration(options.mutate_for + Duration::from_secs(400))
        .build();

    {
        let (disks, log) = (disks.clone(), log.clone());
        sim.host("project", move || project_host(disks.clone(), log.clone()));
    }
    for id in 1..=options.computes {
        let (disks, log) = (disks.clone(), log.clone());
        sim.host(compute_host(id).as_str(), move || {
            compute_host_software(id, disks.clone(), log.clone())
        });
    }
    let driver_rng = SmallRng::seed_from_u64(rng.random());
    sim.client(
        "driver",
        driver(
            driver_rng,
            // Its own stream: failed copy-ups leave the other draws alone.
            SmallRng::seed_from_u64(seed ^ 0x636f_7079_7570),
            options.clone(),
            disks.clone(),
            log.clone(),
        ),
    );

    let faults = fault_plan(&mut rng, options);
    let mut active: Vec<bool> = vec![false; faults.len()];
    let result = loop {
        let elapsed = sim.elapsed();
        for (i, (at, until, fault)) in faults.iter().enumerate() {
            if !active[i] && elapsed >= *at && elapsed < *until {
                active[i] = true;
                start_fault(&mut sim, fault, &log);
            } else if active[i] && elapsed >= *until {
                active[i] = false;
                end_fault(&mut sim, fault, &log);
            }
        }
        match sim.step() {
            Ok(true) => break Ok(()),
            Ok(false) => {}
            Err(e) => break Err(format!("simulation error: {e}")),
        }
    };

    let mut log = log.take();
    if options.trace {
        log.lines.push("-- steps applied, in order:".into());
        log.lines
            .extend(std::mem::take(&mut disks.borrow_mut().steps));
        log.lines.extend(dump(&disks.borrow()));
    }
    let failure = result.err().or(log.failure.take());
    let violations = std::mem::take(&mut disks.borrow_mut().violations);
    let failure = failure.or_else(|| violations.first().cloned());
    Outcome {
        seed,
        failure,
        trace_hash: log.hasher.finish(),
        trace: log.lines,
        syncs: log.syncs.len() as u64,
        sim_time: sim.elapsed(),
    }
}

/// The trees of large-tree mode (see [`SimOptions::large`]).
fn grow_large_tree(disks: &mut Disks, large: usize) {
    let path = |s: String| RelPath::new(s).expect("valid generated path");
    let target = "t/".repeat(2000).into_bytes();
    for i in 0..large {
        let file = path(format!("large/project/{:03}/f{i:06}", i / 1000));
        disks
            .project
            .mutate(&Mutation::Write(file, vec![b'p'; i % 7]));
    }
    let Disks {
        project, computes, ..
    } = disks;
    if let Some((union, _)) = computes.get_mut(&1) {
        for i in 0..large {
            let link = path(format!("large/compute/{:03}/l{i:06}", i / 1000));
            union.mutate(&project.tree, &Mutation::Symlink(link, target.clone()));
        }
    }
}

fn start_fault(sim: &mut turmoil::Sim<'_>, fault: &Fault, log: &SharedLog) {
    log.borrow_mut()
        .record(sim.elapsed(), format!("fault {fault:?}"));
    match fault {
        Fault::Partition(id) => sim.partition("project", compute_host(*id).as_str()),
        Fault::Hold(id) => sim.hold("project", compute_host(*id).as_str()),
        Fault::CrashCompute(id) => {
            log.borrow_mut().crashed.insert(*id);
            sim.crash(compute_host(*id).as_str());
        }
        Fault::CrashProject => sim.crash("project"),
    }
}

fn end_fault(sim: &mut turmoil::Sim<'_>, fault: &Fault, log: &SharedLog) {
    log.borrow_mut()
        .record(sim.elapsed(), format!("heal {fault:?}"));
    match fault {
        Fault::Partition(id) => sim.repair("project", compute_host(*id).as_str()),
        Fault::Hold(id) => sim.release("project", compute_host(*id).as_str()),
        Fault::CrashCompute(id) => {
            log.borrow_mut().crashed.remove(id);
            sim.bounce(compute_host(*id).as_str());
        }
        Fault::CrashProject => sim.bounce("project"),
    }
}

async fn project_host(disks: SharedDisks, log: SharedLog) -> turmoil::Result {
    let listener = turmoil::net::TcpListener::bind(("0.0.0.0", PORT)).await?;
    let (events, mut rx) = mpsc::unbounded_channel();
    let events_log = log.clone();
    tokio::task::spawn_local(async move {
        while let Some(event) = rx.recv().await {
            if let ProjectEvent::SyncDone {
                compute_id,
                pushed,
                pulled,
                ref conflicts,
                ..
            } = event
            {
                let mut log = events_log.borrow_mut();
                log.syncs
                    .push((turmoil::elapsed(), compute_id, pushed + pulled > 0));
                log.record(
                    turmoil::elapsed(),
                    format!(
                        "sync compute-{compute_id}: pushed {pushed} pulled {pulled} conflicts {}",
                        conflicts.len()
                    ),
                );
            }
        }
    });
    let config = ProjectConfig {
        token: TOKEN.to_vec(),
        step_timeout: Duration::from_secs(10),
        lower_index: false,
    };
    serve(
        SimListener(listener),
        SimProjectStore::new(disks),
        config,
        Some(events),
        None,
    )
    .await?;
    Ok(())
}

async fn compute_host_software(id: u64, disks: SharedDisks, log: SharedLog) -> turmoil::Result {
    let (commands, command_rx) = mpsc::unbounded_channel();
    log.borrow_mut().commands.insert(id, commands);
    let (events, mut rx) = mpsc::unbounded_channel();
    let events_log = log.clone();
    tokio::task::spawn_local(async move {
        while let Some(event) = rx.recv().await {
            if let ComputeEvent::SyncFailed { error } = event {
                events_log.borrow_mut().record(
                    turmoil::elapsed(),
                    format!("compute-{id} sync failed: {error}"),
                );
            }
        }
    });
    let session = ComputeConfig {
        compute_id: id,
        token: TOKEN.to_vec(),
        timing: Timing {
            min: Duration::from_secs(1),
            max: Duration::from_secs(3),
            pause_after: 3,
        },
        step_timeout: Duration::from_secs(10),
    };
    let initial = ComputeSession::new(session.clone(), 0, tokio::time::Instant::now().into_std())
        .status(tokio::time::Instant::now().into_std());
    let (status, _status_rx) = watch::channel(initial);
    let config = ComputeAgentConfig {
        session,
        url: format!("ws://project:{PORT}/"),
        reconnect_min: Duration::from_millis(200),
        reconnect_max: Duration::from_secs(2),
    };
    run_compute_agent(
        config,
        SimConnector,
        SimComputeStore::new(disks, id),
        command_rx,
        status,
        Some(events),
    )
    .await?;
    Ok(())
}

/// Dirty compute content and project files when mutations stop.
struct Snapshot {
    compute_writes: Vec<(u64, RelPath, Node)>,
    touched: BTreeSet<RelPath>,
    project_files: Vec<(RelPath, Node)>,
}

fn snapshot(disks: &Disks) -> Snapshot {
    let mut compute_writes = Vec::new();
    let mut touched = BTreeSet::new();
    for (id, (union, _)) in &disks.computes {
        for (path, entry) in &union.journal {
            touched.insert(path.clone());
            if entry.by_sync {
                continue; // a copy a sync put there, not a user's write
            }
            // Content the project already received (the sync that carried
            // it may not have committed yet): other users saw it and may
            // rightly have changed it since.
            let delivered = |node: &Node| {
                disks
                    .project
                    .tree
                    .get(path)
                    .is_some_and(|n| n.same_as(node))
                    || disks
                        .delivered
                        .iter()
                        .any(|(c, p, n)| c == id && p == path && n.same_as(node))
            };
            // Content equal to what this side last agreed on or saw is no
            // new write: the other sides decided about exactly these bytes.
            let known = |node: &Node| {
                let meta = node.meta(true);
                let base = disks.bases.get(id).and_then(|(_, base)| base.get(path));
                let seen = union.journal.get(path).and_then(|e| e.seen.as_ref());
                base.map(|b| &b.compute)
                    .into_iter()
                    .chain(seen)
                    .any(|m| meta.same_content(m) == Sameness::Same)
            };
            if let Some(node) = union
                .upper
                .get(path)
                .filter(|n| n.content != Content::Dir && !delivered(n) && !known(n))
            {
                compute_writes.push((*id, path.clone(), node.clone()));
            }
        }
    }
    let project_files = disks
        .project
        .tree
        .iter()
        .filter(|(_, n)| n.content != Content::Dir)
        .map(|(p, n)| (p.clone(), n.clone()))
        .collect();
    Snapshot {
        compute_writes,
        touched,
        project_files,
    }
}

async fn driver(
    mut rng: SmallRng,
    mut failures: SmallRng,
    options: SimOptions,
    disks: SharedDisks,
    log: SharedLog,
) -> turmoil::Result {
    while turmoil::elapsed() < options.mutate_for {
        tokio::time::sleep(Duration::from_millis(rng.random_range(20..800))).await;
        if turmoil::elapsed() >= options.mutate_for {
            break;
        }
        let actor = rng.random_range(0..=options.computes);
        let mut mutation = random_mutation(&mut rng);
        let mut d = disks.borrow_mut();
        if actor == 0 {
            d.project.mutate(&mutation);
        } else if !log.borrow().crashed.contains(&actor) {
            let Disks {
                project, computes, ..
            } = &mut *d;
            let (union, _) = computes.get_mut(&actor).expect("compute disk");
            mutation = maybe_failed_copy_up(&mut failures, mutation);
            union.mutate(&project.tree, &mutation);
        } else {
            continue;
        }
        log.borrow_mut().record(
            turmoil::elapsed(),
            format!("mutate {actor} {}", describe(&mutation)),
        );
    }
    // Users stop; every fault heals at `mutate_for`.
    let snap = snapshot(&disks.borrow());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let healed = turmoil::elapsed();
    for commands in log.borrow().commands.values() {
        // The user clears any paused error and asks for a sync.
        let _ = commands.send(AgentCommand::ClearError);
    }
    let deadline = healed + Duration::from_secs(300);
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if quiescent(&log.borrow(), healed, options.computes) {
            break;
        }
        if turmoil::elapsed() > deadline {
            log.borrow_mut().failure = Some("no quiescence within 300 s after healing".into());
            return Ok(());
        }
    }
    let failure = check_invariants(&disks.borrow(), &snap).err();
    log.borrow_mut().failure = failure;
    Ok(())
}

/// Every compute server completed two syncs that moved nothing, after the
/// last sync of any server that moved something and after healing.
fn quiescent(log: &Log, healed: Duration, computes: u64) -> bool {
    let last_move = log
        .syncs
        .iter()
        .filter(|(_, _, moved)| *moved)
        .map(|(t, _, _)| *t)
        .max()
        .unwrap_or_default()
        .max(healed);
    // Two: the second began after the first ended, so after `last_move`
    // (a sync that ends after it may have been planned before it).
    (1..=computes).all(|id| {
        log.syncs
            .iter()
            .filter(|(t, c, moved)| *c == id && !moved && *t > last_move)
            .count()
            >= 2
    })
}

fn check_invariants(disks: &Disks, snap: &Snapshot) -> Result<(), String> {
    for (id, (union, _)) in &disks.computes {
        check_union_matches(union, &disks.project)
            .map_err(|e| format!("compute-{id} diverged: {e}"))?;
        if let Some(path) = union.upper.keys().find(|p| p.is_reserved()) {
            return Err(format!("compute-{id}: reserved path {path} in the upper"));
        }
    }
    if let Some(path) = disks.project.tree.keys().find(|p| p.is_reserved()) {
        return Err(format!("reserved path {path} in the project tree"));
    }
    check_losses_caused_by_users(&disks.project, disks.computes.values().map(|(u, _)| u))?;
    check_conflicts_where_project_changed(&disks.project)?;
    for (id, path, node) in &snap.compute_writes {
        if !disks.project.keeps(Some(*id), path, node) {
            return Err(format!("compute-{id} wrote {path} ({node:?}): lost"));
        }
    }
    for (path, node) in &snap.project_files {
        let touched = snap
            .touched
            .iter()
            .any(|t| t == path || t.is_ancestor_of(path) || path.is_ancestor_of(t));
        let kept = disks
            .project
            .tree
            .get(path)
            .is_some_and(|n| n.same_as(node));
        if !touched && !kept {
            return Err(format!(
                "project file {path} changed though no compute server touched it"
            ));
        }
    }
    Ok(())
}

/// The final state of every disk, for `--trace`.
fn dump(disks: &Disks) -> Vec<String> {
    let mut lines = vec!["-- project home:".to_string()];
    for (path, node) in &disks.project.tree {
        lines.push(format!("  {path}: {}", node.meta(disks.project.hashes)));
    }
    for (id, (union, epoch)) in &disks.computes {
        lines.push(format!("-- compute-{id} (epoch {epoch}):"));
        for (path, node) in &union.upper {
            lines.push(format!("  upper {path}: {}", node.meta(union.hashes)));
        }
        for path in &union.whiteouts {
            lines.push(format!("  whiteout {path}"));
        }
        for (path, entry) in &union.journal {
            lines.push(format!("  journal {path}: {entry:?}"));
        }
        if let Some((epoch, base)) = disks.bases.get(id) {
            lines.push(format!("  project-side base epoch {epoch}:"));
            for (path, entry) in base {
                lines.push(format!(
                    "    base {path}: compute {} / project {}",
                    entry.compute, entry.project
                ));
            }
        }
    }
    lines
}
