//! One request through the chain: reads the client's frames, feeds the sans-I/O stream, and
//! executes its steps (upstream request and body, response to the client, callouts) as they come.
//! Bodies stream frame by frame with bounded channels; nothing is buffered unless a plugin pauses.

use std::cell::Cell;
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use sluice_abi::{HeaderMap, PropertyValue};
use sluice_filter::{Step, Stream};
use sluice_host::HttpStream;
use tokio::sync::oneshot;

use crate::body::{self, BodyReset, BodySender, ChannelBody};
use crate::calls::Calls;
use crate::framing::Framing;
use crate::generation::Generation;
use crate::headers::{fields_map, request_map, response_map, status, to_fields};
use crate::runtime::WorkerState;
use crate::stats::Traffic;
use crate::upstream::{Upstream, UpstreamEvent};
use crate::{Target, client, echo};

/// One client connection: which listener took it, and the worker it runs on.
pub struct Connection {
    pub state: Rc<WorkerState>,
    /// Index of the listener in the config.
    pub listener: usize,
    pub peer: SocketAddr,
    /// Set on TLS listeners, once the handshake is done.
    pub tls: Option<crate::tls::TlsInfo>,
    /// What [`connection_properties`] says about this connection.
    pub properties: Rc<HashMap<String, PropertyValue>>,
    /// Streams running now, and since when there are none (for the idle timeout).
    streams: Cell<usize>,
    idle_since: Cell<tokio::time::Instant>,
}

/// The hyper service: starts the driver and waits for the response head it produces.
pub async fn handle(
    request: http::Request<Incoming>,
    connection: Rc<Connection>,
) -> Result<http::Response<ChannelBody>, Infallible> {
    if let Some(refused) = refuse_malformed(&request) {
        return Ok(refused);
    }
    let (head, head_rx) = oneshot::channel();
    // Boxed: a task's future is moved when it is spawned and as it completes, and the driver's
    // is a few kilobytes; a box is moved as one pointer.
    tokio::task::spawn_local(Box::pin(drive(request, connection, head)));
    Ok(head_rx.await.unwrap_or_else(|_| {
        let mut response = http::Response::new(body::empty());
        *response.status_mut() = http::StatusCode::BAD_GATEWAY;
        response
    }))
}

/// Envoy's answer to a request it will not pass on, before any plugin sees it: an HTTP/1.1
/// request without `Host` or an absolute-form target (400), or with a transfer coding besides `chunked` (501), and
/// `CONNECT` (404: no route takes it). The connection closes after the answer, as Envoy's does.
/// (A request with both `Content-Length` and `Transfer-Encoding` never gets here: hyper frames
/// it by `Transfer-Encoding`, drops `Content-Length` and closes the connection after it, as
/// RFC 9112 allows; Envoy answers 400.)
fn refuse_malformed(request: &http::Request<Incoming>) -> Option<http::Response<ChannelBody>> {
    use http::header::{CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
    let headers = request.headers();
    let (status, body) = if request.method() == http::Method::CONNECT {
        (http::StatusCode::NOT_FOUND, "")
    } else if request.version() != http::Version::HTTP_11 {
        return None;
    } else if !headers.contains_key(HOST) && request.uri().authority().is_none() {
        (http::StatusCode::BAD_REQUEST, "")
    } else if headers
        .get_all(TRANSFER_ENCODING)
        .iter()
        .any(|coding| !coding.as_bytes().eq_ignore_ascii_case(b"chunked"))
    {
        (http::StatusCode::NOT_IMPLEMENTED, "Not Implemented")
    } else {
        return None;
    };
    let mut response = http::Response::new(if body.is_empty() {
        body::empty()
    } else {
        body::full(bytes::Bytes::from_static(body.as_bytes()))
    });
    *response.status_mut() = status;
    let fields = response.headers_mut();
    fields.insert(CONTENT_LENGTH, http::HeaderValue::from(body.len()));
    if !body.is_empty() {
        fields.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain"),
        );
    }
    fields.insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("close"),
    );
    Some(response)
}

impl Connection {
    pub fn new(
        state: Rc<WorkerState>,
        listener: usize,
        peer: SocketAddr,
        local: SocketAddr,
        tls: Option<crate::tls::TlsInfo>,
    ) -> Self {
        Self {
            properties: connection_properties(peer, local, tls.as_ref()),
            state,
            listener,
            peer,
            tls,
            streams: Cell::new(0),
            idle_since: Cell::new(tokio::time::Instant::now()),
        }
    }

