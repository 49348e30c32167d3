//! Presence and rooms shared by several servers (README, "Scaling out over Redis"): what the other
//! servers report of their sessions. A server keeps their members beside its own, so a snapshot, a
//! room's member list and its size (`ROOM_FULL`) are the union over servers, and it tells its
//! own members what the others' did, as if they were local.

use std::sync::Arc;

use super::event::{AppError, RemoteSession, RoomChange, RoomJoinId, ServerEvent};
use super::hub::{Member, MemberKey, Presence};
use super::out::{self, Refusal};
use super::requests::frame_of;
use super::{PendingKind, Server};
use crate::payload::{PresenceEvent, PresenceEventKind, RawJson, RoomEvent, RoomEventKind};
use crate::time::Instant;
use crate::wire::MessageType;

impl Server {
    /// Answers a [`ServerEvent::RoomJoin`](super::ServerEvent::RoomJoin): `Ok(true)` when the
    /// place the servers share admitted the session (the join takes effect as any other:
    /// the member list to the joiner, a `join` to the others, the ack), `Ok(false)` when the
    /// room is full there (`ROOM_FULL`); an error becomes an `error` frame. If the session
    /// ended meanwhile, an admitted join is given back: a
    /// [`ServerEvent::RoomChanged`](super::ServerEvent::RoomChanged) `Left` for it.
    pub fn answer_room_join(
        &mut self,
        now: Instant,
        request: RoomJoinId,
        answer: Result<bool, AppError>,
    ) {
        self.clamp(now);
        let Some(pending) =
            self.take_pending(request.0, |k| matches!(k, PendingKind::RoomJoin { .. }))
        else {
            return;
        };
        let PendingKind::RoomJoin {
            room,
            node_id,
            data,
        } = pending.kind
        else {
            return;
        };
        let session = pending.session;
        let Some(s) = self.sessions.open_mut(session) else {
            if answer == Ok(true) {
                self.events.push_back(ServerEvent::RoomChanged {
                    session,
                    node_id: node_id.to_string(),
                    room: room.to_string(),
                    change: RoomChange::Left,
                });
            }
            return;
        };
        let member = s.rooms.contains(&room);
        match answer {
            Ok(true) => {
                self.join_room(session, &node_id, room, data, member);
                self.ack(session, pending.id.as_ref());
            }
            Ok(false) => {
                let refusal = Refusal::RoomFull(room.to_string());
                let bytes =
                    out::error_frame(pending.id.as_ref(), refusal.code(), refusal.to_string());
                self.send(session, bytes);
            }
            Err(e) => {
                let bytes = out::error_frame(pending.id.as_ref(), e.code().clone(), e.message);
                self.send(session, bytes);
            }
        }
        self.settle();
    }

    /// A session of another server joined, updated (`data: Some`) or left (`data: None`) a
    /// presence topic, as that server reported it
    /// ([`ServerEvent::PresenceChanged`](super::ServerEvent::PresenceChanged)): this
    /// server's members of the topic get the `presence_event`, and its snapshots include the
    /// session. A leave of a session that is not a member is a no-op.
    pub fn handle_remote_presence(
        &mut self,
        now: Instant,
        from: RemoteSession,
        node_id: &str,
        topic: &str,
        data: Option<RawJson>,
        updated_at: u64,
    ) {
        self.clamp(now);
        let key = MemberKey::Remote(from);
        let kind = match data.filter(|d| !d.is_null()) {
            None => {
                if !self.hub.leave_topic(topic, &key) {
                    return;
                }
                (PresenceEventKind::Leave, None)
            }
            Some(data) => {
                let name = self.hub.topic_key(topic);
                let entry = Presence {
                    node_id: Arc::from(node_id),
                    data: data.clone(),
                    updated_at,
                };
                let joined = self.hub.set_presence(&name, key, entry);
                let kind = match joined {
                    true => PresenceEventKind::Join,
                    false => PresenceEventKind::Update,
                };
                (kind, Some(data))
            }
        };
        let event = PresenceEvent {
            kind: kind.0,
            node_id: node_id.to_owned(),
            topic: topic.to_owned(),
            data: kind.1,
        };
        let bytes = out::frame(MessageType::PresenceEvent, None, &event);
        for member in self.presence_members(topic) {
            self.send(member, bytes.clone());
        }
        self.settle();
    }

