//! Waiting for a condition: poll with a deadline, never sleep a fixed time.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// How often the condition is checked.
const EVERY: Duration = Duration::from_millis(20);

/// Polls `check` until it returns `Some`, or panics after `deadline` naming `what`.
pub async fn eventually<T, F, Fut>(deadline: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if Instant::now() > end {
            panic!("timed out after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(EVERY).await;
    }
}

/// Like [`eventually`] for callers that report failure instead of panicking: `check`
/// may fail, and the deadline is an error.
pub async fn try_eventually<T, F, Fut>(
    deadline: Duration,
    what: &str,
    mut check: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = check().await? {
            return Ok(v);
        }
        if Instant::now() > end {
            anyhow::bail!("timed out after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(EVERY).await;
    }
}
