//! Benchmarks `reconcile` (resolve + plan) over a realistic compute upper.
//!
//! The tree: `N` files, 100 per leaf directory, leaf directories grouped 100
//! per top-level directory (`dNNN/sNNN/fNNN.dat`, three levels). Every
//! directory is an input path too, as the input contract requires. Every
//! path has a base whose compute and project observations come from two
//! independent clocks; the compute side reports the path present in its
//! upper, the project side still holds the base's project state.
//!
//! Two variants per size:
//! - `one_changed`: one file got a new size and mtime on the compute side
//!   (one push: a single project `Write`);
//! - `all_changed`: every file changed on the compute side (pushes), every
//!   10th also on the project side (conflicts: a `PreserveConflict` on the
//!   project, a `Take` on the compute side).
//!
//! The inputs are built once per case, outside the timed loop, and the plan
//! is checked once, untimed, to hold the expected decisions and steps; the
//! plan's deallocation is not timed either (`iter_with_large_drop`).
//! Throughput counts the `N` files; the input also holds `N / 100 + N / 10^4`
//! directories (rounded up).
//!
//! Run: `cargo bench -p unionsync-benches --bench reconcile`.

use std::time::Duration;

use criterion::{
    black_box, criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput,
};
use unionsync_core::{
    reconcile, BaseEntry, Decision, Inputs, Meta, PathInput, Plan, ProjectOp, RelPath, Reported,
};

/// Files per leaf directory, and leaf directories per top-level directory.
const FANOUT: usize = 100;
/// Every `CONFLICT_EVERY`th file also changed on the project side.
const CONFLICT_EVERY: usize = 10;

/// The compute machine's clock (ns) ...
const COMPUTE_EPOCH: i64 = 1_700_000_000_000_000_000;
/// ... and the project machine's, unrelated to it.
const PROJECT_EPOCH: i64 = 1_650_000_000_123_456_789;
/// How much later the changes happened than the base observations.
const LATER: i64 = 3_600_000_000_000;

#[derive(Clone, Copy, Debug)]
enum Variant {
    OneChanged,
    AllChanged,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::OneChanged => "one_changed",
            Variant::AllChanged => "all_changed",
        }
    }
}

fn file_meta(size: u64, mtime_ns: i64) -> Meta {
    Meta::file(0o644, size, mtime_ns).with_ctime(mtime_ns)
}

fn dir_meta(mtime_ns: i64) -> Meta {
    Meta::dir(0o755, mtime_ns).with_ctime(mtime_ns)
}

/// An unchanged directory on both sides.
fn dir_input(i: i64) -> PathInput {
    let compute = dir_meta(COMPUTE_EPOCH + i * 1_000);
    let project = dir_meta(PROJECT_EPOCH + i * 7_000);
    PathInput {
        base: Some(BaseEntry {
            compute: compute.clone(),
            project: project.clone(),
        }),
        seen: None,
        compute: Some(Reported::Present(compute)),
        project: Some(project),
    }
}

/// File number `i`, changed as `variant` says.
fn file_input(i: usize, n: usize, variant: Variant) -> PathInput {
    let size = 1_000 + (i as u64 % 50_000);
    let base_compute = file_meta(size, COMPUTE_EPOCH + i as i64 * 1_000);
    let base_project = file_meta(size, PROJECT_EPOCH + i as i64 * 7_000);
    let compute_changed = match variant {
        Variant::OneChanged => i == n / 2,
        Variant::AllChanged => true,
    };
    let project_changed =
        matches!(variant, Variant::AllChanged) && i.is_multiple_of(CONFLICT_EVERY);
    let compute = if compute_changed {
        file_meta(size + 17, base_compute.mtime_ns + LATER)
    } else {
        base_compute.clone()
    };
    let project = if project_changed {
        file_meta(size + 42, base_project.mtime_ns + LATER)
    } else {
        base_project.clone()
    };
    PathInput {
        base: Some(BaseEntry {
            compute: base_compute,
            project: base_project,
        }),
        seen: None,
        compute: Some(Reported::Present(compute)),
        project: Some(project),
    }
}

fn path(s: String) -> RelPath {
    RelPath::new(s).expect("valid bench path")
}

