//! `xme`: see what a running xme system is doing, and clean up after it.
//!
//! Reads `/dev/shm` regions through read-only mappings (it never takes a
//! region's lock or writes to it); tells a region's kind by its header.

mod error;
mod model;
mod show;
mod top;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub use error::CliError;

/// See what a running xme system is doing, and clean up after it.
#[derive(Debug, Parser)]
#[command(name = "xme", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Every xme region on this host: name, kind, size, creator and whether
    /// it lives, the live processes using it, age.
    Ls {
        /// One JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// What a region holds: a Manager's keys, arena, statuses, Guard, lock;
    /// a Monitor's messages and lock.
    Show {
        /// The region's name (as `ls` shows it).
        name: String,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// A live view of a region, with rates; `q` quits, arrows scroll.
    Top {
        /// The region's name.
        name: String,
        /// Print one frame as plain text and exit (scripts, no TTY).
        #[arg(long)]
        once: bool,
        /// Refresh period in milliseconds.
        #[arg(long, default_value_t = 250, value_parser = clap::value_parser!(u64).range(50..=10_000))]
        interval_ms: u64,
    },
    /// Removes a region; refuses while a live process uses it.
    Rm {
        /// The region's name.
        name: String,
        /// Remove it even though live processes use it.
        #[arg(long)]
        force: bool,
    },
    /// Removes every xme region whose processes are all dead.
    Clean {
        /// Only list what would be removed.
        #[arg(long)]
        dry_run: bool,
        /// Only regions whose names start with this.
        #[arg(long, value_name = "PREFIX")]
        only: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Ls { json } => show::ls(json),
        Command::Show { name, json } => show::show(&name, json),
        Command::Top {
            name,
            once,
            interval_ms,
        } => top::top(&name, once, std::time::Duration::from_millis(interval_ms)),
        Command::Rm { name, force } => show::rm(&name, force),
        Command::Clean { dry_run, only } => show::clean(dry_run, only.as_deref()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xme: {}", xme_core::error_chain(&e));
            ExitCode::FAILURE
        }
    }
}
