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
    assert_eq!(queue_len(&ch, &dead).await, 1, "listing loses nothing");

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
