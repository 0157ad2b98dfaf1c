//! A body fed frame by frame through a bounded channel, so data streams with backpressure.
//!
//! The bound is in bytes as well as frames: a client that never reads (an HTTP/2 stream whose
//! window stays shut) or an upstream that never takes a request body holds at most
//! [`BYTES_IN_FLIGHT`] (plus the one frame that crossed it) per body, and the reader of the
//! other side stops reading its socket, so flow control reaches the peer.
//!
//! Both ends live on one worker thread (hyper polls the body on the same `LocalSet` the
//! request's driver runs on), so the channel is one shared cell with two wakers: no atomics,
//! one allocation per body.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::poll_fn;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http_body::Frame;

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

/// What both ends of a channel see.
#[derive(Default)]
struct Shared {
    frames: VecDeque<Frame<Bytes>>,
    /// Data bytes in `frames`.
    bytes: usize,
    /// A reset that goes ahead of the frames.
    reset: Option<BodyReset>,
    /// The sender finished the body: once `frames` are taken, it is complete.
    finished: bool,
    sender_gone: bool,
    receiver_gone: bool,
    /// The reader waiting for a frame, and the sender waiting for room or for the reader to go.
    reader: Option<Waker>,
    writer: Option<Waker>,
}

impl Shared {
    /// Whether a frame of `size` data bytes may be queued now: within both bounds, or alone
    /// (a frame larger than the whole budget waits until nothing else is held).
    fn has_room(&self, size: usize) -> bool {
        self.frames.len() < FRAMES_IN_FLIGHT
            && (self.bytes == 0 || self.bytes + size <= BYTES_IN_FLIGHT)
    }

    fn push(&mut self, frame: Frame<Bytes>) {
        // A frame that waits behind another is copied out of the buffer it was cut from: a
        // slice of a codec's read buffer keeps that whole buffer alive, and the bound here is on
        // the bytes the frames hold. The frame the reader takes next passes uncopied.
        let frame = if self.frames.is_empty() {
            frame
        } else {
            frame.map_data(|data| Bytes::copy_from_slice(&data))
        };
        self.bytes += frame.data_ref().map_or(0, Bytes::len);
        self.frames.push_back(frame);
        if let Some(reader) = self.reader.take() {
            reader.wake();
        }
    }
}

/// The sending end of a [`ChannelBody`].
pub struct BodySender(Rc<RefCell<Shared>>);

/// The body's reader is gone.
#[derive(Debug)]
pub struct Gone;

impl BodySender {
    /// Sends `frame` once the body has room for it.
    pub async fn send(&self, frame: FrameResult) -> Result<(), Gone> {
        let mut frame = Some(frame);
        poll_fn(|cx| match frame.take() {
            Some(next) => match self.offer(next) {
                Ok(result) => Poll::Ready(result),
                Err(next) => {
                    frame = Some(next);
                    self.0.borrow_mut().writer = Some(cx.waker().clone());
                    Poll::Pending
                }
            },
            None => Poll::Ready(Ok(())),
        })
        .await
    }

    /// Sends `frame` if the body has room for it now; gives it back if it would have to wait.
    pub fn try_send(&self, frame: FrameResult) -> Result<(), FrameResult> {
        match self.offer(frame) {
            Ok(_) => Ok(()),
            Err(frame) => Err(frame),
        }
    }

    /// `Ok` with the outcome when the frame was taken or can never be, `Err` with the frame
    /// when it has to wait for room.
    fn offer(&self, frame: FrameResult) -> Result<Result<(), Gone>, FrameResult> {
        let mut shared = self.0.borrow_mut();
        if shared.receiver_gone {
            return Ok(Err(Gone));
        }
        match frame {
            Err(reset) => {
                shared.reset = Some(reset);
                if let Some(reader) = shared.reader.take() {
                    reader.wake();
                }
                Ok(Ok(()))
            }
            Ok(frame) => {
                if !shared.has_room(frame.data_ref().map_or(0, Bytes::len)) {
                    return Err(Ok(frame));
                }
                shared.push(frame);
                Ok(Ok(()))
            }
        }
    }

