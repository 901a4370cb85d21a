//! The HTTP listener: `/metrics` (Prometheus), `/healthz` (process up), `/readyz` (MQTT
//! listeners bound and the store writing: 503 with the reason while it cannot).

use crate::health::Health;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::watch;

#[derive(Clone)]
struct Http {
    metrics: PrometheusHandle,
    ready: Arc<AtomicBool>,
    health: Arc<Health>,
}

pub async fn start(
    addr: SocketAddr,
    metrics: PrometheusHandle,
    ready: Arc<AtomicBool>,
    health: Arc<Health>,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(render))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(Http {
            metrics,
            ready,
            health,
        });
    tokio::spawn(async move {
        let shutdown = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::warn!(error = %e, "http listener stopped");
        }
    });
    Ok(bound)
}

async fn render(State(h): State<Http>) -> String {
    h.metrics.render()
}

async fn readyz(State(h): State<Http>) -> (StatusCode, String) {
    if !h.ready.load(Ordering::Acquire) {
        return (StatusCode::SERVICE_UNAVAILABLE, "not ready\n".into());
    }
    match h.health.store_problem() {
        None => (StatusCode::OK, "ready\n".into()),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: store cannot write: {reason}\n"),
        ),
    }
}
