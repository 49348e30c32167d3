//! Deterministic virtual-time tests of the client state machine, one per behaviour of
//! docs/protocol.md section 11: hand-made server frames in, exact frames, deadlines and events out.

use crate::client_support;

use std::time::Duration;

use client_support::*;
use syncmux::payload::{Cursor, Hlc, PullRequest, RawJson, ResumeAck, Subscribe};
use syncmux::wire::{CloseCode, ErrorCode};
use syncmux::Instant;
use syncmux::{
    Client, ClientEvent, ClientState, ClientTransmit, CloseReason, RequestError, RequestId,
    Response,
};

fn raw(json: &str) -> RawJson {
    RawJson::from_string(json.to_owned()).expect("test JSON is valid")
}

fn pull_response(id: u64) -> String {
    format!(
        r#"{{"type":"pull_response","id":"{id}","payload":{{"changes":[],"latest_hlc":"{id}:0:s"}}}}"#
    )
}

fn outcome(event: &ClientEvent) -> (RequestId, &Result<Response, RequestError>) {
    match event {
        ClientEvent::Response { id, outcome } => (*id, outcome),
        other => panic!("expected a response, got {other:?}"),
    }
}

#[test]
fn a_command_while_idle_dials_with_identity_auth_and_subprotocol() {
    let mut config = config();
    config.token = Some("s3cret".into());
    let mut client = Client::new(config).unwrap();
    assert_eq!(client.state(), ClientState::Idle);
    let id = client.ping(t(0), raw("1")).unwrap();
    assert_eq!(client.state(), ClientState::Connecting);
    let Some(ClientTransmit::Connect(dial)) = client.poll_transmit() else {
        panic!()
    };
    assert_eq!(dial.url, "ws://sync.test/ws?node_id=n1");
    assert_eq!(
        dial.url_with_token(),
        "ws://sync.test/ws?node_id=n1&access_token=s3cret"
    );
    assert_eq!(dial.protocols, ["syncmux.v1"]);
    assert_eq!(
        dial.headers,
        [
            ("X-Node-Id", "n1".to_owned()),
            ("Authorization", "Bearer s3cret".to_owned())
        ]
    );
    assert_eq!(client.poll_transmit(), None);
    client.handle_connected(t(1), None); // a seed server selects no subprotocol
    assert_eq!(
        frames(&mut client),
        [r#"{"type":"ping","id":"1","payload":1}"#]
    );
    recv(&mut client, t(1), r#"{"type":"pong","id":"1","payload":1}"#);
    let events = drain_events(&mut client);
    assert_eq!(events[0], ClientEvent::Connected);
    assert_eq!(
        events[1],
        ClientEvent::Response {
            id,
            outcome: Ok(Response::Pong(raw("1")))
        }
    );
}

#[test]
fn a_hundred_requests_in_flight_answered_out_of_order() {
    let mut client = open(config(), t(0));
    let ids: Vec<RequestId> = (0..100)
        .map(|i| {
            client
                .pull(t(0), PullRequest::new([format!("t{i}")]))
                .unwrap()
        })
        .collect();
    let sent = frames(&mut client);
    assert_eq!(sent.len(), 100);
    assert_eq!(
        sent[41],
        r#"{"type":"pull_request","id":"42","payload":{"tables":["t41"],"node_id":"n1"}}"#
    );
    // Odd ids backwards, then even ids forwards.
    let order: Vec<u64> = (1..=100)
        .rev()
        .filter(|i| i % 2 == 1)
        .chain((1..=100).filter(|i| i % 2 == 0))
        .collect();
    for id in &order {
        recv(&mut client, t(1), &pull_response(*id));
    }
    let events = drain_events(&mut client);
    let answered: Vec<u64> = events
        .iter()
        .map(|e| {
            let (id, outcome) = outcome(e);
            let Ok(Response::Pull(pull)) = outcome else {
                panic!("{outcome:?}")
            };
            assert_eq!(pull.latest_hlc.ts, id.get() as i64);
            id.get()
        })
        .collect();
    assert_eq!(answered, order);
    assert_eq!(
        ids.iter().map(|i| i.get()).collect::<Vec<_>>(),
        (1..=100).collect::<Vec<_>>()
    );
    assert_eq!(client.stats().requests, 0);
    // Ids that only parse to a pending number are not ours.
    let id = client.ping(t(1), RawJson::null()).unwrap();
    recv(
        &mut client,
        t(1),
        &format!(r#"{{"type":"pong","id":"0{id}"}}"#),
    );
    recv(
        &mut client,
        t(1),
        &format!(r#"{{"type":"pong","id":"+{id}"}}"#),
    );
    assert_eq!(drain_events(&mut client), []);
    // A duplicate reply for a finished request is ignored.
    recv(&mut client, t(1), &pull_response(7));
    assert_eq!(drain_events(&mut client), []);
}

#[test]
fn a_request_times_out_once_and_a_late_reply_is_ignored() {
    let mut config = config();
    config.ping_interval = Duration::ZERO;
    config.healthy_after = Duration::from_secs(100);
    let mut client = open(config, t(0));
    let id = client.get_presence(t(2), "doc").unwrap();
    let _ = frames(&mut client);
    // The deadline (2 s + 30 s) comes before the healthy timer (100 s).
    assert_eq!(client.poll_timeout(), Some(t(32)));
    client.handle_timeout(t(32) - Duration::from_nanos(1));
    assert_eq!(drain_events(&mut client), []);
    client.handle_timeout(t(32));
    assert_eq!(
        drain_events(&mut client),
        [ClientEvent::Response {
            id,
            outcome: Err(RequestError::Timeout)
        }]
    );
    assert_eq!(client.poll_timeout(), Some(t(100)));
    recv(
        &mut client,
        t(33),
        r#"{"type":"presence_snapshot","id":"1","payload":{"topic":"doc","states":[]}}"#,
    );
    assert_eq!(drain_events(&mut client), []);
    // A spurious timeout does nothing.
    client.handle_timeout(t(34));
    assert_eq!(drain_events(&mut client), []);
    assert_eq!(drain(&mut client), []);
}

#[test]
fn an_error_frame_becomes_a_typed_error() {
    let mut client = open(config(), t(0));
    let id = client.push(t(0), vec![]).unwrap();
    assert_eq!(
        frames(&mut client),
        [r#"{"type":"push_request","id":"1","payload":{"changes":[],"node_id":"n1"}}"#]
    );
    recv(
        &mut client,
        t(1),
        r#"{"type":"error","id":"1","payload":{"code":"FORBIDDEN","message":"not your table"}}"#,
    );
    let expected = RequestError::Server {
        code: ErrorCode::Forbidden,
        message: "not your table".into(),
    };
    assert_eq!(expected.code(), ErrorCode::Forbidden);
    assert_eq!(
        drain_events(&mut client),
        [ClientEvent::Response {
            id,
            outcome: Err(expected)
        }]
    );
    // An error frame without an id is reported as such; one for an unknown id is ignored.
    recv(
        &mut client,
        t(1),
        r#"{"type":"error","payload":{"code":"QUOTA","message":"m"}}"#,
    );
    recv(
        &mut client,
        t(1),
        r#"{"type":"error","id":"99","payload":{"code":"INTERNAL","message":"m"}}"#,
    );
    assert_eq!(
        drain_events(&mut client),
        [ClientEvent::Error {
            code: ErrorCode::Other("QUOTA".into()),
            message: "m".into()
        }]
    );
    // A reply of the wrong type fails the request.
    let id = client.pull(t(2), PullRequest::new(["a"])).unwrap();
    recv(&mut client, t(2), r#"{"type":"ack","id":"2"}"#);
    assert_eq!(
        drain_events(&mut client),
        [ClientEvent::Response {
            id,
            outcome: Err(RequestError::InvalidResponse {
                message: "expected pull_response, got ack".into()
            })
        }]
    );
}

#[test]
fn error_codes_of_request_errors_are_pinned() {
    let cases = [
        (
            RequestError::Server {
                code: ErrorCode::RoomFull,
                message: String::new(),
            },
            "ROOM_FULL",
        ),
        (RequestError::Timeout, "TIMEOUT"),
        (RequestError::Disconnected, "DISCONNECTED"),
        (
            RequestError::InvalidResponse {
                message: String::new(),
            },
            "INVALID_PAYLOAD",
        ),
        (RequestError::TooManyInFlight { max: 1 }, "RATE_LIMITED"),
        (RequestError::QueueFull { max: 1 }, "RATE_LIMITED"),
        (RequestError::NotConnected, "DISCONNECTED"),
        (RequestError::Closed, "DISCONNECTED"),
        (
            RequestError::TooManySubscriptions { max: 1 },
            "RATE_LIMITED",
        ),
        (
            RequestError::TooManyPresenceTopics { max: 1 },
            "RATE_LIMITED",
        ),
        (RequestError::TooManyRooms { max: 1 }, "RATE_LIMITED"),
    ];
    for (error, code) in cases {
        assert_eq!(error.code().as_str(), code, "{error}");
    }
}

#[test]
fn a_disconnect_resends_a_pending_pull_and_fails_a_pending_presence_get() {
    let mut client = open(config(), t(0));
    let pull = client.pull(t(0), PullRequest::new(["docs"])).unwrap();
    let get = client.get_presence(t(0), "doc").unwrap();
    let sent = frames(&mut client);
    client.handle_disconnected(t(1), Some(CloseCode(1006)), "reset");
    let events = drain_events(&mut client);
    assert_eq!(
        events[0],
        ClientEvent::Disconnected {
            code: Some(CloseCode(1006)),
            reason: "reset".into()
        }
    );
    assert_eq!(
        events[1],
        ClientEvent::Response {
            id: get,
            outcome: Err(RequestError::Disconnected)
        }
    );
    let ClientEvent::Reconnecting { attempt: 1, delay } = events[2] else {
        panic!("{events:?}")
    };
    assert_eq!(events.len(), 3);
    assert_eq!(client.state(), ClientState::WaitingToReconnect);
    fire(&mut client, t(1) + delay);
    assert!(matches!(
        drain(&mut client)[..],
        [ClientTransmit::Connect(_)]
    ));
    client.handle_connected(t(9), Some("syncmux.v1"));
    assert_eq!(frames(&mut client), [sent[0].clone()]);
    recv(&mut client, t(9), &pull_response(pull.get()));
    let events = drain_events(&mut client);
    assert_eq!(events[0], ClientEvent::Connected);
    assert!(matches!(outcome(&events[1]), (id, Ok(Response::Pull(_))) if id == pull));
}

#[test]
fn resending_idempotent_requests_can_be_turned_off() {
    let mut config = config();
    config.resend_idempotent = false;
    let mut client = open(config, t(0));
    let pull = client.pull(t(0), PullRequest::new(["docs"])).unwrap();
    client.handle_disconnected(t(1), None, "gone");
    let events = drain_events(&mut client);
    assert_eq!(
        events[1],
        ClientEvent::Response {
            id: pull,
            outcome: Err(RequestError::Disconnected)
        }
    );
}

/// Dials, fails, and returns the backoff delay the client chose.
fn fail_dial(client: &mut Client, now: &mut Instant) -> (u32, Duration) {
    client.handle_disconnected(*now, None, "refused");
    let events = drain_events(client);
    let Some(ClientEvent::Reconnecting { attempt, delay }) = events.last().cloned() else {
        panic!("{events:?}")
    };
    *now += delay;
    fire(client, *now);
    assert!(matches!(drain(client)[..], [ClientTransmit::Connect(_)]));
    (attempt, delay)
}

#[test]
fn backoff_doubles_with_equal_jitter_and_resets_only_when_healthy() {
    let mut client = Client::new(config()).unwrap();
    let mut now = t(0);
    client.connect(now);
    let _ = drain(&mut client);
    let steps = [5, 10, 20, 30, 30, 30];
    let delays: Vec<Duration> = steps
        .iter()
        .enumerate()
        .map(|(k, step)| {
            let (attempt, delay) = fail_dial(&mut client, &mut now);
            assert_eq!(attempt as usize, k + 1);
            let d = Duration::from_secs(*step);
            assert!(
                delay >= d / 2 && delay <= d,
                "attempt {attempt}: {delay:?} not in [{:?}, {d:?}]",
                d / 2
            );
            delay
        })
        .collect();
    // Same seed, same delays: pinned.
    let mut again = Client::new(config()).unwrap();
    let mut now2 = t(0);
    again.connect(now2);
    let _ = drain(&mut again);
    let replay: Vec<Duration> = steps
        .iter()
        .map(|_| fail_dial(&mut again, &mut now2).1)
        .collect();
    assert_eq!(delays, replay);

    // Accepted and dropped at once: not healthy, the count goes on.
    client.handle_connected(now, None);
    let _ = drain_events(&mut client);
    assert_eq!(fail_dial(&mut client, &mut now).0, 7);
    // An error frame is no proof of health either.
    client.handle_connected(now, None);
    recv(
        &mut client,
        now,
        r#"{"type":"error","payload":{"code":"INTERNAL","message":"x"}}"#,
    );
    assert_eq!(fail_dial(&mut client, &mut now).0, 8);
    // Open for `healthy_after` (5 s): healthy.
    client.handle_connected(now, None);
    fire(&mut client, now + Duration::from_secs(5));
    assert_eq!(client.reconnect_attempt(), 0);
    now += Duration::from_secs(5);
    let (attempt, delay) = fail_dial(&mut client, &mut now);
    assert_eq!(attempt, 1);
    assert!(delay >= Duration::from_millis(2500) && delay <= Duration::from_secs(5));
    // A reply to a request (here a pong) is proof of health too.
    fail_dial(&mut client, &mut now);
    assert_eq!(client.reconnect_attempt(), 2);
    client.handle_connected(now, None);
    let id = client.ping(now, RawJson::null()).unwrap();
    recv(
        &mut client,
        now,
        &format!(r#"{{"type":"pong","id":"{id}"}}"#),
    );
    assert_eq!(client.reconnect_attempt(), 0);
}

/// `reconnect_now` dials at once while the client waits out its backoff (the network is
/// back), and does nothing in any other state.
#[test]
fn reconnect_now_dials_without_waiting_out_the_backoff() {
    let mut client = Client::new(config()).unwrap();
    let now = t(0);
    client.reconnect_now(now);
    assert!(drain(&mut client).is_empty(), "idle: nothing");
    client.connect(now);
    let _ = drain(&mut client);
    client.reconnect_now(now);
    assert!(drain(&mut client).is_empty(), "connecting already");
    client.handle_disconnected(now, None, "refused");
    let _ = drain_events(&mut client);
    assert_eq!(client.state(), ClientState::WaitingToReconnect);
    assert!(drain(&mut client).is_empty(), "waits for its backoff");
    client.reconnect_now(now);
    assert!(matches!(
        drain(&mut client)[..],
        [ClientTransmit::Connect(_)]
    ));
    assert_eq!(client.state(), ClientState::Connecting);
    // The backoff's timer is gone with the wait: no second dial when it would have fired.
    assert_eq!(client.poll_timeout(), None);
}

#[test]
fn max_attempts_closes_for_good() {
    let mut config = config();
    config.max_reconnect_attempts = Some(2);
    let mut client = Client::new(config).unwrap();
    let mut now = t(0);
    let id = client.pull(now, PullRequest::new(["a"])).unwrap(); // queued, waits through the attempts
    let _ = drain(&mut client);
    fail_dial(&mut client, &mut now);
    fail_dial(&mut client, &mut now);
    client.handle_disconnected(now, None, "refused");
    assert_eq!(
        drain_events(&mut client),
        [
            ClientEvent::Disconnected {
                code: None,
                reason: "refused".into()
            },
            ClientEvent::Response {
                id,
                outcome: Err(RequestError::Disconnected)
            },
            ClientEvent::Closed {
                reason: CloseReason::MaxAttempts { attempts: 2 }
            },
        ]
    );
    assert_eq!(client.poll_timeout(), None);
    // An explicit connect starts afresh.
    client.connect(now);
    assert!(matches!(
        drain(&mut client)[..],
        [ClientTransmit::Connect(_)]
    ));
    assert_eq!(client.reconnect_attempt(), 0);
}

#[test]
fn keepalive_pings_and_a_silent_server_is_dropped_after_the_pong_timeout() {
    let mut client = open(config(), t(0));
    fire(&mut client, t(5)); // healthy
    fire(&mut client, t(30));
    assert_eq!(frames(&mut client), [r#"{"type":"ping","id":"1"}"#]);
    assert_eq!(client.poll_timeout(), Some(t(40)));
    // Any frame counts as alive: the pong deadline goes, the next ping stays.
    recv(
        &mut client,
        t(35),
        r#"{"type":"presence_event","payload":{"type":"join","node_id":"x","topic":"t"}}"#,
    );
    let _ = drain_events(&mut client);
    fire(&mut client, t(60));
    assert_eq!(frames(&mut client), [r#"{"type":"ping","id":"2"}"#]);
    fire(&mut client, t(70));
    let reason = "no frame from the server within the pong timeout".to_owned();
    assert_eq!(
        drain(&mut client),
        [ClientTransmit::Close {
            code: CloseCode::IDLE_TIMEOUT,
            reason: reason.clone()
        }]
    );
    let events = drain_events(&mut client);
    assert_eq!(
        events[0],
        ClientEvent::Disconnected {
            code: Some(CloseCode::IDLE_TIMEOUT),
            reason
        }
    );
    assert!(matches!(
        events[1],
        ClientEvent::Reconnecting { attempt: 1, .. }
    ));
    assert_eq!(client.state(), ClientState::WaitingToReconnect);
    // Late frames of the dropped connection are ignored.
    recv(&mut client, t(71), r#"{"type":"ping","id":"s"}"#);
    assert_eq!(drain(&mut client), []);
}

#[test]
fn server_pings_are_answered_with_the_same_id_key_and_payload() {
    let mut client = open(config(), t(0));
    recv(
        &mut client,
        t(1),
        r#"{"type":"ping","request_id":"s-1","payload":{"n":[1,2.50]}}"#,
    );
    recv(&mut client, t(1), r#"{"type":"ping"}"#);
    assert_eq!(
        frames(&mut client),
        [
            r#"{"type":"pong","request_id":"s-1","payload":{"n":[1,2.50]}}"#,
            r#"{"type":"pong"}"#
        ]
    );
}

fn change(table: &str, ts: i64) -> String {
    format!(
        r#"{{"table":"{table}","pk":"1","field":"f","crdt_type":"lww","hlc":"{ts}:0:x","node_id":"x","value":{ts}}}"#
    )
}

#[test]
fn changes_are_tagged_with_their_subscriptions_and_tracked_per_table() {
    let mut client = open(config(), t(0));
    let s1 = client.subscribe(t(0), Subscribe::new(["a", "b"])).unwrap();
    let s2 = client
        .subscribe(t(0), Subscribe::new(["c"]).since(Hlc::new(1, 0, "x")))
        .unwrap();
    assert_eq!(
        frames(&mut client),
        [
            r#"{"type":"subscribe","id":"1","payload":{"tables":["a","b"]}}"#,
            r#"{"type":"subscribe","id":"2","payload":{"tables":["c"],"since":{"ts":1,"c":0,"node":"x"}}}"#,
        ]
    );
    recv(&mut client, t(1), r#"{"type":"ack","id":"1"}"#);
    recv(
        &mut client,
        t(1),
        &format!(
            r#"{{"type":"changes","cursor":"3.7","payload":[{},{},{}]}}"#,
            change("c", 9),
            change("a", 4),
            change("zz", 5)
        ),
    );
    recv(
        &mut client,
        t(1),
        &format!(r#"{{"type":"change","payload":{}}}"#, change("a", 2)),
    );
    let events = drain_events(&mut client);
    assert_eq!(
        events[0],
        ClientEvent::Response {
            id: s1,
            outcome: Ok(Response::Ack(None))
        }
    );
    let ClientEvent::Changes {
        subscriptions,
        changes,
        cursor,
    } = &events[1]
    else {
        panic!()
    };
    assert_eq!(subscriptions, &[s1, s2]);
    assert_eq!(changes.len(), 3);
    assert_eq!(*cursor, Some(Cursor::new(3, 7)));
    let ClientEvent::Changes {
        subscriptions,
        cursor,
        ..
    } = &events[2]
    else {
        panic!()
    };
    assert_eq!((subscriptions.as_slice(), cursor), ([s1].as_slice(), &None));
    assert_eq!(client.newest_hlc("a"), Some(&Hlc::new(4, 0, "x")));
    assert_eq!(client.newest_hlc("c"), Some(&Hlc::new(9, 0, "x")));
    assert_eq!(client.newest_hlc("zz"), None);
    // Subscribe 2 resumes with `since` and has no ack yet: its replay may still be on the
    // way, so the stream position does not move (the frames are not in one order for every
    // table until it ends).
    assert_eq!(client.cursor(), None);
    // A garbage change frame is reported and moves nothing.
    recv(
        &mut client,
        t(1),
        r#"{"type":"changes","cursor":"3.9","payload":[{"table":"a"}]}"#,
    );
    let events = drain_events(&mut client);
    assert!(matches!(
        &events[..],
        [ClientEvent::Error {
            code: ErrorCode::InvalidPayload,
            ..
        }]
    ));
    assert_eq!(client.cursor(), None);
    // Its ack's head covers only its own tables; live frames after it move the position.
    recv(
        &mut client,
        t(1),
        r#"{"type":"ack","id":"2","payload":{"recovered":true,"cursor":"3.7"}}"#,
    );
    assert_eq!(client.cursor(), None);
    recv(
        &mut client,
        t(1),
        &format!(
            r#"{{"type":"change","cursor":"3.8","payload":{}}}"#,
            change("b", 6)
        ),
    );
    assert_eq!(client.cursor(), Some(Cursor::new(3, 8)));
}

#[test]
fn after_a_reconnect_state_is_restored_before_resends_and_queued_commands() {
    let mut config = config();
    config.ping_interval = Duration::ZERO;
    let mut client = open(config, t(0));
    let sub1 = client
        .subscribe(t(0), Subscribe::new(["a", "b", "c"]))
        .unwrap(); // 1
    let sub2 = client
        .subscribe(t(0), Subscribe::new(["d"]).since(Hlc::new(1, 0, "x")))
        .unwrap(); // 2
    client
        .update_presence(t(0), "doc", raw(r#"{"cursor":3}"#))
        .unwrap(); // 3
    client
        .join_room(t(0), "lobby", Some(raw(r#""hi""#)))
        .unwrap(); // 4
    recv(
        &mut client,
        t(1),
        &format!(
            r#"{{"type":"changes","payload":[{},{},{}]}}"#,
            change("a", 5),
            change("b", 3),
            change("c", 5)
        ),
    );
    let pull = client.pull(t(1), PullRequest::new(["e"])).unwrap(); // 5
    let pull_frame = frames(&mut client).pop().unwrap();
    let _ = drain_events(&mut client);

    // Without a cursor: per-table since, tables grouped by it, oldest first.
    client.handle_disconnected(t(2), None, "gone");
    let broadcast = client.broadcast(t(2), "lobby", raw("1")).unwrap(); // 6, queued
    assert_eq!(broadcast.get(), 6);
    let _ = drain_events(&mut client);
    let delay = reconnect(&mut client);
    assert_eq!(
        frames(&mut client),
        [
            r#"{"type":"subscribe","id":"7","payload":{"tables":["d"],"since":{"ts":1,"c":0,"node":"x"}}}"#.to_owned(),
            r#"{"type":"subscribe","id":"8","payload":{"tables":["b"],"since":{"ts":3,"c":0,"node":"x"}}}"#.to_owned(),
            r#"{"type":"subscribe","id":"9","payload":{"tables":["a","c"],"since":{"ts":5,"c":0,"node":"x"}}}"#.to_owned(),
            r#"{"type":"presence_update","id":"10","payload":{"topic":"doc","data":{"cursor":3}}}"#.to_owned(),
            r#"{"type":"room","id":"11","payload":{"action":"join","room":"lobby","data":"hi"}}"#.to_owned(),
            pull_frame.clone(),
            r#"{"type":"room","id":"6","payload":{"action":"broadcast","room":"lobby","data":1}}"#.to_owned(),
        ]
    );
    // Restore acks are the client's own business, except that they complete the
    // application's requests that were in flight at the disconnect: subscribe 2 (table d,
    // restored by 7) and subscribe 1 (tables a, b, c: restored by 8 and 9), once all of
    // their restores are answered. Presence 3 and room 4 wait for 10 and 11.
    recv(&mut client, delay, r#"{"type":"ack","id":"7"}"#);
    recv(&mut client, delay, r#"{"type":"ack","id":"8"}"#);
    assert_eq!(
        drain_events(&mut client),
        [
            ClientEvent::Connected,
            ClientEvent::Response {
                id: sub2,
                outcome: Ok(Response::Ack(None))
            },
        ]
    );
    recv(&mut client, delay, r#"{"type":"ack","id":"9"}"#);
    recv(&mut client, delay, r#"{"type":"ack","id":"6"}"#);
    let events = drain_events(&mut client);
    assert_eq!(
        events,
        [
            ClientEvent::Response {
                id: sub1,
                outcome: Ok(Response::Ack(None))
            },
            ClientEvent::Response {
                id: broadcast,
                outcome: Ok(Response::Ack(None))
            }
        ]
    );

    // With a cursor from the stream: every group resumes from it, `since` as the fallback.
    recv(
        &mut client,
        delay,
        &format!(
            r#"{{"type":"change","cursor":"2.40","payload":{}}}"#,
            change("d", 8)
        ),
    );
    let _ = drain_events(&mut client);
    client.handle_disconnected(delay, None, "gone");
    let _ = drain_events(&mut client);
    let at = reconnect(&mut client);
    let sent = frames(&mut client);
    assert_eq!(
        sent[..3],
        [
            r#"{"type":"subscribe","id":"12","payload":{"tables":["b"],"since":{"ts":3,"c":0,"node":"x"},"cursor":"2.40"}}"#,
            r#"{"type":"subscribe","id":"13","payload":{"tables":["a","c"],"since":{"ts":5,"c":0,"node":"x"},"cursor":"2.40"}}"#,
            r#"{"type":"subscribe","id":"14","payload":{"tables":["d"],"since":{"ts":8,"c":0,"node":"x"},"cursor":"2.40"}}"#,
        ]
    );
    assert_eq!(
        sent[5], pull_frame,
        "the pull is still unanswered: re-sent again"
    );
    // A resume the server could not serve without a gap asks the application to resync.
    recv(
        &mut client,
        at,
        r#"{"type":"ack","id":"13","payload":{"recovered":false,"cursor":"3.0"}}"#,
    );
    let events = drain_events(&mut client);
    assert_eq!(
        events[1],
        ClientEvent::ResyncNeeded {
            tables: vec!["a".into(), "c".into()]
        }
    );
    assert_eq!(client.cursor(), Some(Cursor::new(3, 0)));
    let _ = pull;
}

#[test]
fn a_refused_subscription_is_not_restored() {
    let mut config = config();
    config.ping_interval = Duration::ZERO;
    let mut client = open(config, t(0));
    client.subscribe(t(0), Subscribe::new(["secret"])).unwrap();
    client.subscribe(t(0), Subscribe::new(["open"])).unwrap();
    recv(
        &mut client,
        t(0),
        r#"{"type":"error","id":"1","payload":{"code":"FORBIDDEN","message":"no"}}"#,
    );
    assert_eq!(client.stats().subscriptions, 1);
    client.handle_disconnected(t(1), None, "x");
    let at = client.poll_timeout().unwrap();
    client.handle_timeout(at);
    client.handle_connected(at, None);
    let _ = drain(&mut client);
    client.handle_disconnected(at, None, "x");
    let _ = drain_events(&mut client);
    reconnect(&mut client);
    assert_eq!(
        frames(&mut client),
        // Never acknowledged and it asked for no replay: it took effect nowhere, so it is
        // sent again as it was (and its ack will say where its stream starts).
        [r#"{"type":"subscribe","id":"4","payload":{"tables":["open"]}}"#]
    );
}

#[test]
fn the_offline_queue_is_bounded_and_flushed_in_order() {
    let mut config = config();
    config.max_offline_queue = 2;
    let mut client = Client::new(config.clone()).unwrap();
    let a = client.join_room(t(0), "r", None).unwrap();
    let b = client.leave_room(t(0), "r").unwrap();
    assert_eq!(
        client.broadcast(t(0), "r", raw("1")),
        Err(RequestError::QueueFull { max: 2 })
    );
    assert!(matches!(
        drain(&mut client)[..],
        [ClientTransmit::Connect(_)]
    ));
    assert_eq!(client.stats().offline_queue, 2);
    client.handle_connected(t(1), None);
    assert_eq!(
        frames(&mut client),
        [
            r#"{"type":"room","id":"1","payload":{"action":"join","room":"r"}}"#,
            r#"{"type":"room","id":"2","payload":{"action":"leave","room":"r"}}"#,
        ]
    );
    assert_eq!((a.get(), b.get()), (1, 2));
    assert_eq!(client.stats().offline_queue, 0);

    // Fail fast: refused at once, but the connection still starts.
    config.max_offline_queue = 0;
    let mut client = Client::new(config).unwrap();
    assert_eq!(
        client.pull(t(0), PullRequest::new(["a"])),
        Err(RequestError::NotConnected)
    );
    assert!(matches!(
        drain(&mut client)[..],
        [ClientTransmit::Connect(_)]
    ));
}

#[test]
fn a_queued_request_can_time_out_before_the_connection_opens() {
    let mut client = Client::new(config()).unwrap();
    let id = client.subscribe(t(0), Subscribe::new(["a"])).unwrap();
    let _ = drain(&mut client);
    client.handle_timeout(t(30));
    assert_eq!(
        drain_events(&mut client),
        [ClientEvent::Response {
            id,
            outcome: Err(RequestError::Timeout)
        }]
    );
    assert_eq!(client.stats().offline_queue, 0);
    assert_eq!(
        client.stats().subscriptions,
        0,
        "never sent, so never established"
    );
    client.handle_connected(t(31), None);
    assert_eq!(frames(&mut client), Vec::<String>::new());
}

#[test]
fn in_flight_and_tracking_bounds_refuse_at_once() {
    let mut config = config();
    config.max_in_flight = 2;
    config.max_subscriptions = 2;
    config.max_presence_topics = 1;
    config.max_rooms = 1;
    let mut client = open(config, t(0));
    client.subscribe(t(0), Subscribe::new(["a", "b"])).unwrap();
    client.update_presence(t(0), "p", raw("1")).unwrap();
    assert_eq!(
        client.ping(t(0), raw("1")),
        Err(RequestError::TooManyInFlight { max: 2 })
    );
    recv(&mut client, t(0), r#"{"type":"ack","id":"1"}"#);
    recv(&mut client, t(0), r#"{"type":"ack","id":"2"}"#);
    assert_eq!(
        client.subscribe(t(0), Subscribe::new(["c"])),
        Err(RequestError::TooManySubscriptions { max: 2 })
    );
    assert!(
        client.subscribe(t(0), Subscribe::new(["a"])).is_ok(),
        "already subscribed tables are free"
    );
    assert_eq!(
        client.update_presence(t(0), "q", raw("1")),
        Err(RequestError::TooManyPresenceTopics { max: 1 })
    );
    recv(&mut client, t(0), r#"{"type":"ack","id":"3"}"#);
    client.join_room(t(0), "r", None).unwrap();
    assert_eq!(
        client.join_room(t(0), "s", None),
        Err(RequestError::TooManyRooms { max: 1 })
    );
}

#[test]
fn the_transmit_queue_is_bounded() {
    let mut config = config();
    config.max_queued_transmits = 2;
    let mut client = open(config, t(0));
    client.ping(t(0), raw("1")).unwrap();
    recv(&mut client, t(0), r#"{"type":"ping","id":"s1"}"#);
    // Full: a command is refused, a server ping goes unanswered.
    assert_eq!(
        client.ping(t(0), raw("2")),
        Err(RequestError::QueueFull { max: 2 })
    );
    recv(&mut client, t(0), r#"{"type":"ping","id":"s2"}"#);
    assert_eq!(
        frames(&mut client),
        [
            r#"{"type":"ping","id":"1","payload":1}"#,
            r#"{"type":"pong","id":"s1"}"#
        ]
    );
}

#[test]
fn a_full_event_queue_drops_the_connection_without_losing_changes() {
    let mut config = config();
    config.max_queued_events = 2;
    let mut client = open(config, t(0));
    client.subscribe(t(0), Subscribe::new(["a"])).unwrap();
    let _ = frames(&mut client);
    for ts in 1..=3 {
        recv(
            &mut client,
            t(1),
            &format!(
                r#"{{"type":"change","cursor":"1.{ts}","payload":{}}}"#,
                change("a", ts)
            ),
        );
    }
    assert_eq!(
        drain(&mut client),
        [ClientTransmit::Close {
            code: CloseCode::SLOW_CONSUMER,
            reason: "event queue full".into()
        }]
    );
    // Only the delivered changes moved the resume point.
    assert_eq!(client.cursor(), Some(Cursor::new(1, 2)));
    assert_eq!(client.newest_hlc("a"), Some(&Hlc::new(2, 0, "x")));
    let events = drain_events(&mut client);
    assert_eq!(
        events.len(),
        4,
        "2 changes, disconnected, reconnecting (the subscribe waits for its restore): {events:?}"
    );
    assert!(matches!(
        events[2],
        ClientEvent::Disconnected {
            code: Some(CloseCode::SLOW_CONSUMER),
            ..
        }
    ));
}

#[test]
fn close_4426_stops_retrying_and_says_why() {
    let mut client = open(config(), t(0));
    let id = client.get_presence(t(0), "x").unwrap();
    client.handle_disconnected(
        t(1),
        Some(CloseCode::VERSION_MISMATCH),
        "protocol version 1 required, got 2",
    );
    let reason = "protocol version 1 required, got 2".to_owned();
    assert_eq!(
        drain_events(&mut client),
        [
            ClientEvent::Disconnected {
                code: Some(CloseCode(4426)),
                reason: reason.clone()
            },
            ClientEvent::Response {
                id,
                outcome: Err(RequestError::Disconnected)
            },
            ClientEvent::Closed {
                reason: CloseReason::Server {
                    code: CloseCode(4426),
                    reason
                }
            },
        ]
    );
    assert_eq!(client.state(), ClientState::Closed);
    assert_eq!(client.poll_timeout(), None);
    assert_eq!(
        client.pull(t(2), PullRequest::new(["a"])),
        Err(RequestError::Closed)
    );
    // The frame never polled was for the dead connection: dropped, not sent later.
    assert_eq!(drain(&mut client), []);
}

#[test]
fn a_server_that_selects_another_subprotocol_is_refused() {
    let mut client = Client::new(config()).unwrap();
    client.connect(t(0));
    let _ = drain(&mut client);
    client.handle_connected(t(0), Some("syncmux.v2"));
    assert!(matches!(
        &drain(&mut client)[..],
        [ClientTransmit::Close {
            code: CloseCode::VERSION_MISMATCH,
            ..
        }]
    ));
    assert_eq!(
        drain_events(&mut client),
        [ClientEvent::Closed {
            reason: CloseReason::ProtocolMismatch {
                selected: "syncmux.v2".into()
            }
        }]
    );
}

#[test]
fn close_fails_everything_pending_and_closes_with_1000() {
    let mut client = open(config(), t(0));
    let a = client.pull(t(0), PullRequest::new(["a"])).unwrap();
    client.close(t(1));
    assert_eq!(client.state(), ClientState::Closed);
    assert_eq!(
        drain(&mut client),
        [ClientTransmit::Close {
            code: CloseCode::NORMAL,
            reason: "closed by the application".into()
        }]
    );
    let events = drain_events(&mut client);
    assert_eq!(
        events[1],
        ClientEvent::Response {
            id: a,
            outcome: Err(RequestError::Disconnected)
        }
    );
    assert_eq!(
        events[2],
        ClientEvent::Closed {
            reason: CloseReason::Local
        }
    );
    client.handle_disconnected(t(2), Some(CloseCode::NORMAL), "");
    assert_eq!(drain_events(&mut client), []);
}

#[test]
fn time_that_goes_backwards_is_clamped() {
    let mut client = open(config(), t(100));
    let id = client.ping(t(50), raw("1")).unwrap();
    // The deadline counts from the latest time seen (100 s), not 50 s.
    client.handle_timeout(t(80));
    assert_eq!(drain_events(&mut client), []);
    client.handle_timeout(t(130));
    let events = drain_events(&mut client);
    assert!(events.contains(&ClientEvent::Response {
        id,
        outcome: Err(RequestError::Timeout)
    }));
}

#[test]
fn garbage_and_binary_frames_are_reported_and_answer_their_request_when_they_can() {
    let mut client = open(config(), t(0));
    let id = client.pull(t(0), PullRequest::new(["a"])).unwrap();
    recv(&mut client, t(0), "not json");
    client.handle_binary(t(0), 3);
    recv(
        &mut client,
        t(0),
        r#"{"type":"pull_response","id":"1","payload":{"changes":7}}"#,
    );
    let events = drain_events(&mut client);
    assert!(
        matches!(&events[1], ClientEvent::Error { code: ErrorCode::InvalidFrame, message } if message.contains("(3 bytes)")),
        "{events:?}"
    );
    assert!(matches!(
        &events[0],
        ClientEvent::Error {
            code: ErrorCode::InvalidFrame,
            ..
        }
    ));
    assert!(matches!(
        &events[1],
        ClientEvent::Error {
            code: ErrorCode::InvalidFrame,
            ..
        }
    ));
    assert!(
        matches!(outcome(&events[2]), (got, Err(RequestError::InvalidResponse { .. })) if got == id)
    );
    let _ = ResumeAck {
        recovered: true,
        cursor: Cursor::default(),
    };
}

/// Subscribe, unsubscribe, presence and room commands in flight when the connection drops
/// stay pending and complete with their restore after the reconnect (docs/protocol.md section 11),
/// or with the restore's refusal, or their timeout; a broadcast, which cannot be re-sent
/// safely, fails with `DISCONNECTED`.
#[test]
fn restorable_commands_in_flight_at_a_disconnect_complete_with_their_restore() {
    let mut config = config();
    config.ping_interval = Duration::ZERO;
    let mut client = open(config, t(0));
    let gone = client.subscribe(t(0), Subscribe::new(["gone"])).unwrap(); // 1
    recv(
        &mut client,
        t(0),
        r#"{"type":"ack","id":"1","payload":{"recovered":true,"cursor":"1.0"}}"#,
    );
    let _ = drain_events(&mut client);
    let sub = client.subscribe(t(1), Subscribe::new(["docs"])).unwrap(); // 2
    let unsub = client.unsubscribe(t(1), ["gone"]).unwrap(); // 3
    let presence = client.update_presence(t(1), "doc", raw("1")).unwrap(); // 4
    let room = client.join_room(t(1), "lobby", None).unwrap(); // 5
    let said = client.broadcast(t(1), "lobby", raw("2")).unwrap(); // 6
    let _ = frames(&mut client);
    client.handle_disconnected(t(2), None, "gone");
    let events = drain_events(&mut client);
    let outcomes: Vec<_> = events
        .iter()
        .filter(|e| matches!(e, ClientEvent::Response { .. }))
        .collect();
    assert_eq!(
        outcomes,
        [&ClientEvent::Response {
            id: said,
            outcome: Err(RequestError::Disconnected)
        }],
        "only the broadcast fails"
    );
    let _ = gone;

    let at = reconnect(&mut client);
    // The unsubscribe is done: the restore leaves "gone" out.
    assert_eq!(
        frames(&mut client),
        [
            r#"{"type":"subscribe","id":"7","payload":{"tables":["docs"]}}"#,
            r#"{"type":"presence_update","id":"8","payload":{"topic":"doc","data":1}}"#,
            r#"{"type":"room","id":"9","payload":{"action":"join","room":"lobby"}}"#,
        ]
    );
    assert_eq!(
        drain_events(&mut client),
        [
            ClientEvent::Connected,
            ClientEvent::Response {
                id: unsub,
                outcome: Ok(Response::Ack(None))
            }
        ]
    );
    // The subscribe completes with its restore's ack, the presence update with its
    // restore's refusal.
    recv(
        &mut client,
        at,
        r#"{"type":"ack","id":"7","payload":{"recovered":true,"cursor":"1.5"}}"#,
    );
    recv(
        &mut client,
        at,
        r#"{"type":"error","id":"8","payload":{"code":"FORBIDDEN","message":"no"}}"#,
    );
    let events = drain_events(&mut client);
    assert!(events.contains(&ClientEvent::Response {
        id: sub,
        outcome: Ok(Response::Ack(Some(ResumeAck {
            recovered: true,
            cursor: Cursor::new(1, 5)
        })))
    }));
    assert!(events.contains(&ClientEvent::Response {
        id: presence,
        outcome: Err(RequestError::Server {
            code: ErrorCode::Forbidden,
            message: "no".into()
        })
    }));
    // The room join's restore is never answered: the request's own deadline ends it.
    let deadline = t(1) + Duration::from_secs(30);
    client.handle_timeout(deadline);
    assert!(drain_events(&mut client).contains(&ClientEvent::Response {
        id: room,
        outcome: Err(RequestError::Timeout)
    }));
    assert_eq!(client.stats().requests, 0);
}

/// Closing for good ends a command that waits for its restore with `DISCONNECTED`.
#[test]
fn closing_ends_commands_waiting_for_their_restore() {
    let mut config = config();
    config.ping_interval = Duration::ZERO;
    let mut client = open(config, t(0));
    let sub = client.subscribe(t(0), Subscribe::new(["docs"])).unwrap();
    let _ = frames(&mut client);
    client.handle_disconnected(t(1), None, "gone");
    assert!(!drain_events(&mut client)
        .iter()
        .any(|e| matches!(e, ClientEvent::Response { .. })));
    client.close(t(2));
    assert!(drain_events(&mut client).contains(&ClientEvent::Response {
        id: sub,
        outcome: Err(RequestError::Disconnected)
    }));
}

/// An application that reads no events while the client reconnects again and again does not
/// make lifecycle events pile up: the newest are kept, a bounded number.
#[test]
fn unread_lifecycle_events_stay_bounded() {
    let mut config = config();
    config.ping_interval = Duration::ZERO;
    let mut client = open(config, t(0));
    let mut now = t(0);
    for _ in 0..500 {
        client.handle_disconnected(now, None, "gone");
        now = reconnect(&mut client);
    }
    let events = drain_events(&mut client);
    assert!(events.len() <= 32, "{} events kept", events.len());
    // The newest say where the connection stands.
    assert_eq!(events.last(), Some(&ClientEvent::Connected));
}

/// A ping that cannot be queued (the adapter takes no frames: the socket is stuck) still
/// starts the pong timeout, so a dead peer behind a full queue is detected.
#[test]
fn a_stuck_transmit_queue_does_not_hide_a_dead_peer() {
    let mut config = config();
    config.max_queued_transmits = 2;
    config.ping_interval = Duration::from_secs(30);
    config.pong_timeout = Duration::from_secs(10);
    let mut client = open(config, t(0));
    client.pull(t(0), PullRequest::new(["a"])).unwrap();
    client.pull(t(0), PullRequest::new(["b"])).unwrap();
    // Nothing is drained: the queue stays full when the ping is due.
    client.handle_timeout(t(30));
    assert_eq!(client.poll_timeout(), Some(t(40)));
    client.handle_timeout(t(40));
    assert!(drain_events(&mut client).iter().any(|e| matches!(
        e,
        ClientEvent::Disconnected {
            code: Some(CloseCode::IDLE_TIMEOUT),
            ..
        }
    )));
}

/// Which close codes end reconnecting is the client's policy, in its config.
#[test]
fn terminal_close_codes_are_configurable() {
    for (terminal, code, stops) in [
        (None, 4401, true),
        (Some(vec![CloseCode::INTERNAL]), 4500, true),
        (Some(vec![CloseCode::INTERNAL]), 4401, false),
    ] {
        let mut config = config();
        if let Some(codes) = terminal {
            config.terminal_close_codes = codes;
        }
        let mut client = open(config, t(0));
        client.handle_disconnected(t(1), Some(CloseCode(code)), "bye");
        let closed = drain_events(&mut client)
            .iter()
            .any(|e| matches!(e, ClientEvent::Closed { .. }));
        assert_eq!(closed, stops, "{code}");
    }
}

/// The fallback's URLs follow the WebSocket's: scheme, path and query (docs/protocol.md
/// section 2.3).
#[test]
fn the_fallback_urls_follow_the_websocket_url() {
    let urls = |url| syncmux::DialRequest::fallback_urls(url);
    assert_eq!(
        urls("ws://h:8787/sync/ws?node_id=a&access_token=t"),
        (
            "http://h:8787/sync/sse?node_id=a&access_token=t".to_owned(),
            "http://h:8787/sync/send".to_owned()
        )
    );
    assert_eq!(
        urls("wss://h/api/"),
        (
            "https://h/api/sse".to_owned(),
            "https://h/api/send".to_owned()
        )
    );
}
