//! The hub: who subscribes to which table, who is present in which topic, who is in which
//! room. Routing looks up exactly the sessions concerned (docs/protocol.md section 10), never
//! scans.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use super::event::SessionId;
use crate::payload::RawJson;
use crate::rng::KeyedHasher;

/// One member of a presence topic.
pub(crate) struct Presence {
    pub(crate) node_id: Arc<str>,
    pub(crate) data: RawJson,
    pub(crate) updated_at: u64,
}

/// One member of a room.
pub(crate) struct Member {
    pub(crate) node_id: Arc<str>,
    pub(crate) data: Option<RawJson>,
}

/// The indexes. Keys are peer-chosen strings, so the maps use the keyed hasher; every value
/// is ordered by session id, so output never depends on hash order.
pub(crate) struct Hub {
    tables: HashMap<Arc<str>, BTreeSet<SessionId>, KeyedHasher>,
    topics: HashMap<Arc<str>, BTreeMap<SessionId, Presence>, KeyedHasher>,
    rooms: HashMap<Arc<str>, BTreeMap<SessionId, Member>, KeyedHasher>,
}

impl Hub {
    pub(crate) fn new(hasher: KeyedHasher) -> Self {
        Hub {
            tables: HashMap::with_hasher(hasher),
            topics: HashMap::with_hasher(hasher),
            rooms: HashMap::with_hasher(hasher),
        }
    }

    /// Interns a table name: the hub's key if the table is known, so sessions share it.
    pub(crate) fn table_key(&self, table: &str) -> Arc<str> {
        match self.tables.get_key_value(table) {
            Some((key, _)) => key.clone(),
            None => Arc::from(table),
        }
    }

    pub(crate) fn subscribe(&mut self, table: &Arc<str>, session: SessionId) {
        self.tables
            .entry(table.clone())
            .or_default()
            .insert(session);
    }

    pub(crate) fn unsubscribe(&mut self, table: &str, session: SessionId) {
        if let Some(subs) = self.tables.get_mut(table) {
            subs.remove(&session);
            if subs.is_empty() {
                self.tables.remove(table);
            }
        }
    }

    /// The subscribers of a table, in session order.
    pub(crate) fn subscribers(&self, table: &str) -> Option<&BTreeSet<SessionId>> {
        self.tables.get(table)
    }

    pub(crate) fn topic_key(&self, topic: &str) -> Arc<str> {
        match self.topics.get_key_value(topic) {
            Some((key, _)) => key.clone(),
            None => Arc::from(topic),
        }
    }

    pub(crate) fn topic(&self, topic: &str) -> Option<&BTreeMap<SessionId, Presence>> {
        self.topics.get(topic)
    }

    /// Sets a member's presence; `true` if it joined (was not a member).
    pub(crate) fn set_presence(
        &mut self,
        topic: &Arc<str>,
        session: SessionId,
        entry: Presence,
    ) -> bool {
        self.topics
            .entry(topic.clone())
            .or_default()
            .insert(session, entry)
            .is_none()
    }

    /// Removes a member; `false` if it was not one.
    pub(crate) fn leave_topic(&mut self, topic: &str, session: SessionId) -> bool {
        let Some(members) = self.topics.get_mut(topic) else {
            return false;
        };
        let was = members.remove(&session).is_some();
        if members.is_empty() {
            self.topics.remove(topic);
        }
        was
    }

    pub(crate) fn room_key(&self, room: &str) -> Arc<str> {
        match self.rooms.get_key_value(room) {
            Some((key, _)) => key.clone(),
            None => Arc::from(room),
        }
    }

    pub(crate) fn room(&self, room: &str) -> Option<&BTreeMap<SessionId, Member>> {
        self.rooms.get(room)
    }

    pub(crate) fn join_room(&mut self, room: &Arc<str>, session: SessionId, member: Member) {
        self.rooms
            .entry(room.clone())
            .or_default()
            .insert(session, member);
    }

    pub(crate) fn leave_room(&mut self, room: &str, session: SessionId) -> bool {
        let Some(members) = self.rooms.get_mut(room) else {
            return false;
        };
        let was = members.remove(&session).is_some();
        if members.is_empty() {
            self.rooms.remove(room);
        }
        was
    }
}
