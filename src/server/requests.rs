//! What each client message does (docs/protocol.md sections 4 to 7).

use std::sync::Arc;

use serde_json::value::RawValue;

use super::config::{Access, Resource};
use super::event::RoomChange;
use super::event::{PullId, PushId, ReplayId, RoomJoinId, ServerEvent, SessionId};
use super::handshake::valid_node_id;
use super::hub::{Member, MemberKey, Presence};
use super::out::{self, Refusal};
use super::session::InFlight;
use super::{Pending, PendingKind, Resume, Server};
use crate::payload::SyncFilter;
use crate::payload::{
    Cursor, PresenceEvent, PresenceEventKind, PresenceGet, PresenceSnapshot, PresenceState,
    PresenceUpdate, PullRequest, PushRequest, RawJson, RoomAction, RoomEvent, RoomEventKind,
    RoomMember, RoomRequest, Subscribe, Unsubscribe,
};
use crate::time::Instant;
use crate::wire::{Frame, FrameId, MessageType};

type Result<T = ()> = core::result::Result<T, Refusal>;

impl Server {
    /// Runs one admitted, decoded frame.
    pub(super) fn dispatch(&mut self, now: Instant, session: SessionId, frame: Frame) -> Result {
        match frame.kind() {
            MessageType::Ping => {
                self.pong(session, &frame);
                Ok(())
            }
            // A pong to no ping of ours: counted by the rate limit, otherwise nothing to do.
            MessageType::Pong => Ok(()),
            MessageType::PullRequest => self.on_pull(session, &frame),
            MessageType::PushRequest => self.on_push(session, &frame),
            MessageType::Subscribe => self.on_subscribe(session, &frame),
            MessageType::Unsubscribe => self.on_unsubscribe(session, &frame),
            MessageType::PresenceUpdate => self.on_presence_update(now, session, &frame),
            MessageType::PresenceGet => self.on_presence_get(session, &frame),
            MessageType::Room => self.on_room(session, &frame),
            kind @ (MessageType::PullResponse
            | MessageType::PushResponse
            | MessageType::Change
            | MessageType::Changes
            | MessageType::PresenceEvent
            | MessageType::PresenceSnapshot
            | MessageType::Error
            | MessageType::Ack) => Err(Refusal::ServerOnly(kind)),
        }
    }

    fn pong(&mut self, session: SessionId, ping: &Frame) {
        // The payload was validated by decoding; borrow it as raw JSON, no copy.
        let payload: Option<&RawValue> = serde_json::from_slice(ping.raw_payload()).ok();
        self.send(session, out::frame(MessageType::Pong, ping.id(), &payload));
    }

    fn authorize(&self, session: SessionId, resource: Resource<'_>) -> Result {
        let Some(hook) = &self.config.authorize else {
            return Ok(());
        };
        let node_id = self.sessions.get(session).map_or("", |s| &*s.node_id);
        if hook(&Access {
            session,
            node_id,
            resource,
        }) {
            return Ok(());
        }
        Err(Refusal::Forbidden(match resource {
            Resource::ReadTable(t) => format!("read table {t:?}"),
            Resource::WriteTable(t) => format!("write table {t:?}"),
            Resource::Topic(t) => format!("presence topic {t:?}"),
            Resource::Room(r) => format!("room {r:?}"),
        }))
    }

    /// A request that names `node_id` must name the session's own. A session whose id was
    /// assigned and is still unused takes the first one named (a valid id), and keeps it.
    fn check_node(&mut self, session: SessionId, node_id: Option<&str>) -> Result {
        let (Some(named), Some(s)) = (node_id, self.sessions.get_mut(session)) else {
            return Ok(());
        };
        if named != &*s.node_id {
            if !s.unbound || !valid_node_id(named) {
                return Err(Refusal::NodeId(named.to_owned()));
            }
            s.node_id = Arc::from(named);
        }
        s.unbound = false;
        Ok(())
    }

    /// Refuses a request id still in flight on the session, or one request too many.
    fn check_in_flight(&self, session: SessionId, id: Option<&FrameId>) -> Result {
        let Some(s) = self.sessions.get(session) else {
            return Ok(());
        };
        if let Some(id) = id {
            if s.in_flight
                .iter()
                .any(|r| r.id.as_deref() == Some(id.as_str()))
            {
                return Err(Refusal::DuplicateId(id.as_str().to_owned()));
            }
        }
        let max = self.config.max_in_flight;
        if max != 0 && s.in_flight.len() >= max {
            return Err(Refusal::InFlight);
        }
        Ok(())
    }

