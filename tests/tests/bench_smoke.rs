//! `fleet bench` still runs end to end (tiny sizes; the speed targets are judged from full runs, not here).

use fleet_tests::built_binary;

#[test]
fn bench_runs_a_small_fleet_and_reports_every_measure() {
    let out = std::process::Command::new(built_binary("fleet"))
        .args([
            "bench",
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
        ])
        .output()
        .expect("run fleet bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "raw spawn of the command",
        "the worker's supervisor alone",
        "job over NATS (publish→reply)",
        "job over HTTP (POST ?wait)",
        "raw spawn rate",
        "NATS, 8 in flight",
        "HTTP, 8 in flight",
        "rounds (raw/NATS/HTTP jobs/s)",
        "CPU per job in the NATS run",
        "idle RSS: gateway",
        "artifacts, local disk (MB/s)",
        "artifacts, S3 (moto) (MB/s)",
        "1 × 1 MB upload",
        "5 × 4 KB download via gateway",
        "5 × 4 KB download via gateway, one .tar",
        "run form usable after navigation",
        "console usable ≤ 1000 ms after navigation",
        "console first load ≤ 150 KB",
    ] {
        assert!(stdout.contains(line), "missing `{line}` in:\n{stdout}");
    }
}
