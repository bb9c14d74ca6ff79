//! What the tests need: a fresh prefix, an ingress on port 0, a TCP proxy that can cut
//! the broker off, images, raw broker access, and `eventually` for polling with a deadline.

#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use lapin::options::{
    BasicGetOptions, ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use imagejobs::http::AppState;
use imagejobs::ingress::{Ingress, IngressConfig};
use imagejobs::topology::Topology;

pub const SECRET: &str = "your-256-bit-secret";

/// The broker `make test` started.
pub fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| {
        panic!("AMQP_URL is not set: run the tests with `make test`, which starts a RabbitMQ node")
    })
}

/// Logs of the code under test, captured per test (shown for failing tests).
pub fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,lapin=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// A prefix no other test uses.
pub fn prefix() -> String {
    format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

/// Topology arguments as the processes under test get them.
pub fn topology_flags(prefix: &str) -> Vec<String> {
    vec![
        "--amqp-prefix".into(),
        prefix.into(),
        "--retry-delays".into(),
        "1,2".into(),
    ]
}

pub fn topology(prefix: &str, extra: &[&str]) -> Topology {
    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        t: imagejobs::config::TopologyArgs,
    }
    let mut args: Vec<String> = vec!["t".into()];
    args.extend(topology_flags(prefix));
    args.extend(extra.iter().map(|s| s.to_string()));
    Topology::new(&T::parse_from(args).t)
}

