//! `fleet pg-sink` against a real PostgreSQL server: the table holds what the jobs bucket holds, follows it live,
//! survives being killed (resuming from its committed position, writing nothing twice), and applies deletions.

use std::collections::BTreeMap;
use std::time::Duration;

use fleet_tests::clients::NatsClient;
use fleet_tests::postgres::Postgres;
use fleet_tests::{
    ended_run, eventually, start_fleet, Api, FleetProcess, GatewayHandle, NatsServer, TestConfig,
    WorkerHandle,
};

/// Each job row's (status, exit code, agent, stdout from the stored record), by id.
type Rows = BTreeMap<String, (String, Option<i32>, String, String)>;

async fn database(pg: &Postgres) -> tokio_postgres::Client {
    let mut last = None;
    for _ in 0..100 {
        match tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls).await {
            Ok((client, connection)) => {
                tokio::spawn(connection);
                return client;
            }
            // "the database system is starting up", for a moment after the socket appears.
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("cannot connect to the test PostgreSQL: {last:?}");
}

async fn rows(db: &tokio_postgres::Client) -> Rows {
    // Before the sink's first start the table does not exist: no rows.
    let Ok(found) = db
        .query(
            "SELECT id::text, status, exit_code, agent, record->>'stdout' FROM fleet_jobs",
            &[],
        )
        .await
    else {
        return Rows::new();
    };
    found
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3), r.get(4))))
        .collect()
}

/// The bucket's jobs as the table should hold them.
async fn expected(nats: &NatsClient, ids: &[String]) -> Rows {
    let mut want = Rows::new();
    for id in ids {
        if let Some(r) = nats.record(id.parse().expect("id")).await {
            let status = serde_json::to_value(r.status).expect("status");
            let status = status.as_str().expect("text").to_string();
            want.insert(id.clone(), (status, r.exit_code, r.request.agent, r.stdout));
        }
    }
    want
}

async fn in_step(db: &tokio_postgres::Client, nats: &NatsClient, ids: &[String]) {
    let mut last = (Rows::new(), Rows::new());
    let patience = std::time::Instant::now() + Duration::from_secs(20);
    while std::time::Instant::now() < patience {
        last = (rows(db).await, expected(nats, ids).await);
        if last.0 == last.1 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "the table is not in step with the bucket:\n table {:?}\nbucket {:?}",
        last.0, last.1
    );
}

fn start_sink(cfg: &TestConfig, pg: &Postgres) -> FleetProcess {
    FleetProcess::start("pg-sink", cfg, &[("FLEET_PG_SINK_URL", &pg.url())])
}

/// A PostgreSQL server with a client of it, and the usual test fleet with a client of its API and of NATS (the
/// last element keeps the fleet running).
async fn setup() -> (
    Postgres,
    tokio_postgres::Client,
    TestConfig,
    Api,
    NatsClient,
    (NatsServer, WorkerHandle, GatewayHandle),
) {
    let pg = Postgres::start();
    let db = database(&pg).await;
    let (nats_server, cfg, worker, gw) = start_fleet(&[]).await;
    let (api, nats) = (gw.api(), NatsClient::connect(&nats_server.url()).await);
    (pg, db, cfg, api, nats, (nats_server, worker, gw))
}

