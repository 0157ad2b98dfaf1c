//! rate-limit: a fixed-window request limit kept in shared data, with metrics, a tick that
//! closes each window and a shared queue of request events.
//!
//! ```json
//! {"requestsPerWindow": 3, "windowMs": 1000}
//! ```
//!
//! * shared data `rate-limit:count`: requests allowed in the current window (decimal u64),
//!   incremented with compare-and-swap; a request that finds it at `requestsPerWindow` gets a
//!   429 local reply with `retry-after`.
//! * every allowed request's path is enqueued on shared queue `rate-limit-events`.
//! * `on_tick` (every `windowMs`) resets the count to `0` and drains the queue;
//!   `on_queue_ready` drains it too. Shared data `rate-limit:seen` is the total number of events
//!   drained so far (so, once drained, the total number of allowed requests).
//! * metrics: counters `rate_limit_allowed_total`, `rate_limit_denied_total`, gauge
//!   `rate_limit_window_count` (the count in the current window), histogram
//!   `rate_limit_request_path_len` (length of each request's `:path`).

use std::rc::Rc;
use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::*;
use proxy_wasm::types::*;
use serde::Deserialize;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(Root { state: None })
    });
}}

const COUNT_KEY: &str = "rate-limit:count";
const SEEN_KEY: &str = "rate-limit:seen";
const QUEUE_NAME: &str = "rate-limit-events";
/// Compare-and-swap attempts before giving up on one update.
const CAS_RETRIES: usize = 64;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Config {
    #[serde(default = "default_requests_per_window")]
    requests_per_window: u64,
    #[serde(default = "default_window_ms")]
    window_ms: u64,
}

fn default_requests_per_window() -> u64 {
    100
}

fn default_window_ms() -> u64 {
    1000
}

impl Default for Config {
    fn default() -> Self {
        Config {
            requests_per_window: default_requests_per_window(),
            window_ms: default_window_ms(),
        }
    }
}

impl Config {
    fn validate(self) -> Result<Self, String> {
        if self.window_ms == 0 {
            return Err("`windowMs` must be greater than 0".into());
        }
        if self.window_ms > u64::from(u32::MAX) {
            return Err(format!("`windowMs` must be at most {}", u32::MAX));
        }
        Ok(self)
    }
}

#[derive(Clone, Copy)]
struct Metrics {
    allowed: u32,
    denied: u32,
    window_count: u32,
    path_len: u32,
}

impl Metrics {
    fn define() -> Result<Self, Status> {
        Ok(Metrics {
            allowed: hostcalls::define_metric(MetricType::Counter, "rate_limit_allowed_total")?,
            denied: hostcalls::define_metric(MetricType::Counter, "rate_limit_denied_total")?,
            window_count: hostcalls::define_metric(MetricType::Gauge, "rate_limit_window_count")?,
            path_len: hostcalls::define_metric(
                MetricType::Histogram,
                "rate_limit_request_path_len",
            )?,
        })
    }
}

fn increment(metric: u32, by: i64) {
    if let Err(status) = hostcalls::increment_metric(metric, by) {
        log::warn!("rate-limit: increment_metric({metric}) failed: {status:?}");
    }
}

fn record(metric: u32, value: u64) {
    if let Err(status) = hostcalls::record_metric(metric, value) {
        log::warn!("rate-limit: record_metric({metric}) failed: {status:?}");
    }
}

