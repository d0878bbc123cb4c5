//! HTTP bodies: [`IncomingBody`] (a streamed body the host hands us, from the
//! incoming request or an outbound response) and [`Body`] (what the guest
//! sends, in a response or an outbound request).
//!
//! Both stream in chunks of at most [`CHUNK_BYTES`]: neither side ever holds a
//! whole body in memory unless the function asks for it ([`IncomingBody::bytes`]
//! and friends, which stop at a size limit). Writing follows the
//! `wasi:io/streams` protocol: `check-write` for a budget, `write` at most that
//! much, wait on `subscribe` when the budget is zero, and flush at the end.

use std::fmt;
use std::io::{self, Read};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::bindings::wasi::http::types as wasi;
use crate::bindings::wasi::io::streams::{InputStream, OutputStream, StreamError};
use crate::executor::wait_for;

/// Largest chunk read from or written to a host stream at once (64 KiB).
pub const CHUNK_BYTES: usize = 64 * 1024;

/// Default limit of [`IncomingBody::bytes`], [`IncomingBody::text`] and
/// [`IncomingBody::json`]: 16 MiB. Change it with [`IncomingBody::with_limit`].
pub const DEFAULT_COLLECT_LIMIT_BYTES: usize = 16 * 1024 * 1024;

/// The resource an [`IncomingBody`] was consumed from. Kept alive because the
/// body is its child: dropping the parent first would trap.
#[allow(dead_code)] // held only to be dropped last
enum Parent {
    /// The body of the request this instance is handling.
    Request(wasi::IncomingRequest),
    /// The body of an outbound response.
    Response(wasi::IncomingResponse),
    /// No body at all (the host refused to give one, or it was empty).
    None,
}

/// A body arriving from the host, read as a stream.
///
/// It is the body of the incoming [`Request`](crate::Request) and of outbound
/// responses ([`outbound::send`](crate::outbound::send)). Read it chunk by chunk
/// ([`chunk`](Self::chunk), [`next_chunk`](Self::next_chunk)), through
/// [`std::io::Read`], or collect it whole with a size limit
/// ([`bytes`](Self::bytes), [`text`](Self::text), [`json`](Self::json)).
/// To send it on unchanged, turn it into a [`Body`] with `Body::from(body)`.
pub struct IncomingBody {
    // Field order is drop order: the stream is a child of the body, and the
    // body a child of the parent.
    /// The byte stream; `None` once the end was reached.
    stream: Option<InputStream>,
    /// The `incoming-body` resource; finished once the stream ended.
    body: Option<wasi::IncomingBody>,
    /// Keeps the parent resource alive (see [`Parent`]).
    _parent: Parent,
    /// Bytes received but not yet handed out through [`Read`].
    pending: Vec<u8>,
    /// How far `pending` has been handed out.
    pending_pos: usize,
    /// Limit applied when collecting the body.
    limit_bytes: usize,
}

impl fmt::Debug for IncomingBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IncomingBody")
            .field("finished", &self.stream.is_none())
            .field("limit_bytes", &self.limit_bytes)
            .finish()
    }
}

/// Why collecting an [`IncomingBody`] failed.
#[derive(Debug)]
pub enum BodyError {
    /// Reading from the host failed (for example the client went away).
    Io(io::Error),
    /// The body is larger than the limit set with
    /// [`IncomingBody::with_limit`].
    TooLarge {
        /// The limit that was exceeded, in bytes.
        limit_bytes: usize,
    },
    /// [`IncomingBody::text`]: the body is not UTF-8.
    NotUtf8(std::string::FromUtf8Error),
    /// [`IncomingBody::json`]: the body is not JSON of the expected shape.
    Json(serde_json::Error),
}

impl fmt::Display for BodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BodyError::Io(e) => write!(f, "reading the body failed: {e}"),
            BodyError::TooLarge { limit_bytes } => {
                write!(f, "the body is larger than the limit of {limit_bytes} bytes")
            }
            BodyError::NotUtf8(e) => write!(f, "the body is not valid UTF-8: {e}"),
            BodyError::Json(e) => write!(f, "the body is not valid JSON: {e}"),
        }
    }
}

impl std::error::Error for BodyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            BodyError::Io(e) => Some(e),
            BodyError::TooLarge { .. } => None,
            BodyError::NotUtf8(e) => Some(e),
            BodyError::Json(e) => Some(e),
        }
    }
}

impl From<io::Error> for BodyError {
    fn from(e: io::Error) -> Self {
        BodyError::Io(e)
    }
}

impl IncomingBody {
    /// Wraps the body of the request being handled.
    pub(crate) fn from_request(request: wasi::IncomingRequest) -> Self {
        match request.consume() {
            Ok(body) => Self::new(body, Parent::Request(request)),
            Err(()) => Self::empty_with(Parent::Request(request)),
        }
    }

