//! Tokens at the HTTP boundary (issue 11): one Authorization header, `aud` as a string or
//! an array, integer ids only, and public-key tokens (RS256, ES256, EdDSA) with the one
//! configured algorithm and no key confusion.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use imagejobs_testkit::keys::{TokenKeys, ALGORITHMS};
use imagejobs_testkit::*;

/// A token with exactly these claims, HS256 with the test secret.
fn signed(claims: &Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn in_ten_minutes() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600
}

/// What the ingress answers a job lookup with `authorization` headers (each one sent):
/// 404 for an authenticated caller (the id is unknown), 401 for anyone else.
async fn lookup(ing: &TestIngress, authorization: &[&str]) -> (u16, Value) {
    let mut req = ing
        .http
        .get(format!("{}/api/v1/job/{}", ing.url, uuid::Uuid::new_v4()));
    for value in authorization {
        req = req.header("authorization", *value);
    }
    let resp = req.send().await.unwrap();
    let code = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["code"], code, "{body}");
    (code, body)
}

#[tokio::test]
async fn two_authorization_headers_are_refused_whatever_they_hold() {
    let p = Pipeline::new().await;
    let ing = p.ingress().await;
    let one = format!("Bearer {}", token(1, 1));
    let two = format!("Bearer {}", token(2, 1));
    let forged = format!("Bearer {}", token_with("not-the-secret", 1, 1));
    assert_eq!(lookup(&ing, &[&one]).await.0, 404);
    for pair in [[&one, &two], [&one, &forged], [&forged, &one], [&one, &one]] {
        let (code, body) = lookup(&ing, &[pair[0], pair[1]]).await;
        assert_eq!(code, 401, "{body}");
        assert!(
            body["details"].as_str().unwrap().contains("malformed"),
            "{body}"
        );
    }
    // A submit is refused the same way.
    let resp = ing
        .http
        .post(format!("{}/api/v1/job", ing.url))
        .header("authorization", &one)
        .header("authorization", &two)
        .header("content-type", "image/png")
        .body(png(8, 8))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
}

#[tokio::test]
async fn aud_may_be_a_string_or_an_array() {
    let p = Pipeline::new().await;
    let exp = in_ten_minutes();
    let bearer = |claims: Value| format!("Bearer {}", signed(&claims));
    let as_array = bearer(json!({"tid": 1, "oid": 1, "exp": exp, "aud": ["other", "jobs"]}));
    let as_string = bearer(json!({"tid": 1, "oid": 1, "exp": exp, "aud": "jobs"}));
    let elsewhere = bearer(json!({"tid": 1, "oid": 1, "exp": exp, "aud": ["other", "more"]}));
    let none = bearer(json!({"tid": 1, "oid": 1, "exp": exp}));

    let ing = p
        .ingress_with(|c| c.jwt_audience = Some("jobs".into()))
        .await;
    assert_eq!(lookup(&ing, &[&as_array]).await.0, 404);
    assert_eq!(lookup(&ing, &[&as_string]).await.0, 404);
    assert_eq!(lookup(&ing, &[&elsewhere]).await.0, 401);
    assert_eq!(
        lookup(&ing, &[&none]).await.0,
        401,
        "aud is required when configured"
    );
    ing.stop().await;

    // Without a configured audience, `aud` of either form is not looked at.
    let ing = p.ingress().await;
    for t in [&as_array, &as_string, &elsewhere, &none] {
        assert_eq!(lookup(&ing, &[t]).await.0, 404, "{t}");
    }
}

#[tokio::test]
async fn ids_in_a_token_must_be_integers() {
    let p = Pipeline::new().await;
    let ing = p.ingress().await;
    let exp = in_ten_minutes();
    let ok = json!({"tid": 1, "oid": 1, "exp": exp});
    assert_eq!(
        lookup(&ing, &[&format!("Bearer {}", signed(&ok))]).await.0,
        404
    );
    for claims in [
        json!({"tid": "1", "oid": 1, "exp": exp}),
        json!({"tid": 1, "oid": "1", "exp": exp}),
        json!({"tid": 1.5, "oid": 1, "exp": exp}),
        json!({"tid": null, "oid": 1, "exp": exp}),
        json!({"oid": 1, "exp": exp}),
    ] {
        let (code, body) = lookup(&ing, &[&format!("Bearer {}", signed(&claims))]).await;
        assert_eq!(code, 401, "{claims} gave {body}");
    }
}

#[tokio::test]
async fn public_key_tokens_take_exactly_the_configured_algorithm() {
    let p = Pipeline::new().await;
    let caller = imagejobs::auth::Caller {
        tenant_id: imagejobs_core::ids::TenantId(3),
        client_id: imagejobs_core::ids::ClientId(1),
    };
    let ttl = Some(std::time::Duration::from_secs(600));
    let keys: Vec<TokenKeys> = ALGORITHMS.iter().map(|a| TokenKeys::new(a)).collect();
    let mint = |k: &TokenKeys| {
        let alg = imagejobs::auth::parse_algorithm(k.algorithm).unwrap();
        imagejobs::auth::mint_with_private_key(alg, &k.private_pem, caller, None, ttl).unwrap()
    };
    for key in &keys {
        let ing = p
            .ingress_with(|c| {
                c.jwt_secret = None;
                c.jwt_public_key_file = Some(key.public_file.clone());
                c.jwt_algorithm = key.algorithm.into();
            })
            .await;
        // Its own key's token works, for a lookup and a submit.
        let good = mint(key);
        assert_eq!(lookup(&ing, &[&format!("Bearer {good}")]).await.0, 404);
        let resp = ing
            .http
            .post(format!("{}/api/v1/job", ing.url))
            .bearer_auth(&good)
            .header("content-type", "image/png")
            .body(png(8, 8))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 202, "{}", key.algorithm);

        // The other algorithms' tokens, an HS256 token of the shared test secret, and the
        // key-confusion attack (HS256 keyed with the public key's own bytes) are refused.
        for other in keys.iter().filter(|k| k.algorithm != key.algorithm) {
            let t = format!("Bearer {}", mint(other));
            assert_eq!(
                lookup(&ing, &[&t]).await.0,
                401,
                "{} on {}",
                other.algorithm,
                key.algorithm
            );
        }
        let hs = format!("Bearer {}", token(3, 1));
        assert_eq!(lookup(&ing, &[&hs]).await.0, 401);
        let confused = encode(
            &Header::new(Algorithm::HS256),
            &json!({"tid": 3, "oid": 1, "exp": in_ten_minutes()}),
            &EncodingKey::from_secret(&key.public_pem),
        )
        .unwrap();
        let (code, body) = lookup(&ing, &[&format!("Bearer {confused}")]).await;
        assert_eq!(code, 401, "{body}");
        // A key pair of the same algorithm that is not the configured one.
        let stranger = TokenKeys::new(key.algorithm);
        let t = format!("Bearer {}", mint(&stranger));
        assert_eq!(lookup(&ing, &[&t]).await.0, 401);
        ing.stop().await;
    }

    // A public key with HS256, or an asymmetric algorithm without a public key, does not
    // start.
    let mut config = p.ingress_config();
    config.jwt_secret = None;
    config.jwt_public_key_file = Some(keys[1].public_file.clone());
    assert!(config.token_key().is_err(), "a public key with HS256");
    config.jwt_algorithm = "RS256".into();
    let refused = imagejobs::ingress::Ingress::build(config, Default::default()).await;
    assert!(refused.is_err(), "an EC key as RS256");
    let mut config = p.ingress_config();
    config.jwt_algorithm = "ES256".into();
    assert!(config.token_key().is_err(), "ES256 with a secret");
}
