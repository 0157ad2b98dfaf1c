//! Outgoing HTTP/1.1 and HTTP/2 (h2c): upstream requests and plugin callouts.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use sluice_host::{CallResponse, HttpCallRequest};

use crate::body::ChannelBody;
use crate::headers::{fields_map, response_map, to_fields};
use crate::{Clusters, Target};

/// Where one request goes (see [`crate::PickedEndpoint::endpoint`] for how a cluster gives one).
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub address: SocketAddr,
    /// For messages, and the `Host` of a request that has none.
    pub host: std::rc::Rc<str>,
    /// HTTP/2 with prior knowledge (h2c) instead of HTTP/1.1.
    pub http2: bool,
}

/// An upstream or callout failure, described for logs and `response.code_details`.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {target}: {source}")]
    Connect {
        target: String,
        source: std::io::Error,
    },
    #[error("HTTP error talking to {target}: {source}")]
    Http {
        target: String,
        source: hyper::Error,
    },
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("connecting to {target} timed out after {after:?}")]
    ConnectTimeout { target: String, after: Duration },
    #[error("unknown cluster `{0}`")]
    UnknownCluster(String),
    #[error("bad request for {target}: {message}")]
    Request { target: String, message: String },
}

/// How Envoy's router reports an upstream that failed before its response began: the body of its
/// 503 and its `response.code_details`. A gRPC callout reports the same as its message,
/// `BODY{DETAILS}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResetBeforeResponse {
    /// Envoy's router: 502 for an upstream that does not speak HTTP (a protocol error), 503 for
    /// every other reset.
    pub status: u32,
    pub body: String,
    pub details: String,
}

impl ResetBeforeResponse {
    /// `reason` is Envoy's reset reason (`remote connection failure`, ...); `transport` what the
    /// socket said, in Envoy's words.
    pub fn new(reason: &str, transport: Option<&str>) -> Self {
        let mut details = format!(
            "upstream_reset_before_response_started{{{}",
            reason.replace(' ', "_")
        );
        if let Some(transport) = transport {
            details.push('|');
            details.push_str(&transport.replace(' ', "_"));
        }
        details.push('}');
        Self {
            status: if reason == "protocol error" { 502 } else { 503 },
            body: format!(
                "upstream connect error or disconnect/reset before headers. reset reason: {reason}"
            ),
            details,
        }
    }
}

impl ClientError {
    /// The failure as Envoy's router reports it.
    pub fn before_response(&self) -> ResetBeforeResponse {
        let transport = match self {
            // Envoy's words for a failed connect: `delayed connect error: <strerror>`.
            Self::Connect { source, .. } => {
                let text = source.to_string();
                let text = text
                    .split(" (os error")
                    .next()
                    .unwrap_or_default()
                    .to_string();
                Some(format!("delayed connect error: {text}"))
            }
            _ => None,
        };
        ResetBeforeResponse::new(self.reset_reason(), transport.as_deref())
    }
}

/// Whether a request may be sent again: an idempotent method (RFC 9110 9.2.2) and no body, so
/// that its head is the whole request.
fn replayable(request: &http::Request<ChannelBody>) -> bool {
    use http::Method;
    let idempotent = [
        Method::GET,
        Method::HEAD,
        Method::OPTIONS,
        Method::TRACE,
        Method::PUT,
        Method::DELETE,
    ];
    idempotent.contains(request.method()) && http_body::Body::is_end_stream(request.body())
}

/// Whether a request failed because its connection closed or reset before any answer.
fn closed_unanswered(error: &hyper::Error) -> bool {
    error.is_incomplete_message()
        || std::error::Error::source(error)
            .and_then(|source| source.downcast_ref::<std::io::Error>())
            .is_some_and(|io| {
                matches!(
                    io.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
                )
            })
}

impl Endpoint {
    /// A TCP connection to the endpoint, within `timeout`, with Nagle off.
    pub(crate) async fn connect(
        &self,
        timeout: Duration,
    ) -> Result<tokio::net::TcpStream, ClientError> {
        let stream = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(self.address))
            .await
            .map_err(|_| ClientError::ConnectTimeout {
                target: self.host.to_string(),
                after: timeout,
            })?
            .map_err(|source| ClientError::Connect {
                target: self.host.to_string(),
                source,
            })?;
        stream.set_nodelay(true).ok();
        Ok(stream)
    }
}

