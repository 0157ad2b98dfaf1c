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
    /// `None`: a body known to be empty, so hyper sends `content-length: 0` where one belongs
    /// (as Envoy's codec does for a reply without a body) instead of chunked encoding.
    receiver: Option<mpsc::Receiver<FrameResult>>,
}

pub fn channel() -> (mpsc::Sender<FrameResult>, ChannelBody) {
    let (sender, receiver) = mpsc::channel(FRAMES_IN_FLIGHT);
    (
        sender,
        ChannelBody {
            receiver: Some(receiver),
        },
    )
}

/// A body that ends at once.
pub fn empty() -> ChannelBody {
    ChannelBody { receiver: None }
}

/// A body of one frame, already sent (the caller gives its `content-length`).
pub fn full(data: Bytes) -> ChannelBody {
    let (sender, body) = channel();
    // A fresh channel has room for FRAMES_IN_FLIGHT frames.
    let _ = sender.try_send(Ok(Frame::data(data)));
    body
}

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = BodyReset;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<FrameResult>> {
        match &mut self.receiver {
            Some(receiver) => receiver.poll_recv(cx),
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
