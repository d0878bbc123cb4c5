//! Guest stdout and stderr, turned into log events tagged with the function
//! and the request id, and — when the host has a [`GuestLogSink`] — into
//! [`GuestLogLine`]s for whoever ships them (a node sends them to the control
//! plane for `wedge logs`). Writes never block the guest (a full pipe on the
//! node's own stdout would otherwise stall a worker thread past any
//! deadline; a full sink drops lines and counts them), and each request may
//! log a bounded number of bytes; beyond it, output is dropped and one
//! warning says so.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};

/// Longest line kept; the rest of a longer line is cut.
const LINE_BYTES_MAX: usize = 4096;
/// Most bytes one request may log across stdout and stderr.
pub(crate) const REQUEST_LOG_BYTES_MAX: usize = 1 << 20;

/// Which stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

impl Stream {
    /// `stdout` or `stderr`.
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// One line a guest wrote.
#[derive(Debug, Clone)]
pub struct GuestLogLine {
    /// When it was written, ms since the Unix epoch.
    pub unix_ms: u64,
    /// The function that wrote it.
    pub function: Arc<str>,
    /// The request's id.
    pub request_id: Arc<str>,
    /// Which stream.
    pub stream: Stream,
    /// The line without its newline (cut at 4 KiB, invalid UTF-8 replaced).
    pub line: String,
}

/// A bounded queue that receives every guest output line of a host. When
/// the reader falls behind, lines are dropped (never blocking a guest) and
/// counted.
#[derive(Clone)]
pub struct GuestLogSink {
    sender: tokio::sync::mpsc::Sender<GuestLogLine>,
    dropped: Arc<AtomicU64>,
}

impl std::fmt::Debug for GuestLogSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestLogSink").field("dropped", &self.dropped()).finish_non_exhaustive()
    }
}

impl GuestLogSink {
    /// A sink holding at most `capacity` unread lines, and its reader.
    pub fn bounded(capacity: usize) -> (Self, tokio::sync::mpsc::Receiver<GuestLogLine>) {
        let (sender, receiver) = tokio::sync::mpsc::channel(capacity.max(1));
        (Self { sender, dropped: Arc::default() }, receiver)
    }

    /// Lines dropped so far because the reader was behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    fn offer(&self, line: GuestLogLine) {
        if self.sender.try_send(line).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The shared per-request state of both streams.
#[derive(Debug)]
struct LogState {
    function: Arc<str>,
    request_id: Arc<str>,
    budget_left: usize,
    warned: bool,
    sink: Option<GuestLogSink>,
}

/// One stream of one request. Cheap to clone; clones share the budget.
#[derive(Clone)]
pub(crate) struct GuestLog {
    state: Arc<Mutex<LogState>>,
    stream: Stream,
    line: Arc<Mutex<Vec<u8>>>,
}

impl GuestLog {
    /// The stdout and stderr of one request.
    pub(crate) fn pair(function: Arc<str>, request_id: Arc<str>, sink: Option<GuestLogSink>) -> (Self, Self) {
        let state = Arc::new(Mutex::new(LogState {
            function,
            request_id,
            budget_left: REQUEST_LOG_BYTES_MAX,
            warned: false,
            sink,
        }));
        let make = |stream| GuestLog { state: Arc::clone(&state), stream, line: Arc::default() };
        (make(Stream::Stdout), make(Stream::Stderr))
    }

    /// The id of the request this log belongs to.
    pub(crate) fn request_id(&self) -> Arc<str> {
        Arc::clone(&self.state.lock().unwrap_or_else(|p| p.into_inner()).request_id)
    }

    fn accept(&self, bytes: &[u8]) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let take = bytes.len().min(state.budget_left);
        state.budget_left -= take;
        if take < bytes.len() && !state.warned {
            state.warned = true;
            tracing::warn!(function = %state.function, request_id = %state.request_id,
                "guest output beyond {REQUEST_LOG_BYTES_MAX} bytes for this request is dropped");
        }
        let mut line = self.line.lock().unwrap_or_else(|p| p.into_inner());
        for &byte in &bytes[..take] {
            if byte == b'\n' {
                emit(&state, self.stream, &line);
                line.clear();
            } else if line.len() < LINE_BYTES_MAX {
                line.push(byte);
            }
        }
    }

    fn flush_partial(&self) {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut line = self.line.lock().unwrap_or_else(|p| p.into_inner());
        if !line.is_empty() {
            emit(&state, self.stream, &line);
            line.clear();
        }
    }
}

impl Drop for GuestLog {
    fn drop(&mut self) {
        // The last clone of a stream emits a trailing line without newline.
        if Arc::strong_count(&self.line) == 1 {
            self.flush_partial();
        }
    }
}

fn emit(state: &LogState, stream: Stream, line: &[u8]) {
    let text = String::from_utf8_lossy(line);
    if let Some(sink) = &state.sink {
        let unix_ms =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        sink.offer(GuestLogLine {
            unix_ms,
            function: Arc::clone(&state.function),
            request_id: Arc::clone(&state.request_id),
            stream,
            line: text.to_string(),
        });
    }
    match stream {
        Stream::Stdout => tracing::info!(target: "wedge::guest", function = %state.function,
            request_id = %state.request_id, stream = "stdout", "{text}"),
        Stream::Stderr => tracing::warn!(target: "wedge::guest", function = %state.function,
            request_id = %state.request_id, stream = "stderr", "{text}"),
    }
}

impl IsTerminal for GuestLog {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestLog {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl AsyncWrite for GuestLog {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.accept(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_is_shared_and_enforced() {
        let (out, err) = GuestLog::pair("f".into(), "r".into(), None);
        out.accept(&vec![b'a'; REQUEST_LOG_BYTES_MAX - 10]);
        err.accept(&[b'b'; 100]);
        let state = out.state.lock().unwrap();
        assert_eq!(state.budget_left, 0);
        assert!(state.warned);
    }

    #[test]
    fn long_lines_are_cut() {
        let (out, _err) = GuestLog::pair("f".into(), "r".into(), None);
        out.accept(&vec![b'x'; LINE_BYTES_MAX * 2]);
        assert_eq!(out.line.lock().unwrap().len(), LINE_BYTES_MAX);
    }
}

#[cfg(test)]
mod sink_tests {
    use super::*;

    #[test]
    fn lines_reach_the_sink_and_overflow_is_counted() {
        let (sink, mut lines) = GuestLogSink::bounded(2);
        let (out, err) = GuestLog::pair("f".into(), "r".into(), Some(sink.clone()));
        out.accept(b"one\ntwo\n");
        err.accept(b"three\n");
        let first = lines.try_recv().unwrap();
        assert_eq!(
            (&*first.function, &*first.request_id, first.stream, first.line.as_str()),
            ("f", "r", Stream::Stdout, "one")
        );
        assert_eq!(lines.try_recv().unwrap().line, "two");
        assert!(lines.try_recv().is_err(), "the third line did not fit");
        assert_eq!(sink.dropped(), 1);
    }
}
