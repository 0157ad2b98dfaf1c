//! Plugin-defined metrics (`proxy_define_metric`): one registry per engine, shared by every VM, so
//! the same name defined on several workers is one metric, as in Envoy.

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

#[derive(Default)]
struct MetricsInner {
    by_name: HashMap<String, u32>,
    metrics: Vec<Arc<Metric>>,
}

impl Metrics {
    /// Defines (or finds) a metric. Redefining a name with another type is a bad argument.
    pub fn define(&self, kind: MetricType, name: &str) -> Result<u32, Status> {
        let mut inner = self
            .inner
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(&id) = inner.by_name.get(name) {
            return if inner.metrics[id as usize].kind == kind {
                Ok(id)
            } else {
                Err(Status::BadArgument)
            };
        }
        let id = inner.metrics.len() as u32;
        inner.metrics.push(Arc::new(Metric {
            name: name.to_string(),
            kind,
            value: AtomicI64::new(0),
            sum: AtomicU64::new(0),
            buckets: Default::default(),
        }));
        inner.by_name.insert(name.to_string(), id);
        Ok(id)
    }

    fn get(&self, id: u32) -> Result<Arc<Metric>, Status> {
        let inner = self
            .inner
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        inner
            .metrics
            .get(id as usize)
            .cloned()
            .ok_or(Status::NotFound)
    }

    pub fn increment(&self, id: u32, delta: i64) -> Result<(), Status> {
        let metric = self.get(id)?;
        match metric.kind {
            MetricType::Counter if delta < 0 => Err(Status::BadArgument),
            MetricType::Counter | MetricType::Gauge => {
                metric.value.fetch_add(delta, Ordering::Relaxed);
                Ok(())
            }
            MetricType::Histogram => Err(Status::BadArgument),
        }
    }

    pub fn record(&self, id: u32, value: u64) -> Result<(), Status> {
        let metric = self.get(id)?;
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

    pub fn read(&self, id: u32) -> Result<u64, Status> {
        let metric = self.get(id)?;
        match metric.kind {
            MetricType::Counter | MetricType::Gauge => Ok(metric.value() as u64),
            // A histogram has no single value to read back.
            MetricType::Histogram => Err(Status::NotFound),
        }
    }

    pub fn by_name(&self, name: &str) -> Option<Arc<Metric>> {
        let inner = self
            .inner
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        inner
            .by_name
            .get(name)
            .map(|id| inner.metrics[*id as usize].clone())
    }

    pub fn all(&self) -> Vec<Arc<Metric>> {
        self.inner
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .metrics
            .clone()
    }
}
