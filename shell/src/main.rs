//! The `unionsync` command.
//!
//! Today it offers `unionsync demo`, which walks the core reconcile through
//! a scripted day of edits on both sides and prints the plan; the daemons
//! (`project serve`, `compute mount`) arrive with the shell's transport and
//! FUSE layers.

mod demo;

use clap::{Parser, Subcommand};

/// A disk-fast, copy-on-write view of a remote project home, synced both
/// ways; the project wins conflicts and the other side's data is kept.
#[derive(Parser)]
#[command(name = "unionsync", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show what one sync decides for a scripted set of edits on both sides
    /// (conflicts, deletes against edits, type changes, odd filenames).
    ///
    /// Example: unionsync demo
    Demo,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Demo => demo::run(&mut std::io::stdout().lock()),
    }
}
