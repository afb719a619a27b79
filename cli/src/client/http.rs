//! The client's connection to a gateway: requests with the API key, and problem bodies turned into
//! `code: message` failures.

use anyhow::{Context, Result};
use clap::Args;
use serde_json::Value;

use crate::failure::{failure, Coded};

/// Where the gateway is and how to talk to it; on every client command (and before it, see [`EarlyClientArgs`]).
#[derive(Args, Clone)]
pub struct ClientArgs {
    /// The gateway's base URL.
    #[arg(long, env = "FLEET_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// API key for the gateway (`fleet keys create` makes one).
    #[arg(long, env = "FLEET_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Print JSON (records, lists) instead of lines.
    #[arg(long)]
    pub json: bool,
}

/// The same options given before the command (`fleet --json jobs`): hidden, and refused for commands that are
/// not client commands. Their ids differ from the options' own, or clap would carry a global `--json` of a
/// subcommand (`fleet keys list --json`) up to these.
#[derive(Args, Clone, Default)]
pub struct EarlyClientArgs {
    #[arg(long = "url", id = "early_url", hide = true, value_name = "URL")]
    url: Option<String>,
    #[arg(
        long = "api-key",
        id = "early_api_key",
        hide = true,
        value_name = "KEY"
    )]
    api_key: Option<String>,
    #[arg(long = "json", id = "early_json", hide = true)]
    json: bool,
}

impl EarlyClientArgs {
    /// Options given before the command win over their defaults (and variables) after it.
    pub fn apply(&self, args: &mut ClientArgs) {
        if let Some(url) = &self.url {
            args.url = url.clone();
        }
        if let Some(key) = &self.api_key {
            args.api_key = Some(key.clone());
        }
        args.json |= self.json;
    }

    /// `--json` given before a command that has its own (`fleet --json keys list`), handed over to it.
    pub fn take_json(&mut self) -> bool {
        std::mem::take(&mut self.json)
    }

    pub fn is_empty(&self) -> bool {
        self.url.is_none() && self.api_key.is_none() && !self.json
    }
}

pub struct Client {
    pub http: reqwest::Client,
    pub base: String,
    pub json: bool,
}

impl Client {
    pub fn new(args: &ClientArgs) -> Result<Self> {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(key) = &args.api_key {
            let mut value =
                reqwest::header::HeaderValue::from_str(&format!("Bearer {}", key.trim())).map_err(
                    |_| {
                        failure(
                            "invalid_api_key",
                            "the API key holds characters a header cannot carry",
                        )
                    },
                )?;
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        Ok(Client {
            http: reqwest::Client::builder()
                .default_headers(headers)
                .build()?,
            base: args.url.trim_end_matches('/').to_string(),
            json: args.json,
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The response when it is a success; else a failure made of its problem body (`code: message`).
    async fn answer(&self, r: reqwest::Response) -> Result<reqwest::Response> {
        if r.status().is_success() {
            return Ok(r);
        }
        let status = r.status();
        // A body that is not JSON (a proxy's page) leaves only the status to report.
        let body: Value = r.json().await.unwrap_or_default();
        match (body["code"].as_str(), body["message"].as_str()) {
            (Some(code), Some(message)) => Err(failure(code, message)),
            _ => Err(failure(
                "gateway_error",
                format!("the gateway answered {status}"),
            )),
        }
    }

    pub async fn send(&self, request: reqwest::RequestBuilder) -> Result<reqwest::Response> {
        let r = request.send().await.map_err(|e| {
            failure(
                "gateway_unreachable",
                format!("cannot reach the gateway at {} ({}); is `fleet up` running? (--url or FLEET_URL)", self.base, root_cause(&e)),
            )
        })?;
        self.answer(r).await
    }

    pub async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T> {
        let r = self.send(self.http.get(self.url(path))).await?;
        r.json()
            .await
            .context("an unreadable answer")
            .coded("gateway_error")
    }

    pub async fn post<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &Value,
    ) -> Result<T> {
        let r = self.send(self.http.post(self.url(path)).json(body)).await?;
        r.json()
            .await
            .context("an unreadable answer")
            .coded("gateway_error")
    }

    pub fn print_value(&self, value: &Value, line: &str) {
        if self.json {
            println!(
                "{}",
                // A JSON value always prints.
                serde_json::to_string_pretty(value).unwrap_or_default()
            );
        } else {
            println!("{line}");
        }
    }
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}