/// Polls `check` every 20 ms until it returns `Some`, or panics after `deadline`.
pub async fn eventually<T, F, Fut>(deadline: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let end = tokio::time::Instant::now() + deadline;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() > end {
            panic!("timed out after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A running ingress.
pub struct TestIngress {
    pub addr: SocketAddr,
    pub url: String,
    pub state: AppState,
    pub shutdown: CancellationToken,
    pub http: reqwest::Client,
    pub prefix: String,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl TestIngress {
    /// Starts an ingress on 127.0.0.1:0 for `prefix`, with `extra` flags.
    pub async fn start(amqp_url: &str, prefix: &str, extra: &[&str]) -> TestIngress {
        let mut args: Vec<String> = vec![
            "imagejobs-ingress".into(),
            "--amqp-url".into(),
            amqp_url.into(),
            "--host".into(),
            "127.0.0.1".into(),
            "--port".into(),
            "0".into(),
            "--jwt-secret".into(),
            SECRET.into(),
            "--publish-timeout-ms".into(),
            "1500".into(),
        ];
        args.extend(topology_flags(prefix));
        args.extend(extra.iter().map(|s| s.to_string()));
        init_logs();
        let config = IngressConfig::parse_from(args);
        let shutdown = CancellationToken::new();
        let ingress = Ingress::build(config, shutdown.clone())
            .await
            .expect("ingress builds");
        let addr = ingress.local_addr();
        let state = ingress.state();
        let task = tokio::spawn(ingress.run_until_stopped());
        let t = TestIngress {
            addr,
            url: format!("http://{addr}"),
            state,
            shutdown,
            http: reqwest::Client::new(),
            prefix: prefix.to_owned(),
            task,
        };
        t.wait_ready().await;
        t
    }

    pub async fn wait_ready(&self) {
        let url = format!("{}/readyz", self.url);
        let http = self.http.clone();
        eventually(Duration::from_secs(20), "ingress /readyz 200", || {
            let (http, url) = (http.clone(), url.clone());
            async move {
                let r = http.get(&url).send().await.ok()?;
                (r.status() == 200).then_some(())
            }
        })
        .await;
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
    }

    pub fn token(&self, tenant: i64, client: i64) -> String {
        token(tenant, client)
    }

    /// Submits `image` as a raw body for tenant 1.
    pub async fn submit_raw(&self, image: &[u8]) -> reqwest::Response {
        self.http
            .post(format!("{}/api/v1/job", self.url))
            .bearer_auth(token(1, 1))
            .header("content-type", "image/png")
            .body(image.to_vec())
            .send()
            .await
            .expect("request sent")
    }

    pub async fn get_job(&self, id: &str, tenant: i64) -> reqwest::Response {
        self.http
            .get(format!("{}/api/v1/job/{id}", self.url))
            .bearer_auth(token(tenant, 1))
            .send()
            .await
            .expect("request sent")
    }
}

pub fn token(tenant: i64, client: i64) -> String {
    use imagejobs::auth::{mint, Caller};
    use imagejobs::job::{ClientId, TenantId};
    let caller = Caller {
        tenant_id: TenantId(tenant),
        client_id: ClientId(client),
    };
    mint(
        &imagejobs::config::Secret::new(SECRET),
        caller,
        None,
        Some(Duration::from_secs(600)),
    )
    .expect("token minted")
}

/// A real PNG of `w` x `h` with some texture, so it does not compress to nothing.
pub fn png(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([
            (x * 7 % 256) as u8,
            (y * 13 % 256) as u8,
            ((x ^ y) % 256) as u8,
        ])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)
        .expect("png encodes");
    out.into_inner()
}

/// A plain connection and channel to the test broker, for looking into queues.
pub async fn raw_channel() -> (Connection, Channel) {
    let conn = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .expect("connect to the test broker");
    let ch = conn.create_channel().await.expect("channel");
    (conn, ch)
}

/// Messages ready in `queue`.
pub async fn queue_len(ch: &Channel, queue: &str) -> u32 {
    let q = ch
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("queue exists");
    q.message_count()
}

/// Takes one message from `queue` (acked), waiting for it up to `deadline`.
pub async fn get_one(
    ch: &Channel,
    queue: &str,
    deadline: Duration,
) -> lapin::message::BasicGetMessage {
    eventually(deadline, &format!("a message in {queue}"), || async {
        ch.basic_get(queue.into(), BasicGetOptions { no_ack: true })
            .await
            .ok()
            .flatten()
    })
    .await
}

/// Deletes what a test's prefix declared (best effort).
pub async fn cleanup(prefix: &str) {
    let (conn, ch) = raw_channel().await;
    let topo = topology(prefix, &[]);
    let mut queues = vec![topo.work_queue(), topo.dead_queue(), topo.events_stream()];
    for d in [1, 2] {
        queues.push(topo.retry_queue(Duration::from_secs(d)));
    }
    for q in queues {
        let _ = ch
            .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    for e in [
        topo.jobs_exchange(),
        topo.dead_letter_exchange(),
        topo.events_exchange(),
    ] {
        let _ = ch
            .exchange_delete(e.as_str().into(), ExchangeDeleteOptions::default())
            .await;
    }
    let _ = conn.close(200, "bye".into()).await;
}

/// A TCP proxy in front of the broker that can cut every connection and refuse new ones,
/// as a stopped broker does, and then let them through again.
pub struct Proxy {
    pub addr: SocketAddr,
    enabled: Arc<AtomicBool>,
    generation: Arc<std::sync::Mutex<CancellationToken>>,
    stop: CancellationToken,
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let enabled = Arc::new(AtomicBool::new(true));
        let generation = Arc::new(std::sync::Mutex::new(CancellationToken::new()));
        let stop = CancellationToken::new();
        let (en, gen, st) = (enabled.clone(), generation.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let (mut client, _) = tokio::select! {
                    _ = st.cancelled() => return,
                    a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
                };
                if !en.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let cut = gen.lock().expect("lock").clone();
                tokio::spawn(async move {
                    let Ok(mut upstream) = TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = cut.cancelled() => {}
                        _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
                    }
                });
            }
        });
        Proxy {
            addr,
            enabled,
            generation,
            stop,
        }
    }

    /// Drops every connection and refuses new ones.
    pub fn cut(&self) {
        self.enabled.store(false, Ordering::SeqCst);
        let mut g = self.generation.lock().expect("lock");
        g.cancel();
        *g = CancellationToken::new();
    }

    pub fn restore(&self) {
        self.enabled.store(true, Ordering::SeqCst);
    }

    /// The AMQP URL through this proxy.
    pub fn amqp_url(&self) -> String {
        let mut url = url_parts(&amqp_url());
        url.1 = self.addr.to_string();
        format!("{}{}{}", url.0, url.1, url.2)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.cancel();
        self.cut();
    }
}

