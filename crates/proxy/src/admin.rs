//! The admin API on its own thread: the admin page at `/`, `/ready`, `/stats` (Prometheus text),
//! `/plugins`, `/config_dump` and `/history` (JSON), `POST /reload`. It reads only shared, thread-safe state: counters, plugin
//! metrics, and the config the workers currently run.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use sluice_config::{ClusterKind, HostMatch, PathMatch, PluginOverride};
use tokio::sync::watch;

use crate::logging::PluginLogLevels;
use crate::reload::Reloader;
use crate::stats::Stats;
use crate::{ProxyConfig, StartError};

pub struct Admin {
    pub stats: Arc<Stats>,
    pub ready: Arc<AtomicBool>,
    pub reloader: Arc<Reloader>,
    pub log_levels: Arc<PluginLogLevels>,
    /// The last `HISTORY_LENGTH` samples of the totals, one per `SAMPLE_EVERY`, for the page.
    pub history: Mutex<VecDeque<Value>>,
}

/// How often the admin thread samples the totals the page plots, and how many samples it keeps
/// (ten minutes).
const SAMPLE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
const HISTORY_LENGTH: usize = 600;

/// The admin page: plain HTML and JavaScript, no outside resources.
const PAGE: &str = include_str!("admin_page.html");

const PATHS: &str = "GET / (the admin page), /ready, /stats, /plugins, /config_dump, /logging, /history; POST /reload, /logging?level=L[&plugin=NAME]";

