//! The `guildshard` binary: parses the command line and hands over to the library.

use std::process::ExitCode;

use clap::Parser;

mod cli;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(code) => code,
        Err(err) => {
            // The whole context chain on one line, once.
            eprintln!("guildshard: error: {err:#}");
            ExitCode::from(cli::EXIT_FAILURE)
        }
    }
}
