//! docs/asyncapi.yaml cannot lie: it is checked by the AsyncAPI initiative's parser (and
//! its examples against their schemas) by `docs/check/asyncapi.mjs`, and every example
//! it gives is published as it stands through the real broker: the job examples must
//! reach SUCCESS, the status events must show in the ingress's index, and the cancel must
//! stop the job it names. Only what cannot be the same here is mapped: the example blob
//! host becomes the stubs' address.

use std::path::PathBuf;
use std::time::Duration;

use base64::Engine;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel};
use serde_json::Value;

use imagejobs_testkit::*;

const T: Duration = Duration::from_secs(30);
const EXAMPLE_BLOB: &str = "http://blob.example/api/v1";

/// The document's examples by message, from the checker (which fails on a bad document).
async fn examples() -> Value {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let parser = std::env::var_os("IMAGEJOBS_ASYNCAPI_PARSER_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join(".tools/asyncapi/node_modules"));
    assert!(
        parser.join("@asyncapi/parser").exists(),
        "the AsyncAPI parser is not installed ({}): `make test` installs it from \
         docs/check/package.json; or set IMAGEJOBS_ASYNCAPI_PARSER_DIR",
        parser.display()
    );
    let out = tokio::time::timeout(
        T,
        tokio::process::Command::new("node")
            .arg(root.join("docs/check/asyncapi.mjs"))
            .arg(root.join("docs/asyncapi.yaml"))
            .env("ASYNCAPI_PARSER_DIR", &parser)
            .output(),
    )
    .await
    .expect("the checker finishes")
    .expect("node runs");
    assert!(
        out.status.success(),
        "docs/asyncapi.yaml is not valid:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the checker prints the examples as JSON")
}

fn example<'a>(all: &'a Value, message: &str, name: &str) -> &'a Value {
    all[message]
        .as_array()
        .and_then(|v| v.iter().find(|e| e["name"] == name))
        .unwrap_or_else(|| panic!("docs/asyncapi.yaml has no example {name} of {message}"))
}

/// The example's headers as AMQP values (integers as 64-bit, as the ingress sends them),
/// minus the two that are AMQP properties.
fn amqp_headers(headers: &Value, blob: &str) -> FieldTable {
    let mut table = FieldTable::default();
    for (k, v) in headers.as_object().expect("headers are an object") {
        if k == "message_id" || k == "content_type" {
            continue;
        }
        let value = match v {
            Value::Number(n) => AMQPValue::LongLongInt(n.as_i64().expect("an integer header")),
            Value::String(s) => AMQPValue::LongString(s.replace(EXAMPLE_BLOB, blob).into()),
            other => panic!("header {k}: {other} is neither an integer nor a string"),
        };
        table.insert(ShortString::from(k.clone()), value);
    }
    table
}

async fn publish(ch: &Channel, exchange: &str, key: &str, body: &[u8], props: BasicProperties) {
    let confirm = ch
        .basic_publish(
            exchange.into(),
            key.into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            body,
            props,
        )
        .await
        .expect("published")
        .await
        .expect("confirmed");
    assert!(confirm.is_ack(), "the broker did not take it: {confirm:?}");
}

async fn publish_job(p: &Pipeline, ch: &Channel, ex: &Value) -> String {
    let headers = &ex["headers"];
    let id = headers["message_id"]
        .as_str()
        .expect("message_id")
        .to_owned();
    let body = base64::engine::general_purpose::STANDARD
        .decode(ex["payload"].as_str().expect("a job's payload is a string"))
        .expect("the example's payload is base64");
    let mut props = BasicProperties::default()
        .with_message_id(id.as_str().into())
        .with_delivery_mode(2)
        .with_headers(amqp_headers(headers, &p.stubs.blob_url));
    if let Some(ct) = headers["content_type"].as_str() {
        props = props.with_content_type(ct.into());
    }
    let exchange = p.deployment.topology.jobs_exchange();
    publish(ch, &exchange, "submit", &body, props).await;
    id
}

async fn publish_json(ch: &Channel, exchange: &str, payload: &Value) {
    let body = serde_json::to_vec(payload).expect("json");
    let props = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2);
    publish(ch, exchange, "", &body, props).await;
}

#[tokio::test]
async fn every_example_of_the_document_does_what_it_says_through_the_broker() {
    let all = examples().await;
    let p = Pipeline::new().await;
    let ing = p.ingress().await;
    let consumer = p.consumer().await;
    let (_conn, ch) = p.deployment.channel().await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let topo = &p.deployment.topology;
    let http = reqwest::Client::new();

    // A job in the body, as the document shows it: it runs to SUCCESS.
    let in_body = example(&all, "job", "inBody");
    let id = publish_job(&p, &ch, in_body).await;
    let job = ing.wait_terminal(&id, 7, T).await;
    assert_eq!(job["status"], "SUCCESS", "{job}");
    assert_eq!(job["md5"], in_body["headers"]["md5"]);

    // By reference: the image is stored where the example says (on the stubs), the body
    // is empty, and the job runs to SUCCESS without the consumer storing it again.
    let by_ref = example(&all, "job", "byReference");
    let image = base64::engine::general_purpose::STANDARD
        .decode(in_body["payload"].as_str().unwrap())
        .unwrap();
    let location = by_ref["headers"]["payload_location"]
        .as_str()
        .unwrap()
        .replace(EXAMPLE_BLOB, &p.stubs.blob_url);
    let put = http
        .put(&location)
        .header("content-type", "image/png")
        .body(image.clone())
        .send()
        .await
        .unwrap();
    assert!(put.status().is_success(), "{}", put.status());
    assert_eq!(by_ref["headers"]["payload_size"], image.len());
    let id = publish_job(&p, &ch, by_ref).await;
    let job = ing.wait_terminal(&id, 7, T).await;
    assert_eq!(job["status"], "SUCCESS", "{job}");

    // Status events, one and grouped: the index shows what they say.
    for name in ["one", "group"] {
        let ex = example(&all, "statusEvent", name);
        publish_json(&ch, &topo.events_exchange(), &ex["payload"]).await;
        let events: Vec<Value> = match &ex["payload"] {
            Value::Array(v) => v.clone(),
            one => vec![one.clone()],
        };
        for e in events {
            let id = e["job_id"].as_str().unwrap();
            let tenant = e["tenant_id"].as_i64().unwrap();
            let shown = eventually(T, &format!("event {name} of {id} applied"), || async {
                let r = ing.get_job(id, tenant).await;
                (r.status() == 200).then_some(())?;
                let v: Value = r.json().await.ok()?;
                (v["status"] == e["status"]).then_some(v)
            })
            .await;
            assert_eq!(shown["attempts"], e["attempt"]);
        }
    }

    // The cancel: the job it names, published after it, never reaches the worker.
    let cancel = example(&all, "control", "cancel");
    publish_json(&ch, &topo.control_exchange(), &cancel["payload"]).await;
    let mut job = in_body.clone();
    job["headers"]["message_id"] = cancel["payload"]["job_id"].clone();
    job["headers"]["tenant_id"] = cancel["payload"]["tenant_id"].clone();
    let id = publish_job(&p, &ch, &job).await;
    let job = ing.wait_terminal(&id, 7, T).await;
    assert_eq!(job["status"], "CANCELLED", "{job}");

    consumer.stop().await;
    ing.stop().await;
}
