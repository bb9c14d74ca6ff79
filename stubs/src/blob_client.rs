//! The worker's client of the blob service: fetch an image from a payload location, store a
//! thumbnail as `{BLOB_SERVICE_URL}/blob/{id}`.
//!
//! One shared `reqwest::Client` (its connection pool is the point). Calls carry
//! [`INTERNAL_HEADER`] so that this process's own blob service neither injects faults into
//! them nor counts them as the pipeline's requests. Against another blob service, short blips
//! are retried: at most [`ATTEMPTS`] tries for connection errors, timeouts, 429 and 5xx,
//! waiting 50 ms, then 100 ms, …, at most 1 s between tries; then the job fails with the last
//! error.

use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use reqwest::{header, RequestBuilder, Response, StatusCode, Url};
use serde::Deserialize;

use crate::blob::{blob_url, MAX_BLOB_BYTES};
use crate::faults::INTERNAL_HEADER;

/// Tries per call, the first included.
pub const ATTEMPTS: u32 = 4;
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// Timeout of one call, connection included.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A cheap `Clone` handle on the shared HTTP client and the blob service's base URL.
#[derive(Clone, Debug)]
pub(crate) struct BlobClient {
    http: reqwest::Client,
    base: Url,
}

#[derive(Deserialize)]
struct StoredAnswer {
    payload_location: String,
}

impl BlobClient {
    /// `ca_pem`: a private CA to trust for an `https://` blob service.
    pub(crate) fn new(base: Url, ca_pem: Option<&[u8]>) -> anyhow::Result<Self> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(CALL_TIMEOUT);
        if let Some(pem) = ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem).context("SERVICE_CA_FILE")?;
            builder = builder.tls_certs_merge(certs);
        }
        let http = builder.build().context("building the HTTP client")?;
        Ok(Self { http, base })
    }

    /// The bytes at `location` (an image's payload location), at most [`MAX_BLOB_BYTES`].
    pub(crate) async fn fetch(&self, location: &Url) -> anyhow::Result<Bytes> {
        let response = self
            .send(|| self.http.get(location.clone()))
            .await
            .with_context(|| format!("fetching {location}"))?;
        read_capped(response, MAX_BLOB_BYTES)
            .await
            .with_context(|| format!("reading {location}"))
    }

    /// Stores `data` as blob `id` and returns the payload location the service answers.
    pub(crate) async fn store(
        &self,
        id: &str,
        data: Bytes,
        content_type: &'static str,
    ) -> anyhow::Result<String> {
        let url = blob_url(&self.base, id)
            .ok_or_else(|| anyhow!("blob service URL {} cannot take a path", self.base))?;
        let response = self
            .send(|| {
                self.http
                    .put(url.clone())
                    .header(header::CONTENT_TYPE, content_type)
                    .body(data.clone())
            })
            .await
            .with_context(|| format!("storing {url}"))?;
        let answer: StoredAnswer = response
            .json()
            .await
            .with_context(|| format!("reading the answer of PUT {url}"))?;
        Ok(answer.payload_location)
    }

    /// Sends the request `build` makes, retrying transient failures as the module says; any
    /// other non-success status is an error at once.
    async fn send(&self, build: impl Fn() -> RequestBuilder) -> anyhow::Result<Response> {
        let mut backoff = FIRST_BACKOFF;
        let mut attempt = 1;
        loop {
            let outcome = build().header(INTERNAL_HEADER, "worker").send().await;
            let transient = match outcome {
                Ok(response) if response.status().is_success() => return Ok(response),
                Ok(response) => {
                    let status = response.status();
                    if !is_transient(status) {
                        bail!("HTTP {status}");
                    }
                    anyhow!("HTTP {status}")
                }
                Err(error) if error.is_connect() || error.is_timeout() || error.is_request() => {
                    anyhow::Error::new(error)
                }
                Err(error) => return Err(error.into()),
            };
            if attempt >= ATTEMPTS {
                return Err(transient.context(format!("gave up after {ATTEMPTS} attempts")));
            }
            tracing::debug!(attempt, error = %transient, "blob service call failed; retrying");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
            attempt += 1;
        }
    }
}

fn is_transient(status: StatusCode) -> bool {
    status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error()
}

/// The whole body, refusing (without buffering) anything over `cap` bytes.
async fn read_capped(mut response: Response, cap: usize) -> anyhow::Result<Bytes> {
    if response
        .content_length()
        .is_some_and(|length| length > cap as u64)
    {
        bail!("body is larger than {cap} bytes");
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > cap {
            bail!("body is larger than {cap} bytes");
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(body))
}
