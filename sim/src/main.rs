//! `cargo run -p unionsync-sim --release -- --seeds N --start S`: sweep seeds
//! and print `seeds=N failed=F first_failure=…`;
//! `--seed S --trace`: replay one seed as a readable trace.

use std::time::Instant;

use clap::Parser;
use unionsync_sim::{run_seed, SimOptions};

/// Deterministic simulation of unionsync: one project server, several
/// compute servers, random edits on every side, network faults and crashes.
#[derive(Parser)]
#[command(name = "unionsync-sim")]
struct Args {
    /// How many seeds to sweep.
    #[arg(long, default_value_t = 100)]
    seeds: u64,
    /// The first seed of the sweep.
    #[arg(long, default_value_t = 0)]
    start: u64,
    /// Run this one seed only.
    #[arg(long)]
    seed: Option<u64>,
    /// Print the seed's trace (with --seed).
    #[arg(long)]
    trace: bool,
    /// Compute servers per simulation.
    #[arg(long, default_value_t = 2)]
    computes: u64,
    /// Turn network faults and crashes off.
    #[arg(long)]
    no_faults: bool,
    /// Large-tree mode: N more project files, and N new compute-side
    /// symlinks with 4000-byte targets (lists of many frames).
    #[arg(long, default_value_t = 0, value_name = "N")]
    large: usize,
}

fn main() {
    let args = Args::parse();
    let options = SimOptions {
        computes: args.computes,
        faults: !args.no_faults,
        trace: args.trace,
        large: args.large,
        ..SimOptions::default()
    };
    if let Some(seed) = args.seed {
        let outcome = run_seed(seed, &options);
        for line in &outcome.trace {
            println!("{line}");
        }
        println!(
            "seed={seed} syncs={} sim_time={:.1}s trace_hash={:016x} result={}",
            outcome.syncs,
            outcome.sim_time.as_secs_f64(),
            outcome.trace_hash,
            outcome.failure.as_deref().unwrap_or("ok")
        );
        std::process::exit(i32::from(outcome.failure.is_some()));
    }
    let started = Instant::now();
    let mut failed = 0u64;
    let mut first_failure = None;
    for seed in args.start..args.start + args.seeds {
        let outcome = run_seed(seed, &options);
        if let Some(failure) = outcome.failure {
            failed += 1;
            eprintln!("seed {seed} failed: {failure}");
            first_failure.get_or_insert(seed);
        }
    }
    println!(
        "seeds={} failed={failed} first_failure={} elapsed={:.1}s",
        args.seeds,
        first_failure.map_or("none".to_string(), |s| s.to_string()),
        started.elapsed().as_secs_f64()
    );
    std::process::exit(i32::from(failed > 0));
}