/// Splits `amqp://user:pass@host:port/vhost` into (`amqp://user:pass@`, `host:port`, `/vhost`).
fn url_parts(url: &str) -> (String, String, String) {
    let (scheme, rest) = url.split_once("://").expect("amqp url has a scheme");
    let (auth, hostpath) = match rest.rsplit_once('@') {
        Some((a, h)) => (format!("{a}@"), h),
        None => (String::new(), rest),
    };
    let (host, path) = match hostpath.find('/') {
        Some(i) => (&hostpath[..i], &hostpath[i..]),
        None => (hostpath, ""),
    };
    (
        format!("{scheme}://{auth}"),
        host.to_owned(),
        path.to_owned(),
    )
}

/// The broker's address, for a proxy to forward to.
pub fn broker_addr() -> SocketAddr {
    let (_, host, _) = url_parts(&amqp_url());
    let host = if host.contains(':') {
        host
    } else {
        format!("{host}:5672")
    };
    host.replace("localhost", "127.0.0.1")
        .parse()
        .expect("broker address is ip:port")
}

/// Stub services on port 0.
pub async fn start_stubs(
    f: impl FnOnce(&mut imagejobs_stubs::StubConfig),
) -> (imagejobs_stubs::Stubs, CancellationToken) {
    let mut config = imagejobs_stubs::StubConfig {
        seed: Some(7),
        ..Default::default()
    };
    f(&mut config);
    let stop = CancellationToken::new();
    let stubs = imagejobs_stubs::Stubs::start(config, stop.clone())
        .await
        .expect("stubs start");
    (stubs, stop)
}