    /// Wraps the body of an outbound response.
    pub(crate) fn from_response(response: wasi::IncomingResponse) -> Self {
        match response.consume() {
            Ok(body) => Self::new(body, Parent::Response(response)),
            Err(()) => Self::empty_with(Parent::Response(response)),
        }
    }

    /// A body with no bytes (useful in tests and for synthetic requests).
    pub fn empty() -> Self {
        Self::empty_with(Parent::None)
    }

    fn new(body: wasi::IncomingBody, parent: Parent) -> Self {
        match body.stream() {
            Ok(stream) => IncomingBody {
                stream: Some(stream),
                body: Some(body),
                _parent: parent,
                pending: Vec::new(),
                pending_pos: 0,
                limit_bytes: DEFAULT_COLLECT_LIMIT_BYTES,
            },
            Err(()) => {
                drop(body);
                Self::empty_with(parent)
            }
        }
    }

    fn empty_with(parent: Parent) -> Self {
        IncomingBody {
            stream: None,
            body: None,
            _parent: parent,
            pending: Vec::new(),
            pending_pos: 0,
            limit_bytes: DEFAULT_COLLECT_LIMIT_BYTES,
        }
    }

    /// Sets the limit, in bytes, of [`bytes`](Self::bytes), [`text`](Self::text),
    /// [`json`](Self::json) and their async forms. Streaming reads are not
    /// limited by it.
    pub fn with_limit(mut self, limit_bytes: usize) -> Self {
        self.limit_bytes = limit_bytes;
        self
    }

    /// Marks the end of the stream: drops the stream, then finishes the body
    /// (trailers are ignored).
    fn finish(&mut self) {
        self.stream = None;
        if let Some(body) = self.body.take() {
            drop(wasi::IncomingBody::finish(body));
        }
    }

    /// Hands out bytes left over from an earlier read, if any.
    fn take_pending(&mut self) -> Option<Vec<u8>> {
        if self.pending_pos < self.pending.len() {
            let rest = self.pending.split_off(self.pending_pos);
            self.pending.clear();
            self.pending_pos = 0;
            Some(rest)
        } else {
            None
        }
    }

    /// Reads the next chunk (at most [`CHUNK_BYTES`]), blocking until one
    /// arrives. Returns `None` at the end of the body.
    pub fn chunk(&mut self) -> Option<io::Result<Vec<u8>>> {
        crate::executor::block_on(self.next_chunk())
    }

    /// Reads the next chunk (at most [`CHUNK_BYTES`]) without blocking the
    /// executor: other futures of the handler make progress meanwhile.
    /// Returns `None` at the end of the body.
    pub async fn next_chunk(&mut self) -> Option<io::Result<Vec<u8>>> {
        if let Some(rest) = self.take_pending() {
            return Some(Ok(rest));
        }
        loop {
            let stream = self.stream.as_ref()?;
            match stream.read(CHUNK_BYTES as u64) {
                Ok(bytes) if bytes.is_empty() => wait_for(stream.subscribe()).await,
                Ok(bytes) => return Some(Ok(bytes)),
                Err(StreamError::Closed) => {
                    self.finish();
                    return None;
                }
                Err(StreamError::LastOperationFailed(e)) => {
                    let message = e.to_debug_string();
                    self.finish();
                    return Some(Err(io::Error::other(message)));
                }
            }
        }
    }

    /// Appends `chunk` to `all`, failing once the limit is passed.
    fn push_limited(&self, all: &mut Vec<u8>, chunk: &[u8]) -> Result<(), BodyError> {
        if all.len() + chunk.len() > self.limit_bytes {
            return Err(BodyError::TooLarge { limit_bytes: self.limit_bytes });
        }
        all.extend_from_slice(chunk);
        Ok(())
    }

    /// Reads the whole body (blocking), failing with
    /// [`BodyError::TooLarge`] past the limit (default
    /// [`DEFAULT_COLLECT_LIMIT_BYTES`]).
    pub fn bytes(mut self) -> Result<Vec<u8>, BodyError> {
        let mut all = Vec::new();
        while let Some(chunk) = self.chunk() {
            let chunk = chunk?;
            self.push_limited(&mut all, &chunk)?;
        }
        Ok(all)
    }

    /// Reads the whole body (blocking) as UTF-8 text, with the same limit as
    /// [`bytes`](Self::bytes).
    pub fn text(self) -> Result<String, BodyError> {
        String::from_utf8(self.bytes()?).map_err(BodyError::NotUtf8)
    }

