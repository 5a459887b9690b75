//! Prometheus metrics of the gateway, served on the admin listener. Per-route series are
//! created once at start and handed out as handles, so recording a request takes no lock
//! (atomics only, see [`LatencyHistogram`]) and allocates nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::exponential_buckets;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

use crate::route::RouteTable;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: String,
}

const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// The series of one route label.
#[derive(Clone)]
pub struct RouteSeries {
    by_class: [Counter; 5],
    latency: LatencyHistogram,
}

impl RouteSeries {
    pub fn record(&self, status: http::StatusCode, elapsed: Duration) {
        let class = usize::from(status.as_u16() / 100).clamp(1, 5) - 1;
        self.by_class[class].inc();
        self.latency.observe(elapsed);
    }
}

/// A latency histogram recorded with atomics alone. prometheus-client's own `Histogram` takes
/// a write lock on every observation, and every request of a route would queue on that lock.
#[derive(Clone, Debug)]
pub struct LatencyHistogram(Arc<Cells>);

#[derive(Debug)]
struct Cells {
    /// Upper bounds in seconds, ascending; `counts` has one more cell, for +Inf.
    bounds: Vec<f64>,
    counts: Vec<AtomicU64>,
    sum_nanos: AtomicU64,
}

impl LatencyHistogram {
    pub fn new(bounds: impl IntoIterator<Item = f64>) -> Self {
        let bounds: Vec<f64> = bounds.into_iter().collect();
        let counts = (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect();
        LatencyHistogram(Arc::new(Cells {
            bounds,
            counts,
            sum_nanos: AtomicU64::new(0),
        }))
    }

    pub fn observe(&self, elapsed: Duration) {
        let cells = &self.0;
        let seconds = elapsed.as_secs_f64();
        let bucket = cells.bounds.partition_point(|&bound| bound < seconds);
        cells.counts[bucket].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        cells.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }
}

impl TypedMetric for LatencyHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for LatencyHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let cells = &self.0;
        // Per-bucket counts; the encoder makes them cumulative. A scrape racing a request may
        // see its bucket but not yet its sum, which Prometheus tolerates.
        let buckets: Vec<(f64, u64)> = cells
            .bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::MAX))
            .zip(cells.counts.iter().map(|c| c.load(Ordering::Relaxed)))
            .collect();
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = cells.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

pub struct Metrics {
    registry: Registry,
    open_connections: Gauge<i64, std::sync::atomic::AtomicI64>,
    /// Requests that matched no route.
    pub unrouted: RouteSeries,
    /// Requests to the gateway's own `/_wxgate/` endpoints.
    pub endpoints: RouteSeries,
    routes: Vec<RouteSeries>,
}

impl Metrics {
    pub fn new(routes: &RouteTable) -> Arc<Self> {
        let mut registry = Registry::with_prefix("wxgate");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "Requests answered, by route and status class",
            requests.clone(),
        );
        let latency = Family::<RouteLabel, LatencyHistogram>::new_with_constructor(
            latency_histogram as fn() -> LatencyHistogram,
        );
        registry.register(
            "http_request_duration_seconds",
            "Time from request head to response head, by route",
            latency.clone(),
        );
        let open_connections = Gauge::<i64, std::sync::atomic::AtomicI64>::default();
        registry.register(
            "open_connections",
            "Client connections open now",
            open_connections.clone(),
        );
        let series = |label: &str| series_for(&requests, &latency, label);
        let unrouted = series("-");
        let endpoints = series("_wxgate");
        let mut by_index = Vec::new();
        for label in routes.labels_in_order() {
            by_index.push(series(label));
        }
        Arc::new(Self {
            registry,
            open_connections,
            unrouted,
            endpoints,
            routes: by_index,
        })
    }

    /// The series of route number `index` of the configuration.
    pub fn route(&self, index: usize) -> &RouteSeries {
        self.routes.get(index).unwrap_or(&self.unrouted)
    }

    pub fn connection_opened(&self) {
        self.open_connections.inc();
    }

    pub fn connection_closed(&self) {
        self.open_connections.dec();
    }

    /// Prometheus text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            tracing::warn!("metrics could not be encoded");
        }
        out
    }
}

fn series_for(
    requests: &Family<RequestLabels, Counter>,
    latency: &Family<RouteLabel, LatencyHistogram>,
    route: &str,
) -> RouteSeries {
    let by_class = STATUS_CLASSES.map(|status| {
        requests
            .get_or_create(&RequestLabels {
                route: route.to_owned(),
                status,
            })
            .clone()
    });
    let latency = latency
        .get_or_create(&RouteLabel {
            route: route.to_owned(),
        })
        .clone();
    RouteSeries { by_class, latency }
}

/// 0.5 ms to ~16 s: a proxied request's whole range, from cache hit to slow upstream.
fn latency_histogram() -> LatencyHistogram {
    LatencyHistogram::new(exponential_buckets(0.0005, 2.0, 16))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_histogram_encodes_cumulative_buckets_sum_and_count() {
        let mut registry = Registry::default();
        let histogram = LatencyHistogram::new([0.001, 0.01, 0.1]);
        registry.register("latency", "test", histogram.clone());
        for ms in [0, 1, 5, 50, 50, 2000] {
            histogram.observe(Duration::from_millis(ms));
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            "latency_bucket{le=\"0.001\"} 2",
            "latency_bucket{le=\"0.01\"} 3",
            "latency_bucket{le=\"0.1\"} 5",
            "latency_bucket{le=\"+Inf\"} 6",
            "latency_count 6",
            "latency_sum 2.106",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from\n{text}"
            );
        }
    }
}
