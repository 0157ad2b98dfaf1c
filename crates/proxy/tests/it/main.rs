//! End-to-end tests through real sockets on 127.0.0.1: a client, the proxy with real plugins, and
//! in-process origins.

// Test code: a failure is a failed test, so helpers unwrap and panic as tests do.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod config;
mod differential;
mod duplex;
mod e2e;
mod higress;
mod hostile;
mod oci;
mod scenarios;
mod tcp;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use sluice_config::{Cluster, Config, FailStrategy, Plugin};
use sluice_host::{Engine, EngineOptions, Limits};
use sluice_proxy::{RunningProxy, Source};

pub fn engine() -> Engine {
    Engine::new(EngineOptions {
        cache_dir: Some(sluice_test_support::cache_dir()),
    })
    .unwrap()
}

/// Remote plugin modules go to a cache of the test process's own.
pub fn fetch_options() -> sluice_fetch::Options {
    sluice_fetch::Options::new(sluice_test_support::cache_dir().join("modules"))
}

/// Plugins in tests get a short CPU deadline, so a looping plugin fails fast.
pub fn limits() -> Limits {
    Limits {
        call_timeout: std::time::Duration::from_millis(200),
        ..Limits::default()
    }
}

/// An example plugin from plugins/, with a JSON configuration.
pub fn built(crate_name: &str, configuration: &str) -> Plugin {
    let wasm = sluice_test_support::plugin_wasm(crate_name);
    Plugin::local(
        crate_name.replace('_', "-"),
        wasm.display().to_string(),
        Some(serde_json::from_str(configuration).expect("test configurations are JSON")),
        FailStrategy::FailClose,
    )
}

/// A WAT fixture as a plugin.
pub fn fixture(name: &str, fail_strategy: FailStrategy) -> Plugin {
    let wasm = sluice_test_support::wat_fixture_file(name);
    Plugin::local(name.into(), wasm.display().to_string(), None, fail_strategy)
}

/// What `sluice run` without a config file serves, on ephemeral ports.
pub fn flags(upstream: Option<SocketAddr>, clusters: &[(&str, SocketAddr)]) -> Config {
    let mut config = Config::single_route(
        "127.0.0.1:0".parse().unwrap(),
        upstream.map(|a| a.to_string()),
        Some("127.0.0.1:0".parse().unwrap()),
    );
    for (name, address) in clusters {
        let mut cluster = Cluster::endpoint(name, address.to_string());
        // The tests' gRPC services (`grpc-*`) are declared HTTP/2, as gRPC clusters are in
        // Envoy's config: gRPC calls use the cluster's protocol.
        cluster.http2 = name.starts_with("grpc");
        config.clusters.push(cluster);
    }
    config
}

pub fn start_source(file: Option<std::path::PathBuf>, base: Config) -> RunningProxy {
    sluice_proxy::start(
        Source {
            file,
            base,
            limits: limits(),
            buffer_limit: sluice_filter::DEFAULT_BUFFER_LIMIT,
            plugin_log_level: sluice_abi::LogLevel::Warn,
            fetch: crate::fetch_options(),
        },
        engine(),
    )
    .unwrap_or_else(|error| panic!("proxy starts: {error}"))
}

/// The access log's lines once it holds `count` (the writer flushes when it runs out of lines),
/// within 5 s; exactly `count` of them.
pub fn access_log_lines(log: &std::path::Path, count: usize) -> Vec<serde_json::Value> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let lines = loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        if lines.len() >= count || std::time::Instant::now() > deadline {
            break lines;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert_eq!(lines.len(), count, "{lines:#?}");
    lines
}

/// The plugins in order in front of `upstream` (or the echo upstream), with `clusters`.
pub fn start(
    plugins: Vec<Plugin>,
    upstream: Option<SocketAddr>,
    clusters: &[(&str, SocketAddr)],
    workers: usize,
) -> RunningProxy {
    let mut config = flags(upstream, clusters);
    config.plugins = plugins;
    config.workers = Some(workers);
    start_source(None, config)
}

/// Writes a config file into `dir`, with `{plugins}` standing for the built plugins' directory.
pub fn config_file(dir: &std::path::Path, text: &str) -> std::path::PathBuf {
    let plugins = sluice_test_support::plugin_wasm("add_header")
        .parent()
        .unwrap()
        .display()
        .to_string();
    let path = dir.join("sluice.yaml");
    std::fs::write(&path, text.replace("{plugins}", &plugins)).unwrap();
    path
}

pub struct Answer {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One request on a fresh connection (HTTP/1.1, or HTTP/2 with prior knowledge).
pub fn request(address: SocketAddr, request: http::Request<Full<Bytes>>, http2: bool) -> Answer {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let io = tokio::net::TcpStream::connect(address).await.unwrap();
        let (parts, body) = tokio::time::timeout(
            std::time::Duration::from_secs(30),
            send_once(io, request, http2),
        )
        .await
        .expect("response head within 30 s")
        .into_parts();
        let body = tokio::time::timeout(std::time::Duration::from_secs(30), body.collect())
            .await
            .expect("response within 30 s")
            .unwrap()
            .to_bytes();
        Answer {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
        }
    })
}