    /// Reads the whole body (blocking) and parses it as JSON, with the same
    /// limit as [`bytes`](Self::bytes).
    pub fn json<T: DeserializeOwned>(self) -> Result<T, BodyError> {
        serde_json::from_slice(&self.bytes()?).map_err(BodyError::Json)
    }

    /// Async form of [`bytes`](Self::bytes).
    pub async fn bytes_async(mut self) -> Result<Vec<u8>, BodyError> {
        let mut all = Vec::new();
        while let Some(chunk) = self.next_chunk().await {
            let chunk = chunk?;
            self.push_limited(&mut all, &chunk)?;
        }
        Ok(all)
    }

    /// Async form of [`text`](Self::text).
    pub async fn text_async(self) -> Result<String, BodyError> {
        String::from_utf8(self.bytes_async().await?).map_err(BodyError::NotUtf8)
    }

    /// Async form of [`json`](Self::json).
    pub async fn json_async<T: DeserializeOwned>(self) -> Result<T, BodyError> {
        serde_json::from_slice(&self.bytes_async().await?).map_err(BodyError::Json)
    }
}

impl Read for IncomingBody {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.pending_pos >= self.pending.len() {
            self.pending.clear();
            self.pending_pos = 0;
            let Some(stream) = self.stream.as_ref() else {
                return Ok(0);
            };
            let want = buf.len().min(CHUNK_BYTES) as u64;
            loop {
                match stream.blocking_read(want) {
                    Ok(bytes) if bytes.is_empty() => continue,
                    Ok(bytes) => {
                        self.pending = bytes;
                        break;
                    }
                    Err(StreamError::Closed) => {
                        self.finish();
                        return Ok(0);
                    }
                    Err(StreamError::LastOperationFailed(e)) => {
                        let message = e.to_debug_string();
                        self.finish();
                        return Err(io::Error::other(message));
                    }
                }
            }
        }
        let available = &self.pending[self.pending_pos..];
        let n = available.len().min(buf.len());
        buf[..n].copy_from_slice(&available[..n]);
        self.pending_pos += n;
        Ok(n)
    }
}

/// Where the bytes of a [`Body`] come from.
enum Source {
    /// No bytes.
    Empty,
    /// Bytes already in memory.
    Bytes(Vec<u8>),
    /// Read in chunks of [`CHUNK_BYTES`] while writing.
    Reader(Box<dyn Read>),
    /// Pulled one chunk at a time while writing.
    Chunks(Box<dyn Iterator<Item = io::Result<Vec<u8>>>>),
    /// Another body from the host, forwarded chunk by chunk.
    Incoming(IncomingBody),
}

/// A body the function sends: the body of a [`Response`](crate::Response) or
/// of an outbound request.
///
/// In-memory bodies come from `&'static str`, `String`, `Vec<u8>` and
/// `&'static [u8]` (through `From`), or [`Body::json`]. Streamed bodies come
/// from [`Body::from_reader`], [`Body::from_chunks`] or an [`IncomingBody`];
/// they are written as they are produced, so a 50 MiB echo holds a few
/// 64 KiB chunks at a time.
///
/// A body may carry a content-type hint (`text/plain; charset=utf-8` for
/// strings, `application/json` for [`Body::json`]); it is used when the
/// message has no `content-type` header of its own.
pub struct Body {
    /// The bytes.
    source: Source,
    /// Used as `content-type` when the message sets none.
    content_type: Option<&'static str>,
}

impl fmt::Debug for Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.source {
            Source::Empty => "empty",
            Source::Bytes(_) => "bytes",
            Source::Reader(_) => "reader",
            Source::Chunks(_) => "chunks",
            Source::Incoming(_) => "incoming",
        };
        f.debug_struct("Body")
            .field("source", &kind)
            .field("len", &self.len())
            .field("content_type", &self.content_type)
            .finish()
    }
}

/// Text content type used for string bodies.
pub(crate) const TEXT_PLAIN: &str = "text/plain; charset=utf-8";
/// JSON content type.
pub(crate) const APPLICATION_JSON: &str = "application/json";

impl Body {
    /// A body with no bytes.
    pub fn empty() -> Self {
        Body { source: Source::Empty, content_type: None }
    }

    /// A body streamed from `reader`, read in chunks of [`CHUNK_BYTES`] while
    /// it is written. A read error aborts the message (the peer sees an
    /// incomplete body).
    pub fn from_reader(reader: impl Read + 'static) -> Self {
        Body { source: Source::Reader(Box::new(reader)), content_type: None }
    }

    /// A body made of the chunks `chunks` yields, each written as it is
    /// produced. An `Err` item aborts the message (the peer sees an
    /// incomplete body) and is logged to stderr.
    pub fn from_chunks<I, E>(chunks: I) -> Self
    where
        I: IntoIterator<Item = Result<Vec<u8>, E>>,
        I::IntoIter: 'static,
        E: fmt::Display,
    {
        let chunks = chunks.into_iter().map(|chunk| chunk.map_err(|e| io::Error::other(e.to_string())));
        Body { source: Source::Chunks(Box::new(chunks)), content_type: None }
    }

