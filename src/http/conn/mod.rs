//! One accepted TCP connection as hyper reads it: the bytes pass through [`Conn`], which
//! keeps time and checks request heads before hyper sees them.
//!
//! - **Deadlines from acceptance.** A connection must deliver a complete request head
//!   within the header-read timeout of being accepted (HTTP/1, or HTTP/2's first header
//!   block, so a socket that sends nothing or only the HTTP/2 preface is closed), and each
//!   later head within that timeout of its first byte. With no request in flight and no
//!   head begun, a connection is idle; it is closed after the keep-alive timeout. An
//!   upgraded connection (a WebSocket) is no longer timed here: the socket has its own.
//! - **Heads before hyper.** HTTP/1 heads are held until complete and checked by
//!   [`super::head`]; only then are they handed on, followed by their body as framed. A
//!   malformed head (or a TLS handshake on this plain port) is not handed on: hyper gets a
//!   small well-formed request instead, which [`Shared::refusal`] lets the service answer
//!   with the envelope, in order after the requests before it, with `connection: close`.
//!   HTTP/2 frames pass as they come; only their headers are read, to time header blocks.
//! - **What the service reports.** [`Shared`] counts the requests in flight (a request ends
//!   when hyper drops its response body) and whether the connection was upgraded.

mod chunked;
mod frames;
mod shared;

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use super::error::ApiError;
use super::head::{self, Framing};
use chunked::Chunked;
use frames::Frames;
pub use shared::{InFlight, Shared, Tracked};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// What hyper reads in place of a refused head.
const STAND_IN: &[u8] = b"GET / HTTP/1.1\r\nhost: eddy\r\nconnection: close\r\n\r\n";
/// Input read (and dropped) after a refusal, so that closing does not reset the
/// connection before the client has read the answer.
const DISCARD_LIMIT: usize = 1 << 20;
/// What one read from the socket asks for.
const READ_SIZE: usize = 8 << 10;
/// How long a refused connection is drained after the answer.
const LINGER: Duration = Duration::from_secs(1);

/// The two clocks of a connection.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// For a request head, from acceptance or its first byte.
    pub head: Duration,
    /// For an idle keep-alive connection.
    pub idle: Duration,
}

/// Where a connection is in its byte stream.
enum Mode {
    /// Nothing read yet: HTTP/1, HTTP/2, or a TLS handshake?
    Sniff,
    Head,
    Body(u64),
    Chunked(Chunked),
    /// Head number `n` asked to switch protocols; its answer decides what follows.
    Upgrade(u64),
    /// A body that could not be followed: bytes pass unchecked (hyper fails on it and
    /// closes); the clocks still run.
    Opaque,
    H2(Frames),
    /// A head was refused; hyper is answering the stand-in and input is dropped.
    Refused {
        at: Instant,
        discarded: usize,
    },
    /// Upgraded: raw bytes, untimed.
    Through,
}

/// An accepted connection, between the socket and hyper.
pub struct Conn {
    /// Taken only when the connection is dropped (to linger after a refusal).
    io: Option<TcpStream>,
    shared: Arc<Shared>,
    timeouts: Timeouts,
    mode: Mode,
    /// Read but not yet handed to hyper; the first `checked` bytes may be.
    pending: BytesMut,
    checked: usize,
    /// How far the search for the end of the current head got.
    scanned: usize,
    /// Heads handed to hyper, stand-ins included.
    heads: u64,
    /// When the head being read began (acceptance, for the first).
    head_started: Option<Instant>,
    head_done: Instant,
    eof: bool,
    /// Dropped once upgraded: it and [`Shared`]'s waker would otherwise keep the finished
    /// connection task's memory (its waker's target) alive as long as the WebSocket.
    timer: Option<Pin<Box<Sleep>>>,
}

impl Conn {
    pub fn new(io: TcpStream, shared: Arc<Shared>, timeouts: Timeouts) -> Conn {
        let now = Instant::now();
        Conn {
            io: Some(io),
            shared,
            timeouts,
            mode: Mode::Sniff,
            pending: BytesMut::new(),
            checked: 0,
            scanned: 0,
            heads: 0,
            head_started: Some(now),
            head_done: now,
            eof: false,
            timer: None,
        }
    }