    /// Completes once the connection has had no stream for `timeout` (Envoy's idle timeout).
    pub async fn idle_for(&self, timeout: Duration) {
        loop {
            if self.streams.get() > 0 {
                // Busy: look again a whole timeout later; the last stream's end sets the mark.
                tokio::time::sleep(timeout).await;
                continue;
            }
            let deadline = self.idle_since.get() + timeout;
            if tokio::time::Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// Counts a stream on its connection for as long as it lives.
struct StreamCount(Rc<Connection>);

impl StreamCount {
    fn new(connection: &Rc<Connection>) -> Self {
        connection.streams.set(connection.streams.get() + 1);
        Self(connection.clone())
    }
}

impl Drop for StreamCount {
    fn drop(&mut self) {
        let left = self.0.streams.get().saturating_sub(1);
        self.0.streams.set(left);
        if left == 0 {
            self.0.idle_since.set(tokio::time::Instant::now());
        }
    }
}

/// The properties every stream of a connection shares: addresses and TLS facts.
pub(crate) fn connection_properties(
    peer: SocketAddr,
    local: SocketAddr,
    tls: Option<&crate::tls::TlsInfo>,
) -> Rc<HashMap<String, PropertyValue>> {
    let mut values: Vec<(&str, PropertyValue)> = vec![
        ("source.address", peer.to_string().into()),
        ("source.port", PropertyValue::Int(peer.port().into())),
        ("destination.address", local.to_string().into()),
        ("destination.port", PropertyValue::Int(local.port().into())),
        // Envoy has these for every connection: false and empty without TLS (sluice asks no
        // client certificate, so never mutual TLS).
        (
            "connection.requested_server_name",
            tls.and_then(|tls| tls.server_name.clone())
                .unwrap_or_default()
                .into(),
        ),
        ("connection.mtls", PropertyValue::Bool(false)),
    ];
    if let Some(tls) = tls {
        values.push(("connection.tls_version", tls.version.into()));
    }
    Rc::new(
        values
            .into_iter()
            .map(|(key, value)| (key.to_string(), value))
            .collect(),
    )
}

fn stream_info(
    connection: &Connection,
    protocol: &str,
    listener: &sluice_config::Listener,
    route: Option<&sluice_config::Route>,
) -> HttpStream {
    let mut info = HttpStream {
        connection: connection.properties.clone(),
        ..HttpStream::default()
    };
    info.properties
        .insert("request.protocol".to_string(), protocol.into());
    if let Some(route) = route {
        info.set_route(&listener.name, &route.name, &route.cluster);
    }
    info
}

thread_local! {
    /// xorshift64* state for request ids, seeded from the OS once per thread.
    static ID_STATE: Cell<u64> = Cell::new({
        let mut seed = [0u8; 8];
        getrandom::fill(&mut seed).unwrap_or_default();
        u64::from_le_bytes(seed) | 1
    });
}

fn next_random() -> u64 {
    ID_STATE.with(|state| {
        let mut x = state.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        state.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    })
}

/// A random UUID v4, for `x-request-id` (unique, not secret: a fast per-thread generator).
fn request_id() -> String {
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&next_random().to_le_bytes());
    bytes[8..].copy_from_slice(&next_random().to_le_bytes());
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = String::with_capacity(36);
    for (index, byte) in bytes.iter().enumerate() {
        if matches!(index, 4 | 6 | 8 | 10) {
            id.push('-');
        }
        id.push(char::from(HEX[usize::from(byte >> 4)]));
        id.push(char::from(HEX[usize::from(byte & 0x0f)]));
    }
    id
}

struct Driver {
    connection: Rc<Connection>,
    generation: Rc<Generation>,
    stream: Stream,
    head: Option<oneshot::Sender<http::Response<ChannelBody>>>,
    response_body: Option<BodySender>,
    upstream_body: Option<BodySender>,
    /// The exchange with the route's endpoint, while it lasts.
    upstream: Option<Upstream>,
    /// An event the upstream produced while the request body waited for room, handled next.
    held_upstream_event: Option<UpstreamEvent>,
    upstream_head_seen: bool,
    upstream_finished: bool,
    echo: Option<(HeaderMap, Vec<u8>, HeaderMap)>,
    /// The plugins' outbound calls, by plugin and token; aborted when the request ends.
    calls: Calls<(usize, u32)>,
    /// The status the client got, for the stats; `None` until a head was sent or after a reset.
    status: Option<u16>,
    /// For the access log: body bytes from the client and to it, and the upstream used.
    bytes_received: u64,
    bytes_sent: u64,
    /// The route the request took (the last one selected): its index in the listener.
    route: Option<usize>,
    /// The head `route` was selected on, until the plugins' head goes upstream: if they left
    /// it as it was, the route stands without a second match.
    routed_head: Option<HeaderMap>,
    upstream_address: Option<SocketAddr>,
    /// The upstream's side of a switched protocol (101), spliced to the client's at the end.
    upstream_switched: Option<hyper::upgrade::OnUpgrade>,
    /// The client's HTTP/1.x request body is still arriving: a response now closes the
    /// connection (`connection: close`), as Envoy's does.
    request_body_pending_http1: bool,
    /// The request is a `HEAD`: its answer's `content-length` describes no body.
    head_request: bool,
    /// The `content-length` promises sent upstream and to the client, held against the bodies.
    request_framing: Framing,
    response_framing: Framing,
}

async fn drive(
    request: http::Request<Incoming>,
    connection: Rc<Connection>,
    head: oneshot::Sender<http::Response<ChannelBody>>,
) {
    let _counted = StreamCount::new(&connection);
    let started = Instant::now();
    let began = std::time::SystemTime::now();
    let stats = connection.state.stats.clone();
    stats.request_started();
    let protocol = match request.version() {
        http::Version::HTTP_2 => "HTTP/2",
        http::Version::HTTP_10 => "HTTP/1.0",
        _ => "HTTP/1.1",
    };
    let mut request = request;
    let client_switch =
        crate::headers::is_upgrade(request.headers()).then(|| hyper::upgrade::on(&mut request));
    let (parts, mut body) = request.into_parts();
    let head_request = parts.method == http::Method::HEAD;
    let scheme = if connection.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let mut headers = request_map(&parts, scheme);
    // As Envoy's connection manager does before any filter runs.
    if headers.get("x-forwarded-proto").is_none() {
        headers.add("x-forwarded-proto", scheme);
    }
    if headers.get("x-request-id").is_none() {
        headers.add("x-request-id", request_id());
    }
    let generation = connection.state.generation.borrow().clone();
    let listener = &generation.config.config.listeners[connection.listener];
    let route = route_of(listener, &headers);
    let plan = generation.listeners[connection.listener].route(route);
    let (chain, blocked) = (plan.chain.clone(), plan.blocked_by.clone());
    let info = stream_info(
        &connection,
        protocol,
        listener,
        route.map(|index| &listener.routes[index]),
    );
    let mut driver = Driver {
        stream: Stream::new(chain, info),
        connection,
        generation: generation.clone(),
        head: Some(head),
        response_body: None,
        upstream_body: None,
        upstream: None,
        held_upstream_event: None,
        upstream_head_seen: false,
        upstream_finished: false,
        echo: None,
        calls: Calls::new(),
        bytes_received: 0,
        bytes_sent: 0,
        route,
        routed_head: Some(headers.clone()),
        upstream_address: None,
        upstream_switched: None,
        status: None,
        request_body_pending_http1: false,
        head_request,
        request_framing: Framing::default(),
        response_framing: Framing::default(),
    };
    let logged = driver
        .connection
        .state
        .access_log
        .is_some()
        .then(|| headers.clone());
    match blocked {
        // As Istio's fail-close for a module it could not fetch: this request would run the
        // plugin, so it is refused; the plugins' callbacks never see it.
        Some(plugin) => {
            tracing::debug!("503 for a request whose chain runs the unavailable plugin {plugin}");
            driver.refuse_unavailable(&plugin).await;
        }
        None => {
            let http1 = protocol != "HTTP/2";
            exchange(&mut driver, headers, &mut body, http1).await;
        }
    }
    // An exchange still going (the client left, a plugin answered) ends here.
    driver.upstream = None;
    driver.stream.finish();
    stats.plugin_failures(driver.stream.failures());
    stats.request_finished(driver.status, started.elapsed());
    let route_traffic = &driver.generation.listeners[driver.connection.listener]
        .route(driver.route)
        .traffic;
    route_traffic.started();
    route_traffic.answered(driver.status);
    if let (Some(log), Some(request)) = (&driver.connection.state.access_log, &logged) {
        log.write(&driver.access_record(request, protocol, began, started.elapsed()));
    }
    if driver.status == Some(101)
        && let (Some(client), Some(upstream)) = (client_switch, driver.upstream_switched.take())
    {
        tokio::task::spawn_local(splice(client, upstream));
    }
}

/// Runs the request through the chain and the upstream until the stream completes, the client
/// goes away, or it idles out.
async fn exchange(driver: &mut Driver, headers: HeaderMap, body: &mut Incoming, http1: bool) {
    let mut downstream_open = !body.is_end_stream();
    driver.request_body_pending_http1 = http1 && downstream_open;
    driver.stream.request_headers(headers, !downstream_open);
    // One timer per stream: activity only moves `last_activity`, and the timer checks it when it
    // fires, rather than re-arming a timer on every event.
    let idle_timeout = driver.generation.config.config.stream_idle_timeout;
    let idle = tokio::time::sleep(idle_timeout);
    tokio::pin!(idle);
    let mut last_activity = tokio::time::Instant::now();
    loop {
        driver.apply_steps().await;
        if driver.stream.is_complete() {
            break;
        }
        if let Some(event) = driver.held_upstream_event.take() {
            driver.upstream_event(event);
            continue;
        }
        // The one timer serves the idle timeout and the cluster's: it fires at the earlier.
        let mut wanted = last_activity + idle_timeout;
        if let Some(upstream) = &driver.upstream {
            wanted = wanted.min(upstream.deadline);
        }
        if wanted < idle.deadline() {
            idle.as_mut().reset(wanted);
        }
        let upstream_open = driver.upstream.is_some();
        let root_effects = driver.stream.root_effects();
        tokio::select! {
            () = root_effects => driver.stream.apply_root_effects(),
            frame = body.frame(), if downstream_open => match frame {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        downstream_open = !body.is_end_stream();
                        driver.bytes_received += data.len() as u64;
                        // Envoy's HTTP/1 codec delivers the end of a body apart from its last
                        // data, in an empty end-of-stream body callback; HTTP/2 ends with a frame.
                        if http1 {
                            driver.stream.request_data(data, false);
                            if !downstream_open {
                                driver.stream.request_data(Bytes::new(), true);
                            }
                        } else {
                            driver.stream.request_data(data, !downstream_open);
                        }
                    }
                    Err(frame) => {
                        downstream_open = false;
                        if let Ok(trailers) = frame.into_trailers() {
                            driver.stream.request_trailers(fields_map(&trailers));
                        }
                    }
                },
                None => {
                    downstream_open = false;
                    driver.stream.request_data(Bytes::new(), true);
                }
                Some(Err(error)) if malformed_body(&error) => {
                    // A body the codec cannot read (a bad chunk size, say): Envoy's 400, or a
                    // reset when the response began.
                    tracing::debug!("malformed request body: {error}");
                    driver.stream.local_reply_from_proxy(400, "http1.codec_error", "Bad Request");
                    driver.apply_steps().await;
                    break;
                }
                Some(Err(error)) => {
                    tracing::debug!("client went away: {error}");
                    break;
                }
            },
            event = next_upstream_event(&mut driver.upstream), if upstream_open => {
                driver.upstream_event(event);
            }
            ((plugin, token), answer) = driver.calls.answer(), if driver.calls.waiting() => {
                driver.stream.call_answer(plugin, token, answer);
            }
            () = client_gone(&mut driver.head, &driver.response_body) => {
                // The client reset its stream or closed its connection: the upstream request
                // ends with it (the caller aborts it), as Envoy ends it.
                tracing::debug!("client went away before the response ended");
                break;
            }
            () = &mut idle => {
                let now = tokio::time::Instant::now();
                if driver.upstream.as_ref().is_some_and(|upstream| now >= upstream.deadline) {
                    driver.upstream_timed_out();
                    continue;
                }
                let deadline = last_activity + idle_timeout;
                if now < deadline {
                    idle.as_mut().reset(deadline);
                    continue;
                }
                driver.stream.local_reply_from_proxy(504, "stream_idle_timeout", "stream timeout");
                driver.apply_steps().await;
                break;
            }
        }
        driver.request_body_pending_http1 &= downstream_open;
        last_activity = tokio::time::Instant::now();
    }
}

