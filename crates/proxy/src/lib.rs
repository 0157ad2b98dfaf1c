//! The data plane: worker threads (one current-thread runtime, listener, plugin VMs and upstream
//! connections each), the HTTP server, upstreams and callouts, timers, all driving the sans-I/O
//! chain engine. It must never hold a plugin instance on more than one thread.

mod admin;
mod body;
mod client;
mod driver;
mod echo;
mod headers;
mod stats;
mod worker;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use sluice_config::FailStrategy;
use sluice_host::{Engine, Limits, PluginCode};

pub use worker::{RunningProxy, start};

/// Where requests go after the plugins.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Upstream {
    /// The built-in echo upstream: answers with the request it received, as JSON.
    Echo,
    /// An HTTP/1.1 origin.
    Http {
        address: SocketAddr,
        authority: String,
    },
}

/// One plugin of the chain.
#[derive(Clone)]
pub struct PluginConfig {
    pub name: String,
    pub root_id: String,
    pub code: PluginCode,
    pub configuration: Vec<u8>,
    pub vm_id: String,
    pub env: Vec<(String, String)>,
    pub fail_strategy: FailStrategy,
    pub limits: Limits,
}

/// Everything a proxy needs to start.
#[derive(Clone)]
pub struct ProxyConfig {
    pub listen: SocketAddr,
    pub workers: usize,
    pub upstream: Upstream,
    /// Named clusters plugins can call with `dispatch_http_call` (Istio-style
    /// `outbound|PORT||HOST` names need no entry).
    pub clusters: HashMap<String, SocketAddr>,
    pub plugins: Vec<PluginConfig>,
    pub buffer_limit: usize,
    pub engine: Engine,
    /// Where the admin API listens (`/ready`, `/stats`, `/plugins`); `None` disables it.
    pub admin: Option<SocketAddr>,
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
}

/// Resolves a cluster name: a configured cluster, or Istio's `outbound|PORT||HOST` form.
pub(crate) fn resolve_cluster(
    clusters: &HashMap<String, SocketAddr>,
    name: &str,
) -> Option<ClusterTarget> {
    if let Some(address) = clusters.get(name) {
        return Some(ClusterTarget {
            host: address.to_string(),
            port: address.port(),
            address: Some(*address),
        });
    }
    let mut parts = name.split('|');
    match (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) {
        (Some("outbound"), Some(port), Some(_subset), Some(host), None) if !host.is_empty() => {
            let port = port.parse().ok()?;
            Some(ClusterTarget {
                host: host.to_string(),
                port,
                address: None,
            })
        }
        _ => None,
    }
}

#[derive(Clone, Debug)]
pub(crate) struct ClusterTarget {
    pub host: String,
    pub port: u16,
    pub address: Option<SocketAddr>,
}

pub(crate) type Clusters = Arc<HashMap<String, SocketAddr>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn istio_outbound_names_resolve_without_configuration() {
        let clusters = HashMap::from([("authz".to_string(), "127.0.0.1:9000".parse().unwrap())]);
        assert_eq!(resolve_cluster(&clusters, "authz").unwrap().port, 9000);
        let outbound =
            resolve_cluster(&clusters, "outbound|8080||auth.default.svc.cluster.local").unwrap();
        assert_eq!(
            (outbound.host.as_str(), outbound.port),
            ("auth.default.svc.cluster.local", 8080)
        );
        assert!(resolve_cluster(&clusters, "outbound|x||h").is_none());
        assert!(resolve_cluster(&clusters, "nope").is_none());
    }
}
