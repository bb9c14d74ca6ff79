//! `imagejobs list`, `watch`, `cancel` and `result`, and the event-stream follower that
//! `submit --wait` shares with `watch`.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use serde_json::Value;
use tokio::time::Instant;

use super::ApiArgs;
use crate::sse::SseStream;
use imagejobs_core::backoff::Backoff;

#[derive(Args, Debug)]
pub struct ListArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// Only jobs of this status (QUEUED, RUNNING, RETRYING, SUCCESS, FAILED, CANCELLED).
    #[arg(long)]
    pub status: Option<String>,
    /// Jobs per page (1–1000).
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
    /// Continue after this cursor (the `next` an earlier page printed).
    #[arg(long)]
    pub after: Option<String>,
    /// Print the JSON page instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct WatchArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// The job id.
    pub id: String,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
}

#[derive(Args, Debug)]
pub struct CancelArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// The job id.
    pub id: String,
}

#[derive(Args, Debug)]
pub struct ResultArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// The job id.
    pub id: String,
    /// Where to write the result; `-` is standard output. Default: `<id>.<type>` here.
    #[arg(long, short)]
    pub output: Option<std::path::PathBuf>,
}

fn error_of(body: &Value) -> String {
    format!(
        "{}: {}",
        body["error"].as_str().unwrap_or("error"),
        body["details"].as_str().unwrap_or("")
    )
}

pub async fn list(args: ListArgs) -> anyhow::Result<ExitCode> {
    let http = reqwest::Client::new();
    let mut url = reqwest::Url::parse(&format!("{}/api/v1/jobs", args.api.base()))
        .with_context(|| format!("{} is not a URL", args.api.url))?;
    {
        let mut q = url.query_pairs_mut();
        q.append_pair("limit", &args.limit.to_string());
        if let Some(s) = &args.status {
            q.append_pair("status", &s.to_uppercase());
        }
        if let Some(a) = &args.after {
            q.append_pair("after", a);
        }
    }
    let resp = http
        .get(url)
        .bearer_auth(args.api.bearer()?)
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .with_context(|| format!("reaching the ingress at {}", args.api.url))?;
    let ok = resp.status().is_success();
    let body: Value = resp.json().await.context("reading the answer")?;
    if !ok {
        eprintln!("{}", error_of(&body));
        return Ok(ExitCode::FAILURE);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&body)?);
        return Ok(ExitCode::SUCCESS);
    }
    let jobs = body["jobs"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    print!("{}", table(jobs));
    match body["next"].as_str() {
        Some(next) => eprintln!("{} jobs; more with --after {next}", jobs.len()),
        None => eprintln!("{} jobs", jobs.len()),
    }
    Ok(ExitCode::SUCCESS)
}

/// The columns of `list`'s table.
const COLUMNS: [&str; 5] = ["ID", "STATUS", "ATTEMPTS", "CREATED", "DETAIL"];