    fn io(&mut self) -> Pin<&mut TcpStream> {
        Pin::new(self.io.as_mut().expect("the socket is taken only on drop"))
    }

    /// Moves bytes from unchecked to checked, or changes mode; false if nothing can move
    /// until more input arrives or the service answers.
    fn advance(&mut self) -> bool {
        if self.shared.is_upgraded() && !matches!(self.mode, Mode::Through) {
            self.mode = Mode::Through;
            self.head_started = None;
            self.timer = None;
            self.shared.forget_reader();
        }
        if let Mode::Upgrade(n) = self.mode {
            // Not upgraded (see above): once the answer is sent, HTTP/1 goes on.
            if self.shared.finished() < n {
                return false;
            }
            self.mode = Mode::Head;
            return true;
        }
        let (checked, len) = (self.checked, self.pending.len());
        if checked == len {
            return false;
        }
        let rest = &self.pending[checked..];
        let verdict = match &mut self.mode {
            Mode::Sniff => {
                let n = rest.len().min(PREFACE.len());
                if rest[0] == 0x16 {
                    Err(head::tls_on_plain_port())
                } else if rest[..n] != PREFACE[..n] {
                    self.mode = Mode::Head;
                    Ok(true)
                } else if n == PREFACE.len() {
                    self.mode = Mode::H2(Frames::default());
                    Ok(true)
                } else {
                    Ok(false)
                }
            }
            Mode::Head => {
                let blank = rest
                    .iter()
                    .take_while(|b| matches!(b, b'\r' | b'\n'))
                    .count();
                if blank > 0 {
                    self.checked += blank;
                    return true;
                }
                let now = Instant::now();
                self.head_started.get_or_insert(now);
                match head::end_of_head(rest, self.scanned) {
                    None => {
                        self.scanned = rest.len();
                        head::check_partial(rest).map(|()| false)
                    }
                    Some(end) => head::check(&rest[..end]).map(|head| {
                        self.checked += end;
                        self.scanned = 0;
                        self.heads += 1;
                        self.head_started = None;
                        self.head_done = now;
                        self.mode = match head.framing {
                            Framing::Length(0) if head.upgrade => Mode::Upgrade(self.heads),
                            Framing::Length(0) => Mode::Head,
                            Framing::Length(n) => Mode::Body(n),
                            Framing::Chunked => Mode::Chunked(Chunked::new()),
                        };
                        true
                    }),
                }
            }
            Mode::Body(left) => {
                let take = (*left).min(rest.len() as u64);
                *left -= take;
                self.checked += take as usize;
                if *left == 0 {
                    self.mode = Mode::Head;
                }
                Ok(true)
            }
            Mode::Chunked(chunked) => {
                match chunked.feed(rest) {
                    Ok(n) => {
                        self.checked += n;
                        if *chunked == Chunked::Done {
                            self.mode = Mode::Head;
                        }
                    }
                    Err(_) => self.mode = Mode::Opaque,
                }
                Ok(true)
            }
            Mode::H2(frames) => {
                let now = Instant::now();
                let (ended, open) = frames.scan(rest);
                if ended {
                    self.head_started = None;
                    self.head_done = now;
                }
                if open == Some(true) {
                    self.head_started.get_or_insert(now);
                }
                self.checked = len;
                Ok(true)
            }
            Mode::Opaque | Mode::Through => {
                self.checked = len;
                Ok(true)
            }
            Mode::Refused { .. } => {
                self.pending.truncate(checked);
                Ok(false)
            }
            Mode::Upgrade(_) => Ok(false),
        };
        verdict.unwrap_or_else(|error| {
            self.refuse(error);
            true
        })
    }

