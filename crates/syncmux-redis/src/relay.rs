//! Requests for a session another server holds, relayed through Redis: what lets a `POST
//! /sync/send` reach any server sharing the Redis, with no sticky sessions.
//!
//! Each server has a node id and two channels, `{PREFIX}:relay:NODE` (requests for its
//! sessions) and `{PREFIX}:reply:NODE` (the answers to its own requests). A request names
//! the session and carries the body; the holder hands it to its application ([`Deliver`])
//! and answers whether the session took it, and what it answered, so the sender can answer
//! its POST as if it held the session (`202`, or `404` for a session that is not there). The requests of one sender
//! leave on one connection, in order, and each waits for its answer, so the frames of one
//! client's sequential POSTs arrive in order, once each.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::conn::Conn;
use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use syncmux_runtime::Clock;

use crate::RedisBackendError;

/// How long a relayed request waits for the holder's answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// The application's side of the relay on the holder: hands `body` to session `session`,
/// in the order the requests came, and resolves to the future of its answer (awaited apart,
/// so that a slow answer holds up no other request), or to `None` when there is no such
/// session.
pub type Deliver =
    Arc<dyn Fn(String, String) -> BoxFuture<'static, Option<Answering>> + Send + Sync>;

/// The answer to a delivered request, once the session gave it (an OT op's ack, say; empty
/// when there is nothing to say beyond its delivery).
pub type Answering = BoxFuture<'static, String>;

/// A server's relay: forwards requests to the servers holding their sessions, and delivers
/// the requests others forward to its own. Cheap to clone.
#[derive(Clone)]
pub struct Relay {
    inner: Arc<Inner>,
}

struct Inner {
    node: String,
    prefix: String,
    conn: Conn,
    /// This server's requests waiting for their answer, by id.
    waiting: Mutex<HashMap<u64, futures_channel::oneshot::Sender<Option<String>>>>,
    next: AtomicU64,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("node", &self.inner.node)
            .finish_non_exhaustive()
    }
}

/// Why a relayed request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    /// Redis could not take the request.
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// The holder did not answer in time.
    #[error("the server holding the session did not answer")]
    Timeout,
}

/// A request on the wire.
#[derive(Serialize, Deserialize)]
struct Request {
    /// The sender's node, where the answer goes.
    from: String,
    id: u64,
    session: String,
    body: String,
}

/// An answer on the wire.
#[derive(Serialize, Deserialize)]
struct Answer {
    id: u64,
    /// `None`: no such session.
    answer: Option<String>,
}

impl Relay {
    /// Connects to the Redis at `url` under `prefix` (the `--redis-prefix`), with a fresh node
    /// id, and starts delivering the requests for this server's sessions to `deliver`. Its
    /// task runs until the relay and every clone of it are dropped.
    pub async fn connect(
        url: &str,
        prefix: &str,
        deliver: Deliver,
    ) -> Result<Relay, RedisBackendError> {
        let (target, conn) = crate::conn::open(url, Duration::from_secs(5)).await?;
        let relay = Relay {
            inner: Arc::new(Inner {
                node: format!("{:016x}", Clock::new().seed()),
                prefix: format!("{{{prefix}}}:"),
                conn,
                waiting: Mutex::new(HashMap::new()),
                next: AtomicU64::new(0),
            }),
        };
        let pubsub = match target.primary().await {
            Ok(client) => client.get_async_pubsub().await,
            Err(e) => Err(e),
        };
        let mut pubsub = pubsub.map_err(|source| RedisBackendError::Connect {
            url: url.to_owned(),
            source,
        })?;
        let (requests, answers) = (
            relay.channel("relay", relay.node()),
            relay.channel("reply", relay.node()),
        );
        pubsub
            .subscribe(&[requests.as_str(), answers.as_str()])
            .await
            .map_err(|source| RedisBackendError::Connect {
                url: url.to_owned(),
                source,
            })?;
        let weak = Arc::downgrade(&relay.inner);
        tokio::spawn(async move {
            let mut messages = pubsub.into_on_message();
            while let Some(message) = messages.next().await {
                let Some(inner) = weak.upgrade() else { return };
                let relay = Relay { inner };
                let payload = message.get_payload_bytes();
                if message.get_channel_name() == answers {
                    if let Ok(answer) = serde_json::from_slice::<Answer>(payload) {
                        let waiting = relay.inner.waiting.lock();
                        let reply = waiting
                            .unwrap_or_else(|e| e.into_inner())
                            .remove(&answer.id);
                        if let Some(reply) = reply {
                            let _ = reply.send(answer.answer);
                        }
                    }
                } else if let Ok(request) = serde_json::from_slice::<Request>(payload) {
                    // In order: the next request waits for this one's delivery (not for its
                    // answer).
                    let answering = deliver(request.session, request.body).await;
                    let to = relay.channel("reply", &request.from);
                    let id = request.id;
                    tokio::spawn(async move {
                        let answer = match answering {
                            Some(answering) => Some(answering.await),
                            None => None,
                        };
                        if let Err(e) = relay.publish(&to, &Answer { id, answer }).await {
                            tracing::warn!(error = %e, "a relayed request's answer was lost");
                        }
                    });
                }
            }
            tracing::warn!("the relay's subscription ended: sends to this server's SSE sessions from other servers fail");
        });
        Ok(relay)
    }

    /// This server's node id, which its session ids start with.
    pub fn node(&self) -> &str {
        &self.inner.node
    }

    fn channel(&self, kind: &str, node: &str) -> String {
        format!("{}{kind}:{node}", self.inner.prefix)
    }

    async fn publish<T: Serialize>(&self, channel: &str, message: &T) -> Result<u64, RelayError> {
        let payload = serde_json::to_vec(message).unwrap_or_default();
        let mut conn = self.inner.conn.clone();
        let receivers: u64 = redis::cmd("PUBLISH")
            .arg(channel)
            .arg(payload)
            .query_async(&mut conn)
            .await?;
        Ok(receivers)
    }

    /// Hands `body` to session `session`, held by server `node`: its answer
    /// ([`Answering`]), or `None` when there is no such session there, or no such server.
    pub async fn forward(
        &self,
        node: &str,
        session: &str,
        body: &str,
    ) -> Result<Option<String>, RelayError> {
        let id = self.inner.next.fetch_add(1, Ordering::Relaxed);
        let (reply, answer) = futures_channel::oneshot::channel();
        let waiting = &self.inner.waiting;
        waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, reply);
        let request = Request {
            from: self.inner.node.clone(),
            id,
            session: session.to_owned(),
            body: body.to_owned(),
        };
        let sent = self.publish(&self.channel("relay", node), &request).await;
        let forget = || {
            waiting
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
        };
        match sent {
            Err(e) => {
                forget();
                return Err(e);
            }
            // Nobody listens: no server with that node id.
            Ok(0) => {
                forget();
                return Ok(None);
            }
            Ok(_) => {}
        }
        match tokio::time::timeout(ANSWER_TIMEOUT, answer).await {
            Ok(Ok(answer)) => Ok(answer),
            _ => {
                forget();
                Err(RelayError::Timeout)
            }
        }
    }
}
