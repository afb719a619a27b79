//! The sessions this gateway lists from: each session's id, agent and owner, newest first (ids are UUID v7),
//! kept in step with the sessions bucket by a watch ([`Followed`]); a page costs the same at a million sessions
//! as at ten. Turns and conversations in the same bucket are passed over.

use std::collections::BTreeMap;

use fleet_shared::codec::{decode, Format};
use serde::Deserialize;
use uuid::Uuid;

use crate::jobs::followed::{Followed, Follows};
use crate::jobs::symbols::{Sym, Symbols};

pub type Sessions = Followed<SessionIndex>;

#[derive(Default)]
pub struct SessionIndex {
    sessions: BTreeMap<Uuid, Entry>,
    symbols: Symbols,
}

#[derive(Clone, Copy)]
struct Entry {
    agent: Sym,
    /// 0: none.
    owner: Sym,
}

/// The fields of a stored session the index keeps.
#[derive(Deserialize)]
struct Indexed {
    agent: String,
    #[serde(default)]
    owner: Option<String>,
}

/// Which sessions a page lists: `owners` None lists every owner's.
#[derive(Clone, Copy)]
pub struct SessionQuery<'a> {
    pub agent: Option<&'a str>,
    pub owners: Option<&'a [String]>,
    pub after: Option<Uuid>,
    pub limit: usize,
}

/// Entries looked at per page at most, past which the page ends early with a cursor to go on from.
const LOOK_BUDGET: usize = 200_000;

impl Follows for SessionIndex {
    const KEYS: &'static str = "*";
    const WHAT: &'static str = "sessions";

    fn put(&mut self, key: &str, value: &[u8]) {
        let Ok(id) = Uuid::parse_str(key) else {
            return; // a turn (`<id>.<n>`) or a conversation
        };
        match decode::<Indexed>(value, Format::MessagePack) {
            Ok(session) => {
                let agent = self.symbols.intern(&session.agent);
                let owner = session.owner.map_or(0, |o| self.symbols.intern(&o));
                self.sessions.insert(id, Entry { agent, owner });
            }
            Err(e) => {
                tracing::error!(session_id = %id, error = %e, "unreadable session left out of the list")
            }
        }
    }

    fn remove(&mut self, key: &str) {
        if let Ok(id) = Uuid::parse_str(key) {
            self.sessions.remove(&id);
        }
    }

    fn entries(&self) -> usize {
        self.sessions.len()
    }
}

impl SessionIndex {
    /// The ids of a page, newest first, and the cursor of the next page when there may be more.
    pub fn page(&self, q: &SessionQuery<'_>) -> (Vec<Uuid>, Option<Uuid>) {
        let agent = match q.agent {
            Some(a) => match self.symbols.symbol(a) {
                Some(s) => Some(s),
                None => return (Vec::new(), None),
            },
            None => None,
        };
        let owners: Option<Vec<Sym>> = q
            .owners
            .map(|o| o.iter().filter_map(|o| self.symbols.symbol(o)).collect());
        let older = match q.after {
            Some(after) => self.sessions.range(..after),
            None => self.sessions.range(..),
        };
        let limit = q.limit.max(1);
        let mut ids = Vec::with_capacity(limit.min(1000));
        // The last one looked at: the next page goes on after it.
        let mut looked_last = None;
        for (looked, (id, e)) in older.rev().enumerate() {
            if ids.len() == limit || looked == LOOK_BUDGET {
                return (ids, looked_last);
            }
            looked_last = Some(*id);
            let visible = agent.is_none_or(|a| a == e.agent)
                && owners.as_ref().is_none_or(|o| o.contains(&e.owner));
            if visible {
                ids.push(*id);
            }
        }
        (ids, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_shared::codec::to_msgpack;

    fn put(index: &mut SessionIndex, agent: &str, owner: Option<&str>) -> Uuid {
        let id = Uuid::now_v7();
        let value = to_msgpack(&serde_json::json!({"agent": agent, "owner": owner}));
        index.put(&id.to_string(), &value);
        id
    }

    fn query<'a>(
        owners: Option<&'a [String]>,
        after: Option<Uuid>,
        limit: usize,
    ) -> SessionQuery<'a> {
        SessionQuery {
            agent: None,
            owners,
            after,
            limit,
        }
    }

    #[test]
    fn pages_are_newest_first_and_go_on_after_their_cursor() {
        let mut index = SessionIndex::default();
        let ids: Vec<Uuid> = (0..5).map(|_| put(&mut index, "a", None)).collect();
        // Turns and conversations share the bucket and are passed over.
        index.put(&format!("{}.1", ids[0]), b"not a session");
        index.put(&format!("conversations.{}", ids[0]), b"nor this");
        assert_eq!(index.entries(), 5);
        let (first, next) = index.page(&query(None, None, 2));
        assert_eq!(first, [ids[4], ids[3]]);
        let (second, next) = index.page(&query(None, next, 2));
        assert_eq!(second, [ids[2], ids[1]]);
        let (third, next) = index.page(&query(None, next, 2));
        assert_eq!((third, next), (vec![ids[0]], None));
        index.remove(&ids[4].to_string());
        assert_eq!(index.page(&query(None, None, 1)).0, [ids[3]]);
    }

    #[test]
    fn only_the_owners_and_the_agent_asked_for_are_listed() {
        let mut index = SessionIndex::default();
        let alice = put(&mut index, "a", Some("alice"));
        let bob = put(&mut index, "a", Some("bob"));
        let alice_b = put(&mut index, "b", Some("alice"));
        let owners = ["alice".to_string()];
        let (page, next) = index.page(&query(Some(&owners), None, 10));
        assert_eq!((page, next), (vec![alice_b, alice], None));
        let by_agent = SessionQuery {
            agent: Some("a"),
            ..query(None, None, 10)
        };
        assert_eq!(index.page(&by_agent).0, [bob, alice]);
        let unknown = SessionQuery {
            agent: Some("nope"),
            ..query(None, None, 10)
        };
        assert!(index.page(&unknown).0.is_empty());
        let nobody = ["carol".to_string()];
        assert!(index.page(&query(Some(&nobody), None, 10)).0.is_empty());
    }
}
