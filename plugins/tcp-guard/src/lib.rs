//! tcp-guard: an L4 (network filter) plugin on the SDK's `StreamContext`: asks an authorization
//! service before it lets a connection through, refuses connections whose first bytes start with
//! a deny prefix, prepends a banner to what the upstream sends first, counts connections and
//! bytes, and logs each connection.
//!
//! ```json
//! {"deny_prefix": "EVIL", "banner": "hello from tcp-guard\r\n", "metric_prefix": "tcp_guard",
//!  "authorize": {"cluster": "authz", "path": "/tcp", "timeout_ms": 1000},
//!  "route_by_source": {"10.0.0.7": "canary"}}
//! ```
//!
//! * `on_new_connection`: counts the connection, logs its `source.address`. A client whose IP is
//!   in `route_by_source` goes to that cluster instead of the listener's: the plugin sets Envoy's
//!   filter state `envoy.tcp_proxy.cluster` (foreign function `set_envoy_filter_state`), which
//!   tcp_proxy reads when it connects. With `authorize`, it
//!   sends `GET path` to `cluster` (`x-client-address: <source.address>`) and returns `Pause`:
//!   the connection waits, its upstream not yet connected, until `on_http_call_response`
//!   resumes it on a 200 (`resume_downstream`) or closes it on any other answer, a failure or
//!   the timeout (`close_downstream`, counted as denied).
//! * `on_downstream_data`: while the first bytes could still be the deny prefix but are fewer
//!   than it, returns `Pause` (the host keeps reading and calls again with the grown buffer)
//!   unless it is the end of the stream; if they start with it, counts the connection as denied,
//!   logs it, closes the connection (`close_downstream`) and returns `Pause`. Bytes let through
//!   are counted.
//! * `on_upstream_data`: prepends the banner to the first upstream data of the connection
//!   (`set_upstream_data(0, 0, banner)`) and counts the upstream bytes. It never pauses:
//!   Envoy cannot resume the upstream side.
//! * `on_downstream_close` / `on_upstream_close` / `on_log`: log lines.
//!
//! Counters: `<metric_prefix>_connections`, `_downstream_bytes`, `_upstream_bytes`, `_denied`.

use std::rc::Rc;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::*;
use proxy_wasm::types::*;
use serde::Deserialize;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(Root { state: Rc::new(State::default()) })
    });
}}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    deny_prefix: Option<String>,
    #[serde(default)]
    banner: Option<String>,
    #[serde(default = "default_metric_prefix")]
    metric_prefix: String,
    #[serde(default)]
    authorize: Option<Authorize>,
    /// Client IP → the cluster its connections go to.
    #[serde(default)]
    route_by_source: std::collections::BTreeMap<String, String>,
}

/// The service asked about each new connection.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Authorize {
    cluster: String,
    #[serde(default = "default_authorize_path")]
    path: String,
    #[serde(default = "default_authorize_timeout_ms")]
    timeout_ms: u64,
}

fn default_authorize_path() -> String {
    "/".to_string()
}

fn default_authorize_timeout_ms() -> u64 {
    1000
}

impl Default for Config {
    fn default() -> Self {
        Config {
            deny_prefix: None,
            banner: None,
            metric_prefix: default_metric_prefix(),
            authorize: None,
            route_by_source: std::collections::BTreeMap::new(),
        }
    }
}

fn default_metric_prefix() -> String {
    "tcp_guard".to_string()
}

impl Config {
    fn validate(mut self) -> Result<Self, String> {
        if self.metric_prefix.is_empty() {
            return Err("metric_prefix must not be empty".to_string());
        }
        if let Some((ip, _)) = self
            .route_by_source
            .iter()
            .find(|(ip, cluster)| ip.parse::<std::net::IpAddr>().is_err() || cluster.is_empty())
        {
            return Err(format!(
                "route_by_source: {ip:?} must be an IP address with a non-empty cluster"
            ));
        }
        if let Some(authorize) = &self.authorize {
            if authorize.cluster.is_empty() {
                return Err("authorize.cluster must not be empty".to_string());
            }
            if !authorize.path.starts_with('/') {
                return Err(format!(
                    "authorize.path must start with '/', not {:?}",
                    authorize.path
                ));
            }
        }
        // An empty prefix would deny every connection and an empty banner does nothing: both
        // mean "not set".
        self.deny_prefix = self.deny_prefix.filter(|p| !p.is_empty());
        self.banner = self.banner.filter(|b| !b.is_empty());
        Ok(self)
    }
}

/// The ids of the plugin's counters.
struct Metrics {
    connections: u32,
    downstream_bytes: u32,
    upstream_bytes: u32,
    denied: u32,
}

impl Metrics {
    fn define(prefix: &str) -> Result<Self, Status> {
        let counter =
            |name: &str| hostcalls::define_metric(MetricType::Counter, &format!("{prefix}_{name}"));
        Ok(Metrics {
            connections: counter("connections")?,
            downstream_bytes: counter("downstream_bytes")?,
            upstream_bytes: counter("upstream_bytes")?,
            denied: counter("denied")?,
        })
    }
}

