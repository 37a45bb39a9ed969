//! The sync invariants, as properties over random trees and random mutation
//! sequences on both sides (see `unionsync_core::model`).
//!
//! Each scenario: the project starts with a random tree; then a few rounds of
//! random mutations on both sides (interleaved), each round ending in a sync.
//! Paths come from a tiny namespace so the two sides collide often.

use std::collections::BTreeSet;

use proptest::prelude::*;
use unionsync_core::model::{
    check_confinement, check_conflicts_where_project_changed, check_convergence, check_idempotent,
    check_losses_caused_by_users, check_nothing_lost, check_project_wins, Actor, Mutation,
    SyncRecord, World,
};
use unionsync_core::RelPath;

#[derive(Clone, Debug)]
struct Scenario {
    hashes: bool,
    initial: Vec<Mutation>,
    rounds: Vec<Vec<(Actor, Mutation)>>,
}

fn path() -> impl Strategy<Value = RelPath> {
    let name = prop::sample::select(vec!["a", "b", "-c"]);
    prop::collection::vec(name, 1..=3)
        .prop_map(|names| RelPath::new(names.join("/")).expect("valid test path"))
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let content = prop::collection::vec(prop::sample::select(vec![b'x', b'y']), 0..3);
    let mode = prop::sample::select(vec![0o644, 0o600, 0o755]);
    let target = prop::sample::select(vec![&b"a"[..], b"../b", b"t"]);
    prop_oneof![
        4 => (path(), content).prop_map(|(p, c)| Mutation::Write(p, c)),
        2 => path().prop_map(Mutation::Mkdir),
        2 => path().prop_map(Mutation::Remove),
        1 => (path(), mode).prop_map(|(p, m)| Mutation::Chmod(p, m)),
        1 => (path(), target).prop_map(|(p, t)| Mutation::Symlink(p, t.to_vec())),
        1 => (path(), path()).prop_map(|(a, b)| Mutation::Rename(a, b)),
        1 => path().prop_map(Mutation::FailedCopyUp),
    ]
}

fn scenario() -> impl Strategy<Value = Scenario> {
    let actor = prop_oneof![Just(Actor::Compute), Just(Actor::Project)];
    let round = prop::collection::vec((actor, mutation()), 0..12);
    (
        any::<bool>(),
        prop::collection::vec(mutation(), 0..10),
        prop::collection::vec(round, 1..4),
    )
        .prop_map(|(hashes, initial, rounds)| Scenario {
            hashes,
            initial,
            rounds,
        })
}

/// Runs the scenario, checking `property` after every sync.
fn check_every_sync(
    scenario: &Scenario,
    property: impl Fn(&SyncRecord, &World, &BTreeSet<RelPath>) -> Result<(), String>,
) -> Result<(), TestCaseError> {
    let mut world = World::new(scenario.hashes);
    for m in &scenario.initial {
        world.mutate(Actor::Project, m);
    }
    for round in &scenario.rounds {
        for (actor, m) in round {
            world.mutate(*actor, m);
        }
        let sync_set = world.sync_set();
        let record = world.sync().map_err(TestCaseError::fail)?;
        property(&record, &world, &sync_set)
            .map_err(|e| TestCaseError::fail(format!("{e}\nplan:\n{}", record.plan)))?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_plan_applies_cleanly(s in scenario()) {
        check_every_sync(&s, |_, _, _| Ok(()))?;
    }

    #[test]
    fn union_view_equals_project_after_every_sync(s in scenario()) {
        check_every_sync(&s, |_, world, _| check_convergence(world))?;
    }

    #[test]
    fn project_wins_every_conflict(s in scenario()) {
        check_every_sync(&s, |record, world, _| check_project_wins(record, world))?;
    }

    #[test]
    fn nothing_written_on_either_side_is_lost(s in scenario()) {
        check_every_sync(&s, |record, world, _| check_nothing_lost(record, world))?;
    }

    #[test]
    fn a_second_sync_plans_nothing(s in scenario()) {
        check_every_sync(&s, |_, world, _| check_idempotent(world))?;
    }

    #[test]
    fn steps_stay_within_the_sync_set(s in scenario()) {
        check_every_sync(&s, |record, _, sync_set| check_confinement(record, sync_set))?;
    }

    #[test]
    fn the_project_loses_a_path_only_where_a_user_removed_it(s in scenario()) {
        check_every_sync(&s, |_, world, _| {
            check_losses_caused_by_users(&world.project, [&world.compute])
        })?;
    }

    #[test]
    fn a_conflict_only_where_the_project_changed_the_path(s in scenario()) {
        check_every_sync(&s, |_, world, _| check_conflicts_where_project_changed(&world.project))?;
    }

}

/// Regressions found by the properties above, replayed by name.
mod regressions {
    use super::*;

    fn p(s: &str) -> RelPath {
        RelPath::new(s).expect("valid test path")
    }

    fn sync_checked(world: &mut World) {
        let record = world.sync().expect("sync applies");
        check_convergence(world).expect("converges");
        check_nothing_lost(&record, world).expect("nothing lost");
        check_idempotent(world).expect("second sync is empty");
    }

    /// Without hashes, equal content is "unknown" across machines; an
    /// unchanged path must still not be re-fetched every sync.
    #[test]
    fn unchanged_file_without_hashes_is_not_fetched_again() {
        let mut world = World::new(false);
        world.mutate(Actor::Compute, &Mutation::Write(p("a"), vec![]));
        sync_checked(&mut world);
    }

    /// A push preserves the compute side's mtime on the project; a later
    /// project edit of the same size that happens to get the same mtime
    /// (coarse clocks) is still a change, seen by its ctime.
    #[test]
    fn project_edit_with_a_colliding_mtime_is_still_pulled() {
        let mut world = World::new(false);
        world.mutate(Actor::Project, &Mutation::Write(p("a"), vec![]));
        sync_checked(&mut world);
        world.mutate(Actor::Compute, &Mutation::Write(p("a"), b"xx".to_vec()));
        sync_checked(&mut world);
        let pushed_mtime = world.project.tree[&p("a")].mtime;
        world.mutate(Actor::Project, &Mutation::Write(p("a"), b"yx".to_vec()));
        world.project.tree.get_mut(&p("a")).expect("written").mtime = pushed_mtime;
        sync_checked(&mut world);
        assert_eq!(
            world.union_get(&p("a")).expect("visible").0.content,
            world.project.tree[&p("a")].content
        );
    }

    /// A no-op chmod copies a lower file up without changing it: when the
    /// project then replaces the file with a directory, nothing of the
    /// compute side's is lost and no conflict is reported.
    #[test]
    fn noop_copy_up_then_project_type_change_is_a_plain_pull() {
        let mut world = World::new(true);
        world.mutate(Actor::Project, &Mutation::Write(p("a"), vec![]));
        world.mutate(Actor::Compute, &Mutation::Chmod(p("a"), 0o644));
        world.mutate(Actor::Project, &Mutation::Mkdir(p("a")));
        sync_checked(&mut world);
        assert!(world.project.conflicts.is_empty());
    }
}
