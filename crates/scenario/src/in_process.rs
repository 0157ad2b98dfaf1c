//! The backend behind `sluice test`: the scenario's plugins on the chain engine in this process,
//! a virtual clock, and the upstream and callout clusters answered straight from the file.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use std::time::Duration;

use sluice_abi::{LogLevel, PropertyValue};
use sluice_config::plugin_configuration_bytes;
use sluice_host::{
    CallAnswer, CallOp, CallResponse, Clock, Engine, EngineOptions, GrpcCallRequest, GrpcEvent,
    HttpCallRequest, HttpStream, Limits, RedisCallRequest, VmConfig,
};

use crate::file::{CannedAnswer, ConnectionEvent, Exchange, Scenario, next_answer};
use crate::{
    Backend, ClientSeen, ConnectionSeen, Observed, Observes, ScenarioError, SeenGrpcCall,
    SeenHttpCall, SeenRedisCall, Start, UpstreamSeen,
};
use sluice_filter::{
    Chain, Connection, ConnectionStep, DEFAULT_BUFFER_LIMIT, PluginSpec, Step, Stream, VmPool,
};

/// The Unix time every scenario starts at, so that time-dependent plugins behave the same on
/// every run (2026-01-01T00:00:00Z).
pub const SCENARIO_EPOCH_NANOS: u64 = 1_767_225_600_000_000_000;

pub struct InProcess {
    engine: Engine,
    clock: Clock,
    file: String,
    running: Option<Running>,
}

/// The kind of call a canned answer must fit.
#[derive(Clone, Copy)]
enum CallKind {
    Http,
    Grpc,
    Redis,
}

struct Running {
    chain: Rc<Chain>,
    callouts: BTreeMap<String, VecDeque<CannedAnswer>>,
    properties: BTreeMap<String, PropertyValue>,
    /// The first plugin's VM id: the one `sharedData` expectations read.
    vm_id: String,
}

impl InProcess {
    /// # Errors
    /// When the engine cannot be created (its compiled-code cache, say).
    pub fn new(cache_dir: Option<PathBuf>, file: &str) -> Result<InProcess, ScenarioError> {
        let engine =
            Engine::new(EngineOptions { cache_dir }).map_err(|e| ScenarioError::Invalid {
                file: file.to_string(),
                message: e.to_string(),
            })?;
        Ok(InProcess {
            engine,
            clock: Clock::manual(SCENARIO_EPOCH_NANOS),
            file: file.to_string(),
            running: None,
        })
    }

    fn invalid(&self, message: String) -> ScenarioError {
        ScenarioError::Invalid {
            file: self.file.clone(),
            message,
        }
    }

    fn running(&mut self) -> Result<&mut Running, ScenarioError> {
        let file = self.file.clone();
        self.running.as_mut().ok_or(ScenarioError::Invalid {
            file,
            message: "the plugins did not start".into(),
        })
    }

    /// The next canned answer for a call to `cluster`. A timeout moves the clock by the call's
    /// timeout first. `None`: the call gets no answer (a gRPC stream).
    fn answer(
        &mut self,
        cluster: &str,
        timeout: Duration,
        kind: CallKind,
    ) -> Result<CannedAnswer, ScenarioError> {
        let answer = self
            .running()?
            .callouts
            .get_mut(cluster)
            .and_then(next_answer)
            .ok_or_else(|| self.invalid(format!("callouts: no answers for cluster `{cluster}`")))?;
        if matches!(answer, CannedAnswer::Timeout) {
            self.clock.advance(timeout.as_nanos() as u64);
        }
        match (answer, kind) {
            (CannedAnswer::Grpc { .. }, CallKind::Http) => Err(self.invalid(format!(
                "callouts.{cluster}: a gRPC answer (grpcStatus, message) to an HTTP call"
            ))),
            (CannedAnswer::Http(response), CallKind::Grpc) => Ok(CannedAnswer::Grpc {
                status: 0,
                message: response.body,
            }),
            (CannedAnswer::Redis(_), CallKind::Http | CallKind::Grpc) => Err(self.invalid(
                format!("callouts.{cluster}: a Redis answer (redis) to an HTTP or gRPC call"),
            )),
            (CannedAnswer::Http(_) | CannedAnswer::Grpc { .. }, CallKind::Redis) => {
                Err(self.invalid(format!(
                    "callouts.{cluster}: an HTTP or gRPC answer to a Redis call (answer with `redis`)"
                )))
            }
            (answer, _) => Ok(answer),
        }
    }