/// What the root context hands its connections: the configuration and the counters (`None`
/// until `on_configure` succeeded: such a plugin only passes bytes through).
#[derive(Default)]
struct State {
    config: Config,
    metrics: Option<Metrics>,
}

impl State {
    fn increment(&self, metric: impl Fn(&Metrics) -> u32, by: usize) {
        let Some(metrics) = &self.metrics else {
            return;
        };
        if by == 0 {
            return;
        }
        let id = metric(metrics);
        if let Err(status) = hostcalls::increment_metric(id, by as i64) {
            log::warn!("tcp-guard: increment_metric({id}) failed: {status:?}");
        }
    }
}

struct Root {
    state: Rc<State>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let raw = self.get_plugin_configuration().unwrap_or_default();
        let parsed = if raw.iter().all(u8::is_ascii_whitespace) {
            Ok(Config::default())
        } else {
            serde_json::from_slice::<Config>(&raw).map_err(|e| e.to_string())
        };
        let config = match parsed.and_then(Config::validate) {
            Ok(config) => config,
            Err(err) => {
                log::error!("tcp-guard: invalid pluginConfig: {err}");
                return false;
            }
        };
        let metrics = match Metrics::define(&config.metric_prefix) {
            Ok(metrics) => metrics,
            Err(status) => {
                log::error!("tcp-guard: define_metric failed: {status:?}");
                return false;
            }
        };
        log::info!(
            "tcp-guard: deny_prefix {:?}, banner {} byte(s), metrics {}_*",
            config.deny_prefix.as_deref().unwrap_or(""),
            config.banner.as_ref().map_or(0, String::len),
            config.metric_prefix
        );
        self.state = Rc::new(State {
            config,
            metrics: Some(metrics),
        });
        true
    }

    fn create_stream_context(&self, context_id: u32) -> Option<Box<dyn StreamContext>> {
        Some(Box::new(Guard {
            id: context_id,
            state: Rc::clone(&self.state),
            source: String::new(),
            checked: false,
            denied: false,
            banner_sent: false,
            downstream_bytes: 0,
            upstream_bytes: 0,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::StreamContext)
    }
}

/// The IP of an `ip:port` (or `[ip6]:port`) address.
fn client_ip(address: &str) -> Option<std::net::IpAddr> {
    address
        .parse::<std::net::SocketAddr>()
        .map(|a| a.ip())
        .or_else(|_| address.parse())
        .ok()
}

/// Envoy's `SetEnvoyFilterStateArguments` message (path = 1, value = 2; the span, 3, left at its
/// default, the filter chain), encoded by hand: two length-delimited strings.
fn set_envoy_filter_state(path: &str, value: &str) -> Vec<u8> {
    let mut message = Vec::new();
    for (field, text) in [(1u8, path), (2, value)] {
        message.push(field << 3 | 2);
        let mut length = text.len();
        while length >= 0x80 {
            message.push((length as u8 & 0x7f) | 0x80);
            length >>= 7;
        }
        message.push(length as u8);
        message.extend_from_slice(text.as_bytes());
    }
    message
}

/// How the first bytes of a connection compare with the deny prefix.
#[derive(Debug, PartialEq)]
enum Verdict {
    /// They start with it.
    Deny,
    /// They are a (shorter) beginning of it: more bytes are needed to tell.
    Undecided,
    /// They cannot start with it.
    Allow,
}

fn verdict(head: &[u8], prefix: &[u8]) -> Verdict {
    if head.len() >= prefix.len() {
        if head.starts_with(prefix) {
            Verdict::Deny
        } else {
            Verdict::Allow
        }
    } else if prefix.starts_with(head) {
        Verdict::Undecided
    } else {
        Verdict::Allow
    }
}

/// One connection.
struct Guard {
    id: u32,
    state: Rc<State>,
    /// The client's `ip:port` (the `source.address` property), for the log lines.
    source: String,
    /// Whether the deny prefix was checked already (or there is none).
    checked: bool,
    denied: bool,
    banner_sent: bool,
    /// Bytes let through each way (upstream: not counting the banner).
    downstream_bytes: u64,
    upstream_bytes: u64,
}

impl Context for Guard {
    fn on_http_call_response(
        &mut self,
        _token: u32,
        headers: usize,
        _body: usize,
        _trailers: usize,
    ) {
        let status = if headers == 0 {
            None
        } else {
            self.get_http_call_response_header(":status")
        };
        if status.as_deref() == Some("200") {
            log::info!(
                "tcp-guard: connection {} from {} authorized",
                self.id,
                self.source
            );
            self.resume_downstream();
            return;
        }
        let why = status.map_or_else(
            || "the call failed or timed out".to_string(),
            |status| format!("the service answered {status}"),
        );
        self.refuse(&format!("not authorized: {why}"));
    }
}

impl Guard {
    /// Counts the connection as denied and closes it.
    fn refuse(&mut self, why: &str) {
        self.denied = true;
        self.state.increment(|m| m.denied, 1);
        log::info!(
            "tcp-guard: connection {} from {} denied: {why}",
            self.id,
            self.source
        );
        self.close_downstream();
    }

    /// Sends the connection to the cluster `route_by_source` names for its client, through
    /// Envoy's filter state `envoy.tcp_proxy.cluster`.
    fn route(&self) {
        let ip = client_ip(&self.source);
        let Some(cluster) = ip.and_then(|ip| {
            self.state
                .config
                .route_by_source
                .iter()
                .find(|(listed, _)| listed.parse().ok() == Some(ip))
                .map(|(_, cluster)| cluster)
        }) else {
            return;
        };
        let arguments = set_envoy_filter_state("envoy.tcp_proxy.cluster", cluster);
        match self.call_foreign_function("set_envoy_filter_state", Some(&arguments)) {
            Ok(_) => log::info!("tcp-guard: connection {} routed to {cluster}", self.id),
            Err(status) => log::warn!(
                "tcp-guard: connection {}: set_envoy_filter_state failed: {status:?}",
                self.id
            ),
        }
    }

    /// Asks the authorization service about this connection; whether the call went out.
    fn ask(&mut self, authorize: &Authorize) -> bool {
        let headers = vec![
            (":method", "GET"),
            (":path", authorize.path.as_str()),
            (":authority", authorize.cluster.as_str()),
            ("x-client-address", self.source.as_str()),
        ];
        match self.dispatch_http_call(
            &authorize.cluster,
            headers,
            None,
            vec![],
            std::time::Duration::from_millis(authorize.timeout_ms),
        ) {
            Ok(_) => true,
            Err(status) => {
                log::warn!("tcp-guard: cannot call {}: {status:?}", authorize.cluster);
                false
            }
        }
    }

    /// Checks the first bytes of the connection (the whole buffer so far, `size` bytes) against
    /// the deny prefix.
    fn check(&mut self, size: usize, end_of_stream: bool) -> Verdict {
        let Some(prefix) = self.state.config.deny_prefix.as_deref() else {
            return Verdict::Allow;
        };
        let head = self
            .get_downstream_data(0, size.min(prefix.len()))
            .unwrap_or_default();
        match verdict(&head, prefix.as_bytes()) {
            // The client ended its side before sending all of the prefix.
            Verdict::Undecided if end_of_stream => Verdict::Allow,
            verdict => verdict,
        }
    }
}

impl StreamContext for Guard {
    fn on_new_connection(&mut self) -> Action {
        self.state.increment(|m| m.connections, 1);
        self.source = match hostcalls::get_property(vec!["source", "address"]) {
            Ok(Some(address)) => String::from_utf8_lossy(&address).into_owned(),
            Ok(None) | Err(_) => "unknown".to_string(),
        };
        log::info!("tcp-guard: connection {} from {}", self.id, self.source);
        self.route();
        let state = Rc::clone(&self.state);
        let Some(authorize) = &state.config.authorize else {
            return Action::Continue;
        };
        if !self.ask(authorize) {
            self.refuse("the authorization service cannot be called");
        }
        Action::Pause
    }

    fn on_downstream_data(&mut self, data_size: usize, end_of_stream: bool) -> Action {
        if self.denied {
            // Closing; whatever still arrives goes nowhere.
            return Action::Pause;
        }
        if !self.checked && (data_size > 0 || end_of_stream) {
            match self.check(data_size, end_of_stream) {
                Verdict::Undecided => {
                    log::debug!(
                        "tcp-guard: connection {}: {data_size} byte(s) so far, waiting for more",
                        self.id
                    );
                    return Action::Pause;
                }
                Verdict::Deny => {
                    self.checked = true;
                    self.refuse("its data starts with the deny prefix");
                    return Action::Pause;
                }
                Verdict::Allow => self.checked = true,
            }
        }
        // After a pause the host reports the whole buffer again, so bytes are counted only when
        // they are let through.
        self.downstream_bytes += data_size as u64;
        self.state.increment(|m| m.downstream_bytes, data_size);
        Action::Continue
    }

    fn on_upstream_data(&mut self, data_size: usize, _end_of_stream: bool) -> Action {
        if !self.banner_sent && data_size > 0 {
            self.banner_sent = true;
            if let Some(banner) = self.state.config.banner.as_deref() {
                self.set_upstream_data(0, 0, banner.as_bytes());
            }
        }
        self.upstream_bytes += data_size as u64;
        self.state.increment(|m| m.upstream_bytes, data_size);
        Action::Continue
    }

    fn on_downstream_close(&mut self, peer_type: PeerType) {
        log::info!(
            "tcp-guard: connection {}: downstream closed (peer {peer_type:?})",
            self.id
        );
    }

    fn on_upstream_close(&mut self, peer_type: PeerType) {
        log::info!(
            "tcp-guard: connection {}: upstream closed (peer {peer_type:?})",
            self.id
        );
    }

    fn on_log(&mut self) {
        log::info!(
            "tcp-guard: connection {} from {}: {} byte(s) downstream->upstream, {} byte(s) upstream->downstream{}",
            self.id,
            self.source,
            self.downstream_bytes,
            self.upstream_bytes,
            if self.denied { ", denied" } else { "" }
        );
    }
}