    /// Records a request handed to the application; returns its key.
    fn register(&mut self, session: SessionId, id: Option<FrameId>, kind: PendingKind) -> u64 {
        self.next_request += 1;
        let key = self.next_request;
        if let Some(s) = self.sessions.get_mut(session) {
            s.in_flight.push(InFlight {
                key,
                id: id.as_ref().map(|i| i.as_str().into()),
            });
        }
        self.pending.insert(key, Pending { session, id, kind });
        key
    }

    fn on_pull(&mut self, session: SessionId, frame: &Frame) -> Result {
        let id = frame
            .id()
            .ok_or(Refusal::MissingId(MessageType::PullRequest))?;
        self.check_in_flight(session, Some(id))?;
        let req: PullRequest = frame.payload()?;
        self.check_node(session, req.node_id.as_deref())?;
        let filter = restricting(req.filter);
        let (from, cursor) = resume_point(req.since.is_some(), req.cursor.as_deref());
        for table in &req.tables {
            self.authorize(session, Resource::ReadTable(table))?;
        }
        let key = self.register(
            session,
            Some(id.clone()),
            PendingKind::Pull { from, filter },
        );
        let node_id = self.node_of(session);
        self.events.push_back(ServerEvent::Pull {
            request: PullId(key),
            session,
            node_id,
            tables: req.tables,
            since: req.since,
            cursor,
        });
        Ok(())
    }

    fn on_push(&mut self, session: SessionId, frame: &Frame) -> Result {
        let id = frame
            .id()
            .ok_or(Refusal::MissingId(MessageType::PushRequest))?;
        self.check_in_flight(session, Some(id))?;
        let req: PushRequest = frame.payload()?;
        self.check_node(session, Some(&req.node_id))?;
        let mut tables: Vec<&str> = req.changes.iter().map(|c| c.table.as_str()).collect();
        tables.sort_unstable();
        tables.dedup();
        for table in tables {
            self.authorize(session, Resource::WriteTable(table))?;
        }
        let key = self.register(session, Some(id.clone()), PendingKind::Push);
        self.reorder.asked(key);
        self.events.push_back(ServerEvent::Push {
            request: PushId(key),
            session,
            node_id: req.node_id,
            changes: req.changes,
        });
        Ok(())
    }

    fn on_subscribe(&mut self, session: SessionId, frame: &Frame) -> Result {
        let mut req: Subscribe = frame.payload()?;
        let (from, cursor) = resume_point(req.since.is_some(), req.cursor.as_deref());
        dedup_in_order(&mut req.tables);
        for table in &req.tables {
            self.authorize(session, Resource::ReadTable(table))?;
        }
        // Every subscribe with an id is acknowledged with where the stream stands, which
        // only the store knows (docs/protocol.md section 6.7, `ack`); one without an id and without
        // a resume asks nothing of it.
        let ask_store = from != Resume::Head || frame.id().is_some();
        if ask_store {
            self.check_in_flight(session, frame.id())?;
        }
        let Some(s) = self.sessions.get(session) else {
            return Ok(());
        };
        let added: Vec<Arc<str>> = req
            .tables
            .iter()
            .filter(|t| !s.tables.contains(t.as_str()))
            .map(|t| self.hub.table_key(t))
            .collect();
        let max = self.config.max_subscriptions;
        if max != 0 && s.tables.len() + added.len() > max {
            return Err(Refusal::Subscriptions(max));
        }
        for table in &added {
            self.hub.subscribe(table, session);
        }
        let Some(s) = self.sessions.get_mut(session) else {
            return Ok(());
        };
        s.tables.extend(added.iter().cloned());
        if !ask_store {
            return Ok(());
        }
        // Live changes for this session wait from now until the replay is answered.
        s.replays_pending += 1;
        let tables = req.tables.iter().map(|t| self.hub.table_key(t)).collect();
        let key = self.register(
            session,
            frame.id().cloned(),
            PendingKind::Replay {
                tables,
                added,
                from,
                filter: restricting(req.filter),
            },
        );
        self.events.push_back(ServerEvent::Replay {
            request: ReplayId(key),
            session,
            tables: req.tables,
            since: req.since,
            cursor,
            head_only: from == Resume::Head,
        });
        Ok(())
    }

