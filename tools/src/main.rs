//! hydractl: HydraNet's control tool.

mod lab;

use clap::{Parser, Subcommand};

/// Control HydraNet daemons and labs.
#[derive(Parser)]
#[command(name = "hydractl", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build and drive a whole HydraNet deployment in network namespaces on this machine.
    Lab(lab::LabArgs),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Lab(args) => lab::run(args),
    };
    if let Err(e) = result {
        eprintln!("hydractl: {e:#}");
        std::process::exit(1);
    }
}
