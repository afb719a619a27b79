//! `fleet-pg-sink` (`fleet pg-sink`): keeps a PostgreSQL table in step with the jobs bucket, for fleets whose users would rather
//! query their history with SQL. Optional and off the hot path: no gateway or worker waits for it, and `fleet up`
//! does without it. It follows the bucket's stream from the position it last committed, which it keeps in the
//! same database and the same transaction as the rows, so a restart resumes where it stopped and an entry read
//! twice changes nothing (a row is only ever replaced by a later revision).

use std::time::Duration;

use anyhow::{Context, Result};
use async_nats::jetstream::kv::{self, Operation};
use clap::Args;
use fleet_shared::codec::{decode, Format};
use fleet_shared::JobRecord;
use futures::StreamExt;
use tokio_postgres::types::ToSql;

use crate::args::{ConfigArgs, LogArgs};
use crate::failure::{failure, Coded};

#[derive(Args)]
pub struct PgSinkArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// The database (FLEET_PG_SINK_URL), as a URL (`postgresql://fleet@127.0.0.1:5432/fleet`) or key=value pairs
    /// (`host=/run/postgresql dbname=fleet`). Plain connections only: reach a remote server through a socket or a
    /// TLS tunnel.
    #[arg(long, env = "FLEET_PG_SINK_URL")]
    postgres: String,
    /// The table the jobs go to (FLEET_PG_SINK_TABLE; created with its indexes if missing); the sink's position
    /// is kept in `fleet_sink_position`, one row per bucket and table.
    #[arg(long, env = "FLEET_PG_SINK_TABLE", default_value = "fleet_jobs")]
    table: String,
    /// Entries written in one transaction at most.
    #[arg(long, default_value_t = 500)]
    batch: usize,
    /// Print how far the table is (the sink's position and the bucket's last entry) and exit.
    #[arg(long)]
    pub status: bool,
    /// With `--status`, also count the table's rows (a scan of the whole table).
    #[arg(long, requires = "status")]
    pub count: bool,
    #[command(flatten)]
    pub log: LogArgs,
}

/// How long a batch waits for more entries once it holds one.
const GATHER: Duration = Duration::from_millis(20);

pub async fn run(args: PgSinkArgs) -> Result<()> {
    let table = Table::named(&args.table)?;
    let bucket = jobs_bucket(&args.config, args.status).await?;
    if args.status {
        return crate::status::print(&args.postgres, &table, &bucket, args.count).await;
    }
    // The first connection's failure is the operator's to fix now (a wrong address or password); later ones are
    // outages, waited out.
    let mut db = Sink::connect(&args.postgres, &table, &bucket.name).await?;
    tracing::info!(
        postgres = %describe(&args.postgres),
        table = %table.0,
        bucket = %bucket.name,
        "pg-sink started"
    );
    loop {
        if let Err(e) = db.follow(&bucket, args.batch.max(1)).await {
            tracing::warn!(error = %format!("{e:#}"), "pg-sink interrupted; resuming from its last commit");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        match Sink::connect(&args.postgres, &table, &bucket.name).await {
            Ok(again) => db = again,
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "PostgreSQL unreachable"),
        }
    }
}

/// The jobs bucket, on a connection that waits for NATS (a service) or fails at once (`once`, a command).
async fn jobs_bucket(config: &ConfigArgs, once: bool) -> Result<kv::Store> {
    let config = crate::args::load(&config.sources(&[]))?;
    let client = match once {
        true => fleet_shared::nats::connect_once(&config.nats, "fleet-pg-sink").await,
        false => fleet_shared::nats::connect(&config.nats, "fleet-pg-sink").await,
    };
    let js = async_nats::jetstream::new(client.coded("nats_unreachable")?);
    let handles = fleet_shared::Topology::new(&config.nats.prefix)
        .ensure(&js, &config.queue)
        .await
        .coded("nats_failed")?;
    Ok(handles.records)
}

/// A table name, checked: it is written into the SQL.
pub struct Table(pub String);

impl Table {
    fn named(name: &str) -> Result<Self> {
        let mut chars = name.chars();
        let valid = chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
            && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            && name.len() <= 63;
        if !valid {
            return Err(failure(
                "invalid_table",
                format!("--table {name:?}: use lower-case letters, digits and _ (at most 63), not starting with a digit"),
            ));
        }
        Ok(Self(name.to_string()))
    }
}