impl ClientError {
    /// Envoy's name for this kind of upstream failure (`StreamResetReason`), which Envoy puts in
    /// the 503 body clients see.
    pub fn reset_reason(&self) -> &'static str {
        match self {
            Self::Connect { .. } => "remote connection failure",
            Self::ConnectTimeout { .. } => "connection timeout",
            Self::Http { source, .. } if source.is_parse() => "protocol error",
            Self::Http { .. } => "connection termination",
            Self::Timeout(_) | Self::UnknownCluster(_) | Self::Request { .. } => "local reset",
        }
    }
}

/// Opens an HTTP/1.1 connection; the connection itself is driven by a local task.
async fn handshake<B>(
    stream: tokio::net::TcpStream,
    host: &str,
) -> Result<hyper::client::conn::http1::SendRequest<B>, ClientError>
where
    B: http_body::Body<Data = Bytes> + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    // Reads from the upstream in pieces no larger than a body hop's budget (the response head
    // too: Envoy's 60 KiB bound on it fits), so a client that stops reading holds little.
    let (sender, connection) = hyper::client::conn::http1::Builder::new()
        .max_buf_size(crate::body::BYTES_IN_FLIGHT)
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|source| ClientError::Http {
            target: host.to_string(),
            source,
        })?;
    tokio::task::spawn_local(async move {
        if let Err(error) = connection.with_upgrades().await {
            tracing::debug!("upstream connection ended: {error}");
        }
    });
    Ok(sender)
}

pub type Sender = hyper::client::conn::http1::SendRequest<ChannelBody>;

/// Most idle upstream connections one worker keeps.
pub const MAX_IDLE_CONNECTIONS: usize = 128;

type Http2Sender = hyper::client::conn::http2::SendRequest<ChannelBody>;

/// A worker's upstream connections: idle HTTP/1.1 keep-alive connections, one multiplexed
/// HTTP/2 connection per HTTP/2 endpoint, and the plugins' idle Redis connections.
#[derive(Default)]
pub struct Pool {
    idle: std::cell::RefCell<HashMap<SocketAddr, Vec<Sender>>>,
    http2: std::cell::RefCell<HashMap<SocketAddr, Http2Sender>>,
    pub redis: crate::redis::RedisPool,
}

impl Pool {
    fn idle_sender(&self, address: SocketAddr) -> Option<Sender> {
        let mut idle = self.idle.borrow_mut();
        let idle = idle.get_mut(&address)?;
        while let Some(sender) = idle.pop() {
            if sender.is_ready() {
                return Some(sender);
            }
        }
        None
    }

    /// Sends a request: over HTTP/2 on the endpoint's shared connection, or over HTTP/1.1 on an
    /// idle connection or a new one. An HTTP/1.1 connection comes back for [`Pool::put_back`].
    ///
    /// `rebuild` makes the request again, only in the rare case it has to be sent twice (see
    /// `send_http1`), so that no request pays for a copy it almost never needs.
    pub async fn send(
        &self,
        target: &Endpoint,
        request: http::Request<ChannelBody>,
        connect_timeout: Duration,
        rebuild: impl FnOnce() -> Option<http::Request<ChannelBody>>,
    ) -> Result<(http::Response<hyper::body::Incoming>, Option<Sender>), ClientError> {
        if target.http2 {
            return self
                .send_http2(target, request, connect_timeout)
                .await
                .map(|r| (r, None));
        }
        self.send_http1(target, request, connect_timeout, rebuild)
            .await
            .map(|(response, sender)| (response, Some(sender)))
    }

    async fn send_http2(
        &self,
        target: &Endpoint,
        request: http::Request<ChannelBody>,
        connect_timeout: Duration,
    ) -> Result<http::Response<hyper::body::Incoming>, ClientError> {
        let http = |source| ClientError::Http {
            target: target.host.to_string(),
            source,
        };
        let mut sender = self.http2_sender(target, connect_timeout).await?;
        sender.ready().await.map_err(http)?;
        sender.send_request(request).await.map_err(http)
    }

