//! The proxy's own counters, shared by every worker (atomics), and the Prometheus text rendering
//! of them together with the plugins' own metrics.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use sluice_abi::MetricType;
use sluice_filter::InstanceReport;
use sluice_host::{CALLBACK_TIME_SAMPLE, CallbackTime, HISTOGRAM_BOUNDS, Metrics};

/// Upper bounds of the request latency histogram, in milliseconds.
const LATENCY_BOUNDS_MS: [u64; 10] = [1, 2, 5, 10, 25, 50, 100, 250, 1000, 5000];

/// Requests and their outcomes on one route, or to one cluster. Counted when they end.
#[derive(Default, Debug)]
pub struct Traffic {
    requests: AtomicU64,
    responses_by_class: [AtomicU64; 5],
    /// On a route: client streams reset instead of answered. To a cluster: connect, protocol and
    /// timeout failures.
    failures: AtomicU64,
}

impl Traffic {
    pub fn started(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// The status of the answer; `None`, a failure.
    pub fn answered(&self, status: Option<u16>) {
        match status {
            Some(code @ 100..=599) => {
                self.responses_by_class[usize::from(code / 100 - 1)]
                    .fetch_add(1, Ordering::Relaxed);
            }
            _ => self.failed(),
        }
    }

    pub fn failed(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
    }

    fn read(&self) -> (u64, [u64; 5], u64) {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        (
            load(&self.requests),
            std::array::from_fn(|i| load(&self.responses_by_class[i])),
            load(&self.failures),
        )
    }
}

/// The connections of one TCP listener (Envoy's tcp_proxy `downstream_cx_*` and
/// `upstream_cx_connect_fail` stats).
#[derive(Default, Debug)]
pub struct TcpTraffic {
    connections: AtomicU64,
    received: AtomicU64,
    sent: AtomicU64,
    connect_failures: AtomicU64,
}

impl TcpTraffic {
    pub fn connected(&self) {
        self.connections.fetch_add(1, Ordering::Relaxed);
    }

