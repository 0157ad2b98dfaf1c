//! The scenario runner behind `sluice test`: reads a scenario file (docs/scenarios.md), runs its
//! requests through the real plugins on the chain engine, answers the upstream and callouts from
//! the file, and compares what happened with what the file expects.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::AtomicU32;

use serde::Deserialize;
use sluice_abi::{HeaderMap, LogLevel, PropertyValue};
use sluice_config::{FailStrategy, plugin_configuration_bytes};
use sluice_host::{
    CallResponse, Clock, Engine, EngineOptions, GrpcCallRequest, GrpcEvent, HttpCallRequest,
    HttpStream, Limits, LogRecord, VmConfig,
};

use crate::chain::{Chain, DEFAULT_BUFFER_LIMIT, PluginSpec, RootCall, VmPool};
use crate::stream::{Step, Stream};

/// Why a scenario file could not be run at all (as opposed to an expectation that failed).
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error("{file}: {message}")]
    Invalid { file: String, message: String },
    #[error("{file}: plugins[{index}] ({plugin}): {message}")]
    Plugin {
        file: String,
        index: usize,
        plugin: String,
        message: String,
    },
}

/// One expectation that did not hold.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Mismatch {
    /// 1-based step number; 0 for start-up expectations.
    pub step: usize,
    pub step_name: String,
    /// Where in the file the expectation is, e.g. `expect.response.headers.x-wasm`.
    pub field: String,
    pub expected: String,
    pub actual: String,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Report {
    pub file: String,
    pub name: String,
    pub steps: usize,
    pub mismatches: Vec<Mismatch>,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.mismatches.is_empty()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.passed() {
            return write!(
                f,
                "PASS {} ({}, {} steps)",
                self.name, self.file, self.steps
            );
        }
        write!(f, "FAIL {} ({})", self.name, self.file)?;
        for m in &self.mismatches {
            let place = if m.step == 0 {
                "start-up".to_string()
            } else {
                format!("step {} \"{}\"", m.step, m.step_name)
            };
            write!(
                f,
                "\n  {place}: {}\n    expected: {}\n    actual:   {}",
                m.field, m.expected, m.actual
            )?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// The file format.

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
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct LimitsSpec {
    #[serde(rename = "memoryMiB")]
    memory_mib: Option<usize>,
    call_timeout_ms: Option<u64>,
    buffer_bytes: Option<usize>,
}

#[derive(Clone, Default, Deserialize)]
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
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct StartExpect {
    configured: Option<bool>,
    #[serde(default)]
    logs: Vec<LogExpect>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StepSpec {
    name: Option<String>,
    request: Option<RequestSpec>,
    upstream: Option<ResponseSpec>,
    advance: Option<String>,
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

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Expect {
    /// `none`, or what the upstream must have received.
    upstream: Option<yaml_serde::Value>,
    response: Option<ResponseExpect>,
    http_calls: Option<Vec<CallExpect>>,
    grpc_calls: Option<Vec<GrpcExpect>>,
    #[serde(default)]
    logs: Vec<LogExpect>,
    no_logs_at_or_above: Option<String>,
    #[serde(default)]
    metrics: BTreeMap<String, i64>,
    #[serde(default)]
    shared_data: BTreeMap<String, Option<String>>,
    plugin_failure: Option<bool>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct UpstreamExpect {
    method: Option<String>,
    path: Option<String>,
    authority: Option<String>,
    headers: Option<yaml_serde::Value>,
    body: Option<String>,
    body_contains: Option<String>,
    trailers: Option<yaml_serde::Value>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ResponseExpect {
    status: Option<u16>,
    /// The client's stream is reset (after the response head, when nothing else can be sent).
    reset: Option<bool>,
    headers: Option<yaml_serde::Value>,
    body: Option<String>,
    body_contains: Option<String>,
    trailers: Option<yaml_serde::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct CallExpect {
    cluster: String,
    headers: Option<yaml_serde::Value>,
    body: Option<String>,
    timeout_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GrpcExpect {
    cluster: String,
    service: Option<String>,
    method: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LogExpect {
    level: Option<String>,
    contains: String,
    plugin: Option<String>,
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
fn header_pairs(
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

// ---------------------------------------------------------------------------------------------
// Running.

/// The Unix time every scenario starts at, so that time-dependent plugins behave the same on
/// every run (2026-01-01T00:00:00Z).
pub const SCENARIO_EPOCH_NANOS: u64 = 1_767_225_600_000_000_000;

/// Runs one scenario file.
///
/// # Errors
/// A [`ScenarioError`] when the file cannot be read or parsed, names a plugin that cannot be
/// loaded, or a plugin fails to start when the file does not expect it to.
pub fn run_file(path: &Path, cache_dir: Option<PathBuf>) -> Result<Report, ScenarioError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
        file: file.clone(),
        source,
    })?;
    let invalid = |message: String| ScenarioError::Invalid {
        file: file.clone(),
        message,
    };
    let scenario: ScenarioFile = yaml_serde::from_str(&text).map_err(|e| invalid(e.to_string()))?;
    if scenario.plugins.is_empty() {
        return Err(invalid("plugins: at least one plugin is needed".into()));
    }
    let base = path.parent().unwrap_or(Path::new("."));
    let name = scenario.name.clone().unwrap_or_else(|| {
        path.file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    });
    let engine = Engine::new(EngineOptions { cache_dir }).map_err(|e| invalid(e.to_string()))?;
    let clock = Clock::manual(SCENARIO_EPOCH_NANOS);
    let limits = Limits {
        memory_bytes: scenario
            .limits
            .memory_mib
            .map_or(Limits::default().memory_bytes, |m| m << 20),
        call_timeout: scenario.limits.call_timeout_ms.map_or(
            Limits::default().call_timeout,
            std::time::Duration::from_millis,
        ),
        ..Limits::default()
    };
    let clusters: Arc<Vec<String>> = Arc::new(scenario.callouts.keys().cloned().collect());
    let mut specs = Vec::new();
    for (index, entry) in scenario.plugins.iter().enumerate() {
        let plugin_error = |message: String| ScenarioError::Plugin {
            file: file.clone(),
            index,
            plugin: entry.name.clone(),
            message,
        };
        let wasm = base.join(&entry.wasm);
        let code = engine
            .load_file(&wasm)
            .map_err(|e| plugin_error(format!("{}: {e}", wasm.display())))?;
        let env = entry
            .vm_config
            .environment(|name| std::env::var(name).ok())
            .map_err(|e| plugin_error(e.to_string()))?;
        let clusters = clusters.clone();
        let vm = VmConfig {
            vm_id: entry.vm_id.clone(),
            env,
            limits: limits.clone(),
            log_level: Arc::new(AtomicU32::new(LogLevel::Trace as u32)),
            capture_logs: true,
            clock: clock.clone(),
            clusters: Arc::new(move |name| clusters.iter().any(|c| c == name)),
            ..VmConfig::new(entry.name.clone())
        };
        specs.push(PluginSpec {
            name: entry.name.clone(),
            root_id: entry.root_id.clone().unwrap_or_else(|| entry.name.clone()),
            code,
            plugin_configuration: plugin_configuration_bytes(entry.plugin_config.as_ref()),
            vm,
            fail_strategy: entry.fail_strategy,
        });
    }
    let mut mismatches = Vec::new();
    let buffer_limit = scenario.limits.buffer_bytes.unwrap_or(DEFAULT_BUFFER_LIMIT);
    let pool = VmPool::new(&engine, clock.clone());
    let chain = match pool.chain(specs, buffer_limit) {
        Ok(chain) => chain,
        Err(error) if scenario.expect.configured == Some(false) => {
            check_logs(
                &scenario.expect.logs,
                &error.logs,
                0,
                "",
                "expect.logs",
                &mut mismatches,
            );
            return Ok(Report {
                file,
                name,
                steps: 0,
                mismatches,
            });
        }
        Err(error) => {
            let index = scenario
                .plugins
                .iter()
                .position(|p| p.name == error.plugin)
                .unwrap_or(0);
            let logs: Vec<String> = error
                .logs
                .iter()
                .map(|l| format!("\n    [{}] {}", l.level, l.message))
                .collect();
            return Err(ScenarioError::Plugin {
                file,
                index,
                plugin: error.plugin,
                message: format!("{}{}", error.source, logs.concat()),
            });
        }
    };
    if scenario.expect.configured == Some(false) {
        mismatches.push(Mismatch {
            step: 0,
            step_name: String::new(),
            field: "expect.configured".into(),
            expected: "false (a plugin rejects its configuration)".into(),
            actual: "every plugin started".into(),
        });
    }
    check_logs(
        &scenario.expect.logs,
        &pool.take_logs(),
        0,
        "",
        "expect.logs",
        &mut mismatches,
    );
    let mut runner = Runner {
        engine: &engine,
        chain: Rc::new(chain),
        clock,
        callouts: scenario
            .callouts
            .into_iter()
            .map(|(k, v)| (k, v.into_iter().collect()))
            .collect(),
        properties: scenario.properties,
        vm_id: scenario.plugins[0].vm_id.clone(),
        file: file.clone(),
    };
    for (index, step) in scenario.steps.iter().enumerate() {
        let number = index + 1;
        let step_name = step
            .name
            .clone()
            .unwrap_or_else(|| match (&step.request, &step.advance) {
                (Some(r), _) => format!(
                    "{} {}",
                    r.method.as_deref().unwrap_or("GET"),
                    r.path.as_deref().unwrap_or("/")
                ),
                (None, Some(a)) => format!("advance {a}"),
                _ => String::new(),
            });
        let outcome = match (&step.request, &step.advance) {
            (Some(request), None) => runner.request(number, request, step.upstream.as_ref())?,
            (None, Some(advance)) => {
                if step.upstream.is_some() {
                    return Err(invalid(format!(
                        "steps[{index}]: `upstream` only goes with `request`"
                    )));
                }
                let nanos = parse_duration(advance).ok_or_else(|| {
                    invalid(format!(
                        "steps[{index}].advance: `{advance}` is not a duration like 250ms, 5s or 1m"
                    ))
                })?;
                runner.advance(nanos)?
            }
            _ => {
                return Err(invalid(format!(
                    "steps[{index}]: a step has exactly one of `request` or `advance`"
                )));
            }
        };
        runner
            .check(number, &step_name, &step.expect, &outcome, &mut mismatches)
            .map_err(|m| invalid(format!("steps[{index}].{m}")))?;
    }
    Ok(Report {
        file,
        name,
        steps: scenario.steps.len(),
        mismatches,
    })
}

#[derive(Default)]
struct UpstreamSeen {
    headers: HeaderMap,
    body: Vec<u8>,
    trailers: HeaderMap,
    complete: bool,
}

#[derive(Default)]
struct ClientSeen {
    headers: Option<HeaderMap>,
    body: Vec<u8>,
    trailers: HeaderMap,
    reset: Option<String>,
}

/// What happened during one step.
#[derive(Default)]
struct Outcome {
    upstream: Option<UpstreamSeen>,
    client: Option<ClientSeen>,
    http_calls: Vec<(String, HttpCallRequest)>,
    grpc_calls: Vec<GrpcCallRequest>,
    logs: Vec<LogRecord>,
    failures: Vec<String>,
    stalled: bool,
}

struct Runner<'a> {
    engine: &'a Engine,
    chain: Rc<Chain>,
    clock: Clock,
    callouts: BTreeMap<String, VecDeque<CalloutAnswer>>,
    properties: BTreeMap<String, yaml_serde::Value>,
    vm_id: String,
    file: String,
}

enum Answer {
    Http(Option<CallResponse>),
    Grpc(Vec<GrpcEvent>),
}

impl Runner<'_> {
    fn invalid(&self, message: String) -> ScenarioError {
        ScenarioError::Invalid {
            file: self.file.clone(),
            message,
        }
    }

    /// The next canned answer for `cluster`; the last one repeats. A timeout advances the clock
    /// by the call's timeout first.
    fn answer(
        &mut self,
        cluster: &str,
        timeout: std::time::Duration,
        grpc: bool,
    ) -> Result<Answer, ScenarioError> {
        let queue = self
            .callouts
            .get_mut(cluster)
            .ok_or_else(|| ScenarioError::Invalid {
                file: self.file.clone(),
                message: format!("callouts: no answers for cluster `{cluster}`"),
            })?;
        let answer = if queue.len() > 1 {
            queue.pop_front()
        } else {
            queue.front().cloned()
        }
        .unwrap_or_default();
        if answer.timeout {
            self.clock.advance(timeout.as_nanos() as u64);
        }
        if answer.fail || answer.timeout {
            return Ok(if grpc {
                let status = if answer.timeout { 4 } else { 14 };
                Answer::Grpc(vec![GrpcEvent::Close {
                    status,
                    message: Vec::new(),
                }])
            } else {
                Answer::Http(None)
            });
        }
        let field = format!("callouts.{cluster}");
        let mut headers = header_map(answer.headers.as_ref(), &format!("{field}.headers"))
            .map_err(|m| self.invalid(m))?;
        let trailers = header_map(answer.trailers.as_ref(), &format!("{field}.trailers"))
            .map_err(|m| self.invalid(m))?;
        if grpc {
            let message = match (&answer.message, &answer.message_base64) {
                (_, Some(b64)) => decode_base64(b64)
                    .ok_or_else(|| self.invalid(format!("{field}.messageBase64: not base64")))?,
                (Some(text), None) => text.as_bytes().to_vec(),
                (None, None) => Vec::new(),
            };
            // As Envoy answers a unary call: the message alone on success, the close alone
            // (with the status) otherwise; metadata callbacks belong to streams.
            let status = answer.grpc_status.unwrap_or(0);
            let event = if status == 0 {
                GrpcEvent::Message(message)
            } else {
                GrpcEvent::Close {
                    status,
                    message: Vec::new(),
                }
            };
            return Ok(Answer::Grpc(vec![event]));
        }
        let mut with_status = HeaderMap::new();
        with_status.add(":status", answer.status.unwrap_or(200).to_string());
        for (k, v) in headers.iter() {
            with_status.add(k, v);
        }
        headers = with_status;
        Ok(Answer::Http(Some(CallResponse {
            headers,
            body: answer.body.unwrap_or_default().into_bytes(),
            trailers,
        })))
    }

    fn stream_info(&self) -> Result<HttpStream, ScenarioError> {
        let mut info = HttpStream::default();
        let defaults: [(&str, PropertyValue); 7] = [
            ("request.protocol", "HTTP/1.1".into()),
            ("source.address", "127.0.0.1:40000".into()),
            ("source.port", PropertyValue::Int(40000)),
            ("destination.address", "127.0.0.1:10000".into()),
            ("destination.port", PropertyValue::Int(10000)),
            ("connection.id", PropertyValue::UInt(1)),
            ("route_name", "default".into()),
        ];
        for (key, value) in defaults {
            info.properties.insert(key.to_string(), value);
        }
        for (key, value) in &self.properties {
            let value = match value {
                yaml_serde::Value::Number(n) if n.is_i64() => {
                    PropertyValue::Int(n.as_i64().unwrap_or_default())
                }
                other => scalar(other).map(PropertyValue::String).ok_or_else(|| {
                    self.invalid(format!("properties.{key}: expected a string or an integer"))
                })?,
            };
            info.properties.insert(key.clone(), value);
        }
        Ok(info)
    }

    fn request(
        &mut self,
        step: usize,
        spec: &RequestSpec,
        upstream: Option<&ResponseSpec>,
    ) -> Result<Outcome, ScenarioError> {
        let field = format!("steps[{}].request", step - 1);
        let mut headers = HeaderMap::new();
        headers.add(":method", spec.method.as_deref().unwrap_or("GET"));
        headers.add(":path", spec.path.as_deref().unwrap_or("/"));
        headers.add(
            ":authority",
            spec.authority.as_deref().unwrap_or("example.com"),
        );
        headers.add(":scheme", spec.scheme.as_deref().unwrap_or("http"));
        for (k, v) in header_map(spec.headers.as_ref(), &format!("{field}.headers"))
            .map_err(|m| self.invalid(m))?
            .iter()
        {
            headers.add(k, v);
        }
        let chunks = body_chunks(&spec.body, &spec.chunks);
        let trailers = header_map(spec.trailers.as_ref(), &format!("{field}.trailers"))
            .map_err(|m| self.invalid(m))?;
        let default_upstream = ResponseSpec::default();
        let upstream = upstream.unwrap_or(&default_upstream);
        let up_field = format!("steps[{}].upstream", step - 1);
        let mut response_headers = HeaderMap::new();
        response_headers.add(":status", upstream.status.unwrap_or(200).to_string());
        for (k, v) in header_map(upstream.headers.as_ref(), &format!("{up_field}.headers"))
            .map_err(|m| self.invalid(m))?
            .iter()
        {
            response_headers.add(k, v);
        }
        let response_chunks = body_chunks(&upstream.body, &upstream.chunks);
        let response_trailers =
            header_map(upstream.trailers.as_ref(), &format!("{up_field}.trailers"))
                .map_err(|m| self.invalid(m))?;

        let mut outcome = Outcome::default();
        let mut stream = Stream::new(self.chain.clone(), self.stream_info()?);
        let headers_only = chunks.is_empty() && trailers.is_empty();
        stream.request_headers(headers, headers_only);
        let last = chunks.len().saturating_sub(1);
        for (i, chunk) in chunks.into_iter().enumerate() {
            stream.request_data(chunk, i == last && trailers.is_empty());
        }
        if !trailers.is_empty() {
            stream.request_trailers(trailers);
        }
        let mut answered = false;
        loop {
            let steps = stream.take_steps();
            if steps.is_empty() {
                break;
            }
            for step in steps {
                match step {
                    Step::RequestHeaders {
                        headers,
                        end_of_stream,
                    } => {
                        outcome.upstream = Some(UpstreamSeen {
                            headers,
                            complete: end_of_stream,
                            ..UpstreamSeen::default()
                        });
                    }
                    Step::RequestData {
                        data,
                        end_of_stream,
                    } => {
                        if let Some(up) = &mut outcome.upstream {
                            up.body.extend_from_slice(&data);
                            up.complete |= end_of_stream;
                        }
                    }
                    Step::RequestTrailers { trailers } => {
                        if let Some(up) = &mut outcome.upstream {
                            up.trailers = trailers;
                            up.complete = true;
                        }
                    }
                    Step::ResponseHeaders { headers, .. } => {
                        outcome.client = Some(ClientSeen {
                            headers: Some(headers),
                            ..ClientSeen::default()
                        });
                    }
                    Step::ResponseData { data, .. } => {
                        outcome
                            .client
                            .get_or_insert_with(ClientSeen::default)
                            .body
                            .extend_from_slice(&data);
                    }
                    Step::ResponseTrailers { trailers } => {
                        outcome
                            .client
                            .get_or_insert_with(ClientSeen::default)
                            .trailers = trailers;
                    }
                    Step::ResetDownstream { reason } => {
                        outcome.client.get_or_insert_with(ClientSeen::default).reset = Some(reason);
                    }
                    Step::ResetUpstream => answered = true,
                    Step::HttpCall {
                        plugin,
                        token,
                        request,
                    } => {
                        let answer = self.answer(&request.upstream, request.timeout, false)?;
                        outcome.http_calls.push((request.upstream.clone(), request));
                        if let Answer::Http(response) = answer {
                            stream.http_call_response(plugin, token, response);
                        }
                    }
                    Step::GrpcCall {
                        plugin,
                        token,
                        request,
                    } => {
                        let answer = self.answer(&request.upstream, request.timeout, true)?;
                        let unary = request.message.is_some();
                        outcome.grpc_calls.push(request);
                        if let (true, Answer::Grpc(events)) = (unary, answer) {
                            for event in events {
                                stream.grpc_event(plugin, token, event);
                            }
                        }
                    }
                    Step::GrpcSend { .. } | Step::GrpcCancel { .. } | Step::GrpcClose { .. } => {}
                }
            }
            let upstream_done = outcome.upstream.as_ref().is_some_and(|u| u.complete);
            if upstream_done && !answered {
                answered = true;
                let only_headers = response_chunks.is_empty() && response_trailers.is_empty();
                stream.response_headers(response_headers.clone(), only_headers);
                let last = response_chunks.len().saturating_sub(1);
                for (i, chunk) in response_chunks.iter().enumerate() {
                    stream.response_data(chunk.clone(), i == last && response_trailers.is_empty());
                }
                if !response_trailers.is_empty() {
                    stream.response_trailers(response_trailers.clone());
                }
            }
        }
        outcome.stalled = !stream.is_complete();
        stream.finish();
        outcome
            .failures
            .extend(stream.failures().iter().map(ToString::to_string));
        drop(stream);
        self.settle(&mut outcome)?;
        Ok(outcome)
    }

    /// Delivers queue notifications and answers root-level callouts until nothing is pending,
    /// then collects logs and failures.
    fn settle(&mut self, outcome: &mut Outcome) -> Result<(), ScenarioError> {
        for _ in 0..1000 {
            let delivered = self.chain.pool().deliver_queue_events();
            let calls = self.chain.pool().take_root_calls();
            if delivered == 0 && calls.is_empty() {
                break;
            }
            for call in calls {
                match call {
                    RootCall::Http {
                        vm,
                        root_context,
                        token,
                        request,
                    } => {
                        let answer = self.answer(&request.upstream, request.timeout, false)?;
                        outcome.http_calls.push((request.upstream.clone(), request));
                        if let Answer::Http(response) = answer {
                            self.chain
                                .pool()
                                .http_call_response(vm, root_context, token, response);
                        }
                    }
                    RootCall::Grpc {
                        vm,
                        root_context,
                        token,
                        request,
                    } => {
                        let answer = self.answer(&request.upstream, request.timeout, true)?;
                        let unary = request.message.is_some();
                        outcome.grpc_calls.push(request);
                        if let (true, Answer::Grpc(events)) = (unary, answer) {
                            for event in events {
                                self.chain.pool().grpc_event(vm, root_context, token, event);
                            }
                        }
                    }
                    RootCall::GrpcSend { .. }
                    | RootCall::GrpcCancel { .. }
                    | RootCall::GrpcClose { .. } => {}
                }
            }
        }
        outcome.logs.extend(self.chain.pool().take_logs());
        outcome.failures.extend(
            self.chain
                .pool()
                .take_failures()
                .iter()
                .map(ToString::to_string),
        );
        outcome.failures.dedup();
        Ok(())
    }

    /// Moves the clock forward, firing every tick that falls due on the way, in time order.
    fn advance(&mut self, nanos: u64) -> Result<Outcome, ScenarioError> {
        let mut outcome = Outcome::default();
        let target = self.clock.monotonic_nanos() + nanos;
        loop {
            let now = self.clock.monotonic_nanos();
            match self.chain.pool().next_tick_nanos() {
                Some(due) if due <= target => {
                    self.clock.advance(due.saturating_sub(now));
                    self.chain.pool().fire_due_ticks();
                    self.settle(&mut outcome)?;
                }
                _ => {
                    self.clock.advance(target.saturating_sub(now));
                    break;
                }
            }
        }
        self.chain.pool().fire_due_ticks();
        self.settle(&mut outcome)?;
        Ok(outcome)
    }

    /// Compares a step's outcome with its expectations. `Err` for an expectation that is itself
    /// malformed.
    fn check(
        &self,
        step: usize,
        step_name: &str,
        expect: &Expect,
        outcome: &Outcome,
        out: &mut Vec<Mismatch>,
    ) -> Result<(), String> {
        let mut miss = |field: String, expected: String, actual: String| {
            out.push(Mismatch {
                step,
                step_name: step_name.to_string(),
                field,
                expected,
                actual,
            });
        };
        if let Some(upstream) = &expect.upstream {
            if upstream.as_str() == Some("none") {
                if let Some(seen) = &outcome.upstream {
                    miss(
                        "expect.upstream".into(),
                        "nothing reaches the upstream".into(),
                        format!("a request for {}", describe_request(&seen.headers)),
                    );
                }
            } else {
                let spec: UpstreamExpect = yaml_serde::from_value(upstream.clone())
                    .map_err(|e| format!("expect.upstream: {e}"))?;
                match &outcome.upstream {
                    None => miss(
                        "expect.upstream".into(),
                        "a request reaches the upstream".into(),
                        "nothing reached the upstream".into(),
                    ),
                    Some(seen) => {
                        let pseudo = [
                            (":method", &spec.method, "method"),
                            (":path", &spec.path, "path"),
                            (":authority", &spec.authority, "authority"),
                        ];
                        for (header, wanted, name) in pseudo {
                            if let Some(wanted) = wanted {
                                compare_text(
                                    &format!("expect.upstream.{name}"),
                                    wanted,
                                    seen.headers.get_str(header),
                                    &mut miss,
                                );
                            }
                        }
                        compare_message(
                            "expect.upstream",
                            (spec.headers.as_ref(), spec.trailers.as_ref()),
                            (spec.body.as_deref(), spec.body_contains.as_deref()),
                            (&seen.headers, &seen.trailers, &seen.body),
                            &mut miss,
                        )?;
                    }
                }
            }
        }
        if let Some(response) = &expect.response {
            match &outcome.client {
                None if outcome.stalled => miss(
                    "expect.response".into(),
                    "a response".into(),
                    "no response: the stream stalled (a plugin paused and never resumed)".into(),
                ),
                None => miss(
                    "expect.response".into(),
                    "a response".into(),
                    "no response".into(),
                ),
                Some(client) => {
                    match (&client.reset, response.reset.unwrap_or(false)) {
                        (Some(reason), false) => miss(
                            "expect.response".into(),
                            "a complete response".into(),
                            format!("the stream was reset: {reason}"),
                        ),
                        (None, true) => miss(
                            "expect.response.reset".into(),
                            "the stream is reset".into(),
                            "a complete response".into(),
                        ),
                        _ => {}
                    }
                    let headers = client.headers.clone().unwrap_or_default();
                    if let Some(status) = response.status {
                        compare_text(
                            "expect.response.status",
                            &status.to_string(),
                            headers.get_str(":status"),
                            &mut miss,
                        );
                    }
                    compare_message(
                        "expect.response",
                        (response.headers.as_ref(), response.trailers.as_ref()),
                        (response.body.as_deref(), response.body_contains.as_deref()),
                        (&headers, &client.trailers, &client.body),
                        &mut miss,
                    )?;
                }
            }
        }
        if let Some(calls) = &expect.http_calls {
            if calls.len() != outcome.http_calls.len() {
                let made: Vec<&str> = outcome.http_calls.iter().map(|(c, _)| c.as_str()).collect();
                miss(
                    "expect.httpCalls".into(),
                    format!("{} call(s)", calls.len()),
                    format!("{} call(s) {made:?}", made.len()),
                );
            }
            for (i, (wanted, (cluster, made))) in calls.iter().zip(&outcome.http_calls).enumerate()
            {
                let at = format!("expect.httpCalls[{i}]");
                compare_text(
                    &format!("{at}.cluster"),
                    &wanted.cluster,
                    Some(cluster.clone()),
                    &mut miss,
                );
                compare_headers(
                    &format!("{at}.headers"),
                    wanted.headers.as_ref(),
                    &made.headers,
                    &mut miss,
                )?;
                if let Some(body) = &wanted.body {
                    compare_text(
                        &format!("{at}.body"),
                        body,
                        Some(String::from_utf8_lossy(&made.body).into_owned()),
                        &mut miss,
                    );
                }
                if let Some(ms) = wanted.timeout_ms {
                    compare_text(
                        &format!("{at}.timeoutMs"),
                        &ms.to_string(),
                        Some(made.timeout.as_millis().to_string()),
                        &mut miss,
                    );
                }
            }
        }
        if let Some(calls) = &expect.grpc_calls {
            if calls.len() != outcome.grpc_calls.len() {
                miss(
                    "expect.grpcCalls".into(),
                    format!("{} call(s)", calls.len()),
                    format!("{} call(s)", outcome.grpc_calls.len()),
                );
            }
            for (i, (wanted, made)) in calls.iter().zip(&outcome.grpc_calls).enumerate() {
                let at = format!("expect.grpcCalls[{i}]");
                compare_text(
                    &format!("{at}.cluster"),
                    &wanted.cluster,
                    Some(made.upstream.clone()),
                    &mut miss,
                );
                if let Some(service) = &wanted.service {
                    compare_text(
                        &format!("{at}.service"),
                        service,
                        Some(made.service.clone()),
                        &mut miss,
                    );
                }
                if let Some(method) = &wanted.method {
                    compare_text(
                        &format!("{at}.method"),
                        method,
                        Some(made.method.clone()),
                        &mut miss,
                    );
                }
            }
        }
        check_logs(
            &expect.logs,
            &outcome.logs,
            step,
            step_name,
            "expect.logs",
            out,
        );
        let mut miss = |field: String, expected: String, actual: String| {
            out.push(Mismatch {
                step,
                step_name: step_name.to_string(),
                field,
                expected,
                actual,
            });
        };
        if let Some(level) = &expect.no_logs_at_or_above {
            let level = LogLevel::parse(level)
                .ok_or_else(|| format!("expect.noLogsAtOrAbove: unknown level `{level}`"))?;
            for log in outcome.logs.iter().filter(|l| l.level >= level) {
                miss(
                    "expect.noLogsAtOrAbove".into(),
                    format!("no log at {level} or above"),
                    format!("[{}] {}", log.level, log.message),
                );
            }
        }
        for (name, wanted) in &expect.metrics {
            let actual = self.engine.metrics().by_name(name).map(|m| m.value());
            compare_text(
                &format!("expect.metrics.{name}"),
                &wanted.to_string(),
                actual.map(|v| v.to_string()),
                &mut miss,
            );
        }
        for (key, wanted) in &expect.shared_data {
            let actual = self
                .engine
                .shared_data()
                .get(&self.vm_id, key.as_bytes())
                .map(|(v, _)| String::from_utf8_lossy(&v).into_owned());
            match wanted {
                Some(wanted) => compare_text(
                    &format!("expect.sharedData.{key}"),
                    wanted,
                    actual,
                    &mut miss,
                ),
                None => {
                    if let Some(actual) = actual {
                        miss(
                            format!("expect.sharedData.{key}"),
                            "absent".into(),
                            format!("{actual:?}"),
                        );
                    }
                }
            }
        }
        match (expect.plugin_failure, outcome.failures.is_empty()) {
            (Some(true), true) => miss(
                "expect.pluginFailure".into(),
                "a plugin failure".into(),
                "no plugin failed".into(),
            ),
            (None | Some(false), false) => miss(
                "expect.pluginFailure".into(),
                "no plugin failure".into(),
                outcome.failures.join("\n"),
            ),
            _ => {}
        }
        Ok(())
    }
}

fn describe_request(headers: &HeaderMap) -> String {
    format!(
        "{} {}",
        headers.get_str(":method").unwrap_or_default(),
        headers.get_str(":path").unwrap_or_default()
    )
}

fn compare_text(
    field: &str,
    expected: &str,
    actual: Option<String>,
    miss: &mut impl FnMut(String, String, String),
) {
    match actual {
        Some(actual) if actual == expected => {}
        Some(actual) => miss(
            field.to_string(),
            format!("{expected:?}"),
            format!("{actual:?}"),
        ),
        None => miss(field.to_string(), format!("{expected:?}"), "absent".into()),
    }
}

fn compare_headers(
    field: &str,
    expected: Option<&yaml_serde::Value>,
    actual: &HeaderMap,
    miss: &mut impl FnMut(String, String, String),
) -> Result<(), String> {
    let Some(expected) = expected else {
        return Ok(());
    };
    for (name, wanted) in header_pairs(expected, field)? {
        let values: Vec<String> = actual
            .get_all(&name)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .collect();
        let at = format!("{field}.{name}");
        match wanted {
            None if !values.is_empty() => miss(at, "absent".into(), format!("{values:?}")),
            None => {}
            Some(wanted) if values.contains(&wanted) => {}
            Some(wanted) if values.is_empty() => miss(at, format!("{wanted:?}"), "absent".into()),
            Some(wanted) => miss(
                at,
                format!("{wanted:?}"),
                values
                    .iter()
                    .map(|v| format!("{v:?}"))
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
        }
    }
    Ok(())
}

/// Headers, trailers and body of a request or response against their expectations.
fn compare_message(
    field: &str,
    (headers, trailers): (Option<&yaml_serde::Value>, Option<&yaml_serde::Value>),
    (body, body_contains): (Option<&str>, Option<&str>),
    (seen_headers, seen_trailers, seen_body): (&HeaderMap, &HeaderMap, &[u8]),
    miss: &mut impl FnMut(String, String, String),
) -> Result<(), String> {
    compare_headers(&format!("{field}.headers"), headers, seen_headers, miss)?;
    compare_headers(&format!("{field}.trailers"), trailers, seen_trailers, miss)?;
    compare_body(field, body, body_contains, seen_body, miss);
    Ok(())
}

fn compare_body(
    field: &str,
    exact: Option<&str>,
    contains: Option<&str>,
    actual: &[u8],
    miss: &mut impl FnMut(String, String, String),
) {
    let text = String::from_utf8_lossy(actual);
    if let Some(exact) = exact
        && text != exact
    {
        miss(
            format!("{field}.body"),
            format!("{exact:?}"),
            format!("{text:?}"),
        );
    }
    if let Some(part) = contains
        && !text.contains(part)
    {
        miss(
            format!("{field}.bodyContains"),
            format!("a body containing {part:?}"),
            format!("{text:?}"),
        );
    }
}

fn check_logs(
    expected: &[LogExpect],
    logs: &[LogRecord],
    step: usize,
    step_name: &str,
    field: &str,
    out: &mut Vec<Mismatch>,
) {
    for (i, wanted) in expected.iter().enumerate() {
        let level = wanted.level.as_deref().map(|l| LogLevel::parse(l).ok_or(l));
        if let Some(Err(bad)) = level {
            out.push(Mismatch {
                step,
                step_name: step_name.to_string(),
                field: format!("{field}[{i}].level"),
                expected: "one of trace, debug, info, warn, error, critical".into(),
                actual: bad.to_string(),
            });
            continue;
        }
        let level = level.and_then(Result::ok);
        let found = logs.iter().any(|log| {
            level.is_none_or(|l| l == log.level)
                && wanted.plugin.as_ref().is_none_or(|p| *p == log.plugin)
                && log.message.contains(&wanted.contains)
        });
        if !found {
            let seen: Vec<String> = logs
                .iter()
                .map(|l| format!("[{}] {}", l.level, l.message))
                .collect();
            out.push(Mismatch {
                step,
                step_name: step_name.to_string(),
                field: format!("{field}[{i}]"),
                expected: format!(
                    "a {} log containing {:?}",
                    wanted.level.as_deref().unwrap_or("any-level"),
                    wanted.contains
                ),
                actual: if seen.is_empty() {
                    "no logs".into()
                } else {
                    seen.join(" | ")
                },
            });
        }
    }
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
