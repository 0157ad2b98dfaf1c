//! The proxy's own counters, shared by every worker (atomics), and the Prometheus text rendering
//! of them together with the plugins' own metrics.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use sluice_abi::MetricType;
use sluice_filter::InstanceReport;
use sluice_host::{CALLBACK_TIME_SAMPLE, CallbackTime, HISTOGRAM_BOUNDS, Metrics};

/// Upper bounds of the request latency histogram, in milliseconds.
const LATENCY_BOUNDS_MS: [u64; 10] = [1, 2, 5, 10, 25, 50, 100, 250, 1000, 5000];

#[derive(Default)]
pub struct Stats {
    requests: AtomicU64,
    responses_by_class: [AtomicU64; 5],
    resets: AtomicU64,
    upstream_errors: AtomicU64,
    plugin_failures: AtomicU64,
    reloads: AtomicU64,
    reload_failures: AtomicU64,
    access_log_dropped: AtomicU64,
    /// Guest calls and their time, per plugin name (shared by its instances on every worker).
    callback_times: Mutex<BTreeMap<String, Arc<CallbackTime>>>,
    /// Plugin instances per worker, as the workers last reported them.
    instances: Mutex<BTreeMap<usize, Vec<InstanceReport>>>,
    latency_buckets: [AtomicU64; LATENCY_BOUNDS_MS.len() + 1],
    latency_sum_us: AtomicU64,
}

