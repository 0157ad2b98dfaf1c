//! A request's exchange with its upstream endpoint, polled by the request's own loop: the request
//! goes out, then the response head and body come back as [`UpstreamEvent`]s. No task and no
//! channel per request; the cluster's timeout is the driver's to enforce (its one stream timer).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::body::ChannelBody;
use crate::client::{self, ClientError, Endpoint, Pool};

/// What the upstream did next.
pub enum UpstreamEvent {
    /// The response head, whether the body is empty, and for a 101 the upstream's side of the
    /// switched connection.
    Head(
        http::response::Parts,
        bool,
        Option<hyper::upgrade::OnUpgrade>,
    ),
    /// A frame, and whether it ends the body (only on HTTP/2: an HTTP/1.1 body's end comes as
    /// `End`, so plugins see it in one more, empty, body callback, as in Envoy).
    Frame(Frame<Bytes>, bool),
    End,
    /// How Envoy would report the failure, and what exactly happened (for the log).
    Failed(client::ResetBeforeResponse, String),
}

type Sending = Pin<
    Box<
        dyn Future<
            Output = Result<(http::Response<Incoming>, Option<client::Sender>), ClientError>,
        >,
    >,
>;

enum State {
    /// The request is going out; the head has not come back.
    Sending(Sending),
    /// The body is coming back, on `connection` (HTTP/1.1) for the next request once it ends.
    Receiving {
        body: Incoming,
        connection: Option<client::Sender>,
    },
    /// Ended, or failed: no more events.
    Over,
}

pub struct Upstream {
    state: State,
    pool: Rc<Pool>,
    address: SocketAddr,
    http2: bool,
    /// When the cluster's timeout ends the exchange, and that timeout.
    pub deadline: tokio::time::Instant,
    pub timeout: Duration,
}

impl Upstream {
    /// Starts sending `request` to `target`. `rebuild` makes the request again in the rare case
    /// it has to be sent twice (see [`Pool::send`]).
    pub fn start(
        pool: Rc<Pool>,
        target: Endpoint,
        request: http::Request<ChannelBody>,
        connect_timeout: Duration,
        timeout: Duration,
        rebuild: impl FnOnce() -> Option<http::Request<ChannelBody>> + 'static,
    ) -> Self {
        let (address, http2) = (target.address, target.http2);
        let sending = {
            let pool = pool.clone();
            Box::pin(async move { pool.send(&target, request, connect_timeout, rebuild).await })
        };
        Self {
            state: State::Sending(sending),
            pool,
            address,
            http2,
            deadline: tokio::time::Instant::now() + timeout,
            timeout,
        }
    }

    /// The next event; never completes once the exchange is over. Cancel-safe: what is in
    /// flight stays here when the caller's `select!` takes another branch.
    pub async fn next(&mut self) -> UpstreamEvent {
        let sent = match &mut self.state {
            State::Sending(sending) => sending.await,
            State::Receiving { body, .. } => {
                let event = match body.frame().await {
                    Some(Ok(frame)) => {
                        // Envoy's HTTP/1 codec delivers the end of a message apart from its last
                        // data (an empty end-of-stream body callback); HTTP/2 ends with a frame.
                        let last = self.http2 && body.is_end_stream();
                        return UpstreamEvent::Frame(frame, last);
                    }
                    Some(Err(error)) => UpstreamEvent::Failed(
                        client::ResetBeforeResponse::new("connection termination", None),
                        error.to_string(),
                    ),
                    None => UpstreamEvent::End,
                };
                if let (UpstreamEvent::End, State::Receiving { connection, .. }) =
                    (&event, std::mem::replace(&mut self.state, State::Over))
                {
                    self.reuse(connection);
                }
                return event;
            }
            State::Over => std::future::pending().await,
        };
        let (mut response, connection) = match sent {
            Ok(exchange) => exchange,
            Err(error) => {
                self.state = State::Over;
                return UpstreamEvent::Failed(error.before_response(), error.to_string());
            }
        };
        let switched = (response.status() == http::StatusCode::SWITCHING_PROTOCOLS)
            .then(|| hyper::upgrade::on(&mut response));
        // A switched connection is the client's from now on, never the pool's.
        let connection = connection.filter(|_| switched.is_none());
        let (parts, body) = response.into_parts();
        let end = body.is_end_stream();
        if end {
            self.state = State::Over;
            self.reuse(connection);
        } else {
            self.state = State::Receiving { body, connection };
        }
        UpstreamEvent::Head(parts, end, switched)
    }

    /// The exchange is complete: an HTTP/1.1 connection can carry the next request.
    fn reuse(&self, connection: Option<client::Sender>) {
        if let Some(connection) = connection {
            self.pool.put_back(self.address, connection);
        }
    }
}
