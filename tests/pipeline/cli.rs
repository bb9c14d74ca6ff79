//! The `imagejobs` CLI against a real pipeline.

use std::time::Duration;

use imagejobs_testkit::keys::TokenKeys;
use imagejobs_testkit::*;

const T: Duration = Duration::from_secs(30);

async fn cli(args: &[&str], envs: &[(&str, String)]) -> (i32, String, String) {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_imagejobs"));
    cmd.args(args)
        .env_remove("AMQP_PREFIX")
        .env("NO_COLOR", "1");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(T, cmd.output())
        .await
        .expect("cli finishes")
        .expect("cli runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn token_submit_wait_and_status() {
    let p = Pipeline::new().await;
    let stubs = &p.stubs;
    let ing = p.ingress().await;
    let consumer = p.consumer().await;
    let dir = std::env::temp_dir().join(format!("imagejobs-cli-{}", p.deployment.prefix));
    std::fs::create_dir_all(&dir).unwrap();
    let files: Vec<String> = (0..3)
        .map(|i| {
            let f = dir.join(format!("img{i}.png"));
            std::fs::write(&f, png(30 + i, 20)).unwrap();
            f.display().to_string()
        })
        .collect();

    let (code, tok, err) = cli(
        &["token", "--tenant", "1", "--client", "4"],
        &[("JWT_SECRET", SECRET.into())],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let env = vec![
        ("IMAGEJOBS_URL", ing.url.clone()),
        ("IMAGEJOBS_TOKEN", tok.trim().to_owned()),
    ];
    let mut args = vec!["submit", "--wait"];
    args.extend(files.iter().map(String::as_str));
    let (code, out, err) = cli(&args, &env).await;
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    let all = format!("{out}{err}");
    assert_eq!(all.matches("SUCCESS").count(), 3, "{all}");
    let id = all
        .split_whitespace()
        .find(|w| uuid::Uuid::parse_str(w).is_ok())
        .expect("an id is printed")
        .to_owned();
    let (code, out, _) = cli(&["status", &id], &env).await;
    assert_eq!(code, 0);
    assert!(out.contains("\"SUCCESS\""), "{out}");

    // A job that fails makes `submit --wait` exit non-zero.
    stubs.faults().set_job_fail_rate(1.0);
    let (code, out, err) = cli(&["submit", "--wait", &files[0]], &env).await;
    assert_ne!(code, 0, "{out}{err}");
    assert!(format!("{out}{err}").contains("FAILED"));

    consumer.stop().await;
    ing.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn dead_list_and_replay() {
    let p = Pipeline::with_stubs(|c| c.force_job_status = Some(422)).await;
    let stubs = &p.stubs;
    let ing = p.ingress().await;
    let consumer = p.consumer().await;
    let id = ing.submit_id(&png(20, 20)).await;
    assert_eq!(ing.wait_terminal(&id, 1, T).await["status"], "FAILED");
    let (_c, ch) = p.deployment.channel().await;
    let dead = p.deployment.topology.dead_queue();
    eventually(T, "the job in the dead queue", || async {
        (queue_len(&ch, &dead).await == 1).then_some(())
    })
    .await;

    let env = vec![
        ("AMQP_URL", p.deployment.urls.to_string_exposed()),
        ("AMQP_PREFIX", p.deployment.prefix.clone()),
    ];
    let (code, out, err) = cli(&["dead", "list"], &env).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&id) && out.contains("422"), "{out}");
    // The listed messages return to the queue when the CLI's channel closes, which a
    // quorum queue applies a moment later: wait for it rather than read the count at once.
    eventually(T, "listing loses nothing", || async {
        (queue_len(&ch, &dead).await == 1).then_some(())
    })
    .await;

    stubs.faults().set_forced_status(None);
    let (code, out, err) = cli(&["dead", "replay", &id], &env).await;
    assert_eq!(code, 0, "{out}{err}");
    let job = eventually(T, "the replayed job to succeed", || async {
        let v: serde_json::Value = ing.get_job(&id, 1).await.json().await.ok()?;
        (v["status"] == "SUCCESS").then_some(v)
    })
    .await;
    assert_eq!(
        job["attempts"], 2,
        "a replay runs as the next attempt: {job}"
    );
    assert_eq!(queue_len(&ch, &dead).await, 0);
    let (code, _, _) = cli(&["dead", "replay", "--all"], &env).await;
    assert_ne!(code, 0, "nothing left to replay");

    consumer.stop().await;
}

#[tokio::test]
async fn token_signs_with_a_private_key_the_ingress_verifies() {
    let p = Pipeline::new().await;
    let key = TokenKeys::new("ES256");
    let ing = p
        .ingress_with(|c| {
            c.jwt_secret = None;
            c.jwt_public_key_file = Some(key.public_file.clone());
            c.jwt_algorithm = key.algorithm.into();
        })
        .await;
    let private = key.private_file.display().to_string();
    let (code, tok, err) = cli(
        &["token", "--tenant", "2", "--client", "5"],
        &[
            ("JWT_PRIVATE_KEY_FILE", private.clone()),
            ("JWT_ALGORITHM", "ES256".into()),
        ],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let lookup = |tok: String| {
        let ing = &ing;
        async move {
            ing.http
                .get(format!("{}/api/v1/job/{}", ing.url, uuid::Uuid::new_v4()))
                .bearer_auth(tok.trim())
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(lookup(tok).await, 404, "the ingress takes the CLI's token");

    // The key's algorithm must be named: ES256 key with the default HS256 is refused
    // clearly, and an HS256 token of some secret is not what this ingress takes.
    let (code, _, err) = cli(
        &[
            "token",
            "--tenant",
            "2",
            "--client",
            "5",
            "--private-key-file",
            &private,
        ],
        &[],
    )
    .await;
    assert_ne!(code, 0);
    assert!(err.contains("algorithm") || err.contains("key"), "{err}");
    let (code, tok, err) = cli(
        &["token", "--tenant", "2", "--client", "5"],
        &[("JWT_SECRET", SECRET.into())],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(lookup(tok).await, 401);
    ing.stop().await;
}

#[tokio::test]
async fn top_shows_queues_rates_and_recent_failures() {
    let p = Pipeline::new().await;
    let ing = p.ingress().await;
    let consumer = p.consumer_with(|c| c.metrics_port = Some(0)).await;
    let metrics = format!("http://{}/metrics", consumer.metrics_addr.unwrap());
    for _ in 0..2 {
        let id = ing.submit_id(&png(10, 10)).await;
        assert_eq!(ing.wait_terminal(&id, 1, T).await["status"], "SUCCESS");
    }
    p.stubs.faults().set_forced_status(Some(422));
    let failed = ing.submit_id(&png(10, 10)).await;
    assert_eq!(ing.wait_terminal(&failed, 1, T).await["status"], "FAILED");
    let env = vec![
        ("AMQP_URL", p.deployment.urls.to_string_exposed()),
        ("AMQP_PREFIX", p.deployment.prefix.clone()),
        ("IMAGEJOBS_URL", ing.url.clone()),
        ("IMAGEJOBS_CONSUMER_METRICS", metrics),
        ("RETRY_DELAYS", "1,2".into()),
    ];
    // The failure comes from the events stream, read in the background: a frame may be
    // printed before it arrives, so ask again until it shows.
    let out = eventually(T, "top to show the failure", || async {
        let (code, out, err) = cli(&["top", "--once", "--interval", "0.3"], &env).await;
        assert_eq!(code, 0, "{err}");
        out.contains(&failed).then_some(out)
    })
    .await;
    let topo = &p.deployment.topology;
    assert!(out.contains(&topo.work_queue()), "{out}");
    assert!(out.contains("work queue, 16 lanes"), "{out}");
    assert!(out.contains(&topo.dead_queue()), "{out}");
    let dead_line = out
        .lines()
        .find(|l| l.starts_with(&topo.dead_queue()))
        .unwrap();
    assert_eq!(dead_line.split_whitespace().nth(1), Some("1"), "{out}");
    assert!(out.contains("accepted 3  SUCCESS 2  FAILED 1"), "{out}");
    assert!(out.contains("metrics from 2 of 2 processes"), "{out}");
    assert!(out.contains("422"), "the failure's error: {out}");
    consumer.stop().await;
}

/// RabbitMQ's own metrics, where README says to scrape them (RABBITMQ_PROMETHEUS_URLS).
#[tokio::test]
async fn rabbitmqs_own_metrics_are_served() {
    init_logs(); // and the rustls provider reqwest needs
    let Ok(urls) = std::env::var("RABBITMQ_PROMETHEUS_URLS") else {
        panic!("RABBITMQ_PROMETHEUS_URLS is set by rabbitmq/node.sh (make test sources its env)");
    };
    for url in urls.split_whitespace() {
        let text = reqwest::get(url).await.unwrap().text().await.unwrap();
        assert!(
            text.contains("# TYPE rabbitmq_global_messages_received_total counter"),
            "{url}"
        );
        let detailed = format!("{url}/detailed?family=queue_coarse_metrics");
        let resp = reqwest::get(&detailed).await.unwrap();
        assert_eq!(resp.status(), 200, "{detailed}");
    }
}

#[tokio::test]
async fn list_watch_and_cancel() {
    let p = Pipeline::with_stubs(|s| s.running_ms = 200).await;
    let ing = p.ingress().await;
    let env = vec![
        ("IMAGEJOBS_URL", ing.url.clone()),
        ("IMAGEJOBS_TOKEN", token(1, 1)),
    ];
    // No consumer yet: both wait; one is cancelled from the CLI.
    let cancelled = ing.submit_id(&png(20, 20)).await;
    let watched = ing.submit_id(&png(21, 20)).await;
    let (code, out, err) = cli(&["cancel", &cancelled], &env).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("CANCELLED"), "{out}");
    let (code, _, err) = cli(&["cancel", &cancelled], &env).await;
    assert_ne!(code, 0, "a second cancel is refused");
    assert!(err.contains("conflict"), "{err}");

    // `watch` follows the other job live from QUEUED to SUCCESS once a consumer runs.
    let watch = {
        let env = env.clone();
        let id = watched.clone();
        tokio::spawn(async move { cli(&["watch", &id], &env).await })
    };
    let consumer = p.consumer().await;
    let (code, out, err) = watch.await.unwrap();
    assert_eq!(code, 0, "{out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines.first().is_some_and(|l| l.contains("QUEUED")), "{out}");
    assert!(lines.last().is_some_and(|l| l.contains("SUCCESS")), "{out}");

    let (code, out, err) = cli(&["list"], &env).await;
    assert_eq!(code, 0, "{err}");
    let rows: Vec<&str> = out.lines().skip(1).collect();
    assert_eq!(rows.len(), 2, "{out}");
    assert!(
        rows[0].starts_with(&watched) && rows[0].contains("SUCCESS"),
        "{out}"
    );
    assert!(
        rows[1].starts_with(&cancelled) && rows[1].contains("CANCELLED"),
        "{out}"
    );
    // A table: each row's status, attempts and creation time sit under their heading
    // (SUCCESS and CANCELLED differ in width; the one with a result has a DETAIL).
    let header = out.lines().next().unwrap_or_default();
    let column = |name: &str| header.find(name).unwrap_or_else(|| panic!("{name}: {out}"));
    let attempts_end = column("ATTEMPTS") + "ATTEMPTS".len();
    for (row, status) in rows.iter().zip(["SUCCESS", "CANCELLED"]) {
        assert_eq!(row.find(status), Some(column("STATUS")), "{out}");
        assert_eq!(&row[attempts_end - 3..attempts_end], "  1", "{out}");
        assert_eq!(row.find("  20"), Some(column("CREATED") - 2), "{out}");
    }
    assert_eq!(
        rows[0].find("http"),
        Some(column("DETAIL")),
        "the result's location, as DETAIL: {out}"
    );
    let (code, out, err) = cli(
        &["list", "--status", "cancelled", "--limit", "1", "--json"],
        &env,
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let page: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(page["jobs"][0]["id"], cancelled.as_str());
    assert!(page.get("next").is_none());
    let (code, _, err) = cli(&["list", "--limit", "0"], &env).await;
    assert_ne!(code, 0);
    assert!(err.contains("limit"), "{err}");
    consumer.stop().await;
    ing.stop().await;
}
