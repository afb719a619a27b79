//! Clients the tests talk to the fleet through: `Api` for a gateway's JSON HTTP API, `NatsClient` for direct
//! publishing and reading job records.

use std::time::{Duration, Instant};

use fleet_shared::codec::{decode, Format};
use fleet_shared::JobRecord;
use futures::StreamExt;
use serde_json::Value;

/// An HTTP response reduced to what tests check.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub retry_after: Option<String>,
    /// The JSON body, or `Null` when the body is not JSON.
    pub body: Value,
}

impl Reply {
    /// Asserts an error answer: its status and the problem body's stable code.
    #[track_caller]
    pub fn assert_problem(&self, status: u16, code: &str) {
        assert_eq!(
            (self.status, self.body["code"].as_str()),
            (status, Some(code)),
            "{}",
            self.body
        );
    }

    /// The `job_id` of an accepted submission.
    #[track_caller]
    pub fn job_id(&self) -> String {
        match self.body["job_id"].as_str() {
            Some(id) => id.to_string(),
            None => panic!("no job_id ({}): {}", self.status, self.body),
        }
    }

    /// The `job_id` of an accepted submission, as a UUID.
    #[track_caller]
    pub fn job_uuid(&self) -> uuid::Uuid {
        self.job_id().parse().expect("job_id is a UUID")
    }

    /// Asserts a successful job list of exactly `count` jobs.
    #[track_caller]
    pub fn assert_count(&self, count: u64, what: &str) {
        assert_eq!(
            (self.status, self.body["count"].as_u64()),
            (200, Some(count)),
            "{what}: {}",
            self.body
        );
    }
}

#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    pub base: String,
    key: Option<String>,
    local: Option<std::net::IpAddr>,
}

impl Api {
    pub fn new(base: &str) -> Self {
        Self::build(base, None, None)
    }

    fn build(base: &str, key: Option<String>, local: Option<std::net::IpAddr>) -> Self {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(key) = &key {
            headers.insert(
                reqwest::header::AUTHORIZATION,
                format!("Bearer {key}").parse().expect("header value"),
            );
        }
        Self {
            http: reqwest::Client::builder()
                .default_headers(headers)
                .local_address(local)
                .build()
                .expect("client"),
            base: base.to_string(),
            key,
            local,
        }
    }

    /// The same gateway, every request carrying `Authorization: Bearer KEY`.
    pub fn with_key(&self, key: &str) -> Self {
        Self::build(&self.base, Some(key.to_string()), self.local)
    }