/// Parses a shared-data counter; absent or garbage counts as 0.
fn parse_count(value: Option<&[u8]>) -> u64 {
    value
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Outcome of [`update_counter`].
enum Update {
    /// The counter was changed from `.0` to `.1`.
    Done(u64, u64),
    /// `step` declined to change the counter that had value `.0`.
    Declined(u64),
}

/// Read-modify-write of a decimal counter in shared data with a CAS retry loop.
/// `step(current)` returns the new value, or `None` to leave the counter alone.
fn update_counter(
    ctx: &dyn Context,
    key: &str,
    step: impl Fn(u64) -> Option<u64>,
) -> Result<Update, Status> {
    for _ in 0..CAS_RETRIES {
        let (value, cas) = ctx.get_shared_data(key);
        let current = parse_count(value.as_deref());
        let Some(next) = step(current) else {
            return Ok(Update::Declined(current));
        };
        match ctx.set_shared_data(key, Some(next.to_string().as_bytes()), cas) {
            Ok(()) => return Ok(Update::Done(current, next)),
            Err(Status::CasMismatch) => continue,
            Err(status) => return Err(status),
        }
    }
    Err(Status::CasMismatch)
}

struct State {
    config: Config,
    metrics: Metrics,
    queue_id: u32,
}

struct Root {
    state: Option<Rc<State>>,
}

impl Root {
    /// Dequeues every pending event and adds their number to `rate-limit:seen`.
    fn drain(&self, why: &str) {
        let Some(state) = &self.state else { return };
        let mut drained: u64 = 0;
        loop {
            match self.dequeue_shared_queue(state.queue_id) {
                Ok(Some(_event)) => drained += 1,
                Ok(None) => break,
                Err(status) => {
                    log::warn!("rate-limit: dequeue failed: {status:?}");
                    break;
                }
            }
        }
        if drained == 0 {
            return;
        }
        match update_counter(self, SEEN_KEY, |seen| Some(seen.saturating_add(drained))) {
            Ok(Update::Done(_, seen)) => {
                log::debug!("rate-limit: {why}: drained {drained} event(s), {seen} seen in total");
            }
            Ok(Update::Declined(_)) => {}
            Err(status) => log::warn!("rate-limit: could not update {SEEN_KEY}: {status:?}"),
        }
    }
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
                log::error!("rate-limit: invalid pluginConfig: {err}");
                return false;
            }
        };
        let metrics = match Metrics::define() {
            Ok(metrics) => metrics,
            Err(status) => {
                log::error!("rate-limit: define_metric failed: {status:?}");
                return false;
            }
        };
        let queue_id = self.register_shared_queue(QUEUE_NAME);
        // Create the counters if absent; keep them if another plugin instance of this VM id
        // already did (the count is shared by every instance).
        for key in [COUNT_KEY, SEEN_KEY] {
            if let (None, _) = self.get_shared_data(key) {
                if let Err(status) = self.set_shared_data(key, Some(b"0"), None) {
                    log::warn!("rate-limit: could not initialise {key}: {status:?}");
                }
            }
        }
        self.set_tick_period(Duration::from_millis(config.window_ms));
        log::info!(
            "rate-limit: {} request(s) per {}ms window",
            config.requests_per_window,
            config.window_ms
        );
        self.state = Some(Rc::new(State {
            config,
            metrics,
            queue_id,
        }));
        true
    }

    fn on_tick(&mut self) {
        let Some(state) = self.state.clone() else {
            return;
        };
        match update_counter(self, COUNT_KEY, |count| (count != 0).then_some(0)) {
            Ok(Update::Done(previous, _)) => {
                log::debug!("rate-limit: window closed with {previous} request(s)");
            }
            Ok(Update::Declined(_)) => {}
            Err(status) => log::warn!("rate-limit: could not reset {COUNT_KEY}: {status:?}"),
        }
        record(state.metrics.window_count, 0);
        self.drain("tick");
    }

    fn on_queue_ready(&mut self, queue_id: u32) {
        if self.state.as_ref().is_some_and(|s| s.queue_id == queue_id) {
            self.drain("queue ready");
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        let state = Rc::clone(self.state.as_ref()?);
        Some(Box::new(Filter { state }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Filter {
    state: Rc<State>,
}

impl Context for Filter {}

impl HttpContext for Filter {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let state = Rc::clone(&self.state);
        let limit = state.config.requests_per_window;
        let path = self
            .get_http_request_header_bytes(":path")
            .map(|p| String::from_utf8_lossy(&p).into_owned())
            .unwrap_or_default();
        record(state.metrics.path_len, path.len() as u64);

        let outcome = update_counter(self, COUNT_KEY, |count| {
            (count < limit).then(|| count.saturating_add(1))
        });
        match outcome {
            Ok(Update::Done(_, count)) => {
                increment(state.metrics.allowed, 1);
                record(state.metrics.window_count, count);
                if let Err(status) =
                    self.enqueue_shared_queue(state.queue_id, Some(path.as_bytes()))
                {
                    log::warn!("rate-limit: enqueue failed: {status:?}");
                }
                Action::Continue
            }
            Ok(Update::Declined(count)) => {
                increment(state.metrics.denied, 1);
                log::info!("rate-limit: denied {path}: {count}/{limit} request(s) in this window");
                let retry_after = state.config.window_ms.div_ceil(1000).max(1).to_string();
                let limit = limit.to_string();
                self.send_http_response(
                    429,
                    vec![
                        ("retry-after", retry_after.as_str()),
                        ("x-ratelimit-limit", limit.as_str()),
                        ("content-type", "text/plain"),
                    ],
                    Some(b"rate limit exceeded"),
                );
                Action::Pause
            }
            Err(status) => {
                // Could not update the shared count: let the request through rather than
                // failing it on a bookkeeping error.
                log::warn!(
                    "rate-limit: could not update {COUNT_KEY} ({status:?}); allowing {path}"
                );
                increment(state.metrics.allowed, 1);
                Action::Continue
            }
        }
    }
}
