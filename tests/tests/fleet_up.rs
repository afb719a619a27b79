//! `fleet up` as a person runs it: one per data directory (a second says who holds it), a managed nats-server
//! that dies with it however it dies, a stale lock taken over with the data intact, ports taken when free or
//! refused when named, `--nats` honoured, and a start-up summary that says where everything is.

use std::path::Path;
use std::time::Duration;

use fleet_tests::*;

fn lock_holder(dir: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(dir.join(".fleet/fleet.lock")).expect("lock file");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("lock file `{text}`: {e}"))
}

fn api(base: &str) -> Api {
    Api::new(base.trim_end_matches('/'))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_fleet_up_per_data_directory_and_its_nats_dies_with_it() {
    let dir = tempfile::tempdir().unwrap();
    // Ports of its own choosing (0), read back from the summary; later runs ask for the same ones.
    let mut first = FleetUp::start(
        dir.path(),
        &["--nats-port", "0", "--http", "127.0.0.1:0"],
        &[],
    );
    let summary = first.summary();
    assert!(
        summary.contains("fleet ") && summary.contains("local fleet"),
        "{summary}"
    );
    let base = row(&summary, "http");
    let http = base.trim_start_matches("http://").to_string();
    let nats_port = row(&summary, "nats")
        .rsplit(':')
        .next()
        .and_then(|p| p.parse::<u16>().ok())
        .expect("the nats row names a port");
    assert!(
        http.starts_with("127.0.0.1:") && !http.ends_with(":0"),
        "{summary}"
    );
    assert_ne!(nats_port, 0, "{summary}");
    assert!(summary.contains("auth         none"), "{summary}");
    let r = api(&base)
        .post(
            "/v1/jobs?wait=30",
            &serde_json::json!({"agent": "echo", "message": "kept"}),
        )
        .await;
    assert_eq!(r.body["status"], "completed", "{}", r.body);
    let id = r.job_id();

    // A second `fleet up` on the same directory, on other ports, is refused and names the first.
    let mut second = FleetUp::start(
        dir.path(),
        &["--nats-port", "0", "--http", "127.0.0.1:0"],
        &[],
    );
    let status = second.exit_within(Duration::from_secs(20));
    assert_eq!(status.code(), Some(1));
    let err = second.stderr();
    assert!(
        err.contains("fleet: data_dir_in_use:") && err.contains(&format!("pid {}", first.pid())),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");

    // kill -9: the managed nats-server goes with it.
    let nats_pid = lock_holder(dir.path())["nats_pid"].as_i64().unwrap() as i32;
    assert!(process_alive(nats_pid));
    unsafe { libc::kill(first.pid(), libc::SIGKILL) };
    first.exit_within(Duration::from_secs(5));
    eventually(
        "the managed nats-server to end",
        Duration::from_secs(10),
        || async move { !process_alive(nats_pid) },
    )
    .await;

    // The stale lock is taken over, saying so, and the data is intact.
    let mut third = FleetUp::start(
        dir.path(),
        &["--nats-port", &nats_port.to_string(), "--http", &http],
        &[],
    );
    let summary = third.summary();
    assert!(
        summary.contains(&format!(
            "took over the data directory from `fleet up` pid {}",
            first.pid()
        )),
        "{summary}"
    );
    let r = api(&base).get(&format!("/v1/jobs/{id}")).await;
    assert_eq!(r.body["stdout"], "kept\n", "{}", r.body);

    // A port the user named that is busy is an error, not another port.
    let other = tempfile::tempdir().unwrap();
    let mut busy = FleetUp::start(other.path(), &["--http", &http], &[]);
    assert_eq!(busy.exit_within(Duration::from_secs(20)).code(), Some(1));
    let err = busy.stderr();
    assert!(
        err.contains("fleet: port_in_use:") && err.contains("--http"),
        "{err}"
    );
    let mut busy = FleetUp::start(other.path(), &["--nats-port", &nats_port.to_string()], &[]);
    assert_eq!(busy.exit_within(Duration::from_secs(20)).code(), Some(1));
    assert!(
        busy.stderr().contains("fleet: port_in_use:"),
        "{}",
        busy.stderr()
    );
    drop(third);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_up_uses_the_nats_it_is_given_and_says_so() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let http = "127.0.0.1:0".to_string();
    for (args, env) in [
        (
            vec![
                "--nats".to_string(),
                nats.url(),
                "--http".into(),
                http.clone(),
            ],
            vec![],
        ),
        (
            vec!["--http".into(), http.clone()],
            vec![("FLEET_NATS_URL", nats.url())],
        ),
        (
            vec!["--http".into(), http.clone()],
            vec![("NATS_URL", nats.url())],
        ),
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let mut fleet = FleetUp::start(dir.path(), &args, &env);
        let summary = fleet.summary();
        assert_eq!(row(&summary, "nats"), nats.url(), "{summary}");
        assert!(summary.contains("using your NATS server"), "{summary}");
        let r = api(&row(&summary, "http"))
            .post(
                "/v1/jobs?wait=30",
                &serde_json::json!({"agent": "echo", "message": "hi"}),
            )
            .await;
        assert_eq!(r.body["status"], "completed", "{}", r.body);
        drop(fleet);
    }
    // A NATS that is not there is said to be so, at once.
    let mut fleet = FleetUp::start(dir.path(), &["--nats", "nats://127.0.0.1:9"], &[]);
    assert_eq!(fleet.exit_within(Duration::from_secs(15)).code(), Some(1));
    let err = fleet.stderr();
    assert!(
        err.contains("fleet: nats_unreachable:") && err.contains("--nats"),
        "{err}"
    );
}

/// The defaults 8080 and 4222: when busy, the next free port, said in the summary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_default_ports_move_to_the_next_free_one() {
    // Hold the defaults if nobody else does; either way they are busy for `fleet up`.
    let _api = std::net::TcpListener::bind("127.0.0.1:8080");
    let _nats = std::net::TcpListener::bind("127.0.0.1:4222");
    let dir = tempfile::tempdir().unwrap();
    let mut fleet = FleetUp::start(dir.path(), &[], &[]);
    let summary = fleet.summary();
    assert!(
        summary.contains("port 8080 was busy: the API is on"),
        "{summary}"
    );
    assert!(
        summary.contains("port 4222 was busy: NATS is on"),
        "{summary}"
    );
    let base = row(&summary, "http");
    assert_ne!(base, "http://127.0.0.1:8080");
    let r = api(&base)
        .post(
            "/v1/jobs?wait=30",
            &serde_json::json!({"agent": "echo", "message": "moved"}),
        )
        .await;
    assert_eq!(r.body["status"], "completed", "{}", r.body);

    // Ctrl-C stops everything and says so; the lock is released for the next one.
    unsafe { libc::kill(fleet.pid(), libc::SIGINT) };
    assert!(
        fleet.exit_within(Duration::from_secs(20)).success(),
        "{}",
        fleet.stderr()
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join(".fleet/fleet.lock")).unwrap(),
        ""
    );
}

