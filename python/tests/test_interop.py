"""Interop over real sockets, both ways: the Python client against the Rust example server,
the Rust example client against the Python example server, the Node `ws` interop script
against the Python server, and every handshake decision, limit and close code checked against
both servers alike."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from typing import Any, List, Optional, Tuple

import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

import syncmux
from syncmux import aio
from conftest import PYTHON_DIR, ROOT, need, rust_example, start_python_server, start_rust_server

# A guard against a hung peer, not a timing assertion.
GUARD = 15.0


async def probe(url: str, query: str = "", headers: Optional[dict] = None, protocols: Optional[List[str]] = None) -> Tuple[Any, ...]:
    """What a plain WebSocket client sees: the HTTP refusal, or the selected subprotocol and
    (for a version mismatch) the error frame and close code."""
    try:
        ws = await ws_connect(url + query, additional_headers=headers or {}, subprotocols=protocols, open_timeout=GUARD)
    except InvalidStatus as e:
        return ("refused", e.response.status_code)
    async with ws:
        if ws.subprotocol is not None and ws.subprotocol != "syncmux.v1":
            frame = json.loads(await asyncio.wait_for(ws.recv(), GUARD))
            try:
                await asyncio.wait_for(ws.recv(), GUARD)
            except ConnectionClosed:
                pass
            return ("accepted", ws.subprotocol, frame["type"], frame["payload"]["code"], ws.protocol.close_rcvd.code)
        await ws.send('{"type":"ping","id":"p"}')
        pong = json.loads(await asyncio.wait_for(ws.recv(), GUARD))
        return ("accepted", ws.subprotocol, pong["type"], pong["id"])


def test_handshake_decisions_are_the_rust_servers(any_server: Any) -> None:
    url = any_server("--token", "s3").url
    base = url.rsplit("/sync/ws", 1)[0]

    async def run() -> list:
        return [
            await probe(url, "?node_id=a"),
            await probe(url, "?node_id=a", {"Authorization": "Bearer wrong"}),
            await probe(url, "?node_id=a&access_token=wrong"),
            await probe(url, "?node_id=a", {"Authorization": "Bearer s3"}, ["syncmux.v1"]),
            await probe(url, "?node_id=a&access_token=s3", protocols=["graphql-ws", "syncmux.v1"]),
            await probe(url, "?node_id=a&token=s3"),
            await probe(url, "?node_id=a&token=s3", protocols=["syncmux.v2"]),
            await probe(base + "/elsewhere", "?token=s3"),
        ]

    assert asyncio.run(run()) == [
        ("refused", 401),
        ("refused", 401),
        ("refused", 401),
        ("accepted", "syncmux.v1", "pong", "p"),
        ("accepted", "syncmux.v1", "pong", "p"),
        ("accepted", None, "pong", "p"),
        ("accepted", "syncmux.v2", "error", "SYNC_VERSION_MISMATCH", 4426),
        ("refused", 404),
    ]


async def frames_until_closed(ws: Any) -> List[str]:
    """The types (error codes for errors) of the frames that come before the close."""
    seen = []
    try:
        while True:
            frame = json.loads(await asyncio.wait_for(ws.recv(), GUARD))
            seen.append(frame["payload"]["code"] if frame["type"] == "error" else frame["type"])
    except ConnectionClosed:
        return seen


def test_limits_timers_and_close_codes_are_the_rust_servers(any_server: Any) -> None:
    url = any_server("--rate-limit", "3/60", "--max-frame", "1024", "--idle-timeout", "600", "--ping-interval", "200").url

    async def run() -> dict:
        seen: dict = {}
        async with ws_connect(url + "?node_id=a") as ws:
            for i in range(4):
                await ws.send(json.dumps({"type": "ping", "id": str(i)}))
            answers = [json.loads(await ws.recv()) for _ in range(4)]
            seen["rate"] = [a["type"] if a["type"] != "error" else a["payload"]["code"] for a in answers]
        async with ws_connect(url + "?node_id=b", max_size=None) as ws:
            await ws.send(json.dumps({"type": "ping", "id": "x", "payload": "y" * 2000}))
            seen["too_large"] = json.loads(await ws.recv())["payload"]["code"]
            await ws.send(json.dumps({"type": "ping", "id": "x", "payload": "y" * 2000}))
            seen["before_close"] = await frames_until_closed(ws)
            seen["repeat"] = ws.protocol.close_rcvd.code
        async with ws_connect(url + "?node_id=c") as ws:
            # Silent: the server pings (an application `ping` frame), then times out.
            first = json.loads(await asyncio.wait_for(ws.recv(), GUARD))
            seen["ping"] = first["type"]
            await frames_until_closed(ws)
            seen["idle"] = ws.protocol.close_rcvd.code
        return seen

    assert asyncio.run(run()) == {
        "rate": ["pong", "pong", "pong", "RATE_LIMITED"],
        "too_large": "FRAME_TOO_LARGE",
        "before_close": ["FRAME_TOO_LARGE"],
        "repeat": 1009,
        "ping": "ping",
        "idle": 4408,
    }


def test_python_client_against_the_rust_server() -> None:
    server = start_rust_server("--token", "s3")
    try:
        asyncio.run(drive_python_clients(server.url))
    finally:
        server.stop()


def test_python_client_against_the_python_server() -> None:
    server = start_python_server("--token", "s3")
    try:
        asyncio.run(drive_python_clients(server.url))
    finally:
        server.stop()


async def next_of(client: aio.AsyncClient, kind: type) -> Any:
    async def find() -> Any:
        async for event in client:
            if isinstance(event, kind):
                return event
        raise AssertionError(f"no {kind.__name__}: the client closed")
    return await asyncio.wait_for(find(), GUARD)


async def drive_python_clients(url: str) -> None:
    alice = await aio.connect(url, "alice", token="s3")
    bob = await aio.connect(url, "bob", token="s3")
    try:
        assert alice.state_machine.state == "open"
        ack = await bob.subscribe(["docs"])
        assert ack["recovered"] is True
        record = {"table": "docs", "pk": "1", "field": "title", "crdt_type": "lww", "hlc": "5:0:alice",
                  "node_id": "alice", "value": "Hello", "future_field": [1, {"x": None}]}
        pushed = await alice.push([record])
        assert pushed["merged"] == 1
        changes = await next_of(bob, syncmux.Changes)
        assert changes.cursor == pushed["cursor"]
        assert changes.changes[0]["future_field"] == [1, {"x": None}]
        pulled = await bob.pull(["docs"])
        assert [c["value"] for c in pulled["changes"]] == ["Hello"]
        await alice.update_presence("doc-1", {"at": 3})
        snapshot = await bob.get_presence("doc-1")
        assert [s["node_id"] for s in snapshot["states"]] == ["alice"]
        await alice.join_room("r")
        await bob.join_room("r")
        await alice.broadcast("r", {"hi": 1})
        room = await next_of(bob, syncmux.Room)
        while room.event != "message":
            room = await next_of(bob, syncmux.Room)
        assert (room.node_id, room.data) == ("alice", {"hi": 1})
        assert await alice.ping([1, 2]) == [1, 2]
        with pytest.raises(syncmux.RequestError) as e:
            await alice.broadcast("nowhere", 1)  # an error frame over the wire
        assert (e.value.code, e.value.kind) == ("NOT_A_MEMBER", "Server")
        with pytest.raises(syncmux.SyncmuxError) as bad:
            await alice.pull(["docs"], since="x")  # refused before anything is sent
        assert bad.value.code == "INVALID_PAYLOAD"
    finally:
        await alice.close()
        await bob.close()
    # A wrong token: refused at the handshake (401), retried, then closed for good.
    with pytest.raises(ConnectionError):
        await aio.connect(url, "eve", token="wrong", reconnect_delay=0.05, max_reconnect_delay=0.05, max_reconnect_attempts=2)


def run_client(program: List[str], url: str, *args: str, stdin: Optional[str] = None) -> List[Any]:
    out = subprocess.run([*program, "--url", url, "--node-id", "cli", *args], input=stdin,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr + out.stdout
    return [json.loads(line) for line in out.stdout.splitlines()]


def test_the_example_clients_print_the_same_lines_against_either_server(any_server: Any) -> None:
    url = any_server().url
    rust = [str(rust_example("client"))]
    python = [sys.executable, str(PYTHON_DIR / "examples" / "client.py")]
    records = json.dumps([{"table": "notes", "pk": str(i), "field": "f", "crdt_type": "counter",
                           "hlc": f"{i}:0:cli", "node_id": "cli", "counter_delta": i, "x-extra": "kept"} for i in range(1, 4)])
    by_rust = run_client(rust, url, "push", "-", stdin=records)
    by_python = run_client(python, url, "push", "-", stdin=records)
    assert by_rust[0]["merged"] == 3 and by_python[0]["merged"] == 0  # the same records again
    assert run_client(rust, url, "pull", "notes") == run_client(python, url, "pull", "notes")
    cursor = by_rust[0]["cursor"]
    assert run_client(rust, url, "pull", "--cursor", cursor, "notes") == run_client(python, url, "pull", "--cursor", cursor, "notes")
    assert run_client(rust, url, "room", "r", "hello") == run_client(python, url, "room", "r", "hello") == [{"room": "r", "sent": "hello"}]


def test_a_following_rust_client_gets_a_python_clients_push_through_the_python_server() -> None:
    server = start_python_server()
    follower = subprocess.Popen([str(rust_example("client")), "--url", server.url, "--node-id", "f", "subscribe", "docs"],
                                stdout=subprocess.PIPE, text=True)
    try:
        assert follower.stdout is not None
        lines = [json.loads(follower.stdout.readline()) for _ in range(2)]
        assert {"event": "connected"} in lines
        record = [{"table": "docs", "pk": "9", "field": "t", "crdt_type": "lww", "hlc": "9:0:p", "node_id": "p", "value": 9}]
        python = [sys.executable, str(PYTHON_DIR / "examples" / "client.py")]
        [pushed] = run_client(python, server.url, "push", "-", stdin=json.dumps(record))
        change = json.loads(follower.stdout.readline())
        assert change == {"change": {**record[0], "hlc": {"ts": 9, "c": 0, "node": "p"}}, "cursor": pushed["cursor"]}
    finally:
        follower.terminate()
        follower.wait()
        server.stop()


def test_node_ws_interop_script_against_the_python_server() -> None:
    need("`node` is not on the PATH", shutil.which("node") is not None)
    node = ROOT / "crates/syncmux-server/tests/node"
    need(f"{node}/node_modules/ws is missing: npm install --prefix {node} --no-audit --no-fund",
         (node / "node_modules/ws/package.json").exists())
    server = start_python_server()
    try:
        status = subprocess.run(["node", str(node / "interop.mjs"), server.url], timeout=120)
        assert status.returncode == 0
    finally:
        server.stop()


def test_room_max_presence_ttl_and_shutdown_are_the_rust_servers(any_server: Any) -> None:
    server = any_server("--room-max", "1", "--presence-ttl", "300", "--ping-interval", "0", "--idle-timeout", "0")

    async def run() -> dict:
        seen: dict = {}
        async with ws_connect(server.url + "?node_id=a") as a, ws_connect(server.url + "?node_id=b") as b:
            await a.send('{"type":"room","id":"1","payload":{"action":"join","room":"r"}}')
            while json.loads(await asyncio.wait_for(a.recv(), GUARD)).get("id") != "1":
                pass  # the member list, then the ack: a is in before b asks
            await b.send('{"type":"room","id":"2","payload":{"action":"join","room":"r"}}')
            refused = json.loads(await asyncio.wait_for(b.recv(), GUARD))
            seen["room_full"] = refused["payload"]["code"]
            await b.send('{"type":"presence_update","id":"3","payload":{"topic":"t","data":1}}')
            kinds = []
            while len(kinds) < 3:  # join, ack, then the leave when the TTL expires
                frame = json.loads(await asyncio.wait_for(b.recv(), GUARD))
                kinds.append(frame["type"] if frame["type"] != "presence_event" else frame["payload"]["type"])
            seen["presence"] = sorted(kinds)
            server.proc.terminate()  # SIGTERM: every session closed with 1001, exit 0
            await frames_until_closed(a)
            seen["shutdown"] = a.protocol.close_rcvd.code
        seen["exit"] = server.proc.wait(GUARD)
        return seen

    assert asyncio.run(run()) == {
        "room_full": "ROOM_FULL",
        "presence": ["ack", "join", "leave"],
        "shutdown": 1001,
        "exit": 0,
    }


@pytest.mark.parametrize("flag", [["--rate-limit", "lots"], ["--max-frame", "-1"], ["--idle-timeout", "soon"], ["--ping-interval", "5000", "--idle-timeout", "1000"]])
def test_invalid_flags_exit_2_as_the_rust_server_does(flag: List[str]) -> None:
    python = subprocess.run([sys.executable, str(PYTHON_DIR / "examples" / "server.py"), "--listen", "127.0.0.1:0", *flag],
                            capture_output=True, text=True, timeout=30)
    rust = subprocess.run([str(rust_example("server")), "--listen", "127.0.0.1:0", *flag], capture_output=True, text=True, timeout=30)
    assert (python.returncode, rust.returncode) == (2, 2), python.stderr + rust.stderr
