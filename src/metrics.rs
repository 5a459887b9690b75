//! Prometheus metrics of the gateway, served on the admin listener. Per-route series are
//! created once at start and handed out as handles, so recording a request takes no lock
//! on a shared map (atomics only, see [`LatencyHistogram`]) and allocates nothing. Rarer
//! events (logins, WeChat calls, store calls) go through labelled families.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use futures_util::future::BoxFuture;

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::exponential_buckets;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

use crate::route::RouteTable;
use crate::session::{Session, SessionStore, StorageKey, StoreError};

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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ScopeLabel {
    scope: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WeChatCallLabels {
    endpoint: &'static str,
    errcode: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabel {
    endpoint: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabel {
    op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WhatLabel {
    what: &'static str,
}

/// Logins, profile refreshes and the session count, as the login flow records them.
#[derive(Clone)]
pub struct LoginMetrics {
    started: Family<ScopeLabel, Counter>,
    completed: Family<ScopeLabel, Counter>,
    failed: Family<ReasonLabel, Counter>,
    refreshes: Family<ResultLabel, Counter>,
    rate_limited: Family<WhatLabel, Counter>,
    repeats: Family<ResultLabel, Counter>,
    sessions_active: Gauge,
}

impl LoginMetrics {
    /// A redirect to WeChat's authorize page (`snsapi_base` or `snsapi_userinfo`).
    pub fn started(&self, scope: &'static str) {
        self.started.get_or_create(&ScopeLabel { scope }).inc();
    }

    /// A callback that created a session of `scope`.
    pub fn completed(&self, scope: &'static str) {
        self.completed.get_or_create(&ScopeLabel { scope }).inc();
    }

    /// A callback that did not: `declined`, `state`, `bad_code`, `wechat_unavailable`,
    /// `wechat_timeout`, `wechat_error`, `store`.
    pub fn failed(&self, reason: &'static str) {
        self.failed.get_or_create(&ReasonLabel { reason }).inc();
    }

    /// A background profile refresh ended: `ok`, `dead_grant` or `failed`.
    pub fn refreshed(&self, result: &'static str) {
        self.refreshes.get_or_create(&ResultLabel { result }).inc();
    }

    /// A request turned away by a login limit: `callback` (a client with too many refused
    /// callbacks) or `wechat` (the appid's WeChat API budget spent).
    pub fn rate_limited(&self, what: &'static str) {
        self.rate_limited.get_or_create(&WhatLabel { what }).inc();
    }

    /// A later load of a callback another load already claimed (WeChat's double load):
    /// `settled`, answered with the first load's outcome, or `spent`, whose outcome is gone.
    pub fn repeated(&self, result: &'static str) {
        self.repeats.get_or_create(&ResultLabel { result }).inc();
    }

    pub fn set_sessions_active(&self, count: u64) {
        self.sessions_active
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }
}

/// Calls to WeChat's API, one per attempt (a retry counts again).
#[derive(Clone)]
pub struct WeChatMetrics {
    calls: Family<WeChatCallLabels, Counter>,
    latency: Family<EndpointLabel, LatencyHistogram>,
}

impl WeChatMetrics {
    /// `outcome`: `"0"` for success, the errcode WeChat answered, or `timeout`,
    /// `http_4xx`/`http_5xx`, `transport`, `malformed`.
    pub fn call(&self, endpoint: &'static str, outcome: String, elapsed: Duration) {
        self.calls
            .get_or_create(&WeChatCallLabels {
                endpoint,
                errcode: outcome,
            })
            .inc();
        self.latency
            .get_or_create(&EndpointLabel { endpoint })
            .observe(elapsed);
    }

    /// What a WeChat client reports each call to: these families.
    pub fn observer(&self) -> crate::wechat::CallObserver {
        let metrics = self.clone();
        std::sync::Arc::new(move |endpoint, outcome, elapsed| {
            let label = outcome.map_or_else(crate::wechat::WeChatError::metric_label, |()| {
                "0".to_owned()
            });
            metrics.call(endpoint.path(), label, elapsed);
        })
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FetchLabels {
    what: &'static str,
    result: String,
}

/// The JS-SDK: token and ticket fetches from WeChat, and signature requests.
#[derive(Clone)]
pub struct JssdkMetrics {
    fetches: Family<FetchLabels, Counter>,
    signatures: Family<ResultLabel, Counter>,
}

impl JssdkMetrics {
    /// A fetch of the basic `token` or the jsapi `ticket`: `ok`, or the errcode WeChat
    /// answered, `timeout`, `http_5xx`, `transport`, `malformed`.
    pub fn fetched(&self, what: &'static str, result: String) {
        self.fetches
            .get_or_create(&FetchLabels { what, result })
            .inc();
    }

    /// A signature request: `ok`, `refused` (a foreign or malformed URL), `failed` (no ticket).
    pub fn signed(&self, result: &'static str) {
        self.signatures.get_or_create(&ResultLabel { result }).inc();
    }
}

/// Calls to the session store, by operation.
#[derive(Clone)]
pub struct StoreMetrics {
    errors: Family<OpLabel, Counter>,
    latency: Family<OpLabel, LatencyHistogram>,
}

impl StoreMetrics {
    pub fn call(&self, op: &'static str, failed: bool, elapsed: Duration) {
        if failed {
            self.errors.get_or_create(&OpLabel { op }).inc();
        }
        self.latency.get_or_create(&OpLabel { op }).observe(elapsed);
    }
}

pub struct Metrics {
    registry: Registry,
    open_connections: Gauge<i64, std::sync::atomic::AtomicI64>,
    parked_connections: Gauge<i64, std::sync::atomic::AtomicI64>,
    pub login: LoginMetrics,
    pub wechat: WeChatMetrics,
    pub store: StoreMetrics,
    pub jssdk: JssdkMetrics,
    reloads: Family<ResultLabel, Counter>,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabel, LatencyHistogram>,
    /// Requests that matched no route.
    pub unrouted: RouteSeries,
    /// Requests to the gateway's own `/_wxgate/` endpoints.
    pub endpoints: RouteSeries,
}

/// The series of every route of one configuration, by route index. A reload builds a new
/// set from the same families, so a route that stays keeps counting where it was.
pub struct RouteMetrics {
    routes: Vec<RouteSeries>,
    unrouted: RouteSeries,
}

impl RouteMetrics {
    /// The series of route number `index` of the configuration.
    pub fn route(&self, index: usize) -> &RouteSeries {
        self.routes.get(index).unwrap_or(&self.unrouted)
    }
}

impl Metrics {
    pub fn new() -> Arc<Self> {
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
        let parked_connections = Gauge::<i64, std::sync::atomic::AtomicI64>::default();
        registry.register(
            "parked_connections",
            "Idle keep-alive client connections holding no HTTP state, of the open ones",
            parked_connections.clone(),
        );
        let login = LoginMetrics {
            started: registered(
                &mut registry,
                "logins_started",
                "Redirects to WeChat's authorize page, by scope",
            ),
            completed: registered(
                &mut registry,
                "logins_completed",
                "Callbacks that created a session, by scope",
            ),
            failed: registered(
                &mut registry,
                "logins_failed",
                "Callbacks that did not create a session, by reason",
            ),
            refreshes: registered(
                &mut registry,
                "profile_refreshes",
                "Background profile refreshes through the refresh_token, by result",
            ),
            rate_limited: registered(
                &mut registry,
                "rate_limited",
                "Requests refused by a rate limit, by what was limited",
            ),
            repeats: registered(
                &mut registry,
                "callback_repeats",
                "Later loads of a callback another load already claimed (WeChat's double load), by result: settled (the first load's outcome again) or spent",
            ),
            sessions_active: Gauge::default(),
        };
        registry.register(
            "sessions_active",
            "Live sessions in the store (sampled)",
            login.sessions_active.clone(),
        );
        let wechat = WeChatMetrics {
            calls: registered(
                &mut registry,
                "wechat_calls",
                "Calls to WeChat's API by endpoint and errcode (0: success; timeout, http_5xx, transport, malformed)",
            ),
            latency: Family::new_with_constructor(latency_histogram as fn() -> LatencyHistogram),
        };
        registry.register(
            "wechat_call_duration_seconds",
            "Time of one call to WeChat's API, by endpoint",
            wechat.latency.clone(),
        );
        let store = StoreMetrics {
            errors: registered(
                &mut registry,
                "session_store_errors",
                "Session store calls that failed, by operation",
            ),
            latency: Family::new_with_constructor(store_histogram as fn() -> LatencyHistogram),
        };
        registry.register(
            "session_store_duration_seconds",
            "Time of one session store call, by operation",
            store.latency.clone(),
        );
        let jssdk = JssdkMetrics {
            fetches: registered(
                &mut registry,
                "jssdk_fetches",
                "Fetches of the JS-SDK's basic access_token (what=token) and jsapi_ticket (what=ticket) from WeChat, by result (ok, or the errcode, timeout, http_5xx, transport, malformed)",
            ),
            signatures: registered(
                &mut registry,
                "jssdk_signatures",
                "wx.config signature requests, by result (ok, refused, failed)",
            ),
        };
        for what in ["token", "ticket"] {
            let _ = jssdk.fetches.get_or_create(&FetchLabels {
                what,
                result: "ok".to_owned(),
            });
        }
        for result in ["ok", "refused", "failed"] {
            let _ = jssdk.signatures.get_or_create(&ResultLabel { result });
        }
        let reloads = registered(
            &mut registry,
            "config_reloads",
            "Configuration reloads, by result (ok, refused)",
        );
        zero_series(&login, &wechat, &store, &reloads);
        let unrouted = series_for(&requests, &latency, "-");
        let endpoints = series_for(&requests, &latency, "_wxgate");
        Arc::new(Self {
            registry,
            open_connections,
            parked_connections,
            login,
            wechat,
            store,
            jssdk,
            reloads,
            requests,
            latency,
            unrouted,
            endpoints,
        })
    }

    /// The series of `routes`, created now so that recording a request takes no lock.
    pub fn for_routes(&self, routes: &RouteTable) -> RouteMetrics {
        RouteMetrics {
            routes: routes
                .labels_in_order()
                .into_iter()
                .map(|label| series_for(&self.requests, &self.latency, label))
                .collect(),
            unrouted: self.unrouted.clone(),
        }
    }

    /// A configuration reload: `ok` or `refused`.
    pub fn reloaded(&self, result: &'static str) {
        self.reloads.get_or_create(&ResultLabel { result }).inc();
    }

    pub fn connection_opened(&self) {
        self.open_connections.inc();
    }

    pub fn connection_closed(&self) {
        self.open_connections.dec();
    }

    pub fn connection_parked(&self) {
        self.parked_connections.inc();
    }

    pub fn connection_resumed(&self) {
        self.parked_connections.dec();
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

/// Creates the series dashboards expect from the start, at zero: a family with no series is
/// not exposed at all, and a rate over a series that appears late misses its first events.
fn zero_series(
    login: &LoginMetrics,
    wechat: &WeChatMetrics,
    store: &StoreMetrics,
    reloads: &Family<ResultLabel, Counter>,
) {
    for scope in ["snsapi_base", "snsapi_userinfo"] {
        let _ = login.started.get_or_create(&ScopeLabel { scope });
        let _ = login.completed.get_or_create(&ScopeLabel { scope });
    }
    for reason in [
        "declined",
        "state",
        "bad_code",
        "wechat_unavailable",
        "wechat_timeout",
        "wechat_error",
        "store",
    ] {
        let _ = login.failed.get_or_create(&ReasonLabel { reason });
    }
    for result in ["ok", "dead_grant", "failed"] {
        let _ = login.refreshes.get_or_create(&ResultLabel { result });
    }
    for endpoint in [
        "/sns/oauth2/access_token",
        "/sns/oauth2/refresh_token",
        "/sns/userinfo",
        "/sns/auth",
    ] {
        let _ = wechat.calls.get_or_create(&WeChatCallLabels {
            endpoint,
            errcode: "0".to_owned(),
        });
        let _ = wechat.latency.get_or_create(&EndpointLabel { endpoint });
    }
    for op in ["get", "put", "touch", "delete"] {
        let _ = store.errors.get_or_create(&OpLabel { op });
        let _ = store.latency.get_or_create(&OpLabel { op });
    }
    for what in ["login", "callback"] {
        let _ = login.rate_limited.get_or_create(&WhatLabel { what });
    }
    for result in ["settled", "spent"] {
        let _ = login.repeats.get_or_create(&ResultLabel { result });
    }
    for result in ["ok", "refused"] {
        let _ = reloads.get_or_create(&ResultLabel { result });
    }
}

/// A counter family registered under `name` (exposed as `wxgate_<name>_total`).
fn registered<L>(registry: &mut Registry, name: &str, help: &str) -> Family<L, Counter>
where
    L: Clone + std::hash::Hash + Eq + EncodeLabelSet + std::fmt::Debug + Send + Sync + 'static,
{
    let family = Family::<L, Counter>::default();
    registry.register(name, help, family.clone());
    family
}

/// 50 µs to ~1.6 s: an in-memory store answers in microseconds, Redis in a millisecond.
fn store_histogram() -> LatencyHistogram {
    LatencyHistogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

/// 0.5 ms to ~16 s: a proxied request's whole range, from cache hit to slow upstream.
fn latency_histogram() -> LatencyHistogram {
    LatencyHistogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// A session store that times every call into [`StoreMetrics`]; the gateway puts it around
/// whichever backend is configured.
pub struct MeteredStore {
    inner: Arc<dyn SessionStore>,
    metrics: StoreMetrics,
}

impl MeteredStore {
    pub fn new(inner: Arc<dyn SessionStore>, metrics: StoreMetrics) -> Self {
        MeteredStore { inner, metrics }
    }

    fn timed<'a, T: Send + 'a>(
        &'a self,
        op: &'static str,
        call: BoxFuture<'a, Result<T, StoreError>>,
    ) -> BoxFuture<'a, Result<T, StoreError>> {
        Box::pin(async move {
            let started = std::time::Instant::now();
            let result = call.await;
            self.metrics.call(op, result.is_err(), started.elapsed());
            result
        })
    }
}

impl SessionStore for MeteredStore {
    fn get<'a>(
        &'a self,
        key: &'a StorageKey,
    ) -> BoxFuture<'a, Result<Option<Session>, StoreError>> {
        self.timed("get", self.inner.get(key))
    }

    fn put<'a>(
        &'a self,
        key: &'a StorageKey,
        session: &'a Session,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.timed("put", self.inner.put(key, session))
    }

    fn touch<'a>(
        &'a self,
        key: &'a StorageKey,
        last_seen: SystemTime,
        expires_at: SystemTime,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        self.timed("touch", self.inner.touch(key, last_seen, expires_at))
    }

    fn delete<'a>(&'a self, key: &'a StorageKey) -> BoxFuture<'a, Result<bool, StoreError>> {
        self.timed("delete", self.inner.delete(key))
    }

    fn delete_user<'a>(
        &'a self,
        appid: &'a str,
        openid: &'a str,
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        self.timed("delete_user", self.inner.delete_user(appid, openid))
    }

    fn count(&self) -> BoxFuture<'_, Result<u64, StoreError>> {
        self.timed("count", self.inner.count())
    }

    fn sweep_expired(&self) -> BoxFuture<'_, Result<u64, StoreError>> {
        self.timed("sweep", self.inner.sweep_expired())
    }

    fn claim_refresh<'a>(
        &'a self,
        key: &'a StorageKey,
        lease: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        self.timed("claim_refresh", self.inner.claim_refresh(key, lease))
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        self.timed("ping", self.inner.ping())
    }

    fn get_value<'a>(
        &'a self,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<Vec<u8>>, StoreError>> {
        self.timed("get_value", self.inner.get_value(name))
    }

    fn put_value<'a>(
        &'a self,
        name: &'a str,
        value: &'a [u8],
        expires_at: SystemTime,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.timed("put_value", self.inner.put_value(name, value, expires_at))
    }

    fn claim_lease<'a>(
        &'a self,
        name: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        self.timed("claim_lease", self.inner.claim_lease(name, lease))
    }

    fn shared_values(&self) -> Option<&dyn crate::session::SharedValues> {
        self.inner.shared_values()
    }
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