/// Flags of a consumer for `prefix` against `stubs`: quick retries for tests.
pub fn consumer_args(
    amqp_url: &str,
    prefix: &str,
    stubs: &imagejobs_stubs::Stubs,
    extra: &[&str],
) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "imagejobs-consumer".into(),
        "--amqp-url".into(),
        amqp_url.into(),
        "--worker-service-url".into(),
        stubs.worker_url.clone(),
        "--blob-service-url".into(),
        stubs.blob_url.clone(),
        "--retry-max-attempts".into(),
        "3".into(),
        "--retry-base-delay-ms".into(),
        "10".into(),
        "--retry-max-delay-ms".into(),
        "50".into(),
        "--drain-timeout-secs".into(),
        "10".into(),
    ];
    args.extend(topology_flags(prefix));
    // Later flags win over the defaults above.
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// A consumer running in this process.
pub struct TestConsumer {
    pub stats: Arc<imagejobs_consumer::Stats>,
    pub shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl TestConsumer {
    pub fn start(args: Vec<String>) -> TestConsumer {
        init_logs();
        let config = imagejobs_consumer::ConsumerConfig::parse_from(args);
        let shutdown = CancellationToken::new();
        let stats = Arc::new(imagejobs_consumer::Stats::default());
        let task = tokio::spawn(imagejobs_consumer::run_with_stats(
            config,
            shutdown.clone(),
            stats.clone(),
        ));
        TestConsumer {
            stats,
            shutdown,
            task,
        }
    }

    pub fn acked(&self) -> u64 {
        self.stats.acked.load(Ordering::Relaxed)
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
    }
}

/// Waits until the ingress's index shows `id` (of tenant 1 unless told) in a terminal
/// status, and returns the job JSON.
pub async fn wait_terminal(
    ing: &TestIngress,
    id: &str,
    tenant: i64,
    deadline: Duration,
) -> serde_json::Value {
    eventually(deadline, &format!("job {id} to end"), || async {
        let r = ing.get_job(id, tenant).await;
        if r.status() != 200 {
            return None;
        }
        let v: serde_json::Value = r.json().await.ok()?;
        matches!(v["status"].as_str(), Some("SUCCESS" | "FAILED")).then_some(v)
    })
    .await
}

/// Submits `image` for tenant 1 and returns the job id.
pub async fn submit_id(ing: &TestIngress, image: &[u8]) -> String {
    let resp = ing.submit_raw(image).await;
    assert_eq!(resp.status(), 202, "submit accepted");
    let v: serde_json::Value = resp.json().await.expect("json");
    v["id"].as_str().expect("id").to_owned()
}

/// Every status event of the stream so far: reads from the first offset until a marker
/// of our own comes back.
pub async fn all_events(prefix: &str) -> Vec<imagejobs::job::StatusEvent> {
    use futures::StreamExt;
    use lapin::options::{BasicConsumeOptions, BasicPublishOptions, BasicQosOptions};
    use lapin::types::{AMQPValue, LongString};
    let (conn, ch) = raw_channel().await;
    let topo = topology(prefix, &[]);
    ch.basic_qos(1000, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut args = FieldTable::default();
    args.insert(
        "x-stream-offset".into(),
        AMQPValue::LongString(LongString::from("first")),
    );
    let mut consumer = ch
        .basic_consume(
            topo.events_stream().as_str().into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: false,
                ..Default::default()
            },
            args,
        )
        .await
        .expect("consume stream");
    let marker = uuid::Uuid::new_v4().to_string();
    let body = serde_json::json!({"job_id": marker, "tenant_id": 0, "client_id": 0, "status": "MARKER", "attempt": 0, "at": imagejobs::job::now_rfc3339()});
    ch.basic_publish(
        topo.events_exchange().as_str().into(),
        "".into(),
        BasicPublishOptions::default(),
        &serde_json::to_vec(&body).expect("json"),
        lapin::BasicProperties::default(),
    )
    .await
    .expect("publish marker");
    let mut out = Vec::new();
    let read = async {
        while let Some(Ok(d)) = consumer.next().await {
            let _ = d
                .acker
                .ack(lapin::options::BasicAckOptions::default())
                .await;
            if let Ok(ev) = serde_json::from_slice::<imagejobs::job::StatusEvent>(&d.data) {
                if ev.job_id.to_string() == marker {
                    break;
                }
                out.push(ev);
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("read the events stream to the marker");
    let _ = conn.close(200, "bye".into()).await;
    out
}

/// The events of one job, in stream order, as status names.
pub async fn statuses_of(prefix: &str, id: &str) -> Vec<String> {
    all_events(prefix)
        .await
        .into_iter()
        .filter(|e| e.job_id.to_string() == id)
        .map(|e| e.status)
        .collect()
}

/// A consumer as a child process of the built binary (to kill it for real).
pub struct ChildConsumer {
    pub child: tokio::process::Child,
}

impl ChildConsumer {
    pub fn start(args: Vec<String>) -> ChildConsumer {
        let exe = std::env::current_exe().expect("test exe");
        let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
        let bin = dir.join("imagejobs-consumer");
        assert!(
            bin.exists(),
            "{} is missing: run `cargo build --workspace --bins` first (make test does)",
            bin.display()
        );
        let child = tokio::process::Command::new(bin)
            .args(&args[1..])
            .env("RUST_LOG", "warn")
            .kill_on_drop(true)
            .spawn()
            .expect("consumer starts");
        ChildConsumer { child }
    }

    pub fn signal(&self, sig: &str) {
        let pid = self.child.id().expect("running").to_string();
        let ok = std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .expect("kill runs");
        assert!(ok.success());
    }
}
