//! The data plane: worker threads (one current-thread runtime, listener, plugin VMs and upstream
//! connections each), the HTTP server, upstreams and callouts, timers, all driving the sans-I/O
//! chain engine. It must never hold a plugin instance on more than one thread.

#![forbid(unsafe_code)]

mod accept;
mod access_log;
mod admin;
mod body;
mod calls;
mod client;
mod client_io;
mod driver;
mod echo;
mod framing;
mod generation;
mod grpc;
mod h2_guard;
mod headers;
mod load;
mod logging;
mod redis;
mod reload;
mod runtime;
mod stats;
mod tcp;
mod timers;
mod tls;
mod upstream;
mod worker;

use std::cell::Cell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use sluice_config::{ClusterKind, Config};
use sluice_host::{Engine, Limits, PluginCode};

pub use load::Source;
pub use reload::{LastReload, ReloadError, Reloader, canary};
pub use worker::{RunningProxy, start, start_loaded};

/// Entry points for the fuzz targets in `fuzz/`; not an API.
#[doc(hidden)]
pub mod fuzzing {
    use sluice_abi::HeaderMap;

    /// What the proxy makes of a head the plugins left: the upstream request over HTTP/1.1 and
    /// HTTP/2, the response head, and the fields read back into a map.
    pub fn plugin_head_to_http(head: &HeaderMap) {
        for http2 in [false, true] {
            let _ = crate::client::upstream_request(head, "example.com:80", (), http2);
        }
        let _ = crate::headers::status(head);
        let fields = crate::headers::to_fields(head);
        let _ = crate::headers::fields_map(&fields);
    }
}

/// A plugin of the config, ready to instantiate.
#[derive(Clone)]
pub struct LoadedPlugin {
    pub code: PluginCode,
    /// `vmConfig.env`, resolved.
    pub env: Vec<(String, String)>,
    pub limits: Limits,
}

/// A plugin whose remote module could not be fetched. It is left out of the effective config's
/// plugins; its failStrategy says what its requests get: FAIL_OPEN skips it, FAIL_CLOSE and
/// FAIL_RELOAD answer 503. The fetch is retried in the background.
#[derive(Clone, Debug)]
pub struct Unavailable {
    pub plugin: sluice_config::Plugin,
    pub error: String,
}

impl Unavailable {
    /// Whether requests that would run the plugin are refused rather than served without it.
    pub fn blocks(&self) -> bool {
        self.plugin.fail_strategy != sluice_config::FailStrategy::FailOpen
    }
}

/// Everything a proxy needs to start, or to swap in on a reload.
#[derive(Clone)]
pub struct ProxyConfig {
    pub config: Config,
    /// The module of each of `config.plugins`, in the same order.
    pub plugins: Vec<LoadedPlugin>,
    /// The plugins whose remote modules could not be fetched (not in `config.plugins`).
    pub unavailable: Vec<Unavailable>,
    /// The resolved addresses of each STATIC cluster's endpoints.
    pub endpoints: HashMap<String, Vec<SocketAddr>>,
    /// Each listener's TLS settings (same order as `config.listeners`); `None` for cleartext.
    pub tls: Vec<Option<Arc<rustls::ServerConfig>>>,
    pub buffer_limit: usize,
    /// Every plugin's limits: the embedder's, with what `spec.pluginLimits` sets.
    pub plugin_limits: sluice_host::Limits,
    /// The bounds on what plugins share (`spec.pluginLimits`), applied to the engine when this
    /// config starts serving.
    pub shared_limits: sluice_host::SharedLimits,
    pub engine: Engine,
}

impl ProxyConfig {
    pub fn workers(&self) -> usize {
        self.config
            .workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
    }
}

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {address}: {source}")]
    Listen {
        address: SocketAddr,
        source: std::io::Error,
    },
    /// A plugin refused to start (`proxy_on_vm_start` or `proxy_on_configure`), with its logs.
    #[error("{0}")]
    Plugin(String),
    #[error("worker {worker}: {message}")]
    Worker { worker: usize, message: String },
    #[error("the config cannot be used:\n{}", .0.iter().map(|e| format!("  {e}")).collect::<Vec<_>>().join("\n"))]
    Config(Vec<sluice_config::ConfigError>),
}

/// Where a cluster name sends a request.
#[derive(Clone, Debug)]
pub(crate) enum Target {
    /// The built-in echo upstream.
    Echo,
    Endpoint(PickedEndpoint),
}

