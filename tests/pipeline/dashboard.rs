//! The ingress's dashboard (`GET /`) in a real headless Chromium, against the real stack:
//! a person signs in with a token, drops two images, watches them succeed without
//! reloading, and cancels a queued job. Skips, loudly, where Debian's `chromium` and
//! `chromium-driver` are missing (`IMAGEJOBS_REQUIRE_BROWSER=1` makes that a failure).
//! Screenshots go to `target/screenshots/`. Without a browser: every module of the page's
//! script is served with the page's headers.

use std::path::PathBuf;
use std::time::Duration;

use imagejobs_testkit::browser::Browser;
use imagejobs_testkit::*;

const T: Duration = Duration::from_secs(30);

/// `target/screenshots/<name>`.
fn screenshot_path(name: &str) -> PathBuf {
    let tmp = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    tmp.parent().unwrap_or(tmp).join("screenshots").join(name)
}

/// `#jobs .job[data-job-id=ID]` as a CSS selector.
fn row(id: &str) -> String {
    format!("#jobs .job[data-job-id=\"{id}\"]")
}

/// Waits until the dashboard's row of `id` shows `status`, and returns whether it has a
/// cancel button.
async fn wait_row_status(b: &Browser, id: &str, status: &str) -> bool {
    let script = format!(
        "const r = document.querySelector('{sel}');
         if (!r || r.dataset.status !== '{status}') return null;
         return {{ cancel: !!r.querySelector('button.cancel') }};",
        sel = row(id).replace('\'', "\\'"),
    );
    let v = b
        .wait_script(T, &format!("job {id}'s row to show {status}"), &script)
        .await;
    v["cancel"] == true
}

/// How long the figures may take to follow a job's change: the page reads
/// `/api/v1/stats` again within a fraction of a second of a status event. Well under the
/// regular 5 s refresh, which the cards used to wait for.
const FIGURES: Duration = Duration::from_secs(3);

/// Waits (`FIGURES` at most) until the throughput card counts `done` jobs succeeded and
/// none failed, both in the last minute and in the last 5.
async fn wait_throughput(b: &Browser, done: u32, what: &str) {
    let script = format!(
        "const t = document.querySelector('#throughput .tp-text');
         const f = document.querySelector('#failed-rate');
         return !!t && t.textContent === '{done} jobs/min'
           && f.textContent === '0 failed/min · {done} done in 5 min';"
    );
    b.wait_script(FIGURES, what, &script).await;
}

