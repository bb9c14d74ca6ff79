//! `GET /`: the dashboard, files compiled into the binary (no web server or Node build to
//! run it), served with a strict content security policy; and `GET /api/v1/stats`, the
//! figures it draws (queue depth, the tenant's recent throughput). Its script is a few
//! native ES modules (`<script type="module">`, [`MODULES`]), each at `/dashboard/<name>`.

use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::error::ApiError;
use super::openapi::{ErrorBody, Stats};
use super::state::AppState;
use crate::auth::Caller;

const INDEX_HTML: &str = include_str!("dashboard/index.html");
const MAIN_JS: &str = include_str!("dashboard/main.js");
const API_JS: &str = include_str!("dashboard/api.js");
const UI_JS: &str = include_str!("dashboard/ui.js");
const JOBS_JS: &str = include_str!("dashboard/jobs.js");
const UPLOADS_JS: &str = include_str!("dashboard/uploads.js");
const LIVE_JS: &str = include_str!("dashboard/live.js");
const STATS_JS: &str = include_str!("dashboard/stats.js");
const STYLE_CSS: &str = include_str!("dashboard/style.css");
const FAVICON_SVG: &str = include_str!("dashboard/favicon.svg");

/// The dashboard's JavaScript modules by file name, each served at `/dashboard/<name>`
/// (a route and a handler below each): `main.js`, which `index.html` loads, and what it
/// imports.
pub const MODULES: [(&str, &str); 7] = [
    ("main.js", MAIN_JS),
    ("api.js", API_JS),
    ("ui.js", UI_JS),
    ("jobs.js", JOBS_JS),
    ("uploads.js", UPLOADS_JS),
    ("live.js", LIVE_JS),
    ("stats.js", STATS_JS),
];

/// The dashboard's content security policy: scripts and styles from this origin only, and
/// no framing, since the page holds a token. With `RESULT_REDIRECT` the thumbnails are
/// images of wherever results are served (`result_origin`, the blob service, or any
/// `https:` CDN); `connect-src` stays `'self'`, so the token can go nowhere else.
pub fn csp(result_redirect: bool, result_origin: Option<&str>) -> HeaderValue {
    let images = match (result_redirect, result_origin) {
        (false, _) => String::new(),
        (true, Some(origin)) => format!(" https: {origin}"),
        (true, None) => " https:".to_owned(),
    };
    let policy = format!(
        "default-src 'self'; img-src 'self' blob: data:{images}; connect-src 'self'; \
         style-src 'self'; script-src 'self'; frame-ancestors 'none'; base-uri 'none'"
    );
    HeaderValue::from_str(&policy)
        .unwrap_or_else(|_| HeaderValue::from_static("default-src 'self'"))
}

/// One of the dashboard's files, with the page's headers: its type, the CSP, no sniffing,
/// no referrer, and revalidation before every use (a new binary serves new files).
fn file(csp: &HeaderValue, content_type: &'static str, body: &'static str) -> Response {
    let mut resp = body.into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CONTENT_SECURITY_POLICY, csp.clone());
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

/// A handler serving one of the dashboard's files (with [`file`]'s headers), and its
/// OpenAPI annotation: one line per file below, the route in `super::router`.
macro_rules! dashboard_file {
    ($handler:ident, $path:literal, $content_type:literal, $body:ident, $what:literal) => {
        #[doc = $what]
        #[utoipa::path(get, path = $path, tag = "operations",
            responses((status = 200, description = $what, content_type = $content_type, body = String)))]
        pub async fn $handler(State(app): State<AppState>) -> Response {
            file(&app.dashboard_csp, $content_type, $body)
        }
    };
}

dashboard_file!(
    index,
    "/",
    "text/html; charset=utf-8",
    INDEX_HTML,
    "The dashboard page (it asks for a token and keeps it in the tab)"
);
dashboard_file!(
    main_js,
    "/dashboard/main.js",
    "text/javascript; charset=utf-8",
    MAIN_JS,
    "The dashboard's script: the module the page loads (it imports the others)"
);
dashboard_file!(
    api_js,
    "/dashboard/api.js",
    "text/javascript; charset=utf-8",
    API_JS,
    "The dashboard's module that talks to the API: token, requests, errors, event streams"
);
dashboard_file!(
    ui_js,
    "/dashboard/ui.js",
    "text/javascript; charset=utf-8",
    UI_JS,
    "The dashboard's module of element helpers, formats and toasts"
);
dashboard_file!(
    jobs_js,
    "/dashboard/jobs.js",
    "text/javascript; charset=utf-8",
    JOBS_JS,
    "The dashboard's module of the job list: pages, live updates, thumbnails, cancelling"
);
dashboard_file!(
    uploads_js,
    "/dashboard/uploads.js",
    "text/javascript; charset=utf-8",
    UPLOADS_JS,
    "The dashboard's module of uploads from the drop zone"
);
dashboard_file!(
    live_js,
    "/dashboard/live.js",
    "text/javascript; charset=utf-8",
    LIVE_JS,
    "The dashboard's module that follows the caller's event stream"
);
dashboard_file!(
    stats_js,
    "/dashboard/stats.js",
    "text/javascript; charset=utf-8",
    STATS_JS,
    "The dashboard's module of the figure cards (/api/v1/stats)"
);
dashboard_file!(
    style_css,
    "/dashboard/style.css",
    "text/css; charset=utf-8",
    STYLE_CSS,
    "The dashboard's style sheet"
);
dashboard_file!(
    favicon,
    "/dashboard/favicon.svg",
    "image/svg+xml",
    FAVICON_SVG,
    "The dashboard's icon"
);

