//! Reading a config file: one YAML stream of Istio `WasmPlugin` documents and at most one sluice
//! `Proxy` document, checked as a whole so that every error is reported with its place.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::locate::{Location, locate};
use crate::model::{
    Cluster, ClusterKind, Config, HeaderMatch, HostMatch, Listener, Notice, PathMatch, Phase,
    Plugin, PluginOverride, Route, RouteMatch, TcpProxy, TlsFiles,
};
use crate::{FailStrategy, VmConfig};

pub const WASM_PLUGIN_API: &str = "extensions.istio.io/v1alpha1";
/// Higress's `WasmPlugin`: Istio's fields plus per-route, per-domain and per-service rules.
pub const HIGRESS_WASM_PLUGIN_API: &str = "extensions.higress.io/v1alpha1";
pub const PROXY_API: &str = "sluice.dev/v1alpha1";

/// One thing wrong with a config, and where: `FILE:LINE:COLUMN: PLACE: MESSAGE` when all is known.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The config file, once the caller who read it says which.
    pub file: Option<String>,
    /// Where in the file's YAML, when the place is in the file.
    pub location: Option<Location>,
    /// The document and field, e.g. `document 2 (WasmPlugin auth) spec.phase`, or the flag.
    pub place: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(place: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            file: None,
            location: None,
            place: place.into(),
            message: message.into(),
        }
    }

    #[must_use]
    pub fn at(self, location: Option<Location>) -> Self {
        Self { location, ..self }
    }

    /// The error as found in `file`.
    #[must_use]
    pub fn in_file(self, file: &std::path::Path) -> Self {
        Self {
            file: Some(file.display().to_string()),
            ..self
        }
    }
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.file, self.location) {
            (Some(file), Some(at)) => write!(f, "{file}:{}:{}: ", at.line, at.column)?,
            (Some(file), None) => write!(f, "{file}: ")?,
            (None, Some(at)) => write!(f, "line {} column {}: ", at.line, at.column)?,
            (None, None) => {}
        }
        if self.place.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.place, self.message)
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Metadata {
    #[serde(default)]
    name: Option<String>,
    #[serde(flatten)]
    kubernetes: BTreeMap<String, serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Document<S> {
    #[allow(dead_code, reason = "read before the document is deserialized")]
    api_version: String,
    #[allow(dead_code, reason = "read before the document is deserialized")]
    kind: String,
    #[serde(default)]
    metadata: Metadata,
    spec: S,
    #[serde(default)]
    status: Option<serde_json::Value>,
}

/// Istio's `WasmPlugin` spec, with Istio's field names.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct WasmPluginSpec {
    url: String,
    #[serde(default)]
    sha256: Option<String>,
    #[serde(default)]
    image_pull_policy: Option<String>,
    #[serde(default)]
    image_pull_secret: Option<String>,
    #[serde(default)]
    plugin_config: Option<serde_json::Value>,
    #[serde(default)]
    plugin_name: Option<String>,
    #[serde(default)]
    phase: Option<String>,
    #[serde(default)]
    priority: Option<i64>,
    #[serde(default)]
    vm_config: Option<VmConfig>,
    #[serde(default, rename = "match")]
    traffic: Vec<TrafficSelector>,
    #[serde(default)]
    fail_strategy: Option<FailStrategy>,
    #[serde(default, rename = "type")]
    plugin_type: Option<String>,
    #[serde(default)]
    selector: Option<serde_json::Value>,
    #[serde(default)]
    target_ref: Option<serde_json::Value>,
    #[serde(default)]
    target_refs: Option<serde_json::Value>,
    #[serde(default)]
    verification_key: Option<serde_json::Value>,
    /// Higress's: the configuration where no rule matches.
    #[serde(default)]
    default_config: Option<serde_json::Value>,
    /// Higress's: no configuration where no rule matches (the plugin is off there).
    #[serde(default)]
    default_config_disable: Option<bool>,
    /// Higress's: configurations by route (`ingress`), domain and service.
    #[serde(default)]
    match_rules: Option<Vec<MatchRuleSpec>>,
}

/// Istio's `TrafficExtension` (it supersedes WasmPlugin): the module's fields under `wasm`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TrafficExtensionSpec {
    #[serde(default)]
    wasm: Option<WasmConfigSpec>,
    #[serde(default)]
    lua: Option<serde_json::Value>,
    #[serde(default)]
    phase: Option<String>,
    #[serde(default)]
    priority: Option<i64>,
    #[serde(default, rename = "match")]
    traffic: Vec<TrafficSelector>,
    #[serde(default)]
    selector: Option<serde_json::Value>,
    #[serde(default)]
    target_refs: Option<serde_json::Value>,
}

/// A `TrafficExtension`'s `wasm`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct WasmConfigSpec {
    url: String,
    #[serde(default)]
    sha256: Option<String>,
    #[serde(default)]
    image_pull_policy: Option<String>,
    #[serde(default)]
    image_pull_secret: Option<String>,
    #[serde(default)]
    verification_key: Option<serde_json::Value>,
    #[serde(default)]
    plugin_config: Option<serde_json::Value>,
    #[serde(default)]
    plugin_name: Option<String>,
    #[serde(default)]
    fail_strategy: Option<FailStrategy>,
    #[serde(default)]
    vm_config: Option<VmConfig>,
    #[serde(default, rename = "type")]
    plugin_type: Option<String>,
}

/// Which document a plugin comes from: where its fields are, and what it may hold.
#[derive(Clone, Copy, PartialEq, Eq)]
enum PluginKind {
    Istio,
    Higress,
    TrafficExtension,
}

impl PluginKind {
    fn name(self) -> &'static str {
        match self {
            Self::Istio | Self::Higress => "WasmPlugin",
            Self::TrafficExtension => "TrafficExtension",
        }
    }

    /// Where a field about the module is: under `spec.wasm` in a TrafficExtension.
    fn field(self, name: &str) -> String {
        match self {
            Self::TrafficExtension => format!("spec.wasm.{name}"),
            Self::Istio | Self::Higress => format!("spec.{name}"),
        }
    }
}

/// A TrafficExtension as the WasmPlugin it amounts to: its `wasm`, with its phase, priority and
/// traffic selectors. `lua` is Envoy's Lua filter, which sluice does not have.
fn traffic_extension(
    document: Document<TrafficExtensionSpec>,
    checker: &mut Checker<'_>,
) -> Option<Document<WasmPluginSpec>> {
    let spec = document.spec;
    if spec.lua.is_some() {
        checker.error(
            "spec.lua",
            "Lua extensions are Envoy's Lua filter, which sluice does not run; sluice runs `wasm` ones",
        );
    }
    let Some(wasm) = spec.wasm else {
        if spec.lua.is_none() {
            checker.error(
                "spec.wasm",
                "missing: a TrafficExtension needs `wasm` (or `lua`)",
            );
        }
        return None;
    };
    Some(Document {
        api_version: document.api_version,
        kind: document.kind,
        metadata: document.metadata,
        spec: WasmPluginSpec {
            url: wasm.url,
            sha256: wasm.sha256,
            image_pull_policy: wasm.image_pull_policy,
            image_pull_secret: wasm.image_pull_secret,
            plugin_config: wasm.plugin_config,
            plugin_name: wasm.plugin_name,
            phase: spec.phase,
            priority: spec.priority,
            vm_config: wasm.vm_config,
            traffic: spec.traffic,
            fail_strategy: wasm.fail_strategy,
            plugin_type: wasm.plugin_type,
            selector: spec.selector,
            target_ref: None,
            target_refs: spec.target_refs,
            verification_key: wasm.verification_key,
            default_config: None,
            default_config_disable: None,
            match_rules: None,
        },
        status: document.status,
    })
}

/// One of Higress's `matchRules`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct MatchRuleSpec {
    #[serde(default)]
    ingress: Vec<String>,
    #[serde(default)]
    domain: Vec<String>,
    #[serde(default)]
    service: Vec<String>,
    #[serde(default)]
    config: Option<serde_json::Value>,
    #[serde(default)]
    config_disable: bool,
    /// `HTTP` (the default) or `GRPC`.
    #[serde(default)]
    route_type: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TrafficSelector {
    #[serde(default)]
    mode: Option<String>,
    #[serde(default)]
    ports: Vec<PortSelector>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PortSelector {
    number: u32,
}

/// `spec.pluginLimits` as written.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PluginLimitsSpec {
    #[serde(default)]
    memory_bytes: Option<u64>,
    #[serde(default)]
    call_timeout: Option<String>,
    #[serde(default)]
    start_timeout: Option<String>,
    #[serde(default)]
    log_line_bytes: Option<u64>,
    #[serde(default)]
    header_map_entries: Option<u64>,
    #[serde(default)]
    header_map_bytes: Option<u64>,
    #[serde(default)]
    shared_data_bytes: Option<u64>,
    #[serde(default)]
    shared_queues: Option<u64>,
    #[serde(default)]
    shared_queue_items: Option<u64>,
    #[serde(default)]
    shared_queue_bytes: Option<u64>,
    #[serde(default)]
    metrics: Option<u64>,
}

