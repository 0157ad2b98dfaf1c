//! The example plugins' own scenario files (plugins/*/tests), replayed through the live proxy:
//! the client, the upstream and every callout cluster are real sockets on 127.0.0.1, and the
//! expectations are the same ones `sluice test` checks in process. A scenario of `connection`
//! steps runs its plugins as network filters on a TCP listener in front of a scripted origin.
//! What a live proxy cannot show is left out and said: plugin logs, and the steps after an
//! `advance` (its clock is real).

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::pin::Pin;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame};
use hyper_util::rt::{TokioExecutor, TokioIo};
use sluice_abi::HeaderMap;
use sluice_config::Plugin;
use sluice_host::{Engine, Limits};
use sluice_proxy::{RunningProxy, Source};
use sluice_scenario::{
    self as scenario, Action, Backend, CannedAnswer, ClientSeen, ConnectionEvent, ConnectionSeen,
    Exchange, Observed, Observes, Scenario, ScenarioError, SeenGrpcCall, SeenHttpCall,
    SeenRedisCall, Start, UpstreamSeen,
};

/// A body that yields prepared frames: the scripted chunks, then the trailers.
struct Frames(VecDeque<Frame<Bytes>>);

impl Frames {
    fn new(chunks: &[Vec<u8>], trailers: &HeaderMap) -> Frames {
        let mut frames: VecDeque<Frame<Bytes>> = chunks
            .iter()
            .map(|c| Frame::data(Bytes::from(c.clone())))
            .collect();
        if !trailers.is_empty() {
            frames.push_back(Frame::trailers(to_http(trailers)));
        }
        Frames(frames)
    }
}

impl Body for Frames {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.pop_front().map(Ok))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_empty()
    }
}

/// Regular headers as `http` headers; pseudo-headers are left out.
fn to_http(headers: &HeaderMap) -> http::HeaderMap {
    let mut map = http::HeaderMap::new();
    for (name, value) in headers.iter() {
        if let (false, Ok(name), Ok(value)) = (
            name.starts_with(b":"),
            http::HeaderName::from_bytes(name),
            http::HeaderValue::from_bytes(value),
        ) {
            map.append(name, value);
        }
    }
    map
}

fn from_http(pseudo: &[(&str, String)], headers: &http::HeaderMap) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pseudo {
        map.add(*name, value.as_str());
    }
    for (name, value) in headers {
        map.add(name.as_str(), value.as_bytes());
    }
    map
}

/// A request as an upstream or a callout cluster received it, with its pseudo-headers.
fn received(parts: &http::request::Parts) -> Vec<(&'static str, String)> {
    let authority = parts
        .uri
        .authority()
        .map(ToString::to_string)
        .or_else(|| {
            parts
                .headers
                .get("host")
                .and_then(|h| h.to_str().ok())
                .map(String::from)
        })
        .unwrap_or_default();
    vec![
        (":method", parts.method.to_string()),
        (
            ":path",
            parts
                .uri
                .path_and_query()
                .map_or("/".into(), ToString::to_string),
        ),
        (":authority", authority),
    ]
}

#[derive(Default)]
struct Scripted {
    /// The current step's upstream answer.
    answer: Option<(HeaderMap, Vec<Vec<u8>>, HeaderMap)>,
    upstream: Option<UpstreamSeen>,
    answers: BTreeMap<String, VecDeque<CannedAnswer>>,
    http_calls: Vec<SeenHttpCall>,
    grpc_calls: Vec<SeenGrpcCall>,
    redis_calls: Vec<SeenRedisCall>,
}

type Shared = Arc<Mutex<Scripted>>;

