//! The ingress's client of the blob service: it stores large images before their job is
//! published (the claim check, docs/http-api.md, "Images by reference") and fetches results for
//! `GET /api/v1/job/{id}/result`.
//!
//! The PUT is the consumer's own call (`PUT {BLOB_SERVICE_URL}/blob/{job_id}`, the raw
//! bytes with their Content-Type), idempotent by job id, so a retried submit with the same
//! `Idempotency-Key`, or a consumer that stores a redelivered job again, is harmless.

use std::time::Duration;

use bytes::Bytes;
use reqwest::{header, StatusCode, Url};
use serde::Deserialize;

use imagejobs_core::ids::JobId;
use imagejobs_core::message::MAX_LOCATION_BYTES;
use imagejobs_core::trace::TraceContext;

/// How long a connection to the blob service may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a result fetch may take as a whole.
const FETCH_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a blob PUT did not store the image.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// Down, slow, 429 or 5xx: worth a retry later (503 with `Retry-After`).
    #[error("the blob service is unavailable: {0}")]
    Unavailable(String),
    /// Any other answer: the blob service refused the image or answered nonsense (502).
    #[error("the blob service refused the image: {0}")]
    Refused(String),
}

/// The blob service, as the ingress uses it; a cheap clone.
#[derive(Clone)]
pub struct BlobService {
    http: reqwest::Client,
    base: String,
    put_timeout: Duration,
}

#[derive(Deserialize)]
struct Stored {
    payload_location: String,
}

impl BlobService {
    /// A client of the blob service at `base` (`BLOB_SERVICE_URL`), trusting `ca_pem` for
    /// `https://` besides the system's roots.
    pub fn new(base: &Url, ca_pem: Option<&[u8]>, put_timeout: Duration) -> anyhow::Result<Self> {
        imagejobs_core::tls::install_crypto();
        let mut builder = reqwest::Client::builder().connect_timeout(CONNECT_TIMEOUT);
        if let Some(pem) = ca_pem {
            builder = builder.tls_certs_merge(reqwest::Certificate::from_pem_bundle(pem)?);
        }
        Ok(BlobService {
            http: builder.build()?,
            base: base.as_str().trim_end_matches('/').to_owned(),
            put_timeout,
        })
    }

    /// Stores `bytes` as job `id`'s image; the location the blob service answered. The
    /// whole call, answer included, is bounded by `BLOB_PUT_TIMEOUT_MS`. `bytes` is shared,
    /// not copied: the request body is the buffer the submit was read into.
    pub async fn put(
        &self,
        id: JobId,
        bytes: Bytes,
        content_type: &str,
        trace: &TraceContext,
    ) -> Result<String, BlobError> {
        let url = format!("{}/blob/{id}", self.base);
        let call = async {
            let resp = self
                .http
                .put(&url)
                .header(header::CONTENT_TYPE, content_type)
                .header("traceparent", trace.parent.to_string())
                .body(bytes)
                .send()
                .await
                .map_err(|e| BlobError::Unavailable(describe(&e)))?;
            let status = resp.status();
            if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
                return Err(BlobError::Unavailable(format!("it answered {status}")));
            }
            if !status.is_success() {
                return Err(BlobError::Refused(format!("it answered {status}")));
            }
            let body = resp
                .bytes()
                .await
                .map_err(|e| BlobError::Unavailable(describe(&e)))?;
            let stored: Stored = serde_json::from_slice(&body)
                .map_err(|_| BlobError::Refused(format!("its {status} had no payload_location")))?;
            if stored.payload_location.is_empty()
                || stored.payload_location.len() > MAX_LOCATION_BYTES
            {
                return Err(BlobError::Refused(format!(
                    "its payload_location is empty or over {MAX_LOCATION_BYTES} bytes"
                )));
            }
            Ok(stored.payload_location)
        };
        tokio::time::timeout(self.put_timeout, call)
            .await
            .unwrap_or_else(|_| {
                Err(BlobError::Unavailable(format!(
                    "no answer within {:?}",
                    self.put_timeout
                )))
            })
    }

    /// `location` when it is an absolute URL, else the blob service's URL + it.
    pub fn url_of(&self, location: &str) -> String {
        if location.starts_with("http://") || location.starts_with("https://") {
            location.to_owned()
        } else {
            format!("{}/{}", self.base, location.trim_start_matches('/'))
        }
    }

    /// GETs `url` (a result), bounded as a whole by [`FETCH_TIMEOUT`] per read.
    pub async fn fetch(&self, url: &str) -> reqwest::Result<reqwest::Response> {
        self.http.get(url).timeout(FETCH_TIMEOUT).send().await
    }

    /// The origin (`scheme://host:port`) of the blob service, for the dashboard's CSP when
    /// results are redirected there.
    pub fn origin(&self) -> Option<String> {
        let url = Url::parse(&self.base).ok()?;
        let host = url.host_str()?;
        Some(match url.port() {
            Some(port) => format!("{}://{host}:{port}", url.scheme()),
            None => format!("{}://{host}", url.scheme()),
        })
    }
}

/// An error's message without the URL reqwest puts in it (the blob service's address is
/// logged, not sent to clients).
fn describe(e: &reqwest::Error) -> String {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else if e.is_body() || e.is_decode() {
        "broke off its answer"
    } else {
        "failed"
    };
    what.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(base: &str) -> BlobService {
        BlobService::new(&Url::parse(base).unwrap(), None, Duration::from_millis(200)).unwrap()
    }

    #[test]
    fn locations_and_origin() {
        let s = service("http://127.0.0.1:8081/api/v1/");
        assert_eq!(s.url_of("blob/x"), "http://127.0.0.1:8081/api/v1/blob/x");
        assert_eq!(s.url_of("/blob/x"), "http://127.0.0.1:8081/api/v1/blob/x");
        assert_eq!(s.url_of("https://cdn/x"), "https://cdn/x");
        assert_eq!(s.origin().as_deref(), Some("http://127.0.0.1:8081"));
    }

    /// Nothing listens: the PUT is unavailable (a 503 to the client), within its bound.
    #[tokio::test]
    async fn a_blob_service_that_is_down_is_unavailable() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let s = service(&format!("http://127.0.0.1:{port}/api/v1"));
        let started = std::time::Instant::now();
        let trace = TraceContext::continue_or_start(None, None);
        let e = s
            .put(JobId::new(), Bytes::from_static(b"x"), "image/png", &trace)
            .await
            .unwrap_err();
        assert!(matches!(e, BlobError::Unavailable(_)), "{e:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