    /// Hands hyper a stand-in request in place of the rest of the input, to be answered
    /// with `error`.
    fn refuse(&mut self, error: ApiError) {
        tracing::debug!(status = %error.status(), message = %error.message(), "refused a request head");
        self.pending.truncate(self.checked);
        self.pending.extend_from_slice(STAND_IN);
        self.checked = self.pending.len();
        self.heads += 1;
        self.shared.set_refusal(self.heads, error);
        self.head_started = None;
        self.mode = Mode::Refused {
            at: Instant::now(),
            discarded: 0,
        };
    }

    /// When the connection is to be closed if nothing changes.
    fn deadline(&self) -> Option<Instant> {
        match self.mode {
            Mode::Through | Mode::Upgrade(_) => None,
            Mode::Refused { at, .. } => Some(at + self.timeouts.head),
            _ => match self.head_started {
                Some(started) => Some(started + self.timeouts.head),
                None if self.shared.in_flight() => None,
                None => Some(self.head_done.max(self.shared.idle_since()) + self.timeouts.idle),
            },
        }
    }

    /// Nothing is read from the socket: the service has to answer first, or a refused
    /// connection has had its fill.
    fn waiting(&self) -> bool {
        match self.mode {
            Mode::Upgrade(_) => true,
            Mode::Refused { discarded, .. } => self.eof || discarded >= DISCARD_LIMIT,
            _ => false,
        }
    }

    /// Reads from the socket into `pending` (and drops it, once refused).
    fn fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        self.pending.reserve(READ_SIZE);
        let io = Pin::new(self.io.as_mut().expect("the socket is taken only on drop"));
        let n = ready!(tokio_util::io::poll_read_buf(io, cx, &mut self.pending))?;
        if let Mode::Refused { discarded, .. } = &mut self.mode {
            *discarded += n;
            self.pending.truncate(self.checked);
        }
        Poll::Ready(Ok(n))
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.checked > 0 && buf.remaining() > 0 {
                let n = this.checked.min(buf.remaining());
                buf.put_slice(&this.pending[..n]);
                this.pending.advance(n);
                this.checked -= n;
                if this.pending.is_empty() {
                    // Idle connections hold no buffer.
                    this.pending = BytesMut::new();
                }
                return Poll::Ready(Ok(()));
            }
            if this.advance() {
                continue;
            }
            if matches!(this.mode, Mode::Through) {
                // Everything read before is handed on: read straight into hyper's buffer.
                return this.io().poll_read(cx, buf);
            }
            let now = Instant::now();
            let wake_at = match this.deadline() {
                Some(deadline) if now >= deadline => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no complete request head in time, or idle too long",
                    )));
                }
                Some(deadline) => Some(deadline),
                // Look again later: the idle clock starts when the requests in flight end,
                // and nothing may poll this reader then.
                None if this.shared.in_flight() => Some(now + this.timeouts.idle),
                None => None,
            };
            if let Some(at) = wake_at {
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
                if timer.deadline() != at {
                    timer.as_mut().reset(at);
                }
                if timer.as_mut().poll(cx).is_ready() {
                    continue;
                }
            }
            let waiting = this.waiting();
            this.shared.register(cx.waker(), waiting);
            if waiting {
                // The service may have answered between the check and the registration.
                if this.advance() {
                    continue;
                }
                return Poll::Pending;
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            if ready!(this.fill(cx))? == 0 {
                this.eof = true;
            }
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().io().poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().io().poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.as_ref().is_some_and(|io| io.is_write_vectored())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().io().poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().io().poll_shutdown(cx)
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let (Mode::Refused { .. }, Some(io)) = (&self.mode, self.io.take())
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(linger(io));
        }
    }
}

/// Closes a connection that was answered without its request being read: sends FIN,
/// then reads and drops what the client still sends (for at most a second), so that
/// unread input does not turn the close into a reset that destroys the answer in flight.
pub async fn linger(mut io: TcpStream) {
    let _ = io.shutdown().await;
    let _ = tokio::time::timeout(LINGER, async {
        let mut sink = [0u8; 4096];
        let mut seen = 0;
        while let Ok(n @ 1..) = io.read(&mut sink).await {
            seen += n;
            if seen > DISCARD_LIMIT {
                break;
            }
        }
    })
    .await;
}
