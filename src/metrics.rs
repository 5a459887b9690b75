//! Prometheus metrics of the gateway, served on the admin listener. Per-route series are
//! created once at start and handed out as handles, so recording a request takes no lock
//! on a shared map and allocates nothing.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
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
    latency: Histogram,
}

impl RouteSeries {
    pub fn record(&self, status: http::StatusCode, elapsed: Duration) {
        let class = usize::from(status.as_u16() / 100).clamp(1, 5) - 1;
        self.by_class[class].inc();
        self.latency.observe(elapsed.as_secs_f64());
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
        let latency = Family::<RouteLabel, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
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
    latency: &Family<RouteLabel, Histogram>,
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
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}