/// `n` files (a multiple of `FANOUT`) and all their directories.
fn build(n: usize, variant: Variant) -> Inputs {
    assert_eq!(n % FANOUT, 0, "n must be a multiple of {FANOUT}");
    let leaves = n / FANOUT;
    let tops = leaves.div_ceil(FANOUT);
    let mut inputs = Inputs::new();
    let mut file = 0usize;
    let mut dir = 0i64;
    for t in 0..tops {
        inputs.insert(path(format!("d{t:03}")), dir_input(dir));
        dir += 1;
        for s in 0..FANOUT.min(leaves - t * FANOUT) {
            inputs.insert(path(format!("d{t:03}/s{s:03}")), dir_input(dir));
            dir += 1;
            for f in 0..FANOUT {
                inputs.insert(
                    path(format!("d{t:03}/s{s:03}/f{f:03}.dat")),
                    file_input(file, n, variant),
                );
                file += 1;
            }
        }
    }
    assert_eq!(file, n);
    assert_eq!(inputs.len(), n + leaves + tops);
    inputs
}

/// Checks once, untimed, that the plan does the work the variant implies.
fn check(plan: &Plan, inputs: &Inputs, n: usize, variant: Variant) {
    assert_eq!(plan.resolutions.len(), inputs.len());
    let count = |d: Decision| {
        plan.resolutions
            .values()
            .filter(|r| r.decision == d)
            .count()
    };
    let writes = plan
        .project_ops
        .iter()
        .filter(|op| matches!(op, ProjectOp::Write { .. }))
        .count();
    let preserves = plan
        .project_ops
        .iter()
        .filter(|op| matches!(op, ProjectOp::PreserveConflict { .. }))
        .count();
    match variant {
        Variant::OneChanged => {
            assert_eq!(count(Decision::Push), 1);
            assert_eq!(count(Decision::Nothing), inputs.len() - 1);
            assert_eq!(plan.project_ops.len(), 1);
            assert_eq!(writes, 1);
            assert_eq!(plan.compute_ops.len(), 0);
        }
        Variant::AllChanged => {
            let conflicts = n.div_ceil(CONFLICT_EVERY);
            let pushes = n - conflicts;
            assert_eq!(count(Decision::Push), pushes);
            assert_eq!(count(Decision::Conflict), conflicts);
            assert_eq!(count(Decision::Nothing), inputs.len() - n);
            assert_eq!(writes, pushes);
            assert_eq!(preserves, conflicts);
            assert_eq!(plan.project_ops.len(), n);
            assert_eq!(plan.compute_ops.len(), conflicts);
        }
    }
}

fn bench_reconcile(c: &mut Criterion) {
    let mut group = c.benchmark_group("reconcile");
    for &n in &[10_000usize, 100_000, 1_000_000] {
        // Short runs so the whole bench takes about a minute on 2 cores.
        // Flat sampling from 100k on: the same iteration count per sample,
        // so the 1M cases (over a second each) run exactly 10 iterations.
        // Criterion then warns that 10 samples do not fit in 5 s; that is
        // expected and harmless.
        group.sample_size(if n >= 100_000 { 10 } else { 20 });
        group.sampling_mode(if n >= 100_000 {
            SamplingMode::Flat
        } else {
            SamplingMode::Auto
        });
        group.warm_up_time(Duration::from_secs(1));
        group.measurement_time(Duration::from_secs(if n >= 100_000 { 5 } else { 3 }));
        group.throughput(Throughput::Elements(n as u64));
        for variant in [Variant::OneChanged, Variant::AllChanged] {
            // Built lazily, on the first call: criterion calls this closure
            // only for benchmarks its filter selects, so a filtered run never
            // builds (or holds) the trees of other cases. The inputs are
            // dropped with the closure, once the case is done.
            let mut cached: Option<Inputs> = None;
            group.bench_function(BenchmarkId::new(variant.name(), n), move |b| {
                let inputs = cached.get_or_insert_with(|| {
                    let inputs = build(n, variant);
                    let plan = reconcile(&inputs).expect("valid bench inputs");
                    check(&plan, &inputs, n, variant);
                    inputs
                });
                b.iter_with_large_drop(|| reconcile(black_box(&*inputs)).expect("valid"))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench_reconcile);
criterion_main!(benches);
