//! Progress of a long command. On a terminal it is an indicatif bar; when stderr goes to a file
//! or a pipe (a run started with `nohup ... > log`, a CI job) the bar draws nothing and its
//! `println` is dropped, so the same updates are written as plain lines instead: every message
//! at once, and the position at most once every [`PLAIN_EVERY`] and whenever the stage changes.

use indicatif::{ProgressBar, ProgressStyle};
use std::time::{Duration, Instant};

/// How often a plain position line is written at most.
pub const PLAIN_EVERY: Duration = Duration::from_secs(60);

/// A bar on a terminal, timed lines elsewhere.
pub struct Progress {
    bar: ProgressBar,
    plain: bool,
    last_line: Option<Instant>,
    stage: String,
}

impl Progress {
    /// A bar of `len` steps drawn with `template` (indicatif's syntax) on a terminal.
    pub fn new(len: u64, template: &str) -> Self {
        let bar = ProgressBar::new(len);
        bar.set_style(
            ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        let plain = bar.is_hidden();
        Progress {
            bar,
            plain,
            last_line: None,
            stage: String::new(),
        }
    }

    /// Writes a line above the bar (or as a plain line).
    pub fn println(&self, line: impl AsRef<str>) {
        if self.plain {
            eprintln!("{}", line.as_ref());
        } else {
            self.bar.println(line.as_ref());
        }
    }

    /// Moves the bar to `done` of `total` with a message; `stage` names what is counted, and a
    /// new stage is always written in plain mode.
    pub fn update(&mut self, stage: &str, done: u64, total: u64, message: impl Into<String>) {
        self.bar.set_length(total);
        self.bar.set_position(done);
        let message = message.into();
        if self.plain {
            let due = self.last_line.is_none_or(|t| t.elapsed() >= PLAIN_EVERY);
            if due || stage != self.stage || (done == total && total > 0) {
                eprintln!("{stage} {done}/{total} {message}");
                self.last_line = Some(Instant::now());
                self.stage = stage.to_string();
            }
        } else {
            self.bar.set_message(message);
        }
    }

    /// Ends the bar, leaving it drawn.
    pub fn finish(&self) {
        self.bar.finish();
    }

    /// Ends the bar and clears it.
    pub fn finish_and_clear(&self) {
        self.bar.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hidden_bar_writes_plain_lines() {
        let mut p = Progress::new(10, "{bar} {pos}/{len}");
        // As when stderr is not a terminal (whether it is depends on how the tests are run).
        p.plain = true;
        p.update("training", 1, 10, "loss 1.0");
        assert_eq!(p.stage, "training");
        let first = p.last_line.expect("the first update is written");
        // Within the interval and in the same stage: not written again.
        p.update("training", 2, 10, "loss 0.9");
        assert_eq!(p.last_line, Some(first));
        // A new stage is.
        p.update("writing questions", 1, 5, "");
        assert_eq!(p.stage, "writing questions");
        assert!(p.last_line.unwrap() >= first);
    }
}
