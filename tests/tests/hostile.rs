//! Hostile clients: a body trickled in slowly is cut off with 408 at `http.body_timeout_secs`, a huge header is
//! refused, and neither stops the gateway from serving everyone else meanwhile.

use std::time::{Duration, Instant};

use fleet_tests::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn answer(stream: &mut tokio::net::TcpStream, patience: Duration) -> String {
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    let deadline = Instant::now() + patience;
    while Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_millis(200), stream.read(&mut buf)).await {
            Ok(Ok(0)) => break,
            Ok(Ok(n)) => {
                got.extend_from_slice(&buf[..n]);
                if got.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            Ok(Err(_)) => break,
            Err(_) => {}
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_bodies_time_out_and_huge_headers_are_refused() {
    let nats = NatsServer::start();
    let cfg = test_config(&nats.url(), &[("FLEET_HTTP_BODY_TIMEOUT_SECS", "1")]);
    let worker = start_worker(&cfg.config).await;
    let gw = start_gateway(&cfg.config).await;
    let addr = gw.url.trim_start_matches("http://").to_string();

    // A body promised as 100 bytes, trickled a byte at a time and never finished.
    let mut slow = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    slow.write_all(b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
        .await
        .expect("write");
    let started = Instant::now();
    let trickle = tokio::spawn(async move {
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(150)).await;
            if slow.write_all(b" ").await.is_err() {
                break;
            }
        }
        answer(&mut slow, Duration::from_secs(5)).await
    });
    // Meanwhile everyone else is served.
    let r = gw
        .api()
        .post(
            "/v1/jobs?wait=20",
            &json!({"agent": "echo", "message": "unhindered"}),
        )
        .await;
    assert_eq!(r.body["status"], "completed", "{}", r.body);
    let reply = trickle.await.expect("join");
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    // A megabyte of header.
    let mut big = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    let header = format!(
        "GET /v1/agents HTTP/1.1\r\nHost: x\r\nX-Filler: {}\r\n\r\n",
        "a".repeat(1 << 20)
    );
    let _ = big.write_all(header.as_bytes()).await;
    let reply = answer(&mut big, Duration::from_secs(5)).await;
    assert!(
        reply.is_empty() || reply.starts_with("HTTP/1.1 431"),
        "{reply}"
    );
    assert_eq!(gw.api().get("/v1/agents").await.status, 200);
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickled_headers_lose_their_connection() {
    let nats = NatsServer::start();
    let cfg = test_config(&nats.url(), &[("FLEET_HTTP_HEADER_TIMEOUT_SECS", "1")]);
    let gw = start_gateway(&cfg.config).await;
    let addr = gw.url.trim_start_matches("http://").to_string();

    // A request line, then one header line every 150 ms, never ending the head.
    let slow = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    let (mut read, mut write) = slow.into_split();
    let started = Instant::now();
    let trickle = tokio::spawn(async move {
        let _ = write
            .write_all(b"GET /v1/agents HTTP/1.1\r\nHost: x\r\n")
            .await;
        for i in 0..60 {
            tokio::time::sleep(Duration::from_millis(150)).await;
            if write
                .write_all(format!("X-{i}: y\r\n").as_bytes())
                .await
                .is_err()
            {
                return false;
            }
        }
        true
    });
    // The server closes the connection (maybe with a 408) once the head is a second late.
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let closed = loop {
        match tokio::time::timeout(Duration::from_secs(8), read.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => break false,
        }
    };
    let waited = started.elapsed();
    let reply = String::from_utf8_lossy(&got).into_owned();
    assert!(closed, "the trickling connection stayed open: {reply}");
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(4),
        "closed after {waited:?}"
    );
    assert!(
        reply.is_empty() || reply.starts_with("HTTP/1.1 408"),
        "{reply}"
    );
    trickle.abort();

    // A prompt client on a fresh connection is served as ever.
    assert_eq!(gw.api().get("/v1/agents").await.status, 200);
}