    /// A canned answer as the plugin receives it: an HTTP response (none for a failed call), or
    /// gRPC events as Envoy delivers a unary call's: the message alone on success, the close
    /// alone (with the status) otherwise.
    /// What the scenario answers a call with, from its canned answers: the one place calls are
    /// carried out, for streams and root contexts alike. A gRPC stream's messages go nowhere (the
    /// canned answer is for unary calls); acting on a call needs no answer.
    fn carry_out(
        &mut self,
        observed: &mut Observed,
        op: &CallOp,
    ) -> Result<Vec<CallAnswer>, ScenarioError> {
        Ok(match op {
            CallOp::Http(request) => {
                let answer = self.answer(&request.upstream, request.timeout, CallKind::Http)?;
                Self::record_http(observed, request);
                vec![CallAnswer::Http(Self::http_response(answer))]
            }
            CallOp::Grpc(request) => {
                let answer = self.answer(&request.upstream, request.timeout, CallKind::Grpc)?;
                Self::record_grpc(observed, request);
                if request.message.is_some() {
                    Self::grpc_events(answer)
                        .into_iter()
                        .map(CallAnswer::Grpc)
                        .collect()
                } else {
                    Vec::new()
                }
            }
            CallOp::Redis(request) => {
                let answer =
                    self.answer(&request.cluster, request.settings.timeout, CallKind::Redis)?;
                Self::record_redis(observed, request);
                let reply = match answer {
                    CannedAnswer::Redis(reply) => Some(reply),
                    _ => None,
                };
                vec![CallAnswer::Redis(reply)]
            }
            CallOp::GrpcSend { .. } | CallOp::GrpcClose | CallOp::GrpcCancel => Vec::new(),
        })
    }

    fn http_response(answer: CannedAnswer) -> Option<CallResponse> {
        match answer {
            CannedAnswer::Http(response) => Some(response),
            _ => None,
        }
    }

    fn grpc_events(answer: CannedAnswer) -> Vec<GrpcEvent> {
        vec![match answer {
            CannedAnswer::Grpc { status: 0, message } => GrpcEvent::Message(message),
            CannedAnswer::Grpc { status, .. } => GrpcEvent::Close {
                status,
                message: Vec::new(),
            },
            // As Envoy reports a timed-out call.
            CannedAnswer::Timeout => GrpcEvent::Close {
                status: 14,
                message: sluice_host::GRPC_TIMEOUT_MESSAGE.as_bytes().to_vec(),
            },
            CannedAnswer::Fail | CannedAnswer::Http(_) | CannedAnswer::Redis(_) => {
                GrpcEvent::Close {
                    status: 14,
                    message: Vec::new(),
                }
            }
        }]
    }

    fn stream_info(properties: &BTreeMap<String, PropertyValue>) -> HttpStream {
        let mut info = HttpStream::default();
        info.set_route("default", "default", "upstream");
        let defaults: [(&str, PropertyValue); 6] = [
            ("request.protocol", "HTTP/1.1".into()),
            ("source.address", "127.0.0.1:40000".into()),
            ("source.port", PropertyValue::Int(40000)),
            ("destination.address", "127.0.0.1:10000".into()),
            ("destination.port", PropertyValue::Int(10000)),
            ("connection.id", PropertyValue::UInt(1)),
        ];
        for (key, value) in defaults {
            info.properties.insert(key.to_string(), value);
        }
        for (key, value) in properties {
            info.properties.insert(key.clone(), value.clone());
        }
        info
    }

    /// A connection's properties: the request defaults without the request and the route.
    fn connection_info(properties: &BTreeMap<String, PropertyValue>) -> HttpStream {
        let mut info = Self::stream_info(properties);
        info.route = None;
        info.properties.remove("request.protocol");
        info
    }