    fn on_unsubscribe(&mut self, session: SessionId, frame: &Frame) -> Result {
        let req: Unsubscribe = frame.payload()?;
        for table in &req.tables {
            if let Some(s) = self.sessions.get_mut(session) {
                if s.tables.remove(table.as_str()) {
                    self.hub.unsubscribe(table, session);
                }
            }
        }
        // A replay still to come for an earlier subscribe brings nothing of these tables any
        // more: the session left them, and if it subscribes again, that subscribe's own
        // replay brings them (once, not twice).
        let keys: Vec<u64> = self
            .sessions
            .get(session)
            .map_or_else(Vec::new, |s| s.in_flight.iter().map(|r| r.key).collect());
        for key in keys {
            if let Some(Pending {
                kind: PendingKind::Replay { tables, added, .. },
                ..
            }) = self.pending.get_mut(&key)
            {
                let left = |t: &Arc<str>| req.tables.iter().any(|u| **t == **u);
                tables.retain(|t| !left(t));
                added.retain(|t| !left(t));
            }
        }
        self.ack(session, frame.id());
        Ok(())
    }

    fn on_presence_update(&mut self, now: Instant, session: SessionId, frame: &Frame) -> Result {
        if !self.config.presence {
            return Err(Refusal::PresenceDisabled);
        }
        let req: PresenceUpdate = frame.payload()?;
        self.authorize(session, Resource::Topic(&req.topic))?;
        let Some(s) = self.sessions.get(session) else {
            return Ok(());
        };
        let member = s.topics.iter().any(|t| **t == *req.topic);
        let node = s.node_id.clone();
        match req.data.filter(|d| !d.is_null()) {
            None => {
                if member {
                    if let Some(s) = self.sessions.get_mut(session) {
                        s.topics.retain(|t| **t != *req.topic);
                    }
                    self.presence_leave(&req.topic, session, &node, true);
                }
            }
            Some(data) => {
                let max = self.config.max_topics;
                if !member && max != 0 && s.topics.len() >= max {
                    return Err(Refusal::Topics(max));
                }
                let topic = self.hub.topic_key(&req.topic);
                let updated_at = self.wall_millis(now);
                let entry = Presence {
                    node_id: node.clone(),
                    data: data.clone(),
                    updated_at,
                };
                self.hub
                    .set_presence(&topic, MemberKey::Local(session), entry);
                if self.config.shared_presence {
                    self.events.push_back(ServerEvent::PresenceChanged {
                        session,
                        node_id: node.to_string(),
                        topic: req.topic.clone(),
                        data: Some(data.clone()),
                        updated_at,
                    });
                }
                if !member {
                    if let Some(s) = self.sessions.get_mut(session) {
                        s.topics.push(topic.clone());
                        // Seen under its id: it keeps it.
                        s.unbound = false;
                    }
                }
                let kind = if member {
                    PresenceEventKind::Update
                } else {
                    PresenceEventKind::Join
                };
                let event = PresenceEvent {
                    kind,
                    node_id: node.to_string(),
                    topic: req.topic,
                    data: Some(data),
                };
                let bytes = out::frame(MessageType::PresenceEvent, None, &event);
                let members: Vec<SessionId> = self.presence_members(&topic);
                for member in members {
                    self.send(member, bytes.clone());
                }
            }
        }
        self.ack(session, frame.id());
        Ok(())
    }

    /// Removes a session from a topic and tells the rest (and the session itself, when it
    /// left on its own).
    pub(super) fn presence_leave(
        &mut self,
        topic: &str,
        session: SessionId,
        node: &Arc<str>,
        tell_self: bool,
    ) {
        if !self.hub.leave_topic(topic, &MemberKey::Local(session)) {
            return;
        }
        if self.config.shared_presence {
            let updated_at = self.wall_millis(self.now);
            self.events.push_back(ServerEvent::PresenceChanged {
                session,
                node_id: node.to_string(),
                topic: topic.to_owned(),
                data: None,
                updated_at,
            });
        }
        let event = PresenceEvent {
            kind: PresenceEventKind::Leave,
            node_id: node.to_string(),
            topic: topic.to_owned(),
            data: None,
        };
        let bytes = out::frame(MessageType::PresenceEvent, None, &event);
        let mut members = self.presence_members(topic);
        if tell_self {
            members.push(session);
        }
        for member in members {
            self.send(member, bytes.clone());
        }
    }

