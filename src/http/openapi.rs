//! The HTTP API as an OpenAPI 3.1 document, made from the handlers' own annotations and
//! body types (utoipa), served at `GET /api/v1/openapi.json` and kept in `docs/openapi.json`
//! (a test fails when the two differ). `make test` fuzzes the live ingress against it.

use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use std::sync::OnceLock;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

use crate::index::{Backlog, JobView, StatusName};

/// The error body of every 4xx and 5xx: the seed's shape.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// The status's reason phrase, e.g. `not found`.
    pub error: String,
    /// The HTTP status code again.
    pub code: u16,
    /// What went wrong, for a person.
    pub details: String,
}

/// `202` to a submit: the job is durable (the broker confirmed it).
#[derive(Serialize, Deserialize, ToSchema)]
pub struct Accepted {
    #[schema(format = Uuid)]
    pub id: String,
    /// Always `QUEUED`.
    #[schema(value_type = StatusName)]
    pub status: String,
}

/// `GET /api/v1/job/{id}/status`.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct StatusBody {
    #[schema(value_type = StatusName)]
    pub status: imagejobs_core::status::Status,
}

/// `202` to a cancel: final at once (`CANCELLED`), or requested of the consumer running
/// it (`RUNNING` with `cancel_requested`).
#[derive(Serialize, Deserialize, ToSchema)]
pub struct Cancelled {
    #[schema(format = Uuid)]
    pub id: String,
    #[schema(value_type = StatusName)]
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cancel_requested: Option<bool>,
}

/// A page of the caller's jobs, newest first.
#[derive(Serialize, ToSchema)]
pub struct JobPage {
    pub jobs: Vec<JobView>,
    /// The cursor of the next page (`after=`); absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// The dashboard's figures for the caller.
#[derive(Serialize, ToSchema)]
pub struct Stats {
    /// Jobs in the work queue (every lane), ready and in consumers' hands; null when the
    /// broker did not answer.
    pub queue_depth: Option<u32>,
    /// Consumers of the work queue's first lane; null when the broker did not answer.
    pub consumers: Option<u32>,
    /// Lanes of the work queue (`JOB_LANES`).
    pub lanes: u16,
    /// The caller's unfinished jobs.
    pub backlog: Backlog,
    /// Seconds per bucket of `completed` and `failed`.
    pub bucket_secs: u64,
    /// The caller's jobs that succeeded per bucket, oldest first.
    pub completed: Vec<u32>,
    /// The caller's jobs that failed per bucket, oldest first.
    pub failed: Vec<u32>,
}

/// A submit as JSON: the image in base64 with the MD5 of its bytes (`MD5` is accepted
/// for `md5`, as the seed's documentation spells it).
#[derive(Deserialize, ToSchema)]
#[schema(example = json!({
    "encoding": "base64",
    "md5": "3ab739d7d4d7296eeafd3b9303b5121b",
    "content": "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP438AAAAQBAYDFKhhdAAAAAElFTkSuQmCC"
}))]
#[allow(dead_code)] // the schema of a body the handler reads itself (crate::http::upload)
pub struct SubmitJson {
    /// Only `base64`.
    encoding: String,
    /// 32 hex digits: the MD5 of the decoded bytes.
    #[schema(pattern = "^[0-9a-fA-F]{32}$")]
    md5: String,
    /// The image, base64 (standard alphabet, padded).
    #[schema(min_length = 1, content_encoding = "base64")]
    content: String,
}