impl Stats {
    pub fn request_started(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// A finished request: the status the client got (`None` for a reset) and how long it took.
    pub fn request_finished(&self, status: Option<u16>, elapsed: Duration) {
        match status {
            Some(code @ 100..=599) => {
                self.responses_by_class[usize::from(code / 100 - 1)]
                    .fetch_add(1, Ordering::Relaxed);
            }
            _ => {
                self.resets.fetch_add(1, Ordering::Relaxed);
            }
        }
        let ms = elapsed.as_millis() as u64;
        let bucket = LATENCY_BOUNDS_MS
            .iter()
            .position(|b| ms <= *b)
            .unwrap_or(LATENCY_BOUNDS_MS.len());
        self.latency_buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.latency_sum_us
            .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
    }

    pub fn upstream_error(&self) {
        self.upstream_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// A config reload, done or refused (a refused one changed nothing).
    pub fn reload(&self, done: bool) {
        let counter = if done {
            &self.reloads
        } else {
            &self.reload_failures
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Where instances of `plugin` count their guest calls.
    pub fn callback_time(&self, plugin: &str) -> Arc<CallbackTime> {
        self.callback_times
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(plugin.to_string())
            .or_default()
            .clone()
    }

    /// A worker's plugin instances, replacing what it reported before.
    pub fn report_instances(&self, worker: usize, instances: Vec<InstanceReport>) {
        self.instances
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(worker, instances);
    }

    /// The instances of every worker, by worker.
    pub fn instances(&self) -> BTreeMap<usize, Vec<InstanceReport>> {
        self.instances
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// An access-log line dropped because the writer fell behind.
    pub fn access_log_dropped(&self) {
        self.access_log_dropped.fetch_add(1, Ordering::Relaxed);
    }

    pub fn plugin_failures(&self, count: usize) {
        self.plugin_failures
            .fetch_add(count as u64, Ordering::Relaxed);
    }

    /// Prometheus text exposition of these counters and the plugins' metrics.
    pub fn render(&self, plugin_metrics: &Metrics) -> String {
        let mut out = String::new();
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let counter = |out: &mut String, name: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        };
        counter(
            &mut out,
            "sluice_requests_total",
            "Requests received from clients.",
            load(&self.requests),
        );
        let _ = writeln!(
            out,
            "# HELP sluice_responses_total Responses sent to clients, by status class.\n# TYPE sluice_responses_total counter"
        );
        for (i, class) in self.responses_by_class.iter().enumerate() {
            let _ = writeln!(
                out,
                "sluice_responses_total{{class=\"{}xx\"}} {}",
                i + 1,
                load(class)
            );
        }
        counter(
            &mut out,
            "sluice_resets_total",
            "Client streams reset instead of answered.",
            load(&self.resets),
        );
        counter(
            &mut out,
            "sluice_upstream_errors_total",
            "Upstream connect or protocol failures.",
            load(&self.upstream_errors),
        );
        counter(
            &mut out,
            "sluice_plugin_failures_total",
            "Plugin traps, deadline overruns and memory-limit hits.",
            load(&self.plugin_failures),
        );
        counter(
            &mut out,
            "sluice_access_log_dropped_total",
            "Access-log lines dropped because the writer fell behind.",
            load(&self.access_log_dropped),
        );
        let _ = writeln!(
            out,
            "# HELP sluice_config_reloads_total Config reloads, by outcome (a failed one changed nothing).\n# TYPE sluice_config_reloads_total counter\nsluice_config_reloads_total{{result=\"ok\"}} {}\nsluice_config_reloads_total{{result=\"failed\"}} {}",
            load(&self.reloads),
            load(&self.reload_failures)
        );
        let _ = writeln!(
            out,
            "# HELP sluice_request_duration_seconds Time from request head to stream end."
        );
        let bounds: Vec<String> = LATENCY_BOUNDS_MS
            .iter()
            .map(|ms| (*ms as f64 / 1000.0).to_string())
            .collect();
        let buckets: Vec<u64> = self.latency_buckets.iter().map(load).collect();
        let sum = load(&self.latency_sum_us) as f64 / 1e6;
        histogram(
            &mut out,
            "sluice_request_duration_seconds",
            &bounds,
            &buckets,
            &sum.to_string(),
        );
        let _ = writeln!(
            out,
            "# HELP sluice_plugin_callbacks_total Guest calls (callbacks) per plugin.\n# TYPE sluice_plugin_callbacks_total counter"
        );
        let times = self
            .callback_times
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        for (plugin, time) in &times {
            let _ = writeln!(
                out,
                "sluice_plugin_callbacks_total{{plugin=\"{plugin}\"}} {}",
                load(&time.calls)
            );
        }
        let _ = writeln!(
            out,
            "# HELP sluice_plugin_callback_seconds_total Time in guest calls per plugin, estimated from 1 call in {CALLBACK_TIME_SAMPLE}.\n# TYPE sluice_plugin_callback_seconds_total counter"
        );
        for (plugin, time) in &times {
            let _ = writeln!(
                out,
                "sluice_plugin_callback_seconds_total{{plugin=\"{plugin}\"}} {}",
                time.estimated_seconds()
            );
        }
        let _ = writeln!(
            out,
            "# HELP sluice_plugin_memory_bytes Linear memory of each plugin's instances, per worker.\n# TYPE sluice_plugin_memory_bytes gauge"
        );
        for (worker, instances) in self.instances() {
            let mut memory: BTreeMap<&str, usize> = BTreeMap::new();
            for instance in &instances {
                *memory.entry(instance.plugin.as_str()).or_default() += instance.memory_bytes;
            }
            for (plugin, bytes) in memory {
                let _ = writeln!(
                    out,
                    "sluice_plugin_memory_bytes{{plugin=\"{plugin}\",worker=\"{worker}\"}} {bytes}"
                );
            }
        }
        let plugin_bounds: Vec<String> = HISTOGRAM_BOUNDS.iter().map(u64::to_string).collect();
        for metric in plugin_metrics.all() {
            let name = format!("sluice_plugin_{}", sanitize(&metric.name));
            match metric.kind {
                MetricType::Counter | MetricType::Gauge => {
                    let _ = writeln!(
                        out,
                        "# TYPE {name} {}\n{name} {}",
                        metric.kind.as_str(),
                        metric.value()
                    );
                }
                MetricType::Histogram => {
                    let (sum, buckets) = metric.histogram();
                    histogram(&mut out, &name, &plugin_bounds, &buckets, &sum.to_string());
                }
            }
        }
        out
    }
}

/// A histogram in Prometheus text: `buckets` holds per-bucket counts for `bounds` and a last +Inf
/// bucket; the exposition wants them cumulative.
fn histogram(out: &mut String, name: &str, bounds: &[String], buckets: &[u64], sum: &str) {
    let _ = writeln!(out, "# TYPE {name} histogram");
    let mut cumulative = 0;
    for (i, count) in buckets.iter().enumerate() {
        cumulative += count;
        let le = bounds.get(i).map_or("+Inf", String::as_str);
        let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
    }
    let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {cumulative}");
}

/// A plugin metric name as a Prometheus metric name: `[a-zA-Z0-9_:]`, everything else `_`.
fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_classes_latency_and_plugin_metrics() {
        let stats = Stats::default();
        stats.request_started();
        stats.request_finished(Some(404), Duration::from_millis(3));
        stats.request_finished(None, Duration::from_millis(2000));
        let metrics = Metrics::default();
        metrics
            .define(MetricType::Counter, "my.plugin/hits")
            .expect("room for a metric")
            .add(2);
        let text = stats.render(&metrics);
        assert!(
            text.contains("sluice_responses_total{class=\"4xx\"} 1"),
            "{text}"
        );
        assert!(text.contains("sluice_resets_total 1"), "{text}");
        assert!(
            text.contains("sluice_request_duration_seconds_bucket{le=\"0.005\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("sluice_request_duration_seconds_count 2"),
            "{text}"
        );
        assert!(text.contains("sluice_plugin_my_plugin_hits 2"), "{text}");
    }
}
