"""asyncio over the syncmux state machines, with the ``websockets`` package.

``await connect(url, node_id, ...)`` gives an :class:`AsyncClient` whose requests are
awaitables and whose events are an async iterator; reconnect, backoff, keepalive and resume
are all the state machine's (``syncmux.Client``): this module only owns the socket, the clock
and the tasks. ``serve(host, port, ...)`` runs ``syncmux.Server`` with the embedded store,
deciding every handshake with the state machine (subprotocol, version, token, node id, path).

The time given to the state machines is ``time.monotonic()``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, AsyncIterator, Callable, Dict, List, Optional, Tuple, Union

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as _ws_connect
from websockets.asyncio.server import ServerConnection
from websockets.asyncio.server import serve as _ws_serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request

from ._syncmux import (
    Accept,
    Client,
    Close,
    Closed,
    Connect,
    Connected,
    Frame,
    Reject,
    Response,
    Server,
    SessionClose,
    SessionFrame,
    SessionId,
)

__all__ = ["AsyncClient", "AsyncServer", "connect", "serve"]

# The WebSocket layer's read limit is derived from the state machine's frame limit, as the
# Rust adapters do: twice it and never below 16 MiB, so that an oversized frame still reaches
# the state machine and gets its answer (FRAME_TOO_LARGE, then 1009) instead of a dropped
# connection; 0 (no limit) stays no limit.
_WS_DEFAULT_MAX_FRAME = 16 << 20


def _ws_read_limit(max_frame_len: int) -> Optional[int]:
    if max_frame_len == 0:
        return None
    return max(2 * max_frame_len, _WS_DEFAULT_MAX_FRAME)


def _now() -> float:
    return time.monotonic()


_END = object()


class AsyncClient:
    """A :class:`syncmux.Client` driven over a WebSocket by one asyncio task.

    Requests (``pull``, ``push``, ``subscribe``, ...) are coroutines that return the
    response payload (a dict, or ``None`` for a plain ack) or raise
    :class:`syncmux.RequestError` carrying the wire ``code``. Everything else the state
    machine reports (``Connected``, ``Changes``, ``Presence``, ``Room``, ``Closed``, ...) comes
    out of ``async for event in client``. At most ``max_events`` events wait unread; beyond
    that the client stops taking events from the state machine, whose own bound
    (``max_queued_events``) then applies, so read them (or pass ``events=False`` to drop
    everything but request outcomes).
    """

    def __init__(self, client: Client, *, events: bool = True, max_events: int = 1024) -> None:
        self._sm = client
        self._keep_events = events
        self._events: asyncio.Queue[Any] = asyncio.Queue(maxsize=max(1, max_events))
        self._futures: Dict[int, asyncio.Future[Any]] = {}
        self._wake = asyncio.Event()
        self._ws: Optional[ClientConnection] = None
        self._dial: Optional[asyncio.Task[None]] = None
        self._opened = asyncio.Event()
        self._closed: Optional[Closed] = None
        self._read_limit = _ws_read_limit(client.config["max_frame_len"])
        self._task = asyncio.get_running_loop().create_task(self._run())

    @property
    def state_machine(self) -> Client:
        """The state machine (for its ``state``, ``cursor``, ``stats()``, ...)."""
        return self._sm

    @property
    def state(self) -> str:
        """``"idle"``, ``"connecting"``, ``"open"``, ``"waiting_to_reconnect"``, ``"closed"``."""
        return self._sm.state

    # ----- requests ---------------------------------------------------------------------

    async def _request(self, command: Callable[..., int], *args: Any, **kwargs: Any) -> Any:
        if self._task.done():
            raise RuntimeError("the client has stopped")
        request = command(_now(), *args, **kwargs)  # a local refusal raises here
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._futures[request] = future
        self._wake.set()
        return await future

    async def pull(self, tables: List[str], *, since: Any = None, cursor: Optional[str] = None) -> Dict[str, Any]:
        """The changes of ``tables`` after ``cursor`` (else ``since``, else all)."""
        return await self._request(self._sm.pull, tables, since=since, cursor=cursor)

    async def push(self, changes: List[Dict[str, Any]]) -> Dict[str, Any]:
        """Pushes change records (dicts) as this node; ``{"merged", "latest_hlc", "cursor"}``."""
        return await self._request(self._sm.push, changes)

    async def subscribe(self, tables: List[str], *, since: Any = None, cursor: Optional[str] = None) -> Optional[Dict[str, Any]]:
        """Subscribes; the ack's ``{"recovered", "cursor"}``. Changes arrive as events."""
        return await self._request(self._sm.subscribe, tables, since=since, cursor=cursor)

    async def unsubscribe(self, tables: List[str]) -> None:
        """Unsubscribes from ``tables``."""
        return await self._request(self._sm.unsubscribe, tables)

    async def update_presence(self, topic: str, data: Any) -> None:
        """Joins or updates ``topic`` with ``data`` (``None`` leaves)."""
        return await self._request(self._sm.update_presence, topic, data)

    async def leave_presence(self, topic: str) -> None:
        """Leaves ``topic``."""
        return await self._request(self._sm.leave_presence, topic)

    async def get_presence(self, topic: str) -> Dict[str, Any]:
        """The snapshot of ``topic``: ``{"topic", "states": [...]}``."""
        return await self._request(self._sm.get_presence, topic)

    async def join_room(self, room: str, data: Any = None) -> None:
        """Joins ``room``; the member list arrives as a ``Room`` event."""
        return await self._request(self._sm.join_room, room, data)

    async def leave_room(self, room: str) -> None:
        """Leaves ``room``."""
        return await self._request(self._sm.leave_room, room)

    async def broadcast(self, room: str, data: Any) -> None:
        """Sends ``data`` to the other members of ``room``."""
        return await self._request(self._sm.broadcast, room, data)

    async def ping(self, payload: Any = None) -> Any:
        """Pings the server; the echoed payload."""
        return await self._request(self._sm.ping, payload)

    # ----- lifecycle --------------------------------------------------------------------

    async def wait_open(self) -> None:
        """Waits until the connection is open; raises ``ConnectionError`` if the client
        closes for good first."""
        while not self._opened.is_set():
            if self._task.done():
                raise ConnectionError(self._closed_message())
            waiter = asyncio.ensure_future(self._opened.wait())
            await asyncio.wait([waiter, self._task], return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()

    def _closed_message(self) -> str:
        closed = self._closed
        if closed is None:
            return "client stopped"
        return f"closed ({closed.reason}, code {closed.code}): {closed.message}"

    async def close(self) -> None:
        """Closes for good (1000) and waits for the driving task to end."""
        if not self._task.done():
            self._sm.close(_now())
            self._wake.set()
        try:
            await self._task
        finally:
            await self._drop_socket()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    def __aiter__(self) -> AsyncIterator[Any]:
        return self

    async def __anext__(self) -> Any:
        event = await self._events.get()
        self._wake.set()  # room for more
        if event is _END:
            self._events.put_nowait(_END)  # every later call ends too
            raise StopAsyncIteration
        return event

    # ----- the driving task -------------------------------------------------------------

    async def _run(self) -> None:
        try:
            while True:
                self._wake.clear()
                await self._flush()
                if self._sm.state == "closed":
                    # Closed for good: what is left of the connection goes with it.
                    await self._drop_socket()
                    break
                deadline = self._sm.poll_timeout()
                delay = None if deadline is None else max(0.0, deadline - _now())
                try:
                    await asyncio.wait_for(self._wake.wait(), delay)
                except asyncio.TimeoutError:
                    self._sm.handle_timeout(_now())
        finally:
            for future in self._futures.values():
                if not future.done():
                    future.set_exception(ConnectionError(self._closed_message()))
            self._futures.clear()
            while self._events.full():  # the end marker always gets in
                self._events.get_nowait()
            self._events.put_nowait(_END)

    async def _flush(self) -> None:
        while True:
            transmit = self._sm.poll_transmit()
            if transmit is None:
                break
            if isinstance(transmit, Frame):
                ws = self._ws
                if ws is not None:
                    try:
                        await ws.send(transmit.data, text=True)
                    except ConnectionClosed:
                        pass  # the reader reports the close
            elif isinstance(transmit, Connect):
                await self._drop_socket()
                self._dial = asyncio.get_running_loop().create_task(self._connection(transmit))
            elif isinstance(transmit, Close):
                # The state machine already counts the connection as gone: its reader must
                # not report it again.
                ws, self._ws = self._ws, None
                if ws is not None:
                    await ws.close(transmit.code, transmit.reason)
        while not self._events.full():
            event = self._sm.poll_event()
            if event is None:
                break
            if isinstance(event, Response):
                future = self._futures.pop(event.id, None)
                if future is not None and not future.done():
                    if event.error is not None:
                        future.set_exception(event.error)
                    else:
                        future.set_result(event.value)
                continue
            if isinstance(event, Connected):
                self._opened.set()
            if isinstance(event, Closed):
                self._closed = event
            if self._keep_events:
                self._events.put_nowait(event)

    async def _drop_socket(self) -> None:
        dial, self._dial = self._dial, None
        ws, self._ws = self._ws, None
        if dial is not None and dial is not asyncio.current_task():
            dial.cancel()
        if ws is not None:
            await ws.close()

    async def _connection(self, dial: Connect) -> None:
        """Dials, then reads until the socket closes; reports both to the state machine."""
        me = asyncio.current_task()
        try:
            ws = await _ws_connect(
                dial.url,
                subprotocols=dial.protocols,  # type: ignore[arg-type]
                additional_headers=dial.headers,
                max_size=self._read_limit,
                ping_interval=None,  # keepalive is the state machine's
                compression=None,
            )
        except asyncio.CancelledError:
            raise
        except Exception as e:  # any dial failure is a failed attempt: the state machine backs off
            if self._dial is me:
                self._dial = None
                self._sm.handle_disconnected(_now(), None, f"dial failed: {e}")
                self._wake.set()
            return
        if self._dial is not me:
            await ws.close()
            return
        self._ws = ws
        self._sm.handle_connected(_now(), ws.subprotocol)
        self._wake.set()
        try:
            async for message in ws:
                if self._ws is not ws:
                    break
                if isinstance(message, str):
                    self._sm.handle_message(_now(), message)
                else:
                    self._sm.handle_binary(_now(), len(message))
                self._wake.set()
        except ConnectionClosed:
            pass
        finally:
            if self._dial is me:
                self._dial = None
                self._wake.set()
            if self._ws is ws:
                self._ws = None
                received = ws.protocol.close_rcvd
                code = received.code if received is not None else None
                reason = received.reason if received is not None else "connection closed"
                self._sm.handle_disconnected(_now(), code, reason)
                self._wake.set()


async def connect(
    url: str,
    node_id: str,
    *,
    wait: bool = True,
    events: bool = True,
    max_events: int = 1024,
    **config: Any,
) -> AsyncClient:
    """A connected :class:`AsyncClient` for the server at ``url`` as ``node_id``.

    ``config`` are the keyword arguments of :class:`syncmux.Client` (``token``,
    ``reconnect_delay``, ``ping_interval``, ...). With ``wait`` (the default) it returns once
    the connection is open, retrying with backoff, and raises ``ConnectionError`` if the
    client closes for good first (a 4401, 4403 or 4426 close, or ``max_reconnect_attempts``).
    """
    client = AsyncClient(Client(url, node_id, **config), events=events, max_events=max_events)
    client._sm.connect(_now())
    client._wake.set()
    if wait:
        try:
            await client.wait_open()
        except BaseException:
            await client.close()
            raise
    return client


class _Session:
    """One accepted connection: its frames to write, in order, with a close at the end."""

    def __init__(self, session: SessionId, protocol: Optional[str]) -> None:
        self.session = session
        self.protocol = protocol
        self.outbox: asyncio.Queue[Union[bytes, Tuple[int, str]]] = asyncio.Queue()
        self.closed_by_server = False


class AsyncServer:
    """A :class:`syncmux.Server` on a ``websockets`` listener. Use :func:`serve`."""

    def __init__(self, server: Server, *, on_event: Optional[Callable[[Any], None]] = None) -> None:
        self._sm = server
        self._on_event = on_event
        self._sessions: Dict[SessionId, _Session] = {}
        self._wake = asyncio.Event()
        self._ws_server: Any = None
        self._task: Optional[asyncio.Task[None]] = None
        self._stopping = False

    @property
    def state_machine(self) -> Server:
        """The state machine (``session_count``, ``store_len``, ...)."""
        return self._sm

    @property
    def address(self) -> Tuple[str, int]:
        """The bound host and port (the real port when asked for 0)."""
        sock = self._ws_server.sockets[0]
        host, port = sock.getsockname()[:2]
        return host, port

    async def start(self, host: str, port: int, **ws_options: Any) -> "AsyncServer":
        self._task = asyncio.get_running_loop().create_task(self._run())
        self._ws_server = await _ws_serve(
            self._handler,
            host,
            port,
            process_request=self._decide,
            select_subprotocol=self._subprotocol,
            max_size=_ws_read_limit(self._sm.config["max_frame_len"]),
            ping_interval=None,  # the state machine pings and times out idle sessions
            compression=None,
            **ws_options,
        )
        return self

    async def close(self, timeout: float = 5.0) -> None:
        """Closes every session with 1001, waits (at most ``timeout``) for their closes to
        go out, and stops listening."""
        if self._stopping:
            return
        self._stopping = True
        self._sm.shutdown(_now())
        self._wake.set()
        self._ws_server.close(close_connections=False)
        try:
            await asyncio.wait_for(self._ws_server.wait_closed(), timeout)
        except asyncio.TimeoutError:
            pass
        if self._task is not None:
            self._task.cancel()

    def close_session(self, session: SessionId, code: int = 1000, reason: str = "") -> None:
        """Closes one session with ``code`` (the state machine's ``close_session``)."""
        self._sm.close_session(_now(), session, code, reason)
        self._wake.set()

    async def serve_forever(self) -> None:
        """Serves until cancelled (or closed)."""
        await self._ws_server.serve_forever()

    async def __aenter__(self) -> "AsyncServer":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    # ----- the handshake: the state machine decides ------------------------------------

    def _decide(self, connection: ServerConnection, request: Request) -> Any:
        path, _, query = request.path.partition("?")
        headers = [(name, value) for name, value in request.headers.raw_items()]
        protocols = request.headers.get_all("Sec-WebSocket-Protocol")
        origin = request.headers.get("Origin")
        outcome = self._sm.handle_handshake(_now(), path, query, headers, protocols, origin)
        self._wake.set()
        if isinstance(outcome, Reject):
            return connection.respond(outcome.status, outcome.reason + "\n")
        assert isinstance(outcome, Accept)
        # Registered now: a session whose version does not match already has its error
        # frame and close queued, and they must find it.
        session = _Session(outcome.session, outcome.protocol)
        self._sessions[outcome.session] = session
        connection.syncmux_session = session  # type: ignore[attr-defined]
        return None

    def _subprotocol(self, connection: ServerConnection, offered: Any) -> Optional[str]:
        session = getattr(connection, "syncmux_session", None)
        return session.protocol if session is not None else None

    async def _handler(self, connection: ServerConnection) -> None:
        session: Optional[_Session] = getattr(connection, "syncmux_session", None)
        if session is None:
            return
        writer = asyncio.get_running_loop().create_task(self._write(connection, session))
        sm = self._sm
        try:
            async for message in connection:
                if session.closed_by_server:
                    break
                if isinstance(message, str):
                    sm.handle_message(_now(), session.session, message)
                else:
                    sm.handle_binary(_now(), session.session, len(message))
                self._wake.set()
        except ConnectionClosed:
            pass
        finally:
            if not session.closed_by_server:
                self._sessions.pop(session.session, None)
                sm.handle_disconnected(_now(), session.session)
                self._wake.set()
                writer.cancel()
            try:
                await writer
            except asyncio.CancelledError:
                pass

    async def _write(self, connection: ServerConnection, session: _Session) -> None:
        while True:
            item = await session.outbox.get()
            if isinstance(item, tuple):
                code, reason = item
                await connection.close(code, reason)
                return
            try:
                await connection.send(item, text=True)
            except ConnectionClosed:
                return
            self._sm.handle_sent(_now(), session.session, len(item))
            self._wake.set()

    # ----- the driving task -------------------------------------------------------------

    async def _run(self) -> None:
        sm = self._sm
        while True:
            self._wake.clear()
            while True:
                transmit = sm.poll_transmit()
                if transmit is None:
                    break
                if isinstance(transmit, SessionFrame):
                    session = self._sessions.get(transmit.session)
                    if session is not None:
                        session.outbox.put_nowait(transmit.data)
                elif isinstance(transmit, SessionClose):
                    session = self._sessions.pop(transmit.session, None)
                    if session is not None:
                        session.closed_by_server = True
                        session.outbox.put_nowait((transmit.code, transmit.reason))
            while True:
                event = sm.poll_event()
                if event is None:
                    break
                if self._on_event is not None:
                    self._on_event(event)
            deadline = sm.poll_timeout()
            delay = None if deadline is None else max(0.0, deadline - _now())
            try:
                await asyncio.wait_for(self._wake.wait(), delay)
            except asyncio.TimeoutError:
                sm.handle_timeout(_now())


class _Serve:
    """What :func:`serve` returns: await it, or use it as ``async with``."""

    def __init__(self, host: str, port: int, server: Server, on_event: Any, ws_options: Dict[str, Any]) -> None:
        self._args = (host, port)
        self._server = AsyncServer(server, on_event=on_event)
        self._ws_options = ws_options

    def __await__(self) -> Any:
        return self._server.start(*self._args, **self._ws_options).__await__()

    async def __aenter__(self) -> AsyncServer:
        return await self._server.start(*self._args, **self._ws_options)

    async def __aexit__(self, *exc: Any) -> None:
        await self._server.close()


def serve(
    host: str,
    port: int,
    *,
    on_event: Optional[Callable[[Any], None]] = None,
    ws_options: Optional[Dict[str, Any]] = None,
    **config: Any,
) -> _Serve:
    """Serves the sync protocol on ``host:port`` (port 0 picks a free one) with the embedded
    store: ``server = await serve(...)`` or ``async with serve(...) as server``.

    ``config`` are the keyword arguments of :class:`syncmux.Server` (``token``,
    ``rate_limit_burst``, ``max_frame_len``, ``idle_timeout``, ``path``, ...); the adapter
    reports what its sockets wrote (``reports_writes=True``), so a slow consumer is closed
    with 4503. ``on_event`` sees every server event (``SessionOpened``, ...).
    """
    config.setdefault("reports_writes", True)
    return _Serve(host, port, Server(**config), on_event, ws_options or {})
