//! The validated configuration: what `sluice run` serves, whichever way it was written (a config
//! file or command-line flags).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{FailStrategy, VmConfig};

/// Envoy's default cluster connect timeout.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Envoy's default route timeout: the whole upstream response must arrive within it.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);
/// nginx's `client_header_timeout` (Envoy has none by default, which leaves a connection that
/// sends nothing open for good).
pub const DEFAULT_REQUEST_HEADERS_TIMEOUT: Duration = Duration::from_secs(60);
/// Envoy's default `stream_idle_timeout`.
pub const DEFAULT_STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Envoy's default `max_request_headers_kb`, and the most it allows.
pub const DEFAULT_MAX_REQUEST_HEADERS_KB: u32 = 60;
pub const MAX_REQUEST_HEADERS_KB: u32 = 8192;
/// Envoy's default connection `idle_timeout`.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
/// Where the admin API listens unless told otherwise.
pub const DEFAULT_ADMIN: &str = "127.0.0.1:9901";
/// Where the proxy listens unless told otherwise.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::LOCALHOST,
    10000,
));

/// Everything `sluice run` serves.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Where the admin API listens; `None` turns it off.
    pub admin: Option<SocketAddr>,
    /// Worker threads; `None` means one per core.
    pub workers: Option<usize>,
    /// Where one JSON line per request goes: a file path, or `-` for stdout; `None` for none.
    pub access_log: Option<String>,
    /// Registries (host or host:port, or `*`) that plugins are pulled from over plain HTTP.
    pub insecure_registries: Vec<String>,
    /// The body of the 503 a failing plugin's stream gets.
    pub failure_body: crate::FailureBody,
    /// Where this proxy runs, as plugins read it (`xds.node.*`).
    pub node: Node,
    /// How long a client has for its first bytes and each HTTP/1.1 request head (also the
    /// longest an HTTP/1.1 connection stays idle between requests).
    pub request_headers_timeout: Duration,
    /// How long a stream may go without progress either way (no client or upstream data taken
    /// or given) before it is ended: Envoy's `stream_idle_timeout`.
    pub stream_idle_timeout: Duration,
    /// How long a client connection may go without a stream before it is closed: Envoy's
    /// `idle_timeout`.
    pub idle_timeout: Duration,
    /// How long a client connection may live, if bounded: Envoy's `max_connection_duration`.
    pub max_connection_duration: Option<Duration>,
    /// The most body bytes a stream buffers per direction for its plugins (413/500 past it);
    /// `None`: the embedder's default (1 MiB, Envoy's `per_connection_buffer_limit_bytes`).
    pub buffer_limit_bytes: Option<usize>,
    /// The largest request head a client may send, in KiB: Envoy's `max_request_headers_kb`.
    pub max_request_headers_kb: u32,
    /// Bounds on every plugin; what is not set keeps the host's default.
    pub plugin_limits: PluginLimits,
    pub listeners: Vec<Listener>,
    pub clusters: Vec<Cluster>,
    /// In execution order (phase, then priority, then name).
    pub plugins: Vec<Plugin>,
    /// Fields that were accepted but mean nothing to sluice, with where they were.
    pub notices: Vec<Notice>,
}

/// `spec.pluginLimits`: bounds on every plugin instance, each optional (the host's default).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PluginLimits {
    /// Linear memory per instance.
    pub memory_bytes: Option<u64>,
    /// CPU time of one callback, and of start-up (`proxy_on_vm_start`, `proxy_on_configure`).
    pub call_timeout: Option<Duration>,
    pub start_timeout: Option<Duration>,
    /// The longest log line written.
    pub log_line_bytes: Option<u64>,
    /// The most entries, and bytes, of a header map the plugin changed.
    pub header_map_entries: Option<u64>,
    pub header_map_bytes: Option<u64>,
    /// Bytes the shared data of one vm_id may hold.
    pub shared_data_bytes: Option<u64>,
    /// Queues one vm_id may register, items one queue holds, bytes the queues of one vm_id hold.
    pub shared_queues: Option<u64>,
    pub shared_queue_items: Option<u64>,
    pub shared_queue_bytes: Option<u64>,
    /// Distinct metrics of the process.
    pub metrics: Option<u64>,
}

