//! Line-prefixed, optionally coloured output: `gateway-1     | listening on …`.
//!
//! Every line written through an [`Output`] is written whole under a lock, so lines of
//! different processes never interleave mid-line. Colours are used only when standard
//! output is a terminal and `NO_COLOR` is unset; each process gets the next colour of a
//! twelve-colour palette. Write errors (a closed pipe, a full disk) are ignored: losing
//! log lines must never stop the supervisor.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// Label of the runner's own messages.
pub const RUNNER_NAME: &str = "confab-run";

/// ANSI foreground colours, distinct and readable on dark and light backgrounds.
const PALETTE: [&str; 12] = [
    "36", "33", "32", "35", "34", "96", "93", "92", "95", "94", "31", "91",
];
const RESET: &str = "\x1b[0m";

/// A cheaply cloneable handle on the shared output stream.
#[derive(Clone)]
pub struct Output {
    inner: Arc<Inner>,
}

struct Inner {
    sink: Mutex<Box<dyn Write + Send>>,
    color: bool,
    width: usize,
    next_color: AtomicUsize,
    runner: Prefix,
}

/// The rendered `name | ` prefix of one process (padding and colour included).
#[derive(Clone, Debug)]
pub struct Prefix(Arc<str>);

impl Prefix {
    fn render(name: &str, width: usize, color: Option<&str>) -> Self {
        let padded = format!("{name:<width$} | ");
        Prefix(match color {
            Some(code) => format!("\x1b[{code}m{padded}{RESET}").into(),
            None => padded.into(),
        })
    }
}

/// In-memory sink for tests: everything written so far, as text.
#[derive(Clone, Default)]
pub struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    pub fn text(&self) -> String {
        let bytes = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Output {
    /// Writes to standard output; `names` are all process names that will be shown, so the
    /// `|` column lines up. Colour iff stdout is a terminal and `NO_COLOR` is unset.
    pub fn stdout<'a>(names: impl IntoIterator<Item = &'a str>) -> Self {
        let color = std::io::stdout().is_terminal()
            && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
        Self::new(Box::new(std::io::stdout()), color, names)
    }

    /// Writes uncoloured to memory (tests).
    pub fn capture<'a>(names: impl IntoIterator<Item = &'a str>) -> (Self, Captured) {
        let captured = Captured::default();
        (
            Self::new(Box::new(captured.clone()), false, names),
            captured,
        )
    }

    fn new<'a>(
        sink: Box<dyn Write + Send>,
        color: bool,
        names: impl IntoIterator<Item = &'a str>,
    ) -> Self {
        let width = names
            .into_iter()
            .map(|n| n.chars().count())
            .chain([RUNNER_NAME.len()])
            .max()
            .unwrap_or(RUNNER_NAME.len());
        let runner = Prefix::render(RUNNER_NAME, width, color.then_some("1"));
        Self {
            inner: Arc::new(Inner {
                sink: Mutex::new(sink),
                color,
                width,
                next_color: AtomicUsize::new(0),
                runner,
            }),
        }
    }

    /// Whether ANSI colours are in use.
    pub fn color(&self) -> bool {
        self.inner.color
    }

    /// A prefix for process `name`, with the next palette colour.
    pub fn prefix(&self, name: &str) -> Prefix {
        let color = self.inner.color.then(|| {
            let i = self.inner.next_color.fetch_add(1, Ordering::Relaxed);
            PALETTE[i % PALETTE.len()]
        });
        Prefix::render(name, self.inner.width, color)
    }

    /// One line of a child's output (without its line terminator).
    pub fn line(&self, prefix: &Prefix, text: &str) {
        self.write(&[&prefix.0, text, "\n"]);
    }

    /// One line from the runner itself.
    pub fn runner(&self, text: &str) {
        self.write(&[&self.inner.runner.0, text, "\n"]);
    }

    /// A line without prefix, bold when colours are on (the "Confab is up" line).
    pub fn headline(&self, text: &str) {
        if self.inner.color {
            self.write(&["\x1b[1;32m", text, RESET, "\n"]);
        } else {
            self.write(&[text, "\n"]);
        }
    }

    fn write(&self, parts: &[&str]) {
        let line: String = parts.concat();
        let mut sink = self
            .inner
            .sink
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let _ = sink.write_all(line.as_bytes());
        let _ = sink.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_padded_to_the_longest_name() {
        let (out, captured) = Output::capture(["gateway-1", "persistence-1", "redis"]);
        let gw = out.prefix("gateway-1");
        let redis = out.prefix("redis");
        out.line(&gw, "listening");
        out.line(&redis, "Ready to accept connections");
        out.runner("hello");
        out.headline("Confab is up");
        assert_eq!(
            captured.text(),
            "gateway-1     | listening\n\
             redis         | Ready to accept connections\n\
             confab-run    | hello\n\
             Confab is up\n"
        );
    }

    #[test]
    fn colours_are_distinct_per_process() {
        let out = Output::new(Box::new(Captured::default()), true, ["a", "b"]);
        let a = out.prefix("a");
        let b = out.prefix("b");
        assert!(a.0.starts_with("\x1b[36m"), "{:?}", a.0);
        assert!(b.0.starts_with("\x1b[33m"), "{:?}", b.0);
        assert!(a.0.ends_with("\x1b[0m"));
    }
}