    /// Carries out a connection's steps until it has none: the upstream connects at once,
    /// bytes are recorded on the side they reach, calls are answered from the file.
    fn drain_connection(
        &mut self,
        connection: &mut Connection,
        seen: &mut ConnectionSeen,
        observed: &mut Observed,
    ) -> Result<(), ScenarioError> {
        loop {
            let steps = connection.take_steps();
            if steps.is_empty() {
                return Ok(());
            }
            for step in steps {
                match step {
                    ConnectionStep::Connect => {
                        seen.upstream = Some(Vec::new());
                        connection.upstream_connected();
                    }
                    ConnectionStep::ToUpstream {
                        data,
                        end_of_stream,
                    } => {
                        seen.upstream
                            .get_or_insert_with(Vec::new)
                            .extend_from_slice(&data);
                        seen.upstream_ended |= end_of_stream;
                    }
                    ConnectionStep::ToDownstream {
                        data,
                        end_of_stream,
                    } => {
                        seen.client.extend_from_slice(&data);
                        seen.client_ended |= end_of_stream;
                    }
                    // Seen through `is_closing`.
                    ConnectionStep::Close { .. } => {}
                    ConnectionStep::Call { plugin, token, op } => {
                        for answer in self.carry_out(observed, &op)? {
                            connection.call_answer(plugin, token, answer);
                        }
                    }
                }
            }
        }
    }

    fn record_http(observed: &mut Observed, request: &HttpCallRequest) {
        observed.http_calls.push(SeenHttpCall {
            cluster: request.upstream.clone(),
            headers: request.headers.clone(),
            body: request.body.clone(),
            timeout: Some(request.timeout),
        });
    }

    fn record_redis(observed: &mut Observed, request: &RedisCallRequest) {
        let lossy = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
        let command = match sluice_abi::resp::command_args(&request.query) {
            Some(args) => args.into_iter().map(lossy).collect(),
            None => vec![lossy(&request.query)],
        };
        observed.redis_calls.push(SeenRedisCall {
            cluster: request.cluster.clone(),
            command,
        });
    }

    fn record_grpc(observed: &mut Observed, request: &GrpcCallRequest) {
        observed.grpc_calls.push(SeenGrpcCall {
            cluster: request.upstream.clone(),
            service: request.service.clone(),
            method: request.method.clone(),
        });
    }

    /// Delivers queue notifications and answers root-level callouts until nothing is pending,
    /// then collects logs and failures.
    fn settle(&mut self, observed: &mut Observed) -> Result<(), ScenarioError> {
        let chain = self.running()?.chain.clone();
        let pool = chain.pool();
        for _ in 0..1000 {
            let delivered = pool.deliver_queue_events();
            let calls = pool.take_root_calls();
            if delivered == 0 && calls.is_empty() {
                break;
            }
            for call in calls {
                for answer in self.carry_out(observed, &call.op)? {
                    pool.call_answer(call.vm, call.root_context, call.token, answer);
                }
            }
        }
        observed.logs.extend(pool.take_logs());
        observed
            .failures
            .extend(pool.take_failures().iter().map(ToString::to_string));
        observed.failures.dedup();
        Ok(())
    }
}

impl Backend for InProcess {
    fn observes(&self) -> Observes {
        Observes {
            connections: true,
            logs: true,
            shared_data: true,
            time: true,
        }
    }

    fn start(&mut self, scenario: &Scenario) -> Result<Start, ScenarioError> {
        let limits = Limits {
            memory_bytes: scenario
                .limits
                .memory_bytes
                .unwrap_or(Limits::default().memory_bytes),
            call_timeout: scenario
                .limits
                .call_timeout
                .unwrap_or(Limits::default().call_timeout),
            ..Limits::default()
        };
        let clusters: Arc<Vec<String>> = Arc::new(scenario.callouts.keys().cloned().collect());
        let mut specs = Vec::new();
        for (index, plugin) in scenario.plugins.iter().enumerate() {
            let plugin_error = |message: String| ScenarioError::Plugin {
                file: scenario.file.clone(),
                index,
                plugin: plugin.name.clone(),
                message,
            };
            let code = self
                .engine
                .load_file(&plugin.wasm)
                .map_err(|e| plugin_error(format!("{}: {e}", plugin.wasm.display())))?;
            let env = plugin
                .vm_config
                .environment(|name| std::env::var(name).ok())
                .map_err(|e| plugin_error(e.to_string()))?;
            let clusters = clusters.clone();
            let vm = VmConfig {
                vm_id: plugin.vm_id.clone(),
                env,
                limits: limits.clone(),
                log_level: Arc::new(AtomicU32::new(LogLevel::Trace as u32)),
                capture_logs: true,
                clock: self.clock.clone(),
                clusters: Arc::new(move |name| clusters.iter().any(|c| c == name)),
                ..VmConfig::new(plugin.name.clone())
            };
            specs.push(PluginSpec {
                name: plugin.name.clone(),
                root_id: plugin.root_id.clone(),
                code,
                plugin_configuration: plugin_configuration_bytes(plugin.plugin_config.as_ref()),
                vm,
                fail_strategy: plugin.fail_strategy,
                headers_stop_iteration: plugin.headers_stop_iteration,
            });
        }
        let buffer_limit = scenario.limits.buffer_bytes.unwrap_or(DEFAULT_BUFFER_LIMIT);
        let pool = VmPool::new(&self.engine, self.clock.clone());
        match pool.chain(specs, buffer_limit) {
            Ok(chain) => {
                let logs = pool.take_logs();
                self.running = Some(Running {
                    chain: Rc::new(chain),
                    callouts: scenario
                        .callouts
                        .iter()
                        .map(|(cluster, answers)| {
                            (cluster.clone(), answers.iter().cloned().collect())
                        })
                        .collect(),
                    properties: scenario.properties.clone(),
                    vm_id: scenario.plugins[0].vm_id.clone(),
                });
                Ok(Start::Running { logs })
            }
            Err(error) => Ok(Start::Refused {
                plugin: error.plugin,
                message: error.source.to_string(),
                logs: error.logs,
            }),
        }
    }

