//! The data plane: worker threads (one current-thread runtime, listener, plugin VMs and upstream
//! connections each), the HTTP server, upstreams and callouts, timers, all driving the sans-I/O
//! chain engine. It must never hold a plugin instance on more than one thread.

#![forbid(unsafe_code)]

mod access_log;
mod admin;
mod body;
mod client;
mod driver;
mod echo;
mod grpc;
mod headers;
mod load;
mod logging;
mod reload;
mod stats;
mod tls;
mod worker;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use sluice_config::{ClusterKind, Config};
use sluice_host::{Engine, Limits, PluginCode};

pub use load::{Source, load};
pub use reload::{LastReload, ReloadError, Reloader, canary};
pub use worker::{RunningProxy, start};

/// A plugin of the config, ready to instantiate.
#[derive(Clone)]
pub struct LoadedPlugin {
    pub code: PluginCode,
    /// `vmConfig.env`, resolved.
    pub env: Vec<(String, String)>,
    pub limits: Limits,
}

/// Everything a proxy needs to start, or to swap in on a reload.
#[derive(Clone)]
pub struct ProxyConfig {
    pub config: Config,
    /// The module of each of `config.plugins`, in the same order.
    pub plugins: Vec<LoadedPlugin>,
    /// The resolved addresses of each STATIC cluster's endpoints.
    pub endpoints: HashMap<String, Vec<SocketAddr>>,
    /// Each listener's TLS settings (same order as `config.listeners`); `None` for cleartext.
    pub tls: Vec<Option<Arc<rustls::ServerConfig>>>,
    pub buffer_limit: usize,
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
    /// An endpoint: `host` is used for error messages and, for Istio-style names, to connect.
    Endpoint {
        host: String,
        port: u16,
        address: Option<SocketAddr>,
    },
}

/// The clusters of one config generation, with a round-robin position per cluster (per worker).
pub(crate) struct Clusters {
    config: std::sync::Arc<ProxyConfig>,
    next: std::cell::RefCell<HashMap<String, usize>>,
}

impl Clusters {
    pub fn new(config: std::sync::Arc<ProxyConfig>) -> Self {
        Self {
            config,
            next: std::cell::RefCell::default(),
        }
    }

    /// The next target for a cluster name: a configured cluster (round-robin over its
    /// endpoints), or Istio's `outbound|PORT||HOST` form.
    pub fn pick(&self, name: &str) -> Option<Target> {
        if let Some(cluster) = self.config.config.cluster(name) {
            return match cluster.kind {
                ClusterKind::Echo => Some(Target::Echo),
                ClusterKind::Static { .. } => {
                    let endpoints = self.config.endpoints.get(name)?;
                    let mut next = self.next.borrow_mut();
                    let position = next.entry(name.to_string()).or_default();
                    let address = *endpoints.get(*position % endpoints.len().max(1))?;
                    *position = position.wrapping_add(1);
                    Some(Target::Endpoint {
                        host: address.to_string(),
                        port: address.port(),
                        address: Some(address),
                    })
                }
            };
        }
        outbound(name).map(|(host, port)| Target::Endpoint {
            host: host.to_string(),
            port,
            address: None,
        })
    }

    pub fn timeouts(&self, name: &str) -> (std::time::Duration, std::time::Duration) {
        self.config.config.cluster(name).map_or(
            (
                sluice_config::DEFAULT_CONNECT_TIMEOUT,
                sluice_config::DEFAULT_TIMEOUT,
            ),
            |c| (c.connect_timeout, c.timeout),
        )
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
