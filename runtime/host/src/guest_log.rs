//! Guest stdout and stderr, turned into log events tagged with the function
//! and the request id. Writes never block the guest (a full pipe on the
//! node's own stdout would otherwise stall a worker thread past any
//! deadline), and each request may log a bounded number of bytes; beyond
//! it, output is dropped and one warning says so.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};

/// Longest line kept; the rest of a longer line is cut.
const LINE_BYTES_MAX: usize = 4096;
/// Most bytes one request may log across stdout and stderr.
pub(crate) const REQUEST_LOG_BYTES_MAX: usize = 1 << 20;

/// Which stream a line came from.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Stream {
    Stdout,
    Stderr,
}

/// The shared per-request state of both streams.
#[derive(Debug)]
struct LogState {
    function: Arc<str>,
    request_id: Arc<str>,
    budget_left: usize,
    warned: bool,
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
    pub(crate) fn pair(function: Arc<str>, request_id: Arc<str>) -> (Self, Self) {
        let state =
            Arc::new(Mutex::new(LogState { function, request_id, budget_left: REQUEST_LOG_BYTES_MAX, warned: false }));
        let make = |stream| GuestLog { state: Arc::clone(&state), stream, line: Arc::default() };
        (make(Stream::Stdout), make(Stream::Stderr))
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
        let (out, err) = GuestLog::pair("f".into(), "r".into());
        out.accept(&vec![b'a'; REQUEST_LOG_BYTES_MAX - 10]);
        err.accept(&[b'b'; 100]);
        let state = out.state.lock().unwrap();
        assert_eq!(state.budget_left, 0);
        assert!(state.warned);
    }

    #[test]
    fn long_lines_are_cut() {
        let (out, _err) = GuestLog::pair("f".into(), "r".into());
        out.accept(&vec![b'x'; LINE_BYTES_MAX * 2]);
        assert_eq!(out.line.lock().unwrap().len(), LINE_BYTES_MAX);
    }
}
