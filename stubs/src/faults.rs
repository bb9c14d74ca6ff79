//! Fault injection: latency, injected 503s, failed jobs, how long jobs run, forced statuses,
//! and a failing or slow blob store (503s or hangs of blob PUTs only).
//!
//! The knobs start from [`StubConfig`] and can be changed while the stubs
//! serve, through a [`Faults`] handle: tests turn a fault on, watch the caller cope, and turn
//! it off again without restarting anything. Every knob is an atomic, so reading one on each
//! request costs nothing and no lock is ever held across an `.await`.
//!
//! Random decisions are a pure function of a seed and a key (the request's sequence number,
//! or the job id), so a seeded run makes the same decisions again, and a job keeps the same
//! fate however often it is submitted.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;
use crate::StubConfig;

/// Header the worker puts on its own calls to the blob service of the same process, so that
/// injected faults (meant for the pipeline under test) do not fail the worker's internal work
/// and do not count as the pipeline's requests.
pub const INTERNAL_HEADER: &str = "x-imagejobs-stub-internal";

/// Runtime-adjustable fault knobs; a cheap `Clone` handle shared by both services.
#[derive(Clone, Debug)]
pub struct Faults {
    inner: Arc<Knobs>,
}

#[derive(Debug)]
struct Knobs {
    latency_ms: AtomicU64,
    /// `f64` bits of the share of API requests answered 503.
    error_rate: AtomicU64,
    /// `f64` bits of the share of jobs that end FAILED.
    job_fail_rate: AtomicU64,
    running_ms: AtomicU64,
    skip_image_work: AtomicBool,
    /// 0 means "not forced".
    forced_status: AtomicU16,
    /// Jobs still to be hung (kept RUNNING for `hang_ms` instead of `running_ms`).
    hang_left: AtomicU64,
    hang_ms: AtomicU64,
    /// `f64` bits of the share of blob PUTs answered 503 (the blob service only).
    blob_error_rate: AtomicU64,
    /// How long each blob PUT waits before it is handled (the blob service only).
    blob_hang_ms: AtomicU64,
    seed: u64,
    /// Sequence number of API requests, the key of the 503 decision.
    request_seq: AtomicU64,
    /// Sequence number of external blob PUTs, the key of the blob 503 decision.
    blob_seq: AtomicU64,
    /// Faults injected, by kind (`imagejobs_stub_faults_injected_total`).
    injected: Family<KindLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct KindLabels {
    kind: &'static str,
}

impl Faults {
    /// Knobs as configured; without a seed a random one is drawn.
    pub fn new(config: &StubConfig) -> Self {
        let faults = Self {
            inner: Arc::new(Knobs {
                latency_ms: AtomicU64::new(config.latency_ms),
                error_rate: AtomicU64::new(clamp_rate(config.error_rate).to_bits()),
                job_fail_rate: AtomicU64::new(clamp_rate(config.job_fail_rate).to_bits()),
                running_ms: AtomicU64::new(config.running_ms),
                skip_image_work: AtomicBool::new(config.skip_image_work),
                forced_status: AtomicU16::new(0),
                hang_left: AtomicU64::new(0),
                hang_ms: AtomicU64::new(0),
                blob_error_rate: AtomicU64::new(clamp_rate(config.blob_error_rate).to_bits()),
                blob_hang_ms: AtomicU64::new(config.blob_hang_ms),
                injected: Family::default(),
                seed: config.seed.unwrap_or_else(rand::random),
                request_seq: AtomicU64::new(0),
                blob_seq: AtomicU64::new(0),
            }),
        };
        faults.set_forced_status(config.force_job_status);
        faults
    }

    /// The seed of the random decisions (drawn at start when none was configured).
    pub fn seed(&self) -> u64 {
        self.inner.seed
    }

    /// Delay added to every API request.
    pub fn latency(&self) -> Duration {
        Duration::from_millis(self.inner.latency_ms.load(Ordering::Relaxed))
    }

    /// Sets the delay added to every API request.
    pub fn set_latency(&self, latency: Duration) {
        let ms = u64::try_from(latency.as_millis()).unwrap_or(u64::MAX);
        self.inner.latency_ms.store(ms, Ordering::Relaxed);
    }

    /// Share of API requests answered 503.
    pub fn error_rate(&self) -> f64 {
        f64::from_bits(self.inner.error_rate.load(Ordering::Relaxed))
    }

