//! A submit end to end over TLS everywhere: HTTPS to the ingress, `amqps://` to the broker
//! (the private node's TLS listener, `make test` starts it with BROKER_TLS=1), HTTPS to the
//! stub services, each with a private CA.

use std::time::Duration;

use imagejobs_core::config::AmqpUrls;
use imagejobs_testkit::tls::TestCerts;
use imagejobs_testkit::*;

const T: Duration = Duration::from_secs(30);

/// The broker's TLS listener, as `make test` exports it.
fn amqps() -> (AmqpUrls, std::path::PathBuf) {
    let urls = std::env::var("AMQPS_URL").unwrap_or_else(|_| {
        panic!("AMQPS_URL is not set: run the tests with `make test` (the broker's TLS listener, BROKER_TLS=1)")
    });
    let ca = std::env::var("AMQP_CA_FILE").expect("AMQP_CA_FILE is set with AMQPS_URL");
    (urls.parse().expect("AMQPS_URL parses"), ca.into())
}

#[tokio::test]
async fn a_submit_runs_over_https_amqps_and_https_services() {
    let certs = TestCerts::new("e2e");
    let (amqps, broker_ca) = amqps();
    let p = Pipeline::with_stubs(|c| {
        c.tls_cert_file = Some(certs.cert.clone());
        c.tls_key_file = Some(certs.key.clone());
        c.service_ca_file = Some(certs.ca.clone());
    })
    .await;
    assert!(
        p.stubs.blob_url.starts_with("https://"),
        "{}",
        p.stubs.blob_url
    );
    let https = certs.client();
    let ing = p
        .ingress_over(https.clone(), |c| {
            c.broker.amqp_url = amqps.clone();
            c.broker.amqp_ca_file = Some(broker_ca.clone());
            c.tls_cert_file = Some(certs.cert.clone());
            c.tls_key_file = Some(certs.key.clone());
        })
        .await;
    assert!(ing.url.starts_with("https://"), "{}", ing.url);
    let _consumer = p
        .consumer_with(|c| {
            c.broker.amqp_url = amqps.clone();
            c.broker.amqp_ca_file = Some(broker_ca.clone());
            c.service_ca_file = Some(certs.ca.clone());
        })
        .await;
    let resp = https
        .post(format!("{}/api/v1/job", ing.url))
        .bearer_auth(token(1, 1))
        .header("content-type", "image/png")
        .body(png(40, 30))
        .send()
        .await
        .expect("an HTTPS submit");
    assert_eq!(resp.status(), 202);
    let id = resp.json::<serde_json::Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let job = ing.wait_terminal(&id, 1, T).await;
    assert_eq!(job["status"], "SUCCESS", "{job}");
    let thumb = job["payload_location"].as_str().unwrap();
    assert!(thumb.starts_with("https://"), "{thumb}");
    let fetched = https.get(thumb).send().await.unwrap();
    assert_eq!(fetched.status(), 200);
    // A client that does not trust the CA gets nowhere.
    let plain = reqwest::Client::new();
    assert!(plain.get(format!("{}/ping", ing.url)).send().await.is_err());
}