/// A page of jobs as `list` prints it: a header, then a line a job; every column as wide
/// as its widest cell (the header's included), two spaces apart, ATTEMPTS aligned right;
/// DETAIL (the error, or where the result is) last and not padded. A cell is one line:
/// control characters (a newline in an error) become spaces.
fn table(jobs: &[Value]) -> String {
    let cell = |v: &Value, absent: &str| v.as_str().map_or_else(|| absent.to_owned(), one_line);
    let rows: Vec<[String; 5]> = jobs
        .iter()
        .map(|job| {
            let detail = job["error"]
                .as_str()
                .or_else(|| job["payload_location"].as_str());
            [
                cell(&job["id"], "?"),
                cell(&job["status"], "?"),
                job["attempts"]
                    .as_u64()
                    .map_or_else(|| "?".to_owned(), |n| n.to_string()),
                cell(&job["created_at"], ""),
                detail.map(one_line).unwrap_or_default(),
            ]
        })
        .collect();
    let mut widths = COLUMNS.map(|h| h.chars().count());
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(COLUMNS.map(str::to_owned)).chain(rows) {
        let mut line = String::new();
        for (i, (cell, &w)) in row.iter().zip(&widths).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            match i {
                2 => line.push_str(&format!("{cell:>w$}")),
                4 => line.push_str(cell),
                _ => line.push_str(&format!("{cell:<w$}")),
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `s` on one line: control characters (newlines, tabs) become spaces.
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

pub async fn watch(args: WatchArgs) -> anyhow::Result<ExitCode> {
    let http = reqwest::Client::new();
    let token = args.api.bearer()?;
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    let job = follow(&http, args.api.base(), &token, &args.id, deadline, |job| {
        let extra = job["error"]
            .as_str()
            .map(|e| format!("  {e}"))
            .unwrap_or_default();
        println!(
            "{}  {}  attempt {}{extra}",
            job["updated_at"].as_str().unwrap_or(""),
            job["status"].as_str().unwrap_or("?"),
            job["attempts"]
        );
    })
    .await?;
    Ok(match job["status"].as_str() {
        Some("SUCCESS") => ExitCode::SUCCESS,
        _ => ExitCode::FAILURE,
    })
}

pub async fn cancel(args: CancelArgs) -> anyhow::Result<ExitCode> {
    let http = reqwest::Client::new();
    let resp = http
        .delete(format!("{}/api/v1/job/{}", args.api.base(), args.id))
        .bearer_auth(args.api.bearer()?)
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .with_context(|| format!("reaching the ingress at {}", args.api.url))?;
    let status = resp.status();
    let body: Value = resp.json().await.context("reading the answer")?;
    if status.as_u16() != 202 {
        eprintln!("{}", error_of(&body));
        return Ok(ExitCode::FAILURE);
    }
    if body["cancel_requested"] == true {
        println!(
            "{}  RUNNING: cancel requested, the consumer will stop it",
            args.id
        );
    } else {
        println!("{}  {}", args.id, body["status"].as_str().unwrap_or("?"));
    }
    Ok(ExitCode::SUCCESS)
}

/// Downloads a succeeded job's result. An ingress with `RESULT_REDIRECT` answers 307 to
/// where the result is served; the client follows it, and sends the token only to the
/// ingress (reqwest drops `Authorization` on a redirect to another host).
pub async fn result(args: ResultArgs) -> anyhow::Result<ExitCode> {
    imagejobs_core::tls::install_crypto();
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::limited(5))
        .timeout(Duration::from_secs(120))
        .build()?;
    let resp = http
        .get(format!("{}/api/v1/job/{}/result", args.api.base(), args.id))
        .bearer_auth(args.api.bearer()?)
        .send()
        .await
        .with_context(|| format!("reaching the ingress at {}", args.api.url))?;
    let status = resp.status();
    if !status.is_success() {
        let body: Value = resp.json().await.unwrap_or_default();
        if body.is_null() {
            eprintln!("the result's server answered {status}");
        } else {
            eprintln!("{}", error_of(&body));
        }
        return Ok(ExitCode::FAILURE);
    }
    let ext = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|t| t.strip_prefix("image/"))
        .map(|t| t.split(';').next().unwrap_or(t).trim().to_owned())
        .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_alphanumeric()))
        .unwrap_or_else(|| "bin".into());
    let from = resp.url().to_string();
    let bytes = resp.bytes().await.context("reading the result")?;
    match args.output {
        Some(path) if path.as_os_str() == "-" => {
            use std::io::Write;
            std::io::stdout().write_all(&bytes)?;
        }
        path => {
            let path = path.unwrap_or_else(|| format!("{}.{ext}", args.id).into());
            std::fs::write(&path, &bytes).with_context(|| format!("writing {}", path.display()))?;
            eprintln!("{}  {} bytes from {from}", path.display(), bytes.len());
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn is_terminal(job: &Value) -> bool {
    matches!(
        job["status"].as_str(),
        Some("SUCCESS" | "FAILED" | "CANCELLED")
    )
}

/// Follows job `id` on its event stream until it ends or `deadline` passes, calling
/// `on_change` with each state; returns the last. A broken stream (an ingress restarted,
/// a proxy that cut it) is opened again with `Last-Event-ID`, so nothing is missed.
/// Errors only when the ingress refuses the job (unknown, another tenant's, bad token).
pub async fn follow(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    id: &str,
    deadline: Instant,
    mut on_change: impl FnMut(&Value),
) -> anyhow::Result<Value> {
    let url = format!("{base}/api/v1/job/{id}/events");
    let mut last = Value::Null;
    let mut last_id: Option<String> = None;
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
    while Instant::now() < deadline {
        let mut req = http.get(&url).bearer_auth(token);
        if let Some(seen) = &last_id {
            req = req.header("last-event-id", seen);
        }
        let read = async {
            let resp = match req.send().await {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!(error = %e, "event stream not reached; trying again");
                    return Ok(());
                }
            };
            let status = resp.status();
            if matches!(status.as_u16(), 401 | 403 | 404) {
                let body: Value = resp.json().await.unwrap_or_default();
                anyhow::bail!("job {id}: HTTP {status}: {}", error_of(&body));
            }
            if !status.is_success() {
                return Ok(()); // 503 while an ingress catches up: again shortly
            }
            let mut events = SseStream::new(resp);
            while let Some(Ok(ev)) = events.next().await {
                if ev.event != "status" {
                    continue;
                }
                let Ok(job) = serde_json::from_str::<Value>(&ev.data) else {
                    continue;
                };
                backoff.reset();
                last_id = ev.id.or(last_id.take());
                on_change(&job);
                last = job;
                if is_terminal(&last) {
                    return Ok(());
                }
            }
            Ok(())
        };
        match tokio::time::timeout_at(deadline, read).await {
            Ok(Ok(())) if is_terminal(&last) => return Ok(last),
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => break,
        }
        let pause = backoff.next_delay();
        if Instant::now() + pause >= deadline {
            break;
        }
        tokio::time::sleep(pause).await;
    }
    Ok(last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Where each column starts in the header line, in characters (it is ASCII).
    fn starts(header: &str) -> Vec<usize> {
        COLUMNS
            .iter()
            .map(|c| header.find(c).expect("every column in the header"))
            .collect()
    }

    #[test]
    fn a_page_prints_as_an_aligned_table() {
        let id = "0f8fad5b-d9cb-469f-a165-70867728950e";
        let jobs = [
            json!({"id": id, "status": "SUCCESS", "attempts": 1,
                   "created_at": "2026-01-02T03:04:05.678Z",
                   "payload_location": "http://blobs/0f8fad5b.thumb"}),
            json!({"id": "b", "status": "CANCELLED", "attempts": 12,
                   "created_at": "2026-01-02T03:04:05Z"}),
            json!({"id": "c", "status": "FAILED", "attempts": 3,
                   "created_at": "2026-01-02T03:04:06.000Z",
                   "error": "worker said: 500\nInternal\tError — ünïcode"}),
            json!({"status": "RETRYING"}),
        ];
        let out = table(&jobs);
        let expected = "\
ID                                    STATUS     ATTEMPTS  CREATED                   DETAIL
0f8fad5b-d9cb-469f-a165-70867728950e  SUCCESS           1  2026-01-02T03:04:05.678Z  http://blobs/0f8fad5b.thumb
b                                     CANCELLED        12  2026-01-02T03:04:05Z
c                                     FAILED            3  2026-01-02T03:04:06.000Z  worker said: 500 Internal Error — ünïcode
?                                     RETRYING          ?
";
        assert_eq!(out, expected, "\n{out}");

        // Every line's cells start where the header's columns do (ATTEMPTS: end there).
        let lines: Vec<Vec<char>> = out.lines().map(|l| l.chars().collect()).collect();
        let at = starts(out.lines().next().unwrap());
        let attempts_end = at[2] + "ATTEMPTS".len() - 1;
        for line in &lines[1..] {
            for &start in &[at[1], at[3], at[4]] {
                if let Some(&c) = line.get(start) {
                    assert!(c != ' ' && line[start - 2..start] == [' ', ' '], "{line:?}");
                }
            }
            assert!(line[attempts_end] != ' ', "{line:?}");
            assert!(line.get(attempts_end + 1).is_none_or(|c| *c == ' '));
            assert!(line.last() != Some(&' '), "no trailing space");
        }
    }

    #[test]
    fn columns_widen_to_their_widest_cell_and_no_further() {
        let out = table(&[json!({"id": "a", "status": "QUEUED", "attempts": 0,
                                  "created_at": "x"})]);
        assert_eq!(
            out,
            "ID  STATUS  ATTEMPTS  CREATED  DETAIL\na   QUEUED         0  x\n"
        );
        assert_eq!(table(&[]), "ID  STATUS  ATTEMPTS  CREATED  DETAIL\n");
    }
}