    /// Sets the share of API requests answered 503; clamped to 0.0–1.0 (NaN means 0).
    pub fn set_error_rate(&self, rate: f64) {
        self.inner
            .error_rate
            .store(clamp_rate(rate).to_bits(), Ordering::Relaxed);
    }

    /// Share of worker jobs that end FAILED.
    pub fn job_fail_rate(&self) -> f64 {
        f64::from_bits(self.inner.job_fail_rate.load(Ordering::Relaxed))
    }

    /// Sets the share of worker jobs that end FAILED; clamped to 0.0–1.0 (NaN means 0).
    /// Applies to jobs submitted afterwards.
    pub fn set_job_fail_rate(&self, rate: f64) {
        self.inner
            .job_fail_rate
            .store(clamp_rate(rate).to_bits(), Ordering::Relaxed);
    }

    /// How long a worker job stays RUNNING.
    pub fn running(&self) -> Duration {
        Duration::from_millis(self.inner.running_ms.load(Ordering::Relaxed))
    }

    /// Sets how long worker jobs submitted afterwards stay RUNNING; zero makes the worker
    /// answer the POST with the final result.
    pub fn set_running(&self, running: Duration) {
        let ms = u64::try_from(running.as_millis()).unwrap_or(u64::MAX);
        self.inner.running_ms.store(ms, Ordering::Relaxed);
    }

    /// Whether the worker skips the image work.
    pub fn skip_image_work(&self) -> bool {
        self.inner.skip_image_work.load(Ordering::Relaxed)
    }

    /// Makes jobs submitted afterwards skip (or do) the image work.
    pub fn set_skip_image_work(&self, skip: bool) {
        self.inner.skip_image_work.store(skip, Ordering::Relaxed);
    }

    /// The HTTP status every worker `POST /job` is answered with, if forced.
    pub fn forced_status(&self) -> Option<u16> {
        match self.inner.forced_status.load(Ordering::Relaxed) {
            0 => None,
            status => Some(status),
        }
    }

    /// Answers every worker `POST /job` with this HTTP status (e.g. 422), or stops doing so
    /// with `None`. A code that is not a valid HTTP status is answered as 500.
    pub fn set_forced_status(&self, status: Option<u16>) {
        self.inner
            .forced_status
            .store(status.unwrap_or(0), Ordering::Relaxed);
    }

    /// Keeps the next `jobs` new worker jobs RUNNING for `hang` (a worker that hangs, to
    /// make callers time out); repeated submissions of the same job stay deduplicated.
    pub fn hang_next(&self, jobs: u64, hang: Duration) {
        let ms = u64::try_from(hang.as_millis()).unwrap_or(u64::MAX);
        self.inner.hang_ms.store(ms, Ordering::Relaxed);
        self.inner.hang_left.store(jobs, Ordering::Relaxed);
    }

    /// Jobs still to be hung.
    pub fn hangs_left(&self) -> u64 {
        self.inner.hang_left.load(Ordering::Relaxed)
    }

    /// How long the job being started stays RUNNING: the hang if one is left, else the
    /// configured running time.
    pub(crate) fn take_running(&self) -> Duration {
        let took = self
            .inner
            .hang_left
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        match took {
            Ok(_) => {
                self.count("hang");
                Duration::from_millis(self.inner.hang_ms.load(Ordering::Relaxed))
            }
            Err(_) => self.running(),
        }
    }

    /// Share of blob PUTs answered 503: a blob service that fails the claim check's store
    /// (and the consumer's), while the worker goes on.
    pub fn blob_error_rate(&self) -> f64 {
        f64::from_bits(self.inner.blob_error_rate.load(Ordering::Relaxed))
    }

    /// Sets the share of blob PUTs answered 503; clamped to 0.0–1.0 (NaN means 0).
    pub fn set_blob_error_rate(&self, rate: f64) {
        self.inner
            .blob_error_rate
            .store(clamp_rate(rate).to_bits(), Ordering::Relaxed);
    }

    /// How long each blob PUT waits before it is handled (a slow blob service).
    pub fn blob_hang(&self) -> Duration {
        Duration::from_millis(self.inner.blob_hang_ms.load(Ordering::Relaxed))
    }

    /// Sets how long each blob PUT waits; zero ends the hang.
    pub fn set_blob_hang(&self, hang: Duration) {
        let ms = u64::try_from(hang.as_millis()).unwrap_or(u64::MAX);
        self.inner.blob_hang_ms.store(ms, Ordering::Relaxed);
    }

