//! What a connection and the requests served on it tell each other: how many requests
//! are in flight (a request ends when hyper drops its response body), when the last one
//! ended, whether the connection was upgraded, and the error a refused head's stand-in
//! request is to be answered with.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use hyper::body::{Body, Frame, SizeHint};
use tokio::time::Instant;

use crate::http::error::ApiError;

/// What a connection and the requests served on it share.
pub struct Shared {
    epoch: Instant,
    started: AtomicU64,
    finished: AtomicU64,
    /// When the last request finished, in milliseconds after `epoch`.
    finished_at_ms: AtomicU64,
    upgraded: AtomicBool,
    /// The reader, woken when a request ends only while it waits for that (an upgrade's
    /// answer, a refusal's): an unconditional wake would poll every connection once more
    /// per request.
    waker: AtomicWaker,
    reader_waits: AtomicBool,
    /// The number of the stand-in request (0: none), checked without the lock.
    refused: AtomicU64,
    /// The error the stand-in request is to be answered with.
    refusal: Mutex<Option<ApiError>>,
}

impl Shared {
    pub fn new() -> Arc<Shared> {
        Arc::new(Shared {
            epoch: Instant::now(),
            started: AtomicU64::new(0),
            finished: AtomicU64::new(0),
            finished_at_ms: AtomicU64::new(0),
            upgraded: AtomicBool::new(false),
            waker: AtomicWaker::new(),
            reader_waits: AtomicBool::new(false),
            refused: AtomicU64::new(0),
            refusal: Mutex::new(None),
        })
    }

    /// Called as each request starts: its number on the connection (from 1; HTTP/1 serves
    /// requests in order, so it is the number of its head) and a guard that marks it
    /// finished when dropped.
    pub fn begin(self: &Arc<Self>) -> (u64, InFlight) {
        let number = self.started.fetch_add(1, Ordering::AcqRel) + 1;
        (number, InFlight(self.clone()))
    }

    /// The error request `number` is to be answered with, if it is a refused head's stand-in.
    pub fn refusal(&self, number: u64) -> Option<ApiError> {
        if self.refused.load(Ordering::Acquire) != number {
            return None;
        }
        self.refusal
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    /// The service switched this connection to another protocol.
    pub fn upgraded(&self) {
        self.upgraded.store(true, Ordering::Release);
        self.waker.wake();
    }

    pub(super) fn is_upgraded(&self) -> bool {
        self.upgraded.load(Ordering::Acquire)
    }

    /// Requests finished so far.
    pub(super) fn finished(&self) -> u64 {
        self.finished.load(Ordering::SeqCst)
    }

    pub(super) fn set_refusal(&self, number: u64, error: ApiError) {
        *self.refusal.lock().unwrap_or_else(|p| p.into_inner()) = Some(error);
        self.refused.store(number, Ordering::Release);
    }

    /// Wakes `waker` when the connection is upgraded, and (if `waits`) when a request ends.
    pub(super) fn register(&self, waker: &std::task::Waker, waits: bool) {
        self.waker.register(waker);
        // SeqCst here and in InFlight::drop: a reader that registers and then finds the
        // request unfinished, and a request that finishes and then finds no reader
        // waiting, cannot both happen.
        self.reader_waits.store(waits, Ordering::SeqCst);
    }

    /// Drops the registered reader's waker (its task may have ended: an upgraded
    /// connection is read by the WebSocket's task from then on).
    pub(super) fn forget_reader(&self) {
        drop(self.waker.take());
    }

    pub(super) fn in_flight(&self) -> bool {
        self.started.load(Ordering::Acquire) > self.finished.load(Ordering::Acquire)
    }

    pub(super) fn idle_since(&self) -> Instant {
        self.epoch + Duration::from_millis(self.finished_at_ms.load(Ordering::Acquire))
    }
}

/// A request in flight; dropping it ends the request.
pub struct InFlight(Arc<Shared>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let shared = &self.0;
        let at = shared.epoch.elapsed().as_millis() as u64;
        shared.finished_at_ms.fetch_max(at, Ordering::AcqRel);
        shared.finished.fetch_add(1, Ordering::SeqCst);
        if shared.reader_waits.load(Ordering::SeqCst) {
            shared.waker.wake();
        }
    }
}

/// A response body that ends its request when hyper is done with it.
pub struct Tracked<B> {
    body: B,
    _in_flight: InFlight,
}

impl<B> Tracked<B> {
    pub fn new(body: B, in_flight: InFlight) -> Tracked<B> {
        Tracked {
            body,
            _in_flight: in_flight,
        }
    }
}

impl<B: Body + Unpin> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