    /// Ends the body in error ahead of whatever frames still wait (they may never be taken: a
    /// client that keeps its window shut), so the reader resets the stream rather than take
    /// the body as complete.
    pub fn abort(self, reason: BodyReset) {
        let mut shared = self.0.borrow_mut();
        shared.reset = Some(reason);
        if let Some(reader) = shared.reader.take() {
            reader.wake();
        }
    }

    /// Ends the body: after the frames already sent, the reader sees it complete. A sender
    /// dropped without it ends the body in error instead, so a body cut short (its stream
    /// ended, its peer left) is never taken for a whole one: hyper then resets the stream or
    /// closes the connection rather than end a chunked body cleanly.
    pub fn finish(self) {
        self.0.borrow_mut().finished = true;
    }

    /// Completes when the body's reader is gone.
    pub async fn closed(&self) {
        poll_fn(|cx| {
            let mut shared = self.0.borrow_mut();
            if shared.receiver_gone {
                Poll::Ready(())
            } else {
                shared.writer = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await;
    }
}

impl Drop for BodySender {
    fn drop(&mut self) {
        let mut shared = self.0.borrow_mut();
        shared.sender_gone = true;
        if !shared.finished && shared.reset.is_none() {
            shared.reset = Some(BodyReset("the body was cut off before its end".into()));
        }
        if let Some(reader) = shared.reader.take() {
            reader.wake();
        }
    }
}

pub struct ChannelBody(Source);

enum Source {
    /// A body known to be empty, so hyper sends `content-length: 0` where one belongs (as
    /// Envoy's codec does for a reply without a body) instead of chunked encoding.
    Empty,
    /// One frame, already complete.
    Full(Bytes),
    Channel(Rc<RefCell<Shared>>),
}

pub fn channel() -> (BodySender, ChannelBody) {
    let shared = Rc::new(RefCell::new(Shared::default()));
    (
        BodySender(shared.clone()),
        ChannelBody(Source::Channel(shared)),
    )
}

/// A body that ends at once.
pub fn empty() -> ChannelBody {
    ChannelBody(Source::Empty)
}

/// A body of one frame, already sent (the caller gives its `content-length`).
pub fn full(data: Bytes) -> ChannelBody {
    ChannelBody(Source::Full(data))
}

impl Drop for ChannelBody {
    fn drop(&mut self) {
        if let Source::Channel(shared) = &self.0 {
            let mut shared = shared.borrow_mut();
            shared.receiver_gone = true;
            // Nobody will take them: the memory goes now, not when the sender ends.
            shared.frames.clear();
            shared.bytes = 0;
            if let Some(writer) = shared.writer.take() {
                writer.wake();
            }
        }
    }
}

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = BodyReset;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<FrameResult>> {
        let Source::Channel(shared) = &self.0 else {
            return match std::mem::replace(&mut self.0, Source::Empty) {
                Source::Full(data) => Poll::Ready(Some(Ok(Frame::data(data)))),
                _ => Poll::Ready(None),
            };
        };
        let mut shared = shared.borrow_mut();
        if let Some(reset) = shared.reset.take() {
            drop(shared);
            self.0 = Source::Empty;
            return Poll::Ready(Some(Err(reset)));
        }
        if let Some(frame) = shared.frames.pop_front() {
            shared.bytes -= frame.data_ref().map_or(0, Bytes::len);
            if let Some(writer) = shared.writer.take() {
                writer.wake();
            }
            return Poll::Ready(Some(Ok(frame)));
        }
        if shared.sender_gone {
            return Poll::Ready(None);
        }
        shared.reader = Some(cx.waker().clone());
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.0, Source::Empty)
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self.0 {
            Source::Empty => http_body::SizeHint::with_exact(0),
            _ => http_body::SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn data(bytes: usize) -> FrameResult {
        Ok(Frame::data(Bytes::from(vec![b'x'; bytes])))
    }

    #[tokio::test]
    async fn the_sender_waits_for_room_in_frames_and_bytes() {
        let (sender, mut body) = channel();
        for _ in 0..FRAMES_IN_FLIGHT {
            assert!(sender.try_send(data(1)).is_ok());
        }
        assert!(sender.try_send(data(1)).is_err(), "frames are bounded");
        for _ in 0..FRAMES_IN_FLIGHT {
            body.frame().await.unwrap().unwrap();
        }
        assert!(sender.try_send(data(BYTES_IN_FLIGHT - 10)).is_ok());
        assert!(sender.try_send(data(11)).is_err(), "bytes are bounded");
        assert!(sender.try_send(data(10)).is_ok());
        body.frame().await.unwrap().unwrap();
        body.frame().await.unwrap().unwrap();
        assert!(
            sender.try_send(data(4 * BYTES_IN_FLIGHT)).is_ok(),
            "a frame larger than the budget goes alone"
        );
        assert!(sender.try_send(data(1)).is_err());
    }

    #[tokio::test]
    async fn a_reset_goes_ahead_of_waiting_frames_and_a_dropped_reader_ends_the_sender() {
        let (sender, mut body) = channel();
        sender.try_send(data(5)).unwrap();
        sender.abort(BodyReset("gone".into()));
        assert!(body.frame().await.unwrap().is_err());
        assert!(body.frame().await.is_none());

        let (sender, body) = channel();
        sender.try_send(data(BYTES_IN_FLIGHT)).unwrap();
        drop(body);
        assert!(sender.send(data(1)).await.is_err());
        sender.closed().await;
    }

    #[tokio::test]
    async fn a_frame_that_waits_behind_another_keeps_no_larger_buffer_alive() {
        let codec_buffer = Bytes::from(vec![b'x'; 1 << 20]);
        let inside = |data: &Bytes| codec_buffer.as_ptr_range().contains(&data.as_ptr());
        let (sender, mut body) = channel();
        sender
            .try_send(Ok(Frame::data(codec_buffer.slice(..10))))
            .unwrap();
        sender
            .try_send(Ok(Frame::data(codec_buffer.slice(10..20))))
            .unwrap();
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        let second = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert!(inside(&first), "the frame taken next is not copied");
        assert!(!inside(&second), "a waiting frame holds its own bytes only");
        assert_eq!(second, codec_buffer.slice(10..20));
    }

    #[tokio::test]
    async fn a_waiting_sender_resumes_when_the_reader_takes_a_frame() {
        let (sender, mut body) = channel();
        sender.try_send(data(BYTES_IN_FLIGHT)).unwrap();
        let (sent, read) = tokio::join!(sender.send(data(7)), async {
            let first = body.frame().await.unwrap().unwrap();
            let second = body.frame().await.unwrap().unwrap();
            (
                first.into_data().unwrap().len(),
                second.into_data().unwrap().len(),
            )
        });
        assert!(sent.is_ok());
        assert_eq!(read, (BYTES_IN_FLIGHT, 7));
        sender.finish();
        assert!(body.frame().await.is_none());
    }

    #[tokio::test]
    async fn a_sender_dropped_before_the_end_cuts_the_body_off() {
        let (sender, mut body) = channel();
        sender.try_send(data(3)).unwrap();
        drop(sender);
        assert!(
            body.frame().await.unwrap().is_err(),
            "a body cut short is an error, never a complete body"
        );
        assert!(body.frame().await.is_none());

        let (sender, mut body) = channel();
        sender.try_send(data(3)).unwrap();
        sender.finish();
        assert!(body.frame().await.unwrap().is_ok());
        assert!(body.frame().await.is_none(), "a finished body ends cleanly");
    }
}