async fn api_status(ing: &TestIngress, id: &str) -> String {
    let r = ing.get_job(id, 1).await;
    assert_eq!(r.status(), 200, "GET /api/v1/job/{id}");
    let v: serde_json::Value = r.json().await.unwrap();
    v["status"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn a_person_uploads_watches_and_cancels() {
    let Some(b) = Browser::start().await else {
        return;
    };
    let _failure = b.screenshot_on_panic(screenshot_path("dashboard-failure.png"));
    let p = Pipeline::new().await;
    let ing = p.ingress().await;
    let consumer = p.consumer().await;

    let dir = std::env::temp_dir().join(format!("imagejobs-dashboard-{}", p.deployment.prefix));
    std::fs::create_dir_all(&dir).unwrap();
    let files: Vec<PathBuf> = [("wide.png", 64, 48), ("square.png", 80, 80)]
        .into_iter()
        .map(|(name, w, h)| {
            let f = dir.join(name);
            std::fs::write(&f, png(w, h)).unwrap();
            f
        })
        .collect();

    // Signed out: the token form, not the app.
    b.goto(&format!("{}/", ing.url)).await;
    b.wait_for("form#token-form", T).await;
    assert!(
        b.find("#app").await.attribute("hidden").await.is_some(),
        "signed out, #app is hidden"
    );
    b.find("textarea#token").await.send_keys(&token(1, 1)).await;
    b.find("button#token-save").await.click().await;
    b.wait_for("#app:not([hidden])", T).await;

    // Two files at once into the drop zone's input.
    let paths: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    b.find("#drop-zone input#file-input[type=file]")
        .await
        .send_keys(&paths.join("\n"))
        .await;
    let uploads = b
        .wait_until(T, "two uploads done", || async {
            let failed = b.find_all("#uploads li.upload[data-state=error]").await;
            if let Some(f) = failed.first() {
                panic!(
                    "an upload failed: {:?} {}",
                    f.attribute("data-file").await,
                    f.text().await
                );
            }
            let done = b.find_all("#uploads li.upload[data-state=done]").await;
            (done.len() == 2).then_some(done)
        })
        .await;
    let mut ids = Vec::new();
    for u in &uploads {
        let id = u.attribute("data-job-id").await;
        let id = id.unwrap_or_else(|| panic!("upload {:?} has no data-job-id", u));
        assert!(uuid::Uuid::parse_str(&id).is_ok(), "a job id: {id}");
        ids.push(id);
    }
    assert_ne!(ids[0], ids[1], "two jobs");

    // Without reloading, both rows reach SUCCESS with the worker's thumbnail loaded.
    for id in &ids {
        let script = format!(
            "const r = document.querySelector('{sel}');
             if (!r) return null;
             if (r.dataset.status === 'FAILED') return {{ failed: r.innerText }};
             if (r.dataset.status !== 'SUCCESS') return null;
             const img = r.querySelector('img.thumb');
             return img && img.complete && img.naturalWidth > 0 ? {{ width: img.naturalWidth }} : null;",
            sel = row(id),
        );
        let v = b
            .wait_script(
                T,
                &format!("job {id} SUCCESS with its thumbnail loaded"),
                &script,
            )
            .await;
        assert!(v.get("failed").is_none(), "job {id} failed: {v}");
        let r = b.find(&row(id)).await;
        assert_eq!(r.find(".badge").await.text().await.trim(), "SUCCESS");
        assert_eq!(api_status(&ing, id).await, "SUCCESS");
    }

    // The figures count them at once (issue 20: the card read "0 jobs/min · 0 done in
    // 5 min" beside these two rows). The page read /api/v1/stats as it signed in, moments
    // ago, so a card drawn only by the 5 s poll would not show them before FIGURES passes.
    wait_throughput(
        &b,
        2,
        "the throughput card to count the two jobs that succeeded",
    )
    .await;

    b.screenshot(screenshot_path("dashboard-laptop.png")).await;
    b.set_window_size(390, 844).await;
    b.screenshot(screenshot_path("dashboard-phone.png")).await;
    b.set_window_size(1280, 900).await;

    // No consumer: a job submitted through the API stays QUEUED, and the person cancels it.
    consumer.stop().await;
    let queued = ing.submit_id(&png(40, 30)).await;
    assert!(
        wait_row_status(&b, &queued, "QUEUED").await,
        "a QUEUED row has button.cancel"
    );
    b.find(&format!("{} button.cancel", row(&queued)))
        .await
        .click()
        .await;
    assert!(
        !wait_row_status(&b, &queued, "CANCELLED").await,
        "a CANCELLED row has no cancel button"
    );
    assert_eq!(
        b.find(&row(&queued))
            .await
            .find(".badge")
            .await
            .text()
            .await
            .trim(),
        "CANCELLED"
    );
    assert_eq!(api_status(&ing, &queued).await, "CANCELLED");

    // A consumer again: a job submitted after the cancelled one succeeds, so the consumer
    // has been past it, and the cancelled one was not run.
    let consumer = p.consumer().await;
    let after = ing.submit_id(&png(20, 20)).await;
    assert_eq!(ing.wait_terminal(&after, 1, T).await["status"], "SUCCESS");
    wait_row_status(&b, &after, "SUCCESS").await;
    wait_throughput(
        &b,
        3,
        "the card to count the third job, not the cancelled one",
    )
    .await;
    assert_eq!(api_status(&ing, &queued).await, "CANCELLED");
    assert_eq!(
        p.stubs.stats().job_posts_for(&queued),
        0,
        "never reached the worker"
    );
    assert_eq!(
        b.find(&row(&queued))
            .await
            .attribute("data-status")
            .await
            .as_deref(),
        Some("CANCELLED")
    );
    // The figures: the queue is empty, and this tenant's finished jobs show in the chart
    // (the page polls /api/v1/stats every 5 s).
    let shown = b
        .wait_script(
            T,
            "the throughput of the finished jobs and the queue depth",
            "const t = document.querySelector('#throughput').innerText;
             const q = document.querySelector('#queue-depth').innerText.trim();
             const b = document.querySelector('#backlog').innerText.trim();
             const c = document.querySelector('#consumers').innerText;
             return /^[1-9]\\d* jobs\\/min/.test(t) && q === '0' && b === '0'
               && c.includes('16 lanes') ? t : null;",
        )
        .await;
    assert!(
        shown.as_str().is_some_and(|t| t.contains("jobs/min")),
        "{shown}"
    );
    b.screenshot(screenshot_path("dashboard-cancelled.png"))
        .await;
    // The modules ran under the page's CSP without a violation or an uncaught error.
    let console = b.console().await;
    assert!(
        !console
            .iter()
            .any(|l| l.contains("Refused to") || l.contains("Uncaught")),
        "the browser's console: {console:#?}"
    );

    consumer.stop().await;
    ing.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// With `RESULT_REDIRECT=true` the result route answers 307 to where the result is served;
/// the dashboard does not follow it with the token, but shows the thumbnail from the
/// result's own URL (here the stub blob service, another origin than the ingress).
#[tokio::test]
async fn thumbnails_load_from_the_results_own_url_when_results_redirect() {
    let Some(b) = Browser::start().await else {
        return;
    };
    let _failure = b.screenshot_on_panic(screenshot_path("dashboard-redirect-failure.png"));
    let p = Pipeline::new().await;
    let ing = p.ingress_with(|c| c.result_redirect = true).await;
    let _consumer = p.consumer().await;
    let id = ing.submit_id(&png(70, 50)).await;
    let job = ing.wait_terminal(&id, 1, T).await;
    assert_eq!(job["status"], "SUCCESS", "{job}");
    let result_url = job["payload_location"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(result_url.starts_with("http://127.0.0.1:"), "{result_url}");

    b.goto(&format!("{}/", ing.url)).await;
    b.wait_for("form#token-form", T).await;
    b.find("textarea#token").await.send_keys(&token(1, 1)).await;
    b.find("button#token-save").await.click().await;
    b.wait_for("#app:not([hidden])", T).await;
    let script = format!(
        "const r = document.querySelector('{sel}');
         const img = r && r.querySelector('img.thumb');
         return img && img.complete && img.naturalWidth > 0
           ? {{ src: img.src, width: img.naturalWidth }} : null;",
        sel = row(&id),
    );
    let v = b
        .wait_script(T, &format!("job {id}'s thumbnail from its URL"), &script)
        .await;
    assert_eq!(v["src"], result_url.as_str(), "{v}");
    assert!(v["width"].as_u64().is_some_and(|w| w > 0), "{v}");
}

/// The page's script is native ES modules: `index.html` loads `main.js` with
/// `<script type="module">` and preloads the rest; every module, and every module one
/// imports, is served as JavaScript with the page's own headers (its CSP, `nosniff`).
/// No browser needed.
#[tokio::test]
async fn every_module_is_served_with_the_pages_headers() {
    let p = Pipeline::new().await;
    let ing = p.ingress().await;
    let http = reqwest::Client::new();
    let page = http.get(format!("{}/", ing.url)).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"].clone();
    let csp_text = csp.to_str().unwrap().to_owned();
    assert!(csp_text.contains("script-src 'self'"), "{csp_text}");
    assert!(!csp_text.contains("unsafe"), "{csp_text}");
    let html = page.text().await.unwrap();
    assert!(
        html.contains(r#"<script type="module" src="/dashboard/main.js"></script>"#),
        "{html}"
    );
    // What the page names (the entry and its preloads), then whatever a module imports.
    let mut todo: Vec<String> = html
        .split("href=\"/dashboard/")
        .skip(1)
        .filter_map(|s| s.split('"').next())
        .filter(|f| f.ends_with(".js"))
        .map(str::to_owned)
        .chain(["main.js".to_owned()])
        .collect();
    let mut seen = std::collections::BTreeSet::new();
    while let Some(module) = todo.pop() {
        if !seen.insert(module.clone()) {
            continue;
        }
        let url = format!("{}/dashboard/{module}", ing.url);
        let resp = http.get(&url).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{url}");
        let h = resp.headers();
        assert_eq!(h["content-type"], "text/javascript; charset=utf-8", "{url}");
        assert_eq!(h["content-security-policy"], csp, "{url}");
        assert_eq!(h["x-content-type-options"], "nosniff", "{url}");
        assert_eq!(h["cache-control"], "no-cache", "{url}");
        let source = resp.text().await.unwrap();
        for line in source.lines().filter(|l| l.starts_with("import ")) {
            let import = line.rsplit('"').nth(1).unwrap_or_default();
            let file = import
                .strip_prefix("./")
                .unwrap_or_else(|| panic!("{module}: {line}"));
            todo.push(file.to_owned());
        }
    }
    assert!(
        seen.len() >= 5,
        "main.js and the modules it imports: {seen:?}"
    );
    ing.stop().await;
}