/// Listening beyond loopback, `fleet up` prints the console's address on the network with its QR code, and `/qr`
/// shows the same address (never 127.0.0.1, which a phone cannot open).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_on_every_interface_shows_its_network_address_and_qr_code() {
    use fleet_gateway::console::address;
    let dir = tempfile::tempdir().unwrap();
    let mut fleet = FleetUp::start(
        dir.path(),
        &["--nats-port", "0", "--http", "0.0.0.0:0"],
        &[],
    );
    let summary = fleet.summary();
    let local = row(&summary, "open");
    let port = local
        .trim_start_matches("http://127.0.0.1:")
        .trim_end_matches('/')
        .parse::<u16>()
        .unwrap_or_else(|_| panic!("a loopback address to open: {summary}"));
    let listen = format!("0.0.0.0:{port}");
    let page = reqwest::get(format!("{local}qr")).await.unwrap();
    assert_eq!(page.status(), 200);
    let page = page.text().await.unwrap();
    match address::lan_url(listen.parse().unwrap(), &address::interface_ips()) {
        Some(lan) => {
            assert!(!lan.contains("127.0.0.1"), "{lan}");
            assert_eq!(row(&summary, "network"), lan, "{summary}");
            let code = summary.lines().filter(|l| l.contains('▄')).count();
            assert!(code >= 10, "the QR code follows the address:\n{summary}");
            assert!(page.contains(&format!("href=\"{lan}\"")), "{page}");
        }
        // A machine with no interface but loopback: nothing to show a phone, and the page says why.
        None => {
            assert!(!summary.contains("network"), "{summary}");
            assert!(page.contains("loopback only"), "{page}");
        }
    }
    assert!(page.contains("<svg"), "{page}");
    unsafe { libc::kill(fleet.pid(), libc::SIGINT) };
    assert!(fleet.exit_within(Duration::from_secs(20)).success());
}