    /// A session of another server joined, left or broadcast to a room, as that server
    /// reported it ([`ServerEvent::RoomChanged`](super::ServerEvent::RoomChanged)): this
    /// server's members of the room get the `room` event, and its member lists and room
    /// sizes count the session. That server had the join admitted where the servers share
    /// the room's size ([`ServerEvent::RoomJoin`](super::ServerEvent::RoomJoin)).
    pub fn handle_remote_room(
        &mut self,
        now: Instant,
        from: RemoteSession,
        node_id: &str,
        room: &str,
        change: RoomChange,
    ) {
        self.clamp(now);
        let key = MemberKey::Remote(from);
        let (event, data) = match change {
            RoomChange::Joined { data } => {
                let name = self.hub.room_key(room);
                let member = Member {
                    node_id: Arc::from(node_id),
                    data: data.clone(),
                };
                if !self.hub.join_room(&name, key, member) {
                    // Joined again, with new data: members hear of it only from a list.
                    return;
                }
                (RoomEventKind::Join, data)
            }
            RoomChange::Left => {
                if !self.hub.leave_room(room, &key) {
                    return;
                }
                (RoomEventKind::Leave, None)
            }
            RoomChange::Message { data } => (RoomEventKind::Message, data),
        };
        let event = RoomEvent {
            event,
            room: room.to_owned(),
            node_id: Some(node_id.to_owned()),
            data,
            members: None,
        };
        let bytes = frame_of(&event);
        for member in self.room_members(room) {
            self.send(member, bytes.clone());
        }
        self.settle();
    }

    /// Another server is gone (it stopped, or stopped reporting): each of its sessions
    /// leaves every presence topic and room it was in, and this server's members hear it.
    pub fn handle_remote_gone(&mut self, now: Instant, server: &str) {
        self.clamp(now);
        let (topics, rooms) = self.hub.remote_of(server);
        for (topic, from) in topics {
            let node = self.remote_node(&topic, &from, true);
            self.handle_remote_presence(now, from, &node, &topic, None, 0);
        }
        for (room, from) in rooms {
            let node = self.remote_node(&room, &from, false);
            self.handle_remote_room(now, from, &node, &room, RoomChange::Left);
        }
    }

    /// The node id a remote member of a topic (or room) joined with.
    fn remote_node(&self, name: &str, from: &RemoteSession, topic: bool) -> String {
        let key = MemberKey::Remote(from.clone());
        let node = match topic {
            true => self
                .hub
                .topic(name)
                .and_then(|m| m.get(&key))
                .map(|p| &p.node_id),
            false => self
                .hub
                .room(name)
                .and_then(|m| m.get(&key))
                .map(|m| &m.node_id),
        };
        node.map(|n| n.to_string()).unwrap_or_default()
    }

    /// Everything this server's sessions are in, as the events that report it: a
    /// [`PresenceChanged`](super::ServerEvent::PresenceChanged) per presence and a
    /// [`RoomChanged`](super::ServerEvent::RoomChanged) join per room membership, by topic
    /// or room name, then session. For announcing again what the other servers lost (a
    /// shared store that lost its data, or that took this server for dead).
    pub fn shared_state(&self) -> Vec<super::ServerEvent> {
        let mut out = Vec::new();
        for (topic, members) in self.hub.topics() {
            for (key, p) in members {
                if let Some(session) = key.local() {
                    out.push((
                        topic.to_string(),
                        session,
                        super::ServerEvent::PresenceChanged {
                            session,
                            node_id: p.node_id.to_string(),
                            topic: topic.to_string(),
                            data: Some(p.data.clone()),
                            updated_at: p.updated_at,
                        },
                    ));
                }
            }
        }
        let presence = out.len();
        for (room, members) in self.hub.rooms() {
            for (key, m) in members {
                if let Some(session) = key.local() {
                    out.push((
                        room.to_string(),
                        session,
                        super::ServerEvent::RoomChanged {
                            session,
                            node_id: m.node_id.to_string(),
                            room: room.to_string(),
                            change: RoomChange::Joined {
                                data: m.data.clone(),
                            },
                        },
                    ));
                }
            }
        }
        out[..presence].sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        out[presence..].sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        out.into_iter().map(|(_, _, e)| e).collect()
    }
}
