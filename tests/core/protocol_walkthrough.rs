//! Replays the walkthrough of `docs/protocol.md` (section 12) frame by frame against a
//! `Server` with the embedded `MemoryStore`: every frame a client sends there is sent, and every
//! frame the document says a client receives must be the next frame that client gets, equal as
//! JSON. Nothing else may arrive. So the walkthrough cannot promise what the server does not do
//! (it once showed a late `lww` write that loses to a newer one as merged and replayed).
//!
//! `tests/protocol_doc.rs` checks that each frame is well formed; this checks the story.
//!
//! How the transcript's prose is acted out: a comment saying that someone's "network drops"
//! ends that client's session without a close; one saying that they "reconnect" opens a new
//! session for them with the same handshake. Every client's handshake is the one shown at the
//! top of the section (`node_id` in the query, subprotocol `syncmux.v1`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers fail loudly

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;
use serde_json::Value;
use syncmux::payload::{ChangeRecord, Hlc};
use syncmux::{
    Driver, Handshake, HandshakeOutcome, Instant, MemoryStore, Server, ServerConfig,
    ServerTransmit, SessionId, StoreConfig,
};

const DOC: &str = include_str!("../../docs/protocol.md");

/// The `text transcript` blocks of section 12, in order.
fn walkthrough_transcripts() -> Vec<Vec<&'static str>> {
    let start = DOC
        .find("\n## 12. Walkthrough")
        .expect("the document has section 12");
    let end = DOC[start..]
        .find("\n## 13.")
        .map_or(DOC.len(), |n| start + n);
    let mut blocks = Vec::new();
    let mut lines = DOC[start..end].lines();
    while let Some(line) = lines.next() {
        if line.trim() == "```text transcript" {
            blocks.push(lines.by_ref().take_while(|l| l.trim() != "```").collect());
        }
    }
    blocks
}

/// A server whose log is in `epoch` and holds `records` (pushed straight into its store).
fn server_with(epoch: u64, records: Vec<ChangeRecord>) -> Driver {
    let mut config = StoreConfig::default();
    config.epoch = epoch;
    let mut store = MemoryStore::new(config);
    let pushed = records.len();
    assert_eq!(store.push(records).accepted.len(), pushed);
    let mut server_config = ServerConfig::default();
    server_config.path = Some("/sync/ws".to_owned());
    Driver::new(Server::new(server_config).unwrap(), store)
}

/// Plays one transcript against `server`; a readable failure names the line.
struct Player {
    server: Driver,
    now: Instant,
    sessions: BTreeMap<String, SessionId>,
    /// Frames each client received and the transcript has not consumed yet.
    inbox: BTreeMap<String, VecDeque<Value>>,
}

impl Player {
    fn new(server: Driver) -> Self {
        Player {
            server,
            now: Instant::ZERO,
            sessions: BTreeMap::new(),
            inbox: BTreeMap::new(),
        }
    }

    fn connect(&mut self, who: &str) -> SessionId {
        let handshake = Handshake::new("/sync/ws", format!("node_id={who}")).protocol("syncmux.v1");
        match self.server.handle_handshake(self.now, &handshake) {
            HandshakeOutcome::Accept { session, .. } => {
                self.sessions.insert(who.to_owned(), session);
                self.drain();
                session
            }
            other => panic!("{who}'s handshake was refused: {other:?}"),
        }
    }

    fn session(&mut self, who: &str) -> SessionId {
        match self.sessions.get(who) {
            Some(session) => *session,
            None => self.connect(who),
        }
    }

    fn drain(&mut self) {
        while let Some(transmit) = self.server.poll_transmit() {
            match transmit {
                ServerTransmit::Frame { session, bytes } => {
                    self.server.handle_sent(self.now, session, bytes.len());
                    let who = self
                        .sessions
                        .iter()
                        .find(|(_, s)| **s == session)
                        .map(|(who, _)| who.clone())
                        .expect("a frame for a session of the transcript");
                    let frame = serde_json::from_slice(&bytes).expect("the server sends JSON");
                    self.inbox.entry(who).or_default().push_back(frame);
                }
                ServerTransmit::Close { session, code, .. } => {
                    panic!("the server closed {session:?} with {code:?}")
                }
            }
        }
    }