/// The upstream: records what reached it and answers with the step's scripted response.
fn upstream(shared: Shared) -> std::net::SocketAddr {
    crate::serve_on_thread(move |socket| {
        let shared = shared.clone();
        async move {
            let service = hyper::service::service_fn(move |request: http::Request<_>| {
                let shared = shared.clone();
                async move {
                    let (parts, body) = request.into_parts();
                    let mut seen = UpstreamSeen {
                        headers: from_http(&received(&parts), &parts.headers),
                        ..UpstreamSeen::default()
                    };
                    if let Ok(collected) = BodyExt::collect(body).await {
                        if let Some(trailers) = collected.trailers() {
                            seen.trailers = from_http(&[], trailers);
                        }
                        seen.body = collected.to_bytes().to_vec();
                        seen.complete = true;
                    }
                    let mut state = shared.lock().unwrap();
                    state.upstream = Some(seen);
                    let (head, chunks, trailers) = state.answer.clone().unwrap_or_default();
                    Ok::<_, Infallible>(respond(&head, &chunks, &trailers))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(socket), service)
                .await;
        }
    })
    .0
}

fn respond(head: &HeaderMap, chunks: &[Vec<u8>], trailers: &HeaderMap) -> http::Response<Frames> {
    let mut response = http::Response::new(Frames::new(chunks, trailers));
    *response.status_mut() = head
        .get_str(":status")
        .and_then(|s| s.parse::<u16>().ok())
        .and_then(|s| http::StatusCode::from_u16(s).ok())
        .unwrap_or(http::StatusCode::OK);
    *response.headers_mut() = to_http(head);
    response
}

/// A callout cluster (HTTP/1.1 and HTTP/2, as the proxy calls HTTP and gRPC, and RESP for Redis
/// calls): records each call and answers with the cluster's next canned answer.
fn cluster(name: String, shared: Shared) -> std::net::SocketAddr {
    crate::serve_on_thread(move |socket| {
        let shared = shared.clone();
        let name = name.clone();
        async move {
            let mut first = [0u8; 1];
            if socket.peek(&mut first).await.is_ok() && first[0] == b'*' {
                return redis_cluster(socket, name, shared).await;
            }
            let service = hyper::service::service_fn(move |request: http::Request<_>| {
                let shared = shared.clone();
                let name = name.clone();
                async move {
                    let (parts, body) = request.into_parts();
                    let body = BodyExt::collect(body)
                        .await
                        .map(|c| c.to_bytes().to_vec())
                        .unwrap_or_default();
                    let grpc = parts
                        .headers
                        .get("content-type")
                        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
                    let answer = {
                        let mut state = shared.lock().unwrap();
                        if grpc {
                            let path = parts.uri.path().trim_start_matches('/');
                            let (service, method) = path.split_once('/').unwrap_or((path, ""));
                            state.grpc_calls.push(SeenGrpcCall {
                                cluster: name.clone(),
                                service: service.into(),
                                method: method.into(),
                            });
                        } else {
                            state.http_calls.push(SeenHttpCall {
                                cluster: name.clone(),
                                headers: from_http(&received(&parts), &parts.headers),
                                body,
                                timeout: None,
                            });
                        }
                        state.answers.get_mut(&name).and_then(scenario::next_answer)
                    };
                    match answer {
                        Some(CannedAnswer::Http(response)) => Ok(respond(
                            &response.headers,
                            &[response.body],
                            &response.trailers,
                        )),
                        Some(CannedAnswer::Grpc { status, message }) => {
                            let mut head = HeaderMap::new();
                            head.add(":status", "200");
                            head.add("content-type", "application/grpc");
                            let mut framed = Vec::new();
                            if status == 0 {
                                framed.push(0);
                                framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
                                framed.extend_from_slice(&message);
                            }
                            let mut trailers = HeaderMap::new();
                            trailers.add("grpc-status", status.to_string());
                            Ok(respond(&head, &[framed], &trailers))
                        }
                        // Longer than any call's timeout in the scenario files.
                        Some(CannedAnswer::Timeout) => {
                            tokio::time::sleep(Duration::from_secs(30)).await;
                            Err("answered after the call's timeout")
                        }
                        // A failed service call resets the stream (HTTP/2) or closes the
                        // connection without an answer (HTTP/1.1).
                        Some(CannedAnswer::Fail | CannedAnswer::Redis(_)) | None => {
                            Err("the call fails")
                        }
                    }
                }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(socket), service)
                .await;
        }
    })
    .0
}

/// A Redis connection to a callout cluster: `AUTH` and `SELECT` succeed, and every other command
/// is recorded and answered with the cluster's next canned answer; a failed call closes the
/// connection.
async fn redis_cluster(mut socket: tokio::net::TcpStream, name: String, shared: Shared) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buffer = Vec::new();
    loop {
        while let Ok(Some(len)) = sluice_abi::resp::frame_len(&buffer) {
            let query: Vec<u8> = buffer.drain(..len).collect();
            let args = sluice_abi::resp::command_args(&query).unwrap_or_default();
            let command: Vec<String> = args
                .iter()
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            let setup = command.first().is_some_and(|c| {
                c.eq_ignore_ascii_case("AUTH") || c.eq_ignore_ascii_case("SELECT")
            });
            let reply = if setup {
                b"+OK\r\n".to_vec()
            } else {
                let answer = {
                    let mut state = shared.lock().unwrap();
                    state.redis_calls.push(SeenRedisCall {
                        cluster: name.clone(),
                        command,
                    });
                    state.answers.get_mut(&name).and_then(scenario::next_answer)
                };
                match answer {
                    Some(CannedAnswer::Redis(reply)) => reply,
                    // Longer than any call's timeout in the scenario files.
                    Some(CannedAnswer::Timeout) => {
                        tokio::time::sleep(Duration::from_secs(30)).await;
                        return;
                    }
                    _ => return,
                }
            };
            if socket.write_all(&reply).await.is_err() {
                return;
            }
        }
        if !matches!(socket.read_buf(&mut buffer).await, Ok(n) if n > 0) {
            return;
        }
    }
}

struct Live {
    engine: Engine,
    shared: Shared,
    proxy: Option<RunningProxy>,
    /// For a scenario of connection steps: the TCP listener's address and the origin's accepted
    /// connections.
    tcp: Option<(SocketAddr, mpsc::Receiver<TcpStream>)>,
}

/// An origin for connection steps: every connection the proxy makes to it is handed to the step
/// that runs, which writes the scenario's upstream bytes on it.
fn tcp_origin() -> (SocketAddr, mpsc::Receiver<TcpStream>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            if sender.send(stream).is_err() {
                return;
            }
        }
    });
    (address, receiver)
}

