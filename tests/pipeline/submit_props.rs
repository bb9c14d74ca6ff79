//! Property test: whatever the body and headers, the submit route never panics and never
//! answers a 5xx other than 503.

use axum::body::Body;
use axum::http::Request;
use proptest::prelude::*;
use tower::ServiceExt;

use imagejobs_core::config::ByteSize;
use imagejobs_testkit::*;

fn content_types() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        Just(Some("application/json".to_owned())),
        Just(Some("image/png".to_owned())),
        Just(Some("image/jpeg".to_owned())),
        "[ -~]{0,30}".prop_map(Some),
    ]
}

fn bodies() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..300),
        "[ -~]{0,200}".prop_map(String::into_bytes),
        (
            "[A-Za-z0-9+/=]{0,120}",
            "[a-zA-Z0-9]{0,40}",
            "[a-z0-9]{0,10}"
        )
            .prop_map(|(c, m, e)| {
                format!(r#"{{"encoding":"{e}","md5":"{m}","content":"{c}"}}"#).into_bytes()
            }),
        proptest::collection::vec(any::<u8>(), 0..200).prop_map(|mut v| {
            let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
            png.append(&mut v);
            png
        }),
    ]
}

#[test]
fn random_requests_never_5xx_except_503() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let p = rt.block_on(Pipeline::new());
    let ing = rt.block_on(p.ingress_with(|c| c.max_body_bytes = ByteSize(256)));
    let app = imagejobs::http::router(ing.state.clone());
    let good = token(1, 1);
    let config = ProptestConfig {
        cases: 300,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(config, |(body in bodies(), ct in content_types(), auth in prop_oneof![Just(Some(good.clone())), Just(None), "[ -~]{0,40}".prop_map(Some)], md5 in proptest::option::of("[ -~]{0,40}"), key in proptest::option::of("[ -~]{0,20}"))| {
        let mut req = Request::post("/api/v1/job");
        if let Some(ct) = &ct { req = req.header("content-type", ct.as_str()); }
        if let Some(a) = &auth { req = req.header("authorization", format!("Bearer {a}")); }
        if let Some(m) = &md5 { req = req.header("content-md5", m.as_str()); }
        if let Some(k) = &key { req = req.header("idempotency-key", k.as_str()); }
        let Ok(req) = req.body(Body::from(body)) else { return Ok(()); };
        let resp = rt.block_on(app.clone().oneshot(req)).expect("infallible");
        let status = resp.status().as_u16();
        prop_assert!(status < 500 || status == 503, "got {}", status);
    });
    rt.block_on(async {
        ing.stop().await;
    });
}