    fn play(&mut self, line: &str) {
        let line = line.trim();
        if line.is_empty() {
            return;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let who = comment
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .trim_end_matches("'s")
                .to_lowercase();
            if comment.contains("network drops") {
                let session = self
                    .sessions
                    .remove(&who)
                    .expect("a connected client drops");
                self.server.handle_disconnected(self.now, session);
                self.drain();
                let left = self.inbox.remove(&who).unwrap_or_default();
                assert!(left.is_empty(), "{who} had frames left: {left:?}");
            } else if comment.contains("reconnects") {
                self.connect(&who);
            }
            return;
        }
        let (who, rest) = line
            .split_once(' ')
            .expect("`who >> frame` or `who << frame`");
        let rest = rest.trim_start();
        if let Some(frame) = rest.strip_prefix(">>") {
            let session = self.session(who);
            let bytes = Bytes::copy_from_slice(frame.trim().as_bytes());
            self.server.handle_message(self.now, session, bytes);
            self.drain();
        } else if let Some(frame) = rest.strip_prefix("<<") {
            self.session(who);
            let want: Value = serde_json::from_str(frame.trim()).expect("the transcript's JSON");
            let got = self.inbox.entry(who.to_owned()).or_default().pop_front();
            assert_eq!(
                got.as_ref(),
                Some(&want),
                "{who} received something else than the document shows at\n{line}"
            );
        } else {
            panic!("not a transcript line: {line}");
        }
    }

    fn finish(&mut self) {
        for (who, left) in &self.inbox {
            assert!(
                left.is_empty(),
                "{who} received frames the document does not show: {left:?}"
            );
        }
    }
}

/// `n` changes of a table the walkthrough does not touch: the log "is at position 7.41".
fn earlier_history(n: u64) -> Vec<ChangeRecord> {
    (1..=n)
        .map(|i| {
            let hlc = Hlc::new(1_700_000_000_000_000_000 + i as i64, 0, "setup");
            ChangeRecord::new("history", i.to_string(), "f", "lww", hlc, "setup")
        })
        .collect()
}

#[test]
fn the_walkthrough_is_what_the_server_does() {
    let transcripts = walkthrough_transcripts();
    assert_eq!(transcripts.len(), 3, "section 12 has its three transcripts");

    // "The server's log is at position 7.41." The second transcript goes on from the first:
    // Carol's losing `lww` write reaches nobody, Bob (subscribed again) included.
    let mut player = Player::new(server_with(7, earlier_history(41)));
    for line in transcripts[0].iter().chain(&transcripts[1]) {
        player.play(line);
    }
    player.finish();

    // "Had the server restarted with an in-memory log [...] in a new epoch, 9": the new log
    // holds the one change its replay shows.
    let done = serde_json::from_str(
        r#"{"table":"docs","pk":"doc-3","field":"done","crdt_type":"lww","hlc":"1706000090000000000:0:alice","node_id":"alice","tombstone":true}"#,
    )
    .unwrap();
    let mut player = Player::new(server_with(9, vec![done]));
    for line in &transcripts[2] {
        player.play(line);
    }
    player.finish();
}

/// The `INVALID_PAYLOAD` example of section 4.1 is the frame the server sends for the
/// request it describes (a `pull_request` whose second table is the integer 2).
#[test]
fn the_invalid_payload_example_is_what_the_server_sends() {
    let section = &DOC[DOC.find("### 4.1 Malformed frames").unwrap()..];
    let section = &section[..section.find("\n## 5.").unwrap()];
    let example = section
        .lines()
        .find(|l| l.contains(r#""code": "INVALID_PAYLOAD""#))
        .expect("section 4.1 shows an INVALID_PAYLOAD frame");
    let want: Value = serde_json::from_str(example).unwrap();
    let mut player = Player::new(server_with(1, Vec::new()));
    player.play(r#"alice >> {"type":"pull_request","id":"4","payload":{"tables":["docs",2]}}"#);
    let got = player.inbox.get_mut("alice").unwrap().pop_front();
    assert_eq!(got.as_ref(), Some(&want));
}