    /// Decides whether the next external blob PUT is answered 503. Blob PUTs have their own
    /// sequence, so turning this knob does not shift the decisions of `error_rate`.
    pub(crate) fn inject_blob_error(&self) -> bool {
        let seq = self.inner.blob_seq.fetch_add(1, Ordering::Relaxed);
        let rate = self.blob_error_rate();
        let inject = rate > 0.0 && dice(self.inner.seed, b"blob-error", &seq.to_le_bytes()) < rate;
        if inject {
            self.count("blob_error_503");
        }
        inject
    }

    /// Decides whether the next API request is answered 503. Each call takes the next request
    /// sequence number, so a seeded run that sends requests in the same order gets the same
    /// answers.
    pub(crate) fn inject_error(&self) -> bool {
        let seq = self.inner.request_seq.fetch_add(1, Ordering::Relaxed);
        let rate = self.error_rate();
        let inject = rate > 0.0 && dice(self.inner.seed, b"error", &seq.to_le_bytes()) < rate;
        if inject {
            self.count("error_503");
        }
        inject
    }

    /// Counts one injected fault of `kind`.
    pub(crate) fn count(&self, kind: &'static str) {
        self.inner
            .injected
            .get_or_create(&KindLabels { kind })
            .inc();
    }

    /// The fault counters, for the stubs' `/metrics`.
    pub(crate) fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "imagejobs_stub_faults_injected",
            "Faults the stubs injected, by kind (latency, error_503, job_fail, hang, forced_status, blob_error_503, blob_hang)",
            self.inner.injected.clone(),
        );
    }

    /// Decides whether the job with this id ends FAILED; the same id always gets the same
    /// answer under the same seed and rate.
    pub fn fail_job(&self, job_id: &str) -> bool {
        let rate = self.job_fail_rate();
        rate > 0.0 && dice(self.inner.seed, b"job-fail", job_id.as_bytes()) < rate
    }
}

/// Middleware in front of every API route: sleeps for the configured latency; a blob PUT then
/// waits `blob_hang_ms` and is answered 503 for `blob_error_rate` of them; any request is
/// answered 503 for `error_rate` of them. Requests the worker makes to its own blob service
/// (marked with [`INTERNAL_HEADER`]) pass untouched, so a blob fault meant for the ingress
/// and the consumers does not fail the worker's thumbnails.
pub(crate) async fn inject(State(faults): State<Faults>, request: Request, next: Next) -> Response {
    if request.headers().contains_key(INTERNAL_HEADER) {
        return next.run(request).await;
    }
    let latency = faults.latency();
    if !latency.is_zero() {
        faults.count("latency");
        tokio::time::sleep(latency).await;
    }
    let blob_put = request.method() == axum::http::Method::PUT
        && request.uri().path().starts_with("/api/v1/blob/");
    if blob_put {
        let hang = faults.blob_hang();
        if !hang.is_zero() {
            faults.count("blob_hang");
            tokio::time::sleep(hang).await;
        }
        if faults.inject_blob_error() {
            return ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "service unavailable",
                "injected fault (blob_error_rate)",
            )
            .into_response();
        }
    }
    if faults.inject_error() {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "service unavailable",
            "injected fault (STUB_ERROR_RATE)",
        )
        .into_response();
    }
    next.run(request).await
}

fn clamp_rate(rate: f64) -> f64 {
    if rate.is_nan() {
        0.0
    } else {
        rate.clamp(0.0, 1.0)
    }
}