impl PluginLimitsSpec {
    /// The limits written at `at`: `spec.pluginLimits`, or a plugin's
    /// `spec.pluginCapabilities.NAME.limits` (`per_plugin`), where the bounds on shared state,
    /// which are the process's, are refused.
    fn check(self, at: &str, per_plugin: bool, checker: &mut Checker<'_>) -> crate::PluginLimits {
        // `shared`: a bound on the state every plugin shares.
        let mut positive = |field: &str, value: Option<u64>, shared: bool| match value {
            Some(0) => {
                checker.error(&format!("{at}.{field}"), "`0`: must be more than zero");
                None
            }
            Some(_) if per_plugin && shared => {
                checker.error(
                    &format!("{at}.{field}"),
                    "bounds the state every plugin shares: set it in spec.pluginLimits",
                );
                None
            }
            other => other,
        };
        let memory_bytes = positive("memoryBytes", self.memory_bytes, false);
        let log_line_bytes = positive("logLineBytes", self.log_line_bytes, false);
        let header_map_entries = positive("headerMapEntries", self.header_map_entries, false);
        let header_map_bytes = positive("headerMapBytes", self.header_map_bytes, false);
        let shared_data_bytes = positive("sharedDataBytes", self.shared_data_bytes, true);
        let shared_queues = positive("sharedQueues", self.shared_queues, true);
        let shared_queue_items = positive("sharedQueueItems", self.shared_queue_items, true);
        let shared_queue_bytes = positive("sharedQueueBytes", self.shared_queue_bytes, true);
        let metrics = positive("metrics", self.metrics, true);
        crate::PluginLimits {
            memory_bytes,
            call_timeout: checker.positive_duration(
                &format!("{at}.callTimeout"),
                self.call_timeout,
                "",
            ),
            start_timeout: checker.positive_duration(
                &format!("{at}.startTimeout"),
                self.start_timeout,
                "",
            ),
            log_line_bytes,
            header_map_entries,
            header_map_bytes,
            shared_data_bytes,
            shared_queues,
            shared_queue_items,
            shared_queue_bytes,
            metrics,
        }
    }
}

