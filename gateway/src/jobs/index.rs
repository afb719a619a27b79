//! The job history's index, held by each gateway and derived from the jobs bucket alone (a watch from its first
//! record): a compact entry per job, ordered by submission time, with one ordered set per agent and per status
//! and counts per (agent, owner, status). Listing reads a page from the smallest set that applies and fetches
//! only the page's records; `/stats` reads the counts. Nothing here is stored elsewhere, so a new or restarted
//! gateway rebuilds it from NATS; until it has read the bucket to its end, it says so.
//!
//! Records that expire by the bucket's max age leave no delete marker: entries older than the retention since
//! their last change are swept, and a page that finds a record gone drops its entry.

use std::collections::{BTreeSet, HashMap};
use std::ops::Bound;

use chrono::{DateTime, Utc};
use fleet_shared::{JobRecord, JobStatus};
use uuid::Uuid;

use crate::jobs::symbols::{Sym, Symbols};

/// A job's place in the order: submission time (ms), then id, so jobs submitted in the same millisecond keep a
/// stable order and every key is unique.
pub type Key = (i64, Uuid);

#[derive(Debug, Clone, Copy)]
struct Entry {
    key: Key,
    status: JobStatus,
    agent: Sym,
    owner: Sym,
    finished_ms: Option<i64>,
    updated_ms: i64,
}

/// What the index keeps of a record, read straight from its stored form: the rest of the record (its output,
/// files, history) is skipped by the decoder, not built, so following the bucket costs each gateway little.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Indexed {
    pub id: Uuid,
    pub status: JobStatus,
    pub request: IndexedRequest,
    #[serde(default)]
    pub finished_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, serde::Deserialize)]
pub struct IndexedRequest {
    pub agent: String,
    #[serde(default)]
    pub owner: Option<String>,
    pub submitted_at: DateTime<Utc>,
}

impl From<&JobRecord> for Indexed {
    fn from(r: &JobRecord) -> Self {
        Self {
            id: r.id,
            status: r.status,
            request: IndexedRequest {
                agent: r.request.agent.clone(),
                owner: r.request.owner.clone(),
                submitted_at: r.request.submitted_at,
            },
            finished_at: r.finished_at,
            updated_at: r.updated_at,
        }
    }
}

/// Which jobs a listing wants.
#[derive(Debug, Clone, Default)]
pub struct Query {
    pub agent: Option<String>,
    pub status: Option<JobStatus>,
    /// Only jobs of these owners; `None`: every job (the caller may read all).
    pub owners: Option<Vec<String>>,
    pub submitted_after: Option<DateTime<Utc>>,
    pub submitted_before: Option<DateTime<Utc>>,
    pub finished_after: Option<DateTime<Utc>>,
    pub finished_before: Option<DateTime<Utc>>,
    pub oldest_first: bool,
    /// Continue after this key (exclusive), in the listing's order.
    pub after: Option<Key>,
    pub limit: usize,
}

/// A page of job ids in order, the cursor of the next page, and how many jobs match in all when that is cheap
/// to know exactly (only agent, status and owner filters).
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub ids: Vec<Uuid>,
    pub next: Option<Key>,
    pub total: Option<u64>,
}

#[derive(Default)]
pub struct Index {
    jobs: HashMap<Uuid, Entry>,
    all: BTreeSet<Key>,
    by_agent: HashMap<Sym, BTreeSet<Key>>,
    by_status: HashMap<JobStatus, BTreeSet<Key>>,
    counts: HashMap<(Sym, Sym), [u64; 6]>,
    /// Queued and running jobs per owner (the queue cap's count).
    unfinished: HashMap<Sym, u64>,
    symbols: Symbols,
}

fn status_slot(s: JobStatus) -> usize {
    JobStatus::ALL.iter().position(|x| *x == s).unwrap_or(0)
}