    fn on_presence_get(&mut self, session: SessionId, frame: &Frame) -> Result {
        let id = frame
            .id()
            .ok_or(Refusal::MissingId(MessageType::PresenceGet))?;
        if !self.config.presence {
            return Err(Refusal::PresenceDisabled);
        }
        let req: PresenceGet = frame.payload()?;
        self.authorize(session, Resource::Topic(&req.topic))?;
        let states = self
            .hub
            .topic(&req.topic)
            .into_iter()
            .flatten()
            .map(|(_, p)| PresenceState {
                node_id: p.node_id.to_string(),
                topic: req.topic.clone(),
                data: p.data.clone(),
                updated_at: RawJson::from_serialize(&p.updated_at)
                    .expect("invariant: an integer serialises"),
            })
            .collect();
        let snapshot = PresenceSnapshot {
            topic: req.topic,
            states,
        };
        let bytes = out::frame(MessageType::PresenceSnapshot, Some(id), &snapshot);
        self.send(session, bytes);
        Ok(())
    }

    fn on_room(&mut self, session: SessionId, frame: &Frame) -> Result {
        let req: RoomRequest = frame.payload()?;
        self.authorize(session, Resource::Room(&req.room))?;
        let Some(s) = self.sessions.get(session) else {
            return Ok(());
        };
        let member = s.rooms.iter().any(|r| **r == *req.room);
        let node = s.node_id.clone();
        match req.action {
            RoomAction::Join => {
                // Joins waiting for the shared place count: they may take it.
                let joining = match self.config.shared_presence {
                    true => self
                        .pending
                        .values()
                        .filter(|p| matches!(&p.kind, PendingKind::RoomJoin { room, .. } if **room == *req.room))
                        .count(),
                    false => 0,
                };
                let size = self.hub.room(&req.room).map_or(0, |m| m.len()) + joining;
                let (max_size, max_rooms) = (self.config.max_room_size, self.config.max_rooms);
                if !member && max_size != 0 && size >= max_size {
                    return Err(Refusal::RoomFull(req.room));
                }
                if !member && max_rooms != 0 && s.rooms.len() >= max_rooms {
                    return Err(Refusal::Rooms(max_rooms));
                }
                if !member && max_size != 0 && self.config.shared_presence {
                    // Two servers may each see one place left: the shared place decides.
                    self.check_in_flight(session, frame.id())?;
                    let room = self.hub.room_key(&req.room);
                    let kind = PendingKind::RoomJoin {
                        room: room.clone(),
                        node_id: node.clone(),
                        data: req.data,
                    };
                    let key = self.register(session, frame.id().cloned(), kind);
                    self.events.push_back(ServerEvent::RoomJoin {
                        request: RoomJoinId(key),
                        session,
                        node_id: node.to_string(),
                        room: room.to_string(),
                        max_size,
                    });
                    return Ok(());
                }
                let room = self.hub.room_key(&req.room);
                self.join_room(session, &node, room, req.data, member);
            }
            RoomAction::Leave => {
                if !member {
                    return Err(Refusal::NotAMember(req.room));
                }
                if let Some(s) = self.sessions.get_mut(session) {
                    s.rooms.retain(|r| **r != *req.room);
                }
                self.room_leave(&req.room, session, &node);
            }
            RoomAction::Broadcast => {
                if !member {
                    return Err(Refusal::NotAMember(req.room));
                }
                self.share_room(session, &node, &req.room, || RoomChange::Message {
                    data: req.data.clone(),
                });
                let message = RoomEvent {
                    event: RoomEventKind::Message,
                    room: req.room.clone(),
                    node_id: Some(node.to_string()),
                    data: req.data,
                    members: None,
                };
                self.room_send_others(&req.room, session, frame_of(&message));
            }
        }
        self.ack(session, frame.id());
        Ok(())
    }

