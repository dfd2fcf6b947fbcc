//! The `esper` program.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Esper: morphogenetic training — a network that grows while it trains.
#[derive(Debug, Parser)]
#[command(name = "esper", version, about, long_about = None)]
struct Cli {
    /// Configuration file (TOML); defaults to $ESPER_CONFIG, else built-in defaults.
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Resolve the configuration and run the contract self-check.
    Check,
    /// Print the resolved configuration as TOML (secrets are never printed).
    Config,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("esper: error: {err:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    // The one and only read of the environment; everything below gets typed config.
    let env: BTreeMap<String, String> = std::env::vars().collect();
    let resolved = esper_runtime::config::load(cli.config.as_deref(), &env)
        .context("resolving configuration")?;
    match cli.command {
        Command::Config => {
            println!("# run id: {}", resolved.run_id);
            for source in &resolved.sources {
                println!("# from {source}");
            }
            print!("{}", resolved.config.to_toml()?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Check => {
            println!(
                "esper {} — contract self-check (run {})",
                env!("CARGO_PKG_VERSION"),
                resolved.run_id
            );
            let report = esper_runtime::selfcheck::run(&resolved);
            println!("{report}");
            Ok(if report.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}
