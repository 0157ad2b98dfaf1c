//! Plugin-defined metrics (`proxy_define_metric`): one registry per engine, shared by every VM, so
//! the same name defined on several workers is one metric, as in Envoy; and each VM's ids for
//! them, handed out as proxy-wasm-cpp-host does.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use sluice_abi::{MetricType, Status};

/// Upper bounds of the histogram buckets, in the plugin's own unit.
pub const HISTOGRAM_BOUNDS: [u64; 12] = [1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000];

pub struct Metric {
    pub name: String,
    pub kind: MetricType,
    value: AtomicI64,
    sum: AtomicU64,
    buckets: [AtomicU64; HISTOGRAM_BOUNDS.len() + 1],
}

impl Metric {
    /// Counter or gauge value; for a histogram, the number of recorded values.
    pub fn value(&self) -> i64 {
        self.value.load(Ordering::Relaxed)
    }

    /// Adds to a counter or gauge.
    pub fn add(&self, delta: i64) {
        self.value.fetch_add(delta, Ordering::Relaxed);
    }

    /// Histogram sum and per-bucket counts (the last bucket is +Inf).
    pub fn histogram(&self) -> (u64, Vec<u64>) {
        (
            self.sum.load(Ordering::Relaxed),
            self.buckets
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect(),
        )
    }
}

#[derive(Default)]
pub struct Metrics {
    inner: RwLock<MetricsInner>,
}

/// Metrics by name and type: one name may be defined as a counter and as a gauge, two metrics,
/// as in Envoy's stats store.
struct MetricsInner {
    by_key: HashMap<(String, MetricType), Arc<Metric>>,
    /// In order of definition.
    metrics: Vec<Arc<Metric>>,
    name_bytes: usize,
    /// [`crate::SharedLimits::metrics`].
    limit: usize,
}

impl Default for MetricsInner {
    fn default() -> Self {
        Self {
            by_key: HashMap::new(),
            metrics: Vec::new(),
            name_bytes: 0,
            limit: MAX_METRICS,
        }
    }
}

/// Default bound on the distinct metrics (name and type) of a process. Envoy has none: a plugin
/// that names a metric after each request would grow the proxy, and its stats page, without end.
pub const MAX_METRICS: usize = 16384;
/// Bound on the bytes of those metrics' names together.
pub const MAX_METRIC_NAME_BYTES: usize = 16 << 20;
/// Bound on the ids one VM holds. cpp-host gives a new id to every `proxy_define_metric`, even of
/// a name already defined; past this bound a VM gets the id it already has for that metric.
const MAX_METRIC_IDS: usize = 65536;

impl Metrics {
    /// The bound on distinct metrics, from now on (those defined already stay).
    pub fn set_limit(&self, metrics: usize) {
        self.inner
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .limit = metrics;
    }

    /// The bound on distinct metrics.
    pub fn limit(&self) -> usize {
        self.inner
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .limit
    }

    /// The metric of this name and type, defined now if it is new; `None` past the bound on
    /// metrics or [`MAX_METRIC_NAME_BYTES`].
    pub fn define(&self, kind: MetricType, name: &str) -> Option<Arc<Metric>> {
        let mut inner = self
            .inner
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(metric) = inner.by_key.get(&(name.to_string(), kind)) {
            return Some(metric.clone());
        }
        if inner.metrics.len() >= inner.limit
            || inner.name_bytes + name.len() > MAX_METRIC_NAME_BYTES
        {
            return None;
        }
        inner.name_bytes += name.len();
        let metric = Arc::new(Metric {
            name: name.to_string(),
            kind,
            value: AtomicI64::new(0),
            sum: AtomicU64::new(0),
            buckets: Default::default(),
        });
        inner.metrics.push(metric.clone());
        inner
            .by_key
            .insert((name.to_string(), kind), metric.clone());
        Some(metric)
    }

    /// The first metric defined with this name.
    pub fn by_name(&self, name: &str) -> Option<Arc<Metric>> {
        let inner = self
            .inner
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        inner.metrics.iter().find(|m| m.name == name).cloned()
    }

    pub fn all(&self) -> Vec<Arc<Metric>> {
        self.inner
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .metrics
            .clone()
    }
}

/// A VM's metric ids, as proxy-wasm-cpp-host hands them out: every `proxy_define_metric` gets a
/// new id (even for a name already defined), whose two low bits are the type, and ids map to the
/// process-wide metrics, so every instance reads the same values.
#[derive(Default)]
pub(crate) struct MetricIds {
    by_id: HashMap<u32, Arc<Metric>>,
    /// The last id given per metric (by address), for when `by_id` is full.
    last_by_metric: HashMap<usize, u32>,
    /// The last id given per type (counter, gauge, histogram).
    last: [u32; 3],
}