    /// The same gateway, reached from another loopback address (`127.0.0.2`): a client the gateway's per-address
    /// limits have not seen.
    pub fn from_address(&self, ip: std::net::IpAddr) -> Self {
        Self::build(&self.base, self.key.clone(), Some(ip))
    }

    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, format!("{}{path}", self.base))
    }

    pub async fn send(&self, request: reqwest::RequestBuilder) -> Reply {
        let r = request.send().await.expect("gateway answers");
        let status = r.status().as_u16();
        let retry_after = r
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = r.json().await.unwrap_or(Value::Null);
        Reply {
            status,
            retry_after,
            body,
        }
    }

    /// `GET path` as the raw response, for its headers and bytes.
    pub async fn fetch(&self, path: &str) -> reqwest::Response {
        self.request(reqwest::Method::GET, path)
            .send()
            .await
            .expect("gateway answers")
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send(self.request(reqwest::Method::GET, path)).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Reply {
        self.send(self.request(reqwest::Method::POST, path).json(body))
            .await
    }

    /// GETs `path` until `done` holds for the body, and returns that body.
    /// Posts a multipart form to `path`.
    pub async fn post_form(&self, path: &str, form: reqwest::multipart::Form) -> Reply {
        self.send(self.request(reqwest::Method::POST, path).multipart(form))
            .await
    }

    /// Submits `message` to `agent` through `POST /v1/jobs` and gives the accepted job's id.
    pub async fn submit(&self, agent: &str, message: &str) -> String {
        let r = self
            .post(
                "/v1/jobs",
                &serde_json::json!({"agent": agent, "message": message}),
            )
            .await;
        assert_eq!(r.status, 202, "{}", r.body);
        r.job_id()
    }

    pub async fn poll(&self, path: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let body = self.get(path).await.body;
            if done(&body) {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: last {body}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The subject prefix of the fleets tests start (the configuration's default).
pub const DEFAULT_PREFIX: &str = "fleet";

/// A direct NATS user of the fleet.
pub struct NatsClient {
    pub client: async_nats::Client,
    pub js: async_nats::jetstream::Context,
    pub records: async_nats::jetstream::kv::Store,
    /// The test fleets' names (the default prefix).
    pub topology: fleet_shared::Topology,
}

impl NatsClient {
    /// Connects and makes sure the topology exists with the default settings (a test client may come up before
    /// any fleet process).
    pub async fn connect(url: &str) -> Self {
        let queue = fleet_shared::config::Config::load(&Default::default())
            .expect("defaults")
            .queue;
        Self::connect_with(url, &queue).await
    }

    /// Like `connect`, for a fleet with these queue settings.
    pub async fn connect_with(url: &str, queue: &fleet_shared::config::QueueConfig) -> Self {
        let client = async_nats::connect(url).await.expect("connect to nats");
        let js = async_nats::jetstream::new(client.clone());
        let topology = fleet_shared::Topology::new(DEFAULT_PREFIX);
        let handles = topology.ensure(&js, queue).await.expect("topology");
        Self {
            client,
            js,
            records: handles.records,
            topology,
        }
    }

    /// Publishes `body` as JSON to the jobs subject of `agent` and waits for JetStream's ack.
    /// The notices that job `id` ended, from now on.
    pub async fn done_notices(&self, id: &str) -> async_nats::Subscriber {
        let id = id.parse().expect("job id");
        self.client
            .subscribe(self.topology.done_subject(&id))
            .await
            .expect("subscribe")
    }

    /// Job `id`'s live events, from now on.
    pub async fn events(&self, id: &uuid::Uuid) -> async_nats::Subscriber {
        self.client
            .subscribe(self.topology.events_subject(id))
            .await
            .expect("subscribe")
    }

    pub async fn publish_job(&self, agent: &str, body: &Value) {
        let payload = serde_json::to_vec(body).expect("json");
        self.js
            .publish(self.topology.jobs_subject(agent), payload.into())
            .await
            .expect("publish")
            .await
            .expect("stored");
    }

    /// Runs a job and returns the record from its reply subject.
    pub async fn run_job(&self, agent: &str, mut body: Value) -> JobRecord {
        let inbox = self.client.new_inbox();
        let mut replies = self
            .client
            .subscribe(inbox.clone())
            .await
            .expect("subscribe");
        body["reply_to"] = inbox.into();
        self.publish_job(agent, &body).await;
        next_reply(&mut replies, Duration::from_secs(60)).await.0
    }

    pub async fn record(&self, id: uuid::Uuid) -> Option<JobRecord> {
        let value = self.records.get(id.to_string()).await.ok()??;
        decode(&value, Format::MessagePack).ok()
    }

    /// Waits until the job's record satisfies `done`.
    pub async fn wait_record(
        &self,
        id: uuid::Uuid,
        what: &str,
        done: impl Fn(&JobRecord) -> bool,
    ) -> JobRecord {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(r) = self.record(id).await {
                if done(&r) {
                    return r;
                }
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Messages in the jobs stream: jobs waiting for or held by a worker.
    pub async fn queued_messages(&self) -> u64 {
        let mut stream = self.js.get_stream("FLEET_JOBS").await.expect("jobs stream");
        stream.info().await.expect("stream info").state.messages
    }
}

/// The next reply on `replies`: the record, decoded in the format its Content-Type names, and that content type.
pub async fn next_reply(
    replies: &mut async_nats::Subscriber,
    patience: Duration,
) -> (JobRecord, Option<String>) {
    let msg = tokio::time::timeout(patience, replies.next())
        .await
        .expect("a reply in time")
        .expect("open subscription");
    let content_type = msg
        .headers
        .as_ref()
        .and_then(|h| h.get("Content-Type"))
        .map(|v| v.to_string());
    let format = Format::detect(content_type.as_deref(), &msg.payload);
    (
        decode(&msg.payload, format).expect("reply is a record"),
        content_type,
    )
}

/// Counts messages on a subscription until `quiet` passes with nothing new.
pub async fn count_until_quiet(replies: &mut async_nats::Subscriber, quiet: Duration) -> usize {
    let mut n = 0;
    while let Ok(Some(_)) = tokio::time::timeout(quiet, replies.next()).await {
        n += 1;
    }
    n
}

/// One Server-Sent Event.
#[derive(Debug, Clone)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: String,
    pub data: Value,
}

/// A reader of a `text/event-stream` response.
pub struct SseReader {
    response: reqwest::Response,
    buf: String,
}

impl SseReader {
    /// GETs `path` on the gateway, resuming after `last_id` if given.
    pub async fn open(api: &Api, path: &str, last_id: Option<&str>) -> Self {
        let mut req = api.request(reqwest::Method::GET, path);
        if let Some(id) = last_id {
            req = req.header("last-event-id", id);
        }
        let response = req.send().await.expect("gateway answers");
        assert_eq!(response.status().as_u16(), 200, "GET {path}");
        Self {
            response,
            buf: String::new(),
        }
    }

    /// Every event of job `id` until its `end` (included), from the start.
    pub async fn job_until_end(api: &Api, id: &str) -> Vec<SseEvent> {
        let mut sse = Self::open(api, &format!("/v1/jobs/{id}/events"), None).await;
        let mut events = Vec::new();
        while let Some(event) = sse.next().await {
            let end = event.event == "end";
            events.push(event);
            if end {
                break;
            }
        }
        events
    }

    /// The next event, or `None` when the server closed the stream.
    pub async fn next(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let (mut id, mut event, mut data) = (None, String::from("message"), String::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        id = Some(v.trim().to_string());
                    } else if let Some(v) = line.strip_prefix("event:") {
                        event = v.trim().to_string();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.strip_prefix(' ').unwrap_or(v));
                    }
                }
                if data.is_empty() {
                    continue; // a keep-alive comment
                }
                let data = serde_json::from_str(&data).expect("event data is JSON");
                return Some(SseEvent { id, event, data });
            }
            let chunk = tokio::time::timeout(Duration::from_secs(60), self.response.chunk())
                .await
                .expect("an event in time")
                .expect("readable stream")?;
            self.buf
                .push_str(std::str::from_utf8(&chunk).expect("UTF-8 events"));
        }
    }
}
