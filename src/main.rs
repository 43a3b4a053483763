//! The `atender-webhooks` binary: parse the command line, run it, print the error chain and
//! map it to an exit code.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = atender_webhooks::cli::Cli::parse();
    match atender_webhooks::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
