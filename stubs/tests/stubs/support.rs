//! Starting stubs on port 0, a shared HTTP client, test images, and polling with a deadline.

use std::future::Future;
use std::io::Cursor;
use std::time::Duration;

use image::{DynamicImage, ImageBuffer, ImageFormat, Rgb};
use imagejobs_stubs::{StubConfig, Stubs};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Stubs running for one test; stopped when dropped.
pub struct TestStubs {
    pub stubs: Stubs,
    pub http: reqwest::Client,
    shutdown: CancellationToken,
}

impl Drop for TestStubs {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl TestStubs {
    pub fn worker(&self, path: &str) -> String {
        format!("{}{path}", self.stubs.worker_url)
    }

    pub fn blob(&self, path: &str) -> String {
        format!("{}{path}", self.stubs.blob_url)
    }

    /// PUTs `bytes` as blob `id` and returns the payload location.
    pub async fn put_blob(&self, id: &str, bytes: Vec<u8>, content_type: &str) -> String {
        let response = self
            .http
            .put(self.blob(&format!("/blob/{id}")))
            .header("content-type", content_type)
            .body(bytes)
            .send()
            .await
            .expect("PUT blob");
        assert!(
            response.status().is_success(),
            "PUT blob: {}",
            response.status()
        );
        let body: serde_json::Value = response.json().await.expect("PUT answer");
        body["payload_location"]
            .as_str()
            .expect("payload_location")
            .to_owned()
    }

    /// POSTs a job for `payload_location` and returns the answer's status code and body.
    pub async fn post_job(&self, id: &str, payload_location: &str) -> (u16, serde_json::Value) {
        let response = self
            .http
            .post(self.worker("/job"))
            .json(&serde_json::json!({
                "id": id,
                "tenant_id": 1,
                "client_id": 2,
                "payload_location": payload_location,
                "md5": "d41d8cd98f00b204e9800998ecf8427e",
                "mime_type": "image/png",
            }))
            .send()
            .await
            .expect("POST job");
        let status = response.status().as_u16();
        (status, response.json().await.expect("JSON answer"))
    }

    /// The worker job's status answer.
    pub async fn job_status(&self, worker_id: &str) -> serde_json::Value {
        let response = self
            .http
            .get(self.worker(&format!("/job/{worker_id}/status")))
            .send()
            .await
            .expect("GET status");
        assert_eq!(response.status(), 200);
        response.json().await.expect("status answer")
    }
}

/// Starts stubs with `config` (ports 0 unless the test says otherwise).
pub async fn spawn(config: StubConfig) -> TestStubs {
    let shutdown = CancellationToken::new();
    let stubs = Stubs::start(config, shutdown.clone())
        .await
        .expect("stubs start");
    TestStubs {
        stubs,
        http: reqwest::Client::new(),
        shutdown,
    }
}

/// A `width`×`height` gradient encoded as PNG.
pub fn png(width: u32, height: u32) -> Vec<u8> {
    let image = ImageBuffer::from_fn(width, height, |x, y| {
        Rgb([(x % 256) as u8, (y % 256) as u8, ((x + y) % 256) as u8])
    });
    let mut out = Cursor::new(Vec::new());
    DynamicImage::ImageRgb8(image)
        .write_to(&mut out, ImageFormat::Png)
        .expect("encode PNG");
    out.into_inner()
}

/// Polls `check` every 20 ms until it returns `Some`, failing the test after `deadline`.
pub async fn eventually<T, F, Fut>(deadline: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let give_up = Instant::now() + deadline;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < give_up, "{what}: not within {deadline:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Asserts the seed's error shape with the given code.
pub fn assert_error_shape(body: &serde_json::Value, code: u16) {
    assert_eq!(body["code"], code, "{body}");
    assert!(body["error"].is_string(), "{body}");
    assert!(body["details"].is_string(), "{body}");
}