/// The id bits that hold the type, and the step between ids of one type.
const TYPE_MASK: u32 = 0x3;
const ID_STEP: u32 = 0x4;

impl MetricIds {
    /// A new id for the metric, or INTERNAL_FAILURE past the process's bound on metrics.
    pub(crate) fn define(
        &mut self,
        metrics: &Metrics,
        kind: MetricType,
        name: &str,
    ) -> Result<u32, Status> {
        let metric = metrics.define(kind, name).ok_or(Status::InternalFailure)?;
        let address = Arc::as_ptr(&metric) as usize;
        if self.by_id.len() >= MAX_METRIC_IDS {
            return self
                .last_by_metric
                .get(&address)
                .copied()
                .ok_or(Status::InternalFailure);
        }
        let slot = &mut self.last[kind as usize];
        if *slot == 0 {
            *slot = kind as u32;
        }
        *slot = slot.wrapping_add(ID_STEP);
        let id = *slot;
        self.by_id.insert(id, metric);
        self.last_by_metric.insert(address, id);
        Ok(id)
    }

    /// The metric behind an id: BAD_ARGUMENT for an id of no type, NOT_FOUND for an unknown one.
    fn get(&self, id: u32) -> Result<&Arc<Metric>, Status> {
        if MetricType::from_raw(id & TYPE_MASK).is_none() {
            return Err(Status::BadArgument);
        }
        self.by_id.get(&id).ok_or(Status::NotFound)
    }

    /// Envoy's rules: a counter only grows (a zero or negative offset is a bad argument), a
    /// gauge moves either way, a histogram cannot be incremented.
    pub(crate) fn increment(&self, id: u32, offset: i64) -> Result<(), Status> {
        let metric = self.get(id)?;
        match metric.kind {
            MetricType::Counter if offset <= 0 => Err(Status::BadArgument),
            MetricType::Counter | MetricType::Gauge => {
                metric.add(offset);
                Ok(())
            }
            MetricType::Histogram => Err(Status::BadArgument),
        }
    }

    /// A counter adds the value, a gauge is set to it, a histogram records it.
    pub(crate) fn record(&self, id: u32, value: u64) -> Result<(), Status> {
        let metric = match self.get(id) {
            // An id of no type is not found here, as in cpp-host.
            Err(Status::BadArgument) => return Err(Status::NotFound),
            other => other?,
        };
        match metric.kind {
            MetricType::Counter => {
                metric.value.fetch_add(value as i64, Ordering::Relaxed);
            }
            MetricType::Gauge => metric.value.store(value as i64, Ordering::Relaxed),
            MetricType::Histogram => {
                metric.value.fetch_add(1, Ordering::Relaxed);
                metric.sum.fetch_add(value, Ordering::Relaxed);
                let bucket = HISTOGRAM_BOUNDS
                    .iter()
                    .position(|b| value <= *b)
                    .unwrap_or(HISTOGRAM_BOUNDS.len());
                metric.buckets[bucket].fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    /// A counter's or gauge's value; a histogram has none to read (a bad argument).
    pub(crate) fn read(&self, id: u32) -> Result<u64, Status> {
        let metric = self.get(id)?;
        match metric.kind {
            MetricType::Counter | MetricType::Gauge => Ok(metric.value() as u64),
            MetricType::Histogram => Err(Status::BadArgument),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_and_a_vms_ids_are_bounded() {
        let metrics = Metrics::default();
        let mut ids = MetricIds::default();
        for i in 0..MAX_METRICS {
            assert!(
                ids.define(&metrics, MetricType::Counter, &format!("m{i}"))
                    .is_ok()
            );
        }
        assert_eq!(
            ids.define(&metrics, MetricType::Counter, "one more"),
            Err(Status::InternalFailure)
        );
        // An existing metric can still be defined: new ids until the VM holds its bound, then
        // the last id it got for that metric.
        let mut last = 0;
        for _ in 0..MAX_METRIC_IDS {
            last = ids.define(&metrics, MetricType::Counter, "m0").unwrap();
        }
        assert_eq!(ids.define(&metrics, MetricType::Counter, "m0"), Ok(last));
        assert_eq!(ids.by_id.len(), MAX_METRIC_IDS);
        ids.increment(last, 1).unwrap();
        assert_eq!(ids.read(last), Ok(1));
    }

    #[test]
    fn a_configured_bound_on_metrics_applies_to_new_names_only() {
        let metrics = Metrics::default();
        assert!(metrics.define(MetricType::Counter, "a").is_some());
        metrics.set_limit(1);
        assert!(metrics.define(MetricType::Counter, "b").is_none());
        assert!(
            metrics.define(MetricType::Counter, "a").is_some(),
            "defined already"
        );
        assert_eq!(metrics.limit(), 1);
    }
}
