"""The state machines driven from Python in virtual time: no sockets, no clock."""

from __future__ import annotations

import pytest

import syncmux
from conftest import Pair, change


def test_config_defaults_are_the_rust_defaults() -> None:
    c = syncmux.Client("ws://h/sync/ws", "n1").config
    assert (c["reconnect_delay"], c["max_reconnect_delay"], c["healthy_after"]) == (5.0, 30.0, 5.0)
    assert (c["ping_interval"], c["pong_timeout"], c["request_timeout"]) == (30.0, 10.0, 30.0)
    assert c["terminal_close_codes"] == [4401, 4403, 4426]
    assert c["max_frame_len"] == 16 << 20
    s = syncmux.Server().config
    assert (s["max_frame_len"], s["rate_limit_burst"], s["rate_limit_window"]) == (1 << 20, 100, 60.0)
    assert (s["idle_timeout"], s["ping_interval"], s["presence_ttl"], s["max_room_size"]) == (90.0, 30.0, 60.0, 1000)
    assert syncmux.Client("ws://h", "n", reconnect_delay=0.25).config["healthy_after"] == 0.25


def test_invalid_config_raises_config_error() -> None:
    with pytest.raises(syncmux.ConfigError) as e:
        syncmux.Client("http://h", "n")
    assert e.value.code == "INVALID_CONFIG"
    with pytest.raises(syncmux.ConfigError):
        syncmux.Server(ping_interval=100.0, idle_timeout=10.0)


def test_requests_are_correlated_by_id() -> None:
    pair = Pair()
    alice = pair.client("alice")
    push = alice.push(pair.now, [change("1", 5, extra_field={"kept": True})])
    pull = alice.pull(pair.now, ["docs"])
    ping = alice.ping(pair.now, {"n": 7})
    assert len({push, pull, ping}) == 3
    pair.pump()
    # Answered out of issue order on the wire or not, each outcome names its request.
    assert pair.response(alice, ping).result() == {"n": 7}
    pulled = pair.response(alice, pull)
    assert pulled.kind == "pull"
    [record] = pulled.value["changes"]
    assert record["extra_field"] == {"kept": True}  # unknown fields pass through
    assert record["hlc"] == {"ts": 5, "c": 0, "node": "alice"}
    pushed = pair.response(alice, push)
    assert pushed.kind == "push" and pushed.value["merged"] == 1
    assert pushed.value["cursor"] == pulled.value["cursor"] == pair.server.store_head


def test_reconnect_backs_off_with_jitter_and_redials_at_the_deadline() -> None:
    pair = Pair()
    alice = pair.client("alice", reconnect_delay=1.0, max_reconnect_delay=8.0, seed=7)
    alice.connect(pair.now)
    pair.pump()
    assert alice.state == "open"
    pair.cut(alice)
    pair.pump(dial=False)
    [reconnecting] = pair.take(alice, syncmux.Reconnecting)
    assert reconnecting.attempt == 1 and 0.5 <= reconnecting.delay <= 1.0
    deadline = alice.poll_timeout()
    assert deadline == pytest.approx(pair.now + reconnecting.delay)
    alice.handle_timeout(deadline - 0.01)  # early: nothing happens
    assert alice.poll_transmit() is None
    alice.handle_timeout(deadline)
    dial = alice.poll_transmit()
    assert isinstance(dial, syncmux.Connect)
    # The dial fails: the next wait doubles (equal jitter in [d/2, d]).
    pair.now = deadline
    alice.handle_disconnected(pair.now, None, "refused")
    pair.pump(dial=False)
    [again] = pair.take(alice, syncmux.Reconnecting)
    assert again.attempt == 2 and 1.0 <= again.delay <= 2.0
    pair.advance(pair.now + again.delay)
    assert alice.state == "open"


def test_a_subscription_resumes_after_a_cut_without_gap_or_duplicate() -> None:
    pair = Pair()
    alice, bob = pair.client("alice", reconnect_delay=1.0), pair.client("bob")
    sub = alice.subscribe(pair.now, ["docs"])
    pair.pump()
    assert pair.response(alice, sub).value["recovered"] is True
    bob.push(pair.now, [change("1", 5, node="bob")])
    pair.pump()
    [first] = pair.take(alice, syncmux.Changes)
    assert [c["pk"] for c in first.changes] == ["1"] and first.subscriptions == [sub]
    assert alice.cursor == first.cursor

    pair.cut(alice)
    pair.pump(dial=False)
    bob.push(pair.now, [change("2", 1, node="bob")])  # late, with an old HLC
    pair.pump(dial=False)
    pair.advance(pair.now + 1.0)
    assert alice.state == "open"
    got = [c["pk"] for e in pair.take(alice, syncmux.Changes) for c in e.changes]
    assert got == ["2"]


