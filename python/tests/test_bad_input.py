"""Bad input through the bindings: a Python exception or an error frame, never a crash."""

from __future__ import annotations

import json
import random

import pytest

import syncmux
from conftest import Pair, change


def server_frames(pair: Pair) -> list:
    return list(iter(pair.server.poll_transmit, None))


def open_session(pair: Pair, node: str = "eve") -> syncmux.SessionId:
    outcome = pair.server.handle_handshake(pair.now, "/sync/ws", f"node_id={node}")
    assert isinstance(outcome, syncmux.Accept)
    return outcome.session


@pytest.mark.parametrize("now", [float("nan"), float("inf"), -1.0])
def test_times_that_are_no_time_raise_value_error(now: float) -> None:
    client = syncmux.Client("ws://h/sync/ws", "a")
    with pytest.raises(ValueError):
        client.connect(now)
    with pytest.raises(ValueError):
        syncmux.Server().handle_timeout(now)


def test_wrong_types_raise_type_error() -> None:
    client = syncmux.Client("ws://h/sync/ws", "a")
    with pytest.raises(TypeError):
        syncmux.Client(42, "a")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        client.handle_message(1.0, 42)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        client.pull(1.0, "docs")  # a str is not a list of tables
    with pytest.raises(TypeError):
        client.subscribe(1.0, [1, 2])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        syncmux.Server(max_frame_len="big")  # type: ignore[arg-type]
    server = syncmux.Server()
    with pytest.raises(TypeError):
        server.handle_message(1.0, "s0", "{}")  # type: ignore[arg-type]


def test_values_that_are_not_json_raise_with_a_code() -> None:
    client = syncmux.Client("ws://h/sync/ws", "a")
    for bad in ([1, 2], [{"table": "docs"}], {"not": "a list"}, [change("1", 5, value=object())]):
        with pytest.raises(syncmux.SyncmuxError) as e:
            client.push(1.0, bad)
        assert e.value.code == "INVALID_PAYLOAD"
    with pytest.raises(syncmux.SyncmuxError):
        client.update_presence(1.0, "t", {1: object()})
    with pytest.raises(syncmux.SyncmuxError):
        client.pull(1.0, ["docs"], since="not an hlc")
    with pytest.raises(syncmux.SyncmuxError):
        client.pull(1.0, ["docs"], cursor="x.y")
    assert client.stats()["requests"] == 0  # nothing was issued


def test_deep_nesting_raises_instead_of_overflowing_the_stack() -> None:
    client = syncmux.Client("ws://h/sync/ws", "a")
    deep: list = []
    for _ in range(200_000):
        deep = [deep]
    with pytest.raises(syncmux.SyncmuxError):
        client.update_presence(1.0, "t", deep)
    looped: list = []
    looped.append(looped)
    with pytest.raises(syncmux.SyncmuxError):
        client.broadcast(1.0, "r", looped)


def test_invalid_json_gets_an_invalid_frame_error_frame() -> None:
    pair = Pair()
    session = open_session(pair)
    server_frames(pair)
    for bad in ["not json", b"\xff\xfe", "[1,2]", '{"type": 5}', '{"id":"7","payload":{}}']:
        pair.server.handle_message(pair.now, session, bad)
    frames = [json.loads(f.text) for f in server_frames(pair)]
    assert [f["payload"]["code"] for f in frames] == ["INVALID_FRAME"] * 5
    assert frames[-1]["id"] == "7"
    pair.server.handle_message(pair.now, session, '{"type":"nope","id":"8"}')
    [unknown] = [json.loads(f.text) for f in server_frames(pair)]
    assert unknown["payload"]["code"] == "UNKNOWN_TYPE" and unknown["id"] == "8"


def test_too_many_invalid_frames_close_with_4400() -> None:
    pair = Pair(max_invalid_frames=2)
    session = open_session(pair)
    server_frames(pair)
    for _ in range(3):
        pair.server.handle_message(pair.now, session, "garbage")
    closes = [t for t in server_frames(pair) if isinstance(t, syncmux.SessionClose)]
    assert [c.code for c in closes] == [4400]


def test_huge_frames_get_frame_too_large_then_1009() -> None:
    pair = Pair(max_frame_len=1024)
    session = open_session(pair)
    server_frames(pair)
    huge = json.dumps({"type": "ping", "id": "1", "payload": "x" * 4096})
    pair.server.handle_message(pair.now, session, huge)
    [error] = server_frames(pair)
    assert json.loads(error.text)["payload"]["code"] == "FRAME_TOO_LARGE"
    pair.server.handle_message(pair.now, session, huge)
    assert [t.code for t in server_frames(pair) if isinstance(t, syncmux.SessionClose)] == [1009]


def test_a_client_reports_bad_frames_from_the_server_as_error_events() -> None:
    client = syncmux.Client("ws://h/sync/ws", "a", max_frame_len=64)
    client.connect(1.0)
    client.poll_transmit()
    client.handle_connected(1.0, "syncmux.v1")
    client.handle_message(1.0, "{oops")
    client.handle_message(1.0, json.dumps({"type": "pong", "payload": "y" * 100}))
    client.handle_binary(1.0, 10)
    codes = [e.code for e in iter(client.poll_event, None) if isinstance(e, syncmux.Error)]
    assert codes == ["INVALID_FRAME", "FRAME_TOO_LARGE", "INVALID_FRAME"]


def test_random_bytes_never_crash_either_side() -> None:
    rng = random.Random(17)
    pair = Pair(max_invalid_frames=0, rate_limit_burst=0)
    session = open_session(pair)
    client = syncmux.Client("ws://h/sync/ws", "a")
    client.connect(1.0)
    client.poll_transmit()
    client.handle_connected(1.0, "syncmux.v1")
    templates = [b'{"type":"push_request","id":"1","payload":', b'{"type":"room","payload":', b'{"type":"change","payload":']
    for i in range(2000):
        junk = bytes(rng.randrange(256) for _ in range(rng.randrange(64)))
        data = rng.choice(templates) + junk if i % 2 else junk
        pair.server.handle_message(pair.now, session, data)
        client.handle_message(1.0, data)
        server_frames(pair)
        list(iter(client.poll_event, None))
    assert pair.server.is_open(session)
