//! Frames from the server: correlation, routing, keepalive answers (docs/protocol.md section 4).

use bytes::Bytes;
use serde_json::value::RawValue;

use super::event::{ClientEvent, ClientState, ClientTransmit, RequestId, Response};
use super::requests::{Kind, Owner, Pending, Status};
use super::timer::Timer;
use super::{Client, RequestError};
use crate::payload::{
    ChangeRecord, ErrorPayload, Hlc, PresenceEvent, PresenceSnapshot, PullResponse, PushResponse,
    RawJson, ResumeAck, RoomEvent,
};
use crate::time::Instant;
use crate::wire::{CloseCode, DecodeError, ErrorCode, Frame, MessageType};

impl Client {
    /// A text frame arrived. Any frame, even one that cannot be read, proves the connection
    /// alive. Ignored unless open.
    pub fn handle_message(&mut self, now: Instant, bytes: Bytes) {
        let now = self.clamp(now);
        if self.state != ClientState::Open {
            return;
        }
        self.timers.stop(Timer::Pong);
        match Frame::decode(bytes, &self.config.decode_limits) {
            Ok(frame) => self.dispatch(now, frame),
            Err(err) => self.undecodable(now, &err),
        }
    }

    /// A binary frame of `len` bytes arrived: the protocol carries text only, so it is
    /// reported as an [`ClientEvent::Error`] (`INVALID_FRAME`); it still proves the
    /// connection alive.
    pub fn handle_binary(&mut self, now: Instant, len: usize) {
        let now = self.clamp(now);
        if self.state != ClientState::Open {
            return;
        }
        self.timers.stop(Timer::Pong);
        let err = DecodeError::binary();
        let event = ClientEvent::Error {
            code: err.code(),
            message: format!("{err} ({len} bytes)"),
        };
        self.data_event(now, event);
    }

    fn undecodable(&mut self, now: Instant, err: &DecodeError) {
        // A broken answer to a request still ends that request, at once.
        if let Some(id) = err.id().and_then(|id| self.sent_request(id.as_str())) {
            let pending = self
                .requests
                .remove(id)
                .expect("invariant: sent_request found it");
            let message = err.to_string();
            self.complete(id, pending, Err(RequestError::InvalidResponse { message }));
            return;
        }
        let event = ClientEvent::Error {
            code: err.code(),
            message: err.to_string(),
        };
        self.data_event(now, event);
    }

    fn dispatch(&mut self, now: Instant, frame: Frame) {
        match frame.kind() {
            MessageType::Ping => self.answer_ping(&frame),
            MessageType::Change | MessageType::Changes => self.route(now, &frame),
            MessageType::PresenceEvent => match frame.payload::<PresenceEvent>() {
                Ok(event) => self.data_event(now, ClientEvent::Presence(event)),
                Err(err) => self.data_event(now, invalid_payload(&frame, err.message())),
            },
            MessageType::Room => match frame.payload::<RoomEvent>() {
                Ok(event) => self.data_event(now, ClientEvent::Room(event)),
                Err(err) => self.data_event(now, invalid_payload(&frame, err.message())),
            },
            MessageType::Error => self.error_frame(now, &frame),
            MessageType::PullResponse
            | MessageType::PushResponse
            | MessageType::PresenceSnapshot
            | MessageType::Ack
            | MessageType::Pong => self.reply(&frame),
            // Requests are for servers; a client has nothing to answer them with.
            MessageType::PullRequest
            | MessageType::PushRequest
            | MessageType::Subscribe
            | MessageType::Unsubscribe
            | MessageType::PresenceUpdate
            | MessageType::PresenceGet => {}
        }
    }

    /// The id of a request that was sent on this connection and waits for its answer.
    fn sent_request(&self, wire_id: &str) -> Option<u64> {
        let id = parse_wire_id(wire_id)?;
        let pending = self.requests.get(id)?;
        (pending.status == Status::Sent).then_some(id)
    }

    fn reply(&mut self, frame: &Frame) {
        let Some(wire_id) = frame.id() else { return };
        if frame.kind() == MessageType::Pong
            && self.keepalive.is_some()
            && self.keepalive == parse_wire_id(wire_id.as_str())
        {
            self.keepalive = None;
            self.healthy();
            return;
        }
        let Some(id) = self.sent_request(wire_id.as_str()) else {
            return; // unknown or finished: ignored
        };
        let pending = self
            .requests
            .remove(id)
            .expect("invariant: sent_request found it");
        let outcome = typed_reply(pending.kind, frame);
        if outcome.is_ok() {
            self.healthy();
        }
        self.complete(id, pending, outcome);
    }

