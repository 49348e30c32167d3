//! The OT client: one document, kept in step with an [`OtServer`](super::OtServer) (or
//! open-ot's) over one connection.
//!
//! The states are open-ot's — synchronized, awaiting an ack, awaiting with a buffer of
//! local edits — plus what the seed's client leaves out: it checks that every revision the
//! server gives is the next one, and when something is off (a gap, an error frame, an op
//! that does not apply, a new connection) it fetches the document again with a `snapshot`
//! request and rebases its unacknowledged edits on it. Its ops carry an `opId`, so an op
//! re-sent after a lost ack is never applied twice (see [`wire`](super::wire)).
//!
//! The client does not dial: the adapter (or application) connects, and reports it with
//! [`handle_connected`](OtClient::handle_connected) and
//! [`handle_disconnected`](OtClient::handle_disconnected).

use std::collections::VecDeque;

use bytes::Bytes;

use super::config::OtClientConfig;
use super::text::{OpError, Side, TextOp};
use super::wire::{ClientMessage, OpStatus, ServerMessage, DEFAULT_DOC_ID};
use crate::config::ConfigError;
use crate::time::Instant;

/// Where the client stands.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum OtClientState {
    /// No connection. Local edits are kept and sent once synchronized again.
    Disconnected,
    /// Connected, waiting for the document's snapshot (or for the delay before asking
    /// again).
    Fetching,
    /// In step with the server, nothing unacknowledged.
    Synchronized,
    /// One op sent, waiting for its ack.
    AwaitingAck,
    /// One op sent, and local edits made since waiting for its ack.
    AwaitingWithBuffer,
}

/// Why the client fetches the document again.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
#[non_exhaustive]
pub enum ResyncReason {
    /// A new connection: whatever happened meanwhile is unknown.
    Connected,
    /// The server gave a revision that is not the next one.
    RevisionGap {
        /// The revision expected.
        expected: u64,
        /// The revision given.
        got: u64,
    },
    /// The server refused a request (an error frame).
    Refused,
    /// An op from the server does not apply to the document.
    DoesNotApply,
    /// A frame that could not be read, or a reply nothing asked for.
    BadFrame,
}

/// Something the application should know. Drain with [`OtClient::poll_event`].
#[derive(Clone, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum OtClientEvent {
    /// The text changed by others' edits (or by a resync): `op` turns the previous
    /// [`text`](OtClient::text) into the new one. An editor applies it.
    Changed {
        /// The change.
        op: TextOp,
    },
    /// The server applied our op as `revision`.
    Acked {
        /// The revision.
        revision: u64,
    },
    /// The client is fetching the document again.
    Resyncing {
        /// Why.
        reason: ResyncReason,
    },
    /// A snapshot was loaded and the local edits rebased on it. `uncertain`: an op sent
    /// before may or may not have been applied (the server no longer keeps the history to
    /// tell), and was sent again — its text may appear twice.
    Resynced {
        /// The snapshot's revision.
        revision: u64,
        /// Whether an earlier op's fate was unknown.
        uncertain: bool,
    },
    /// The server sent an error frame.
    ServerError {
        /// Its message.
        message: String,
    },
    /// Events were not polled and `max_events` piled up: they were dropped. `text` is the
    /// text at this point of the event stream; the events after this one apply to it.
    Reset {
        /// The text.
        text: String,
    },
}

/// The op sent (or to be sent) and not acknowledged.
#[derive(Clone, Debug)]
struct Pending {
    op: TextOp,
    /// Its idempotency key: kept when the op is rebased and sent again, so the server
    /// applies it once.
    id: String,
    /// The revision it was last sent at (none: never sent, certainly not applied).
    sent_at: Option<u64>,
}

/// A reply the connection owes us: each request gets exactly one, in order.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Reply {
    Op,
    Snapshot,
}

