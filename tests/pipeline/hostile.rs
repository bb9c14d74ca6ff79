//! Clients that misbehave: slow heads and bodies, idle connections, too many requests at
//! once, a shutdown with a slow client mid-request, wrong methods, two tokens. Each test
//! pins one finding of the hostile-client review (issue 11).

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use imagejobs_testkit::*;

/// Reads until the server closes the connection (or `within` passes: then `None`);
/// returns what it sent.
async fn read_until_closed(conn: &mut TcpStream, within: Duration) -> Option<String> {
    let mut out = Vec::new();
    let read = tokio::time::timeout(within, conn.read_to_end(&mut out)).await;
    match read {
        Ok(Ok(_)) | Ok(Err(_)) => Some(String::from_utf8_lossy(&out).into_owned()),
        Err(_) => None,
    }
}

#[tokio::test]
async fn a_slow_head_or_an_idle_connection_is_closed() {
    let p = Pipeline::new().await;
    let ing = p
        .ingress_with(|c| c.header_timeout = Duration::from_secs(1))
        .await;
    // A head sent one line every 400 ms never completes within the second it has.
    let mut slow = TcpStream::connect(ing.addr).await.unwrap();
    let started = Instant::now();
    let lines = [
        "GET /ping HTTP/1.1\r\n",
        "Host: x\r\n",
        "X-A: 1\r\n",
        "X-B: 2\r\n",
        "X-C: 3\r\n",
    ];
    for line in lines {
        if slow.write_all(line.as_bytes()).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let closed = read_until_closed(&mut slow, Duration::from_secs(5)).await;
    assert!(closed.is_some(), "the slow client was not cut off");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    // An idle keep-alive connection is closed too.
    let mut idle = TcpStream::connect(ing.addr).await.unwrap();
    idle.write_all(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let answer = read_until_closed(&mut idle, Duration::from_secs(5))
        .await
        .expect("closed after the idle timeout");
    assert!(
        answer.contains("200 OK") && answer.contains("pong"),
        "{answer}"
    );
}

#[tokio::test]
async fn a_slow_body_gets_408_within_the_body_timeout() {
    let p = Pipeline::new().await;
    let ing = p
        .ingress_with(|c| c.body_timeout = Duration::from_secs(1))
        .await;
    let conn = TcpStream::connect(ing.addr).await.unwrap();
    let (mut read, mut write) = conn.into_split();
    let head = format!(
        "POST /api/v1/job HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Type: image/png\r\nContent-Length: 100000\r\n\r\n",
        token(1, 1)
    );
    write.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    // 4 bytes a second, as the hostile client did, for up to 20 s.
    let trickle = tokio::spawn(async move {
        for _ in 0..80 {
            if write.write_all(b"\x89PNG").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while !String::from_utf8_lossy(&answer).contains("\r\n\r\n{") {
            match read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let elapsed = started.elapsed();
    trickle.abort();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"code\":408"), "{answer}");
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
}

/// Opens a connection and starts a submit whose body never comes: a request in flight
/// until the body timeout.
async fn stalled_submit(addr: std::net::SocketAddr) -> TcpStream {
    let mut conn = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /api/v1/job HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Type: image/png\r\nContent-Length: 1000\r\n\r\nPNG",
        token(1, 1)
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    conn
}

#[tokio::test]
async fn beyond_max_in_flight_the_answer_is_503_with_retry_after() {
    let p = Pipeline::new().await;
    let ing = p.ingress_with(|c| c.max_in_flight = 2).await;
    let held = [
        stalled_submit(ing.addr).await,
        stalled_submit(ing.addr).await,
    ];
    let url = format!("{}/ping", ing.url);
    let refused = eventually(
        Duration::from_secs(10),
        "a 503 while two are in flight",
        || async {
            let r = ing.http.get(&url).send().await.ok()?;
            (r.status() == 503).then_some(r)
        },
    )
    .await;
    assert_eq!(refused.headers()["retry-after"], "1");
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["code"], 503, "{body}");
    assert!(
        body["details"].as_str().unwrap().contains("in flight"),
        "{body}"
    );

    // The held requests end (their clients go away) and the ingress serves again.
    drop(held);
    eventually(Duration::from_secs(10), "/ping 200 again", || async {
        let r = ing.http.get(&url).send().await.ok()?;
        (r.status() == 200).then_some(())
    })
    .await;
}

#[tokio::test]
async fn sigterm_ends_the_ingress_within_the_drain_timeout_whatever_the_clients_do() {
    let p = Pipeline::new().await;
    let (mut ingress, url) = p
        .child_ingress(|c| {
            c.drain_timeout = Duration::from_secs(2);
            c.body_timeout = Duration::from_secs(60);
        })
        .await;
    let addr: std::net::SocketAddr = url.trim_start_matches("http://").parse().unwrap();
    // One client mid-body, one idle keep-alive connection, one slow head.
    let _mid_body = stalled_submit(addr).await;
    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut head = TcpStream::connect(addr).await.unwrap();
    head.write_all(b"GET /ping HTTP/1.1\r\nHost").await.unwrap();
    // The ingress serves as usual meanwhile.
    let http = reqwest::Client::new();
    eventually(Duration::from_secs(10), "/ping", || async {
        let r = http.get(format!("{url}/ping")).send().await.ok()?;
        (r.status() == 200).then_some(())
    })
    .await;

    let started = Instant::now();
    ingress.signal("TERM").await.unwrap();
    let code = ingress
        .wait(Duration::from_secs(15))
        .await
        .expect("the ingress exits after SIGTERM");
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(6),
        "took {took:?} with a 2 s drain timeout"
    );
    assert_eq!(code, Some(0), "a drained shutdown exits 0");
}

#[tokio::test]
async fn a_wrong_method_gets_405_with_allow_and_the_error_body() {
    let p = Pipeline::new().await;
    let ing = p.ingress().await;
    let id = uuid::Uuid::new_v4();
    for (method, path, allow) in [
        (reqwest::Method::GET, "/api/v1/job".to_owned(), "POST"),
        (reqwest::Method::DELETE, "/ping".to_owned(), "GET,HEAD"),
        (
            reqwest::Method::PUT,
            format!("/api/v1/job/{id}/status"),
            "GET,HEAD",
        ),
    ] {
        let resp = ing
            .http
            .request(method.clone(), format!("{}{path}", ing.url))
            .bearer_auth(token(1, 1))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 405, "{method} {path}");
        let allowed = resp.headers()["allow"].to_str().unwrap().replace(' ', "");
        assert_eq!(allowed, allow, "{method} {path}");
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["code"], 405, "{body}");
        assert_eq!(body["error"], "method not allowed", "{body}");
        let first = allow.split(',').next().unwrap();
        assert!(body["details"].as_str().unwrap().contains(first), "{body}");
    }
}