/// How long nothing must move on either socket before a connection event counts as carried out.
/// Live sockets give no signal that a proxy is done with some bytes, so quiet is the signal.
const QUIET: Duration = Duration::from_millis(200);

/// One side of a live connection as the test sees it: what it read, and how its reading ended.
#[derive(Default)]
struct Side {
    stream: Option<TcpStream>,
    read: Vec<u8>,
    /// The peer ended (a FIN, or a reset).
    ended: bool,
    /// This side ended its writing.
    sent_end: bool,
}

impl Side {
    fn of(stream: TcpStream) -> Side {
        stream
            .set_read_timeout(Some(Duration::from_millis(5)))
            .unwrap();
        Side {
            stream: Some(stream),
            ..Side::default()
        }
    }

    /// Reads what has arrived; whether anything changed.
    fn poll(&mut self) -> bool {
        let Some(stream) = self.stream.as_mut().filter(|_| !self.ended) else {
            return false;
        };
        let mut buffer = [0u8; 65536];
        match stream.read(&mut buffer) {
            Ok(0) => {
                self.ended = true;
                true
            }
            Ok(n) => {
                self.read.extend_from_slice(&buffer[..n]);
                true
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                false
            }
            Err(_) => {
                self.ended = true;
                true
            }
        }
    }

    fn write(&mut self, bytes: &[u8]) {
        if let Some(stream) = self.stream.as_mut() {
            let _ = stream.write_all(bytes);
        }
    }

    fn end(&mut self) {
        if let Some(stream) = self.stream.as_ref() {
            let _ = stream.shutdown(Shutdown::Write);
        }
        self.sent_end = true;
    }
}

/// A connection step through the live TCP listener.
struct LiveConnection<'a> {
    client: Side,
    upstream: Side,
    origins: &'a mpsc::Receiver<TcpStream>,
}