/// The bearer token of every `/api/v1` route.
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let scheme = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .bearer_format("JWT")
            .description(Some(
                "HS256 with JWT_SECRET, or RS256/ES256/EdDSA with JWT_PUBLIC_KEY_FILE; claims \
                 `tid` (tenant) and `oid` (client), integers",
            ))
            .build();
        doc.components
            .get_or_insert_with(Default::default)
            .add_security_scheme("bearer", SecurityScheme::Http(scheme));
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "imagejobs ingress",
        description = "Image jobs on RabbitMQ: submit an image, follow its job, fetch its result. \
            Errors are `{\"error\", \"code\", \"details\"}`. Every `/api/v1` route takes a bearer JWT; \
            a job belongs to the tenant (`tid`) that submitted it, and is a 404 to any other.",
        license(name = "MIT"),
    ),
    paths(
        super::ping, super::healthz, super::ready, super::scrape,
        super::submit::submit, super::jobs::job, super::cancel::cancel, super::jobs::status,
        super::live::job_events, super::result::result, super::jobs::list,
        super::live::tenant_events, super::dashboard::stats, openapi_json,
        super::dashboard::index, super::dashboard::main_js, super::dashboard::api_js,
        super::dashboard::ui_js, super::dashboard::jobs_js, super::dashboard::uploads_js,
        super::dashboard::live_js, super::dashboard::stats_js, super::dashboard::style_css,
        super::dashboard::favicon,
    ),
    components(schemas(ErrorBody, StatusName, Accepted, StatusBody, Cancelled, JobPage, JobView, Stats, Backlog, SubmitJson)),
    modifiers(&BearerAuth),
    tags((name = "jobs", description = "Submitting and following jobs"),
         (name = "operations", description = "Probes, metrics, the dashboard")),
)]
pub struct ApiDoc;

/// The document as served, rendered once.
pub fn document() -> &'static str {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| {
        let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
        add_job_links(&mut doc);
        serde_json::to_string_pretty(&doc)
            .unwrap_or_else(|e| format!("{{\"error\": \"the document did not render: {e}\"}}"))
    })
}

/// Links from a submit's 202 to what can be asked of the job it made, so that clients
/// (and the fuzzer's stateful phase) know where its `id` goes. Added to the JSON: utoipa
/// 5.5 writes a Link's `operationId` as `operation_id`.
fn add_job_links(doc: &mut serde_json::Value) {
    let Some(accepted) = doc.pointer_mut("/paths/~1api~1v1~1job/post/responses/202") else {
        return;
    };
    let link = |operation: &str, what: &str| {
        serde_json::json!({
            "operationId": operation,
            "parameters": { "id": "$response.body#/id" },
            "description": what,
        })
    };
    accepted["links"] = serde_json::json!({
        "GetJob": link("job", "The job"),
        "GetStatus": link("status", "Its status"),
        "CancelJob": link("cancel", "Cancel it"),
        "GetResult": link("result", "Its result, once it succeeded"),
    });
}

/// The OpenAPI document of this API.
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "operations",
    responses((status = 200, description = "OpenAPI 3.1", content_type = "application/json", body = Object)))]
pub async fn openapi_json() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], document()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed copy is what the code serves: regenerate it with
    /// `cargo run -q --bin imagejobs -- openapi > docs/openapi.json` (`make openapi`).
    #[test]
    fn the_committed_document_is_the_served_one() {
        let committed = include_str!("../../docs/openapi.json");
        assert!(
            committed.trim_end() == document(),
            "docs/openapi.json differs from the code's document: run `make openapi`"
        );
    }

    #[test]
    fn every_route_is_documented() {
        let doc: serde_json::Value = serde_json::from_str(document()).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        for route in [
            "/ping",
            "/healthz",
            "/readyz",
            "/metrics",
            "/api/v1/job",
            "/api/v1/job/{id}",
            "/api/v1/job/{id}/status",
            "/api/v1/job/{id}/events",
            "/api/v1/job/{id}/result",
            "/api/v1/jobs",
            "/api/v1/jobs/events",
            "/api/v1/stats",
            "/api/v1/openapi.json",
            "/",
            "/dashboard/main.js",
            "/dashboard/api.js",
            "/dashboard/ui.js",
            "/dashboard/jobs.js",
            "/dashboard/uploads.js",
            "/dashboard/live.js",
            "/dashboard/stats.js",
            "/dashboard/style.css",
            "/dashboard/favicon.svg",
        ] {
            assert!(paths.contains_key(route), "{route} is not in the document");
        }
        assert_eq!(
            paths.len(),
            23,
            "a route is documented that the router lacks"
        );
        // Every module of the dashboard's script, and with the type a module script needs.
        for (name, _) in crate::http::dashboard::MODULES {
            let route = format!("/dashboard/{name}");
            let types = &paths[&route]["get"]["responses"]["200"]["content"];
            assert!(
                types.get("text/javascript; charset=utf-8").is_some(),
                "{route}: {types}"
            );
        }
        assert_eq!(doc["openapi"], "3.1.0");
    }
}
