//! The OpenAPI document against the live ingress: it is served as committed, and
//! schemathesis (`.tools/fuzz`, installed by `make test`) runs every operation with
//! generated inputs and a valid token. No 5xx, and every response conforms to the
//! document: its status codes, content types, headers and bodies.
//!
//! Left out, with reasons: the two event streams (`/events`: a stream stays open, which
//! the fuzzer reads as a timeout; `tests/pipeline/live.rs` covers them); the check that
//! every schema-valid submit is accepted (the API also checks what no schema can say: the
//! bytes are an image and match their MD5; the document's example is accepted); and the
//! check that a DELETE makes the resource disappear (DELETE cancels a job, which stays
//! readable as CANCELLED, by contract); and the check that what a POST made is there at
//! once under every linked route: a job's result exists only once the job succeeded, so
//! `/result` answers 404 just after the submit, by contract (that GET of the job itself
//! works at once after its 202 is what most pipeline tests do first).

use std::path::PathBuf;
use std::time::Duration;

use imagejobs_testkit::*;

const T: Duration = Duration::from_secs(240);

fn schemathesis() -> Option<PathBuf> {
    let path = std::env::var_os("IMAGEJOBS_SCHEMATHESIS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".tools/fuzz/venv/bin/schemathesis")
        });
    path.exists().then_some(path)
}

#[tokio::test]
async fn the_document_is_served_as_committed() {
    let p = Pipeline::new().await;
    let ing = p.ingress().await;
    let resp = reqwest::get(format!("{}/api/v1/openapi.json", ing.url))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let served: serde_json::Value = resp.json().await.unwrap();
    let committed: serde_json::Value =
        serde_json::from_str(include_str!("../../docs/openapi.json")).unwrap();
    assert_eq!(
        served, committed,
        "docs/openapi.json is stale: make openapi"
    );
    ing.stop().await;
}

#[tokio::test]
async fn the_live_ingress_conforms_to_its_document_under_fuzzing() {
    let Some(fuzzer) = schemathesis() else {
        panic!(
            "schemathesis is not installed (.tools/fuzz/venv): `make test` installs it from \
             tests/fuzz/requirements.txt; or set IMAGEJOBS_SCHEMATHESIS"
        );
    };
    let p = Pipeline::new().await;
    let ing = p.ingress().await;
    let consumer = p.consumer().await;
    let report = std::env::temp_dir().join(format!("imagejobs-fuzz-{}", p.deployment.prefix));
    // Fixed seeds: the same inputs every run (what fails once fails again); three of them
    // reach different corners.
    for seed in ["1", "2", "3"] {
        let mut cmd = tokio::process::Command::new(&fuzzer);
        cmd.arg("run")
            .arg(format!("{}/api/v1/openapi.json", ing.url))
            .args([
                "--header",
                &format!("Authorization: Bearer {}", token(1, 1)),
            ])
            .args(["--checks", "all"])
            .args([
                "--exclude-checks",
                "positive_data_acceptance,use_after_free,ensure_resource_availability",
            ])
            .args(["--exclude-path-regex", "/events$"])
            .args(["--max-examples", "50", "--workers", "1", "--seed", seed])
            .args(["--request-timeout", "10"])
            .env("SCHEMATHESIS_HOOKS", "")
            .env("NO_COLOR", "1")
            .current_dir(std::env::temp_dir())
            .kill_on_drop(true);
        let out = tokio::time::timeout(T, cmd.output())
            .await
            .expect("schemathesis finishes within its deadline")
            .expect("schemathesis runs");
        let text = String::from_utf8_lossy(&out.stdout);
        std::fs::write(
            report.with_extension(format!("seed-{seed}.log")),
            text.as_bytes(),
        )
        .ok();
        assert!(
            out.status.success(),
            "schemathesis (seed {seed}) found problems:\n{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            text.contains("passed"),
            "schemathesis ran no test case:\n{text}"
        );
    }
    consumer.stop().await;
    ing.stop().await;
}
