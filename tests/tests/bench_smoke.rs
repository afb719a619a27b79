//! `fleet bench` still runs end to end (tiny sizes; the speed targets are judged from full runs, not here).

use fleet_tests::built_binary;

/// `fleet bench ARGS`, which must succeed and print each of `lines`.
fn bench_prints(args: &[&str], lines: &[&str]) {
    let out = std::process::Command::new(built_binary("fleet"))
        .arg("bench")
        .args(args)
        .output()
        .expect("run fleet bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in lines {
        assert!(stdout.contains(line), "missing `{line}` in:\n{stdout}");
    }
}

#[test]
fn bench_runs_a_small_fleet_and_reports_every_measure() {
    bench_prints(
        &[
            "--samples",
            "5",
            "--throughput-jobs",
            "40",
            "--in-flight",
            "8",
            "--worker-concurrency",
            "4",
            "--rounds",
            "1",
            "--artifacts",
            "--artifact-big-mb",
            "1",
            "--artifact-small-count",
            "5",
            "--flat-memory-gb",
            "0",
            "--console",
            "--console-loads",
            "1",
            "--deployed",
            "--deployed-queued",
            "200",
        ],
        &[
            "raw spawn of the command",
            "the worker's supervisor alone",
            "job over NATS (publish→reply)",
            "job over HTTP (POST ?wait)",
            "raw spawn rate",
            "NATS, 8 in flight",
            "HTTP, 8 in flight",
            "rounds (raw/NATS/HTTP jobs/s)",
            "CPU per job in the NATS runs",
            "CPU per job in the HTTP runs",
            "CPU per raw spawn (µs):  command",
            "CPU-bound ceiling (raw spawn's CPU ÷ a job's): NATS",
            "idle RSS: gateway",
            "artifacts, local disk (MB/s)",
            "artifacts, S3 (moto) (MB/s)",
            "1 × 1 MB upload",
            "5 × 4 KB download via gateway",
            "5 × 4 KB download via gateway, one .tar",
            "run form usable after navigation",
            "console usable ≤ 1000 ms after navigation",
            "console first load ≤ 150 KB",
            "the worker's own CPU per job ≤ 120 µs",
            "as deployed (agent `noop`; HTTP through a gateway requiring API keys",
            "job over HTTP with a key, p50 / p99 (ms)",
            "HTTP with a key ≥ 0.8 × raw",
            ", deep queue",
        ],
    );
}

/// The model part against the tests' llama.cpp server: it runs and prints each figure beside its target.
#[test]
fn bench_measures_the_front_door_against_the_model_server() {
    let llm = fleet_tests::llm::LlamaServer::start();
    let (server, model) = (llm.openai_base(), fleet_tests::llm::MODEL);
    bench_prints(
        &[
            "--skip-core",
            "--rounds",
            "1",
            "--model-server",
            &server,
            "--model",
            model,
        ],
        &[
            "8 concurrent streams (tokens/s)",
            "first token p50",
            "a token's way server → SSE client",
            "front door tokens/s with 8 streams ≥ 0.9× direct",
            "first token through the fleet ≤ direct + 5 ms (p50)",
            "a token's way from the model server to an SSE client ≤ 2 ms (p50)",
        ],
    );
}

/// The history part, with the PostgreSQL sink into a real server: every figure is printed.
#[test]
fn bench_measures_the_history_and_the_postgres_sink() {
    let pg = fleet_tests::postgres::Postgres::start();
    bench_prints(
        &[
            "--skip-core",
            "--history",
            "--history-sizes",
            "300",
            "--pg-sink",
            &pg.url(),
        ],
        &[
            "history at 300 records",
            "GET /v1/jobs?limit=50",
            "a new gateway lists from its index after",
            "pg-sink into a new table:",
            "pg-sink while 500 jobs/s flow: at most",
            "…?agent&status=completed&limit=50 at 300: p50 ≤ 20 ms and p99 ≤ 100 ms",
        ],
    );
}
