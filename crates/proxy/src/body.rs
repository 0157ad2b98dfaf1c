//! A body fed frame by frame through a bounded channel, so data streams with backpressure.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::Frame;
use tokio::sync::mpsc;

/// Why a streamed body ended early.
#[derive(Debug, thiserror::Error)]
#[error("stream reset: {0}")]
pub struct BodyReset(pub String);

pub type FrameResult = Result<Frame<Bytes>, BodyReset>;

/// Frames buffered per body before the sender waits: the bound on in-flight data.
const FRAMES_IN_FLIGHT: usize = 16;

pub struct ChannelBody {
    receiver: mpsc::Receiver<FrameResult>,
}

pub fn channel() -> (mpsc::Sender<FrameResult>, ChannelBody) {
    let (sender, receiver) = mpsc::channel(FRAMES_IN_FLIGHT);
    (sender, ChannelBody { receiver })
}

/// A body that ends at once.
pub fn empty() -> ChannelBody {
    channel().1
}

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = BodyReset;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<FrameResult>> {
        self.receiver.poll_recv(cx)
    }
}