    fn error_frame(&mut self, now: Instant, frame: &Frame) {
        let ErrorPayload { code, message } = frame.payload().unwrap_or_else(|err| ErrorPayload {
            code: ErrorCode::InvalidPayload,
            message: format!("unreadable error frame: {}", err.message()),
        });
        match frame.id() {
            Some(wire_id) => {
                // An error for a request we no longer wait for is ignored like any late reply.
                if let Some(id) = self.sent_request(wire_id.as_str()) {
                    let pending = self
                        .requests
                        .remove(id)
                        .expect("invariant: sent_request found it");
                    self.complete(id, pending, Err(RequestError::Server { code, message }));
                }
            }
            None => self.data_event(now, ClientEvent::Error { code, message }),
        }
    }

    /// A pong echoes the ping's id, under the same key, and its payload.
    fn answer_ping(&mut self, frame: &Frame) {
        // The server's liveness check counts any frame, so with the queue full an unanswered
        // ping costs nothing; answering would grow the queue without bound.
        if self.transmits.len() >= self.config.max_queued_transmits {
            return;
        }
        // From text, as every other parse of the client: one reader of serde_json's (not a
        // second, for bytes) in the browser client's `.wasm`.
        let text = core::str::from_utf8(frame.raw_payload()).ok();
        let Some(payload) = text.and_then(|t| serde_json::from_str::<&RawValue>(t).ok()) else {
            return; // unreachable for a decoded frame; nothing sensible to echo otherwise
        };
        if let Ok(pong) = Frame::encode(MessageType::Pong, frame.id(), payload) {
            self.transmits.push_back(ClientTransmit::Frame(pong));
        }
    }

    /// Live changes: tagged with the subscriptions that asked for their tables.
    fn route(&mut self, now: Instant, frame: &Frame) {
        let records = if frame.kind() == MessageType::Change {
            frame.payload::<ChangeRecord>().map(|r| vec![r])
        } else {
            frame.payload::<Vec<ChangeRecord>>()
        };
        let changes = match records {
            Ok(changes) => changes,
            Err(err) => return self.data_event(now, invalid_payload(frame, err.message())),
        };
        // Check room first: changes not delivered must not move the resume point.
        if !self.has_event_room(now) {
            return;
        }
        // The newest HLC of each table in the batch first, so the tracker clones one HLC per
        // table rather than one per record (a batch usually holds a few tables).
        let mut newest: Vec<(&str, &Hlc)> = Vec::new();
        for record in &changes {
            match newest.iter_mut().find(|(table, _)| *table == record.table) {
                Some((_, hlc)) => *hlc = (*hlc).max(&record.hlc),
                None => newest.push((&record.table, &record.hlc)),
            }
        }
        let cursor = frame.cursor().map(str::to_owned);
        let mut subscriptions: Vec<RequestId> = Vec::new();
        for (table, hlc) in newest {
            if let Some(cursor) = &cursor {
                self.tracked.observe_table_change(table, cursor);
            }
            // Kept sorted and unique as it grows: a batch names a few tables, and a sort would
            // put a whole sorting routine (some 5 KB) in the browser client's `.wasm`.
            if let Some(subscribed) = self.tracked.tables.get(table) {
                if let Err(at) = subscriptions.binary_search(&subscribed.by) {
                    subscriptions.insert(at, subscribed.by);
                }
            }
            self.tracked.observe_hlc(table, hlc);
        }
        // While a replay may still be on its way, the stream is not in one order for every
        // table (docs/protocol.md section 5): its position moves on only between replays.
        if let (Some(cursor), false) = (&cursor, self.requests.resuming()) {
            self.tracked.observe_cursor(cursor);
        }
        self.events.push_back(ClientEvent::Changes {
            subscriptions,
            changes,
            cursor: cursor.and_then(|c| c.parse().ok()),
        });
    }

    /// Queues data from the server, unless the application is not keeping up.
    fn data_event(&mut self, now: Instant, event: ClientEvent) {
        if self.has_event_room(now) {
            self.events.push_back(event);
        }
    }

    /// Whether one more data event fits. When it does not, the client drops the connection
    /// as a slow consumer (4503): it reconnects after a backoff and resumes from the last
    /// position it delivered, so the application loses nothing (docs/protocol.md section 10 does
    /// the same on the server side).
    fn has_event_room(&mut self, now: Instant) -> bool {
        if self.events.len() < self.config.max_queued_events {
            return true;
        }
        self.drop_connection(now, CloseCode::SLOW_CONSUMER, "event queue full");
        false
    }

