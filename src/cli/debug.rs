//! `debug`: tools for looking inside what the client sends. `debug dump-llb` prints an LLB
//! definition (a `.pb` file from `llb::Definition::to_bytes` or Go's `llb.WriteTo`) as JSON
//! lines, one per op, as `buildctl debug dump-llb` does.

use std::io::Read as _;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Subcommand};

use super::{Outcome, print_line};

/// Debugging commands.
#[derive(Debug, Subcommand)]
pub enum DebugCommand {
    /// Print an LLB definition as JSON lines (one op per line, as buildctl prints it)
    DumpLlb(DumpLlbArgs),
}

/// `debug dump-llb` flags.
#[derive(Debug, Args)]
pub struct DumpLlbArgs {
    /// The definition file; standard input when absent or `-`
    #[arg(value_name = "FILE")]
    pub file: Option<PathBuf>,
}

/// Runs a debug command.
pub fn run(command: &DebugCommand) -> anyhow::Result<Outcome> {
    match command {
        DebugCommand::DumpLlb(args) => dump_llb(args),
    }
}

fn dump_llb(args: &DumpLlbArgs) -> anyhow::Result<Outcome> {
    let bytes = match args.file.as_deref().filter(|f| f.as_os_str() != "-") {
        Some(path) => std::fs::read(path)
            .with_context(|| format!("cannot read the LLB definition {}", path.display()))?,
        None => {
            let mut bytes = Vec::new();
            std::io::stdin()
                .read_to_end(&mut bytes)
                .context("cannot read the LLB definition from standard input")?;
            bytes
        }
    };
    for line in pf_buildkit::llb::dump_json_lines(&bytes)? {
        print_line(line.trim_end_matches('\n'))?;
    }
    Ok(Outcome::Success)
}