/// The dashboard's figures for the caller: the work queue's depth, its consumers and
/// lanes, the caller's backlog and throughput.
#[utoipa::path(get, path = "/api/v1/stats", tag = "operations", security(("bearer" = [])),
    responses((status = 200, description = "The figures", body = Stats), (status = 401, description = "No token, or one that is malformed, badly signed, expired or for another audience", body = ErrorBody, headers(("WWW-Authenticate" = String))), (status = 503, description = "The broker is unavailable or blocked, the index is catching up, or too many requests are in flight", body = ErrorBody, headers(("Retry-After" = u32, description = "Seconds to wait")))))]
pub async fn stats(State(app): State<AppState>, caller: Caller) -> Result<Json<Stats>, ApiError> {
    let depth = app.queue_depth.get(&app.broker).await;
    let (completed, failed) = app.index.throughput(caller.tenant_id);
    Ok(Json(Stats {
        queue_depth: depth.map(|d| d.0),
        consumers: depth.map(|d| d.1),
        lanes: app.broker.topology().lanes(),
        backlog: app.index.backlog(caller.tenant_id),
        bucket_secs: crate::index::BUCKET_SECS,
        completed,
        failed,
    }))
}

#[cfg(test)]
mod tests {
    /// The type every module is served with (a module script must have a JavaScript type).
    const JS: &str = "text/javascript; charset=utf-8";

    use super::*;

    /// The modules a module imports: the string of each `import` line (one line each).
    fn imports(source: &str) -> Vec<&str> {
        source
            .lines()
            .filter(|l| l.starts_with("import ") || l.starts_with("import{"))
            .map(|l| {
                let quoted = l.rsplit(['"', '\'']).nth(1);
                quoted.unwrap_or_else(|| panic!("an import on one line, with its module: {l}"))
            })
            .collect()
    }

    #[test]
    fn every_module_imported_is_served_and_every_one_served_is_used() {
        let served: Vec<&str> = MODULES.iter().map(|(name, _)| *name).collect();
        let mut used = vec!["main.js"];
        for (name, source) in MODULES {
            assert!(!source.contains("import("), "{name}: no dynamic import");
            for import in imports(source) {
                let file = import.strip_prefix("./").unwrap_or_else(|| {
                    panic!("{name} imports {import}: only this folder's modules (\"./x.js\")")
                });
                assert!(served.contains(&file), "{name} imports {file}, not served");
                used.push(file);
            }
        }
        for name in served {
            assert!(
                used.contains(&name),
                "{name} is served but nothing loads it"
            );
        }
        assert!(imports(MAIN_JS).len() >= 5, "main.js wires the others");
    }

    #[test]
    fn the_page_loads_main_js_as_a_module_and_preloads_the_rest() {
        assert!(INDEX_HTML.contains(r#"<script type="module" src="/dashboard/main.js"></script>"#));
        assert_eq!(
            INDEX_HTML.matches("<script").count(),
            1,
            "one script tag, no inline script"
        );
        for (name, _) in &MODULES[1..] {
            let preload = format!(r#"<link rel="modulepreload" href="/dashboard/{name}">"#);
            assert!(INDEX_HTML.contains(&preload), "{preload}");
        }
        assert_eq!(
            INDEX_HTML.matches("modulepreload").count(),
            MODULES.len() - 1
        );
    }

    /// Module scripts from this origin are allowed by `script-src 'self'`: nothing else is
    /// needed, and no `'unsafe-*'` source is there.
    #[test]
    fn the_csp_allows_this_origins_modules_and_nothing_unsafe() {
        for policy in [
            csp(false, None),
            csp(true, None),
            csp(true, Some("http://blobs:9000")),
        ] {
            let policy = policy.to_str().unwrap();
            assert!(!policy.contains("unsafe"), "{policy}");
            assert!(!policy.contains("strict-dynamic"), "{policy}");
            let directives: Vec<&str> = policy.split(';').map(str::trim).collect();
            for d in [
                "script-src 'self'",
                "default-src 'self'",
                "connect-src 'self'",
                "style-src 'self'",
            ] {
                assert!(directives.contains(&d), "{d} in {policy}");
            }
        }
    }

    #[test]
    fn every_module_is_served_as_javascript_with_the_pages_headers() {
        let policy = csp(false, None);
        for (name, source) in MODULES {
            let resp = file(&policy, JS, source);
            let h = resp.headers();
            assert_eq!(h[header::CONTENT_TYPE], JS, "{name}");
            assert_eq!(h[header::CONTENT_SECURITY_POLICY], policy, "{name}");
            assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff", "{name}");
            assert_eq!(h[header::REFERRER_POLICY], "no-referrer", "{name}");
            assert_eq!(h[header::CACHE_CONTROL], "no-cache", "{name}");
        }
    }
}