    fn healthy(&mut self) {
        self.backoff.reset();
        self.timers.stop(Timer::Healthy);
    }

    /// Ends a request: an event for the application's, bookkeeping for the client's own.
    pub(super) fn complete(
        &mut self,
        id: u64,
        pending: Pending,
        outcome: Result<Response, RequestError>,
    ) {
        let request = RequestId(id);
        if !pending.waiters.is_empty() {
            self.restore_answered(pending.waiters.clone(), &outcome);
        }
        match &outcome {
            Ok(Response::Pull(pull)) => {
                for record in &pull.changes {
                    self.tracked.observe_hlc(&record.table, &record.hlc);
                }
            }
            // A pull or push response's cursor is the store's head, which may be ahead of
            // what has been routed to this session (pushes still being answered): it is the
            // application's to use (`pull_after`), never a stream position.
            //
            // A resume ack's head only covers the replayed tables: live changes of the others that
            // were held behind the replay may still follow, so the stream position stays.
            Ok(Response::Ack(ack)) if pending.kind == Kind::Subscribe => {
                let head = ack.as_ref().map(|a| a.cursor.to_string());
                self.tracked.settle(&pending.tables, head.as_deref());
            }
            Err(RequestError::Server { .. }) if pending.kind.reply() == MessageType::Ack => {
                // Refused: what it would have established does not exist on the server.
                self.tracked.roll_back(request);
            }
            _ => {}
        }
        match pending.owner {
            Owner::App => self.events.push_back(ClientEvent::Response {
                id: request,
                outcome,
            }),
            Owner::RestoreTables(tables) => match outcome {
                Ok(Response::Ack(Some(ResumeAck {
                    recovered: false, ..
                }))) => {
                    self.events.push_back(ClientEvent::ResyncNeeded { tables });
                }
                Err(RequestError::Server { code, message }) => {
                    for table in &tables {
                        self.tracked.tables.remove(table);
                    }
                    let message =
                        format!("restoring the subscription to {tables:?} failed: {message}");
                    self.events.push_back(ClientEvent::Error { code, message });
                }
                _ => {}
            },
            Owner::RestoreOther(name) => {
                if let Err(RequestError::Server { code, message }) = outcome {
                    if pending.kind == Kind::Room {
                        self.tracked.rooms.remove(&name);
                    } else {
                        self.tracked.topics.remove(&name);
                    }
                    let message = format!("restoring {name:?} failed: {message}");
                    self.events.push_back(ClientEvent::Error { code, message });
                }
            }
        }
    }
}

/// Our ids are decimal numbers from 1, written without leading zeros; any other string
/// (`"01"`, `"+1"`, `"x1"`) is not one of ours.
fn parse_wire_id(wire_id: &str) -> Option<u64> {
    let digits = wire_id.bytes().all(|b| b.is_ascii_digit());
    if !digits || wire_id.is_empty() || wire_id.starts_with('0') {
        return None;
    }
    wire_id.parse().ok()
}

/// Reads a reply as the type its request expects.
fn typed_reply(kind: Kind, frame: &Frame) -> Result<Response, RequestError> {
    let expected = kind.reply();
    if frame.kind() != expected {
        return Err(RequestError::InvalidResponse {
            message: format!("expected {expected}, got {}", frame.kind()),
        });
    }
    let invalid = |err: crate::wire::PayloadError| RequestError::InvalidResponse {
        message: err.message().to_owned(),
    };
    Ok(match expected {
        MessageType::PullResponse => {
            Response::Pull(frame.payload::<PullResponse>().map_err(invalid)?)
        }
        MessageType::PushResponse => {
            Response::Push(frame.payload::<PushResponse>().map_err(invalid)?)
        }
        MessageType::PresenceSnapshot => {
            Response::PresenceSnapshot(frame.payload::<PresenceSnapshot>().map_err(invalid)?)
        }
        MessageType::Pong => Response::Pong(frame.payload::<RawJson>().map_err(invalid)?),
        // Lenient: an ack's payload matters only for a resume; a seed server may put
        // anything else there.
        _ => Response::Ack(frame.payload::<Option<ResumeAck>>().unwrap_or(None)),
    })
}

fn invalid_payload(frame: &Frame, message: &str) -> ClientEvent {
    ClientEvent::Error {
        code: ErrorCode::InvalidPayload,
        message: format!("{}: {message}", frame.kind()),
    }
}
