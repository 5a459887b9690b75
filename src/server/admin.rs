//! The admin listener: `/healthz` (the process answers), `/readyz` (it can serve: not
//! draining, and the session store answers), `/metrics` (Prometheus text). Kept off the main
//! listener so it is never public.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::{Request, Response, StatusCode};

use crate::body::Body;
use crate::http1::ClientBody;
use crate::metrics::Metrics;
use crate::pages;
use crate::session::StoreHealth;

pub struct Admin {
    pub metrics: Arc<Metrics>,
    /// False while draining, so load balancers stop sending traffic first.
    pub ready: Arc<AtomicBool>,
    /// The session store's health, when some route needs a login: a gateway that cannot
    /// read sessions refuses every protected request, so it should get none.
    pub store: Option<StoreHealth>,
}

impl Admin {
    pub async fn handle(&self, request: &Request<ClientBody>) -> Response<Body> {
        match request.uri().path() {
            "/healthz" => text(StatusCode::OK, "ok\n"),
            "/readyz" => self.readiness().await,
            "/metrics" => pages::build(
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                Bytes::from(self.metrics.encode()),
            ),
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
        }
    }

    async fn readiness(&self) -> Response<Body> {
        if !self.ready.load(Ordering::Relaxed) {
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: shutting down\n",
            );
        }
        if let Some(store) = &self.store {
            if let Err(e) = store.check().await {
                tracing::debug!(error = %e, "not ready: session store unavailable");
                return text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not ready: session store unavailable\n",
                );
            }
        }
        text(StatusCode::OK, "ready\n")
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    pages::build(
        status,
        "text/plain; charset=utf-8",
        Bytes::from_static(body.as_bytes()),
    )
}
