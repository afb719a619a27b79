//! Listing jobs for `/v1/jobs`, `fleet jobs` and the seed routes: filters, order, cursor pages. Ids come from
//! the gateway's history index in order; only the page's records are read. Filters the index does not hold (a
//! text match, a metadata value) are applied to the records read, a bounded number per request, and the page
//! then carries a cursor to go on from where it stopped. Before the index is ready, the bucket is scanned.

use chrono::{DateTime, Utc};
use fleet_shared::JobRecord;
use uuid::Uuid;

use crate::auth::Caller;
use crate::http::error::ApiError;
use crate::jobs::index::{Key, Query};
use crate::jobs::{records, scan};
use crate::state::AppState;

/// What a caller asks of the list: what the index answers (its owners filled in from the caller), and the
/// filters checked on records.
#[derive(Debug, Clone, Default)]
pub struct Filters {
    pub query: Query,
    /// Case-insensitive text in the message or the error.
    pub text: Option<String>,
    /// A metadata entry that must be present with this value (compared as a string).
    pub metadata: Option<(String, String)>,
    /// Only the turns of this session.
    pub session: Option<uuid::Uuid>,
}

/// Where a page ends: the submission time (ms) and id of its last job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor(pub Key);

impl Cursor {
    pub fn parse(s: &str) -> Option<Self> {
        let (ms, id) = s.split_once('_')?;
        Some(Self((ms.parse().ok()?, Uuid::parse_str(id).ok()?)))
    }
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}_{}", self.0 .0, self.0 .1)
    }
}

pub struct Listing {
    pub jobs: Vec<JobRecord>,
    /// The next page's cursor, when there may be more.
    pub next: Option<Cursor>,
    /// How many jobs match in all, when that is known exactly.
    pub total: Option<u64>,
}

/// Records looked at per request for filters the index does not hold.
const POST_FILTER_BUDGET: usize = 5_000;
/// Ids asked of the index at a time when records are filtered after reading.
const CHUNK: usize = 200;

pub async fn list(state: &AppState, caller: &Caller, f: &Filters) -> Result<Listing, ApiError> {
    if !state.history.is_ready() {
        return scan_list(state, caller, f).await;
    }
    state.history.catch_up(&state.records).await;
    let post_filtered = f.text.is_some() || f.metadata.is_some() || f.session.is_some();
    let mut query = index_query(caller, f);
    let limit = f.query.limit;
    query.limit = if post_filtered { CHUNK } else { limit };
    let mut jobs = Vec::with_capacity(limit);
    let mut examined = 0;
    loop {
        let page = state.history.read().page(&query);
        let records = read_records(state, &page.ids).await?;
        for (id, record) in page.ids.iter().zip(records) {
            examined += 1;
            let Some(record) = record else {
                state.history.forget(id);
                continue;
            };
            if caller.may_read(&record) && passes(&record, f) {
                jobs.push(record);
                if jobs.len() == limit {
                    let next = jobs.last().map(|r| Cursor(key_of(r)));
                    return Ok(Listing {
                        jobs,
                        next,
                        total: total(page.total, post_filtered),
                    });
                }
            }
        }
        match page.next {
            Some(next) if examined < POST_FILTER_BUDGET && post_filtered => {
                query.after = Some(next)
            }
            // Stopped for the budget: go on from the last job looked at.
            Some(next) if post_filtered => {
                return Ok(Listing {
                    jobs,
                    next: Some(Cursor(next)),
                    total: None,
                })
            }
            _ => {
                return Ok(Listing {
                    jobs,
                    next: None,
                    total: total(page.total, post_filtered),
                })
            }
        }
    }
}

fn total(exact: Option<u64>, post_filtered: bool) -> Option<u64> {
    exact.filter(|_| !post_filtered)
}

fn key_of(r: &JobRecord) -> Key {
    (r.request.submitted_at.timestamp_millis(), r.id)
}

/// The query with its owners narrowed to those the caller may read (an owner asked for that the caller may not
/// read leaves none, so nothing is listed).
fn index_query(caller: &Caller, f: &Filters) -> Query {
    let owners = match (caller.readable_owners(), f.query.owners.clone()) {
        (None, asked) => asked,
        (Some(readable), None) => Some(readable),
        (Some(readable), Some(asked)) => {
            Some(asked.into_iter().filter(|o| readable.contains(o)).collect())
        }
    };
    Query {
        owners,
        ..f.query.clone()
    }
}

/// The records of `ids`, read at once; `None` for one that is gone.
async fn read_records(state: &AppState, ids: &[Uuid]) -> Result<Vec<Option<JobRecord>>, ApiError> {
    let reads = ids.iter().map(|id| records::get(state, id));
    futures::future::join_all(reads).await.into_iter().collect()
}

/// The filters a record must pass that the index cannot check (and, for the scan, all of them).
fn passes(r: &JobRecord, f: &Filters) -> bool {
    let text = f.text.as_ref().is_none_or(|t| {
        let t = t.to_lowercase();
        r.request.message.to_lowercase().contains(&t)
            || r.error
                .as_ref()
                .is_some_and(|e| e.message.to_lowercase().contains(&t))
    });
    let metadata = f.metadata.as_ref().is_none_or(|(k, v)| {
        r.request.metadata.get(k).is_some_and(|m| match m {
            serde_json::Value::String(s) => s == v,
            other => {
                serde_json::from_str::<serde_json::Value>(v).is_ok_and(|given| given == *other)
            }
        })
    });
    let session = f
        .session
        .is_none_or(|id| r.request.session.is_some_and(|s| s.session_id == id));
    text && metadata && session
}

fn within(
    t: Option<DateTime<Utc>>,
    after: Option<DateTime<Utc>>,
    before: Option<DateTime<Utc>>,
) -> bool {
    if after.is_none() && before.is_none() {
        return true;
    }
    t.is_some_and(|t| after.is_none_or(|a| t > a) && before.is_none_or(|b| t < b))
}

/// The list from a scan of the whole bucket, while the index is being built.
async fn scan_list(state: &AppState, caller: &Caller, f: &Filters) -> Result<Listing, ApiError> {
    let q = &f.query;
    let mut jobs = Vec::new();
    scan::each_record(state, |r| {
        let indexed = q.agent.as_deref().is_none_or(|a| a == r.request.agent)
            && q.status.is_none_or(|s| s == r.status)
            && q.owners.as_ref().is_none_or(|o| {
                r.request
                    .owner
                    .as_ref()
                    .is_some_and(|owner| o.contains(owner))
            })
            && within(
                Some(r.request.submitted_at),
                q.submitted_after,
                q.submitted_before,
            )
            && within(r.finished_at, q.finished_after, q.finished_before);
        let after_cursor = q.after.is_none_or(|c| match q.oldest_first {
            true => key_of(&r) > c,
            false => key_of(&r) < c,
        });
        if indexed && after_cursor && caller.may_read(&r) && passes(&r, f) {
            jobs.push(r);
        }
    })
    .await?;
    jobs.sort_by_key(key_of);
    if !q.oldest_first {
        jobs.reverse();
    }
    let more = jobs.len() > q.limit;
    jobs.truncate(q.limit);
    let next = jobs.last().filter(|_| more).map(|r| Cursor(key_of(r)));
    Ok(Listing {
        jobs,
        next,
        total: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_read_back() {
        let c = Cursor((1_764_000_000_123, Uuid::now_v7()));
        assert_eq!(Cursor::parse(&c.to_string()), Some(c));
        assert_eq!(Cursor::parse("nope"), None);
        assert_eq!(Cursor::parse("12_not-a-uuid"), None);
    }
}