struct Sink {
    db: tokio_postgres::Client,
    /// The position's key: the bucket read and the table written.
    bucket: String,
    table: String,
    upsert: tokio_postgres::Statement,
    delete: tokio_postgres::Statement,
    save_position: tokio_postgres::Statement,
}

impl Sink {
    async fn connect(url: &str, table: &Table, bucket: &str) -> Result<Self> {
        let db = connect(url).await?;
        db.batch_execute(&schema(&table.0))
            .await
            .context("creating the sink's tables")?;
        let delete = format!("DELETE FROM {} WHERE id = $1 AND revision < $2", table.0);
        Ok(Self {
            upsert: db.prepare(&upsert_sql(&table.0)).await?,
            delete: db.prepare(&delete).await?,
            save_position: db.prepare(SAVE_POSITION).await?,
            db,
            bucket: bucket.to_string(),
            table: table.0.clone(),
        })
    }

    /// Reads the bucket from the committed position on, a transaction per batch, until NATS or PostgreSQL fails.
    async fn follow(&mut self, bucket: &kv::Store, max: usize) -> Result<()> {
        let position = position(&self.db, &self.bucket, &self.table).await?;
        // From nothing, each job's last revision is enough; after a commit, every entry since it (deletions too).
        let mut watch = match position {
            0 => bucket.watch_with_history(">").await?,
            p => bucket.watch_all_from_revision(p + 1).await?,
        };
        let end = last_entry(bucket).await?;
        let mut behind = position < end;
        if !behind {
            tracing::info!(revision = position, "pg-sink in step with the bucket");
        }
        loop {
            let batch = next_batch(&mut watch, max).await?;
            self.write(&batch).await?;
            let last = batch.iter().map(|e| e.revision).max().unwrap_or_default();
            if behind && last >= end {
                behind = false;
                tracing::info!(revision = last, "pg-sink caught up with the bucket");
            }
        }
    }

    async fn write(&mut self, batch: &[kv::Entry]) -> Result<()> {
        let Some(last) = batch.iter().map(|e| e.revision).max() else {
            return Ok(());
        };
        let rows: Vec<Row> = batch.iter().filter_map(Row::from_entry).collect();
        match self.commit(&rows, last).await {
            Err(e) if is_data_error(&e) => {
                // One row the database refuses must not stop the sink for ever: each goes on its own, the
                // position moving with it.
                tracing::warn!(error = %e, "a batch was refused; writing its rows one by one");
                for row in &rows {
                    match self.commit(std::slice::from_ref(row), row.revision()).await {
                        Err(e) if is_data_error(&e) => {
                            tracing::warn!(error = %e, job_id = %row.id(), "job not written: refused by the database")
                        }
                        other => other?,
                    }
                }
                Ok(self.commit(&[], last).await?)
            }
            other => Ok(other?),
        }
    }

    /// Writes `rows` and the position `last` in one transaction.
    async fn commit(&mut self, rows: &[Row], last: u64) -> Result<(), tokio_postgres::Error> {
        let tx = self.db.transaction().await?;
        // Issued together, the statements share round trips (tokio-postgres pipelines them).
        let writes = rows
            .iter()
            .map(|row| row.write(&tx, &self.upsert, &self.delete));
        futures::future::try_join_all(writes).await?;
        let position = [
            &self.bucket as &(dyn ToSql + Sync),
            &self.table,
            &(last as i64),
        ];
        tx.execute(&self.save_position, &position).await?;
        tx.commit().await
    }
}

const SAVE_POSITION: &str =
    "INSERT INTO fleet_sink_position (bucket, table_name, revision) VALUES ($1, $2, $3) \
     ON CONFLICT (bucket, table_name) DO UPDATE SET revision = EXCLUDED.revision";

/// The bucket's last entry (its stream's last sequence), asked of the server.
pub async fn last_entry(bucket: &kv::Store) -> Result<u64> {
    let mut stream = bucket.stream.clone();
    Ok(stream.info().await?.state.last_sequence)
}

