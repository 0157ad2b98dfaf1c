//! A body fed frame by frame through a bounded channel, so data streams with backpressure.
//!
//! The bound is in bytes as well as frames: a client that never reads (an HTTP/2 stream whose
//! window stays shut) or an upstream that never takes a request body holds at most
//! [`BYTES_IN_FLIGHT`] (plus the one frame that crossed it) per body, and the reader of the
//! other side stops reading its socket, so flow control reaches the peer.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::Frame;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

/// Why a streamed body ended early.
#[derive(Debug, thiserror::Error)]
#[error("stream reset: {0}")]
pub struct BodyReset(pub String);

pub type FrameResult = Result<Frame<Bytes>, BodyReset>;

/// Frames buffered per body before the sender waits.
const FRAMES_IN_FLIGHT: usize = 16;

/// Body bytes buffered per hop before the sender waits: enough to keep a loopback or LAN link
/// busy, little enough that a client holding a hundred streams shut costs a few megabytes.
pub const BYTES_IN_FLIGHT: usize = 64 * 1024;

/// Bytes a hop may hold; each frame carries its share until the reader takes it.
#[derive(Clone)]
pub struct Budget(Arc<Semaphore>);

impl Budget {
    pub fn new() -> Budget {
        Budget(Arc::new(Semaphore::new(BYTES_IN_FLIGHT)))
    }

    /// Waits until `bytes` fit (a frame larger than the whole budget waits for all of it).
    pub async fn reserve(&self, bytes: usize) -> Option<OwnedSemaphorePermit> {
        let share = share(bytes)?;
        // The semaphore is never closed, so the acquisition only waits.
        self.0.clone().acquire_many_owned(share).await.ok()
    }

    /// The share of `bytes` if they fit now (`Ok(None)`: nothing to hold), `Err` if they would
    /// have to wait.
    fn try_reserve(&self, bytes: usize) -> Result<Option<OwnedSemaphorePermit>, ()> {
        match share(bytes) {
            None => Ok(None),
            Some(share) => self
                .0
                .clone()
                .try_acquire_many_owned(share)
                .map(Some)
                .map_err(drop),
        }
    }
}

/// The permits `bytes` take: none for none, at most the whole budget.
fn share(bytes: usize) -> Option<u32> {
    (bytes > 0).then(|| u32::try_from(bytes.min(BYTES_IN_FLIGHT)).unwrap_or(u32::MAX))
}

/// The data bytes of a frame (trailers and resets have none).
fn data_len(frame: &FrameResult) -> usize {
    match frame {
        Ok(frame) => frame.data_ref().map_or(0, Bytes::len),
        Err(_) => 0,
    }
}

/// The sending end of a [`ChannelBody`].
pub struct BodySender {
    frames: mpsc::Sender<(FrameResult, Option<OwnedSemaphorePermit>)>,
    budget: Budget,
    reset: oneshot::Sender<BodyReset>,
}

/// The body's reader is gone.
#[derive(Debug)]
pub struct Gone;

impl BodySender {
    /// Sends `frame` once the body's budget has room for it.
    pub async fn send(&self, frame: FrameResult) -> Result<(), Gone> {
        let share = tokio::select! {
            share = self.budget.reserve(data_len(&frame)) => share,
            () = self.frames.closed() => return Err(Gone),
        };
        self.frames.send((frame, share)).await.map_err(|_| Gone)
    }

    /// Sends `frame` if the body has room for it now; gives it back if it would have to wait.
    pub fn try_send(&self, frame: FrameResult) -> Result<(), FrameResult> {
        let Ok(share) = self.budget.try_reserve(data_len(&frame)) else {
            return Err(frame);
        };
        self.frames
            .try_send((frame, share))
            .map_err(|error| error.into_inner().0)
    }

    /// Ends the body in error ahead of whatever frames still wait (they may never be taken: a
    /// client that keeps its window shut), so the reader resets the stream rather than take
    /// the body as complete.
    pub fn abort(self, reason: BodyReset) {
        let _ = self.reset.send(reason);
    }

    /// Completes when the body's reader is gone.
    pub async fn closed(&self) {
        self.frames.closed().await;
    }
}

pub struct ChannelBody {
    /// `None`: a body known to be empty, so hyper sends `content-length: 0` where one belongs
    /// (as Envoy's codec does for a reply without a body) instead of chunked encoding.
    receiver: Option<mpsc::Receiver<(FrameResult, Option<OwnedSemaphorePermit>)>>,
    /// A reset that goes ahead of the frames; `None` once the sender is gone without one.
    reset: Option<oneshot::Receiver<BodyReset>>,
}

pub fn channel() -> (BodySender, ChannelBody) {
    let (frames, receiver) = mpsc::channel(FRAMES_IN_FLIGHT);
    let (reset, resets) = oneshot::channel();
    (
        BodySender {
            frames,
            budget: Budget::new(),
            reset,
        },
        ChannelBody {
            receiver: Some(receiver),
            reset: Some(resets),
        },
    )
}

/// A body that ends at once.
pub fn empty() -> ChannelBody {
    ChannelBody {
        receiver: None,
        reset: None,
    }
}

/// A body of one frame, already sent (the caller gives its `content-length`).
pub fn full(data: Bytes) -> ChannelBody {
    let (sender, body) = channel();
    // A fresh channel has room for FRAMES_IN_FLIGHT frames; this one's bytes are not counted.
    let _ = sender.frames.try_send((Ok(Frame::data(data)), None));
    body
}

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = BodyReset;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<FrameResult>> {
        if let Some(reset) = &mut self.reset {
            match Pin::new(reset).poll(cx) {
                Poll::Ready(Ok(reason)) => {
                    self.reset = None;
                    self.receiver = None;
                    return Poll::Ready(Some(Err(reason)));
                }
                // The sender went without a reset: the frames tell how the body ends.
                Poll::Ready(Err(_)) => self.reset = None,
                Poll::Pending => {}
            }
        }
        match &mut self.receiver {
            // The frame's share of the budget is given back as hyper takes it.
            Some(receiver) => receiver
                .poll_recv(cx)
                .map(|frame| frame.map(|(frame, _share)| frame)),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.receiver.is_none()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self.receiver {
            Some(_) => http_body::SizeHint::default(),
            None => http_body::SizeHint::with_exact(0),
        }
    }
}