/// Envoy's bootstrap `node`: what plugins read under `xds.node` (Istio's metadata exchange and
/// stats read `xds.node.metadata`). Envoy's defaults: everything empty.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Node {
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub cluster: String,
    /// Any JSON object (a `google.protobuf.Struct`).
    #[serde(default)]
    pub metadata: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    pub locality: Locality,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Locality {
    #[serde(default)]
    pub region: String,
    #[serde(default)]
    pub zone: String,
    #[serde(default)]
    pub sub_zone: String,
}

/// A field sluice accepted and ignores (Kubernetes-only fields of a WasmPlugin, say).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    pub place: String,
    pub message: String,
}

impl std::fmt::Display for Notice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.place, self.message)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Listener {
    pub name: String,
    pub address: SocketAddr,
    /// TLS with ALPN (h2, http/1.1); `None` is cleartext (HTTP/1.1 and h2c prior knowledge).
    pub tls: Option<TlsFiles>,
    /// Tried in order; the first that matches routes the request. Empty on a TCP listener.
    pub routes: Vec<Route>,
    /// A TCP listener: every connection is proxied to a cluster's endpoint, through the
    /// network plugins (Envoy's tcp_proxy). `None`: an HTTP listener.
    pub tcp: Option<TcpProxy>,
}

/// What a TCP listener does with its connections (Envoy's `tcp_proxy`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpProxy {
    /// The cluster whose endpoints (round-robin) the connections go to.
    pub cluster: String,
    /// How long a connection may pass no bytes either way before it is closed; `None`: never.
    pub idle_timeout: Option<Duration>,
}

/// A listener's certificate chain and private key, as PEM file paths (relative to the config file).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub certificate: String,
    pub private_key: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Route {
    pub name: String,
    pub matcher: RouteMatch,
    /// The cluster requests on this route go to.
    pub cluster: String,
    /// Per-route changes to plugins, by plugin name.
    pub overrides: BTreeMap<String, PluginOverride>,
}

/// What a route changes about one plugin (Envoy's per-route `typed_per_filter_config`).
#[derive(Clone, Debug, PartialEq)]
pub enum PluginOverride {
    /// The plugin does not run on this route.
    Disabled,
    /// The plugin runs with this `pluginConfig` instead of its own.
    Configuration(serde_json::Value),
}

/// Which requests a route takes. Every part given must match.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteMatch {
    pub host: Option<HostMatch>,
    pub path: PathMatch,
    pub headers: Vec<HeaderMatch>,
}

/// A match on the request's host (`:authority` without its port), case-insensitive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostMatch {
    Exact(String),
    /// `*.example.com`: any host ending in `.example.com`.
    Suffix(String),
}

/// A match on `:path`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum PathMatch {
    #[default]
    Any,
    /// The path starts with this (query string included, as in Envoy).
    Prefix(String),
    /// The path without its query string is exactly this.
    Exact(String),
}

/// A match on a request header: present, or with exactly this value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderMatch {
    /// Lowercase.
    pub name: String,
    pub value: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Cluster {
    pub name: String,
    pub kind: ClusterKind,
    /// How requests reach the endpoints: HTTP/1.1, or HTTP/2 with prior knowledge (h2c).
    pub http2: bool,
    pub connect_timeout: Duration,
    /// How long the whole upstream response may take.
    pub timeout: Duration,
}