impl Admin {
    async fn answer(
        self: Arc<Self>,
        method: &http::Method,
        path: &str,
        query: &str,
    ) -> http::Response<Full<Bytes>> {
        let json = |value: Value| (200, "application/json", format!("{value:#}\n"));
        let (status, content_type, body) = match (method.as_str(), path) {
            ("GET", "/ready") if self.ready.load(Ordering::Relaxed) => self.readiness(),
            ("GET", "/ready") => (503, "text/plain", "PRE_INITIALIZING\n".to_string()),
            ("GET", "/") => (200, "text/html; charset=utf-8", PAGE.to_string()),
            ("GET", "/history") => {
                let samples: Vec<Value> = self
                    .history
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .iter()
                    .cloned()
                    .collect();
                json(json!({"intervalMs": SAMPLE_EVERY.as_millis() as u64, "samples": samples}))
            }
            ("GET", "/stats" | "/stats/prometheus" | "/metrics") => {
                let current = self.reloader.current();
                let unavailable: Vec<(String, String)> = current
                    .unavailable
                    .iter()
                    .map(|u| (u.plugin.name.clone(), u.plugin.fail_strategy.to_string()))
                    .collect();
                (
                    200,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    self.stats.render(current.engine.metrics(), &unavailable),
                )
            }
            ("GET", "/plugins") => json(plugins(&self.reloader.current(), &self.stats)),
            ("GET", "/config_dump") => json(self.config_dump()),
            ("GET", "/logging") => json(self.logging()),
            ("POST", "/logging") => match self.set_logging(query) {
                Ok(()) => json(self.logging()),
                Err((status, message)) => (status, "text/plain", format!("{message}\n")),
            },
            ("POST", "/reload") => {
                let reloader = self.reloader.clone();
                match tokio::task::spawn_blocking(move || reloader.reload()).await {
                    Ok(Ok(())) => (200, "text/plain", "reloaded\n".to_string()),
                    Ok(Err(error)) => (400, "text/plain", format!("{error}\n")),
                    Err(error) => (500, "text/plain", format!("reload failed: {error}\n")),
                }
            }
            (
                _,
                "/" | "/history" | "/ready" | "/stats" | "/plugins" | "/config_dump" | "/reload"
                | "/logging",
            ) => (
                405,
                "text/plain",
                format!("wrong method for {path}; {PATHS}\n"),
            ),
            _ => (404, "text/plain", format!("unknown admin path; {PATHS}\n")),
        };
        let mut response = http::Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::OK);
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static(content_type),
        );
        response
    }

    /// The plugins' log levels (and the level of plugins added later).
    fn logging(&self) -> Value {
        let current = self.reloader.current();
        let plugins: serde_json::Map<String, Value> = current
            .config
            .plugins
            .iter()
            .map(|p| {
                (
                    p.name.clone(),
                    json!(self.log_levels.level_of(&p.name).as_str()),
                )
            })
            .collect();
        json!({"default": self.log_levels.default_level().as_str(), "plugins": plugins})
    }

    /// `level=L` sets every plugin; with `plugin=NAME`, only that one.
    fn set_logging(&self, query: &str) -> Result<(), (u16, String)> {
        let mut level = None;
        let mut plugin = None;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("level", value)) => level = Some(value),
                Some(("plugin", value)) => plugin = Some(value),
                _ => {
                    return Err((
                        400,
                        format!(
                            "unknown parameter `{pair}`; use level=L and optionally plugin=NAME"
                        ),
                    ));
                }
            }
        }
        let Some(text) = level else {
            return Err((
                400,
                "missing level=trace|debug|info|warn|error|critical".into(),
            ));
        };
        let level = sluice_abi::LogLevel::parse(text).ok_or_else(|| {
            (
                400,
                format!("level `{text}`: expected trace, debug, info, warn, error or critical"),
            )
        })?;
        match plugin {
            None => self.log_levels.set_all(level),
            Some(name) => {
                let current = self.reloader.current();
                if !current.config.plugins.iter().any(|p| p.name == name) {
                    let known: Vec<&str> = current
                        .config
                        .plugins
                        .iter()
                        .map(|p| p.name.as_str())
                        .collect();
                    return Err((
                        404,
                        format!("no plugin `{name}` (plugins: {})", known.join(", ")),
                    ));
                }
                self.log_levels.set(name, level);
            }
        }
        Ok(())
    }

    /// LIVE, unless a plugin that guards traffic (FAIL_CLOSE or FAIL_RELOAD) could not be
    /// fetched: the requests it would run get 503, so the proxy is not ready to take traffic.
    /// This is Istio's intent for a fail-close module it cannot fetch (the listener waited
    /// for the module, later a deny-all filter stands in): no request passes without it.
    fn readiness(&self) -> (u16, &'static str, String) {
        let current = self.reloader.current();
        let blocking: Vec<String> = current
            .unavailable
            .iter()
            .filter(|u| u.blocks())
            .map(|u| {
                format!(
                    "plugin {} ({}) is unavailable",
                    u.plugin.name, u.plugin.fail_strategy
                )
            })
            .collect();
        if blocking.is_empty() {
            (200, "text/plain", "LIVE\n".to_string())
        } else {
            (
                503,
                "text/plain",
                format!("NOT_READY: {}; see /plugins\n", blocking.join(", ")),
            )
        }
    }

    fn config_dump(&self) -> Value {
        let current = self.reloader.current();
        let config = &current.config;
        let shared = &current.shared_limits;
        let mut plugin_limits = instance_limits(&current.plugin_limits);
        for (name, value) in [
            ("sharedDataBytes", shared.shared_data_bytes),
            ("sharedQueues", shared.queues),
            ("sharedQueueItems", shared.queue_items),
            ("sharedQueueBytes", shared.queue_bytes),
            ("metrics", shared.metrics),
        ] {
            plugin_limits.insert(name.to_string(), json!(value));
        }
        let last = self.reloader.last().map(|last| {
            json!({
                "at": crate::access_log::timestamp(last.at),
                "ok": last.error.is_none(),
                "error": last.error,
            })
        });
        json!({
            "source": self.reloader.source().file.as_ref().map(|f| f.display().to_string()),
            "lastReload": last,
            "admin": config.admin.map(|a| a.to_string()),
            "workers": current.workers(),
            "requestHeadersTimeoutMs": config.request_headers_timeout.as_millis() as u64,
            "streamIdleTimeoutMs": config.stream_idle_timeout.as_millis() as u64,
            "idleTimeoutMs": config.idle_timeout.as_millis() as u64,
            "maxConnectionDurationMs": config.max_connection_duration.map(|d| d.as_millis() as u64),
            "bufferLimitBytes": current.buffer_limit,
            "maxRequestHeadersKb": config.max_request_headers_kb,
            "pluginLimits": plugin_limits,
            "node": config.node,
            "listeners": config.listeners.iter().map(|listener| json!({
                "name": listener.name,
                "address": listener.address.to_string(),
                "tcp": listener.tcp.as_ref().map(|tcp| json!({
                    "cluster": tcp.cluster,
                    "idleTimeout": format!("{}s", tcp.idle_timeout.unwrap_or_default().as_secs_f64()),
                })),
                "routes": listener.routes.iter().map(|route| json!({
                    "name": route.name,
                    "match": {
                        "host": route.matcher.host.as_ref().map(|h| match h {
                            HostMatch::Exact(host) => host.clone(),
                            HostMatch::Suffix(suffix) => format!("*{suffix}"),
                        }),
                        "prefix": match &route.matcher.path { PathMatch::Prefix(p) => Some(p), _ => None },
                        "path": match &route.matcher.path { PathMatch::Exact(p) => Some(p), _ => None },
                        "headers": route.matcher.headers.iter().map(|h| json!({"name": h.name, "exact": h.value})).collect::<Vec<_>>(),
                    },
                    "cluster": route.cluster,
                    "plugins": route.overrides.iter().map(|(name, change)| (name.clone(), match change {
                        PluginOverride::Disabled => json!({"disabled": true}),
                        PluginOverride::Configuration(value) => json!({"pluginConfig": value}),
                    })).collect::<serde_json::Map<_, _>>(),
                })).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "clusters": config.clusters.iter().map(|cluster| json!({
                "name": cluster.name,
                "type": match cluster.kind { ClusterKind::Echo => "ECHO", ClusterKind::Static { .. } => "STATIC" },
                "protocol": if cluster.http2 { "HTTP2" } else { "HTTP1" },
                "endpoints": current.endpoints.get(&cluster.name).map(|e| e.iter().map(ToString::to_string).collect::<Vec<_>>()),
                "connectTimeout": format!("{}s", cluster.connect_timeout.as_secs_f64()),
                "timeout": format!("{}s", cluster.timeout.as_secs_f64()),
            })).collect::<Vec<_>>(),
            "plugins": plugins(&current, &self.stats),
            "notices": config.notices.iter().map(ToString::to_string).collect::<Vec<_>>(),
        })
    }
}

/// The running plugins, in chain order, with what identifies their code and the state of their
/// instances on each worker (as the workers last reported it, at most a second ago).
fn plugins(current: &ProxyConfig, stats: &Stats) -> Value {
    let reports = stats.instances();
    let unavailable = current.unavailable.iter().map(|u| {
        json!({
            "name": u.plugin.name,
            "url": u.plugin.url,
            "rootId": u.plugin.root_id,
            "phase": u.plugin.phase.as_str(),
            "priority": u.plugin.priority,
            "failStrategy": u.plugin.fail_strategy.to_string(),
            "type": if u.plugin.network { "NETWORK" } else { "HTTP" },
            "state": "unavailable",
            "failure": u.error,
        })
    });
    current
        .config
        .plugins
        .iter()
        .zip(&current.plugins)
        .map(|(plugin, loaded)| {
            json!({
                "name": plugin.name,
                "url": plugin.url,
                "rootId": plugin.root_id,
                "sha256": loaded.code.info.sha256,
                "abi": loaded.code.info.abi.as_ref().map(ToString::to_string).ok(),
                "sdk": loaded.code.info.sdk,
                "phase": plugin.phase.as_str(),
                "priority": plugin.priority,
                "failStrategy": plugin.fail_strategy.to_string(),
                "type": if plugin.network { "NETWORK" } else { "HTTP" },
                "ports": plugin.ports,
                "pluginConfig": plugin.configuration,
                "limits": instance_limits(&loaded.limits),
                "instances": reports.iter().flat_map(|(worker, instances)| {
                    instances.iter().filter(|i| i.plugin == plugin.name).map(move |i| json!({
                        "worker": worker,
                        "memoryBytes": i.memory_bytes,
                        "state": if i.failure.is_some() { "failed" } else { "running" },
                        "failure": i.failure,
                    }))
                }).collect::<Vec<_>>(),
            })
        })
        .chain(unavailable)
        .collect()
}

/// The bounds on one plugin instance, as `/config_dump` shows them.
fn instance_limits(limits: &sluice_host::Limits) -> serde_json::Map<String, Value> {
    [
        ("memoryBytes", json!(limits.memory_bytes)),
        (
            "callTimeoutMs",
            json!(limits.call_timeout.as_millis() as u64),
        ),
        (
            "startTimeoutMs",
            json!(limits.start_timeout.as_millis() as u64),
        ),
        ("logLineBytes", json!(limits.log_line_bytes)),
        ("headerMapEntries", json!(limits.header_map_entries)),
        ("headerMapBytes", json!(limits.header_map_bytes)),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_string(), value))
    .collect()
}

/// Binds the admin listener and serves it on a thread until `stop` fires.
pub fn start(
    address: SocketAddr,
    admin: Admin,
    mut stop: watch::Receiver<bool>,
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
                let sampled = admin.clone();
                tokio::spawn(async move {
                    let mut every = tokio::time::interval(SAMPLE_EVERY);
                    loop {
                        every.tick().await;
                        let mut history = sampled.history.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                        if history.len() == HISTORY_LENGTH {
                            history.pop_front();
                        }
                        history.push_back(sampled.stats.sample());
                    }
                });
                loop {
                    tokio::select! {
                        accepted = listener.accept() => {
                            let Ok((socket, _)) = accepted else { continue };
                            let admin = admin.clone();
                            tokio::spawn(async move {
                                let service = hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
                                    let admin = admin.clone();
                                    async move { Ok::<_, std::convert::Infallible>(admin.answer(request.method(), request.uri().path(), request.uri().query().unwrap_or_default()).await) }
                                });
                                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(socket), service).await;
                            });
                        }
                        _ = stop.wait_for(|stopping| *stopping) => break,
                    }
                }
            });
        })
        .map_err(|e| StartError::Worker { worker: usize::MAX, message: format!("admin thread: {e}") })?;
    Ok((bound, thread))
}