impl LiveConnection<'_> {
    /// Reads both sides (and takes the proxy's connection to the origin when it comes) until
    /// nothing moved for [`QUIET`], within 10 s.
    fn settle(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut quiet_since = Instant::now();
        while quiet_since.elapsed() < QUIET && Instant::now() < deadline {
            let mut moved = self.client.poll() | self.upstream.poll();
            if self.upstream.stream.is_none()
                && let Ok(stream) = self.origins.try_recv()
            {
                self.upstream = Side::of(stream);
                moved = true;
            }
            if moved {
                quiet_since = Instant::now();
            }
        }
    }

    /// Waits (within 5 s) for the proxy's connection to the origin, unless the client's side
    /// ended first: upstream bytes are written only once it exists, as in process.
    fn await_upstream(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.upstream.stream.is_none() && !self.client.ended && Instant::now() < deadline {
            self.settle();
        }
    }

    /// Who ended the connection, as the in-process runner names it.
    fn closed_by(&self) -> &'static str {
        let upstream_gone = self.upstream.stream.is_some() && self.upstream.ended;
        if self.client.sent_end && self.upstream.sent_end && self.client.ended && upstream_gone {
            "ends"
        } else if (self.client.ended && !self.upstream.sent_end)
            || (upstream_gone && !self.client.sent_end)
        {
            "proxy"
        } else {
            "open"
        }
    }
}

impl Live {
    fn new() -> Live {
        Live {
            engine: crate::engine(),
            shared: Shared::default(),
            proxy: None,
            tcp: None,
        }
    }

    fn admin(&self) -> std::net::SocketAddr {
        self.proxy
            .as_ref()
            .and_then(|p| p.admin_address)
            .expect("the proxy runs with an admin API")
    }

    /// A value from `/stats`: the first sample named `name` (a histogram: `name_count`).
    fn stat(&self, name: &str) -> Option<i64> {
        let text = crate::get(self.admin(), "/stats", &[]).text();
        let count = format!("{name}_count");
        text.lines()
            .filter_map(|line| line.rsplit_once(' '))
            .find(|(sample, _)| *sample == name || *sample == count)
            .and_then(|(_, value)| value.parse::<i64>().ok())
    }

    fn failures(&self) -> i64 {
        self.stat("sluice_plugin_failures_total").unwrap_or(0)
    }

    /// What a step observed besides its client and upstream: the calls the clusters answered, and
    /// the plugin failures counted since `failures_before`.
    fn calls_and_failures(&self, failures_before: i64) -> Observed {
        let mut state = self.shared.lock().unwrap();
        let mut observed = Observed {
            http_calls: std::mem::take(&mut state.http_calls),
            grpc_calls: std::mem::take(&mut state.grpc_calls),
            redis_calls: std::mem::take(&mut state.redis_calls),
            ..Observed::default()
        };
        drop(state);
        let failed = self.failures() - failures_before;
        if failed > 0 {
            observed.failures.push(format!(
                "{failed} plugin failure(s) in sluice_plugin_failures_total"
            ));
        }
        observed
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        if let Some(proxy) = self.proxy.take() {
            proxy.stop();
        }
    }
}

impl Backend for Live {
    fn observes(&self) -> Observes {
        Observes {
            connections: true,
            logs: false,
            shared_data: true,
            time: false,
        }
    }

