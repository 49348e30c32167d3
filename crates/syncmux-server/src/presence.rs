//! Grove's presence over HTTP: `POST /sync/presence` `{"node_id","topic","data"}` (`data:
//! null` leaves) answered with the presence event it made, and `GET /sync/presence?topic=`
//! answered with the topic's snapshot.
//!
//! Presence belongs to a session, and an HTTP request is over at once: a node's POSTs go
//! through one session of its own, a [`Holder`], kept while it lives. The server's rules
//! then apply unchanged: the node leaves a topic after the presence TTL without a POST (any
//! POST refreshes it, as Grove's client's heartbeat does), and the holder ends after the
//! idle timeout without one (it answers no pings), leaving every topic. A Grove stream
//! opened with `node_id` ends its node's holders when it ends ([`Holders::leave`]), as
//! Grove's server removes the node.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};
use serde_json::value::RawValue;
use syncmux::wire::{DecodeLimits, ErrorCode, Frame, MessageType};
use syncmux::Handshake;
use syncmux_runtime::{self as adapters, SyncServer};
use tokio::sync::oneshot;

use crate::http::{self, Failure};

/// Grove's presence.
pub(crate) const PRESENCE_PATH: &str = "/sync/presence";

/// How long a POST waits for its update's answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// The presence sessions of the nodes that update presence over HTTP, by node id and the
/// token their POSTs carry (a POST with another token gets a session of its own, decided by
/// its own handshake, so no request rides on another's credentials).
#[derive(Clone, Default)]
pub(crate) struct Holders(Arc<Mutex<HashMap<Key, Arc<Holder>>>>);

/// A holder's node id and token.
type Key = (String, Option<String>);

/// One node's presence session.
pub(crate) struct Holder {
    inbox: async_channel::Sender<Bytes>,
    /// The POSTs waiting for their answer, by frame id.
    waiting: Mutex<HashMap<String, oneshot::Sender<Frame>>>,
    /// The topics it joined: whether an update is a join.
    topics: Mutex<HashSet<String>>,
    next: AtomicU64,
    /// Dropped with the holder: its task then ends the session.
    _stop: oneshot::Sender<()>,
}

impl Holders {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Arc<Holder>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Ends the presence sessions of `node` (its Grove stream ended): it leaves its topics.
    fn leave(&self, node: &str) {
        self.lock().retain(|(holder, _), _| holder != node);
    }

    /// Makes `node` leave its presence when the guard is dropped (its Grove stream ends).
    pub(crate) fn leave_on_drop(&self, node: String) -> Leave {
        Leave {
            holders: self.clone(),
            node,
        }
    }

    /// The holder for `key`, opened with `handshake` if there is none.
    fn get_or_open(
        &self,
        server: &SyncServer,
        key: Key,
        handshake: &Handshake,
    ) -> Result<Arc<Holder>, Failure> {
        let mut holders = self.lock();
        if let Some(holder) = holders.get(&key).filter(|h| !h.inbox.is_closed()) {
            return Ok(holder.clone());
        }
        let session = server.handshake(handshake).map_err(Failure::refused)?;
        let mut frames = adapters::Tokio::frames(session);
        let (stop_tx, mut stop) = oneshot::channel::<()>();
        let holder = Arc::new(Holder {
            inbox: frames.inbox(),
            waiting: Mutex::new(HashMap::new()),
            topics: Mutex::new(HashSet::new()),
            next: AtomicU64::new(0),
            _stop: stop_tx,
        });
        holders.insert(key.clone(), holder.clone());
        let (weak, this) = (Arc::downgrade(&holder), self.clone());
        tokio::spawn(async move {
            loop {
                let bytes = tokio::select! {
                    bytes = frames.next() => bytes,
                    _ = &mut stop => None,
                };
                let Some(bytes) = bytes else { break };
                let Some(holder) = weak.upgrade() else { break };
                let Ok(frame) = syncmux::wire::Frame::decode(bytes, &DecodeLimits::default())
                else {
                    continue;
                };
                let id = frame.id().map(|id| id.as_str().to_owned());
                if let Some(reply) = id.and_then(|id| lock(&holder.waiting).remove(&id)) {
                    let _ = reply.send(frame);
                }
            }
            // The session ended (idle, or the server closed it): the next POST opens another.
            let mut holders = this.lock();
            if holders.get(&key).is_some_and(|h| h.inbox.is_closed()) {
                holders.remove(&key);
            }
        });
        Ok(holder)
    }
}

