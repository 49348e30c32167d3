//! The hub: who subscribes to which table, who is present in which topic, who is in which
//! room. Routing looks up exactly the sessions concerned (docs/protocol.md section 10), never
//! scans.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use super::event::{RemoteSession, SessionId};
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

/// Who a member of a topic or room is: a session of this server, or one of another server
/// that shares its presence and rooms (README, "Scaling out over Redis"). Local members sort first.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub(crate) enum MemberKey {
    Local(SessionId),
    Remote(RemoteSession),
}

impl MemberKey {
    /// The session, when it is one of this server's.
    pub(crate) fn local(&self) -> Option<SessionId> {
        match self {
            MemberKey::Local(session) => Some(*session),
            MemberKey::Remote(_) => None,
        }
    }
}

/// A topic or room and a member of another server's.
pub(crate) type Named = (Arc<str>, RemoteSession);

/// The indexes. Keys are peer-chosen strings, so the maps use the keyed hasher; every value
/// is ordered by session id, so output never depends on hash order.
pub(crate) struct Hub {
    tables: HashMap<Arc<str>, BTreeSet<SessionId>, KeyedHasher>,
    topics: HashMap<Arc<str>, BTreeMap<MemberKey, Presence>, KeyedHasher>,
    rooms: HashMap<Arc<str>, BTreeMap<MemberKey, Member>, KeyedHasher>,
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

    /// Every topic and its members, in no particular order.
    pub(crate) fn topics(
        &self,
    ) -> impl Iterator<Item = (&Arc<str>, &BTreeMap<MemberKey, Presence>)> {
        self.topics.iter()
    }

    /// Every room and its members, in no particular order.
    pub(crate) fn rooms(&self) -> impl Iterator<Item = (&Arc<str>, &BTreeMap<MemberKey, Member>)> {
        self.rooms.iter()
    }

    pub(crate) fn topic(&self, topic: &str) -> Option<&BTreeMap<MemberKey, Presence>> {
        self.topics.get(topic)
    }

    /// Sets a member's presence; `true` if it joined (was not a member).
    pub(crate) fn set_presence(
        &mut self,
        topic: &Arc<str>,
        member: MemberKey,
        entry: Presence,
    ) -> bool {
        self.topics
            .entry(topic.clone())
            .or_default()
            .insert(member, entry)
            .is_none()
    }

    /// Removes a member; `false` if it was not one.
    pub(crate) fn leave_topic(&mut self, topic: &str, member: &MemberKey) -> bool {
        let Some(members) = self.topics.get_mut(topic) else {
            return false;
        };
        let was = members.remove(member).is_some();
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

    pub(crate) fn room(&self, room: &str) -> Option<&BTreeMap<MemberKey, Member>> {
        self.rooms.get(room)
    }

    /// Adds or updates a member; `true` if it joined (was not a member).
    pub(crate) fn join_room(&mut self, room: &Arc<str>, key: MemberKey, member: Member) -> bool {
        self.rooms
            .entry(room.clone())
            .or_default()
            .insert(key, member)
            .is_none()
    }

    pub(crate) fn leave_room(&mut self, room: &str, member: &MemberKey) -> bool {
        let Some(members) = self.rooms.get_mut(room) else {
            return false;
        };
        let was = members.remove(member).is_some();
        if members.is_empty() {
            self.rooms.remove(room);
        }
        was
    }

    /// Every (topic, member) and (room, member) of another server's, in name order: to
    /// remove when that server is gone.
    pub(crate) fn remote_of(&self, server: &str) -> (Vec<Named>, Vec<Named>) {
        fn of<T>(
            map: &HashMap<Arc<str>, BTreeMap<MemberKey, T>, KeyedHasher>,
            server: &str,
        ) -> Vec<Named> {
            let mut out: Vec<Named> = map
                .iter()
                .flat_map(|(name, members)| {
                    members.keys().filter_map(move |k| match k {
                        MemberKey::Remote(r) if r.server == server => {
                            Some((name.clone(), r.clone()))
                        }
                        _ => None,
                    })
                })
                .collect();
            out.sort();
            out
        }
        (of(&self.topics, server), of(&self.rooms, server))
    }
}