/// One endpoint of a cluster, picked for a request or a call, with the cluster's protocol and
/// timeouts (Envoy's defaults for undeclared names). Every kind of call (HTTP, gRPC, Redis, TCP)
/// turns it into an address the same way, through [`PickedEndpoint::endpoint`].
#[derive(Clone, Debug)]
pub(crate) struct PickedEndpoint {
    /// For error messages and, for Istio-style names, to look up.
    pub host: Rc<str>,
    pub port: u16,
    /// Known for a declared cluster; an `outbound|PORT||HOST` name is looked up per call.
    pub address: Option<SocketAddr>,
    pub http2: bool,
    pub connect_timeout: Duration,
    pub timeout: Duration,
}

impl PickedEndpoint {
    /// The endpoint of a declared cluster, whose address is known without a lookup.
    pub fn declared(&self) -> Option<client::Endpoint> {
        self.address.map(|address| self.at(address))
    }

    /// Where to connect: the declared address, or the name looked up now, within the cluster's
    /// connect timeout.
    pub async fn endpoint(&self) -> Result<client::Endpoint, client::ClientError> {
        let address = match self.address {
            Some(address) => address,
            None => client::resolve(&self.host, self.port, self.connect_timeout).await?,
        };
        Ok(self.at(address))
    }

    fn at(&self, address: SocketAddr) -> client::Endpoint {
        client::Endpoint {
            address,
            host: self.host.clone(),
            http2: self.http2,
        }
    }
}

/// One cluster as a worker uses it: its endpoints (with their names, formatted once) and the
/// round-robin position.
struct ClusterState {
    echo: bool,
    http2: bool,
    endpoints: Vec<(SocketAddr, Rc<str>)>,
    next: Cell<usize>,
    timeouts: (Duration, Duration),
}

/// The clusters of one config generation, with a round-robin position per cluster (per worker).
pub(crate) struct Clusters {
    by_name: HashMap<String, ClusterState>,
}

impl Clusters {
    pub fn new(config: &ProxyConfig) -> Self {
        let by_name = config
            .config
            .clusters
            .iter()
            .map(|cluster| {
                let endpoints = config
                    .endpoints
                    .get(&cluster.name)
                    .map(|addresses| {
                        addresses
                            .iter()
                            .map(|a| (*a, Rc::from(a.to_string().as_str())))
                            .collect()
                    })
                    .unwrap_or_default();
                let state = ClusterState {
                    echo: cluster.kind == ClusterKind::Echo,
                    http2: cluster.http2,
                    endpoints,
                    next: Cell::new(0),
                    timeouts: (cluster.connect_timeout, cluster.timeout),
                };
                (cluster.name.clone(), state)
            })
            .collect();
        Self { by_name }
    }

    /// The next target for a cluster name: a configured cluster (round-robin over its
    /// endpoints), or Istio's `outbound|PORT||HOST` form.
    pub fn pick(&self, name: &str) -> Option<Target> {
        if let Some(cluster) = self.by_name.get(name) {
            if cluster.echo {
                return Some(Target::Echo);
            }
            let position = cluster.next.get();
            cluster.next.set(position.wrapping_add(1));
            let (address, host) = cluster
                .endpoints
                .get(position % cluster.endpoints.len().max(1))?;
            return Some(Target::Endpoint(PickedEndpoint {
                host: host.clone(),
                port: address.port(),
                address: Some(*address),
                http2: cluster.http2,
                connect_timeout: cluster.timeouts.0,
                timeout: cluster.timeouts.1,
            }));
        }
        outbound(name).map(|(host, port)| {
            Target::Endpoint(PickedEndpoint {
                host: Rc::from(host),
                port,
                address: None,
                http2: false,
                connect_timeout: sluice_config::DEFAULT_CONNECT_TIMEOUT,
                timeout: sluice_config::DEFAULT_TIMEOUT,
            })
        })
    }
}

/// Istio's `outbound|PORT|SUBSET|HOST` cluster names, which need no declaration.
pub(crate) fn outbound(name: &str) -> Option<(&str, u16)> {
    let mut parts = name.split('|');
    match (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) {
        (Some("outbound"), Some(port), Some(_subset), Some(host), None) if !host.is_empty() => {
            Some((host, port.parse().ok()?))
        }
        _ => None,
    }
}

/// Whether a plugin may name this cluster in a callout.
pub(crate) fn cluster_exists(config: &Config, name: &str) -> bool {
    config.cluster(name).is_some() || outbound(name).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn istio_outbound_names_resolve_without_configuration() {
        assert_eq!(
            outbound("outbound|8080||auth.default.svc.cluster.local"),
            Some(("auth.default.svc.cluster.local", 8080))
        );
        assert_eq!(outbound("outbound|x||h"), None);
        assert_eq!(outbound("outbound|80||"), None);
        assert_eq!(outbound("nope"), None);
    }
}