impl Cluster {
    /// A cluster of one `HOST:PORT` endpoint, with Envoy's default timeouts.
    pub fn endpoint(name: &str, endpoint: String) -> Self {
        Self {
            name: name.to_string(),
            kind: ClusterKind::Static {
                endpoints: vec![endpoint],
            },
            http2: false,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClusterKind {
    /// The built-in echo upstream: answers with the request it received, as JSON.
    Echo,
    /// HTTP/1.1 endpoints (`host:port`), used round-robin.
    Static { endpoints: Vec<String> },
}

/// The stages of Istio's filter chain a plugin can be inserted before, in execution order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Phase {
    Authn,
    Authz,
    Stats,
    /// Last, just before the router.
    #[default]
    Unspecified,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Authn => "AUTHN",
            Self::Authz => "AUTHZ",
            Self::Stats => "STATS",
            Self::Unspecified => "UNSPECIFIED_PHASE",
        }
    }
}

/// One plugin, as an Istio `WasmPlugin` (or a `--plugin` flag) describes it.
#[derive(Clone, Debug, PartialEq)]
pub struct Plugin {
    /// Unique; the WasmPlugin's `metadata.name`.
    pub name: String,
    /// Where the module is: a path (relative to the config file), or a `file://`, `http(s)://` or
    /// `oci://` URL.
    pub url: String,
    /// Lowercase hex, when given: the module must have this digest.
    pub sha256: Option<String>,
    /// Istio's `pluginName`, Envoy's `root_id`.
    pub root_id: String,
    /// Istio's `pluginConfig`.
    pub configuration: Option<serde_json::Value>,
    pub phase: Phase,
    pub priority: i64,
    pub vm: VmConfig,
    pub fail_strategy: FailStrategy,
    /// Listener ports the plugin runs on (Istio `match[].ports`); empty means every listener
    /// of its kind.
    pub ports: Vec<u16>,
    /// Istio's `type: NETWORK`: an L4 plugin, run on TCP listeners only (HTTP plugins run on HTTP
    /// listeners only).
    pub network: bool,
    /// What the plugin may do (the `Proxy` document's `pluginCapabilities`).
    pub capabilities: Capabilities,
    /// Istio's `imagePullPolicy`; `None`: Istio's default for the url.
    pub pull_policy: Option<PullPolicy>,
    /// Istio's `imagePullSecret`, here a docker config JSON file (a `dockerconfigjson` secret's
    /// content), relative to the config file.
    pub pull_secret: Option<String>,
    /// Where the plugin was declared, for messages about it.
    pub origin: Origin,
}

/// Where a plugin was declared.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// `--plugin GIVEN` on the command line.
    Flag { given: String },
    /// A WasmPlugin document: its label (`document 2 (WasmPlugin auth)`) and its index in the
    /// config text (from 0), to find a field's line when an error needs it.
    Document { label: String, index: usize },
}

impl Origin {
    /// The place of one of the plugin's fields (`spec.url`, `spec.sha256`) in an error: the flag,
    /// or the document and field with its line and column in `text`, the config it came from.
    pub fn place(&self, field: &str, text: Option<&str>) -> (String, Option<crate::Location>) {
        match self {
            Self::Flag { given } => (format!("--plugin {given}"), None),
            Self::Document { label, index } => (
                format!("{label} {field}"),
                text.and_then(|text| crate::locate(text, *index, field)),
            ),
        }
    }
}

/// Istio's `imagePullPolicy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PullPolicy {
    IfNotPresent,
    Always,
}

/// A plugin's capability allow-list (Envoy's `capability_restriction_config`, plus clusters).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// The `proxy_*` and WASI host functions and `proxy_on_*` callbacks it may use; `None`: all.
    pub allow: Option<std::collections::BTreeSet<String>>,
    /// The clusters it may call; `None`: any.
    pub clusters: Option<std::collections::BTreeSet<String>>,
    /// Envoy's `allow_on_headers_stop_iteration`: a headers callback that returns Pause holds the
    /// headers only, and the plugin is still called with the body (Envoy's `StopIteration`);
    /// otherwise Pause stops everything (`StopAllIterationAndWatermark`). Higress's ABI
    /// (`0_2_100`) modules always get the former.
    pub headers_stop_iteration: bool,
    /// This plugin's own bounds on its instances, over `spec.pluginLimits` (the shared-state
    /// fields are never set here: they bound the process).
    pub limits: PluginLimits,
    /// Where the allow-list was written (the Proxy document's field), for errors about it.
    pub place: String,
    pub location: Option<crate::Location>,
}