    /// Removes a session from a room and tells the rest.
    pub(super) fn room_leave(&mut self, room: &str, session: SessionId, node: &Arc<str>) {
        if !self.hub.leave_room(room, &MemberKey::Local(session)) {
            return;
        }
        self.share_room(session, node, room, || RoomChange::Left);
        let left = RoomEvent {
            event: RoomEventKind::Leave,
            room: room.to_owned(),
            node_id: Some(node.to_string()),
            data: None,
            members: None,
        };
        self.room_send_others(room, session, frame_of(&left));
    }

    /// Reports a room change of a session of this server, for the other servers, when
    /// shared.
    /// Makes `session` a member of `room` (again, with new data, when `member`): the joiner
    /// gets the member list, the others a `join`.
    pub(super) fn join_room(
        &mut self,
        session: SessionId,
        node: &Arc<str>,
        room: Arc<str>,
        data: Option<RawJson>,
        member: bool,
    ) {
        let entry = Member {
            node_id: node.clone(),
            data: data.clone(),
        };
        self.hub.join_room(&room, MemberKey::Local(session), entry);
        self.share_room(session, node, &room, || RoomChange::Joined {
            data: data.clone(),
        });
        if !member {
            if let Some(s) = self.sessions.get_mut(session) {
                s.rooms.push(room.clone());
                // Seen under its id: it keeps it.
                s.unbound = false;
            }
        }
        let members = self
            .hub
            .room(&room)
            .into_iter()
            .flatten()
            .map(|(_, m)| RoomMember {
                node_id: m.node_id.to_string(),
                data: m.data.clone(),
            })
            .collect();
        let to_joiner = RoomEvent {
            event: RoomEventKind::Members,
            room: room.to_string(),
            node_id: None,
            data: None,
            members: Some(members),
        };
        self.send(session, frame_of(&to_joiner));
        if !member {
            let joined = RoomEvent {
                event: RoomEventKind::Join,
                room: room.to_string(),
                node_id: Some(node.to_string()),
                data,
                members: None,
            };
            self.room_send_others(&room, session, frame_of(&joined));
        }
    }

    fn share_room(
        &mut self,
        session: SessionId,
        node: &Arc<str>,
        room: &str,
        change: impl FnOnce() -> RoomChange,
    ) {
        if self.config.shared_presence {
            self.events.push_back(ServerEvent::RoomChanged {
                session,
                node_id: node.to_string(),
                room: room.to_owned(),
                change: change(),
            });
        }
    }

    pub(super) fn room_send_others(&mut self, room: &str, except: SessionId, bytes: bytes::Bytes) {
        let others: Vec<SessionId> = self
            .room_members(room)
            .into_iter()
            .filter(|m| *m != except)
            .collect();
        for other in others {
            self.send(other, bytes.clone());
        }
    }

    fn node_of(&self, session: SessionId) -> String {
        self.sessions
            .get(session)
            .map(|s| s.node_id.to_string())
            .unwrap_or_default()
    }
}

pub(super) fn frame_of(event: &RoomEvent) -> bytes::Bytes {
    out::frame(MessageType::Room, None, event)
}

/// Where a pull or subscribe starts, and the cursor to hand the application. A cursor is
/// opaque to clients: one that does not parse is one no store of ours can serve, so it is
/// dropped here and the answer says `recovered: false`, never an error (docs/protocol.md section
/// 5).
fn resume_point(since: bool, cursor: Option<&str>) -> (Resume, Option<Cursor>) {
    match cursor.map(str::parse::<Cursor>) {
        Some(Ok(cursor)) => (Resume::Cursor, Some(cursor)),
        Some(Err(_)) => (Resume::Unservable, None),
        None if since => (Resume::Since, None),
        None => (Resume::Head, None),
    }
}

fn dedup_in_order(tables: &mut Vec<String>) {
    let mut seen = std::collections::BTreeSet::new();
    tables.retain(|t| seen.insert(t.clone()));
}

/// A filter that restricts something, boxed (most requests have none).
fn restricting(filter: Option<SyncFilter>) -> Option<Box<SyncFilter>> {
    filter
        .filter(|f| !f.pk_filter.is_empty() || !f.field_filter.is_empty())
        .map(Box::new)
}
