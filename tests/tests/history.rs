//! The job history as `/v1/jobs` and `/stats` serve it from each gateway's index: newest or oldest first by
//! submission time whatever the id, filters, stable cursor pages, exact totals where cheap, a job listed the
//! moment it is queued or ends, and a gateway started later serving the same answers once it has read the bucket.

use std::collections::HashSet;

use fleet_tests::*;
use serde_json::{json, Value};

async fn list(api: &Api, query: &str) -> Value {
    let r = api.get(&format!("/v1/jobs?{query}")).await;
    assert_eq!(r.status, 200, "{query}: {}", r.body);
    r.body
}

fn ids(page: &Value) -> Vec<String> {
    page["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .map(|j| j["id"].as_str().expect("id").to_string())
        .collect()
}

/// Every page of `query`, following `next_cursor`.
async fn all_pages(api: &Api, query: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let q = match &cursor {
            Some(c) => format!("{query}&cursor={c}"),
            None => query.to_string(),
        };
        let page = list(api, &q).await;
        out.extend(ids(&page));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return out,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_are_ordered_filtered_paged_and_the_same_on_every_gateway() {
    let (nats, cfg, worker, gw) = start_fleet(&[]).await;
    let api = gw.api();
    let mut submitted = Vec::new();
    for i in 0..24 {
        let (agent, message) = match i % 3 {
            0 => ("fake", "exit:3".to_string()),
            _ => ("echo", format!("job number {i}")),
        };
        let body = json!({"agent": agent, "message": message, "metadata": {"batch": i % 2}});
        let r = api.post("/v1/jobs?wait=20", &body).await;
        assert_eq!(r.status, 200, "{}", r.body);
        submitted.push(r.job_id());
    }
    // A direct publisher's random (v4) id sorts by its submission time too, not by the id's text.
    let nc = NatsClient::connect(&nats.url()).await;
    let direct = uuid::Uuid::new_v4();
    let record = nc
        .run_job("echo", json!({"id": direct, "message": "from nats"}))
        .await;
    assert_eq!(record.status, fleet_shared::JobStatus::Completed);
    submitted.push(direct.to_string());

    let newest = list(&api, "limit=5").await;
    let expected: Vec<String> = submitted.iter().rev().take(5).cloned().collect();
    assert_eq!(ids(&newest), expected, "newest first");
    assert_eq!(newest["total"], 25);
    let oldest = list(&api, "limit=3&order=oldest").await;
    assert_eq!(ids(&oldest), submitted[..3].to_vec());

    // Pages of 4 cover every job once, while jobs keep arriving between them.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let q = match &cursor {
            Some(c) => format!("limit=4&cursor={c}"),
            None => "limit=4".to_string(),
        };
        let page = list(&api, &q).await;
        seen.extend(ids(&page));
        let extra = json!({"agent": "echo", "message": "arrives meanwhile"});
        assert_eq!(api.post("/v1/jobs?wait=20", &extra).await.status, 200);
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    let mut expected_all = submitted.clone();
    expected_all.reverse();
    assert_eq!(seen, expected_all, "no job twice, none skipped");

    // Filters: agent and status from the index (with an exact total), text and metadata from the records.
    let failed = list(&api, "agent=fake&status=failed&limit=100").await;
    assert_eq!((ids(&failed).len(), failed["total"].as_u64()), (8, Some(8)));
    let texts = all_pages(&api, "q=NUMBER%201&limit=2").await;
    let wanted: HashSet<&str> = [
        "job number 1",
        "job number 10",
        "job number 11",
        "job number 13",
        "job number 14",
        "job number 16",
        "job number 17",
        "job number 19",
    ]
    .into();
    assert_eq!(texts.len(), 8, "{texts:?}");
    let found = list(&api, "q=number%201&limit=100").await;
    for job in found["jobs"].as_array().unwrap() {
        let message = job["request"]["message"].as_str().unwrap();
        assert!(wanted.contains(message), "{message}");
    }
    assert!(
        found.get("total").is_none(),
        "no exact total for a text search"
    );
    let batch = list(&api, "metadata=batch:1&agent=echo&limit=100").await;
    assert!(ids(&batch).iter().all(|id| {
        let i = submitted.iter().position(|s| s == id).unwrap();
        i % 2 == 1 && i % 3 != 0
    }));
    assert_eq!(ids(&batch).len(), 8);
    let cut = newest["jobs"][2]["request"]["submitted_at"]
        .as_str()
        .unwrap()
        .to_string();
    let before = list(
        &api,
        &format!("submitted_before={}&limit=100", urlencode(&cut)),
    )
    .await;
    assert!(ids(&before).iter().all(|id| !expected[..3].contains(id)));

    // /stats counts from the index, and agree with the lists.
    let stats = api.get("/stats").await.body;
    assert_eq!(stats["by_agent"]["fake"]["failed"], 8, "{stats}");
    let total_now = list(&api, "limit=1").await["total"].as_u64().unwrap();
    assert_eq!(stats["total"].as_u64(), Some(total_now));

    // A gateway started now reads the bucket and gives the same answers.
    let late = start_gateway(&cfg.config).await;
    let late_api = late.api();
    eventually(
        "the late gateway's index",
        std::time::Duration::from_secs(10),
        || async { list(&late_api, "limit=100").await["total"].as_u64() == Some(total_now) },
    )
    .await;
    assert_eq!(
        all_pages(&late_api, "limit=7").await,
        all_pages(&api, "limit=7").await
    );
    worker.stop().await;
}

fn urlencode(s: &str) -> String {
    s.replace('+', "%2B").replace(':', "%3A")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_list_parameters_are_refused() {
    let nats = NatsServer::start();
    let cfg = test_config(&nats.url(), &[]);
    let gw = start_gateway(&cfg.config).await;
    let api = gw.api();
    for query in [
        "cursor=garbage",
        "metadata=nocolon",
        "order=sideways",
        "limit=0",
        "submitted_after=yesterday",
    ] {
        let r = api.get(&format!("/v1/jobs?{query}")).await;
        r.assert_problem(422, "invalid_request");
    }
}

/// A list answers with what anyone wrote just before it (another gateway, a worker, a direct publisher's job):
/// the index first takes in the bucket's last entry, read fresh from the server each time, even when a burst of
/// writes has its watch behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_includes_what_was_written_just_before_it_by_anyone() {
    let (nats, _cfg, _worker, gw) = start_fleet(&[]).await;
    let api = gw.api();
    let nc = NatsClient::connect(&nats.url()).await;
    // The index is ready once it has read the (empty) bucket.
    list(&api, "limit=1").await;
    for round in 0..3 {
        let puts = (0..300).map(|i| {
            let id = uuid::Uuid::new_v4();
            let message = format!("{round}/{i}");
            let request = fleet_shared::JobRequest::new(id, "fake", message, chrono::Utc::now());
            let bytes = fleet_shared::codec::to_msgpack(&fleet_shared::JobRecord::queued(request));
            let records = nc.records.clone();
            async move {
                records
                    .put(id.to_string(), bytes.into())
                    .await
                    .expect("put")
            }
        });
        futures::future::join_all(puts).await;
        let page = list(&api, "limit=1").await;
        assert_eq!(
            page["total"],
            300 * (round + 1),
            "round {round}: every record listed at once"
        );
    }
}