    /// The endpoint's shared HTTP/2 connection (upstream requests and gRPC calls multiplex on
    /// it), opened on first use or after it closed.
    pub async fn http2_sender(
        &self,
        target: &Endpoint,
        connect_timeout: Duration,
    ) -> Result<Http2Sender, ClientError> {
        let http = |source| ClientError::Http {
            target: target.host.to_string(),
            source,
        };
        let existing = self
            .http2
            .borrow()
            .get(&target.address)
            .filter(|sender| !sender.is_closed())
            .cloned();
        Ok(match existing {
            Some(sender) => sender,
            None => {
                let stream = target.connect(connect_timeout).await?;
                let (sender, connection) =
                    hyper::client::conn::http2::handshake(LocalExec, TokioIo::new(stream))
                        .await
                        .map_err(http)?;
                tokio::task::spawn_local(async move {
                    if let Err(error) = connection.await {
                        tracing::debug!("upstream HTTP/2 connection ended: {error}");
                    }
                });
                self.http2
                    .borrow_mut()
                    .insert(target.address, sender.clone());
                sender
            }
        })
    }

    /// Sends a request on an idle connection, or a new one. A request the reused connection never
    /// began to send (the upstream closed it meanwhile) is sent again on a new connection, and so
    /// is one without a body and with an idempotent method that the upstream closed the
    /// connection on without answering.
    async fn send_http1(
        &self,
        target: &Endpoint,
        request: http::Request<ChannelBody>,
        connect_timeout: Duration,
        rebuild: impl FnOnce() -> Option<http::Request<ChannelBody>>,
    ) -> Result<(http::Response<hyper::body::Incoming>, Sender), ClientError> {
        let http = |source| ClientError::Http {
            target: target.host.to_string(),
            source,
        };
        let mut request = request;
        if let Some(mut sender) = self.idle_sender(target.address) {
            let replayable = replayable(&request);
            match sender.try_send_request(request).await {
                Ok(response) => return Ok((response, sender)),
                Err(mut error) => match error.take_message() {
                    Some(unsent) => request = unsent,
                    None => {
                        let error = error.into_error();
                        // The upstream closed the kept-alive connection as the request went out
                        // (it never answered): sent again on a new connection, as nginx does,
                        // when sending it twice cannot change anything.
                        match (replayable && closed_unanswered(&error))
                            .then(rebuild)
                            .flatten()
                        {
                            Some(again) => request = again,
                            None => return Err(http(error)),
                        }
                    }
                },
            }
        }
        let stream = target.connect(connect_timeout).await?;
        let mut sender = handshake(stream, &target.host).await?;
        let response = sender.send_request(request).await.map_err(http)?;
        Ok((response, sender))
    }

    /// Returns a connection whose exchange finished, for the next request.
    pub fn put_back(&self, address: SocketAddr, sender: Sender) {
        let mut idle = self.idle.borrow_mut();
        let total: usize = idle.values().map(Vec::len).sum();
        if !sender.is_closed() && total < MAX_IDLE_CONNECTIONS {
            idle.entry(address).or_default().push(sender);
        }
    }
}

/// Builds the upstream request from the head the plugins left: origin-form with a Host header
/// for HTTP/1.1, absolute-form (scheme and authority as pseudo-headers) for HTTP/2.
pub fn upstream_request<B>(
    head: &sluice_abi::HeaderMap,
    authority: &str,
    body: B,
    http2: bool,
) -> Result<http::Request<B>, String> {
    let method = head.get(":method").unwrap_or(b"GET");
    let path = head.get_str(":path").unwrap_or_else(|| "/".into());
    let host = head
        .get_str(":authority")
        .filter(|a| !a.is_empty())
        .unwrap_or_else(|| authority.to_string());
    let uri = if http2 {
        format!("http://{host}{path}")
    } else {
        path
    };
    let mut request = http::Request::builder()
        .method(http::Method::from_bytes(method).map_err(|e| format!(":method: {e}"))?)
        .uri(uri)
        .body(body)
        .map_err(|e| e.to_string())?;
    *request.headers_mut() = to_fields(head);
    if !http2 {
        request.headers_mut().insert(
            http::header::HOST,
            host.parse()
                .map_err(|_| format!("bad :authority {host:?}"))?,
        );
    }
    Ok(request)
}