/// A uniform number in [0, 1) that depends only on the seed, the decision's domain and its key.
///
/// FNV-1a folds the key into 64 bits, and the splitmix64 finaliser spreads it; both are fixed
/// algorithms, so the value is the same on every run, platform and Rust release (unlike
/// `std`'s `DefaultHasher`, whose algorithm may change).
fn dice(seed: u64, domain: &[u8], key: &[u8]) -> f64 {
    const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = FNV_OFFSET ^ splitmix64(seed);
    for byte in domain.iter().chain([0xffu8].iter()).chain(key.iter()) {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    let mixed = splitmix64(hash ^ seed);
    // The top 53 bits make an exactly representable fraction below 1.
    (mixed >> 11) as f64 / (1u64 << 53) as f64
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn faults(seed: u64) -> Faults {
        Faults::new(&StubConfig {
            seed: Some(seed),
            ..StubConfig::default()
        })
    }

    #[test]
    fn dice_is_a_fraction_that_depends_only_on_its_inputs() {
        for key in 0u64..1000 {
            let value = dice(42, b"error", &key.to_le_bytes());
            assert!((0.0..1.0).contains(&value));
            assert_eq!(value, dice(42, b"error", &key.to_le_bytes()));
        }
        assert_ne!(dice(1, b"error", b"k"), dice(2, b"error", b"k"));
        assert_ne!(dice(1, b"error", b"k"), dice(1, b"job-fail", b"k"));
    }

    #[test]
    fn dice_is_roughly_uniform() {
        let hits = (0u64..10_000)
            .filter(|key| dice(7, b"error", &key.to_le_bytes()) < 0.3)
            .count();
        assert!((2_700..3_300).contains(&hits), "{hits} of 10000 below 0.3");
    }

    #[test]
    fn same_seed_makes_the_same_error_decisions() {
        let (a, b) = (faults(9), faults(9));
        a.set_error_rate(0.5);
        b.set_error_rate(0.5);
        let first: Vec<bool> = (0..64).map(|_| a.inject_error()).collect();
        let second: Vec<bool> = (0..64).map(|_| b.inject_error()).collect();
        assert_eq!(first, second);
        assert!(first.iter().any(|&x| x) && first.iter().any(|&x| !x));
    }

    #[test]
    fn a_job_keeps_its_fate() {
        let f = faults(3);
        f.set_job_fail_rate(0.5);
        for i in 0..100 {
            let id = format!("job-{i}");
            assert_eq!(f.fail_job(&id), f.fail_job(&id));
        }
        f.set_job_fail_rate(1.0);
        assert!(f.fail_job("any"));
        f.set_job_fail_rate(0.0);
        assert!(!f.fail_job("any"));
    }

    #[test]
    fn only_the_next_jobs_hang() {
        let f = faults(1);
        f.set_running(Duration::from_millis(5));
        f.hang_next(2, Duration::from_secs(9));
        assert_eq!(f.take_running(), Duration::from_secs(9));
        assert_eq!(f.hangs_left(), 1);
        assert_eq!(f.take_running(), Duration::from_secs(9));
        assert_eq!(f.take_running(), Duration::from_millis(5));
        assert_eq!(f.hangs_left(), 0);
    }

    #[test]
    fn blob_decisions_do_not_shift_the_error_decisions() {
        let (a, b) = (faults(5), faults(5));
        for f in [&a, &b] {
            f.set_error_rate(0.5);
            f.set_blob_error_rate(0.5);
        }
        let plain: Vec<bool> = (0..64).map(|_| a.inject_error()).collect();
        let interleaved: Vec<bool> = (0..64)
            .map(|_| {
                b.inject_blob_error();
                b.inject_error()
            })
            .collect();
        assert_eq!(plain, interleaved);
        let blob: Vec<bool> = (0..64).map(|_| a.inject_blob_error()).collect();
        assert!(blob.iter().any(|&x| x) && blob.iter().any(|&x| !x));
        a.set_blob_error_rate(1.0);
        assert!((0..16).all(|_| a.inject_blob_error()));
        a.set_blob_error_rate(0.0);
        assert!((0..16).all(|_| !a.inject_blob_error()));
    }

    #[test]
    fn blob_knobs_start_from_the_config_and_are_clamped() {
        let f = Faults::new(&StubConfig {
            blob_error_rate: 0.25,
            blob_hang_ms: 4_000,
            seed: Some(1),
            ..StubConfig::default()
        });
        assert_eq!(f.blob_error_rate(), 0.25);
        assert_eq!(f.blob_hang(), Duration::from_secs(4));
        f.set_blob_error_rate(3.0);
        assert_eq!(f.blob_error_rate(), 1.0);
        f.set_blob_error_rate(f64::NAN);
        assert_eq!(f.blob_error_rate(), 0.0);
        f.set_blob_hang(Duration::ZERO);
        assert_eq!(f.blob_hang(), Duration::ZERO);
    }

    #[test]
    fn rates_are_clamped_and_forced_status_round_trips() {
        let f = faults(1);
        f.set_error_rate(7.0);
        assert_eq!(f.error_rate(), 1.0);
        f.set_error_rate(f64::NAN);
        assert_eq!(f.error_rate(), 0.0);
        f.set_forced_status(Some(422));
        assert_eq!(f.forced_status(), Some(422));
        f.set_forced_status(None);
        assert_eq!(f.forced_status(), None);
    }
}