/// Sends one request on a fresh client connection over `io`: HTTP/2 or HTTP/1.1.
pub async fn send_once<I, B>(
    io: I,
    request: http::Request<B>,
    http2: bool,
) -> http::Response<hyper::body::Incoming>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    try_send_once(io, request, http2).await.unwrap()
}

/// [`send_once`], for a response that may fail before its head.
pub async fn try_send_once<I, B>(
    io: I,
    request: http::Request<B>,
    http2: bool,
) -> hyper::Result<http::Response<hyper::body::Incoming>>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let io = TokioIo::new(io);
    if http2 {
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
        tokio::spawn(connection);
        sender.send_request(request).await
    } else {
        let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await?;
        tokio::spawn(connection);
        sender.send_request(request).await
    }
}

pub fn get(address: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Answer {
    let mut builder = http::Request::get(path).header("host", "example.com");
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    request(
        address,
        builder.body(Full::new(Bytes::new())).unwrap(),
        false,
    )
}

type Handler =
    Arc<dyn Fn(http::request::Parts, Bytes) -> http::Response<Full<Bytes>> + Send + Sync>;

/// Accepts connections on an ephemeral loopback port, on a thread of its own, and runs
/// `on_connection` for each; the address to connect to, and how many connections came.
pub fn serve_on_thread<F, Fut>(
    on_connection: F,
) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>)
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let address = listener.local_addr().unwrap();
    let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = connections.clone();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                if let Ok((socket, _)) = listener.accept().await {
                    counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    tokio::spawn(on_connection(socket));
                }
            }
        });
    });
    (address, connections)
}

/// An HTTP/1.1 origin on its own thread; `handler` answers each request (body collected).
pub fn origin(
    handler: impl Fn(http::request::Parts, Bytes) -> http::Response<Full<Bytes>> + Send + Sync + 'static,
) -> SocketAddr {
    counting_origin(handler).0
}

/// [`origin`], also counting the connections it accepted.
pub fn counting_origin(
    handler: impl Fn(http::request::Parts, Bytes) -> http::Response<Full<Bytes>> + Send + Sync + 'static,
) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    let handler: Handler = Arc::new(handler);
    serve_on_thread(move |socket| {
        let handler = handler.clone();
        async move {
            let service =
                hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
                    let handler = handler.clone();
                    async move {
                        let (parts, body) = request.into_parts();
                        let body = body.collect().await?.to_bytes();
                        Ok::<_, hyper::Error>(handler(parts, body))
                    }
                });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(socket), service)
                .await;
        }
    })
}

/// A gRPC server over HTTP/2 cleartext on its own thread. `handler` gets the request path,
/// metadata and unframed messages, and returns the reply messages and the grpc-status.
pub fn grpc_origin(
    handler: impl Fn(&str, &http::HeaderMap, Vec<Vec<u8>>) -> (Vec<Vec<u8>>, u32)
    + Send
    + Sync
    + 'static,
) -> SocketAddr {
    counting_grpc_origin(handler).0
}

/// [`grpc_origin`], also counting the connections it accepted.
pub fn counting_grpc_origin(
    handler: impl Fn(&str, &http::HeaderMap, Vec<Vec<u8>>) -> (Vec<Vec<u8>>, u32)
    + Send
    + Sync
    + 'static,
) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    let handler = Arc::new(handler);
    serve_on_thread(move |socket| {
        let handler = handler.clone();
        async move {
            let service =
                hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
                    let handler = handler.clone();
                    async move {
                        let (parts, body) = request.into_parts();
                        let mut bytes = body.collect().await?.to_bytes().to_vec();
                        let mut messages = Vec::new();
                        while bytes.len() >= 5 {
                            let length =
                                u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]])
                                    as usize;
                            messages.push(bytes[5..5 + length].to_vec());
                            bytes.drain(..5 + length);
                        }
                        let (replies, status) = handler(parts.uri.path(), &parts.headers, messages);
                        let mut framed = Vec::new();
                        for reply in replies {
                            framed.push(0);
                            framed.extend_from_slice(&(reply.len() as u32).to_be_bytes());
                            framed.extend_from_slice(&reply);
                        }
                        let mut trailers = http::HeaderMap::new();
                        trailers.insert("grpc-status", status.into());
                        let body = Full::new(Bytes::from(framed))
                            .with_trailers(async move { Some(Ok(trailers)) });
                        let response = http::Response::builder()
                            .header("content-type", "application/grpc")
                            .body(body)
                            .unwrap();
                        Ok::<_, hyper::Error>(response)
                    }
                });
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(socket), service)
                .await;
        }
    })
}