/// Executes a plugin's `proxy_http_call`: the whole answer, or an error (failure or timeout). A
/// call without a timeout (0) gets its cluster's, so that none waits for ever. The call goes
/// over the cluster's pooled connections in the cluster's protocol, as Envoy's async client
/// uses the cluster's connection pool: a callout per request does not open a connection each.
pub async fn callout(
    clusters: &Clusters,
    pool: &Pool,
    request: HttpCallRequest,
) -> Result<CallResponse, ClientError> {
    let picked = match clusters.pick(&request.upstream) {
        None => return Err(ClientError::UnknownCluster(request.upstream.clone())),
        Some(Target::Echo) => {
            let (headers, body) =
                crate::echo::answer(&request.headers, &request.body, &request.trailers);
            return Ok(CallResponse {
                headers,
                body,
                trailers: sluice_abi::HeaderMap::new(),
            });
        }
        Some(Target::Endpoint(picked)) => picked,
    };
    let timeout = call_timeout(request.timeout, picked.timeout);
    let exchange = async {
        let target = picked.endpoint().await?;
        let length = request.body.len();
        let body = if length == 0 {
            crate::body::empty()
        } else {
            crate::body::full(Bytes::from(request.body))
        };
        let mut http = upstream_request(&request.headers, &target.host, body, target.http2)
            .map_err(|message| ClientError::Request {
                target: target.host.to_string(),
                message,
            })?;
        http.headers_mut()
            .insert(http::header::CONTENT_LENGTH, length.into());
        // Never sent twice: as Envoy's async client has no retry policy, a connection closed
        // on the call fails it (a request the connection never began to send still goes on a
        // new one).
        let (response, connection) = pool
            .send(&target, http, picked.connect_timeout, || None)
            .await?;
        let http_error = |source| ClientError::Http {
            target: target.host.to_string(),
            source,
        };
        let (parts, body) = response.into_parts();
        let collected = body.collect().await.map_err(http_error)?;
        if let Some(connection) = connection {
            pool.put_back(target.address, connection);
        }
        let trailers = collected.trailers().map(fields_map).unwrap_or_default();
        Ok(CallResponse {
            headers: response_map(&parts),
            body: collected.to_bytes().to_vec(),
            trailers,
        })
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| ClientError::Timeout(timeout))?
}

/// How long a plugin's call may take: its own timeout, else its cluster's, else the default, so
/// that no call waits for ever.
pub(crate) fn call_timeout(own: Duration, cluster: Duration) -> Duration {
    [own, cluster]
        .into_iter()
        .find(|t| !t.is_zero())
        .unwrap_or(sluice_config::DEFAULT_TIMEOUT)
}

/// The first address `host` resolves to, within `timeout`: an Istio-style cluster name's host,
/// looked up when a call is made.
pub(crate) async fn resolve(
    host: &str,
    port: u16,
    timeout: Duration,
) -> Result<SocketAddr, ClientError> {
    let lookup = tokio::time::timeout(timeout, tokio::net::lookup_host((host, port)))
        .await
        .map_err(|_| ClientError::ConnectTimeout {
            target: host.to_string(),
            after: timeout,
        })?;
    lookup
        .and_then(|mut addresses| {
            addresses
                .next()
                .ok_or_else(|| std::io::Error::other("the name has no address"))
        })
        .map_err(|source| ClientError::Connect {
            target: host.to_string(),
            source,
        })
}

/// Runs hyper's connection tasks on the worker's own thread.
#[derive(Clone, Copy)]
pub(crate) struct LocalExec;

impl<F: std::future::Future + 'static> hyper::rt::Executor<F> for LocalExec {
    fn execute(&self, future: F) {
        tokio::task::spawn_local(future);
    }
}