/// A connection to the database, its I/O on a task of its own.
pub async fn connect(url: &str) -> Result<tokio_postgres::Client> {
    let (db, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .map_err(|e| {
            failure(
                "postgres_unreachable",
                format!(
                    "cannot reach PostgreSQL ({}): {}",
                    describe(url),
                    with_cause(&e)
                ),
            )
        })?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "PostgreSQL connection ended");
        }
    });
    Ok(db)
}

/// The sink's committed position for this bucket and table: 0 before its first commit (or its first start).
pub async fn position(
    db: &tokio_postgres::Client,
    bucket: &str,
    table: &str,
) -> Result<u64, tokio_postgres::Error> {
    let found = db
        .query_opt(
            "SELECT revision FROM fleet_sink_position WHERE bucket = $1 AND table_name = $2",
            &[&bucket, &table],
        )
        .await;
    match found {
        Ok(row) => Ok(row.map_or(0, |r| r.get::<_, i64>(0) as u64)),
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => Ok(0),
        Err(e) => Err(e),
    }
}

/// Where the sink writes, for people: host(s), database and user, never the password.
fn describe(url: &str) -> String {
    let Ok(config) = url.parse::<tokio_postgres::Config>() else {
        return "unparsable connection settings".to_string();
    };
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .map(|host| match host {
            tokio_postgres::config::Host::Tcp(name) => name.clone(),
            tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .collect();
    format!(
        "database {} on {} as {}",
        config.get_dbname().unwrap_or("(the user's)"),
        hosts.join(","),
        config.get_user().unwrap_or("(the login user)")
    )
}

/// The error with what caused it (tokio-postgres says only "error connecting to server" on its own).
fn with_cause(e: &tokio_postgres::Error) -> String {
    match std::error::Error::source(e) {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    }
}

/// Waits for one entry, then takes what follows within `GATHER` of it, up to `max`: a steady flow is written
/// every `GATHER`, a backlog `max` at a time.
async fn next_batch(watch: &mut kv::Watch, max: usize) -> Result<Vec<kv::Entry>> {
    let mut batch = Vec::new();
    let first = watch.next().await.context("the bucket's watch ended")??;
    batch.push(first);
    let deadline = tokio::time::Instant::now() + GATHER;
    while batch.len() < max {
        match tokio::time::timeout_at(deadline, watch.next()).await {
            Ok(Some(entry)) => batch.push(entry?),
            Ok(None) | Err(_) => break,
        }
    }
    Ok(batch)
}

/// The database refused the values (SQLSTATE classes 22, data exception; 23, integrity; 54, a limit), not the
/// connection: writing them again would fail again.
fn is_data_error(e: &tokio_postgres::Error) -> bool {
    e.code()
        .is_some_and(|c| ["22", "23", "54"].contains(&&c.code()[..2]))
}

/// One entry as the table takes it.
enum Row {
    Put(Box<(JobRecord, serde_json::Value, i64)>),
    Gone(uuid::Uuid, i64),
}

impl Row {
    fn from_entry(entry: &kv::Entry) -> Option<Self> {
        // Keys are job ids; anything else in the bucket is not a job.
        let id: uuid::Uuid = entry.key.parse().ok()?;
        let revision = entry.revision as i64;
        if entry.operation != Operation::Put {
            return Some(Self::Gone(id, revision));
        }
        match decode::<JobRecord>(&entry.value, Format::MessagePack) {
            Ok(mut record) => {
                // PostgreSQL's text and jsonb hold no NUL character, which an agent's output may.
                let mut json = serde_json::to_value(&record).ok()?;
                without_nul(&mut json);
                record.request.agent = clean(&record.request.agent);
                record.request.owner = record.request.owner.as_deref().map(clean);
                Some(Self::Put(Box::new((record, json, revision))))
            }
            Err(e) => {
                tracing::warn!(key = %entry.key, error = %e, "unreadable job record; not written");
                None
            }
        }
    }

    fn revision(&self) -> u64 {
        match self {
            Self::Put(put) => put.2 as u64,
            Self::Gone(_, revision) => *revision as u64,
        }
    }

    fn id(&self) -> uuid::Uuid {
        match self {
            Self::Put(put) => put.0.id,
            Self::Gone(id, _) => *id,
        }
    }

    async fn write(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        upsert: &tokio_postgres::Statement,
        delete: &tokio_postgres::Statement,
    ) -> Result<u64, tokio_postgres::Error> {
        match self {
            Self::Gone(id, revision) => tx.execute(delete, &[id, revision]).await,
            Self::Put(put) => {
                let (r, json, revision) = put.as_ref();
                let session = r.request.session.as_ref().map(|s| s.session_id);
                let error_code = r.error.as_ref().map(|e| e.code.as_str());
                tx.execute(
                    upsert,
                    &[
                        &r.id,
                        &r.request.agent,
                        &r.status.as_str(),
                        &r.request.owner,
                        &session,
                        &r.request.submitted_at,
                        &r.started_at,
                        &r.finished_at,
                        &r.exit_code,
                        &error_code,
                        json,
                        revision,
                    ],
                )
                .await
            }
        }
    }
}

/// The text with U+FFFD for each NUL.
fn clean(text: &str) -> String {
    text.replace('\0', "\u{FFFD}")
}

/// Replaces every NUL in the value's strings and keys with U+FFFD.
fn without_nul(value: &mut serde_json::Value) {
    use serde_json::Value;
    match value {
        Value::String(s) if s.contains('\0') => *s = clean(s),
        Value::Array(items) => items.iter_mut().for_each(without_nul),
        Value::Object(map) if map.keys().any(|k| k.contains('\0')) => {
            let entries = std::mem::take(map);
            for (key, mut item) in entries {
                without_nul(&mut item);
                map.insert(clean(&key), item);
            }
        }
        Value::Object(map) => map.values_mut().for_each(without_nul),
        _ => {}
    }
}

fn schema(table: &str) -> String {
    format!(
        "SET client_min_messages = warning;
        CREATE TABLE IF NOT EXISTS {table} (
            id uuid PRIMARY KEY,
            agent text NOT NULL,
            status text NOT NULL,
            owner text,
            session_id uuid,
            submitted_at timestamptz NOT NULL,
            started_at timestamptz,
            finished_at timestamptz,
            exit_code integer,
            error_code text,
            record jsonb NOT NULL,
            revision bigint NOT NULL
        );
        CREATE INDEX IF NOT EXISTS {table}_by_submission ON {table} (submitted_at DESC);
        CREATE INDEX IF NOT EXISTS {table}_by_agent_status ON {table} (agent, status, submitted_at DESC);
        CREATE INDEX IF NOT EXISTS {table}_by_owner ON {table} (owner, submitted_at DESC);
        CREATE TABLE IF NOT EXISTS fleet_sink_position (
            bucket text NOT NULL,
            table_name text NOT NULL,
            revision bigint NOT NULL,
            PRIMARY KEY (bucket, table_name)
        );"
    )
}

fn upsert_sql(table: &str) -> String {
    format!(
        "INSERT INTO {table} (id, agent, status, owner, session_id, submitted_at, started_at, finished_at,
                              exit_code, error_code, record, revision)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
         ON CONFLICT (id) DO UPDATE SET agent = EXCLUDED.agent, status = EXCLUDED.status,
            owner = EXCLUDED.owner, session_id = EXCLUDED.session_id, submitted_at = EXCLUDED.submitted_at,
            started_at = EXCLUDED.started_at, finished_at = EXCLUDED.finished_at, exit_code = EXCLUDED.exit_code,
            error_code = EXCLUDED.error_code, record = EXCLUDED.record, revision = EXCLUDED.revision
         WHERE {table}.revision < EXCLUDED.revision"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_are_plain_identifiers() {
        for good in ["fleet_jobs", "_jobs", "jobs2"] {
            assert!(Table::named(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "2jobs",
            "Jobs",
            "jobs; DROP TABLE x",
            "a.b",
            "\"q\"",
            &"x".repeat(64),
        ] {
            assert!(Table::named(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn nul_characters_are_replaced_in_strings_and_keys_at_any_depth() {
        let mut value = serde_json::json!({
            "stdout": "a\u{0}b",
            "files": [{"name": "\u{0}x"}],
            "metadata": {"k\u{0}": "v", "n": 1},
        });
        without_nul(&mut value);
        assert_eq!(
            value,
            serde_json::json!({
                "stdout": "a\u{FFFD}b",
                "files": [{"name": "\u{FFFD}x"}],
                "metadata": {"k\u{FFFD}": "v", "n": 1},
            })
        );
    }
}
