//! The admin API on its own thread: `/ready`, `/stats` (Prometheus text), `/plugins` (JSON).
//! It reads only shared, thread-safe state: counters, plugin metrics, and the start-up config.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use tokio::sync::Notify;

use crate::stats::Stats;
use crate::{ProxyConfig, StartError};

pub struct Admin {
    pub stats: Arc<Stats>,
    pub ready: Arc<AtomicBool>,
    pub plugins: serde_json::Value,
    pub engine: sluice_host::Engine,
}

impl Admin {
    pub fn new(config: &ProxyConfig, stats: Arc<Stats>, ready: Arc<AtomicBool>) -> Self {
        let plugins = config
            .plugins
            .iter()
            .map(|p| {
                serde_json::json!({
                    "name": p.name,
                    "rootId": p.root_id,
                    "vmId": p.vm_id,
                    "sha256": p.code.info.sha256,
                    "abi": p.code.info.abi.as_ref().map(ToString::to_string).ok(),
                    "sdk": p.code.info.sdk,
                    "failStrategy": p.fail_strategy.to_string(),
                })
            })
            .collect();
        Self {
            stats,
            ready,
            plugins,
            engine: config.engine.clone(),
        }
    }

    fn answer(&self, path: &str) -> http::Response<Full<Bytes>> {
        let (status, content_type, body) = match path {
            "/ready" if self.ready.load(Ordering::Relaxed) => {
                (200, "text/plain", "LIVE\n".to_string())
            }
            "/ready" => (503, "text/plain", "PRE_INITIALIZING\n".to_string()),
            "/stats" | "/stats/prometheus" | "/metrics" => (
                200,
                "text/plain; version=0.0.4",
                self.stats.render(self.engine.metrics()),
            ),
            "/plugins" => (200, "application/json", format!("{:#}\n", self.plugins)),
            _ => (
                404,
                "text/plain",
                "unknown admin path; try /ready, /stats, /plugins\n".to_string(),
            ),
        };
        let mut response = http::Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::OK);
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static(content_type),
        );
        response
    }
}

/// Binds the admin listener and serves it on a thread until `stop` fires.
pub fn start(
    address: SocketAddr,
    admin: Admin,
    stop: Arc<Notify>,
) -> Result<(SocketAddr, std::thread::JoinHandle<()>), StartError> {
    let listener = std::net::TcpListener::bind(address)
        .map_err(|source| StartError::Listen { address, source })?;
    listener
        .set_nonblocking(true)
        .map_err(|source| StartError::Listen { address, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| StartError::Listen { address, source })?;
    let admin = Arc::new(admin);
    let thread = std::thread::Builder::new()
        .name("sluice-admin".into())
        .spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
            runtime.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(listener) else { return };
                let stopping = stop.notified();
                tokio::pin!(stopping);
                loop {
                    tokio::select! {
                        accepted = listener.accept() => {
                            let Ok((socket, _)) = accepted else { continue };
                            let admin = admin.clone();
                            tokio::spawn(async move {
                                let service = hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
                                    let response = admin.answer(request.uri().path());
                                    async move { Ok::<_, std::convert::Infallible>(response) }
                                });
                                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(socket), service).await;
                            });
                        }
                        () = &mut stopping => break,
                    }
                }
            });
        })
        .map_err(|e| StartError::Worker { worker: usize::MAX, message: format!("admin thread: {e}") })?;
    Ok((bound, thread))
}
