//! Waiting for an ingress to be ready: `/readyz` answers 200 (a live broker connection
//! that is not blocked, the topology declared, the index caught up). The one wait of the
//! tests ([`crate::TestIngress`], [`crate::Pipeline::child_ingress`]), the benchmarks and
//! the chaos run, polling with a deadline.

use std::cell::{Cell, RefCell};
use std::time::Duration;

use tokio::time::Instant;

use crate::poll::try_eventually;
use crate::process::Service;

/// The longest one `/readyz` request may take, so that a process that accepts
/// connections but does not answer (stopped, wedged) is asked again, not waited on.
const ASK_WITHIN: Duration = Duration::from_secs(5);

/// Asks `{base_url}/readyz` once, within `timeout`: `Ok` on a 200, else what it answered
/// instead (its status and body, which says why it is not ready, or the request's error).
pub async fn probe(
    http: &reqwest::Client,
    base_url: &str,
    timeout: Duration,
) -> Result<(), String> {
    let sent = http
        .get(format!("{base_url}/readyz"))
        .timeout(timeout)
        .send()
        .await;
    match sent {
        Ok(r) if r.status() == 200 => Ok(()),
        Ok(r) => {
            let status = r.status();
            let body = r.text().await.unwrap_or_default();
            Err(format!("{status} {}", body.trim()))
        }
        Err(e) => Err(format!("no answer ({e})")),
    }
}

/// Waits until the ingress at `base_url` is ready (`/readyz` 200), at most `deadline`.
///
/// With `process`, the ingress's child process, the wait ends at once when it exits,
/// with its exit status and the path of its log. On the deadline the error names the
/// process (or the URL) and the last answer, so a timeout says why the ingress was not
/// ready (`503 broker unavailable`, the index's progress, connection refused ...).
pub async fn wait_ready(
    http: &reqwest::Client,
    base_url: &str,
    deadline: Duration,
    mut process: Option<&mut Service>,
) -> anyhow::Result<()> {
    let what = match &process {
        Some(p) => format!("{} ({base_url}) /readyz 200", p.name()),
        None => format!("{base_url}/readyz 200"),
    };
    let end = Instant::now() + deadline;
    let last = RefCell::new(String::from("no request finished"));
    let exited = Cell::new(false);
    let waited = try_eventually(deadline, &what, || {
        let alive = process
            .as_deref_mut()
            .map_or(Ok(()), Service::check_running);
        let (last, exited, timeout) = (&last, &exited, ask_within(end));
        async move {
            if let Err(e) = alive {
                exited.set(true);
                return Err(e);
            }
            Ok(match probe(http, base_url, timeout).await {
                Ok(()) => Some(()),
                Err(answer) => {
                    *last.borrow_mut() = answer;
                    None
                }
            })
        }
    })
    .await;
    match waited {
        Ok(()) => Ok(()),
        // The process exited: its error says so and where its log is.
        Err(e) if exited.get() => Err(e),
        Err(e) => Err(anyhow::anyhow!("{e}; last answer: {}", last.into_inner())),
    }
}

/// How long the next request may take: [`ASK_WITHIN`], or what is left of the wait (at
/// least a moment, so that a last request is still made).
fn ask_within(end: Instant) -> Duration {
    end.saturating_duration_since(Instant::now())
        .clamp(Duration::from_millis(100), ASK_WITHIN)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A listener that answers every request with `status` and `body`.
    async fn answering(status: u16, body: &'static str) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a local port");
        let addr = listener.local_addr().expect("its address");
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let reply = format!(
                    "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(reply.as_bytes()).await;
            }
        });
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn ready_on_a_200() {
        imagejobs_core::tls::install_crypto();
        let url = answering(200, "ready").await;
        let http = reqwest::Client::new();
        wait_ready(&http, &url, Duration::from_secs(5), None)
            .await
            .expect("ready");
    }

    #[tokio::test]
    async fn a_timeout_says_why_it_was_not_ready() {
        imagejobs_core::tls::install_crypto();
        let url = answering(503, "broker unavailable").await;
        let http = reqwest::Client::new();
        let e = wait_ready(&http, &url, Duration::from_millis(300), None)
            .await
            .expect_err("never ready");
        let text = format!("{e:#}");
        assert!(text.contains("timed out after 300ms"), "{text}");
        assert!(text.contains(&format!("{url}/readyz 200")), "{text}");
        assert!(
            text.contains("503 Service Unavailable broker unavailable"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_process_that_exits_ends_the_wait() {
        imagejobs_core::tls::install_crypto();
        let dir = std::env::temp_dir().join(format!("imagejobs-ready-{}", std::process::id()));
        let mut service = Service::spawn(
            "exits",
            std::path::Path::new("/bin/sh"),
            &["-c".into(), "exit 3".into()],
            &[],
            &dir,
            false,
        )
        .expect("sh starts");
        let http = reqwest::Client::new();
        // Nothing listens there: only the exit can end the wait before the deadline.
        let url = format!(
            "http://127.0.0.1:{}",
            crate::process::free_port().expect("a port")
        );
        let started = std::time::Instant::now();
        let e = wait_ready(&http, &url, Duration::from_secs(30), Some(&mut service))
            .await
            .expect_err("the process exited");
        let text = format!("{e:#}");
        assert!(text.contains("exits exited"), "{text}");
        assert!(started.elapsed() < Duration::from_secs(10), "{text}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
