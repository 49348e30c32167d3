"""Shared helpers: the in-memory harness (virtual time) and the real programs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, List, Optional

import pytest

import syncmux

PYTHON_DIR = Path(__file__).resolve().parent.parent
ROOT = PYTHON_DIR.parent


def need(what: str, ok: bool) -> None:
    """A missing tool fails the test under CI (CI set) and skips it loudly otherwise."""
    if ok:
        return
    if os.environ.get("CI"):
        pytest.fail(f"cannot run under CI: {what}")
    pytest.skip(f"SKIPPED: {what}")


def rust_example(name: str) -> Path:
    """The Rust binary for `name` (`server`: syncmux-server, `client`: syncmux-cli), built by
    ci.sh (`cargo build -p syncmux-server`)."""
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    for profile in ("debug", "release"):
        path = target / profile / {"server": "syncmux-server", "client": "syncmux-cli"}[name]
        if path.exists():
            return path
    need(f"the Rust binary for {name} is not built: cargo build -p syncmux-server", False)
    raise AssertionError("unreachable")


class Running:
    """A started program that printed `listening on URL` first; killed at the end."""

    def __init__(self, args: List[str]) -> None:
        env = dict(os.environ, RUST_LOG="warn")
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, env=env, text=True)
        assert self.proc.stdout is not None
        first = self.proc.stdout.readline().strip()
        assert first.startswith("listening on "), f"unexpected first line {first!r}"
        self.url = first[len("listening on "):]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_python_server(*flags: str) -> Running:
    return Running([sys.executable, str(PYTHON_DIR / "examples" / "server.py"), "--listen", "127.0.0.1:0", *flags])


def start_rust_server(*flags: str) -> Running:
    return Running([str(rust_example("server")), "--listen", "127.0.0.1:0", *flags])


@pytest.fixture(params=["python", "rust"])
def any_server(request: Any):
    """Each example server in turn: the same test must pass against both."""
    start = start_python_server if request.param == "python" else start_rust_server

    def run(*flags: str) -> Running:
        server = start(*flags)
        request.addfinalizer(server.stop)
        return server

    return run


# ----- the in-memory harness: a server, clients, and frames carried by hand -------------


class Pair:
    """A server and its clients on a virtual clock; `pump` carries frames both ways."""

    def __init__(self, **server_config: Any) -> None:
        self.now = 1.0
        self.server = syncmux.Server(**server_config)
        self.sessions: dict = {}  # client -> session
        self.events: dict = {}  # client -> events drained

    def client(self, node_id: str, **config: Any) -> syncmux.Client:
        client = syncmux.Client("ws://test/sync/ws", node_id, **config)
        self.events[client] = []
        return client

    def dial(self, client: syncmux.Client, connect: syncmux.Connect) -> Any:
        query = connect.url.split("?", 1)[1]
        outcome = self.server.handle_handshake(self.now, "/sync/ws", query, connect.headers, connect.protocols)
        if isinstance(outcome, syncmux.Accept):
            self.sessions[client] = outcome.session
            client.handle_connected(self.now, outcome.protocol)
        else:
            client.handle_disconnected(self.now, None, f"HTTP {outcome.status}")
        return outcome

    def cut(self, client: syncmux.Client) -> None:
        """The network drops the connection: both sides see it."""
        session = self.sessions.pop(client)
        self.server.handle_disconnected(self.now, session)
        client.handle_disconnected(self.now, 1006, "cut")

    def pump(self, *, dial: bool = True) -> None:
        for _ in range(1000):
            moved = False
            for client in list(self.events):
                while (t := client.poll_transmit()) is not None:
                    moved = True
                    if isinstance(t, syncmux.Connect):
                        if dial:
                            self.dial(client, t)
                    elif isinstance(t, syncmux.Frame):
                        if client in self.sessions:
                            self.server.handle_message(self.now, self.sessions[client], t.text)
                    elif isinstance(t, syncmux.Close):
                        session = self.sessions.pop(client, None)
                        if session is not None:
                            self.server.handle_disconnected(self.now, session)
                while (e := client.poll_event()) is not None:
                    self.events[client].append(e)
            by_session = {s: c for c, s in self.sessions.items()}
            while (t := self.server.poll_transmit()) is not None:
                moved = True
                client = by_session.get(t.session)
                if isinstance(t, syncmux.SessionFrame) and client is not None:
                    client.handle_message(self.now, t.data)
                elif isinstance(t, syncmux.SessionClose) and client is not None:
                    self.sessions.pop(client, None)
                    client.handle_disconnected(self.now, t.code, t.reason)
            if not moved:
                return
        raise AssertionError("livelock: frames still moving after 1000 rounds")

    def advance(self, to: float) -> None:
        """Jumps the clock to `to`, firing every deadline on the way in order."""
        while True:
            deadlines = [d for d in [c.poll_timeout() for c in self.events] + [self.server.poll_timeout()] if d is not None and d <= to]
            if not deadlines:
                break
            self.now = max(self.now, min(deadlines))
            for c in self.events:
                c.handle_timeout(self.now)
            self.server.handle_timeout(self.now)
            self.pump()
        self.now = to

    def take(self, client: syncmux.Client, kind: type) -> List[Any]:
        got = [e for e in self.events[client] if isinstance(e, kind)]
        self.events[client] = [e for e in self.events[client] if not isinstance(e, kind)]
        return got

    def response(self, client: syncmux.Client, request: int) -> syncmux.Response:
        for e in self.events[client]:
            if isinstance(e, syncmux.Response) and e.id == request:
                self.events[client].remove(e)
                return e
        raise AssertionError(f"no response to {request}: {self.events[client]}")


def change(pk: str, ts: int, node: str = "alice", value: Any = "v", **extra: Any) -> dict:
    return {"table": "docs", "pk": pk, "field": "title", "crdt_type": "lww",
            "hlc": f"{ts}:0:{node}", "node_id": node, "value": value, **extra}