/// Sluice's own `Proxy` spec.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ProxySpec {
    #[serde(default)]
    admin: Option<String>,
    #[serde(default)]
    workers: Option<usize>,
    #[serde(default)]
    access_log: Option<String>,
    #[serde(default)]
    insecure_registries: Vec<String>,
    #[serde(default)]
    plugin_failure_body: Option<crate::FailureBody>,
    #[serde(default)]
    node: Option<crate::Node>,
    #[serde(default)]
    request_headers_timeout: Option<String>,
    #[serde(default)]
    stream_idle_timeout: Option<String>,
    #[serde(default)]
    idle_timeout: Option<String>,
    #[serde(default)]
    max_connection_duration: Option<String>,
    #[serde(default)]
    buffer_limit_bytes: Option<u64>,
    #[serde(default)]
    max_request_headers_kb: Option<u32>,
    #[serde(default)]
    plugin_limits: Option<PluginLimitsSpec>,
    #[serde(default)]
    plugin_capabilities: BTreeMap<String, CapabilitiesSpec>,
    listeners: Vec<ListenerSpec>,
    #[serde(default)]
    clusters: Vec<ClusterSpec>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CapabilitiesSpec {
    #[serde(default)]
    allow: Option<std::collections::BTreeSet<String>>,
    #[serde(default)]
    clusters: Option<std::collections::BTreeSet<String>>,
    #[serde(default)]
    allow_on_headers_stop_iteration: bool,
    #[serde(default)]
    limits: Option<PluginLimitsSpec>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ListenerSpec {
    #[serde(default)]
    name: Option<String>,
    address: String,
    #[serde(default)]
    tls: Option<TlsSpec>,
    #[serde(default)]
    routes: Vec<RouteSpec>,
    #[serde(default)]
    tcp: Option<TcpSpec>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TcpSpec {
    cluster: String,
    #[serde(default)]
    idle_timeout: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TlsSpec {
    certificate: String,
    private_key: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RouteSpec {
    #[serde(default)]
    name: Option<String>,
    #[serde(default, rename = "match")]
    matcher: MatchSpec,
    cluster: String,
    #[serde(default)]
    plugins: BTreeMap<String, OverrideSpec>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct MatchSpec {
    #[serde(default)]
    host: Option<String>,
    #[serde(default)]
    prefix: Option<String>,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    headers: Vec<HeaderMatchSpec>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct HeaderMatchSpec {
    name: String,
    #[serde(default)]
    exact: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct OverrideSpec {
    #[serde(default)]
    disabled: bool,
    #[serde(default)]
    plugin_config: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ClusterSpec {
    name: String,
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    endpoints: Vec<String>,
    #[serde(default)]
    protocol: Option<String>,
    #[serde(default)]
    connect_timeout: Option<String>,
    #[serde(default)]
    timeout: Option<String>,
}

/// Collects errors and notices for one document.
struct Checker<'a> {
    document: String,
    /// The whole config text and the document's index in it, to find fields' lines.
    text: &'a str,
    index: usize,
    errors: &'a mut Vec<ConfigError>,
    notices: &'a mut Vec<Notice>,
}

impl Checker<'_> {
    fn error(&mut self, field: &str, message: impl Into<String>) {
        let location = self.locate(field);
        self.errors.push(
            ConfigError::new(format!("{} {field}", self.document).trim_end(), message).at(location),
        );
    }

    fn locate(&self, field: &str) -> Option<Location> {
        locate(self.text, self.index, field)
    }

    fn notice(&mut self, field: &str, message: impl Into<String>) {
        self.notices.push(Notice {
            place: format!("{} {field}", self.document),
            message: message.into(),
        });
    }

    /// A duration that must be more than zero, if given: an error naming `field` otherwise
    /// (`zero_hint` follows the message for zero).
    fn positive_duration(
        &mut self,
        field: &str,
        text: Option<String>,
        zero_hint: &str,
    ) -> Option<Duration> {
        let text = text?;
        match parse_duration(&text) {
            Ok(duration) if !duration.is_zero() => Some(duration),
            Ok(_) => {
                self.error(
                    field,
                    format!("`{text}`: must be more than zero{zero_hint}"),
                );
                None
            }
            Err(message) => {
                self.error(field, format!("`{text}`: {message}"));
                None
            }
        }
    }
}

/// Reads a config file's text. `base` supplies what the file leaves out: without a `Proxy`
/// document, its listeners, clusters, admin address and workers are kept (the command-line
/// flags); the file's WasmPlugins come after `base`'s plugins, then all are put in Istio order.
pub fn parse(text: &str, base: Config) -> Result<Config, Vec<ConfigError>> {
    let mut errors = Vec::new();
    let mut notices = base.notices.clone();
    let mut config = base;
    let mut proxy_seen: Option<usize> = None;
    let mut capabilities: Vec<(String, String, crate::Capabilities)> = Vec::new();
    // Names of the WasmPlugin documents, parsed or not: a capability for one that failed is not
    // "no such plugin" (its document says what is wrong).
    let mut plugin_documents: Vec<String> = Vec::new();
    let mut plugins = std::mem::take(&mut config.plugins);
    let mut values = Vec::new();
    for document in yaml_serde::Deserializer::from_str(text) {
        let value = serde_json::Value::deserialize(document);
        let failed = value.is_err();
        values.push(value);
        // A syntax error ends the stream: the parser cannot find the next document.
        if failed {
            break;
        }
    }
    if values
        .iter()
        .all(|value| matches!(value, Ok(serde_json::Value::Null)))
    {
        return Err(vec![ConfigError::new(
            "",
            "no documents: expected Istio WasmPlugin documents and at most one sluice Proxy document (see docs/config.md)",
        )]);
    }
    let mut documents = yaml_serde::Deserializer::from_str(text);
    for (index, value) in values.into_iter().enumerate() {
        let number = index + 1;
        let document = documents.next();
        let value = match value {
            Ok(serde_json::Value::Null) => continue,
            Ok(value) => value,
            Err(error) => {
                errors.push(
                    ConfigError::new(
                        format!("document {number}"),
                        format!("not valid YAML: {}", without_location(&error.to_string())),
                    )
                    .at(Location::of(&error)),
                );
                continue;
            }
        };
        let field = |name: &str| value.get(name).and_then(|v| v.as_str()).unwrap_or("");
        let (api_version, kind) = (field("apiVersion"), field("kind"));
        let name = value
            .pointer("/metadata/name")
            .and_then(|v| v.as_str())
            .map(str::to_string);
        let label = match &name {
            Some(name) => format!("document {number} ({kind} {name})"),
            None => format!("document {number} ({kind})"),
        };
        let mut checker = Checker {
            document: label.clone(),
            text,
            index,
            errors: &mut errors,
            notices: &mut notices,
        };
        let Some(document) = document else { break };
        if matches!(kind, "WasmPlugin" | "TrafficExtension")
            && let Some(name) = &name
        {
            plugin_documents.push(name.clone());
        }
        match (api_version, kind) {
            (api @ (WASM_PLUGIN_API | HIGRESS_WASM_PLUGIN_API), "WasmPlugin") => {
                let kind = if api == HIGRESS_WASM_PLUGIN_API {
                    PluginKind::Higress
                } else {
                    PluginKind::Istio
                };
                if let Some(document) = typed::<WasmPluginSpec>(document, &value, &mut checker)
                    && let Some(plugin) = wasm_plugin(document, &label, kind, &mut checker)
                {
                    plugins.push(plugin);
                }
            }
            (WASM_PLUGIN_API, "TrafficExtension") => {
                if let Some(document) =
                    typed::<TrafficExtensionSpec>(document, &value, &mut checker)
                    && let Some(document) = traffic_extension(document, &mut checker)
                    && let Some(plugin) =
                        wasm_plugin(document, &label, PluginKind::TrafficExtension, &mut checker)
                {
                    plugins.push(plugin);
                }
            }
            (PROXY_API, "Proxy") => {
                if let Some(first) = proxy_seen {
                    checker.error(
                        "",
                        format!("a second Proxy document (the first is document {first}); put every listener and cluster in one"),
                    );
                    continue;
                }
                proxy_seen = Some(number);
                if let Some(mut document) = typed::<ProxySpec>(document, &value, &mut checker) {
                    for (plugin, spec) in std::mem::take(&mut document.spec.plugin_capabilities) {
                        let field = format!("spec.pluginCapabilities.{plugin}");
                        let place = format!("{label} {field}");
                        let limits = spec
                            .limits
                            .map(|limits| {
                                limits.check(&format!("{field}.limits"), true, &mut checker)
                            })
                            .unwrap_or_default();
                        let granted = crate::Capabilities {
                            allow: spec.allow,
                            clusters: spec.clusters,
                            headers_stop_iteration: spec.allow_on_headers_stop_iteration,
                            limits,
                            place: place.clone(),
                            location: checker.locate(&field),
                        };
                        capabilities.push((place, plugin, granted));
                    }
                    proxy(document, &mut checker, &mut config);
                }
            }
            _ => checker.error(
                "apiVersion/kind",
                format!(
                    "`{api_version}`/`{kind}` is not a document sluice reads; expected apiVersion {WASM_PLUGIN_API} with kind WasmPlugin or TrafficExtension, {HIGRESS_WASM_PLUGIN_API} with kind WasmPlugin, or {PROXY_API} with kind Proxy"
                ),
            ),
        }
    }
    for (place, name, granted) in capabilities {
        match plugins.iter_mut().find(|p| p.name == name) {
            Some(plugin) => plugin.capabilities = granted,
            // Its own document failed, and says why.
            None if plugin_documents.contains(&name) => {}
            None => errors.push(ConfigError::new(
                place,
                format!("no WasmPlugin is named `{name}`"),
            )),
        }
    }
    check_plugins(&mut plugins, text, &mut errors);
    check_references(&config, &plugins, &mut errors);
    notices.extend(unbound_plugins(&config, &plugins, text));
    order(&mut plugins);
    config.plugins = plugins;
    config.notices = notices;
    if errors.is_empty() {
        Ok(config)
    } else {
        Err(errors)
    }
}

/// At most this many errors are reported for one document's fields.
const MAX_ERRORS_PER_DOCUMENT: usize = 20;

/// Deserializes one document, naming every failing field (up to `MAX_ERRORS_PER_DOCUMENT`).
fn typed<S: DeserializeOwned>(
    document: yaml_serde::Deserializer<'_>,
    value: &serde_json::Value,
    checker: &mut Checker<'_>,
) -> Option<Document<S>> {
    let (mut path, message, location) =
        match serde_path_to_error::deserialize::<_, Document<S>>(document) {
            Ok(document) => {
                for key in document.metadata.kubernetes.keys() {
                    checker.notice(
                        &format!("metadata.{key}"),
                        "ignored: it only means something inside Kubernetes",
                    );
                }
                if document.status.is_some() {
                    checker.notice("status", "ignored: written by Kubernetes, not by users");
                }
                return Some(document);
            }
            Err(error) => {
                let path = error.path().to_string();
                let location = Location::of(error.inner());
                (path, error.into_inner().to_string(), location)
            }
        };
    let mut report = |path: &str, message: &str, location: Option<Location>| {
        let path = if path == "." { "" } else { path };
        let place = format!("{} {path}", checker.document);
        checker.errors.push(
            ConfigError::new(place.trim_end(), humane(path, message))
                .at(location.or_else(|| checker.locate(path))),
        );
    };
    report(&path, &message, location);
    // The rest: each field that failed is taken out of the document's value and it is read
    // again, so that one run shows every mistake.
    let mut value = value.clone();
    let mut removed = Vec::new();
    for _ in 1..MAX_ERRORS_PER_DOCUMENT {
        if !crate::locate::remove(&mut value, &path) {
            break;
        }
        removed.push(path);
        let Err(error) = serde_path_to_error::deserialize::<_, Document<S>>(&value) else {
            break;
        };
        path = error.path().to_string();
        let message = error.into_inner().to_string();
        // A required field missing because it was taken out was reported already.
        if removed.iter().any(|r| r.starts_with(&path)) {
            break;
        }
        report(&path, &message, None);
    }
    None
}

/// A serde message as a person would say it, without the place the error already names.
fn humane(path: &str, message: &str) -> String {
    let message = without_location(message);
    // The YAML error names the enclosing map itself; the path is more precise.
    let message = match message.split_once(": ") {
        Some((place, rest)) if !place.contains(' ') && path.starts_with(place) => rest,
        _ => message,
    };
    let mut message = message.to_string();
    for (rust, human) in [
        ("expected u16", "expected an integer from 0 to 65535"),
        ("expected u8", "expected an integer from 0 to 255"),
        ("expected u32", "expected an integer from 0 to 4294967295"),
        ("expected u64", "expected an integer of 0 or more"),
        ("expected usize", "expected an integer of 0 or more"),
        ("expected i64", "expected an integer"),
        ("expected i32", "expected an integer"),
        ("expected f64", "expected a number"),
        ("expected a sequence", "expected a list"),
        ("expected a boolean", "expected true or false"),
    ] {
        if let Some(start) = message.find(rust)
            && !message[start + rust.len()..].starts_with(char::is_alphanumeric)
        {
            message.replace_range(start..start + rust.len(), human);
        }
    }
    message
}

/// A YAML message without its ` at line L column C` (the location is reported on its own).
fn without_location(message: &str) -> &str {
    match message.rfind(" at line ") {
        Some(start) if message[start..].contains(" column ") => &message[..start],
        _ => message,
    }
}

fn wasm_plugin(
    document: Document<WasmPluginSpec>,
    label: &str,
    kind: PluginKind,
    checker: &mut Checker<'_>,
) -> Option<Plugin> {
    let mut spec = document.spec;
    let configuration = if kind == PluginKind::Higress {
        if spec.fail_strategy == Some(FailStrategy::FailReload) {
            checker.error(
                &kind.field("failStrategy"),
                "FAIL_RELOAD is Istio's; Higress's WasmPlugin has FAIL_CLOSE and FAIL_OPEN",
            );
        }
        match higress_configuration(&mut spec, checker) {
            HigressConfiguration::Applies(configuration) => configuration,
            HigressConfiguration::Nowhere => return None,
        }
    } else {
        for (field, present) in [
            ("spec.defaultConfig", spec.default_config.is_some()),
            (
                "spec.defaultConfigDisable",
                spec.default_config_disable.is_some(),
            ),
            ("spec.matchRules", spec.match_rules.is_some()),
        ] {
            if present {
                checker.error(
                    field,
                    format!("a field of Higress's WasmPlugin: use apiVersion {HIGRESS_WASM_PLUGIN_API}, or pluginConfig"),
                );
            }
        }
        spec.plugin_config.take()
    };
    let Some(name) = document.metadata.name.filter(|n| !n.is_empty()) else {
        checker.error(
            "metadata.name",
            format!("missing: every {} needs a name", kind.name()),
        );
        return None;
    };
    let oci = spec.url.starts_with("oci://");
    let known_scheme = ["file://", "http://", "https://", "oci://"]
        .iter()
        .any(|scheme| spec.url.starts_with(scheme));
    if spec.url.is_empty() {
        checker.error(
            &kind.field("url"),
            "missing: where the .wasm module is (a path, file://, http(s):// or oci:// URL)",
        );
    } else if spec.url.contains("://") && !known_scheme {
        checker.error(
            &kind.field("url"),
            format!(
                "`{}`: unknown scheme; expected a path, file://, http://, https:// or oci://",
                spec.url
            ),
        );
    }
    let sha256 = spec.sha256.map(|digest| digest.to_ascii_lowercase());
    if let Some(digest) = &sha256
        && (digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        checker.error(
            &kind.field("sha256"),
            format!("`{digest}` is not a sha256 digest (64 hex digits)"),
        );
    }
    let pull_policy = match spec.image_pull_policy.as_deref() {
        None | Some("UNSPECIFIED_POLICY") => None,
        Some("IfNotPresent") => Some(crate::PullPolicy::IfNotPresent),
        Some("Always") => Some(crate::PullPolicy::Always),
        Some(policy) => {
            checker.error(
                &kind.field("imagePullPolicy"),
                format!("`{policy}`: expected IfNotPresent or Always"),
            );
            None
        }
    };
    if pull_policy.is_some() && !oci {
        checker.notice(
            &kind.field("imagePullPolicy"),
            "ignored: it applies to oci:// URLs only",
        );
    }
    if spec.image_pull_secret.is_some() && !oci {
        checker.notice(
            &kind.field("imagePullSecret"),
            "ignored: it applies to oci:// URLs only",
        );
    }
    let phase = match spec.phase.as_deref() {
        None | Some("UNSPECIFIED_PHASE") => Phase::Unspecified,
        Some("AUTHN") => Phase::Authn,
        Some("AUTHZ") => Phase::Authz,
        Some("STATS") => Phase::Stats,
        Some(other) => {
            checker.error(
                "spec.phase",
                format!("`{other}`: expected AUTHN, AUTHZ, STATS or UNSPECIFIED_PHASE"),
            );
            Phase::Unspecified
        }
    };
    let network = match spec.plugin_type.as_deref() {
        None | Some("HTTP" | "UNSPECIFIED_PLUGIN_TYPE") => false,
        Some("NETWORK") => true,
        Some(other) => {
            checker.error(
                &kind.field("type"),
                format!("`{other}`: expected HTTP, NETWORK or UNSPECIFIED_PLUGIN_TYPE"),
            );
            false
        }
    };
    let mut ports = Vec::new();
    for (index, selector) in spec.traffic.iter().enumerate() {
        match selector.mode.as_deref() {
            None | Some("UNDEFINED" | "CLIENT" | "SERVER" | "CLIENT_AND_SERVER") => {}
            Some(other) => checker.error(
                &format!("spec.match[{index}].mode"),
                format!("`{other}`: expected CLIENT, SERVER, CLIENT_AND_SERVER or UNDEFINED"),
            ),
        }
        if selector.mode.is_some() {
            checker.notice(
                &format!("spec.match[{index}].mode"),
                "ignored: sluice's listeners are not split into inbound and outbound; ports still select",
            );
        }
        if selector.ports.is_empty() {
            // A selector without ports selects every port, so the plugin runs on every listener.
            ports.clear();
            break;
        }
        for (port_index, port) in selector.ports.iter().enumerate() {
            match u16::try_from(port.number) {
                Ok(number) if number > 0 => ports.push(number),
                _ => checker.error(
                    &format!("spec.match[{index}].ports[{port_index}].number"),
                    format!("{} is not a port (1-65535)", port.number),
                ),
            }
        }
    }
    for (field, value) in [
        ("spec.selector", spec.selector.is_some()),
        ("spec.targetRef", spec.target_ref.is_some()),
        ("spec.targetRefs", spec.target_refs.is_some()),
    ] {
        if value {
            checker.notice(
                field,
                "ignored: it selects Kubernetes workloads; in sluice the plugin applies to every listener its `match` allows",
            );
        }
    }
    if spec.verification_key.is_some() {
        checker.notice(
            &kind.field("verificationKey"),
            "ignored: deprecated in Istio",
        );
    }
    let vm = spec.vm_config.unwrap_or_default();
    if let Err(error) = vm.environment(|_| None) {
        checker.error(&kind.field("vmConfig"), error.to_string());
    }
    Some(Plugin {
        root_id: spec.plugin_name.unwrap_or_default(),
        name,
        url: spec.url,
        sha256,
        configuration,
        phase,
        priority: spec.priority.unwrap_or(0),
        vm,
        fail_strategy: spec.fail_strategy.unwrap_or_default(),
        ports,
        network,
        capabilities: crate::Capabilities::default(),
        pull_policy: pull_policy.filter(|_| oci),
        pull_secret: spec.image_pull_secret.filter(|_| oci),
        origin: crate::Origin::Document {
            label: label.to_string(),
            index: checker.index,
        },
    })
}

enum HigressConfiguration {
    Applies(Option<serde_json::Value>),
    /// Every rule is disabled and so is the default: Higress sends the plugin to no gateway.
    Nowhere,
}

/// The configuration Higress's controller hands a plugin: `pluginConfig` as it is when given;
/// otherwise `defaultConfig` (unless `defaultConfigDisable`) with the enabled `matchRules`, in
/// order, under `_rules_`, each its `config` with `_match_route_` (its `ingress` list, which
/// names sluice routes), `_match_domain_` and `_match_service_` added. The plugin's SDK
/// matches a request against them, first rule first (design/higress-config.md).
fn higress_configuration(
    spec: &mut WasmPluginSpec,
    checker: &mut Checker<'_>,
) -> HigressConfiguration {
    let rules = spec.match_rules.take().unwrap_or_default();
    let default = spec.default_config.take();
    let default_disabled = spec.default_config_disable.unwrap_or(false);
    if let Some(configuration) = spec.plugin_config.take() {
        if default.is_some() || !rules.is_empty() {
            checker.notice(
                "spec.pluginConfig",
                "given, so defaultConfig and matchRules are ignored, as Higress does",
            );
        }
        return HigressConfiguration::Applies(Some(configuration));
    }
    let mut object = match default {
        Some(serde_json::Value::Object(map)) if !default_disabled => map,
        None | Some(serde_json::Value::Null) => serde_json::Map::new(),
        Some(_) if default_disabled => serde_json::Map::new(),
        Some(_) => {
            checker.error("spec.defaultConfig", "must be a mapping (a JSON object)");
            serde_json::Map::new()
        }
    };
    let mut compiled = Vec::new();
    for (index, rule) in rules.into_iter().enumerate() {
        let field = format!("spec.matchRules[{index}]");
        if rule.config_disable {
            // Dropped (before any other check, as Higress does), not an "off" rule: its requests
            // fall through to later rules or the default.
            continue;
        }
        if rule.ingress.is_empty() && rule.domain.is_empty() && rule.service.is_empty() {
            checker.error(
                &field,
                "a rule needs at least one of ingress, domain or service",
            );
            continue;
        }
        match rule.route_type.as_deref() {
            None | Some("HTTP") => {}
            Some("GRPC") => checker.notice(
                &format!("{field}.routeType"),
                "ignored: sluice matches gRPC routes by name as it does HTTP ones (Higress writes their ingress names as `GRPC`)",
            ),
            Some(other) => checker.error(
                &format!("{field}.routeType"),
                format!("`{other}`: expected HTTP or GRPC"),
            ),
        }
        let mut config = match rule.config {
            Some(serde_json::Value::Object(map)) => map,
            None | Some(serde_json::Value::Null) => serde_json::Map::new(),
            Some(_) => {
                checker.error(
                    &format!("{field}.config"),
                    "must be a mapping (a JSON object)",
                );
                continue;
            }
        };
        for (key, names) in [
            ("_match_route_", rule.ingress),
            ("_match_domain_", rule.domain),
            ("_match_service_", rule.service),
        ] {
            if !names.is_empty() {
                config.insert(key.into(), names.into());
            }
        }
        compiled.push(serde_json::Value::Object(config));
    }
    if compiled.is_empty() && default_disabled {
        checker.notice(
            "spec.defaultConfigDisable",
            "with no enabled matchRules the plugin applies nowhere: it is not loaded",
        );
        return HigressConfiguration::Nowhere;
    }
    if !compiled.is_empty() {
        object.insert("_rules_".into(), compiled.into());
    }
    HigressConfiguration::Applies((!object.is_empty()).then_some(object.into()))
}

fn proxy(document: Document<ProxySpec>, checker: &mut Checker<'_>, config: &mut Config) {
    let spec = document.spec;
    config.admin = match spec.admin.as_deref() {
        None => config.admin,
        Some("off") => None,
        Some(text) => match text.parse::<SocketAddr>() {
            Ok(address) => Some(address),
            Err(_) => {
                checker.error(
                    "spec.admin",
                    format!("`{text}`: expected an IP:PORT address or `off`"),
                );
                None
            }
        },
    };
    config.insecure_registries.extend(spec.insecure_registries);
    if let Some(body) = spec.plugin_failure_body {
        config.failure_body = body;
    }
    if let Some(node) = spec.node {
        config.node = node;
    }
    for (field, text, timeout) in [
        (
            "spec.requestHeadersTimeout",
            spec.request_headers_timeout,
            &mut config.request_headers_timeout,
        ),
        (
            "spec.streamIdleTimeout",
            spec.stream_idle_timeout,
            &mut config.stream_idle_timeout,
        ),
        (
            "spec.idleTimeout",
            spec.idle_timeout,
            &mut config.idle_timeout,
        ),
    ] {
        if let Some(duration) = checker.positive_duration(field, text, "") {
            *timeout = duration;
        }
    }
    if let Some(bytes) = spec.buffer_limit_bytes {
        match usize::try_from(bytes) {
            Ok(bytes) if bytes > 0 => config.buffer_limit_bytes = Some(bytes),
            _ => checker.error(
                "spec.bufferLimitBytes",
                format!("`{bytes}`: must be more than zero and fit this machine's memory"),
            ),
        }
    }
    if let Some(limits) = spec.plugin_limits {
        config.plugin_limits = limits.check("spec.pluginLimits", false, checker);
    }
    if let Some(kb) = spec.max_request_headers_kb {
        if (1..=crate::MAX_REQUEST_HEADERS_KB).contains(&kb) {
            config.max_request_headers_kb = kb;
        } else {
            checker.error(
                "spec.maxRequestHeadersKb",
                format!(
                    "`{kb}`: must be from 1 to {} (as Envoy's)",
                    crate::MAX_REQUEST_HEADERS_KB
                ),
            );
        }
    }
    if let Some(duration) = checker.positive_duration(
        "spec.maxConnectionDuration",
        spec.max_connection_duration,
        " (leave it out for no bound)",
    ) {
        config.max_connection_duration = Some(duration);
    }
    if let Some(destination) = spec.access_log {
        if destination.is_empty() {
            checker.error(
                "spec.accessLog",
                "empty: give a file path or `-` for stdout",
            );
        }
        config.access_log = Some(destination);
    }
    if let Some(workers) = spec.workers {
        if workers == 0 {
            checker.error(
                "spec.workers",
                "must be at least 1 (leave it out for one per core)",
            );
        }
        config.workers = Some(workers);
    }
    config.clusters = spec
        .clusters
        .into_iter()
        .enumerate()
        .filter_map(|(index, cluster)| {
            cluster_of(cluster, &format!("spec.clusters[{index}]"), checker)
        })
        .collect();
    let mut names = HashSet::new();
    for cluster in &config.clusters {
        if !names.insert(cluster.name.clone()) {
            checker.error(
                "spec.clusters",
                format!("two clusters are named `{}`", cluster.name),
            );
        }
    }
    if spec.listeners.is_empty() {
        checker.error(
            "spec.listeners",
            "empty: sluice needs at least one listener",
        );
    }
    config.listeners = spec
        .listeners
        .into_iter()
        .enumerate()
        .filter_map(|(index, listener)| {
            listener_of(
                listener,
                index,
                &format!("spec.listeners[{index}]"),
                checker,
            )
        })
        .collect();
    let mut addresses = HashSet::new();
    for listener in &config.listeners {
        if !addresses.insert(listener.address) {
            checker.error(
                "spec.listeners",
                format!("two listeners use {}", listener.address),
            );
        }
    }
}

fn cluster_of(spec: ClusterSpec, field: &str, checker: &mut Checker<'_>) -> Option<Cluster> {
    if spec.name.is_empty() {
        checker.error(&format!("{field}.name"), "missing");
        return None;
    }
    let kind = match spec.kind.as_deref() {
        None | Some("STATIC") => {
            if spec.endpoints.is_empty() {
                checker.error(
                    &format!("{field}.endpoints"),
                    format!("cluster `{}` has no endpoints (HOST:PORT)", spec.name),
                );
            }
            for (index, endpoint) in spec.endpoints.iter().enumerate() {
                let valid = endpoint.rsplit_once(':').is_some_and(|(host, port)| {
                    !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
                });
                if !valid {
                    checker.error(
                        &format!("{field}.endpoints[{index}]"),
                        format!("`{endpoint}` is not HOST:PORT"),
                    );
                }
            }
            ClusterKind::Static {
                endpoints: spec.endpoints,
            }
        }
        Some("ECHO") => {
            if !spec.endpoints.is_empty() {
                checker.error(
                    &format!("{field}.endpoints"),
                    "an ECHO cluster is the built-in echo upstream and takes no endpoints",
                );
            }
            ClusterKind::Echo
        }
        Some(other) => {
            checker.error(
                &format!("{field}.type"),
                format!(
                    "`{other}`: expected STATIC (endpoints) or ECHO (the built-in echo upstream)"
                ),
            );
            return None;
        }
    };
    let http2 = match spec.protocol.as_deref() {
        None | Some("HTTP1") => false,
        Some("HTTP2") => true,
        Some(other) => {
            checker.error(
                &format!("{field}.protocol"),
                format!("`{other}`: expected HTTP1 or HTTP2 (cleartext, prior knowledge)"),
            );
            false
        }
    };
    let mut timeout = |name: &str, value: Option<String>, default: Duration| match value {
        None => default,
        Some(text) => parse_duration(&text).unwrap_or_else(|message| {
            checker.error(&format!("{field}.{name}"), format!("`{text}`: {message}"));
            default
        }),
    };
    Some(Cluster {
        connect_timeout: timeout(
            "connectTimeout",
            spec.connect_timeout,
            crate::model::DEFAULT_CONNECT_TIMEOUT,
        ),
        timeout: timeout("timeout", spec.timeout, crate::model::DEFAULT_TIMEOUT),
        name: spec.name,
        kind,
        http2,
    })
}

fn listener_of(
    spec: ListenerSpec,
    index: usize,
    field: &str,
    checker: &mut Checker<'_>,
) -> Option<Listener> {
    let Ok(address) = spec.address.parse::<SocketAddr>() else {
        checker.error(
            &format!("{field}.address"),
            format!("`{}` is not an IP:PORT address", spec.address),
        );
        return None;
    };
    let tcp = match spec.tcp {
        Some(tcp) => {
            if !spec.routes.is_empty() {
                checker.error(
                    &format!("{field}.routes"),
                    "a TCP listener (`tcp`) has no routes: its connections all go to `tcp.cluster`",
                );
            }
            let idle_timeout = match tcp.idle_timeout.as_deref() {
                None => Some(crate::DEFAULT_IDLE_TIMEOUT),
                Some(text) => match parse_duration(text) {
                    Ok(duration) if duration.is_zero() => None,
                    Ok(duration) => Some(duration),
                    Err(message) => {
                        checker.error(
                            &format!("{field}.tcp.idleTimeout"),
                            format!("`{text}`: {message}"),
                        );
                        None
                    }
                },
            };
            Some(TcpProxy {
                cluster: tcp.cluster,
                idle_timeout,
            })
        }
        None => {
            if spec.routes.is_empty() {
                checker.error(
                    &format!("{field}.routes"),
                    "empty: a listener needs at least one route (a route without `match` takes everything), or `tcp` for a TCP listener",
                );
            }
            None
        }
    };
    let routes = spec
        .routes
        .into_iter()
        .enumerate()
        .map(|(index, route)| route_of(route, index, &format!("{field}.routes[{index}]"), checker))
        .collect();
    Some(Listener {
        name: spec.name.unwrap_or_else(|| format!("listener-{index}")),
        address,
        tls: spec.tls.map(|tls| TlsFiles {
            certificate: tls.certificate,
            private_key: tls.private_key,
        }),
        routes,
        tcp,
    })
}

fn route_of(spec: RouteSpec, index: usize, field: &str, checker: &mut Checker<'_>) -> Route {
    let matcher = spec.matcher;
    let path = match (matcher.prefix, matcher.path) {
        (Some(_), Some(_)) => {
            checker.error(
                &format!("{field}.match"),
                "both `prefix` and `path`: give one (path is exact, prefix matches the start)",
            );
            PathMatch::Any
        }
        (Some(prefix), None) => PathMatch::Prefix(prefix),
        (None, Some(path)) => PathMatch::Exact(path),
        (None, None) => PathMatch::Any,
    };
    if let PathMatch::Prefix(text) | PathMatch::Exact(text) = &path
        && !text.starts_with('/')
    {
        checker.error(
            &format!("{field}.match"),
            format!("`{text}` must start with `/`"),
        );
    }
    let host = matcher.host.map(|host| match host.strip_prefix('*') {
        Some(suffix) => HostMatch::Suffix(suffix.to_ascii_lowercase()),
        None => HostMatch::Exact(host.to_ascii_lowercase()),
    });
    let headers = matcher
        .headers
        .into_iter()
        .map(|header| HeaderMatch {
            name: header.name.to_ascii_lowercase(),
            value: header.exact,
        })
        .collect();
    let mut overrides = BTreeMap::new();
    for (plugin, change) in spec.plugins {
        let change = match (change.disabled, change.plugin_config) {
            (true, Some(_)) => {
                checker.error(
                    &format!("{field}.plugins.{plugin}"),
                    "both `disabled` and `pluginConfig`: a disabled plugin takes no configuration",
                );
                continue;
            }
            (true, None) => PluginOverride::Disabled,
            (false, Some(value)) => PluginOverride::Configuration(value),
            (false, None) => {
                checker.error(
                    &format!("{field}.plugins.{plugin}"),
                    "says nothing: give `disabled: true` or a `pluginConfig`",
                );
                continue;
            }
        };
        overrides.insert(plugin, change);
    }
    Route {
        name: spec.name.unwrap_or_else(|| format!("route-{index}")),
        matcher: RouteMatch {
            host,
            path,
            headers,
        },
        cluster: spec.cluster,
        overrides,
    }
}

/// Plugin names are unique.
fn check_plugins(plugins: &mut [Plugin], text: &str, errors: &mut Vec<ConfigError>) {
    let mut names = HashSet::new();
    for plugin in plugins.iter() {
        if !names.insert(plugin.name.as_str()) {
            let (place, location) = plugin.origin.place("metadata.name", Some(text));
            errors.push(
                ConfigError::new(place, "two plugins have this name; names must be unique")
                    .at(location),
            );
        }
    }
}

/// A plugin whose kind (HTTP or NETWORK) no listener of its ports has runs nowhere: said, since
/// that is rarely what the author meant.
fn unbound_plugins(config: &Config, plugins: &[Plugin], text: &str) -> Vec<Notice> {
    plugins
        .iter()
        .filter(|plugin| !config.listeners.iter().any(|l| plugin.applies_to(l)))
        .map(|plugin| {
            let (kind, other) = if plugin.network {
                ("a NETWORK plugin runs on TCP listeners", "HTTP")
            } else {
                ("an HTTP plugin runs on HTTP listeners", "TCP")
            };
            let selected = if plugin.ports.is_empty() {
                String::new()
            } else {
                format!(" on its ports ({:?})", plugin.ports)
            };
            let (place, _) = plugin.origin.place("spec.type", Some(text));
            Notice {
                place,
                message: format!(
                    "runs nowhere: {kind} only, and every listener{selected} is {other}"
                ),
            }
        })
        .collect()
}

/// Routes name clusters and plugins that exist; a TCP listener's cluster exists and has
/// endpoints.
fn check_references(config: &Config, plugins: &[Plugin], errors: &mut Vec<ConfigError>) {
    for listener in &config.listeners {
        if let Some(tcp) = &listener.tcp {
            let place = format!("listener {} tcp", listener.name);
            match config.cluster(&tcp.cluster) {
                None => errors.push(ConfigError::new(
                    place,
                    format!("cluster `{}` is not declared", tcp.cluster),
                )),
                Some(cluster) if cluster.kind == ClusterKind::Echo => errors.push(
                    ConfigError::new(
                        place,
                        format!(
                            "cluster `{}` is the HTTP echo upstream; a TCP listener needs a STATIC cluster",
                            tcp.cluster
                        ),
                    ),
                ),
                Some(_) => {}
            }
        }
        for route in &listener.routes {
            let place = format!("listener {} route {}", listener.name, route.name);
            if config.cluster(&route.cluster).is_none() {
                let known: Vec<&str> = config.clusters.iter().map(|c| c.name.as_str()).collect();
                errors.push(ConfigError::new(
                    place.clone(),
                    format!(
                        "cluster `{}` is not declared (clusters: {})",
                        route.cluster,
                        if known.is_empty() {
                            "none".to_string()
                        } else {
                            known.join(", ")
                        }
                    ),
                ));
            }
            for name in route.overrides.keys() {
                if !plugins.iter().any(|p| &p.name == name) {
                    errors.push(ConfigError::new(
                        format!("{place} plugins.{name}"),
                        format!("no WasmPlugin is named `{name}`"),
                    ));
                }
            }
        }
    }
}

/// Istio's order: phase (AUTHN, AUTHZ, STATS, then unspecified), priority (higher first), name.
fn order(plugins: &mut [Plugin]) {
    plugins.sort_by(|a, b| {
        (a.phase, std::cmp::Reverse(a.priority), &a.name).cmp(&(
            b.phase,
            std::cmp::Reverse(b.priority),
            &b.name,
        ))
    });
}

/// A protobuf-style duration: `15s`, `0.25s`, `250ms`, `1m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .map_or((text, ""), |at| text.split_at(at));
    let value: f64 = number
        .parse()
        .map_err(|_| "expected a duration such as 15s, 0.5s or 250ms".to_string())?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        _ => return Err("expected a unit: ms, s or m (e.g. 15s)".into()),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Config {
        Config {
            admin: crate::DEFAULT_ADMIN.parse().ok(),
            workers: None,
            access_log: None,
            insecure_registries: Vec::new(),
            failure_body: crate::FailureBody::Empty,
            node: crate::Node::default(),
            request_headers_timeout: crate::DEFAULT_REQUEST_HEADERS_TIMEOUT,
            stream_idle_timeout: crate::DEFAULT_STREAM_IDLE_TIMEOUT,
            idle_timeout: crate::DEFAULT_IDLE_TIMEOUT,
            max_connection_duration: None,
            buffer_limit_bytes: None,
            max_request_headers_kb: crate::DEFAULT_MAX_REQUEST_HEADERS_KB,
            plugin_limits: crate::PluginLimits::default(),
            listeners: Vec::new(),
            clusters: Vec::new(),
            plugins: Vec::new(),
            notices: Vec::new(),
        }
    }

    const FULL: &str = r#"
apiVersion: sluice.dev/v1alpha1
kind: Proxy
spec:
  admin: "off"
  workers: 2
  listeners:
  - name: public
    address: 127.0.0.1:8080
    tls: {certificate: cert.pem, privateKey: key.pem}
    routes:
    - name: health
      match: {path: /health}
      cluster: echo
      plugins:
        auth: {disabled: true}
    - match: {prefix: /api, host: "*.example.com", headers: [{name: X-Env, exact: canary}]}
      cluster: backend
      plugins:
        headers: {pluginConfig: {request: {set: {x-route: api}}}}
    - cluster: backend
  clusters:
  - {name: echo, type: ECHO}
  - {name: backend, endpoints: ["127.0.0.1:9000", "localhost:9001"], protocol: HTTP2, connectTimeout: 250ms, timeout: 2s}
---
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {name: headers, namespace: istio-system, labels: {app: x}}
spec:
  url: file:///plugins/add_header.wasm
  pluginConfig: {request: {set: {x-hello: world}}}
  priority: 10
  selector: {matchLabels: {istio: ingressgateway}}
---
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {name: auth}
spec:
  url: auth.wasm
  phase: AUTHN
  pluginName: auth_root
  failStrategy: FAIL_OPEN
  sha256: ABCDEFABCDEFABCDEFABCDEFABCDEFABCDEFABCDEFABCDEFABCDEFABCDEFABCD
  vmConfig: {env: [{name: MODE, value: strict}]}
  match: [{ports: [{number: 8080}]}]
---
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {name: audit}
spec: {url: audit.wasm, priority: 100}
"#;

    #[test]
    fn a_full_config_is_read_ordered_and_routed() {
        let config = parse(FULL, base()).unwrap();
        assert_eq!(config.admin, None);
        assert_eq!(config.workers, Some(2));
        let order: Vec<&str> = config.plugins.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            order,
            ["auth", "audit", "headers"],
            "AUTHN first, then priority"
        );
        let auth = &config.plugins[0];
        assert_eq!(auth.root_id, "auth_root");
        assert_eq!(auth.fail_strategy, FailStrategy::FailOpen);
        assert_eq!(auth.ports, [8080]);
        assert_eq!(auth.sha256.as_deref().map(str::len), Some(64));
        assert!(auth.sha256.as_deref().unwrap().starts_with("abcdef"));
        let backend = config.cluster("backend").unwrap();
        assert_eq!(backend.connect_timeout, Duration::from_millis(250));
        assert_eq!(backend.timeout, Duration::from_secs(2));
        assert!(backend.http2);
        assert_eq!(config.cluster("echo").unwrap().kind, ClusterKind::Echo);

        let listener = &config.listeners[0];
        assert_eq!(
            listener.tls,
            Some(TlsFiles {
                certificate: "cert.pem".into(),
                private_key: "key.pem".into()
            })
        );
        let health = listener.route("a", "/health", |_| None).unwrap();
        let names: Vec<&str> = config
            .chain(listener, Some(health))
            .iter()
            .map(|e| e.plugin.name.as_str())
            .collect();
        assert_eq!(names, ["audit", "headers"], "auth disabled on /health");
        let canary = |name: &str| (name == "x-env").then_some(&b"canary"[..]);
        let api = listener.route("x.example.com", "/api/v1", canary).unwrap();
        assert_eq!(api.name, "route-1");
        let chain = config.chain(listener, Some(api));
        assert_eq!(
            chain[2].configuration,
            Some(&serde_json::json!({"request": {"set": {"x-route": "api"}}}))
        );
        let fallback = listener
            .route("x.example.com", "/api/v1", |_| None)
            .unwrap();
        assert_eq!(fallback.name, "route-2");

        let notices: Vec<String> = config.notices.iter().map(ToString::to_string).collect();
        assert!(
            notices
                .iter()
                .any(|n| n.starts_with("document 2 (WasmPlugin headers) spec.selector: ignored")),
            "{notices:#?}"
        );
        assert!(notices.iter().any(|n| n.contains("metadata.namespace")));
        assert!(notices.iter().any(|n| n.contains("metadata.labels")));
    }

    #[test]
    fn a_higress_wasm_plugin_becomes_the_configuration_higress_hands_its_plugins() {
        let text = r#"
apiVersion: extensions.higress.io/v1alpha1
kind: WasmPlugin
metadata: {name: key-auth}
spec:
  url: ./key-auth.wasm
  phase: AUTHN
  priority: 300
  failStrategy: FAIL_OPEN
  defaultConfig: {consumers: [{name: c1, credential: k1}], global_auth: false}
  matchRules:
  - ingress: [default/foo]
    config: {allow: [c1]}
  - domain: ["*.example.com", www.test.com]
    service: [api.default.svc.cluster.local:80]
    config: {allow: [c2]}
  - ingress: [default/bar]
    configDisable: true
    config: {allow: [c3]}
  - service: [svc]
"#;
        let config = parse(text, base()).unwrap();
        let plugin = &config.plugins[0];
        assert_eq!(plugin.fail_strategy, FailStrategy::FailOpen);
        assert_eq!(plugin.phase, Phase::Authn);
        assert_eq!(
            plugin.configuration,
            Some(serde_json::json!({
                "consumers": [{"name": "c1", "credential": "k1"}],
                "global_auth": false,
                "_rules_": [
                    {"allow": ["c1"], "_match_route_": ["default/foo"]},
                    {"allow": ["c2"], "_match_domain_": ["*.example.com", "www.test.com"],
                     "_match_service_": ["api.default.svc.cluster.local:80"]},
                    {"_match_service_": ["svc"]},
                ],
            }))
        );
        // pluginConfig wins over both; rules alone with the default disabled.
        let with = |spec: &str| {
            parse(
                &format!(
                    "apiVersion: extensions.higress.io/v1alpha1\nkind: WasmPlugin\nmetadata: {{name: p}}\nspec:\n  url: ./p.wasm\n{spec}"
                ),
                base(),
            )
        };
        let given = with("  pluginConfig: {a: 1}\n  defaultConfig: {b: 2}\n").unwrap();
        assert_eq!(
            given.plugins[0].configuration,
            Some(serde_json::json!({"a": 1}))
        );
        let rules_only = with(
            "  defaultConfig: {b: 2}\n  defaultConfigDisable: true\n  matchRules: [{domain: [a.com], config: {c: 3}}]\n",
        )
        .unwrap();
        assert_eq!(
            rules_only.plugins[0].configuration,
            Some(serde_json::json!({"_rules_": [{"c": 3, "_match_domain_": ["a.com"]}]}))
        );
        // Every rule disabled and the default too: applied nowhere, so not loaded.
        let nowhere = with(
            "  defaultConfigDisable: true\n  matchRules: [{domain: [a.com], configDisable: true}, {configDisable: true, routeType: GRPC}]\n",
        )
        .unwrap();
        assert!(nowhere.plugins.is_empty());
        assert!(
            nowhere
                .notices
                .iter()
                .any(|n| n.message.contains("applies nowhere")),
            "{:?}",
            nowhere.notices
        );
        let errors = with(
            "  failStrategy: FAIL_RELOAD\n  matchRules: [{config: {a: 1}}, {domain: [x], config: [1]}]\n",
        )
        .unwrap_err();
        let messages: Vec<String> = errors
            .iter()
            .map(|e| format!("{}: {}", e.place, e.message))
            .collect();
        assert!(
            messages
                .iter()
                .any(|m| m.contains("spec.failStrategy: FAIL_RELOAD is Istio's")),
            "{messages:?}"
        );
        assert!(
            messages.iter().any(|m| m.contains(
                "spec.matchRules[0]: a rule needs at least one of ingress, domain or service"
            )),
            "{messages:?}"
        );
        assert!(
            messages
                .iter()
                .any(|m| m.contains("spec.matchRules[1].config: must be a mapping")),
            "{messages:?}"
        );
        // Istio's WasmPlugin has no such fields.
        let istio = parse(
            "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata: {name: p}\nspec:\n  url: ./p.wasm\n  defaultConfig: {b: 2}\n",
            base(),
        )
        .unwrap_err();
        assert!(
            istio[0].message.contains("a field of Higress's WasmPlugin"),
            "{istio:?}"
        );
    }

    #[test]
    fn a_traffic_extension_is_read_as_the_wasm_plugin_it_amounts_to() {
        let text = r#"
apiVersion: extensions.istio.io/v1alpha1
kind: TrafficExtension
metadata: {name: auth}
spec:
  phase: AUTHZ
  priority: 10
  match: [{ports: [{number: 8080}]}]
  wasm:
    url: ./auth.wasm
    pluginName: auth_root
    pluginConfig: {tokens: {t: alice}}
    failStrategy: FAIL_OPEN
"#;
        let config = parse(text, base()).unwrap();
        let plugin = &config.plugins[0];
        assert_eq!(
            (
                plugin.name.as_str(),
                plugin.root_id.as_str(),
                plugin.url.as_str()
            ),
            ("auth", "auth_root", "./auth.wasm")
        );
        assert_eq!((plugin.phase, plugin.priority), (Phase::Authz, 10));
        assert_eq!(plugin.ports, [8080]);
        assert_eq!(plugin.fail_strategy, FailStrategy::FailOpen);
        assert_eq!(
            plugin.configuration,
            Some(serde_json::json!({"tokens": {"t": "alice"}}))
        );
        let errors = parse(
            "apiVersion: extensions.istio.io/v1alpha1\nkind: TrafficExtension\nmetadata: {name: x}\nspec:\n  lua: {inlineCode: 'function envoy_on_request(h) end'}\n---\napiVersion: extensions.istio.io/v1alpha1\nkind: TrafficExtension\nmetadata: {name: y}\nspec:\n  wasm: {url: 'ftp://x', sha256: nope}\n",
            base(),
        )
        .unwrap_err();
        let messages: Vec<String> = errors
            .iter()
            .map(|e| format!("{}: {}", e.place, e.message))
            .collect();
        assert!(
            messages
                .iter()
                .any(|m| m.contains("(TrafficExtension x) spec.lua: Lua extensions")),
            "{messages:?}"
        );
        assert!(
            messages.iter().any(
                |m| m.contains("(TrafficExtension y) spec.wasm.url: `ftp://x`: unknown scheme")
            ),
            "{messages:?}"
        );
        assert!(
            messages.iter().any(|m| m.contains("spec.wasm.sha256")),
            "{messages:?}"
        );
    }

    #[test]
    fn every_error_is_reported_with_its_place() {
        let text = r#"
apiVersion: sluice.dev/v1alpha1
kind: Proxy
spec:
  streamIdleTimeout: 0s
  requestHeadersTimeout: soon
  maxConnectionDuration: 0s
  bufferLimitBytes: 0
  maxRequestHeadersKb: 9000
  pluginLimits: {memoryBytes: 0, callTimeout: 1 minute, sharedQueues: 0}
  pluginCapabilities: {q: {limits: {metrics: 5, logLineBytes: 0}}, ghost: {}}
  listeners:
  - address: 127.0.0.1:8080
    routes:
    - {cluster: nowhere, match: {prefix: api}, plugins: {ghost: {disabled: true}}}
  clusters:
  - {name: b, endpoints: ["no-port"], timeout: 5 seconds}
---
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {name: p}
spec: {url: "ftp://ghcr.io/x/y:1", phase: LATE, sha256: abc}
---
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {name: q}
spec: {url: q.wasm, pluginConfg: {}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
"#;
        let found = parse(text, base()).unwrap_err();
        let errors: Vec<String> = found
            .iter()
            .map(|e| format!("{}: {}", e.place, e.message))
            .collect();
        // Each at the line and column of its field in the text.
        let at = |place: &str| {
            let error = found.iter().find(|e| e.place.ends_with(place)).unwrap();
            error.location.map(|l| (l.line, l.column))
        };
        assert_eq!(at("spec.clusters[0].endpoints[0]"), Some((17, 27)));
        assert_eq!(at("spec.pluginConfg"), Some((27, 21)));
        assert_eq!(at("spec.phase"), Some((22, 43)));
        assert_eq!(at("route route-0"), None, "a check across documents");
        let expect = [
            "document 1 (Proxy) spec.clusters[0].endpoints[0]: `no-port` is not HOST:PORT",
            "document 1 (Proxy) spec.clusters[0].timeout: `5 seconds`: expected a unit",
            "document 1 (Proxy) spec.listeners[0].routes[0].match: `api` must start with `/`",
            "document 1 (Proxy) spec.requestHeadersTimeout: `soon`:",
            "document 1 (Proxy) spec.streamIdleTimeout: `0s`: must be more than zero",
            "document 1 (Proxy) spec.maxConnectionDuration: `0s`: must be more than zero",
            "document 1 (Proxy) spec.bufferLimitBytes: `0`: must be more than zero",
            "document 1 (Proxy) spec.maxRequestHeadersKb: `9000`: must be from 1 to 8192",
            "document 1 (Proxy) spec.pluginLimits.memoryBytes: `0`: must be more than zero",
            "document 1 (Proxy) spec.pluginLimits.sharedQueues: `0`: must be more than zero",
            "document 1 (Proxy) spec.pluginLimits.callTimeout: `1 minute`:",
            "document 1 (Proxy) spec.pluginCapabilities.q.limits.logLineBytes: `0`: must be more than zero",
            "document 1 (Proxy) spec.pluginCapabilities.q.limits.metrics: bounds the state every plugin shares: set it in spec.pluginLimits",
            "document 2 (WasmPlugin p) spec.url: `ftp://ghcr.io/x/y:1`: unknown scheme",
            "document 2 (WasmPlugin p) spec.sha256: `abc` is not a sha256 digest",
            "document 2 (WasmPlugin p) spec.phase: `LATE`: expected AUTHN",
            "document 3 (WasmPlugin q) spec.pluginConfg: unknown field `pluginConfg`",
            "document 4 (VirtualService) apiVersion/kind: `networking.istio.io/v1`/`VirtualService` is not a document sluice reads",
            "listener listener-0 route route-0: cluster `nowhere` is not declared (clusters: b)",
            "listener listener-0 route route-0 plugins.ghost: no WasmPlugin is named `ghost`",
            // q's own document failed and says so; ghost has none.
            "document 1 (Proxy) spec.pluginCapabilities.ghost: no WasmPlugin is named `ghost`",
        ];
        for expected in expect {
            assert!(
                errors.iter().any(|e| e.starts_with(expected)),
                "missing {expected:?} in {errors:#?}"
            );
        }
        assert_eq!(errors.len(), expect.len(), "{errors:#?}");
    }

    #[test]
    fn the_node_is_read_and_a_misspelt_field_named() {
        let proxy = |node: &str| {
            format!(
                "apiVersion: sluice.dev/v1alpha1\nkind: Proxy\nspec:\n  node: {node}\n  listeners: [{{address: 127.0.0.1:1, routes: [{{cluster: echo}}]}}]\n  clusters: [{{name: echo, type: ECHO}}]\n"
            )
        };
        let config = parse(
            &proxy("{id: n1, cluster: web, metadata: {LABELS: {app: shop}, n: 3}, locality: {region: eu, subZone: r1}}"),
            base(),
        )
        .unwrap();
        assert_eq!(config.node.id, "n1");
        assert_eq!(config.node.cluster, "web");
        assert_eq!(config.node.metadata["LABELS"]["app"], "shop");
        assert_eq!(config.node.locality.sub_zone, "r1");
        let error = format!(
            "{:?}",
            parse(&proxy("{id: n1, zone: eu}"), base()).unwrap_err()
        );
        assert!(
            error.contains("spec.node") && error.contains("zone"),
            "{error}"
        );
        assert_eq!(
            parse(&proxy("{}"), base()).unwrap().node,
            crate::Node::default()
        );
    }

    #[test]
    fn tcp_listeners_run_network_plugins_and_a_plugin_no_listener_runs_is_noted() {
        let text = "apiVersion: sluice.dev/v1alpha1\nkind: Proxy\nspec:\n  listeners:\n  - {name: web, address: 127.0.0.1:8080, routes: [{cluster: echo}]}\n  - {name: db, address: 127.0.0.1:15432, tcp: {cluster: pg, idleTimeout: 30s}}\n  clusters:\n  - {name: echo, type: ECHO}\n  - {name: pg, endpoints: [127.0.0.1:5432]}\n---\napiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata: {name: guard}\nspec: {url: g.wasm, type: NETWORK}\n---\napiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata: {name: stats}\nspec: {url: s.wasm, type: NETWORK, match: [{ports: [{number: 8080}]}]}\n---\napiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata: {name: auth}\nspec: {url: a.wasm}\n";
        let config = parse(text, base()).unwrap();
        let (web, db) = (&config.listeners[0], &config.listeners[1]);
        assert_eq!(
            db.tcp,
            Some(TcpProxy {
                cluster: "pg".into(),
                idle_timeout: Some(Duration::from_secs(30)),
            })
        );
        let names = |listener| -> Vec<&str> {
            config
                .chain(listener, None)
                .iter()
                .map(|e| e.plugin.name.as_str())
                .collect()
        };
        assert_eq!(names(db), ["guard"]);
        assert_eq!(names(web), ["auth"]);
        let notes: Vec<String> = config.notices.iter().map(ToString::to_string).collect();
        assert!(
            notes.iter().any(|n| n.contains("WasmPlugin stats")
                && n.contains("runs nowhere: a NETWORK plugin runs on TCP listeners only")),
            "{notes:?}"
        );
        let wrong = "apiVersion: sluice.dev/v1alpha1\nkind: Proxy\nspec:\n  listeners:\n  - {address: 127.0.0.1:1, tcp: {cluster: echo, idleTimeout: soon}, routes: [{cluster: echo}]}\n  - {address: 127.0.0.1:2, tcp: {cluster: nowhere}}\n  clusters:\n  - {name: echo, type: ECHO}\n";
        let errors: Vec<String> = parse(wrong, base())
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect();
        for expected in [
            "spec.listeners[0].routes: a TCP listener (`tcp`) has no routes",
            "spec.listeners[0].tcp.idleTimeout: `soon`",
            "listener listener-0 tcp: cluster `echo` is the HTTP echo upstream",
            "listener listener-1 tcp: cluster `nowhere` is not declared",
        ] {
            assert!(
                errors.iter().any(|e| e.contains(expected)),
                "no error with `{expected}` in {errors:?}"
            );
        }
    }

    #[test]
    fn without_a_proxy_document_the_base_listeners_stay() {
        let mut start = base();
        start.listeners.push(Listener {
            name: "flags".into(),
            address: "127.0.0.1:1".parse().unwrap(),
            tls: None,
            routes: Vec::new(),
            tcp: None,
        });
        let text = "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata: {name: a}\nspec: {url: a.wasm}\n";
        let config = parse(text, start).unwrap();
        assert_eq!(config.listeners[0].name, "flags");
        assert_eq!(config.plugins[0].name, "a");
        let bad = parse("a: [unclosed", base()).unwrap_err();
        assert!(
            bad[0]
                .to_string()
                .starts_with("line 2 column 1: document 1: not valid YAML"),
            "{bad:?}"
        );
    }

    #[test]
    fn every_wrong_field_of_a_document_is_reported_in_plain_words() {
        let text = "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata: {name: a}\nspec:\n  url: a.wasm\n  priority: high\n  colour: blue\n  failStrategy: SOMETIMES\n  match: [{ports: [{number: -1}]}]\n";
        let errors: Vec<String> = parse(text, base())
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            errors,
            [
                "line 6 column 13: document 1 (WasmPlugin a) spec.priority: invalid type: string \"high\", expected an integer",
                "line 7 column 11: document 1 (WasmPlugin a) spec.colour: unknown field `colour`, expected one of `url`, `sha256`, `imagePullPolicy`, `imagePullSecret`, `pluginConfig`, `pluginName`, `phase`, `priority`, `vmConfig`, `match`, `failStrategy`, `type`, `selector`, `targetRef`, `targetRefs`, `verificationKey`, `defaultConfig`, `defaultConfigDisable`, `matchRules`",
                "line 8 column 17: document 1 (WasmPlugin a) spec.failStrategy: unknown variant `SOMETIMES`, expected one of `FAIL_CLOSE`, `FAIL_OPEN`, `FAIL_RELOAD`",
                "line 9 column 29: document 1 (WasmPlugin a) spec.match[0].ports[0].number: invalid value: integer `-1`, expected an integer from 0 to 4294967295",
            ]
        );
    }

    #[test]
    fn a_config_without_documents_is_an_error() {
        for text in ["", "\n# only a comment\n", "---\n---\n"] {
            let errors = parse(text, base()).unwrap_err();
            assert!(errors[0].message.starts_with("no documents"), "{errors:?}");
        }
    }

    #[test]
    fn a_plugin_remembers_where_its_url_is() {
        let text = "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata: {name: a}\nspec:\n  url: a.wasm\n";
        let plugin = &parse(text, base()).unwrap().plugins[0];
        let (place, location) = plugin.origin.place("spec.url", Some(text));
        assert_eq!(place, "document 1 (WasmPlugin a) spec.url");
        assert_eq!(location.map(|l| (l.line, l.column)), Some((5, 8)));
    }

    #[test]
    fn durations_read_like_protobuf() {
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("s").is_err());
    }
}
