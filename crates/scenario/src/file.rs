//! The scenario file format (docs/scenarios.md), read and resolved into [`Scenario`]: everything
//! a backend needs to drive the steps is checked here, before anything runs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use sluice_abi::{HeaderMap, PropertyValue};
use sluice_config::FailStrategy;
use sluice_host::CallResponse;

use crate::ScenarioError;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScenarioFile {
    name: Option<String>,
    plugins: Vec<PluginEntry>,
    #[serde(default)]
    limits: LimitsSpec,
    #[serde(default)]
    properties: BTreeMap<String, yaml_serde::Value>,
    #[serde(default)]
    callouts: BTreeMap<String, Vec<CalloutAnswer>>,
    #[serde(default)]
    expect: StartExpect,
    #[serde(default)]
    steps: Vec<StepSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PluginEntry {
    name: String,
    wasm: PathBuf,
    root_id: Option<String>,
    #[serde(default)]
    vm_id: String,
    plugin_config: Option<serde_json::Value>,
    #[serde(default)]
    vm_config: sluice_config::VmConfig,
    #[serde(default)]
    fail_strategy: FailStrategy,
    #[serde(default)]
    allow_on_headers_stop_iteration: bool,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct LimitsSpec {
    #[serde(rename = "memoryMiB")]
    memory_mib: Option<usize>,
    call_timeout_ms: Option<u64>,
    buffer_bytes: Option<usize>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct CalloutAnswer {
    status: Option<u16>,
    #[serde(default)]
    headers: Option<yaml_serde::Value>,
    body: Option<String>,
    #[serde(default)]
    trailers: Option<yaml_serde::Value>,
    #[serde(default)]
    fail: bool,
    #[serde(default)]
    timeout: bool,
    grpc_status: Option<u32>,
    message: Option<String>,
    message_base64: Option<String>,
    /// A Redis reply: an integer, a string (bulk), null, a list (array), `{ok: TEXT}` (a simple
    /// string) or `{error: TEXT}`.
    redis: Option<serde_json::Value>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StartExpect {
    pub(super) configured: Option<bool>,
    #[serde(default)]
    pub(super) logs: Vec<LogExpect>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StepSpec {
    name: Option<String>,
    request: Option<RequestSpec>,
    upstream: Option<ResponseSpec>,
    advance: Option<String>,
    connection: Option<ConnectionSpec>,
    #[serde(default)]
    expect: Expect,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestSpec {
    method: Option<String>,
    path: Option<String>,
    authority: Option<String>,
    scheme: Option<String>,
    headers: Option<yaml_serde::Value>,
    body: Option<String>,
    chunks: Option<Vec<String>>,
    trailers: Option<yaml_serde::Value>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResponseSpec {
    status: Option<u16>,
    headers: Option<yaml_serde::Value>,
    body: Option<String>,
    chunks: Option<Vec<String>>,
    trailers: Option<yaml_serde::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConnectionSpec {
    events: Vec<EventSpec>,
}

/// One event of a connection: exactly one field.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventSpec {
    client: Option<String>,
    upstream: Option<String>,
    /// `client` or `upstream`: that side half-closes (sends its FIN).
    end: Option<String>,
    /// `client`: the client resets the connection.
    reset: Option<String>,
    advance: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct ConnectionExpect {
    /// The bytes that reached the upstream; `null`: it was never connected.
    #[serde(default, deserialize_with = "present")]
    pub(super) upstream: Option<Option<String>>,
    pub(super) upstream_ended: Option<bool>,
    pub(super) client: Option<String>,
    pub(super) client_ended: Option<bool>,
    /// `proxy`, `client`, `ends` (both sides ended) or `open`.
    pub(super) closed_by: Option<String>,
}

/// A field that is present, even as `null` (`Some(None)`), as opposed to absent (`None`).
fn present<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(deserializer).map(Some)
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct Expect {
    pub(super) connection: Option<ConnectionExpect>,
    /// `none`, or what the upstream must have received.
    pub(super) upstream: Option<yaml_serde::Value>,
    pub(super) response: Option<ResponseExpect>,
    pub(super) http_calls: Option<Vec<CallExpect>>,
    pub(super) grpc_calls: Option<Vec<GrpcExpect>>,
    pub(super) redis_calls: Option<Vec<RedisExpect>>,
    #[serde(default)]
    pub(super) logs: Vec<LogExpect>,
    pub(super) no_logs_at_or_above: Option<String>,
    #[serde(default)]
    pub(super) metrics: BTreeMap<String, i64>,
    #[serde(default)]
    pub(super) shared_data: BTreeMap<String, Option<String>>,
    pub(super) plugin_failure: Option<bool>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct UpstreamExpect {
    pub(super) method: Option<String>,
    pub(super) path: Option<String>,
    pub(super) authority: Option<String>,
    pub(super) headers: Option<yaml_serde::Value>,
    pub(super) body: Option<String>,
    pub(super) body_contains: Option<String>,
    pub(super) trailers: Option<yaml_serde::Value>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct ResponseExpect {
    pub(super) status: Option<u16>,
    /// The client's stream is reset (after the response head, when nothing else can be sent).
    pub(super) reset: Option<bool>,
    pub(super) headers: Option<yaml_serde::Value>,
    pub(super) body: Option<String>,
    pub(super) body_contains: Option<String>,
    pub(super) trailers: Option<yaml_serde::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct CallExpect {
    pub(super) cluster: String,
    pub(super) headers: Option<yaml_serde::Value>,
    pub(super) body: Option<String>,
    pub(super) timeout_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct GrpcExpect {
    pub(super) cluster: String,
    pub(super) service: Option<String>,
    pub(super) method: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RedisExpect {
    pub(super) cluster: String,
    /// The command's arguments; any, when absent.
    pub(super) command: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LogExpect {
    pub(super) level: Option<String>,
    pub(super) contains: String,
    pub(super) plugin: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// The resolved scenario.

/// A scenario file, read and checked: what the plugins are, what the upstream and the callout
/// clusters answer, and each step's action and expectations.
pub struct Scenario {
    /// The file as given, for messages.
    pub file: String,
    pub name: String,
    pub plugins: Vec<ScenarioPlugin>,
    pub limits: ScenarioLimits,
    /// Extra property values for every request (Envoy names).
    pub properties: BTreeMap<String, PropertyValue>,
    /// The canned answers per callout cluster, in order; the last one repeats.
    pub callouts: BTreeMap<String, Vec<CannedAnswer>>,
    pub steps: Vec<ScenarioStep>,
    pub(super) start: StartExpect,
}

pub struct ScenarioPlugin {
    pub name: String,
    /// The module, resolved against the scenario file's folder.
    pub wasm: PathBuf,
    pub root_id: String,
    pub vm_id: String,
    pub plugin_config: Option<serde_json::Value>,
    pub vm_config: sluice_config::VmConfig,
    pub fail_strategy: FailStrategy,
    /// Envoy's `allow_on_headers_stop_iteration` (see `sluice_config::Capabilities`).
    pub headers_stop_iteration: bool,
}

/// The file's `limits`; `None` keeps the host's default.
#[derive(Clone, Copy, Debug, Default)]
pub struct ScenarioLimits {
    pub memory_bytes: Option<usize>,
    pub call_timeout: Option<Duration>,
    pub buffer_bytes: Option<usize>,
}

/// What a callout cluster answers to one call.
#[derive(Clone, Debug)]
pub enum CannedAnswer {
    /// The call fails (the connection is refused or reset).
    Fail,
    /// No answer: the call runs into its timeout.
    Timeout,
    /// An HTTP response; `headers` holds `:status`.
    Http(CallResponse),
    /// A unary gRPC answer: the message with status 0, or the status alone.
    Grpc { status: u32, message: Vec<u8> },
    /// A Redis reply, RESP-encoded.
    Redis(Vec<u8>),
}

pub struct ScenarioStep {
    /// The step's name, or one made from its request or its advance.
    pub name: String,
    pub action: Action,
    pub(super) expect: Expect,
}

pub enum Action {
    Request(Exchange),
    /// Moves the clock forward by this much, firing the ticks that fall due.
    Advance(Duration),
    /// A TCP connection through the plugins as network (L4) filters.
    Connection(Vec<ConnectionEvent>),
}

/// What happens on a scripted TCP connection, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConnectionEvent {
    /// Bytes from the client (read once the upstream is connected).
    Client(Vec<u8>),
    /// Bytes from the upstream.
    Upstream(Vec<u8>),
    /// The client half-closes.
    ClientEnd,
    /// The upstream half-closes.
    UpstreamEnd,
    /// The client resets the connection.
    ClientReset,
    /// The clock moves on, firing due ticks.
    Advance(Duration),
}

/// A request as the client sends it, and the answer the upstream gives if the request reaches it.
pub struct Exchange {
    /// With the pseudo-headers `:method`, `:path`, `:authority` and `:scheme`.
    pub headers: HeaderMap,
    pub chunks: Vec<Vec<u8>>,
    pub trailers: HeaderMap,
    pub response: ScriptedResponse,
}

pub struct ScriptedResponse {
    /// With `:status`.
    pub headers: HeaderMap,
    pub chunks: Vec<Vec<u8>>,
    pub trailers: HeaderMap,
}

impl Scenario {
    /// Reads and resolves a scenario file.
    ///
    /// # Errors
    /// [`ScenarioError::Read`] or [`ScenarioError::Invalid`], naming the field.
    pub fn read(path: &Path) -> Result<Scenario, ScenarioError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            file: file.clone(),
            source,
        })?;
        let invalid = |message: String| ScenarioError::Invalid {
            file: file.clone(),
            message,
        };
        let spec: ScenarioFile = yaml_serde::from_str(&text).map_err(|e| invalid(e.to_string()))?;
        if spec.plugins.is_empty() {
            return Err(invalid("plugins: at least one plugin is needed".into()));
        }
        let base = path.parent().unwrap_or(Path::new("."));
        let name = spec.name.clone().unwrap_or_else(|| {
            path.file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default()
        });
        let plugins = spec
            .plugins
            .into_iter()
            .map(|entry| ScenarioPlugin {
                wasm: base.join(&entry.wasm),
                root_id: entry.root_id.unwrap_or_else(|| entry.name.clone()),
                name: entry.name,
                vm_id: entry.vm_id,
                plugin_config: entry.plugin_config,
                vm_config: entry.vm_config,
                fail_strategy: entry.fail_strategy,
                headers_stop_iteration: entry.allow_on_headers_stop_iteration,
            })
            .collect();
        let mut properties = BTreeMap::new();
        for (key, value) in spec.properties {
            let value = match value {
                yaml_serde::Value::Number(n) if n.is_i64() => {
                    PropertyValue::Int(n.as_i64().unwrap_or_default())
                }
                other => scalar(&other).map(PropertyValue::String).ok_or_else(|| {
                    invalid(format!("properties.{key}: expected a string or an integer"))
                })?,
            };
            properties.insert(key, value);
        }
        let mut callouts = BTreeMap::new();
        for (cluster, answers) in spec.callouts {
            let resolved = answers
                .into_iter()
                .enumerate()
                .map(|(i, answer)| answer.resolve(&format!("callouts.{cluster}[{i}]")))
                .collect::<Result<Vec<_>, _>>()
                .map_err(invalid)?;
            callouts.insert(cluster, resolved);
        }
        let steps = spec
            .steps
            .into_iter()
            .enumerate()
            .map(|(index, step)| step.resolve(index))
            .collect::<Result<Vec<_>, _>>()
            .map_err(invalid)?;
        Ok(Scenario {
            file,
            name,
            plugins,
            limits: ScenarioLimits {
                memory_bytes: spec.limits.memory_mib.map(|m| m << 20),
                call_timeout: spec.limits.call_timeout_ms.map(Duration::from_millis),
                buffer_bytes: spec.limits.buffer_bytes,
            },
            properties,
            callouts,
            steps,
            start: spec.expect,
        })
    }

    /// Whether the file expects a plugin to refuse its configuration.
    pub fn expects_refusal(&self) -> bool {
        self.start.configured == Some(false)
    }
}

/// The next answer from a cluster's queue: answers are used in order and the last one repeats.
pub fn next_answer(queue: &mut std::collections::VecDeque<CannedAnswer>) -> Option<CannedAnswer> {
    if queue.len() > 1 {
        queue.pop_front()
    } else {
        queue.front().cloned()
    }
}

impl CalloutAnswer {
    fn resolve(self, field: &str) -> Result<CannedAnswer, String> {
        if self.fail {
            return Ok(CannedAnswer::Fail);
        }
        if self.timeout {
            return Ok(CannedAnswer::Timeout);
        }
        if let Some(reply) = &self.redis {
            let mut encoded = Vec::new();
            encode_redis_reply(reply, &mut encoded).map_err(|e| format!("{field}.redis{e}"))?;
            return Ok(CannedAnswer::Redis(encoded));
        }
        if self.grpc_status.is_some() || self.message.is_some() || self.message_base64.is_some() {
            let message = match (&self.message, &self.message_base64) {
                (_, Some(b64)) => decode_base64(b64)
                    .ok_or_else(|| format!("{field}.messageBase64: not base64"))?,
                (Some(text), None) => text.as_bytes().to_vec(),
                (None, None) => Vec::new(),
            };
            return Ok(CannedAnswer::Grpc {
                status: self.grpc_status.unwrap_or(0),
                message,
            });
        }
        let mut headers = HeaderMap::new();
        headers.add(":status", self.status.unwrap_or(200).to_string());
        for (k, v) in header_map(self.headers.as_ref(), &format!("{field}.headers"))?.iter() {
            headers.add(k, v);
        }
        Ok(CannedAnswer::Http(CallResponse {
            headers,
            body: self.body.unwrap_or_default().into_bytes(),
            trailers: header_map(self.trailers.as_ref(), &format!("{field}.trailers"))?,
        }))
    }
}

/// A scenario's Redis reply in RESP; the error names the path below `redis` that is wrong.
fn encode_redis_reply(value: &serde_json::Value, out: &mut Vec<u8>) -> Result<(), String> {
    use serde_json::Value;
    match value {
        Value::Null => out.extend_from_slice(b"$-1\r\n"),
        Value::Number(n) => {
            let n = n
                .as_i64()
                .ok_or_else(|| format!(": {n} is not a 64-bit integer"))?;
            out.extend_from_slice(format!(":{n}\r\n").as_bytes());
        }
        Value::String(text) => sluice_abi::resp::push_bulk(out, text.as_bytes()),
        Value::Array(items) => {
            out.extend_from_slice(format!("*{}\r\n", items.len()).as_bytes());
            for (i, item) in items.iter().enumerate() {
                encode_redis_reply(item, out).map_err(|e| format!("[{i}]{e}"))?;
            }
        }
        Value::Object(map) => match map.iter().next() {
            Some((kind, Value::String(text)))
                if map.len() == 1
                    && (kind == "ok" || kind == "error")
                    && !text.contains(['\r', '\n']) =>
            {
                let mark = if kind == "ok" { '+' } else { '-' };
                out.extend_from_slice(format!("{mark}{text}\r\n").as_bytes());
            }
            _ => {
                return Err(
                    ": a map must be {ok: TEXT} or {error: TEXT}, one line of text".to_string(),
                );
            }
        },
        Value::Bool(_) => return Err(": true/false is not a Redis reply".to_string()),
    }
    Ok(())
}

impl StepSpec {
    fn resolve(self, index: usize) -> Result<ScenarioStep, String> {
        if let Some(connection) = self.connection {
            if self.request.is_some() || self.advance.is_some() || self.upstream.is_some() {
                return Err(format!(
                    "steps[{index}]: a step has exactly one of `request`, `advance` or `connection`"
                ));
            }
            let events = connection
                .events
                .into_iter()
                .enumerate()
                .map(|(at, event)| {
                    event.resolve(&format!("steps[{index}].connection.events[{at}]"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            return Ok(ScenarioStep {
                name: self.name.unwrap_or_else(|| "connection".to_string()),
                action: Action::Connection(events),
                expect: self.expect,
            });
        }
        let (action, default_name) = match (self.request, self.advance) {
            (Some(request), None) => {
                let name = format!(
                    "{} {}",
                    request.method.as_deref().unwrap_or("GET"),
                    request.path.as_deref().unwrap_or("/")
                );
                let upstream = self.upstream.unwrap_or_default();
                let exchange = request.resolve(upstream, &format!("steps[{index}]"))?;
                (Action::Request(exchange), name)
            }
            (None, Some(advance)) => {
                if self.upstream.is_some() {
                    return Err(format!(
                        "steps[{index}]: `upstream` only goes with `request`"
                    ));
                }
                let nanos = parse_duration(&advance).ok_or_else(|| {
                    format!(
                        "steps[{index}].advance: `{advance}` is not a duration like 250ms, 5s or 1m"
                    )
                })?;
                (
                    Action::Advance(Duration::from_nanos(nanos)),
                    format!("advance {advance}"),
                )
            }
            _ => {
                return Err(format!(
                    "steps[{index}]: a step has exactly one of `request`, `advance` or `connection`"
                ));
            }
        };
        Ok(ScenarioStep {
            name: self.name.unwrap_or(default_name),
            action,
            expect: self.expect,
        })
    }
}

impl EventSpec {
    fn resolve(self, field: &str) -> Result<ConnectionEvent, String> {
        let event = match (
            self.client,
            self.upstream,
            self.end,
            self.reset,
            self.advance,
        ) {
            (Some(text), None, None, None, None) => ConnectionEvent::Client(text.into_bytes()),
            (None, Some(text), None, None, None) => ConnectionEvent::Upstream(text.into_bytes()),
            (None, None, Some(side), None, None) => match side.as_str() {
                "client" => ConnectionEvent::ClientEnd,
                "upstream" => ConnectionEvent::UpstreamEnd,
                other => {
                    return Err(format!(
                        "{field}.end: `{other}`: expected client or upstream"
                    ));
                }
            },
            (None, None, None, Some(side), None) => match side.as_str() {
                "client" => ConnectionEvent::ClientReset,
                other => return Err(format!("{field}.reset: `{other}`: expected client")),
            },
            (None, None, None, None, Some(advance)) => {
                let nanos = parse_duration(&advance).ok_or_else(|| {
                    format!("{field}.advance: `{advance}` is not a duration like 250ms, 5s or 1m")
                })?;
                ConnectionEvent::Advance(Duration::from_nanos(nanos))
            }
            _ => {
                return Err(format!(
                    "{field}: an event has exactly one of `client`, `upstream`, `end`, `reset` or `advance`"
                ));
            }
        };
        Ok(event)
    }
}

impl RequestSpec {
    fn resolve(self, upstream: ResponseSpec, field: &str) -> Result<Exchange, String> {
        let mut headers = HeaderMap::new();
        headers.add(":method", self.method.as_deref().unwrap_or("GET"));
        headers.add(":path", self.path.as_deref().unwrap_or("/"));
        headers.add(
            ":authority",
            self.authority.as_deref().unwrap_or("example.com"),
        );
        headers.add(":scheme", self.scheme.as_deref().unwrap_or("http"));
        for (k, v) in header_map(self.headers.as_ref(), &format!("{field}.request.headers"))?.iter()
        {
            headers.add(k, v);
        }
        let mut response_headers = HeaderMap::new();
        response_headers.add(":status", upstream.status.unwrap_or(200).to_string());
        for (k, v) in header_map(
            upstream.headers.as_ref(),
            &format!("{field}.upstream.headers"),
        )?
        .iter()
        {
            response_headers.add(k, v);
        }
        Ok(Exchange {
            headers,
            chunks: body_chunks(&self.body, &self.chunks),
            trailers: header_map(self.trailers.as_ref(), &format!("{field}.request.trailers"))?,
            response: ScriptedResponse {
                headers: response_headers,
                chunks: body_chunks(&upstream.body, &upstream.chunks),
                trailers: header_map(
                    upstream.trailers.as_ref(),
                    &format!("{field}.upstream.trailers"),
                )?,
            },
        })
    }
}

/// A YAML scalar as text (numbers and booleans as written).
fn scalar(value: &yaml_serde::Value) -> Option<String> {
    match value {
        yaml_serde::Value::String(s) => Some(s.clone()),
        yaml_serde::Value::Number(n) => Some(n.to_string()),
        yaml_serde::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Header pairs from a map (`{name: value}`, `null` values kept as `None`) or a list of
/// `[name, value]` pairs, in file order.
pub(super) fn header_pairs(
    value: &yaml_serde::Value,
    field: &str,
) -> Result<Vec<(String, Option<String>)>, String> {
    let bad = || {
        format!(
            "{field}: expected a map of header names to values, or a list of [name, value] pairs"
        )
    };
    match value {
        yaml_serde::Value::Null => Ok(Vec::new()),
        yaml_serde::Value::Mapping(map) => map
            .iter()
            .map(|(k, v)| {
                let name = scalar(k).ok_or_else(bad)?.to_ascii_lowercase();
                let value = if v.is_null() {
                    None
                } else {
                    Some(scalar(v).ok_or_else(bad)?)
                };
                Ok((name, value))
            })
            .collect(),
        yaml_serde::Value::Sequence(pairs) => pairs
            .iter()
            .map(|pair| match pair.as_sequence().map(Vec::as_slice) {
                Some([k, v]) => Ok((scalar(k).ok_or_else(bad)?.to_ascii_lowercase(), scalar(v))),
                _ => Err(bad()),
            })
            .collect(),
        _ => Err(bad()),
    }
}

fn header_map(value: Option<&yaml_serde::Value>, field: &str) -> Result<HeaderMap, String> {
    let mut map = HeaderMap::new();
    if let Some(value) = value {
        for (name, value) in header_pairs(value, field)? {
            map.add(name, value.unwrap_or_default());
        }
    }
    Ok(map)
}

/// Parses `250ms`, `5s`, `1.5s`, `2m`.
fn parse_duration(text: &str) -> Option<u64> {
    let text = text.trim();
    let (number, unit_nanos) = if let Some(n) = text.strip_suffix("ms") {
        (n, 1_000_000f64)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1e9)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60e9)
    } else {
        return None;
    };
    let value: f64 = number.trim().parse().ok()?;
    (value >= 0.0).then_some((value * unit_nanos) as u64)
}

fn body_chunks(body: &Option<String>, chunks: &Option<Vec<String>>) -> Vec<Vec<u8>> {
    match (body, chunks) {
        (_, Some(chunks)) => chunks
            .iter()
            .filter(|c| !c.is_empty())
            .map(|c| c.as_bytes().to_vec())
            .collect(),
        (Some(body), None) if !body.is_empty() => vec![body.as_bytes().to_vec()],
        _ => Vec::new(),
    }
}

fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        } as u32)
    };
    let clean: Vec<u8> = text
        .bytes()
        .filter(|c| !c.is_ascii_whitespace() && *c != b'=')
        .collect();
    let mut out = Vec::with_capacity(clean.len() * 3 / 4);
    for chunk in clean.chunks(4) {
        let mut bits = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            bits |= value(*c)? << (18 - 6 * i);
        }
        let bytes = bits.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_base64() {
        assert_eq!(parse_duration("250ms"), Some(250_000_000));
        assert_eq!(parse_duration("1.5s"), Some(1_500_000_000));
        assert_eq!(parse_duration("2m"), Some(120_000_000_000));
        assert_eq!(parse_duration("soon"), None);
        assert_eq!(decode_base64("aGVsbG8=").as_deref(), Some(&b"hello"[..]));
    }
}
