//! The README's Python example (examples/direct_publish.py, nats-py + msgpack) against a real fleet.

use fleet_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_python_example_gets_its_record_by_reply_and_from_kv() {
    let nats = NatsServer::start();
    let cfg = test_config(&nats.url(), &[]);
    let worker = start_worker(&cfg.config).await;
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/direct_publish.py");
    let url = nats.url();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .arg(script)
            .arg(url)
            .output()
    })
    .await
    .unwrap()
    .expect("python3 runs (scripts/deps test installs nats-py and msgpack)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout,
        "reply: completed 'hello from python; $(not a shell)\\n'\nkv: completed\n"
    );
    worker.stop().await;
}
