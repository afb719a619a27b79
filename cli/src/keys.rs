//! `fleet keys create|list|revoke`: API keys for the gateway, managed straight in the keys bucket (an operator
//! tool, like `nats`: whoever may reach NATS with the fleet's configuration may manage keys). A key is printed once
//! at creation; only its SHA-256 is stored.

use anyhow::{bail, Context, Result};
use chrono::Utc;
use clap::Subcommand;
use fleet_shared::auth::{self, Scopes, StoredKey};
use fleet_shared::codec::{decode, to_msgpack, Format};
use fleet_shared::config::Config;
use futures::StreamExt;

#[derive(Subcommand, Clone)]
pub enum KeysCommand {
    /// Create a key and print it (only this once).
    Create {
        /// Who or what the key is for; jobs it submits record it as their owner.
        #[arg(long)]
        name: String,
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
    },
    /// List keys (never their secrets).
    List,
    /// Revoke a key by its id: every gateway refuses it within moments.
    Revoke { id: String },
}

pub async fn run(config: &Config, command: KeysCommand, json: bool) -> Result<()> {
    let client = fleet_shared::nats::connect(&config.nats, "fleet-keys").await?;
    let js = async_nats::jetstream::new(client.clone());
    let handles = fleet_shared::Topology::new(&config.nats.prefix)
        .ensure(&js, &config.queue)
        .await?;
    let bucket = handles.keys;
    match command {
        KeysCommand::Create {
            name,
            agents,
            read_all,
            cancel,
            configure_sharing,
            manage_keys,
        } => {
            if name.trim().is_empty() {
                bail!("--name must not be empty");
            }
            let scopes = Scopes {
                agents,
                read_all,
                cancel,
                configure_sharing,
                manage_keys,
            };
            let (stored, key) = auth::generate(name.trim(), scopes);
            bucket
                .create(&stored.id, to_msgpack(&stored).into())
                .await
                .context("storing the key")?;
            client.flush().await?;
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
        KeysCommand::List => {
            let mut keys = Vec::new();
            let mut names = bucket.keys().await?;
            while let Some(id) = names.next().await {
                let id = id?;
                if let Some(value) = bucket.get(&id).await? {
                    keys.push(decode::<StoredKey>(&value, Format::MessagePack)?);
                }
            }
            keys.sort_by_key(|k| k.created_at);
            if json {
                let view: Vec<_> = keys
                    .iter()
                    .map(|k| {
                        serde_json::json!({
                            "id": k.id, "name": k.name, "scopes": k.scopes,
                            "created_at": k.created_at, "revoked_at": k.revoked_at,
                        })
                    })
                    .collect();
                println!("{}", serde_json::Value::Array(view));
            } else {
                for k in keys {
                    let state = k
                        .revoked_at
                        .map_or("active".to_string(), |t| format!("revoked {t}"));
                    println!(
                        "{}  {:<20} agents={} read_all={} cancel={} configure_sharing={} manage_keys={}  {}",
                        k.id,
                        k.name,
                        k.scopes.agents.join(","),
                        k.scopes.read_all,
                        k.scopes.cancel,
                        k.scopes.configure_sharing,
                        k.scopes.manage_keys,
                        state
                    );
                }
            }
        }
        KeysCommand::Revoke { id } => {
            let entry = bucket
                .entry(&id)
                .await?
                .with_context(|| format!("no key with id {id}"))?;
            let mut key: StoredKey = decode(&entry.value, Format::MessagePack)?;
            if key.revoked_at.is_none() {
                key.revoked_at = Some(Utc::now());
                bucket
                    .update(&id, to_msgpack(&key).into(), entry.revision)
                    .await
                    .context("revoking the key")?;
                client.flush().await?;
            }
            println!("key {id} (`{}`) revoked", key.name);
        }
    }
    Ok(())
}
