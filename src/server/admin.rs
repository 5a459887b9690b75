//! The admin listener: `/healthz` (the process answers), `/readyz` (it can serve),
//! `/metrics` (Prometheus text). Kept off the main listener so it is never public.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http::header::CONTENT_TYPE;
use http::{HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::body::{Body, full};
use crate::metrics::Metrics;

pub struct Admin {
    pub metrics: Arc<Metrics>,
    /// False while draining, so load balancers stop sending traffic first.
    pub ready: Arc<AtomicBool>,
}

impl Admin {
    pub fn handle(&self, request: &Request<Incoming>) -> Response<Body> {
        match request.uri().path() {
            "/healthz" => text(StatusCode::OK, "ok\n"),
            "/readyz" if self.ready.load(Ordering::Relaxed) => text(StatusCode::OK, "ready\n"),
            "/readyz" => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: shutting down\n",
            ),
            "/metrics" => {
                let mut response = Response::new(full(self.metrics.encode()));
                response.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static(
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    ),
                );
                response
            }
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
        }
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
