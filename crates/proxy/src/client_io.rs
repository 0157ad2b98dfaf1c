//! A client connection as the server reads it: it must send its first bytes in time, and an
//! HTTP/2 client must stay within Envoy's flood limits (`h2_guard::FrameLimits`).
//!
//! hyper's header-read timeout covers a request head that is slow or never comes on an HTTP/1.1
//! connection, but not the first bytes of a connection: until they arrive, the server cannot tell
//! HTTP/1.1 from HTTP/2 and hyper waits for them without a timer. A client that connects and sends
//! nothing would hold its connection (and a file descriptor) for good. hyper's HTTP/2 has no
//! flood limits at all.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

use crate::h2_guard::FrameLimits;

/// `inner`, whose reads fail with `TimedOut` if nothing arrived within the deadline, and with
/// `InvalidData` once the client floods (hyper then closes the connection).
pub struct ClientIo<I> {
    inner: I,
    /// Running until the first byte arrives, then gone.
    deadline: Option<Pin<Box<Sleep>>>,
    limits: FrameLimits,
}

impl<I> ClientIo<I> {
    pub fn new(inner: I, first_bytes_within: Duration) -> Self {
        Self {
            inner,
            deadline: Some(Box::pin(tokio::time::sleep(first_bytes_within))),
            limits: FrameLimits::default(),
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for ClientIo<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let read = Pin::new(&mut this.inner).poll_read(cx, buf);
        match read {
            Poll::Ready(Ok(())) => {
                let received = &buf.filled()[before..];
                if !received.is_empty() {
                    this.deadline = None;
                }
                if let Err(flood) = this.limits.received(received) {
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, flood)));
                }
            }
            Poll::Pending => {
                if let Some(deadline) = this.deadline.as_mut()
                    && deadline.as_mut().poll(cx).is_ready()
                {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the client sent nothing in time",
                    )));
                }
            }
            Poll::Ready(Err(_)) => {}
        }
        read
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for ClientIo<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let written = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = written {
            this.limits.sent(&buf[..n]);
        }
        written
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let written = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(mut n)) = written {
            for slice in bufs {
                if n == 0 {
                    break;
                }
                let taken = n.min(slice.len());
                this.limits.sent(&slice[..taken]);
                n -= taken;
            }
        }
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