/// Held by a Grove stream opened with `node_id`: its node leaves its presence when it ends.
pub(crate) struct Leave {
    holders: Holders,
    node: String,
}

impl Drop for Leave {
    fn drop(&mut self) {
        self.holders.leave(&self.node);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Answers a request for [`PRESENCE_PATH`]: the status and the JSON body.
pub(crate) async fn answer(
    server: &SyncServer,
    holders: &Holders,
    req: Request<Incoming>,
) -> Result<(StatusCode, Bytes), Failure> {
    if req.method() == Method::GET {
        let query = req.uri().query().unwrap_or("");
        let topic = form_urlencoded::parse(query.as_bytes()).find(|(name, _)| name == "topic");
        let Some((_, topic)) = topic.filter(|(_, topic)| !topic.is_empty()) else {
            return Err(invalid("name the topic: ?topic="));
        };
        let payload = serde_json::json!({ "topic": topic }).to_string();
        let handshake = http::handshake(&req);
        let kind = MessageType::PresenceGet;
        let snapshot = http::exchange_frame(server, &handshake, kind, &payload).await?;
        return Ok((StatusCode::OK, snapshot));
    }
    if req.method() != Method::POST {
        let message = format!("{PRESENCE_PATH} takes GET and POST");
        let status = StatusCode::METHOD_NOT_ALLOWED;
        return Err(Failure::new(status, "METHOD_NOT_ALLOWED", message));
    }
    let mut handshake = http::handshake(&req);
    let body = http::body(server, req).await?;
    #[derive(serde::Deserialize)]
    struct Update<'a> {
        #[serde(default)]
        node_id: Option<String>,
        topic: String,
        #[serde(borrow)]
        data: &'a RawValue,
    }
    let update: Update<'_> = serde_json::from_slice(&body)
        .map_err(|e| invalid(&format!("the body is not a presence update: {e}")))?;
    let node = match handshake.requested_node_id() {
        Some(node) => node.into_owned(),
        None => {
            let node = update.node_id.clone().filter(|n| !n.is_empty());
            let node = node.ok_or_else(|| invalid("name the node: node_id"))?;
            let encoded: String = form_urlencoded::byte_serialize(node.as_bytes()).collect();
            let and = if handshake.query.is_empty() { "" } else { "&" };
            handshake.query = format!("{}{and}node_id={encoded}", handshake.query);
            node
        }
    };
    let key = (node.clone(), handshake.token().map(|t| t.into_owned()));
    let holder = holders.get_or_open(server, key, &handshake)?;
    let id = format!("p{}", holder.next.fetch_add(1, Ordering::Relaxed));
    let (reply, answer) = oneshot::channel();
    lock(&holder.waiting).insert(id.clone(), reply);
    let payload = format!(
        r#"{{"topic":{},"data":{}}}"#,
        serde_json::Value::from(update.topic.as_str()),
        update.data.get()
    );
    let frame = format!(r#"{{"type":"presence_update","id":"{id}","payload":{payload}}}"#);
    let unavailable = || {
        let message = "the node's presence session ended (the server may be shutting down)";
        Failure::new(StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE", message)
    };
    holder
        .inbox
        .send(Bytes::from(frame))
        .await
        .map_err(|_| unavailable())?;
    let reply = tokio::time::timeout(ANSWER_TIMEOUT, answer).await;
    let reply = reply
        .map_err(|_| unavailable())?
        .map_err(|_| unavailable())?;
    if reply.kind() == MessageType::Error {
        return Err(Failure::of_error(&reply));
    }
    let leaves = update.data.get() == "null";
    let kind = {
        let mut topics = lock(&holder.topics);
        if leaves {
            topics.remove(&update.topic);
            "leave"
        } else if topics.insert(update.topic.clone()) {
            "join"
        } else {
            "update"
        }
    };
    let (node, topic) = (
        serde_json::Value::from(node),
        serde_json::Value::from(update.topic),
    );
    let data = match leaves {
        true => String::new(),
        false => format!(r#","data":{}"#, update.data.get()),
    };
    let event = format!(r#"{{"type":"{kind}","node_id":{node},"topic":{topic}{data}}}"#);
    Ok((StatusCode::OK, Bytes::from(event)))
}

fn invalid(message: &str) -> Failure {
    Failure::new(
        StatusCode::BAD_REQUEST,
        ErrorCode::InvalidPayload.as_str(),
        message,
    )
}