impl Plugin {
    /// A plugin from a local module, as `--plugin` gives it: default phase and priority (the
    /// chain keeps the order plugins are given in), every listener, `root_id` = `name`.
    pub fn local(
        name: String,
        url: String,
        configuration: Option<serde_json::Value>,
        fail_strategy: FailStrategy,
    ) -> Self {
        Self {
            origin: Origin::Flag { given: url.clone() },
            root_id: name.clone(),
            name,
            url,
            sha256: None,
            configuration,
            phase: Phase::Unspecified,
            priority: 0,
            vm: VmConfig::default(),
            fail_strategy,
            ports: Vec::new(),
            network: false,
            capabilities: Capabilities::default(),
            pull_policy: None,
            pull_secret: None,
        }
    }

    pub fn applies_to(&self, listener: &Listener) -> bool {
        self.network == listener.tcp.is_some()
            && (self.ports.is_empty() || self.ports.contains(&listener.address.port()))
    }

    /// Whether requests on `route` of `listener` (`None`: no route matched) run this plugin: it
    /// applies to the listener and the route does not disable it.
    pub fn runs_on(&self, listener: &Listener, route: Option<&Route>) -> bool {
        self.applies_to(listener)
            && !matches!(
                route.and_then(|r| r.overrides.get(&self.name)),
                Some(PluginOverride::Disabled)
            )
    }
}

/// A plugin of the chain for one route, with the configuration it runs with there.
#[derive(Clone, Debug, PartialEq)]
pub struct ChainEntry<'a> {
    /// The plugin's index in [`Config::plugins`].
    pub index: usize,
    pub plugin: &'a Plugin,
    pub configuration: Option<&'a serde_json::Value>,
}

impl Config {
    /// One listener whose one route takes every request to `upstream` (`HOST:PORT`, as the
    /// cluster `upstream`) or, without one, to the built-in echo upstream (the cluster `echo`):
    /// what `sluice run` serves without a config file.
    pub fn single_route(
        listen: SocketAddr,
        upstream: Option<String>,
        admin: Option<SocketAddr>,
    ) -> Self {
        let cluster = match upstream {
            Some(endpoint) => Cluster::endpoint("upstream", endpoint),
            None => Cluster {
                kind: ClusterKind::Echo,
                ..Cluster::endpoint("echo", String::new())
            },
        };
        Self {
            admin,
            workers: None,
            access_log: None,
            insecure_registries: Vec::new(),
            failure_body: crate::FailureBody::Empty,
            node: Node::default(),
            request_headers_timeout: DEFAULT_REQUEST_HEADERS_TIMEOUT,
            stream_idle_timeout: DEFAULT_STREAM_IDLE_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_connection_duration: None,
            buffer_limit_bytes: None,
            max_request_headers_kb: DEFAULT_MAX_REQUEST_HEADERS_KB,
            plugin_limits: PluginLimits::default(),
            listeners: vec![Listener {
                name: "default".into(),
                address: listen,
                tls: None,
                routes: vec![Route {
                    name: "default".into(),
                    matcher: RouteMatch::default(),
                    cluster: cluster.name.clone(),
                    overrides: BTreeMap::new(),
                }],
                tcp: None,
            }],
            clusters: vec![cluster],
            plugins: Vec::new(),
            notices: Vec::new(),
        }
    }

