//! End-to-end tests through real sockets on 127.0.0.1: a client, the proxy with real plugins, and
//! in-process origins.

mod e2e;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use sluice_config::FailStrategy;
use sluice_host::{Engine, EngineOptions, Limits, PluginCode};
use sluice_proxy::{PluginConfig, ProxyConfig, RunningProxy, Upstream};

pub fn engine() -> Engine {
    Engine::new(EngineOptions {
        cache_dir: Some(sluice_test_support::cache_dir()),
    })
    .unwrap()
}

pub fn plugin(
    code: PluginCode,
    name: &str,
    configuration: &str,
    fail_strategy: FailStrategy,
) -> PluginConfig {
    PluginConfig {
        name: name.into(),
        root_id: name.into(),
        code,
        configuration: configuration.as_bytes().to_vec(),
        vm_id: String::new(),
        env: Vec::new(),
        fail_strategy,
        limits: Limits {
            call_timeout: std::time::Duration::from_millis(200),
            ..Limits::default()
        },
    }
}

pub fn built(engine: &Engine, crate_name: &str, configuration: &str) -> PluginConfig {
    let code = engine
        .load_file(&sluice_test_support::plugin_wasm(crate_name))
        .unwrap();
    plugin(code, crate_name, configuration, FailStrategy::FailClose)
}

pub fn start(
    engine: Engine,
    plugins: Vec<PluginConfig>,
    upstream: Upstream,
    clusters: HashMap<String, SocketAddr>,
    workers: usize,
) -> RunningProxy {
    sluice_proxy::start(ProxyConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        workers,
        upstream,
        clusters,
        plugins,
        buffer_limit: sluice_filter::DEFAULT_BUFFER_LIMIT,
        engine,
        admin: Some("127.0.0.1:0".parse().unwrap()),
    })
    .expect("proxy starts")
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
        let io = TokioIo::new(tokio::net::TcpStream::connect(address).await.unwrap());
        let response = if http2 {
            let (mut sender, connection) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                    .await
                    .unwrap();
            tokio::spawn(connection);
            sender.send_request(request).await.unwrap()
        } else {
            let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await.unwrap();
            tokio::spawn(connection);
            sender.send_request(request).await.unwrap()
        };
        let (parts, body) = response.into_parts();
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
    let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = connections.clone();
    let handler: Handler = Arc::new(handler);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let address = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    continue;
                };
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let handler = handler.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |request: http::Request<hyper::body::Incoming>| {
                            let handler = handler.clone();
                            async move {
                                let (parts, body) = request.into_parts();
                                let body = body.collect().await?.to_bytes();
                                Ok::<_, hyper::Error>(handler(parts, body))
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(socket), service)
                        .await;
                });
            }
        });
    });
    (address, connections)
}
