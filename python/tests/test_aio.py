"""syncmux.aio over real sockets in one process: reconnect and resume are the state
machine's, the adapter only carries them out."""

from __future__ import annotations

import ast
import asyncio
from pathlib import Path
from typing import Any, List

import syncmux
from syncmux import _syncmux, aio

GUARD = 15.0


async def until(client: aio.AsyncClient, kind: type, seen: List[Any]) -> Any:
    async def find() -> Any:
        async for event in client:
            seen.append(event)
            if isinstance(event, kind):
                return event
        raise AssertionError(f"no {kind.__name__}; seen {seen}")
    return await asyncio.wait_for(find(), GUARD)


def record(pk: str, ts: int) -> dict:
    return {"table": "docs", "pk": pk, "field": "f", "crdt_type": "lww", "hlc": f"{ts}:0:bob", "node_id": "bob", "value": pk}


def test_a_cut_client_reconnects_with_backoff_and_resumes_from_its_cursor() -> None:
    async def run() -> None:
        opened: dict = {}

        def on_event(event: Any) -> None:
            if isinstance(event, syncmux.SessionOpened):
                opened.setdefault(event.node_id, []).append(event.session)

        async with aio.serve("127.0.0.1", 0, on_event=on_event) as server:
            url = "ws://%s:%d/sync/ws" % server.address
            alice = await aio.connect(url, "alice", reconnect_delay=0.05, max_reconnect_delay=0.1)
            bob = await aio.connect(url, "bob", events=False)
            await alice.subscribe(["docs"])
            await bob.push([record("1", 1)])
            seen: List[Any] = []
            first = await until(alice, syncmux.Changes, seen)
            assert [c["pk"] for c in first.changes] == ["1"]

            server.close_session(opened["alice"][0], 1012, "restart")
            await until(alice, syncmux.Reconnecting, seen)
            await bob.push([record("2", 0)])  # while alice is away, with an old HLC
            again = await until(alice, syncmux.Changes, seen)
            assert [c["pk"] for c in again.changes] == ["2"]  # no gap, no duplicate
            kinds = [type(e).__name__ for e in seen]
            assert kinds == ["Connected", "Changes", "Disconnected", "Reconnecting", "Connected", "Changes"]
            assert seen[2].code == 1012
            assert len(opened["alice"]) == 2
            await alice.close()
            await bob.close()
            assert alice.state == "closed"
            assert [type(e).__name__ async for e in alice] == ["Disconnected", "Closed"]

    asyncio.run(run())


def test_keepalive_pings_come_from_the_state_machine() -> None:
    async def run() -> None:
        async with aio.serve("127.0.0.1", 0, ping_interval=0.1, idle_timeout=5.0) as server:
            url = "ws://%s:%d/sync/ws" % server.address
            client = await aio.connect(url, "alice", ping_interval=0.05, pong_timeout=1.0)
            before = client.state_machine.stats()
            await asyncio.sleep(0.3)  # a few keepalive rounds; no assertion on timing
            assert client.state == "open" and before["requests"] == 0
            await client.close()

    asyncio.run(run())


def test_the_stubs_name_every_class_of_the_native_module_with_docs() -> None:
    stub = Path(syncmux.__file__).with_name("_syncmux.pyi")
    tree = ast.parse(stub.read_text(encoding="utf-8"))
    stubbed = {n.name for n in tree.body if isinstance(n, ast.ClassDef)}
    native = {name for name in dir(_syncmux) if isinstance(getattr(_syncmux, name), type)}
    assert stubbed == native
    assert (Path(syncmux.__file__).with_name("py.typed")).exists()
    for name in ("Client", "Server", "Response", "Changes", "Accept", "RequestError"):
        assert getattr(_syncmux, name).__doc__, name