    /// The plugins a request on `route` of `listener` runs through, in order. Without a route
    /// (nothing matched), every plugin of the listener runs with its own configuration.
    pub fn chain<'a>(
        &'a self,
        listener: &Listener,
        route: Option<&'a Route>,
    ) -> Vec<ChainEntry<'a>> {
        self.plugins
            .iter()
            .enumerate()
            .filter(|(_, plugin)| plugin.runs_on(listener, route))
            .map(|(index, plugin)| {
                let configuration = match route.and_then(|r| r.overrides.get(&plugin.name)) {
                    Some(PluginOverride::Configuration(value)) => Some(value),
                    _ => plugin.configuration.as_ref(),
                };
                ChainEntry {
                    index,
                    plugin,
                    configuration,
                }
            })
            .collect()
    }

    pub fn cluster(&self, name: &str) -> Option<&Cluster> {
        self.clusters.iter().find(|c| c.name == name)
    }
}

impl Listener {
    /// The first route matching a request, given its `:authority`, `:path` and a header lookup.
    pub fn route<'h>(
        &self,
        authority: &str,
        path: &str,
        header: impl Fn(&str) -> Option<&'h [u8]>,
    ) -> Option<&Route> {
        self.routes
            .iter()
            .find(|route| route.matcher.matches(authority, path, &header))
    }
}

impl RouteMatch {
    pub fn matches<'h>(
        &self,
        authority: &str,
        path: &str,
        header: impl Fn(&str) -> Option<&'h [u8]>,
    ) -> bool {
        let host_matches = match &self.host {
            None => true,
            Some(expected) => {
                let host = host_of(authority);
                match expected {
                    HostMatch::Exact(name) => host.eq_ignore_ascii_case(name),
                    HostMatch::Suffix(suffix) => {
                        host.len() > suffix.len()
                            && host
                                .get(host.len() - suffix.len()..)
                                .is_some_and(|tail| tail.eq_ignore_ascii_case(suffix))
                    }
                }
            }
        };
        let path_matches = match &self.path {
            PathMatch::Any => true,
            PathMatch::Prefix(prefix) => path.starts_with(prefix.as_str()),
            PathMatch::Exact(exact) => path.split('?').next() == Some(exact.as_str()),
        };
        host_matches
            && path_matches
            && self
                .headers
                .iter()
                .all(|m| match (header(&m.name), &m.value) {
                    (None, _) => false,
                    (Some(_), None) => true,
                    (Some(actual), Some(expected)) => actual == expected.as_bytes(),
                })
    }
}

/// `:authority` without its port (`[::1]:80` → `[::1]`).
fn host_of(authority: &str) -> &str {
    match authority.rfind(':') {
        Some(colon) if !authority[colon..].contains(']') => &authority[..colon],
        _ => authority,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(matcher: RouteMatch) -> Route {
        Route {
            name: "r".into(),
            matcher,
            cluster: "c".into(),
            overrides: BTreeMap::new(),
        }
    }

    #[test]
    fn routes_match_host_path_and_headers() {
        let header = |name: &str| (name == "x-env").then_some(&b"canary"[..]);
        let api = RouteMatch {
            host: Some(HostMatch::Suffix(".example.com".into())),
            path: PathMatch::Prefix("/api".into()),
            headers: vec![HeaderMatch {
                name: "x-env".into(),
                value: Some("canary".into()),
            }],
        };
        assert!(api.matches("API.example.com:8080", "/api/v1?q", header));
        assert!(!api.matches("example.com", "/api", header));
        assert!(!api.matches("a.example.com", "/other", header));
        assert!(!api.matches("a.example.com", "/api", |_| None));
        let exact = RouteMatch {
            host: Some(HostMatch::Exact("[::1]".into())),
            path: PathMatch::Exact("/health".into()),
            headers: Vec::new(),
        };
        assert!(exact.matches("[::1]:80", "/health?verbose", |_| None));
        assert!(!exact.matches("[::1]", "/health/x", |_| None));
        let listener = Listener {
            name: "l".into(),
            address: "127.0.0.1:80".parse().unwrap(),
            tls: None,
            routes: vec![route(exact), route(RouteMatch::default())],
            tcp: None,
        };
        assert!(std::ptr::eq(
            listener.route("x", "/", |_| None).unwrap(),
            &listener.routes[1]
        ));
    }
}
