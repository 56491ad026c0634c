//! The `sisa` binary: parses arguments, runs the command, owns the exit code.
//!
//! Exit codes: 0 success; 1 an error (the message names the file, line, field or request);
//! 2 bad command-line usage; 3 `verify` found a model that differs from a from-scratch retrain.

mod cli;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (mimalloc.h: the option just before
/// `mi_option_use_numa_nodes`; the crate names no constant for it). A test checks that it
/// reads a purge delay's default (1000 ms in mimalloc v3, 10 ms in v2).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t =
    libmimalloc_sys::mi_option_use_numa_nodes - 1;

/// Keep freed memory committed instead of purging it: the SGEMM packing buffers of every
/// training step are freed and allocated again, and purges between steps made the kernel
/// zero pages anew (13% of a CNN stage's time in a profile; 2.7 s instead of 3.1 s of CPU for
/// two CNN epochs on mnist-5k).
fn keep_freed_memory() {
    // SAFETY: setting an option is thread-safe and takes plain integers.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}

fn main() {
    // Output piped into `head` ends quietly, as with any Unix tool, instead of a panic on
    // the broken pipe.
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    // Each shard's math runs on one thread: shards run side by side on the explicit pool, and
    // candle's kernels (the candle backend) must not split a shard's work over threads of
    // their own. Set before any thread starts.
    for var in ["RAYON_NUM_THREADS", "CANDLE_NUM_THREADS"] {
        if std::env::var_os(var).is_none() {
            std::env::set_var(var, "1");
        }
    }
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        keep_freed_memory();
    }
    let args = <cli::Cli as clap::Parser>::parse();
    match cli::run(args) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("sisa: error: {}", cli::describe(&e));
            std::process::exit(cli::exit_code(&e));
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_purge_delay_option_is_the_one_mimalloc_documents() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            return;
        }
        // SAFETY: reading an option.
        let default = unsafe { libmimalloc_sys::mi_option_get(super::MI_OPTION_PURGE_DELAY) };
        assert!(
            default == 1000 || default == 10,
            "option {} reads {default}, not a purge delay's default",
            super::MI_OPTION_PURGE_DELAY
        );
    }
}