    /// `value` serialised as JSON, with the hint `application/json`.
    pub fn json<T: Serialize + ?Sized>(value: &T) -> Result<Self, serde_json::Error> {
        Ok(Body { source: Source::Bytes(serde_json::to_vec(value)?), content_type: Some(APPLICATION_JSON) })
    }

    /// Replaces the content-type hint (used only when the message has no
    /// `content-type` header).
    pub fn with_content_type(mut self, content_type: &'static str) -> Self {
        self.content_type = Some(content_type);
        self
    }

    /// The content-type hint, if any.
    pub fn content_type(&self) -> Option<&'static str> {
        self.content_type
    }

    /// The length in bytes when it is known up front (empty and in-memory
    /// bodies); `None` for streamed bodies.
    pub fn len(&self) -> Option<u64> {
        match &self.source {
            Source::Empty => Some(0),
            Source::Bytes(bytes) => Some(bytes.len() as u64),
            Source::Reader(_) | Source::Chunks(_) | Source::Incoming(_) => None,
        }
    }

    /// Whether the body is known to have no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == Some(0)
    }

    /// Writes the body to `stream`, chunk by chunk, then flushes it. The
    /// caller finishes (or, on error, drops) the `outgoing-body`.
    pub(crate) async fn write_to(self, stream: &OutputStream) -> io::Result<()> {
        match self.source {
            Source::Empty => {}
            Source::Bytes(bytes) => write_all(stream, &bytes).await?,
            Source::Reader(mut reader) => {
                let mut buf = vec![0u8; CHUNK_BYTES];
                loop {
                    let n = match reader.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(e),
                    };
                    write_all(stream, &buf[..n]).await?;
                }
            }
            Source::Chunks(chunks) => {
                for chunk in chunks {
                    write_all(stream, &chunk?).await?;
                }
            }
            Source::Incoming(mut incoming) => {
                while let Some(chunk) = incoming.next_chunk().await {
                    write_all(stream, &chunk?).await?;
                }
            }
        }
        flush(stream).await
    }
}

impl Default for Body {
    fn default() -> Self {
        Body::empty()
    }
}

impl From<()> for Body {
    fn from((): ()) -> Self {
        Body::empty()
    }
}

impl From<Vec<u8>> for Body {
    fn from(bytes: Vec<u8>) -> Self {
        Body { source: Source::Bytes(bytes), content_type: None }
    }
}

impl From<&'static [u8]> for Body {
    fn from(bytes: &'static [u8]) -> Self {
        Body::from(bytes.to_vec())
    }
}

impl From<String> for Body {
    fn from(text: String) -> Self {
        Body { source: Source::Bytes(text.into_bytes()), content_type: Some(TEXT_PLAIN) }
    }
}

impl From<&'static str> for Body {
    fn from(text: &'static str) -> Self {
        Body::from(text.to_owned())
    }
}

impl From<IncomingBody> for Body {
    fn from(incoming: IncomingBody) -> Self {
        Body { source: Source::Incoming(incoming), content_type: None }
    }
}

/// Turns a failed write into an `io::Error`; `Closed` means the peer went
/// away.
fn write_error(e: StreamError) -> io::Error {
    match e {
        StreamError::Closed => {
            io::Error::new(io::ErrorKind::BrokenPipe, "the host closed the stream (the peer went away)")
        }
        StreamError::LastOperationFailed(e) => io::Error::other(e.to_debug_string()),
    }
}

/// Writes all of `data`, never more than `check-write` allows, waiting on the
/// stream's pollable when the budget is zero.
async fn write_all(stream: &OutputStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        let budget = stream.check_write().map_err(write_error)?;
        if budget == 0 {
            wait_for(stream.subscribe()).await;
            continue;
        }
        let n = usize::try_from(budget).unwrap_or(usize::MAX).min(data.len());
        stream.write(&data[..n]).map_err(write_error)?;
        data = &data[n..];
    }
    Ok(())
}

/// Flushes the stream and waits until the flush completed (the
/// `blocking-flush` protocol, without blocking other futures).
async fn flush(stream: &OutputStream) -> io::Result<()> {
    stream.flush().map_err(write_error)?;
    // `check-write` answers 0 while the flush is in progress; when the host
    // completed it at once (the common case for small bodies), no pollable
    // and no trip through the executor are needed.
    while stream.check_write().map_err(write_error)? == 0 {
        wait_for(stream.subscribe()).await;
    }
    Ok(())
}
