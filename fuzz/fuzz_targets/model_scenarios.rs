//! Random user mutations on both sides of the in-memory model
//! (`unionsync_core::model`), as in `core/tests/properties.rs`: the project
//! starts from a random tree, then 1–4 rounds of interleaved compute and
//! project mutations, each ending in a `World::sync`. Every sync must apply
//! cleanly (`Err` is a bug) and every invariant check must pass after it:
//! convergence, project wins, nothing lost, idempotence, confinement.
#![no_main]

use std::fmt;

use libfuzzer_sys::arbitrary::{Arbitrary, Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use unionsync_core::model::{
    check_confinement, check_conflicts_where_project_changed, check_convergence,
    check_idempotent, check_losses_caused_by_users, check_nothing_lost, check_project_wins, Actor,
    Mutation, World,
};
use unionsync_core::RelPath;

/// Few names, so both sides collide often; two of them odd bytes.
const NAMES: [&[u8]; 5] = [b"a", b"b", b"-c", b"a b", b"\xff"];
const MODES: [u32; 4] = [0o644, 0o600, 0o755, 0o700];
const TARGETS: [&[u8]; 4] = [b"a", b"../b", b"t", b"\n"];

struct Scenario {
    hashes: bool,
    initial: Vec<Mutation>,
    rounds: Vec<Vec<(Actor, Mutation)>>,
}

/// Rust source that replays the scenario (with `p(b"..")` for
/// `RelPath::new(&b".."[..]).unwrap()`), for a regression test.
impl fmt::Debug for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "let mut world = World::new({});", self.hashes)?;
        for m in &self.initial {
            writeln!(f, "world.mutate(Actor::Project, &{});", rust_mutation(m))?;
        }
        for round in &self.rounds {
            for (actor, m) in round {
                writeln!(f, "world.mutate(Actor::{actor:?}, &{});", rust_mutation(m))?;
            }
            writeln!(f, "world.sync().unwrap(); // then every check_*")?;
        }
        Ok(())
    }
}

fn rust_mutation(m: &Mutation) -> String {
    match m {
        Mutation::Write(path, data) => format!(
            "Mutation::Write(p(b\"{path}\"), b\"{}\".to_vec())",
            data.escape_ascii()
        ),
        Mutation::Mkdir(path) => format!("Mutation::Mkdir(p(b\"{path}\"))"),
        Mutation::Remove(path) => format!("Mutation::Remove(p(b\"{path}\"))"),
        Mutation::Chmod(path, mode) => format!("Mutation::Chmod(p(b\"{path}\"), {mode:#o})"),
        Mutation::Symlink(path, target) => format!(
            "Mutation::Symlink(p(b\"{path}\"), b\"{}\".to_vec())",
            target.escape_ascii()
        ),
        Mutation::Rename(from, to) => {
            format!("Mutation::Rename(p(b\"{from}\"), p(b\"{to}\"))")
        }
        Mutation::FailedCopyUp(path) => format!("Mutation::FailedCopyUp(p(b\"{path}\"))"),
    }
}

fn path(u: &mut Unstructured<'_>) -> Result<RelPath> {
    let depth = u.int_in_range(1..=3)?;
    let mut bytes = Vec::new();
    for i in 0..depth {
        if i > 0 {
            bytes.push(b'/');
        }
        // The first three names twice as likely as the odd ones.
        let n = u.int_in_range(0..=7)?;
        bytes.extend_from_slice(NAMES[if n < 6 { n % 3 } else { n - 3 }]);
    }
    Ok(RelPath::new(bytes).expect("names are valid components"))
}

fn mutation(u: &mut Unstructured<'_>) -> Result<Mutation> {
    // Weights as in core/tests/properties.rs: write 4, mkdir 2, remove 2,
    // chmod 1, symlink 1, failed copy-up 1, rename 1.
    Ok(match u.int_in_range(0..=11)? {
        0..=3 => {
            let len = u.int_in_range(0..=2)?;
            let mut content = Vec::with_capacity(len);
            for _ in 0..len {
                content.push(*u.choose(&[b'x', b'y'])?);
            }
            Mutation::Write(path(u)?, content)
        }
        4 | 5 => Mutation::Mkdir(path(u)?),
        6 | 7 => Mutation::Remove(path(u)?),
        8 => Mutation::Chmod(path(u)?, *u.choose(&MODES)?),
        9 => Mutation::Symlink(path(u)?, u.choose(&TARGETS)?.to_vec()),
        10 => Mutation::FailedCopyUp(path(u)?),
        _ => Mutation::Rename(path(u)?, path(u)?),
    })
}

impl<'a> Arbitrary<'a> for Scenario {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        let hashes = u.arbitrary()?;
        let mut initial = Vec::new();
        for _ in 0..u.int_in_range(0..=9)? {
            initial.push(mutation(u)?);
        }
        let mut rounds = Vec::new();
        for _ in 0..u.int_in_range(1..=4)? {
            let mut round = Vec::new();
            for _ in 0..u.int_in_range(0..=11)? {
                let actor = if u.arbitrary()? {
                    Actor::Compute
                } else {
                    Actor::Project
                };
                round.push((actor, mutation(u)?));
            }
            rounds.push(round);
        }
        Ok(Scenario {
            hashes,
            initial,
            rounds,
        })
    }
}

fn run(s: &Scenario) {
    let mut world = World::new(s.hashes);
    for m in &s.initial {
        world.mutate(Actor::Project, m);
    }
    for (i, round) in s.rounds.iter().enumerate() {
        for (actor, m) in round {
            world.mutate(*actor, m);
        }
        let sync_set = world.sync_set();
        let record = world
            .sync()
            .unwrap_or_else(|e| panic!("round {i}: sync failed: {e}\nscenario:\n{s:?}"));
        let checks = [
            ("convergence", check_convergence(&world)),
            ("project wins", check_project_wins(&record, &world)),
            ("nothing lost", check_nothing_lost(&record, &world)),
            ("idempotence", check_idempotent(&world)),
            ("confinement", check_confinement(&record, &sync_set)),
            (
                "losses by users only",
                check_losses_caused_by_users(&world.project, [&world.compute]),
            ),
            (
                "conflicts where the project changed",
                check_conflicts_where_project_changed(&world.project),
            ),
        ];
        for (name, result) in checks {
            if let Err(e) = result {
                panic!(
                    "round {i}: {name} violated: {e}\nplan:\n{}\nscenario:\n{s:?}",
                    record.plan
                );
            }
        }
    }
}

fuzz_target!(|s: Scenario| {
    run(&s);
});
