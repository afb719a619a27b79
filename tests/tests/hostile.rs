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
    let (_nats, _cfg, worker, gw) = start_fleet(&[("FLEET_HTTP_BODY_TIMEOUT_SECS", "1")]).await;
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
    // Too many headers, all read at once (so the refusal is not lost to a reset): a problem body, not a bare 431.
    let mut many = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    let headers: String = (0..200).map(|i| format!("X-{i}: y\r\n")).collect();
    let request = format!("GET /v1/agents HTTP/1.1\r\nHost: x\r\n{headers}\r\n");
    many.write_all(request.as_bytes()).await.expect("write");
    let reply = whole_answer(&mut many).await;
    assert!(reply.starts_with("HTTP/1.1 431"), "{reply}");
    assert!(reply.contains("\"code\":\"headers_too_large\""), "{reply}");
    // A request line that is not HTTP: 400 with a problem body.
    let mut garbage = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    garbage
        .write_all(b"GET /\x01 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let reply = whole_answer(&mut garbage).await;
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    assert!(reply.contains("\"code\":\"malformed_request\""), "{reply}");
    // A chunk extension longer than hyper takes, in a body a handler reads.
    let mut chunked = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    let request = format!(
        "POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n2;ext={}\r\n{{}}\r\n0\r\n\r\n",
        "e".repeat(20_000)
    );
    chunked.write_all(request.as_bytes()).await.expect("write");
    let reply = whole_answer(&mut chunked).await;
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    assert!(reply.contains("\"code\":\"malformed_request\""), "{reply}");
    assert_eq!(gw.api().get("/v1/agents").await.status, 200);
    worker.stop().await;
}

/// Everything the server sends until it closes the connection.
async fn whole_answer(stream: &mut tokio::net::TcpStream) -> String {
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut got)).await;
    String::from_utf8_lossy(&got).into_owned()
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

/// What an HTTP caller sends past the gateway's bounds gets a problem body and costs nothing else: text fields of
/// a form are bounded in all (and a huge field name is never echoed), non-finite timeouts are refused, a name that
/// cannot be stored is refused before anything is spooled, a job too large for NATS is 413 (not a 503 to retry),
/// and made-up job ids cannot be cancelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn form_fields_timeouts_names_sizes_and_cancels_stay_within_their_bounds() {
    let (nats, cfg, worker, gw) = start_fleet(&[]).await;
    let api = gw.api();
    let send_form = |form| api.post_form("/v1/jobs", form);

    // Two fields of 600 KB each: each under the 1 MiB body limit, over it together.
    let form = reqwest::multipart::Form::new()
        .text("agent", "shell")
        .text("message", "a".repeat(600_000))
        .text("context", "b".repeat(600_000));
    let r = send_form(form).await;
    r.assert_problem(413, "payload_too_large");

    let long_name = "n".repeat(100_000);
    let form = reqwest::multipart::Form::new()
        .text("agent", "shell")
        .text(long_name.clone(), "x");
    let r = send_form(form).await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(
        r.body.to_string().len() < 2000,
        "the field name was echoed back"
    );

    for timeout in ["NaN", "inf", "1e999", "-1"] {
        let form = reqwest::multipart::Form::new()
            .text("agent", "shell")
            .text("message", "true")
            .text("timeout", timeout);
        let r = send_form(form).await;
        assert_eq!(
            (r.status, r.body["code"].as_str()),
            (422, Some("invalid_request")),
            "{timeout}: {}",
            r.body
        );
    }

    // 62 two-byte characters: 124 bytes, 372 once percent-encoded for the store.
    let wide = "é".repeat(62);
    let form = reqwest::multipart::Form::new()
        .text("agent", "shell")
        .text("message", "true")
        .part(
            "file",
            reqwest::multipart::Part::bytes(b"x".to_vec()).file_name(wide.clone()),
        );
    let r = send_form(form).await;
    r.assert_problem(400, "invalid_name");
    // As an output, the one file is skipped with the reason and the job's other files are stored.
    let r = api
        .post(
            "/v1/jobs?wait=30",
            &json!({"agent": "shell", "message": format!("echo x > '{wide}'; echo y > ok.txt")}),
        )
        .await;
    let record = &r.body["record"];
    assert_eq!(record["status"], "completed", "{record}");
    assert_eq!(record["files"][0]["name"], "ok.txt", "{record}");
    assert!(
        record["skipped_files"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("too long"),
        "{record}"
    );

    // A JSON body as large as the gateway takes, which NATS cannot carry: 413 with no Retry-After.
    let filler = "m".repeat(cfg.config.http.max_body_bytes - 64);
    let body = json!({"agent": "shell", "message": filler});
    let text = body.to_string();
    assert!(text.len() <= cfg.config.http.max_body_bytes);
    let r = api
        .send(
            api.request(reqwest::Method::POST, "/v1/jobs")
                .header("content-type", "application/json")
                .body(text),
        )
        .await;
    r.assert_problem(413, "payload_too_large");

    // A made-up id cannot be cancelled, so nobody fills the cancels bucket or cancels a job before it exists.
    let made_up = uuid::Uuid::new_v4();
    let r = api
        .post(&format!("/v1/jobs/{made_up}/cancel"), &json!({}))
        .await;
    r.assert_problem(404, "job_not_found");
    let nc = fleet_tests::clients::NatsClient::connect(&nats.url()).await;
    let cancels = nc
        .js
        .get_key_value(nc.topology.cancels_bucket())
        .await
        .unwrap();
    assert!(cancels.get(made_up.to_string()).await.unwrap().is_none());
    let future = uuid::Uuid::new_v7(uuid::Timestamp::from_unix(
        uuid::NoContext,
        4_000_000_000,
        0,
    ));
    let answer = nc
        .client
        .request(nc.topology.cancel_subject(&future), "".into())
        .await
        .unwrap();
    let answer: serde_json::Value = serde_json::from_slice(&answer.payload).unwrap();
    assert_eq!(answer["error"]["code"], "job_not_found", "{answer}");
    worker.stop().await;
}