/// The upstream's next event; never, when there is no upstream (the caller's guard).
async fn next_upstream_event(upstream: &mut Option<Upstream>) -> UpstreamEvent {
    match upstream {
        Some(upstream) => upstream.next().await,
        None => std::future::pending().await,
    }
}

/// Completes at `deadline`; never without one.
async fn sleep_until_some(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Completes when nobody waits for the response any more: hyper dropped the receiver of its
/// head (the client left before it) or of its body (the client reset the stream while it came).
async fn client_gone(
    head: &mut Option<oneshot::Sender<http::Response<ChannelBody>>>,
    body: &Option<BodySender>,
) {
    match (head, body) {
        (Some(head), _) => head.closed().await,
        (None, Some(body)) => body.closed().await,
        (None, None) => std::future::pending().await,
    }
}

/// Whether a request body failed because its bytes are not HTTP (rather than because the client
/// went away).
fn malformed_body(error: &hyper::Error) -> bool {
    std::error::Error::source(error)
        .and_then(|source| source.downcast_ref::<std::io::Error>())
        .is_some_and(|io| {
            matches!(
                io.kind(),
                std::io::ErrorKind::InvalidInput | std::io::ErrorKind::InvalidData
            )
        })
}

impl Driver {
    async fn apply_steps(&mut self) {
        loop {
            let steps = self.stream.take_steps();
            if steps.is_empty() {
                return;
            }
            for step in steps {
                self.apply(step).await;
            }
        }
    }

    async fn apply(&mut self, step: Step) {
        match step {
            Step::RequestHeaders {
                headers,
                end_of_stream,
            } => self.start_upstream(headers, end_of_stream),
            Step::RequestData {
                data,
                end_of_stream,
            } => {
                if !self.request_body_fits(data.len(), end_of_stream) {
                    return;
                }
                if let Some((_, body, _)) = &mut self.echo {
                    body.extend_from_slice(&data);
                } else if !data.is_empty() {
                    self.send_upstream(Frame::data(data)).await;
                }
                if end_of_stream {
                    self.end_upstream_request();
                }
            }
            Step::RequestTrailers { trailers } => {
                if !self.request_body_fits(0, true) {
                    return;
                }
                if let Some((_, _, echo_trailers)) = &mut self.echo {
                    *echo_trailers = trailers;
                } else {
                    self.send_upstream(Frame::trailers(to_fields(&trailers)))
                        .await;
                }
                self.end_upstream_request();
            }
            Step::ResponseHeaders {
                headers,
                end_of_stream,
            } => self.respond(&headers, end_of_stream),
            Step::ResponseData {
                data,
                end_of_stream,
            } => {
                if !self.response_body_fits(data.len(), end_of_stream) {
                    return;
                }
                if !data.is_empty() {
                    self.bytes_sent += data.len() as u64;
                    self.send_response_frame(Frame::data(data)).await;
                }
                if end_of_stream {
                    self.finish_response();
                }
            }
            Step::ResponseTrailers { trailers } => {
                if !self.response_body_fits(0, true) {
                    return;
                }
                self.send_response_frame(Frame::trailers(to_fields(&trailers)))
                    .await;
                self.finish_response();
            }
            Step::Call { plugin, token, op } => self.calls.act(
                (plugin, token),
                op,
                &self.generation.clusters,
                &self.connection.state.upstreams,
            ),
            Step::ResetUpstream => {
                self.upstream = None;
                self.upstream_body = None;
                self.echo = None;
            }
            Step::ResetDownstream { reason } => {
                self.status = None;
                if let Some(sender) = self.response_body.take() {
                    sender.abort(BodyReset(reason));
                }
            }
        }
    }

    /// Sends a frame of the request upstream. While it waits for room the exchange goes on (a
    /// new connection is still being made, a response may come before the body is taken), and
    /// the cluster's timeout bounds the wait. A failed send means the upstream request ended:
    /// the upstream's events say why.
    async fn send_upstream(&mut self, frame: Frame<Bytes>) {
        let Some(sender) = &self.upstream_body else {
            return;
        };
        let Err(frame) = sender.try_send(Ok(frame)) else {
            return;
        };
        // Waiting is rare: its future lives on the heap, so the request's own stays small.
        Box::pin(self.wait_to_send_upstream(frame)).await;
    }

    async fn wait_to_send_upstream(&mut self, frame: body::FrameResult) {
        let Some(sender) = &self.upstream_body else {
            return;
        };
        let deadline = self.upstream.as_ref().map(|upstream| upstream.deadline);
        let timed_out = {
            let send = sender.send(frame);
            tokio::pin!(send);
            loop {
                let listening = self.upstream.is_some() && self.held_upstream_event.is_none();
                tokio::select! {
                    _ = &mut send => break false,
                    event = next_upstream_event(&mut self.upstream), if listening => {
                        self.held_upstream_event = Some(event);
                    }
                    () = sleep_until_some(deadline) => break true,
                }
            }
        };
        if timed_out {
            self.upstream_body = None;
            self.upstream_timed_out();
        }
    }

    /// Whether `length` more request body bytes (the last when `end`) fit the `content-length`
    /// sent upstream; if not, the request is refused with a 500 before they go.
    fn request_body_fits(&mut self, length: usize, end: bool) -> bool {
        let Err(mismatch) = self.request_framing.admit(length, end) else {
            return true;
        };
        tracing::warn!("{mismatch}; the request is refused");
        self.stream.local_reply_from_proxy(
            500,
            "request_body_length_changed_by_plugin",
            "the request body no longer matches its content-length",
        );
        false
    }

    /// Whether `length` more response body bytes (the last when `end`) fit the `content-length`
    /// the client was given; if not, the response is reset before they go.
    fn response_body_fits(&mut self, length: usize, end: bool) -> bool {
        let Err(mismatch) = self.response_framing.admit(length, end) else {
            return true;
        };
        tracing::warn!("{mismatch}; the response is reset");
        self.stream.reset_downstream(&mismatch.to_string());
        false
    }

    /// Where the request's upstream exchange is counted: the cluster of the route it took.
    fn cluster_traffic(&self) -> Option<&Traffic> {
        let plan = self.generation.listeners.get(self.connection.listener)?;
        plan.route(self.route).cluster.as_deref()
    }

    /// Routes the request by the head the plugins left (a plugin may have rewritten `:path` or
    /// `:authority`) and starts it towards the route's cluster.
    fn start_upstream(&mut self, headers: HeaderMap, end_of_stream: bool) {
        let generation = self.generation.clone();
        let listener = &generation.config.config.listeners[self.connection.listener];
        if !self
            .routed_head
            .take()
            .is_some_and(|routed| routed.unchanged_clone_of(&headers))
        {
            self.route = route_of(listener, &headers);
        }
        let Some(route) = self.route.map(|index| &listener.routes[index]) else {
            self.stream
                .local_reply_from_proxy(404, "route_not_found", "");
            return;
        };
        if let Some(traffic) = self.cluster_traffic() {
            traffic.started();
        }
        self.request_framing = Framing::of(&headers, true);
        self.stream
            .set_route(&listener.name, &route.name, &route.cluster);
        let (target, connect_timeout, timeout) = match generation.clusters.pick(&route.cluster) {
            Some(Target::Echo) => {
                self.echo = Some((headers, Vec::new(), HeaderMap::new()));
                if end_of_stream {
                    self.end_upstream_request();
                }
                return;
            }
            Some(Target::Endpoint(picked)) if let Some(endpoint) = picked.declared() => {
                self.upstream_address = Some(endpoint.address);
                (endpoint, picked.connect_timeout, picked.timeout)
            }
            Some(Target::Endpoint(_)) | None => {
                self.stream.local_reply_from_proxy(
                    503,
                    "no_healthy_upstream",
                    "no healthy upstream",
                );
                return;
            }
        };
        let body = if end_of_stream {
            body::empty()
        } else {
            let (sender, body) = body::channel();
            self.upstream_body = Some(sender);
            body
        };
        let request = match client::upstream_request(&headers, &target.host, body, target.http2) {
            Ok(request) => request,
            Err(message) => {
                self.stream.local_reply_from_proxy(
                    400,
                    "invalid_request_after_plugins",
                    &format!("bad request: {message}"),
                );
                return;
            }
        };
        // Only for a request without a body: the client sends it again from the same head (a
        // shared copy of the map, nothing copied unless it is needed).
        let rebuild = {
            let (head, host, http2) = (headers.clone(), target.host.clone(), target.http2);
            move || client::upstream_request(&head, &host, body::empty(), http2).ok()
        };
        self.upstream = Some(Upstream::start(
            self.connection.state.upstreams.clone(),
            target,
            request,
            connect_timeout,
            timeout,
            rebuild,
        ));
    }

    /// The whole request reached the upstream; the echo upstream answers now.
    fn end_upstream_request(&mut self) {
        if let Some(body) = self.upstream_body.take() {
            body.finish();
        }
        if let Some((headers, body, trailers)) = self.echo.take() {
            let (answer, answer_body) = echo::answer(&headers, &body, &trailers);
            self.stream.response_headers(answer, false);
            self.stream.response_data(answer_body, true);
        }
    }

    fn upstream_event(&mut self, event: UpstreamEvent) {
        match event {
            UpstreamEvent::Head(parts, end_of_stream, switched) => {
                self.upstream_head_seen = true;
                if let Some(traffic) = self.cluster_traffic() {
                    traffic.answered(Some(parts.status.as_u16()));
                }
                self.upstream_switched = switched;
                self.upstream_finished = end_of_stream;
                self.stream
                    .response_headers(response_map(&parts), end_of_stream);
            }
            UpstreamEvent::Frame(frame, last) => match frame.into_data() {
                Ok(data) => {
                    self.upstream_finished = last;
                    self.stream.response_data(data, last);
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        self.upstream_finished = true;
                        self.stream.response_trailers(fields_map(&trailers));
                    }
                }
            },
            UpstreamEvent::End => {
                self.upstream = None;
                if !self.upstream_finished {
                    self.upstream_finished = true;
                    self.stream.response_data(Bytes::new(), true);
                }
            }
            UpstreamEvent::Failed(reply, detail) => {
                self.upstream = None;
                self.connection.state.stats.upstream_error();
                if let Some(traffic) = self.cluster_traffic() {
                    traffic.failed();
                }
                if self.upstream_head_seen {
                    self.stream
                        .reset_downstream(&format!("upstream reset: {detail}"));
                } else {
                    tracing::warn!("upstream failed: {detail}");
                    // Envoy's body and details: the kind of reset, not the socket error.
                    self.stream
                        .local_reply_from_proxy(reply.status, &reply.details, &reply.body);
                }
            }
        }
    }

    /// The cluster's timeout passed before the upstream's response was complete: the exchange
    /// ends, and the client gets Envoy's 504 (or a reset once the response began).
    fn upstream_timed_out(&mut self) {
        let Some(upstream) = self.upstream.take() else {
            return;
        };
        let after = upstream.timeout;
        self.connection.state.stats.upstream_error();
        if let Some(traffic) = self.cluster_traffic() {
            traffic.failed();
        }
        if self.upstream_head_seen {
            self.stream.reset_downstream(&format!(
                "upstream response not complete within the cluster timeout ({after:?})"
            ));
        } else {
            tracing::warn!("upstream timed out after {after:?}");
            self.stream.local_reply_from_proxy(
                504,
                "upstream_response_timeout",
                "upstream request timeout",
            );
        }
    }

    fn respond(&mut self, headers: &HeaderMap, end_of_stream: bool) {
        let body = if end_of_stream {
            body::empty()
        } else {
            let (sender, body) = body::channel();
            self.response_body = Some(sender);
            body
        };
        let mut response = http::Response::new(body);
        *response.status_mut() = status(headers);
        let code = response.status();
        let carries_body = !(self.head_request
            || code.is_informational()
            || code == http::StatusCode::NO_CONTENT
            || code == http::StatusCode::NOT_MODIFIED);
        self.response_framing = Framing::of(headers, carries_body);
        self.status = Some(response.status().as_u16());
        *response.headers_mut() = to_fields(headers);
        if self.request_body_pending_http1 {
            response.headers_mut().insert(
                http::header::CONNECTION,
                http::HeaderValue::from_static("close"),
            );
        }
        if let Some(head) = self.head.take()
            && head.send(response).is_err()
        {
            self.response_body = None;
        }
    }

    /// A 503 straight to the client, for a request whose chain runs `plugin`, which could not be
    /// fetched. The body names no more than the plugin (and only when the config asks for
    /// descriptive bodies): why it is unavailable is for the operator's log and admin API.
    async fn refuse_unavailable(&mut self, plugin: &str) {
        let body = match self.generation.config.config.failure_body {
            sluice_config::FailureBody::Empty => String::new(),
            sluice_config::FailureBody::Descriptive => {
                format!("plugin '{plugin}' is unavailable\n")
            }
        };
        let mut head = HeaderMap::new();
        head.add(":status", "503");
        head.add("content-type", "text/plain");
        head.add("content-length", body.len().to_string());
        self.respond(&head, false);
        self.send_response_frame(Frame::data(Bytes::from(body)))
            .await;
        self.finish_response();
    }

    /// The response body is complete.
    fn finish_response(&mut self) {
        if let Some(body) = self.response_body.take() {
            body.finish();
        }
    }

    async fn send_response_frame(&mut self, frame: Frame<Bytes>) {
        let Some(sender) = &self.response_body else {
            return;
        };
        // Most frames find room at once: no timer for them.
        let frame = match sender.try_send(Ok(frame)) {
            Ok(()) => return,
            Err(frame) => frame,
        };
        // Waiting is rare: its future lives on the heap, so the request's own stays small.
        Box::pin(self.wait_to_send_response(frame)).await;
    }

    /// Sends `frame` to the client once it has room, within the stream idle timeout.
    async fn wait_to_send_response(&mut self, frame: body::FrameResult) {
        let Some(sender) = &self.response_body else {
            return;
        };
        let idle_timeout = self.generation.config.config.stream_idle_timeout;
        match tokio::time::timeout(idle_timeout, sender.send(frame)).await {
            Ok(Ok(())) => {}
            // The client went away; what is left of the response goes nowhere.
            Ok(Err(_)) => self.response_body = None,
            Err(_) => {
                // The client took nothing for a whole idle timeout (an HTTP/2 window it keeps
                // shut, a socket it does not read): Envoy's stream idle timeout ends it.
                tracing::debug!("the client took no response data for {idle_timeout:?}");
                self.stream.reset_downstream("stream idle timeout");
            }
        }
    }

    /// One access-log line: the request as the client sent it, what answered it and how.
    fn access_record<'a>(
        &'a self,
        request: &'a HeaderMap,
        protocol: &'a str,
        began: std::time::SystemTime,
        elapsed: Duration,
    ) -> crate::access_log::Record<'a> {
        let outcome = self.stream.outcome();
        let chain = self.stream.chain();
        let listener = &self.generation.config.config.listeners[self.connection.listener];
        crate::access_log::Record {
            time: crate::access_log::timestamp(began),
            listener: &listener.name,
            peer: self.connection.peer.to_string(),
            protocol,
            method: request.get_str(":method"),
            authority: request.get_str(":authority"),
            path: request.get_str(":path"),
            request_id: request.get_str("x-request-id"),
            status: self.status,
            details: outcome.details,
            route: self.route.map(|index| listener.routes[index].name.as_str()),
            upstream: self.upstream_address.map(|address| address.to_string()),
            bytes_received: self.bytes_received,
            bytes_sent: self.bytes_sent,
            duration_ms: elapsed.as_micros() as f64 / 1000.0,
            plugins: crate::access_log::PluginsRecord {
                chain: (0..chain.len()).map(|i| chain.plugin_name(i)).collect(),
                local_reply_by: outcome.local_reply_by,
                failed: outcome.failed,
            },
        }
    }
}

/// The index of the first route of `listener` that takes a request with this head.
fn route_of(listener: &sluice_config::Listener, headers: &HeaderMap) -> Option<usize> {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| std::str::from_utf8(v).ok())
            .unwrap_or_default()
    };
    let (authority, path) = (text(":authority"), text(":path"));
    listener.routes.iter().position(|route| {
        route
            .matcher
            .matches(authority, path, |name| headers.get(name))
    })
}

/// Joins the client's and the upstream's switched connections (WebSocket and the like) and
/// copies bytes both ways until either side closes.
async fn splice(client: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade) {
    let (client, upstream) = match (client.await, upstream.await) {
        (Ok(client), Ok(upstream)) => (client, upstream),
        (Err(error), _) | (_, Err(error)) => {
            tracing::debug!("protocol switch failed: {error}");
            return;
        }
    };
    let mut client = hyper_util::rt::TokioIo::new(client);
    let mut upstream = hyper_util::rt::TokioIo::new(upstream);
    if let Err(error) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        tracing::debug!("switched connection ended: {error}");
    }
}
