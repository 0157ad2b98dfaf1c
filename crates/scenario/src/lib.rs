//! The scenario runner behind `sluice test`: reads a scenario file (docs/scenarios.md), drives its
//! steps through a [`Backend`] (the chain engine in process, or a live proxy), and compares what
//! the backend observed with what the file expects. It reads files (the scenario and the plugins
//! it names) and YAML; it must never open a socket: a live proxy is a `Backend` its caller brings.

#![forbid(unsafe_code)]

mod check;
mod file;
mod in_process;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sluice_abi::HeaderMap;
use sluice_host::LogRecord;

pub use file::{
    Action, CannedAnswer, ConnectionEvent, Exchange, Scenario, ScenarioLimits, ScenarioPlugin,
    ScenarioStep, ScriptedResponse, next_answer,
};
pub use in_process::{InProcess, SCENARIO_EPOCH_NANOS};

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
    /// What the backend could not check, e.g. the steps after an `advance` on a live proxy.
    pub not_checked: Vec<String>,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.mismatches.is_empty()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.passed() {
            write!(
                f,
                "PASS {} ({}, {} steps)",
                self.name, self.file, self.steps
            )?;
            for note in &self.not_checked {
                write!(f, "\n  not checked: {note}")?;
            }
            return Ok(());
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

/// Where a scenario's steps run. [`InProcess`] runs them on the chain engine with a virtual
/// clock; a live proxy can run them through real sockets, observing less.
pub trait Backend {
    /// What this backend can observe; expectations on the rest are not checked.
    fn observes(&self) -> Observes;
    /// Starts the scenario's plugins.
    ///
    /// # Errors
    /// When the plugins cannot be loaded at all (a missing file, say).
    fn start(&mut self, scenario: &Scenario) -> Result<Start, ScenarioError>;
    /// Sends one request and collects what happened.
    ///
    /// # Errors
    /// When the step cannot be run (a callout with no answers in the file, say).
    fn request(&mut self, exchange: &Exchange) -> Result<Observed, ScenarioError>;
    /// Runs one TCP connection through the plugins as network filters; called only when
    /// [`Observes::connections`] is set.
    ///
    /// # Errors
    /// As [`Backend::request`].
    fn connection(&mut self, events: &[ConnectionEvent]) -> Result<Observed, ScenarioError> {
        let _ = events;
        Ok(Observed::default())
    }
    /// Moves time forward; called with a non-zero duration only when [`Observes::time`] is set.
    ///
    /// # Errors
    /// As [`Backend::request`].
    fn advance(&mut self, by: Duration) -> Result<Observed, ScenarioError>;
    /// A plugin-defined metric's value (a histogram's count).
    fn metric(&self, name: &str) -> Option<i64>;
    /// The first plugin's shared data under `key`; read only when [`Observes::shared_data`].
    fn shared_data(&self, key: &str) -> Option<String>;
}

#[derive(Clone, Copy, Debug)]
pub struct Observes {
    /// The plugins' log lines, per step.
    pub logs: bool,
    pub shared_data: bool,
    /// Whether time can be moved at will (`advance` steps).
    pub time: bool,
    /// Whether it runs `connection` steps.
    pub connections: bool,
}

/// How the plugins started.
pub enum Start {
    Running {
        logs: Vec<LogRecord>,
    },
    /// A plugin refused to start (its configuration, say).
    Refused {
        plugin: String,
        message: String,
        logs: Vec<LogRecord>,
    },
}

/// What one step did, as far as the backend saw it.
#[derive(Default)]
pub struct Observed {
    /// What reached the upstream, if anything did.
    pub upstream: Option<UpstreamSeen>,
    /// What reached the client, if anything did.
    pub client: Option<ClientSeen>,
    pub http_calls: Vec<SeenHttpCall>,
    pub grpc_calls: Vec<SeenGrpcCall>,
    pub redis_calls: Vec<SeenRedisCall>,
    pub logs: Vec<LogRecord>,
    pub failures: Vec<String>,
    /// The stream never completed: a plugin paused and never resumed.
    pub stalled: bool,
    /// What a `connection` step did.
    pub connection: Option<ConnectionSeen>,
}

/// What one scripted TCP connection did.
#[derive(Default)]
pub struct ConnectionSeen {
    /// The bytes that reached the upstream; `None` if it was never connected.
    pub upstream: Option<Vec<u8>>,
    pub upstream_ended: bool,
    pub client: Vec<u8>,
    pub client_ended: bool,
    /// `proxy`, `client`, `ends` (both sides ended) or `open` (at the end of the step).
    pub closed_by: String,
}

#[derive(Default)]
pub struct UpstreamSeen {
    /// With the pseudo-headers `:method`, `:path` and `:authority`.
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    pub trailers: HeaderMap,
    pub complete: bool,
}

#[derive(Default)]
pub struct ClientSeen {
    /// With `:status`; `None` when the stream was reset before a response head.
    pub headers: Option<HeaderMap>,
    pub body: Vec<u8>,
    pub trailers: HeaderMap,
    /// Why the stream was reset, if it was.
    pub reset: Option<String>,
}

pub struct SeenHttpCall {
    pub cluster: String,
    /// With the pseudo-headers.
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    /// The call's timeout, when the backend can see it.
    pub timeout: Option<Duration>,
}

pub struct SeenRedisCall {
    pub cluster: String,
    /// The command's arguments (`GET`, the key, ...), or the raw query when it is not a command.
    pub command: Vec<String>,
}

pub struct SeenGrpcCall {
    pub cluster: String,
    pub service: String,
    pub method: String,
}

/// Runs one scenario file in process (`sluice test`).
///
/// # Errors
/// A [`ScenarioError`] when the file cannot be read or parsed, names a plugin that cannot be
/// loaded, or a plugin fails to start when the file does not expect it to.
pub fn run_file(path: &Path, cache_dir: Option<PathBuf>) -> Result<Report, ScenarioError> {
    let scenario = Scenario::read(path)?;
    let mut backend = InProcess::new(cache_dir, &scenario.file)?;
    run(&scenario, &mut backend)
}

/// Runs a scenario's steps on `backend` and compares each with its expectations.
///
/// # Errors
/// As [`run_file`].
pub fn run(scenario: &Scenario, backend: &mut dyn Backend) -> Result<Report, ScenarioError> {
    let mut report = Report {
        file: scenario.file.clone(),
        name: scenario.name.clone(),
        steps: 0,
        mismatches: Vec::new(),
        not_checked: Vec::new(),
    };
    let observes = backend.observes();
    let start_logs = |logs: &[LogRecord], out: &mut Vec<Mismatch>| {
        if observes.logs {
            check::check_logs(&scenario.start.logs, logs, 0, "", "expect.logs", out);
        }
    };
    match backend.start(scenario)? {
        Start::Refused { logs, .. } if scenario.expects_refusal() => {
            start_logs(&logs, &mut report.mismatches);
            return Ok(report);
        }
        Start::Refused {
            plugin,
            message,
            logs,
        } => {
            let index = scenario
                .plugins
                .iter()
                .position(|p| p.name == plugin)
                .unwrap_or(0);
            let logs: Vec<String> = logs
                .iter()
                .map(|l| format!("\n    [{}] {}", l.level, l.message))
                .collect();
            return Err(ScenarioError::Plugin {
                file: scenario.file.clone(),
                index,
                plugin,
                message: format!("{message}{}", logs.concat()),
            });
        }
        Start::Running { logs } => {
            if scenario.expects_refusal() {
                report.mismatches.push(Mismatch {
                    step: 0,
                    step_name: String::new(),
                    field: "expect.configured".into(),
                    expected: "false (a plugin rejects its configuration)".into(),
                    actual: "every plugin started".into(),
                });
            }
            start_logs(&logs, &mut report.mismatches);
        }
    }
    for (index, step) in scenario.steps.iter().enumerate() {
        let number = index + 1;
        let observed = match &step.action {
            Action::Request(exchange) => backend.request(exchange)?,
            // Moving time by nothing needs no control over the clock.
            Action::Advance(by) if observes.time || by.is_zero() => backend.advance(*by)?,
            Action::Connection(events) if observes.connections => backend.connection(events)?,
            Action::Connection(_) => {
                report
                    .not_checked
                    .push(format!("step {number} \"{}\": connections", step.name));
                continue;
            }
            Action::Advance(_) => {
                report.not_checked.push(format!(
                    "steps {number}-{}: from \"{}\" on, time would have to be moved",
                    scenario.steps.len(),
                    step.name
                ));
                break;
            }
        };
        report.steps = number;
        check::check(
            number,
            &step.name,
            &step.expect,
            &observed,
            backend,
            &mut report.mismatches,
        )
        .map_err(|m| ScenarioError::Invalid {
            file: scenario.file.clone(),
            message: format!("steps[{index}].{m}"),
        })?;
    }
    Ok(report)
}
