//! `fleet keys create|list|revoke`: API keys for the gateway, managed straight in the keys bucket (an operator
//! tool, like `nats`: whoever may reach NATS with the fleet's configuration may manage keys). A key is printed once
//! at creation; only its SHA-256 is stored.

use anyhow::Result;
use clap::{Args, Subcommand};
use fleet_shared::auth::{KeyView, Scopes};
use fleet_shared::keys::{self, KeysError};

use crate::args::ConfigArgs;
use crate::client::humane;
use crate::failure::{failure, Coded};

#[derive(Args)]
pub struct KeysArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Print JSON instead of lines.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    command: KeysCommand,
}

/// What a new key may do.
#[derive(Args, Clone)]
pub struct ScopeArgs {
    /// An agent the key may run (repeatable); `*` for every agent.
    #[arg(long = "agent")]
    agents: Vec<String>,
    /// May read every job, not only its own.
    #[arg(long)]
    read_all: bool,
    /// May cancel and retry jobs it can read.
    #[arg(long)]
    cancel: bool,
    /// May change the artifact target (`/configure-sharing`).
    #[arg(long)]
    configure_sharing: bool,
    /// May manage keys.
    #[arg(long)]
    manage_keys: bool,
    /// Jobs the key may have queued or running at once (default: `auth.max_queued_per_caller`).
    #[arg(long)]
    max_queued: Option<u32>,
}

impl From<ScopeArgs> for Scopes {
    fn from(a: ScopeArgs) -> Self {
        Scopes {
            agents: a.agents,
            read_all: a.read_all,
            cancel: a.cancel,
            configure_sharing: a.configure_sharing,
            manage_keys: a.manage_keys,
            max_queued: a.max_queued,
        }
    }
}

#[derive(Subcommand, Clone)]
pub enum KeysCommand {
    /// Create a key and print it (only this once).
    Create {
        /// Who or what the key is for; jobs it submits record it as their owner.
        #[arg(long)]
        name: String,
        #[command(flatten)]
        scopes: ScopeArgs,
    },
    /// List keys (never their secrets).
    List,
    /// Revoke a key by its id: every gateway refuses it within moments.
    Revoke { id: String },
}

pub async fn run(args: KeysArgs) -> Result<()> {
    let config = crate::args::load(&args.config.sources(&[]))?;
    let json = args.json;
    let (client, bucket) = open_keys(&config).await?;
    match args.command {
        KeysCommand::Create { name, scopes } => {
            let (stored, key) = keys::create(&bucket, &name, scopes.into())
                .await
                .map_err(keys_failure)?;
            client.flush().await?;
            print_created(&stored.view(), &key, json);
        }
        KeysCommand::List => {
            let listed: Vec<_> = keys::list(&bucket)
                .await
                .map_err(keys_failure)?
                .iter()
                .map(|k| k.view())
                .collect();
            print_list(&listed, json)?;
        }
        KeysCommand::Revoke { id } => {
            let key = keys::revoke(&bucket, &id).await.map_err(keys_failure)?;
            client.flush().await?;
            println!("key {id} (`{}`) revoked", key.name);
        }
    }
    Ok(())
}

/// The keys bucket, on a connection that fails at once (not after retries) when NATS cannot be reached.
async fn open_keys(
    config: &fleet_shared::config::Config,
) -> Result<(async_nats::Client, async_nats::jetstream::kv::Store)> {
    let client = fleet_shared::nats::connect_once(&config.nats, "fleet-keys")
        .await
        .map_err(|e| {
            failure(
                "nats_unreachable",
                format!("cannot reach NATS at {}: {e}", config.nats.url),
            )
        })?;
    let js = async_nats::jetstream::new(client.clone());
    let handles = fleet_shared::Topology::new(&config.nats.prefix)
        .ensure(&js, &config.queue)
        .await
        .coded("nats_failed")?;
    Ok((client, handles.keys))
}

fn print_created(stored: &KeyView, key: &str, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::json!({"id": stored.id, "name": stored.name, "key": key, "scopes": stored.scopes})
        );
    } else {
        println!("{key}");
        eprintln!(
            "key {} for `{}` created; it is shown only now (use it as FLEET_API_KEY or `Authorization: Bearer`)",
            stored.id, stored.name
        );
    }
}

fn print_list(listed: &[KeyView], json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(listed)?);
        return Ok(());
    }
    if listed.is_empty() {
        println!("no keys yet: create one with `fleet keys create --name NAME --agent AGENT`");
        return Ok(());
    }
    println!(
        "{:<12}  {:<20}  {:<24}  {:<10}  {:<40}  {:<23}  STATE",
        "ID", "NAME", "AGENTS", "MAX QUEUED", "MAY ALSO", "CREATED"
    );
    for k in listed {
        let state = k.revoked_at.map_or("active".to_string(), |t| {
            format!("revoked {}", humane::time(t))
        });
        let cap = k
            .scopes
            .max_queued
            .map_or("default".into(), |n| n.to_string());
        println!(
            "{:<12}  {:<20}  {:<24}  {:<10}  {:<40}  {:<23}  {state}",
            k.id,
            k.name,
            k.scopes.agents.join(","),
            cap,
            may_also(&k.scopes),
            humane::time(k.created_at),
        );
    }
    Ok(())
}

/// The scopes beyond running agents, by name (`read_all,cancel`), or `-`.
fn may_also(scopes: &Scopes) -> String {
    let granted: Vec<&str> = [
        ("read_all", scopes.read_all),
        ("cancel", scopes.cancel),
        ("configure_sharing", scopes.configure_sharing),
        ("manage_keys", scopes.manage_keys),
    ]
    .into_iter()
    .filter_map(|(name, on)| on.then_some(name))
    .collect();
    if granted.is_empty() {
        "-".into()
    } else {
        granted.join(",")
    }
}

fn keys_failure(e: KeysError) -> anyhow::Error {
    let code = match e {
        KeysError::NoName => "invalid_key",
        KeysError::NotFound(_) => "key_not_found",
        KeysError::Nats(_) => "nats_failed",
        KeysError::Decode(_) => "unreadable_key",
    };
    failure(code, e.to_string())
}