/// The OT client state machine.
///
/// # Contract
///
/// After every input or command, drain [`poll_transmit`](Self::poll_transmit) (frames for
/// the current connection) and [`poll_event`](Self::poll_event), then call
/// [`handle_timeout`](Self::handle_timeout) at [`poll_timeout`](Self::poll_timeout). A
/// `now` earlier than one already seen is taken as the latest seen.
///
/// # Example
///
/// ```
/// use bytes::Bytes;
/// use syncmux::ot::{OtClient, OtClientConfig, OtClientState, TextOp};
/// use syncmux::Instant;
///
/// let mut client = OtClient::new(OtClientConfig::new("c1"))?;
/// let now = Instant::ZERO;
/// client.handle_connected(now);
/// assert_eq!(client.poll_transmit().as_deref(), Some(&br#"{"type":"snapshot"}"#[..]));
/// client.handle_message(now, Bytes::from(r#"{"type":"snapshot","revision":4,"text":"Hi"}"#));
/// assert_eq!((client.text(), client.revision()), ("Hi", 4));
///
/// client.edit(now, TextOp::new().retain(2).insert("!"))?;
/// assert_eq!(
///     client.poll_transmit().as_deref(),
///     Some(&br#"{"type":"op","op":[{"r":2},{"i":"!"}],"revision":4,"opId":"c1-1"}"#[..])
/// );
/// assert_eq!(client.state(), OtClientState::AwaitingAck);
/// client.handle_message(now, Bytes::from(r#"{"type":"ack","revision":5}"#));
/// assert_eq!((client.state(), client.revision()), (OtClientState::Synchronized, 5));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct OtClient {
    config: OtClientConfig,
    /// The document, as broadcast frames name it (`doc-1` when they name none).
    doc: String,
    now: Instant,
    connected: bool,
    /// A snapshot was loaded on this connection and nothing went wrong since.
    live: bool,
    /// The server's revision of `base`.
    revision: u64,
    /// The server's text at `revision`.
    base: String,
    /// `base` with `pending` and `buffer` applied: what the user sees.
    text: String,
    pending: Option<Pending>,
    /// Local edits made after `pending`, composed.
    buffer: Option<TextOp>,
    awaiting: VecDeque<Reply>,
    /// Refusals since the last ack, for the retry delay.
    failures: u32,
    retry_at: Option<Instant>,
    next_op: u64,
    transmits: VecDeque<Bytes>,
    events: VecDeque<OtClientEvent>,
}

impl OtClient {
    /// A disconnected client with an empty document at revision 0.
    pub fn new(config: OtClientConfig) -> Result<OtClient, ConfigError> {
        config.validate()?;
        Ok(OtClient {
            doc: config
                .doc_id
                .clone()
                .unwrap_or_else(|| DEFAULT_DOC_ID.to_owned()),
            config,
            now: Instant::ZERO,
            connected: false,
            live: false,
            revision: 0,
            base: String::new(),
            text: String::new(),
            pending: None,
            buffer: None,
            awaiting: VecDeque::new(),
            failures: 0,
            retry_at: None,
            next_op: 1,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        })
    }

    // ---- getters ------------------------------------------------------------------------

    /// The configuration.
    pub fn config(&self) -> &OtClientConfig {
        &self.config
    }

    /// The text, local edits included.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The server revision the client has caught up with.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// Where the client stands.
    pub fn state(&self) -> OtClientState {
        match (self.connected, self.live, &self.pending, &self.buffer) {
            (false, ..) => OtClientState::Disconnected,
            (true, false, ..) => OtClientState::Fetching,
            (true, true, None, _) => OtClientState::Synchronized,
            (true, true, Some(_), None) => OtClientState::AwaitingAck,
            (true, true, Some(_), Some(_)) => OtClientState::AwaitingWithBuffer,
        }
    }

    /// Whether local edits wait for the server's ack.
    pub fn has_unacked(&self) -> bool {
        self.pending.is_some()
    }

    // ---- inputs -------------------------------------------------------------------------

    /// A connection opened: the client fetches the document (whatever happened while it
    /// was away is unknown) and then sends its unacknowledged edits, rebased.
    pub fn handle_connected(&mut self, now: Instant) {
        self.new_link(now, true);
        self.fetch(ResyncReason::Connected);
    }

