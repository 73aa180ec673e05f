//! Where results go and in what form: the one place that chooses text or JSON for every
//! command (trace, list, doctor, the drop log). Text for people is escaped here, so nothing
//! read from outside (device names, rule text, process names) can put terminal control
//! sequences on the screen; colour is added here, after escaping. A closed stdout (`tracer
//! list --json | head -1`) is a normal end: see [`is_closed_pipe`].
use std::{
    borrow::Cow,
    io::{self, IsTerminal as _, Write},
};

use serde::Serialize;

/// What the command prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Lines for people (coloured on a terminal unless NO_COLOR is set).
    Text,
    /// JSON for machines (schema in the README).
    Json,
}

impl Format {
    /// From the `--json` flag.
    pub fn from_json_flag(json: bool) -> Self {
        if json { Self::Json } else { Self::Text }
    }
}

/// Text styles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    Bold,
    Dim,
    Bad,
    Good,
    Unsure,
}

impl Style {
    fn sgr(self) -> &'static str {
        match self {
            Self::Bold => "1",
            Self::Dim => "2",
            Self::Bad => "31;1",
            Self::Good => "32;1",
            Self::Unsure => "33;1",
        }
    }
}

/// stdout in the chosen format.
pub struct Output {
    pub format: Format,
    color: bool,
    out: Box<dyn Write + Send>,
}

impl Output {
    pub fn stdout(format: Format) -> Self {
        let color =
            format == Format::Text && io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
        Self {
            format,
            color,
            out: Box::new(io::stdout()),
        }
    }

    /// Into any writer, without colour (tests, report files).
    pub fn to_writer(format: Format, out: Box<dyn Write + Send>) -> Self {
        Self {
            format,
            color: false,
            out,
        }
    }

    pub fn is_json(&self) -> bool {
        self.format == Format::Json
    }

    /// One JSON object on one line.
    pub fn json_line<T: Serialize>(&mut self, value: &T) -> io::Result<()> {
        // Serialized first, so a closed pipe surfaces as the write's own error.
        let mut bytes = serde_json::to_vec(value).map_err(io::Error::other)?;
        bytes.push(b'\n');
        self.out.write_all(&bytes)?;
        self.out.flush()
    }

    /// One JSON value, indented.
    pub fn json_pretty<T: Serialize>(&mut self, value: &T) -> io::Result<()> {
        let mut bytes = serde_json::to_vec_pretty(value).map_err(io::Error::other)?;
        bytes.push(b'\n');
        self.out.write_all(&bytes)?;
        self.out.flush()
    }

    /// Text, escaped (already painted parts are kept as they are: see [`Output::paint`]).
    pub fn text(&mut self, s: &str) -> io::Result<()> {
        self.out.write_all(s.as_bytes())?;
        self.out.flush()
    }

    /// `s` escaped and, on a terminal, in `style`.
    pub fn paint(&self, style: Style, s: &str) -> String {
        let s = escape(s);
        if self.color {
            format!("\x1b[{}m{s}\x1b[0m", style.sgr())
        } else {
            s.into_owned()
        }
    }

    /// `s` escaped.
    pub fn plain<'a>(&self, s: &'a str) -> Cow<'a, str> {
        escape(s)
    }
}

/// Control characters (other than newline and tab) made visible: `\x1b` instead of an escape
/// sequence the terminal would act on.
pub fn escape(s: &str) -> Cow<'_, str> {
    if !s.chars().any(is_unsafe) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if is_unsafe(c) {
            out.push_str(&c.escape_unicode().to_string());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

fn is_unsafe(c: char) -> bool {
    (c.is_control() && c != '\n' && c != '\t')
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// True when the error is a write to a closed pipe: the reader went away, which is a normal
/// way for output to end (exit 0, nothing printed).
pub fn is_closed_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<io::Error>()
            .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
    })
}

/// stdout written by a thread of its own, for long-running commands: a reader that stalls
/// (a log shipper that stopped reading) never stalls the caller. At most `cap` lines wait;
/// beyond that lines are dropped and counted. Once stdout is closed, writes fail with
/// BrokenPipe (see [`is_closed_pipe`]).
pub struct DetachedStdout {
    tx: Option<std::sync::mpsc::SyncSender<Vec<u8>>>,
    thread: Option<std::thread::JoinHandle<()>>,
    pub dropped: std::sync::Arc<std::sync::atomic::AtomicU64>,
    closed: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl DetachedStdout {
    pub fn new(cap: usize) -> Self {
        use std::sync::{
            Arc,
            atomic::{AtomicBool, AtomicU64, Ordering},
        };
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(cap);
        let closed = Arc::new(AtomicBool::new(false));
        let flag = closed.clone();
        let thread = std::thread::Builder::new()
            .name("stdout".into())
            .spawn(move || {
                let mut out = io::stdout();
                for line in rx {
                    if out.write_all(&line).and_then(|()| out.flush()).is_err() {
                        flag.store(true, Ordering::Relaxed);
                        return;
                    }
                }
            })
            .ok();
        Self {
            tx: Some(tx),
            thread,
            dropped: Arc::new(AtomicU64::new(0)),
            closed,
        }
    }
}

impl Write for DetachedStdout {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        use std::sync::{atomic::Ordering, mpsc::TrySendError};
        if self.closed.load(Ordering::Relaxed) {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        let Some(tx) = &self.tx else {
            return Err(io::ErrorKind::BrokenPipe.into());
        };
        match tx.try_send(buf.to_vec()) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Disconnected(_)) => return Err(io::ErrorKind::BrokenPipe.into()),
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for DetachedStdout {
    /// Lets the thread write what waits, for a bounded time (a reader that never reads must
    /// not keep the process from exiting).
    fn drop(&mut self) {
        drop(self.tx.take());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while let Some(t) = &self.thread {
            if t.is_finished() || std::time::Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        if self.thread.as_ref().is_some_and(|t| t.is_finished()) {
            let _ = self.thread.take().map(|t| t.join());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_made_visible() {
        assert_eq!(escape("tap0"), "tap0");
        assert_eq!(escape("a\x1b[2Jb"), "a\\u{1b}[2Jb");
        assert_eq!(escape("line\nnext\ttab"), "line\nnext\ttab");
        assert_eq!(escape("x\u{202e}y"), "x\\u{202e}y");
        let o = Output::to_writer(Format::Text, Box::new(io::sink()));
        assert_eq!(o.paint(Style::Bad, "\x07"), "\\u{7}");
    }

    #[test]
    fn closed_pipes_are_recognised() {
        let e = anyhow::Error::from(io::Error::from(io::ErrorKind::BrokenPipe)).context("write");
        assert!(is_closed_pipe(&e));
        assert!(!is_closed_pipe(&anyhow::anyhow!("other")));
    }
}
