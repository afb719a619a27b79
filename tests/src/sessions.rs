//! Steps of a session as a client takes them: create one, say something (a turn), wait for a turn's end.

use serde_json::{json, Value};

use crate::clients::Api;

/// A new session with `agent`; its id.
pub async fn create(api: &Api, agent: &str) -> String {
    let r = api
        .post("/v1/sessions", &json!({"agent": agent, "title": "t"}))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    r.body["session_id"]
        .as_str()
        .expect("session id")
        .to_string()
}

/// Sends `message` as the session's next turn: its job id and turn number.
pub async fn say(api: &Api, session: &str, message: &str) -> (String, u64) {
    let r = api
        .post(
            &format!("/v1/sessions/{session}/messages"),
            &json!({"message": message}),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    (
        r.body["job_id"].as_str().expect("job id").to_string(),
        r.body["turn"].as_u64().expect("turn"),
    )
}

/// The job's record once it has ended.
pub async fn ended(api: &Api, job: &str) -> Value {
    api.poll(&format!("/v1/jobs/{job}"), "turn ended", |r| {
        r["status"]
            .as_str()
            .is_some_and(|s| s != "queued" && s != "running")
    })
    .await
}

/// Kills `doomed` while `job` runs, starts a worker in its place, and returns the job's record once its rerun
/// has ended, with the new worker.
pub async fn rerun_after_kill(
    api: &Api,
    cfg: &crate::TestConfig,
    doomed: crate::FleetProcess,
    job: &str,
) -> (Value, crate::WorkerHandle) {
    api.poll(&format!("/v1/jobs/{job}"), "the turn running", |r| {
        r["status"] == "running"
    })
    .await;
    doomed.signal(libc::SIGKILL);
    let rescuer = crate::start_worker(&cfg.config).await;
    (ended(api, job).await, rescuer)
}