    /// Bytes read from the client.
    pub fn received(&self, bytes: usize) {
        self.received.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Bytes written to the client.
    pub fn sent(&self, bytes: usize) {
        self.sent.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub fn connect_failed(&self) {
        self.connect_failures.fetch_add(1, Ordering::Relaxed);
    }
}

/// The route label of requests that no route takes.
pub const NO_ROUTE: &str = "(none)";

#[derive(Default)]
pub struct Stats {
    /// Per (listener, route) name; kept across reloads, so that counters never go back.
    routes: Mutex<BTreeMap<(String, String), Arc<Traffic>>>,
    /// Per cluster name, requests sent upstream.
    clusters: Mutex<BTreeMap<String, Arc<Traffic>>>,
    /// Per TCP listener name.
    tcp: Mutex<BTreeMap<String, Arc<TcpTraffic>>>,
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

    /// Where requests on `route` of `listener` are counted.
    pub fn route(&self, listener: &str, route: &str) -> Arc<Traffic> {
        shared(&self.routes, (listener.to_string(), route.to_string()))
    }

    /// Where the connections of TCP listener `listener` are counted.
    pub fn tcp(&self, listener: &str) -> Arc<TcpTraffic> {
        shared(&self.tcp, listener.to_string())
    }

    /// Where requests sent to `cluster` are counted.
    pub fn cluster(&self, cluster: &str) -> Arc<Traffic> {
        shared(&self.clusters, cluster.to_string())
    }

    /// Where instances of `plugin` count their guest calls.
    pub fn callback_time(&self, plugin: &str) -> Arc<CallbackTime> {
        shared(&self.callback_times, plugin.to_string())
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

    /// Counts `failures`, but not calls into a VM that had failed already (no new failure).
    pub fn plugin_failures(&self, failures: &[sluice_host::PluginFailure]) {
        let new = failures
            .iter()
            .filter(|f| f.kind != sluice_host::FailureKind::AlreadyFailed)
            .count();
        self.plugin_failures
            .fetch_add(new as u64, Ordering::Relaxed);
    }

    /// The totals the admin page plots, now, as JSON: requests, error answers (5xx and resets),
    /// the latency sum and count, and each plugin's guest-call time.
    pub fn sample(&self) -> serde_json::Value {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let plugins: serde_json::Map<String, serde_json::Value> = lock(&self.callback_times)
            .iter()
            .map(|(name, time)| (name.clone(), serde_json::json!(time.estimated_seconds())))
            .collect();
        serde_json::json!({
            "atMs": at.as_millis() as u64,
            "requests": load(&self.requests),
            "errors": load(&self.responses_by_class[4]) + load(&self.resets),
            "latencyCount": self.latency_buckets.iter().map(load).sum::<u64>(),
            "latencySumUs": load(&self.latency_sum_us),
            "pluginSeconds": plugins,
        })
    }

    /// The counters, the plugins' metrics and the plugins that could not be fetched
    /// (`unavailable`: name and failStrategy), in the Prometheus (OpenMetrics) text format,
    /// written by `prometheus-client`, which escapes label values.
    pub fn render(&self, plugin_metrics: &Metrics, unavailable: &[(String, String)]) -> String {
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(Snapshot {
            families: self.families(plugin_metrics, unavailable),
        }));
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }

    fn families(&self, plugin_metrics: &Metrics, unavailable: &[(String, String)]) -> Vec<Family> {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let single = |name: &str, help: &str, value: u64| Family {
            name: name.into(),
            help: help.into(),
            values: Values::Counter(vec![(Vec::new(), value)]),
        };
        let classes = |by_class: [u64; 5], base: Labels| {
            (0..5).map(move |i| {
                let mut labels = base.clone();
                labels.push(("class".into(), format!("{}xx", i + 1)));
                (labels, by_class[i])
            })
        };
        let mut families = vec![
            single(
                "sluice_requests",
                "Requests received from clients.",
                load(&self.requests),
            ),
            Family {
                name: "sluice_responses".into(),
                help: "Responses sent to clients, by status class.".into(),
                values: Values::Counter(
                    classes(
                        std::array::from_fn(|i| load(&self.responses_by_class[i])),
                        Vec::new(),
                    )
                    .collect(),
                ),
            },
            single(
                "sluice_resets",
                "Client streams reset instead of answered.",
                load(&self.resets),
            ),
            single(
                "sluice_upstream_errors",
                "Upstream connect, protocol and timeout failures.",
                load(&self.upstream_errors),
            ),
            single(
                "sluice_plugin_failures",
                "Plugin traps, deadline overruns and memory-limit hits.",
                load(&self.plugin_failures),
            ),
            single(
                "sluice_access_log_dropped",
                "Access-log lines dropped because the writer fell behind.",
                load(&self.access_log_dropped),
            ),
            Family {
                name: "sluice_config_reloads".into(),
                help: "Config reloads, by outcome (a failed one changed nothing).".into(),
                values: Values::Counter(vec![
                    (vec![("result".into(), "ok".into())], load(&self.reloads)),
                    (
                        vec![("result".into(), "failed".into())],
                        load(&self.reload_failures),
                    ),
                ]),
            },
        ];
        let bounds: Vec<f64> = LATENCY_BOUNDS_MS
            .iter()
            .map(|ms| *ms as f64 / 1000.0)
            .collect();
        families.push(Family {
            name: "sluice_request_duration_seconds".into(),
            help: "Time from request head to stream end.".into(),
            values: Values::Histogram(vec![(
                Vec::new(),
                load(&self.latency_sum_us) as f64 / 1e6,
                with_bounds(&bounds, self.latency_buckets.iter().map(load)),
            )]),
        });
        let routes: Vec<(Labels, Arc<Traffic>)> = lock(&self.routes)
            .iter()
            .map(|((listener, route), traffic)| {
                let labels = vec![
                    ("listener".into(), listener.clone()),
                    ("route".into(), route.clone()),
                ];
                (labels, traffic.clone())
            })
            .collect();
        families.extend(traffic_families(
            "sluice_route",
            [
                "per route, counted as they end",
                "per route, by status class",
            ],
            ("resets", "Client streams reset per route."),
            &routes,
        ));
        let clusters: Vec<(Labels, Arc<Traffic>)> = lock(&self.clusters)
            .iter()
            .map(|(cluster, traffic)| (vec![("cluster".into(), cluster.clone())], traffic.clone()))
            .collect();
        families.extend(traffic_families(
            "sluice_cluster",
            ["sent to each cluster", "from each cluster, by status class"],
            (
                "errors",
                "Connect, protocol and timeout failures per cluster.",
            ),
            &clusters,
        ));
        let tcp: Vec<(Labels, Arc<TcpTraffic>)> = lock(&self.tcp)
            .iter()
            .map(|(name, traffic)| (vec![("listener".into(), name.clone())], traffic.clone()))
            .collect();
        for (name, help, read) in [
            (
                "sluice_tcp_connections",
                "Connections accepted per TCP listener.",
                (|t: &TcpTraffic| &t.connections) as fn(&TcpTraffic) -> &AtomicU64,
            ),
            (
                "sluice_tcp_received_bytes",
                "Bytes read from clients per TCP listener.",
                |t| &t.received,
            ),
            (
                "sluice_tcp_sent_bytes",
                "Bytes written to clients per TCP listener.",
                |t| &t.sent,
            ),
            (
                "sluice_tcp_connect_failures",
                "Upstream connections that could not be made per TCP listener.",
                |t| &t.connect_failures,
            ),
        ] {
            families.push(counter(
                name,
                help,
                tcp.iter()
                    .map(|(labels, traffic)| (labels.clone(), load(read(traffic))))
                    .collect(),
            ));
        }
        let times = lock(&self.callback_times).clone();
        let plugin = |name: &str| -> Labels { vec![("plugin".into(), name.to_string())] };
        families.push(counter(
            "sluice_plugin_callbacks",
            "Guest calls (callbacks) per plugin.",
            times
                .iter()
                .map(|(name, time)| (plugin(name), load(&time.calls)))
                .collect(),
        ));
        families.push(Family {
            name: "sluice_plugin_callback_seconds".into(),
            help: format!(
                "Time in guest calls per plugin, estimated from 1 call in {CALLBACK_TIME_SAMPLE}."
            ),
            values: Values::CounterF64(
                times
                    .iter()
                    .map(|(name, time)| (plugin(name), time.estimated_seconds()))
                    .collect(),
            ),
        });
        let mut memory = Vec::new();
        for (worker, instances) in self.instances() {
            let mut by_plugin: BTreeMap<&str, usize> = BTreeMap::new();
            for instance in &instances {
                *by_plugin.entry(instance.plugin.as_str()).or_default() += instance.memory_bytes;
            }
            for (name, bytes) in by_plugin {
                let mut labels = plugin(name);
                labels.push(("worker".into(), worker.to_string()));
                memory.push((labels, bytes as i64));
            }
        }
        families.push(Family {
            name: "sluice_plugin_memory_bytes".into(),
            help: "Linear memory of each plugin's instances, per worker.".into(),
            values: Values::Gauge(memory),
        });
        families.push(Family {
            name: "sluice_plugin_unavailable".into(),
            help: "Plugins whose module could not be fetched (retried in the background).".into(),
            values: Values::Gauge(
                unavailable
                    .iter()
                    .map(|(name, strategy)| {
                        let mut labels = plugin(name);
                        labels.push(("fail_strategy".into(), strategy.clone()));
                        (labels, 1)
                    })
                    .collect(),
            ),
        });
        families.extend(plugin_families(plugin_metrics));
        families
    }
}

/// The requests, responses by class and failures of some `Traffic`s, as three families named
/// `PREFIX_requests`, `PREFIX_responses` and `PREFIX_FAILURES`.
fn traffic_families(
    prefix: &str,
    [requests_help, responses_help]: [&str; 2],
    (failures, failures_help): (&str, &str),
    traffic: &[(Labels, Arc<Traffic>)],
) -> [Family; 3] {
    let (mut requests, mut responses, mut failed) = (Vec::new(), Vec::new(), Vec::new());
    for (labels, traffic) in traffic {
        let (count, by_class, failures) = traffic.read();
        requests.push((labels.clone(), count));
        for (i, count) in by_class.into_iter().enumerate() {
            let mut labels = labels.clone();
            labels.push(("class".into(), format!("{}xx", i + 1)));
            responses.push((labels, count));
        }
        failed.push((labels.clone(), failures));
    }
    [
        counter(
            &format!("{prefix}_requests"),
            &format!("Requests {requests_help}."),
            requests,
        ),
        counter(
            &format!("{prefix}_responses"),
            &format!("Responses {responses_help}."),
            responses,
        ),
        counter(&format!("{prefix}_{failures}"), failures_help, failed),
    ]
}

/// The counters kept under `key`, made on first use; every worker gets the same ones.
fn shared<K: Ord, T: Default>(map: &Mutex<BTreeMap<K, Arc<T>>>, key: K) -> Arc<T> {
    lock(map).entry(key).or_default().clone()
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

type Labels = Vec<(String, String)>;

/// One metric family of a scrape, read from the atomics when the scrape began.
#[derive(Debug)]
struct Family {
    name: String,
    help: String,
    values: Values,
}

#[derive(Debug)]
enum Values {
    Counter(Vec<(Labels, u64)>),
    CounterF64(Vec<(Labels, f64)>),
    Gauge(Vec<(Labels, i64)>),
    /// Labels, sum, and per-bucket counts with their upper bounds (the last is +Inf).
    Histogram(Vec<(Labels, f64, Vec<(f64, u64)>)>),
}

fn counter(name: &str, help: &str, values: Vec<(Labels, u64)>) -> Family {
    Family {
        name: name.into(),
        help: help.into(),
        values: Values::Counter(values),
    }
}

/// Per-bucket counts paired with their upper bounds; the count after the last bound is +Inf's.
fn with_bounds(bounds: &[f64], counts: impl Iterator<Item = u64>) -> Vec<(f64, u64)> {
    counts
        .enumerate()
        .map(|(i, count)| (bounds.get(i).copied().unwrap_or(f64::INFINITY), count))
        .collect()
}

/// The plugins' own metrics (`proxy_define_metric`). The name is made a valid Prometheus name
/// (`sluice_plugin_` and `[a-zA-Z0-9_:]`) and the plugin's own name kept in a `name` label, so
/// that two names that read the same once cleaned up (`a.b`, `a_b`) stay two series; one
/// cleaned-up name with two types gets the type as a suffix.
fn plugin_families(metrics: &Metrics) -> Vec<Family> {
    let all = metrics.all();
    let mut kinds: BTreeMap<String, std::collections::BTreeSet<&'static str>> = BTreeMap::new();
    for metric in &all {
        kinds
            .entry(sanitize(&metric.name))
            .or_default()
            .insert(metric.kind.as_str());
    }
    let bounds: Vec<f64> = HISTOGRAM_BOUNDS.iter().map(|b| *b as f64).collect();
    let mut families: BTreeMap<(String, &'static str), Values> = BTreeMap::new();
    for metric in &all {
        let clean = sanitize(&metric.name);
        let mut name = if kinds.get(&clean).is_some_and(|k| k.len() > 1) {
            format!("sluice_plugin_{clean}_{}", metric.kind.as_str())
        } else {
            format!("sluice_plugin_{clean}")
        };
        // The encoder adds `_total` to counters; a name that has it already keeps one.
        if metric.kind == MetricType::Counter && name.ends_with("_total") {
            name.truncate(name.len() - "_total".len());
        }
        let labels: Labels = vec![("name".into(), metric.name.clone())];
        let entry = families.entry((name, metric.kind.as_str()));
        match metric.kind {
            MetricType::Counter => {
                if let Values::Counter(values) =
                    entry.or_insert_with(|| Values::Counter(Vec::new()))
                {
                    values.push((labels, u64::try_from(metric.value()).unwrap_or(0)));
                }
            }
            MetricType::Gauge => {
                if let Values::Gauge(values) = entry.or_insert_with(|| Values::Gauge(Vec::new())) {
                    values.push((labels, metric.value()));
                }
            }
            MetricType::Histogram => {
                let (sum, buckets) = metric.histogram();
                if let Values::Histogram(values) =
                    entry.or_insert_with(|| Values::Histogram(Vec::new()))
                {
                    values.push((
                        labels,
                        sum as f64,
                        with_bounds(&bounds, buckets.into_iter()),
                    ));
                }
            }
        }
    }
    families
        .into_iter()
        .map(|((name, _), values)| Family {
            help: "A plugin's own metric (proxy_define_metric); `name` is its name as defined."
                .into(),
            name,
            values,
        })
        .collect()
}

/// What `prometheus-client` encodes on a scrape.
#[derive(Debug)]
struct Snapshot {
    families: Vec<Family>,
}

impl prometheus_client::collector::Collector for Snapshot {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder<'_>,
    ) -> std::fmt::Result {
        use prometheus_client::encoding::NoLabelSet;
        use prometheus_client::metrics::MetricType as Kind;
        for family in &self.families {
            let kind = match &family.values {
                Values::Counter(_) | Values::CounterF64(_) => Kind::Counter,
                Values::Gauge(_) => Kind::Gauge,
                Values::Histogram(_) => Kind::Histogram,
            };
            let mut metric = encoder.encode_descriptor(&family.name, &family.help, None, kind)?;
            match &family.values {
                Values::Counter(values) => {
                    for (labels, value) in values {
                        series(&mut metric, labels, |m| {
                            m.encode_counter::<NoLabelSet, _, f64>(value, None)
                        })?;
                    }
                }
                Values::CounterF64(values) => {
                    for (labels, value) in values {
                        series(&mut metric, labels, |m| {
                            m.encode_counter::<NoLabelSet, _, f64>(value, None)
                        })?;
                    }
                }
                Values::Gauge(values) => {
                    for (labels, value) in values {
                        series(&mut metric, labels, |m| m.encode_gauge(value))?;
                    }
                }
                Values::Histogram(values) => {
                    for (labels, sum, buckets) in values {
                        let count = buckets.iter().map(|(_, c)| c).sum();
                        series(&mut metric, labels, |m| {
                            m.encode_histogram::<NoLabelSet>(*sum, count, buckets, None)
                        })?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// One series of a family: with its labels, or bare when it has none (`name 1`, not `name{} 1`).
fn series(
    metric: &mut prometheus_client::encoding::MetricEncoder<'_>,
    labels: &Labels,
    encode: impl FnOnce(&mut prometheus_client::encoding::MetricEncoder<'_>) -> std::fmt::Result,
) -> std::fmt::Result {
    if labels.is_empty() {
        encode(metric)
    } else {
        encode(&mut metric.encode_family(labels)?)
    }
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
        metrics
            .define(MetricType::Counter, "my_plugin.hits")
            .expect("room for a metric")
            .add(3);
        metrics
            .define(MetricType::Gauge, "my.plugin.hits")
            .expect("room for a metric")
            .add(-1);
        let route = stats.route("main", "api \"v1\"");
        route.started();
        route.answered(Some(503));
        let text = stats.render(&metrics, &[("auth".into(), "FAIL_CLOSE".into())]);
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
        // Two names that clean up alike stay two series, and two types two families.
        assert!(
            text.contains("sluice_plugin_my_plugin_hits_counter_total{name=\"my.plugin/hits\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("sluice_plugin_my_plugin_hits_counter_total{name=\"my_plugin.hits\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("sluice_plugin_my_plugin_hits_gauge{name=\"my.plugin.hits\"} -1"),
            "{text}"
        );
        // Label values are escaped.
        assert!(
            text.contains(
                "sluice_route_responses_total{listener=\"main\",route=\"api \\\"v1\\\"\",class=\"5xx\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "sluice_plugin_unavailable{plugin=\"auth\",fail_strategy=\"FAIL_CLOSE\"} 1"
            ),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