    fn start(&mut self, scenario: &Scenario) -> Result<Start, ScenarioError> {
        let upstream = upstream(self.shared.clone());
        let mut clusters = Vec::new();
        for (name, answers) in &scenario.callouts {
            clusters.push((name.as_str(), cluster(name.clone(), self.shared.clone())));
            self.shared
                .lock()
                .unwrap()
                .answers
                .insert(name.clone(), answers.iter().cloned().collect());
        }
        let connections = scenario
            .steps
            .iter()
            .filter(|s| matches!(s.action, Action::Connection(_)))
            .count();
        let network = connections > 0;
        if network && connections < scenario.steps.len() {
            return Err(ScenarioError::Invalid {
                file: scenario.file.clone(),
                message: "a live proxy runs a scenario's plugins as HTTP or as network filters, \
                          not both: keep connection steps in files of their own"
                    .into(),
            });
        }
        let origin = network.then(tcp_origin);
        if let Some((address, _)) = &origin {
            clusters.push(("tcp-origin", *address));
        }
        let mut config = crate::flags(Some(upstream), &clusters);
        config.workers = Some(1);
        if network {
            config.listeners.push(sluice_config::Listener {
                name: "tcp".into(),
                address: "127.0.0.1:0".parse().unwrap(),
                tls: None,
                routes: Vec::new(),
                tcp: Some(sluice_config::TcpProxy {
                    cluster: "tcp-origin".into(),
                    idle_timeout: Some(sluice_config::DEFAULT_IDLE_TIMEOUT),
                }),
            });
        }
        config.plugins = scenario
            .plugins
            .iter()
            .map(|p| {
                let mut plugin = Plugin::local(
                    p.name.clone(),
                    p.wasm.display().to_string(),
                    p.plugin_config.clone(),
                    p.fail_strategy,
                );
                plugin.root_id = p.root_id.clone();
                plugin.vm = p.vm_config.clone();
                plugin.capabilities.headers_stop_iteration = p.headers_stop_iteration;
                plugin.network = network;
                plugin
            })
            .collect();
        let defaults = Limits::default();
        let source = Source {
            file: None,
            base: config,
            limits: Limits {
                memory_bytes: scenario
                    .limits
                    .memory_bytes
                    .unwrap_or(defaults.memory_bytes),
                call_timeout: scenario
                    .limits
                    .call_timeout
                    .unwrap_or(defaults.call_timeout),
                ..defaults
            },
            buffer_limit: scenario
                .limits
                .buffer_bytes
                .unwrap_or(sluice_filter::DEFAULT_BUFFER_LIMIT),
            plugin_log_level: sluice_abi::LogLevel::Warn,
            fetch: crate::fetch_options(),
        };
        match sluice_proxy::start(source, self.engine.clone()) {
            Ok(proxy) => {
                self.tcp = origin.map(|(_, accepted)| (proxy.addresses[1], accepted));
                self.proxy = Some(proxy);
                Ok(Start::Running { logs: Vec::new() })
            }
            Err(error) => {
                let message = error.to_string();
                let plugin = scenario
                    .plugins
                    .iter()
                    .find(|p| message.contains(&p.name))
                    .map_or_else(String::new, |p| p.name.clone());
                Ok(Start::Refused {
                    plugin,
                    message,
                    logs: Vec::new(),
                })
            }
        }
    }