fn millis(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

impl Index {
    pub fn len(&self) -> usize {
        self.jobs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }

    /// Takes in a record as stored (a new job, or a change to one).
    pub fn apply(&mut self, record: &JobRecord) {
        self.take(&Indexed::from(record));
    }

    /// Takes in what the index keeps of a record.
    pub fn take(&mut self, record: &Indexed) {
        self.remove(&record.id);
        let agent = self.symbols.intern(&record.request.agent);
        let owner = match &record.request.owner {
            Some(o) => self.symbols.intern(o),
            None => 0,
        };
        let entry = Entry {
            key: (millis(record.request.submitted_at), record.id),
            status: record.status,
            agent,
            owner,
            finished_ms: record.finished_at.map(millis),
            updated_ms: millis(record.updated_at),
        };
        self.all.insert(entry.key);
        self.by_agent.entry(agent).or_default().insert(entry.key);
        self.by_status
            .entry(entry.status)
            .or_default()
            .insert(entry.key);
        self.counts.entry((agent, owner)).or_default()[status_slot(entry.status)] += 1;
        if !entry.status.is_terminal() {
            *self.unfinished.entry(owner).or_default() += 1;
        }
        self.jobs.insert(record.id, entry);
    }

    /// Forgets a job (its record was deleted, purged or has expired).
    pub fn remove(&mut self, id: &Uuid) {
        let Some(old) = self.jobs.remove(id) else {
            return;
        };
        self.all.remove(&old.key);
        if let Some(set) = self.by_agent.get_mut(&old.agent) {
            set.remove(&old.key);
        }
        if let Some(set) = self.by_status.get_mut(&old.status) {
            set.remove(&old.key);
        }
        if let Some(c) = self.counts.get_mut(&(old.agent, old.owner)) {
            let slot = &mut c[status_slot(old.status)];
            *slot = slot.saturating_sub(1);
        }
        if !old.status.is_terminal() {
            if let Some(n) = self.unfinished.get_mut(&old.owner) {
                *n = n.saturating_sub(1);
            }
        }
    }

    /// The jobs of `owner` queued or running, over every agent.
    pub fn unfinished_of(&self, owner: &str) -> u64 {
        self.symbols
            .symbol(owner)
            .and_then(|o| self.unfinished.get(&o))
            .copied()
            .unwrap_or(0)
    }

    /// Forgets jobs unchanged since before `cutoff` (their records have expired from the bucket); returns how
    /// many.
    pub fn sweep(&mut self, cutoff: DateTime<Utc>) -> usize {
        let cutoff = millis(cutoff);
        let stale: Vec<Uuid> = self
            .jobs
            .iter()
            .filter(|(_, e)| e.updated_ms < cutoff)
            .map(|(id, _)| *id)
            .collect();
        for id in &stale {
            self.remove(id);
        }
        stale.len()
    }

    /// Job counts by agent and status, over the owners given (`None`: all).
    pub fn counts(&self, owners: Option<&[String]>) -> HashMap<String, [u64; 6]> {
        let allowed = owners.map(|o| self.owner_symbols(o));
        let mut out: HashMap<String, [u64; 6]> = HashMap::new();
        for (&(agent, owner), c) in &self.counts {
            if allowed.as_ref().is_some_and(|a| !a.contains(&owner)) {
                continue;
            }
            let total = out.entry(self.symbols.name(agent).to_string()).or_default();
            for (t, n) in total.iter_mut().zip(c) {
                *t += n;
            }
        }
        out.retain(|_, c| c.iter().any(|n| *n > 0));
        out
    }

    fn owner_symbols(&self, owners: &[String]) -> Vec<Sym> {
        owners
            .iter()
            .filter_map(|o| self.symbols.symbol(o))
            .collect()
    }

    /// A page of the jobs `q` asks for.
    pub fn page(&self, q: &Query) -> Page {
        let empty = Page {
            ids: Vec::new(),
            next: None,
            total: Some(0),
        };
        let agent = match &q.agent {
            Some(a) => match self.symbols.symbol(a) {
                Some(s) => Some(s),
                None => return empty,
            },
            None => None,
        };
        let owners = q.owners.as_ref().map(|o| self.owner_symbols(o));
        if owners.as_ref().is_some_and(Vec::is_empty) {
            return empty;
        }
        let set = self.smallest_set(agent, q.status);
        let matches = |key: &Key| {
            let Some(e) = self.jobs.get(&key.1) else {
                return false;
            };
            agent.is_none_or(|a| a == e.agent)
                && q.status.is_none_or(|s| s == e.status)
                && owners.as_ref().is_none_or(|o| o.contains(&e.owner))
                && finished_within(e.finished_ms, q.finished_after, q.finished_before)
        };
        let (low, high) = self.bounds(q);
        let range = set.range((low, high));
        let mut ids = Vec::with_capacity(q.limit.min(1000));
        let mut last = None;
        let mut walk = |key: &Key| {
            if matches(key) {
                ids.push(key.1);
                last = Some(*key);
            }
            ids.len() < q.limit
        };
        if q.oldest_first {
            range.take_while(|k| walk(k)).for_each(drop);
        } else {
            range.rev().take_while(|k| walk(k)).for_each(drop);
        }
        let total = self.exact_total(q, agent, owners.as_deref());
        let next = last.filter(|_| ids.len() == q.limit);
        Page { ids, next, total }
    }

    fn smallest_set(&self, agent: Option<Sym>, status: Option<JobStatus>) -> &BTreeSet<Key> {
        static EMPTY: BTreeSet<Key> = BTreeSet::new();
        let by_agent = agent.map(|a| self.by_agent.get(&a).unwrap_or(&EMPTY));
        let by_status = status.map(|s| self.by_status.get(&s).unwrap_or(&EMPTY));
        match (by_agent, by_status) {
            (Some(a), Some(s)) if s.len() < a.len() => s,
            (Some(a), _) => a,
            (None, Some(s)) => s,
            (None, None) => &self.all,
        }
    }

    /// The key range a listing walks: the submission window, cut at the cursor.
    fn bounds(&self, q: &Query) -> (Bound<Key>, Bound<Key>) {
        let mut low = match q.submitted_after {
            Some(t) => Bound::Excluded((millis(t), Uuid::max())),
            None => Bound::Unbounded,
        };
        let mut high = match q.submitted_before {
            Some(t) => Bound::Excluded((millis(t), Uuid::nil())),
            None => Bound::Unbounded,
        };
        if let Some(after) = q.after {
            if q.oldest_first {
                low = tighter_low(low, after);
            } else {
                high = tighter_high(high, after);
            }
        }
        (low, high)
    }

    /// The number of matching jobs, when the counts table knows it (no time window, no cursor-independent
    /// filter beyond agent, status and owner).
    fn exact_total(&self, q: &Query, agent: Option<Sym>, owners: Option<&[Sym]>) -> Option<u64> {
        let windowed = q.submitted_after.is_some()
            || q.submitted_before.is_some()
            || q.finished_after.is_some()
            || q.finished_before.is_some();
        if windowed {
            return None;
        }
        let mut total = 0;
        for (&(a, o), c) in &self.counts {
            if agent.is_some_and(|want| want != a) || owners.is_some_and(|os| !os.contains(&o)) {
                continue;
            }
            total += match q.status {
                Some(s) => c[status_slot(s)],
                None => c.iter().sum(),
            };
        }
        Some(total)
    }

    /// The order key of a job this index holds.
    pub fn key_of(&self, id: &Uuid) -> Option<Key> {
        self.jobs.get(id).map(|e| e.key)
    }
}

fn finished_within(
    finished_ms: Option<i64>,
    after: Option<DateTime<Utc>>,
    before: Option<DateTime<Utc>>,
) -> bool {
    if after.is_none() && before.is_none() {
        return true;
    }
    let Some(f) = finished_ms else {
        return false;
    };
    after.is_none_or(|a| f > millis(a)) && before.is_none_or(|b| f < millis(b))
}

fn tighter_low(low: Bound<Key>, after: Key) -> Bound<Key> {
    match low {
        Bound::Excluded(l) | Bound::Included(l) if l >= after => low,
        _ => Bound::Excluded(after),
    }
}

fn tighter_high(high: Bound<Key>, before: Key) -> Bound<Key> {
    match high {
        Bound::Excluded(h) | Bound::Included(h) if h <= before => high,
        _ => Bound::Excluded(before),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_shared::JobRequest;

    fn job(agent: &str, owner: Option<&str>, at_ms: i64) -> JobRecord {
        let mut r = JobRequest::new(
            Uuid::new_v4(),
            agent,
            "hi".into(),
            DateTime::from_timestamp_millis(at_ms).unwrap(),
        );
        r.owner = owner.map(str::to_string);
        JobRecord::queued(r)
    }

    fn query(limit: usize) -> Query {
        Query {
            limit,
            ..Default::default()
        }
    }

    #[test]
    fn newest_first_is_by_submission_time_whatever_the_id() {
        let mut index = Index::default();
        let jobs: Vec<JobRecord> = (0..5).map(|i| job("echo", None, 1_000 + i)).collect();
        for j in jobs.iter().rev() {
            index.apply(j);
        }
        let page = index.page(&query(10));
        let expected: Vec<Uuid> = jobs.iter().rev().map(|j| j.id).collect();
        assert_eq!(page.ids, expected);
        assert_eq!(page.total, Some(5));
        let oldest = index.page(&Query {
            oldest_first: true,
            ..query(2)
        });
        assert_eq!(oldest.ids, vec![jobs[0].id, jobs[1].id]);
    }

    #[test]
    fn pages_neither_repeat_nor_skip_while_jobs_arrive_and_end() {
        let mut index = Index::default();
        let mut jobs: Vec<JobRecord> = (0..25).map(|i| job("echo", None, 10_000 + i)).collect();
        for j in &jobs {
            index.apply(j);
        }
        let originals: std::collections::HashSet<Uuid> = jobs.iter().map(|j| j.id).collect();
        let mut seen = Vec::new();
        let mut q = query(10);
        loop {
            let page = index.page(&q);
            seen.extend(page.ids.iter().copied());
            // Between pages: a new job arrives (newer than the cursor) and an old one ends.
            index.apply(&job("echo", None, 99_999 + seen.len() as i64));
            if let Some(ending) = jobs.pop() {
                index.apply(&ending.cancelled_before_start());
            }
            match page.next {
                Some(k) => q.after = Some(k),
                None => break,
            }
        }
        assert_eq!(seen.len(), 25, "each job once: {seen:?}");
        assert_eq!(
            seen.into_iter().collect::<std::collections::HashSet<_>>(),
            originals
        );
    }

    #[test]
    fn unfinished_jobs_are_counted_per_owner() {
        let mut index = Index::default();
        let mut a = job("a", Some("alice"), 1);
        index.apply(&a);
        index.apply(&job("b", Some("alice"), 2));
        index.apply(&job("a", Some("bob"), 3));
        assert_eq!(index.unfinished_of("alice"), 2);
        a.status = JobStatus::Running;
        index.apply(&a);
        assert_eq!(index.unfinished_of("alice"), 2);
        a.status = JobStatus::Completed;
        index.apply(&a);
        assert_eq!(index.unfinished_of("alice"), 1);
        assert_eq!(index.unfinished_of("bob"), 1);
        assert_eq!(index.unfinished_of("carol"), 0);
    }

    #[test]
    fn filters_and_counts_follow_status_changes_and_owners() {
        let mut index = Index::default();
        let a = job("echo", Some("key:a"), 1);
        let b = job("python", Some("key:b"), 2);
        let c = job("echo", Some("key:b"), 3);
        for j in [&a, &b, &c] {
            index.apply(j);
        }
        index.apply(&c.clone().cancelled_before_start());
        let cancelled_echo = index.page(&Query {
            agent: Some("echo".into()),
            status: Some(JobStatus::Cancelled),
            ..query(10)
        });
        assert_eq!(
            (cancelled_echo.ids, cancelled_echo.total),
            (vec![c.id], Some(1))
        );
        let bs = index.page(&Query {
            owners: Some(vec!["key:b".into()]),
            ..query(10)
        });
        assert_eq!((bs.ids, bs.total), (vec![c.id, b.id], Some(2)));
        let counts = index.counts(Some(&["key:b".to_string()]));
        assert_eq!(counts["echo"][status_slot(JobStatus::Cancelled)], 1);
        assert_eq!(counts["python"][status_slot(JobStatus::Queued)], 1);
        assert!(!counts.contains_key("nobody"));
        assert!(index
            .page(&Query {
                agent: Some("nobody".into()),
                ..query(5)
            })
            .ids
            .is_empty());
        index.remove(&a.id);
        assert_eq!(index.counts(None)["echo"].iter().sum::<u64>(), 1);
    }

    #[test]
    fn the_indexed_fields_read_from_a_stored_record() {
        let mut record = job("echo", Some("key:a"), 5).cancelled_before_start();
        record.stdout = "a lot of output".into();
        let stored = fleet_shared::codec::to_msgpack(&record);
        let indexed: Indexed =
            fleet_shared::codec::decode(&stored, fleet_shared::codec::Format::MessagePack).unwrap();
        let direct = Indexed::from(&record);
        assert_eq!(
            (
                indexed.id,
                indexed.status,
                indexed.request.owner,
                indexed.finished_at
            ),
            (
                direct.id,
                direct.status,
                direct.request.owner,
                direct.finished_at
            )
        );
        assert_eq!(indexed.request.submitted_at, record.request.submitted_at);
    }

    #[test]
    fn expired_records_are_swept() {
        let mut index = Index::default();
        let old = job("echo", None, 1);
        index.apply(&old);
        let cutoff = old.updated_at + chrono::Duration::seconds(1);
        assert_eq!(index.sweep(cutoff), 1);
        assert!(index.is_empty());
        assert_eq!(index.page(&query(5)).total, Some(0));
    }
}