def test_presence_members_see_each_other() -> None:
    pair = Pair()
    alice, bob = pair.client("alice"), pair.client("bob")
    alice.update_presence(pair.now, "doc-1", {"cursor": 3})
    pair.pump()
    bob.update_presence(pair.now, "doc-1", {"cursor": 9})
    pair.pump()
    joins = pair.take(alice, syncmux.Presence)
    assert [(p.kind, p.node_id, p.data) for p in joins] == [("join", "alice", {"cursor": 3}), ("join", "bob", {"cursor": 9})]
    get = bob.get_presence(pair.now, "doc-1")
    pair.pump()
    snapshot = pair.response(bob, get).value
    assert sorted(s["node_id"] for s in snapshot["states"]) == ["alice", "bob"]
    bob.leave_presence(pair.now, "doc-1")
    pair.pump()
    assert [(p.kind, p.node_id) for p in pair.take(alice, syncmux.Presence)] == [("leave", "bob")]


def test_rooms_members_join_and_messages() -> None:
    pair = Pair(max_room_size=2)
    alice, bob, carol = pair.client("alice"), pair.client("bob"), pair.client("carol")
    alice.join_room(pair.now, "r", {"name": "A"})
    pair.pump()
    bob.join_room(pair.now, "r")
    pair.pump()
    [members] = pair.take(bob, syncmux.Room)
    assert members.event == "members"
    assert sorted(m["node_id"] for m in members.members) == ["alice", "bob"]
    assert [(r.event, r.node_id) for r in pair.take(alice, syncmux.Room)] == [("members", None), ("join", "bob")]
    bob.broadcast(pair.now, "r", "hi")
    pair.pump()
    assert [(r.event, r.data) for r in pair.take(alice, syncmux.Room)] == [("message", "hi")]
    assert pair.take(bob, syncmux.Room) == []  # not to the sender
    full = carol.join_room(pair.now, "r")
    pair.pump()
    response = pair.response(carol, full)
    assert isinstance(response.error, syncmux.RequestError) and response.error.code == "ROOM_FULL"


def test_error_frames_become_request_errors_with_the_wire_code() -> None:
    pair = Pair(presence=False)
    alice = pair.client("alice")
    request = alice.update_presence(pair.now, "t", 1)
    pair.pump()
    response = pair.response(alice, request)
    assert not response.ok and response.value is None
    with pytest.raises(syncmux.RequestError) as e:
        response.result()
    assert (e.value.code, e.value.kind) == ("PRESENCE_DISABLED", "Server")
    assert isinstance(e.value, syncmux.SyncmuxError)


def test_an_unanswered_request_times_out() -> None:
    pair = Pair()
    alice = pair.client("alice", request_timeout=2.0)
    alice.connect(pair.now)
    pair.pump()
    request = alice.ping(pair.now)
    # The frame is lost: nothing reaches the server.
    assert isinstance(alice.poll_transmit(), syncmux.Frame)
    alice.handle_timeout(pair.now + 2.0)
    pair.pump()
    assert pair.response(alice, request).error.code == "TIMEOUT"


def test_local_refusals_raise_at_once() -> None:
    alice = syncmux.Client("ws://h/sync/ws", "alice", max_in_flight=1)
    alice.ping(1.0)
    with pytest.raises(syncmux.RequestError) as e:
        alice.ping(1.0)
    assert (e.value.code, e.value.kind) == ("RATE_LIMITED", "TooManyInFlight")


def test_a_server_without_the_store_leaves_pulls_and_pushes_to_the_application() -> None:
    pair = Pair(store=False)
    alice = pair.client("alice")
    push = alice.push(pair.now, [change("1", 5)])
    pair.pump()
    events = []
    while (e := pair.server.poll_event()) is not None:
        events.append(e)
    [opened] = [e for e in events if isinstance(e, syncmux.SessionOpened)]
    assert opened.node_id == "alice"
    [pushed] = [e for e in events if isinstance(e, syncmux.Push)]
    assert pushed.changes[0]["pk"] == "1"
    pair.server.answer_push(pair.now, pushed.request, [("9.1", pushed.changes[0])], latest_hlc="5:0:alice", head="9.1")
    pull = alice.pull(pair.now, ["docs"])
    pair.pump()
    assert pair.response(alice, push).value == {"merged": 1, "latest_hlc": {"ts": 5, "c": 0, "node": "alice"}, "cursor": "9.1"}
    [pulled] = [e for e in iter(pair.server.poll_event, None) if isinstance(e, syncmux.Pull)]
    assert pulled.tables == ["docs"]
    pair.server.answer_pull(pair.now, pulled.request, error="backend down", unavailable=True)
    pair.pump()
    assert pair.response(alice, pull).error.code == "UNAVAILABLE"
    with pytest.raises(syncmux.SyncmuxError):
        syncmux.Server().answer_pull(1.0, pulled.request)  # the store answers those itself
