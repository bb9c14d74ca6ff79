//! imagejobs-serve: serving an axum `Router` on a listener of the public kind, for the
//! ingress and the stub services alike.
//!
//! - HTTP, or HTTPS with a certificate and key from PEM files (rustls with the `ring`
//!   provider).
//! - A client has [`Limits::header_timeout`] to send a request's head, counted from the
//!   connection's start or the end of the previous response (so it also closes idle
//!   keep-alive connections), and the TLS handshake gets as long.
//! - On shutdown the listener stops accepting, every connection is asked to finish its
//!   request and close, and after [`Limits::drain_timeout`] whatever is left is dropped:
//!   a slow client cannot keep the process alive.
//!
//! Bodies are the handlers' business (the ingress reads them with a deadline), and so is a
//! cap on requests in flight ([`InFlight`], a middleware for the router).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What a connection may take.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// To send a request's head (and to finish a TLS handshake), from the connection's
    /// start or the end of the previous response.
    pub header_timeout: Duration,
    /// After shutdown, for the requests in flight to finish.
    pub drain_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(30),
        }
    }
}

/// A TLS server configuration from a PEM certificate chain and a PEM private key.
pub fn tls_acceptor(cert_file: &Path, key_file: &Path) -> anyhow::Result<TlsAcceptor> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
        .with_context(|| format!("reading {}", cert_file.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing the certificates in {}", cert_file.display()))?;
    anyhow::ensure!(
        !certs.is_empty(),
        "{} holds no certificate",
        cert_file.display()
    );
    let key = PrivateKeyDer::from_pem_file(key_file)
        .with_context(|| format!("reading the private key in {}", key_file.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("the TLS certificate and key do not go together")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Serves `router` on `listener` until `shutdown`, then drains (see the crate docs).
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    router: Router,
    limits: Limits,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let connections = TaskTracker::new();
    // Cancelled when the drain time is over: the connections left are dropped.
    let abort = CancellationToken::new();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors, say: wait a little rather than spin.
                tracing::warn!(error = %e, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let (router, tls, shutdown, abort) =
            (router.clone(), tls.clone(), shutdown.clone(), abort.clone());
        connections.spawn(async move {
            match tls {
                None => connection(tcp, router, limits, &shutdown, &abort).await,
                Some(tls) => {
                    let handshake = tokio::time::timeout(limits.header_timeout, tls.accept(tcp));
                    match handshake.await {
                        Ok(Ok(stream)) => {
                            connection(stream, router, limits, &shutdown, &abort).await
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
        });
    }
    drop(listener);
    connections.close();
    if tokio::time::timeout(limits.drain_timeout, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            left = connections.len(),
            "drain timeout: closing the connections still open"
        );
        abort.cancel();
        connections.wait().await;
    }
    Ok(())
}

async fn connection<S>(
    stream: S,
    router: Router,
    limits: Limits,
    shutdown: &CancellationToken,
    abort: &CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = TowerToHyperService::new(router);
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(conn);
    let done = tokio::select! {
        r = conn.as_mut() => Some(r),
        _ = shutdown.cancelled() => None,
        _ = abort.cancelled() => return,
    };
    let result = match done {
        Some(r) => r,
        None => {
            conn.as_mut().graceful_shutdown();
            tokio::select! {
                r = conn.as_mut() => r,
                _ = abort.cancelled() => return,
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// A cap on requests in flight: beyond it a request is answered 503 with `Retry-After`
/// at once, in the API's error shape (the seed's "throttle"), never queued.
#[derive(Clone)]
pub struct InFlight {
    permits: Arc<Semaphore>,
}

impl InFlight {
    pub fn new(max: usize) -> Self {
        InFlight {
            permits: Arc::new(Semaphore::new(max.max(1))),
        }
    }

    /// Requests in flight now.
    pub fn in_flight(&self, max: usize) -> usize {
        max.saturating_sub(self.permits.available_permits())
    }

    /// The middleware: `axum::middleware::from_fn_with_state(in_flight, InFlight::limit)`.
    pub async fn limit(
        axum::extract::State(this): axum::extract::State<InFlight>,
        request: Request,
        next: Next,
    ) -> Response {
        match this.permits.clone().try_acquire_owned() {
            Ok(permit) => {
                let response = next.run(request).await;
                drop(permit);
                response
            }
            Err(_) => overloaded(),
        }
    }
}

/// Marks a response as the [`InFlight`] cap's 503 (for the caller's metrics).
#[derive(Clone, Copy, Debug)]
pub struct Overloaded;

fn overloaded() -> Response {
    let body = axum::Json(serde_json::json!({
        "error": "service unavailable",
        "code": 503,
        "details": "too many requests in flight; retry later",
    }));
    let mut resp = (StatusCode::SERVICE_UNAVAILABLE, body).into_response();
    resp.extensions_mut().insert(Overloaded);
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    resp
}

/// The address a listener is bound to, for logs.
pub fn local_addr(listener: &TcpListener) -> SocketAddr {
    listener
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
}
