//! Progress bars on stderr: one per shard being trained and one overall.
//!
//! Bars are drawn only when stderr is a terminal and `--quiet` is not given; otherwise every
//! call is a no-op, so logs and pipes stay clean.

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;

/// The progress display of one long job.
#[derive(Clone, Debug)]
pub struct Progress {
    multi: Option<MultiProgress>,
    overall: ProgressBar,
}

impl Progress {
    /// Bars for a job of `total` units (rows×epochs), drawn only if `visible` and stderr is a
    /// terminal.
    pub fn new(label: &str, total: u64, visible: bool) -> Progress {
        if !(visible && std::io::stderr().is_terminal()) {
            return Progress::hidden();
        }
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        let overall = multi.add(ProgressBar::new(total));
        overall.set_style(
            ProgressStyle::with_template(
                "{msg:>12} [{bar:40}] {percent:>3}% {elapsed_precise} eta {eta}",
            )
            .expect("static template is valid")
            .progress_chars("=> "),
        );
        overall.set_message(label.to_string());
        Progress {
            multi: Some(multi),
            overall,
        }
    }

    /// Bars that draw nothing.
    pub fn hidden() -> Progress {
        Progress {
            multi: None,
            overall: ProgressBar::hidden(),
        }
    }

    /// A bar for one shard of `total` units; finishing it removes it from the display.
    pub fn shard(&self, shard: usize, total: u64) -> ProgressBar {
        match &self.multi {
            None => ProgressBar::hidden(),
            Some(m) => {
                let bar = m.add(ProgressBar::new(total));
                bar.set_style(
                    ProgressStyle::with_template("{msg:>12} [{bar:40}] {percent:>3}%")
                        .expect("static template is valid")
                        .progress_chars("=> "),
                );
                bar.set_message(format!("shard {shard}"));
                bar
            }
        }
    }

    /// Count `n` units done overall.
    pub fn inc(&self, n: u64) {
        self.overall.inc(n);
    }

    /// Clear the display.
    pub fn finish(&self) {
        self.overall.finish_and_clear();
    }
}
