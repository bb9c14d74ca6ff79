//! `imagejobs submit FILES... [--wait]`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;

use super::ApiArgs;
use imagejobs_core::sniff;

#[derive(Args, Debug)]
pub struct SubmitArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// Image files to submit.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Wait until every job has ended and print the final statuses.
    #[arg(long)]
    pub wait: bool,
    /// Uploads in flight at once.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// With --wait: give up waiting after this many seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
}

struct Submitted {
    file: PathBuf,
    result: Result<String, String>,
}

fn bar(len: usize, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len as u64);
    let style = ProgressStyle::with_template("{msg:10} [{bar:30}] {pos}/{len} {elapsed}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    pb.set_style(style);
    pb.set_message(what.to_owned());
    pb
}

/// Prints a result line above the bar (also when stderr is no terminal and the bar hidden).
fn say(pb: &ProgressBar, line: String) {
    pb.suspend(|| println!("{line}"));
}

pub async fn run(args: SubmitArgs) -> anyhow::Result<ExitCode> {
    let token = args.api.bearer()?;
    let http = reqwest::Client::new();
    let url = format!("{}/api/v1/job", args.api.base());
    let pb = bar(args.files.len(), "uploading");
    let submitted: Vec<Submitted> = futures::stream::iter(args.files.iter().cloned())
        .map(|file| {
            let (http, url, token, pb) = (http.clone(), url.clone(), token.clone(), pb.clone());
            async move {
                let result = upload(&http, &url, &token, &file).await;
                pb.inc(1);
                match &result {
                    Ok(id) => say(&pb, format!("{}  {id}  QUEUED", file.display())),
                    Err(e) => say(&pb, format!("{}  error: {e}", file.display())),
                }
                Submitted { file, result }
            }
        })
        .buffer_unordered(args.concurrency.max(1))
        .collect()
        .await;
    pb.finish_and_clear();
    let mut failed = submitted.iter().filter(|s| s.result.is_err()).count();
    if !args.wait {
        return Ok(if failed == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }

    let ids: Vec<(&PathBuf, &String)> = submitted
        .iter()
        .filter_map(|s| s.result.as_ref().ok().map(|id| (&s.file, id)))
        .collect();
    let pb = bar(ids.len(), "processing");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.timeout);
    let finals: Vec<(String, Value)> = futures::stream::iter(ids)
        .map(|(file, id)| {
            let (http, pb, api) = (http.clone(), pb.clone(), &args.api);
            let token = token.clone();
            async move {
                let followed = super::jobs::follow(&http, api.base(), &token, id, deadline, |_| {});
                let job = followed
                    .await
                    .unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() }));
                let status = job["status"].as_str().unwrap_or("UNKNOWN").to_owned();
                let extra = match (job["payload_location"].as_str(), job["error"].as_str()) {
                    (_, Some(e)) => format!("  {e}"),
                    (Some(loc), None) => format!("  {loc}"),
                    _ => String::new(),
                };
                pb.inc(1);
                say(&pb, format!("{}  {id}  {status}{extra}", file.display()));
                (status, job)
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    pb.finish_and_clear();
    failed += finals.iter().filter(|(s, _)| s != "SUCCESS").count();
    let ok = finals.len() - finals.iter().filter(|(s, _)| s != "SUCCESS").count();
    eprintln!("{ok} succeeded, {failed} failed or unfinished");
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn upload(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    file: &PathBuf,
) -> Result<String, String> {
    let bytes = tokio::fs::read(file)
        .await
        .map_err(|e| format!("reading: {e}"))?;
    let mime = sniff::image_mime(&bytes).unwrap_or("image/unknown");
    let resp = http
        .post(url)
        .bearer_auth(token)
        .header("content-type", mime)
        .body(bytes)
        .send()
        .await
        .map_err(|e| format!("sending: {e}"))?;
    let status = resp.status();
    let body: Value = resp
        .json()
        .await
        .map_err(|e| format!("HTTP {status}: {e}"))?;
    if status.as_u16() != 202 {
        return Err(format!(
            "HTTP {status}: {} ({})",
            body["error"].as_str().unwrap_or("?"),
            body["details"].as_str().unwrap_or("")
        ));
    }
    body["id"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| "no id in the answer".into())
}