fn id_of(record: serde_json::Value) -> String {
    record["id"].as_str().expect("id").to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_table_follows_the_bucket_and_a_killed_sink_resumes_without_duplicates() {
    let (pg, db, cfg, api, nats, _running) = &setup().await;

    // History from before the sink existed is taken in at its first start.
    let mut ids = vec![
        id_of(ended_run(api, "fake", "print:before").await),
        id_of(ended_run(api, "fake", "exit:3").await),
    ];
    let mut sink = start_sink(cfg, pg);
    in_step(db, nats, &ids).await;
    let failed = rows(db).await[&ids[1]].clone();
    assert_eq!((failed.0.as_str(), failed.1), ("failed", Some(3)));

    // Live: a job's queued, running and ended records all reach the table, the last one staying.
    ids.push(id_of(ended_run(api, "fake", "sleep:0.3 print:live").await));
    in_step(db, nats, &ids).await;
    assert_eq!(rows(db).await[&ids[2]].3, "live\n");

    // Killed, it misses jobs and a deletion; restarted, it catches up from its committed position.
    sink.signal(libc::SIGKILL);
    let _ = sink.child.wait();
    ids.push(id_of(ended_run(api, "fake", "print:while-down").await));
    nats.records.delete(&ids[0]).await.expect("delete a record");
    let _sink = start_sink(cfg, pg);
    in_step(db, nats, &ids).await;
    let now = rows(db).await;
    assert!(!now.contains_key(&ids[0]), "a deleted record's row is gone");
    assert_eq!(now.len(), 3, "one row per job still in the bucket: {now:?}");

    // Its position is the bucket's last revision: nothing is read twice after a restart.
    let mut stream = nats.records.stream.clone();
    let last = stream.info().await.expect("info").state.last_sequence;
    eventually(
        "the committed position",
        Duration::from_secs(10),
        || async {
            let row = db
                .query_one(
                    "SELECT revision FROM fleet_sink_position WHERE table_name = 'fleet_jobs'",
                    &[],
                )
                .await
                .expect("position");
            row.get::<_, i64>(0) as u64 == last
        },
    )
    .await;

    // `--status` says the same for operators.
    let status = ["pg-sink", "--postgres", &pg.url(), "--status", "--count"];
    let status = fleet_tests::fleet_cli(cfg, &status);
    assert!(status.status.success(), "{status:?}");
    assert_eq!(
        String::from_utf8_lossy(&status.stdout),
        format!("fleet_jobs: at entry {last} of the bucket's {last} (0 behind)\n3 rows\n")
    );

    // A second table has a position of its own: a sink writing it starts from the beginning of the bucket.
    let _archive = FleetProcess::start(
        "pg-sink",
        cfg,
        &[
            ("FLEET_PG_SINK_URL", &pg.url()),
            ("FLEET_PG_SINK_TABLE", "archive"),
        ],
    );
    eventually(
        "the second table filled",
        Duration::from_secs(20),
        || async {
            let count = db.query_one("SELECT count(*) FROM archive", &[]).await;
            count.is_ok_and(|row| row.get::<_, i64>(0) == 3)
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_table_name_or_database_is_refused_with_a_clear_error() {
    let pg = Postgres::start();
    let (_nats, cfg, _worker, _gw) = start_fleet(&[]).await;
    let bad_table = fleet_tests::fleet_cli(
        &cfg,
        &["pg-sink", "--postgres", &pg.url(), "--table", "jobs; DROP"],
    );
    assert!(!bad_table.status.success());
    let stderr = String::from_utf8_lossy(&bad_table.stderr);
    assert!(stderr.contains("invalid_table"), "{stderr}");

    let nowhere = format!(
        "host={} port=1 user=fleet",
        std::env::temp_dir().join("no-such-dir").display()
    );
    let unreachable = fleet_tests::fleet_cli(&cfg, &["pg-sink", "--postgres", &nowhere]);
    assert!(!unreachable.status.success());
    let stderr = String::from_utf8_lossy(&unreachable.stderr);
    assert!(stderr.contains("postgres_unreachable"), "{stderr}");
}

/// Hostile: an agent prints NUL bytes, which PostgreSQL's text and jsonb cannot hold. Its row is written with
/// U+FFFD in their place, and the jobs after it are not held up behind it.
#[tokio::test(flavor = "multi_thread")]
async fn output_with_nul_bytes_is_stored_and_does_not_stall_the_sink() {
    let (pg, db, cfg, api, nats, _running) = &setup().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let planted = dir.path().join("nul.txt");
    std::fs::write(&planted, b"a\0b\n").expect("write");

    let _sink = start_sink(cfg, pg);
    let nul = ended_run(api, "fake", &format!("cat:{}", planted.display())).await;
    assert_eq!(
        nul["stdout"], "a\u{0}b\n",
        "the record keeps the output as printed"
    );
    let ids = vec![
        id_of(nul),
        id_of(ended_run(api, "fake", "print:after").await),
    ];
    eventually(
        "both jobs in the table",
        Duration::from_secs(20),
        || async { rows(db).await.len() == 2 },
    )
    .await;
    let table = rows(db).await;
    assert_eq!(table[&ids[0]].3, "a\u{FFFD}b\n");
    assert_eq!(table[&ids[1]].3, "after\n");
    let bucket = expected(nats, &ids).await;
    assert_eq!(table[&ids[1]], bucket[&ids[1]]);
}