    /// The connection closed (or a dial failed). Frames not yet polled are dropped: they
    /// belonged to that connection.
    pub fn handle_disconnected(&mut self, now: Instant) {
        self.new_link(now, false);
    }

    /// A frame arrived.
    pub fn handle_message(&mut self, now: Instant, bytes: Bytes) {
        self.clamp(now);
        if !self.connected {
            return;
        }
        let Ok(message) = ServerMessage::decode(&bytes) else {
            self.fetch(ResyncReason::BadFrame);
            return;
        };
        match message {
            ServerMessage::Op {
                op,
                revision,
                doc_id,
            } => {
                // Every connection also receives doc-1's ops: not ours unless it is ours.
                if doc_id.as_deref().unwrap_or(DEFAULT_DOC_ID) != self.doc {
                    return;
                }
                // While fetching, the snapshot on its way includes it.
                if self.live {
                    self.on_remote(op, revision);
                }
            }
            ServerMessage::Ack { revision, .. } => match self.awaiting.pop_front() {
                // While fetching, the snapshot says what became of the op.
                Some(Reply::Op) if self.live => self.on_ack(revision),
                Some(Reply::Op) => {}
                _ => self.fetch(ResyncReason::BadFrame),
            },
            ServerMessage::Error { message, .. } => {
                self.event(OtClientEvent::ServerError { message });
                match self.awaiting.pop_front() {
                    Some(Reply::Op) if !self.live => {}
                    Some(_) => self.refused(),
                    // Not a reply to us (we owe nothing): nothing to undo.
                    None => {}
                }
            }
            ServerMessage::Snapshot {
                revision,
                text,
                doc_id,
                op,
            } => match self.awaiting.pop_front() {
                Some(Reply::Snapshot)
                    if doc_id.as_deref().unwrap_or(DEFAULT_DOC_ID) == self.doc =>
                {
                    self.on_snapshot(revision, text, op)
                }
                _ => self.fetch(ResyncReason::BadFrame),
            },
        }
    }

    /// Time passed: after a refusal, the delay before fetching again may be over.
    pub fn handle_timeout(&mut self, now: Instant) {
        let now = self.clamp(now);
        if self.retry_at.is_some_and(|at| at <= now) {
            self.retry_at = None;
            if self.connected && !self.live && !self.awaiting.contains(&Reply::Snapshot) {
                self.request_snapshot();
            }
        }
    }

    // ---- commands -----------------------------------------------------------------------

    /// A local edit, made on [`text`](Self::text). It is applied at once and sent when the
    /// client is synchronized (one op in flight at a time; edits made meanwhile are
    /// composed into one).
    pub fn edit(&mut self, now: Instant, op: TextOp) -> Result<(), OpError> {
        self.clamp(now);
        let text = op.apply(&self.text)?;
        let max = self.config.max_document_len;
        if max != 0 {
            let len = TextOp::utf16_len(&text);
            if len > max {
                return Err(OpError::TooLong { len, max });
            }
        }
        if op.is_noop() {
            return Ok(());
        }
        match (&self.pending, &self.buffer) {
            (None, _) => {
                let id = self.next_op_id();
                self.pending = Some(Pending {
                    op,
                    id,
                    sent_at: None,
                });
            }
            (Some(_), Some(buffer)) => self.buffer = Some(buffer.compose(&op)?),
            (Some(_), None) => self.buffer = Some(op),
        }
        self.text = text;
        self.send_pending();
        Ok(())
    }

    // ---- outputs ------------------------------------------------------------------------

