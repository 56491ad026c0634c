//! The `sisa` binary: parses arguments, runs the command, owns the exit code.
//!
//! Exit codes: 0 success; 1 an error (the message names the file, line, field or request);
//! 2 bad command-line usage; 3 `verify` found a model that differs from a from-scratch retrain.

mod cli;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    // Output piped into `head` ends quietly, as with any Unix tool, instead of a panic on
    // the broken pipe.
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let args = <cli::Cli as clap::Parser>::parse();
    match cli::run(args) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("sisa: error: {}", cli::describe(&e));
            std::process::exit(1);
        }
    }
}
