//! The `atender-webhooks` binary: parse the command line, run it, print the error chain and
//! map it to an exit code.

use clap::Parser;

/// sled allocates and frees a node copy on most writes; glibc's allocator spent a fifth of the
/// storage CPU in the benchmark's profile, mimalloc a fraction of that (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
