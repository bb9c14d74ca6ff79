//! A minimal HTTP sink for the raw pipeline ceiling: `PUT /blob/{id}` takes the body and
//! answers `{"payload_location": ...}`, as a blob service must at least, with nothing else
//! (no store, no stats, no fault knobs). It runs in the bench process, like the stubs.

use std::net::SocketAddr;

use anyhow::Context;
use axum::body::Bytes;
use axum::extract::Path;
use axum::routing::put;
use axum::{Json, Router};
use tokio_util::sync::CancellationToken;

pub struct HttpSink {
    /// Base URL, e.g. `http://127.0.0.1:PORT/api/v1`.
    pub url: String,
    stop: CancellationToken,
}

impl HttpSink {
    pub async fn start() -> anyhow::Result<HttpSink> {
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .context("binding the HTTP sink")?;
        let addr = listener.local_addr()?;
        let app = Router::new()
            .route("/api/v1/blob/{id}", put(store))
            .layer(axum::extract::DefaultBodyLimit::disable());
        let stop = CancellationToken::new();
        let until = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(until.cancelled_owned())
                .await;
        });
        Ok(HttpSink {
            url: format!("http://{addr}/api/v1"),
            stop,
        })
    }

    pub fn stop(self) {
        self.stop.cancel();
    }
}

async fn store(Path(id): Path<String>, body: Bytes) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "payload_location": format!("sink://{id}/{}", body.len()) }))
}