    fn request(&mut self, exchange: &Exchange) -> Result<Observed, ScenarioError> {
        {
            let mut state = self.shared.lock().unwrap();
            let response = &exchange.response;
            state.answer = Some((
                response.headers.clone(),
                response.chunks.clone(),
                response.trailers.clone(),
            ));
            state.upstream = None;
        }
        let failures_before = self.failures();
        let headers = &exchange.headers;
        let mut request = http::Request::new(Frames::new(&exchange.chunks, &exchange.trailers));
        *request.method_mut() = headers
            .get_str(":method")
            .and_then(|m| m.parse().ok())
            .unwrap_or_default();
        *request.uri_mut() = headers
            .get_str(":path")
            .and_then(|p| p.parse().ok())
            .unwrap_or_default();
        *request.headers_mut() = to_http(headers);
        if let Some(authority) = headers.get_str(":authority") {
            request
                .headers_mut()
                .insert("host", authority.parse().expect("a valid authority"));
        }
        let address = self.proxy.as_ref().expect("started").address;
        // A runtime per request: dropping it closes the client connection, so that stopping
        // the proxy does not wait for idle connections to drain.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let client = runtime.block_on(async move {
            let exchange = async {
                let io = tokio::net::TcpStream::connect(address).await.unwrap();
                let (parts, mut body) = crate::send_once(io, request, false).await.into_parts();
                let status = [(":status", parts.status.as_u16().to_string())];
                let mut seen = ClientSeen {
                    headers: Some(from_http(&status, &parts.headers)),
                    ..ClientSeen::default()
                };
                while let Some(frame) = body.frame().await {
                    match frame {
                        Ok(frame) => match frame.into_data() {
                            Ok(data) => seen.body.extend_from_slice(&data),
                            Err(frame) => {
                                if let Some(trailers) = frame.trailers_ref() {
                                    seen.trailers = from_http(&[], trailers);
                                }
                            }
                        },
                        Err(error) => {
                            seen.reset = Some(error.to_string());
                            break;
                        }
                    }
                }
                seen
            };
            tokio::time::timeout(Duration::from_secs(10), exchange)
                .await
                .ok()
        });
        drop(runtime);
        let upstream = self.shared.lock().unwrap().upstream.take();
        Ok(Observed {
            upstream,
            stalled: client.is_none(),
            client,
            ..self.calls_and_failures(failures_before)
        })
    }

    /// Plays the events on a real client connection and on the proxy's real connection to the
    /// origin; each event counts as carried out once both sockets are quiet.
    fn connection(&mut self, events: &[ConnectionEvent]) -> Result<Observed, ScenarioError> {
        let failures_before = self.failures();
        let (address, origins) = self.tcp.as_ref().expect("started with a TCP listener");
        // A connection the proxy made for an earlier step is not this step's.
        while origins.try_recv().is_ok() {}
        let mut live = LiveConnection {
            client: Side::of(TcpStream::connect(address).unwrap()),
            upstream: Side::default(),
            origins,
        };
        live.settle();
        let mut reset = false;
        for event in events {
            match event {
                ConnectionEvent::Client(bytes) => live.client.write(bytes),
                ConnectionEvent::ClientEnd => live.client.end(),
                ConnectionEvent::Upstream(bytes) => {
                    live.await_upstream();
                    live.upstream.write(bytes);
                }
                ConnectionEvent::UpstreamEnd => {
                    live.await_upstream();
                    live.upstream.end();
                }
                ConnectionEvent::ClientReset => {
                    if let Some(stream) = live.client.stream.take() {
                        let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
                    }
                    reset = true;
                }
                // Real time: the proxy's ticks fire as it passes.
                ConnectionEvent::Advance(by) => std::thread::sleep(*by),
            }
            live.settle();
            if reset {
                break;
            }
        }
        let seen = ConnectionSeen {
            upstream: live
                .upstream
                .stream
                .is_some()
                .then(|| std::mem::take(&mut live.upstream.read)),
            upstream_ended: live.upstream.ended,
            client: std::mem::take(&mut live.client.read),
            client_ended: live.client.ended,
            closed_by: if reset { "client" } else { live.closed_by() }.to_string(),
        };
        drop(live);
        Ok(Observed {
            connection: Some(seen),
            ..self.calls_and_failures(failures_before)
        })
    }

    /// Only a zero advance comes here (time is real): nothing happens.
    fn advance(&mut self, _: Duration) -> Result<Observed, ScenarioError> {
        Ok(Observed::default())
    }

    /// A plugin metric by the name it was defined with (the `name` label of a `sluice_plugin_*`
    /// series; a histogram's `_count`).
    fn metric(&self, name: &str) -> Option<i64> {
        let text = crate::get(self.admin(), "/stats", &[]).text();
        let label = format!(
            "{{name=\"{}\"}}",
            name.replace('\\', "\\\\").replace('"', "\\\"")
        );
        text.lines()
            .filter(|line| line.starts_with("sluice_plugin_"))
            .filter_map(|line| line.rsplit_once(' '))
            .find(|(sample, _)| {
                sample.ends_with(&label)
                    && !sample.contains("_bucket{")
                    && !sample.contains("_sum{")
            })
            .and_then(|(_, value)| value.parse::<i64>().ok())
    }

    fn shared_data(&self, key: &str) -> Option<String> {
        self.engine
            .shared_data()
            .get("", key.as_bytes())
            .map(|(v, _)| String::from_utf8_lossy(&v).into_owned())
    }
}

#[test]
fn every_example_plugin_gives_through_the_live_proxy_what_its_scenarios_say() {
    sluice_test_support::plugins_dir();
    let mut failed = Vec::new();
    let mut replayed = 0;
    for file in sluice_test_support::plugin_scenarios() {
        let scenario = Scenario::read(&file).unwrap_or_else(|e| panic!("{e}"));
        let mut live = Live::new();
        let report = scenario::run(&scenario, &mut live).unwrap_or_else(|e| panic!("{e}"));
        println!("{report}");
        replayed += report.steps;
        if !report.passed() {
            failed.push(report.to_string());
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
    assert!(replayed >= 50, "only {replayed} steps replayed");
}