    /// The next frame to send on the current connection.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        self.transmits.pop_front()
    }

    /// The next event for the application.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<OtClientEvent> {
        self.events.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) should next be called.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.retry_at
    }

    // ---- internals ----------------------------------------------------------------------

    fn clamp(&mut self, now: Instant) -> Instant {
        self.now = self.now.max(now);
        self.now
    }

    /// Forgets everything that belonged to the previous connection: the document is not live
    /// until fetched again, and nothing sent on it will be answered.
    fn new_link(&mut self, now: Instant, connected: bool) {
        self.clamp(now);
        self.connected = connected;
        self.live = false;
        self.awaiting.clear();
        self.transmits.clear();
        self.retry_at = None;
    }

    fn next_op_id(&mut self) -> String {
        let id = format!("{}-{}", self.config.client_id, self.next_op);
        self.next_op += 1;
        id
    }

    /// Whether `revision` is the one after ours; if it is not, a revision was missed (or
    /// repeated) and the client fetches the document.
    fn in_sequence(&mut self, revision: u64) -> bool {
        let expected = self.revision + 1;
        if revision != expected {
            self.fetch(ResyncReason::RevisionGap {
                expected,
                got: revision,
            });
        }
        revision == expected
    }

    /// An op from another client: it must be the next revision and apply to `base`.
    fn on_remote(&mut self, op: TextOp, revision: u64) {
        if !self.in_sequence(revision) {
            return;
        }
        let Ok(base) = op.apply(&self.base) else {
            self.fetch(ResyncReason::DoesNotApply);
            return;
        };
        // Ours were made after theirs in the server's eyes: transform each way, our op on
        // the right as the server will transform it.
        let mut remote = op;
        let pending = self.pending.as_ref().map(|p| {
            let mine = p.op.transform(&remote, Side::Right);
            remote = remote.transform(&p.op, Side::Left);
            mine
        });
        let buffer = self.buffer.as_ref().map(|b| {
            let mine = b.transform(&remote, Side::Right);
            remote = remote.transform(b, Side::Left);
            mine
        });
        let Ok(text) = remote.apply(&self.text) else {
            self.fetch(ResyncReason::DoesNotApply);
            return;
        };
        self.base = base;
        self.text = text;
        self.revision = revision;
        if let (Some(p), Some(op)) = (&mut self.pending, pending) {
            p.op = op;
        }
        self.buffer = buffer;
        self.event(OtClientEvent::Changed { op: remote });
    }

    /// Our op was applied: it must be the next revision.
    fn on_ack(&mut self, revision: u64) {
        // A duplicate's ack names the revision the first copy got: resync, and the snapshot
        // tells.
        if !self.in_sequence(revision) {
            return;
        }
        let Some(base) = self
            .pending
            .as_ref()
            .and_then(|p| p.op.apply(&self.base).ok())
        else {
            self.fetch(ResyncReason::DoesNotApply);
            return;
        };
        self.base = base;
        self.revision = revision;
        self.pending = None;
        self.failures = 0;
        self.event(OtClientEvent::Acked { revision });
        if let Some(buffer) = self.buffer.take() {
            let id = self.next_op_id();
            self.pending = Some(Pending {
                op: buffer,
                id,
                sent_at: None,
            });
            self.send_pending();
        }
    }

    /// Loads a snapshot and rebases the local edits on it.
    ///
    /// The edits were made on a text the client knows (`base`, or `base` with the pending op
    /// when the server says it applied it); the change from that text to the snapshot is
    /// their diff, and the edits are transformed against it, on the right as the server
    /// would. A diff is not the history, so where the text repeats itself an edit may land
    /// a little differently than a transform against the real ops would put it; but every
    /// replica converges, and nothing is lost or applied twice.
    fn on_snapshot(&mut self, revision: u64, snapshot: String, status: Option<OpStatus>) {
        let pending = self.pending.take();
        let buffer = self.buffer.take();
        let sent = pending.as_ref().is_some_and(|p| p.sent_at.is_some());
        let applied = sent && matches!(status, Some(OpStatus::Applied { .. }));
        let uncertain = sent && matches!(status, Some(OpStatus::Unknown));
        let mut locals: Vec<(TextOp, Option<String>)> = Vec::with_capacity(2);
        let mut basis = self.base.clone();
        match pending {
            Some(p) if applied => match p.op.apply(&self.base) {
                Ok(text) => basis = text,
                Err(_) => locals.push((p.op, Some(p.id))), // cannot be: `base` is what it was made on
            },
            Some(p) => locals.push((p.op, Some(p.id))),
            None => {}
        }
        locals.extend(buffer.map(|b| (b, None)));

        let mut change = TextOp::diff(&basis, &snapshot);
        let mut text = snapshot.clone();
        let mut rebased = Vec::with_capacity(locals.len());
        for (op, id) in locals {
            let mine = op.transform(&change, Side::Right);
            change = change.transform(&op, Side::Left);
            match mine.apply(&text) {
                Ok(t) => text = t,
                // Cannot be (each op applied to the text it was made on); if it were, the
                // local edits could not be kept: the snapshot wins.
                Err(_) => {
                    text = snapshot.clone();
                    rebased.clear();
                    break;
                }
            }
            rebased.push((mine, id));
        }
        // `change` now turns the old text into the new one; fall back on a diff if not.
        if change.apply(&self.text).as_deref() != Ok(text.as_str()) {
            change = TextOp::diff(&self.text, &text);
        }

        self.base = snapshot;
        self.revision = revision;
        self.text = text;
        self.live = true;
        let mut rebased = rebased.into_iter().filter(|(op, _)| !op.is_noop());
        if let Some((op, id)) = rebased.next() {
            let id = id.unwrap_or_else(|| self.next_op_id());
            self.pending = Some(Pending {
                op,
                id,
                sent_at: None,
            });
        }
        self.buffer = rebased.next().map(|(op, _)| op);
        if !change.is_noop() {
            self.event(OtClientEvent::Changed { op: change });
        }
        self.event(OtClientEvent::Resynced {
            revision,
            uncertain,
        });
        self.send_pending();
    }

    /// Stops trusting the local copy and fetches the document, unless a snapshot is on its
    /// way or waits for the retry delay.
    fn fetch(&mut self, reason: ResyncReason) {
        self.live = false;
        self.event(OtClientEvent::Resyncing { reason });
        if !self.connected || self.retry_at.is_some() || self.awaiting.contains(&Reply::Snapshot) {
            return;
        }
        self.request_snapshot();
    }

    /// The server refused a request: fetch the document again after a delay that doubles
    /// with each refusal in a row, so a server that keeps refusing is not hammered.
    fn refused(&mut self) {
        self.live = false;
        self.event(OtClientEvent::Resyncing {
            reason: ResyncReason::Refused,
        });
        self.failures = self.failures.saturating_add(1);
        let doublings = self.failures.saturating_sub(1).min(16);
        let delay = self
            .config
            .retry_delay
            .saturating_mul(1 << doublings)
            .min(self.config.max_retry_delay);
        if !self.awaiting.contains(&Reply::Snapshot) {
            self.retry_at = Some(self.now + delay);
        }
    }

    fn request_snapshot(&mut self) {
        // Ask about the op sent last, if any: it may have been applied without our hearing.
        let sent = self
            .pending
            .as_ref()
            .and_then(|p| p.sent_at.map(|at| (p.id.clone(), at)));
        let (op_id, revision) = sent.unzip();
        let request = ClientMessage::Snapshot {
            doc_id: self.config.doc_id.clone(),
            op_id,
            revision,
        };
        self.transmits.push_back(request.encode());
        self.awaiting.push_back(Reply::Snapshot);
    }

    /// Sends the pending op, if synchronized and it is not in flight already.
    fn send_pending(&mut self) {
        if !self.connected || !self.live || self.awaiting.contains(&Reply::Op) {
            return;
        }
        let Some(p) = &mut self.pending else {
            return;
        };
        p.sent_at = Some(self.revision);
        let message = ClientMessage::Op {
            doc_id: self.config.doc_id.clone(),
            op: p.op.clone(),
            revision: self.revision,
            op_id: Some(p.id.clone()),
        };
        self.transmits.push_back(message.encode());
        self.awaiting.push_back(Reply::Op);
    }

    /// Queues an event; past `max_events`, the queue becomes one `Reset` with the text as
    /// it now stands (which includes a `Changed` being queued: that one is dropped).
    fn event(&mut self, event: OtClientEvent) {
        let max = self.config.max_events;
        if max != 0 && self.events.len() >= max {
            self.events.clear();
            self.events.push_back(OtClientEvent::Reset {
                text: self.text.clone(),
            });
            if matches!(event, OtClientEvent::Changed { .. }) {
                return;
            }
        }
        self.events.push_back(event);
    }
}
