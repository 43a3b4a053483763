//! The `atender-webhooks` binary: parse the command line, run it, print the error chain and
//! map it to an exit code.

use clap::Parser;

/// sled allocates and frees a node copy on most writes; glibc's allocator spent a fifth of the
/// storage CPU in the benchmark's profile, mimalloc a fraction of that (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    // No transparent huge pages for this process. mimalloc asks for them on its arena
    // (`madvise(MADV_HUGEPAGE)`), so each 2 MiB region a thread touches became resident whole
    // (141 of 146 MiB of anonymous memory a few seconds into a run), and with the kernel's
    // usual `defrag = madvise` a fault on one waits while the kernel compacts memory: direct
    // compactions of up to 35 ms inside the daemon's threads in the first second of load
    // (BENCHMARKS.md, "Memory and the early stall"). Process-wide, and before the daemon's
    // threads start; a kernel without the prctl keeps its default.
    #[cfg(target_os = "linux")]
    let _ = rustix::thread::disable_transparent_huge_pages(true);
    let cli = atender_webhooks::cli::Cli::parse();
    match atender_webhooks::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