    fn request(&mut self, exchange: &Exchange) -> Result<Observed, ScenarioError> {
        let running = self.running()?;
        let chain = running.chain.clone();
        let info = Self::stream_info(&running.properties);
        let response = &exchange.response;
        let mut observed = Observed::default();
        let mut stream = Stream::new(chain, info);
        let trailers = &exchange.trailers;
        let headers_only = exchange.chunks.is_empty() && trailers.is_empty();
        stream.request_headers(exchange.headers.clone(), headers_only);
        let last = exchange.chunks.len().saturating_sub(1);
        for (i, chunk) in exchange.chunks.iter().enumerate() {
            stream.request_data(chunk.clone(), i == last && trailers.is_empty());
        }
        if !trailers.is_empty() {
            stream.request_trailers(trailers.clone());
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
                        observed.upstream = Some(UpstreamSeen {
                            headers,
                            complete: end_of_stream,
                            ..UpstreamSeen::default()
                        });
                    }
                    Step::RequestData {
                        data,
                        end_of_stream,
                    } => {
                        if let Some(up) = &mut observed.upstream {
                            up.body.extend_from_slice(&data);
                            up.complete |= end_of_stream;
                        }
                    }
                    Step::RequestTrailers { trailers } => {
                        if let Some(up) = &mut observed.upstream {
                            up.trailers = trailers;
                            up.complete = true;
                        }
                    }
                    Step::ResponseHeaders { headers, .. } => {
                        observed.client = Some(ClientSeen {
                            headers: Some(headers),
                            ..ClientSeen::default()
                        });
                    }
                    Step::ResponseData { data, .. } => {
                        observed
                            .client
                            .get_or_insert_with(ClientSeen::default)
                            .body
                            .extend_from_slice(&data);
                    }
                    Step::ResponseTrailers { trailers } => {
                        observed
                            .client
                            .get_or_insert_with(ClientSeen::default)
                            .trailers = trailers;
                    }
                    Step::ResetDownstream { reason } => {
                        observed
                            .client
                            .get_or_insert_with(ClientSeen::default)
                            .reset = Some(reason);
                    }
                    Step::ResetUpstream => answered = true,
                    Step::Call { plugin, token, op } => {
                        for answer in self.carry_out(&mut observed, &op)? {
                            stream.call_answer(plugin, token, answer);
                        }
                    }
                }
            }
            let upstream_done = observed.upstream.as_ref().is_some_and(|u| u.complete);
            if upstream_done && !answered {
                answered = true;
                let only_headers = response.chunks.is_empty() && response.trailers.is_empty();
                stream.response_headers(response.headers.clone(), only_headers);
                let last = response.chunks.len().saturating_sub(1);
                for (i, chunk) in response.chunks.iter().enumerate() {
                    stream.response_data(chunk.clone(), i == last && response.trailers.is_empty());
                }
                if !response.trailers.is_empty() {
                    stream.response_trailers(response.trailers.clone());
                }
            }
        }
        observed.stalled = !stream.is_complete();
        stream.finish();
        observed
            .failures
            .extend(stream.failures().iter().map(ToString::to_string));
        drop(stream);
        self.settle(&mut observed)?;
        Ok(observed)
    }

    /// Runs a scripted connection. Client events wait until the upstream is connected, as the
    /// proxy reads a client only then; the connection closes as the proxy closes it: when a
    /// plugin closes it, when both sides have ended, or (still open at the end of the script)
    /// as the client resets it.
    fn connection(&mut self, events: &[ConnectionEvent]) -> Result<Observed, ScenarioError> {
        let running = self.running()?;
        let chain = running.chain.clone();
        let info = Self::connection_info(&running.properties);
        let mut observed = Observed::default();
        let mut seen = ConnectionSeen::default();
        let mut connection = Connection::new(chain, info);
        let mut waiting: VecDeque<&ConnectionEvent> = VecDeque::new();
        let mut events = events.iter();
        let mut last_was_client_end = false;
        let closed_by = loop {
            self.drain_connection(&mut connection, &mut seen, &mut observed)?;
            if connection.is_closing() {
                connection.downstream_closed(sluice_abi::PeerType::Local);
                break "proxy";
            }
            if connection.both_ends_sent() {
                connection.downstream_closed(if last_was_client_end {
                    sluice_abi::PeerType::Remote
                } else {
                    sluice_abi::PeerType::Local
                });
                break "ends";
            }
            let connected = seen.upstream.is_some();
            let event = match waiting.front() {
                Some(_) if connected => waiting.pop_front(),
                _ => events.next(),
            };
            let Some(event) = event else {
                connection.downstream_closed(sluice_abi::PeerType::Remote);
                break "open";
            };
            match event {
                ConnectionEvent::Client(_) | ConnectionEvent::ClientEnd if !connected => {
                    waiting.push_back(event);
                }
                ConnectionEvent::Client(bytes) => {
                    last_was_client_end = false;
                    connection.downstream_data(bytes, false);
                }
                ConnectionEvent::ClientEnd => {
                    last_was_client_end = true;
                    connection.downstream_data(&[], true);
                }
                ConnectionEvent::Upstream(bytes) => {
                    last_was_client_end = false;
                    connection.upstream_data(bytes, false);
                }
                ConnectionEvent::UpstreamEnd => {
                    last_was_client_end = false;
                    connection.upstream_data(&[], true);
                }
                ConnectionEvent::ClientReset => {
                    connection.downstream_closed(sluice_abi::PeerType::Remote);
                    break "client";
                }
                ConnectionEvent::Advance(by) => {
                    let ticked = self.advance(*by)?;
                    observed.logs.extend(ticked.logs);
                    observed.failures.extend(ticked.failures);
                    connection.apply_root_effects();
                }
            }
        };
        seen.closed_by = closed_by.to_string();
        observed
            .failures
            .extend(connection.failures().iter().map(ToString::to_string));
        drop(connection);
        self.settle(&mut observed)?;
        observed.failures.dedup();
        observed.connection = Some(seen);
        Ok(observed)
    }

    /// Moves the clock forward, firing every tick that falls due on the way, in time order.
    fn advance(&mut self, by: Duration) -> Result<Observed, ScenarioError> {
        let pool = self.running()?.chain.clone();
        let pool = pool.pool();
        let mut observed = Observed::default();
        let target = self.clock.monotonic_nanos() + by.as_nanos() as u64;
        loop {
            let now = self.clock.monotonic_nanos();
            match pool.next_tick_nanos() {
                Some(due) if due <= target => {
                    self.clock.advance(due.saturating_sub(now));
                    pool.fire_due_ticks();
                    self.settle(&mut observed)?;
                }
                _ => {
                    self.clock.advance(target.saturating_sub(now));
                    break;
                }
            }
        }
        pool.fire_due_ticks();
        self.settle(&mut observed)?;
        Ok(observed)
    }

    fn metric(&self, name: &str) -> Option<i64> {
        self.engine.metrics().by_name(name).map(|m| m.value())
    }

    fn shared_data(&self, key: &str) -> Option<String> {
        let vm_id = &self.running.as_ref()?.vm_id;
        self.engine
            .shared_data()
            .get(vm_id, key.as_bytes())
            .map(|(v, _)| String::from_utf8_lossy(&v).into_owned())
    }
}
