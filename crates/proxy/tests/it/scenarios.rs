//! The example plugins' own scenario files (plugins/*/tests), replayed through the live proxy:
//! the client, the upstream and every callout cluster are real sockets on 127.0.0.1, and the
//! expectations are the same ones `sluice test` checks in process. What a live proxy cannot show
//! is left out and said: plugin logs, and the steps after an `advance` (its clock is real).

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame};
use hyper_util::rt::{TokioExecutor, TokioIo};
use sluice_abi::HeaderMap;
use sluice_config::Plugin;
use sluice_host::{Engine, Limits};
use sluice_proxy::{RunningProxy, Source};
use sluice_scenario::{
    self as scenario, Backend, CannedAnswer, ClientSeen, Exchange, Observed, Observes, Scenario,
    ScenarioError, SeenGrpcCall, SeenHttpCall, SeenRedisCall, Start, UpstreamSeen,
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
}

impl Live {
    fn new() -> Live {
        Live {
            engine: crate::engine(),
            shared: Shared::default(),
            proxy: None,
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
            connections: false,
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
        let mut config = crate::flags(Some(upstream), &clusters);
        config.workers = Some(1);
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
        let mut state = self.shared.lock().unwrap();
        let mut observed = Observed {
            upstream: state.upstream.take(),
            stalled: client.is_none(),
            client,
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
        Ok(observed)
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
