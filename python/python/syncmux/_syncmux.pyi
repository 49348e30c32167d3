"""Type stubs of the native module: the syncmux state machines (Rust, PyO3)."""

from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

JSON = Any
"""Any value `json.dumps` takes: dict, list, str, int, float, bool, None."""
Hlc = Union[str, Dict[str, Any]]
"""An HLC: `"<ts>:<c>:<node>"` or `{"ts": int, "c": int, "node": str}`."""
ChangeRecord = Dict[str, Any]
"""`{table, pk, field, crdt_type, hlc, node_id, value?, ...}`; unknown fields are kept."""

PROTOCOL: str
"""The WebSocket subprotocol of protocol version 1, `syncmux.v1`."""

class SyncmuxError(Exception):
    """Base of every syncmux error; `code` is the wire error code."""
    code: str
    message: str
    kind: str

class RequestError(SyncmuxError):
    """A request failed (refused at once, an error frame, `TIMEOUT`, `DISCONNECTED`)."""

class ConfigError(SyncmuxError):
    """A configuration that cannot work (`code` is `INVALID_CONFIG`)."""

# ----- client ------------------------------------------------------------------------

class Connect:
    """Open a WebSocket, then call `handle_connected` or `handle_disconnected`."""
    url: str
    url_with_token: str
    protocols: List[str]
    headers: List[Tuple[str, str]]
    token: Optional[str]

class Frame:
    """Send this text frame."""
    @property
    def data(self) -> bytes: ...
    @property
    def text(self) -> str: ...

class Close:
    """Close the WebSocket with `code` and `reason` (do not report it back)."""
    code: int
    reason: str

class Connected:
    """The transport opened."""

class Disconnected:
    """The transport closed or a dial failed."""
    code: Optional[int]
    reason: str

class Reconnecting:
    """The client dials again after `delay` seconds."""
    attempt: int
    delay: float

class Closed:
    """Closed for good: `reason` is `local`, `server`, `protocol_mismatch` or `max_attempts`."""
    reason: str
    code: Optional[int]
    message: str

class Error:
    """An error frame that answers no request, or a frame the client could not read."""
    code: str
    message: str

class Response:
    """The one outcome of request `id`."""
    id: int
    kind: Optional[str]
    value: JSON
    error: Optional[RequestError]
    @property
    def ok(self) -> bool: ...
    def result(self) -> JSON:
        """The value, or raises the `RequestError`."""

class Changes:
    """Live changes, with the subscriptions that asked for them and the frame's cursor."""
    subscriptions: List[int]
    changes: List[ChangeRecord]
    cursor: Optional[str]

class Presence:
    """A presence member joined, updated or left."""
    kind: str
    node_id: str
    topic: str
    data: JSON

class Room:
    """A room event: `members`, `join`, `leave` or `message`."""
    event: str
    room: str
    node_id: Optional[str]
    data: JSON
    members: Optional[List[Dict[str, Any]]]

class ResyncNeeded:
    """Restored subscriptions could not resume without a gap."""
    tables: List[str]

ClientTransmit = Union[Connect, Frame, Close]
ClientEvent = Union[Connected, Disconnected, Reconnecting, Closed, Error, Response, Changes, Presence, Room, ResyncNeeded]

class Client:
    """The client state machine. `None` keyword arguments keep the Rust defaults."""
    def __init__(
        self,
        url: str,
        node_id: str,
        *,
        token: Optional[str] = None,
        reconnect_delay: Optional[float] = None,
        max_reconnect_delay: Optional[float] = None,
        max_reconnect_attempts: Optional[int] = None,
        terminal_close_codes: Optional[Sequence[int]] = None,
        healthy_after: Optional[float] = None,
        ping_interval: Optional[float] = None,
        pong_timeout: Optional[float] = None,
        request_timeout: Optional[float] = None,
        resend_idempotent: Optional[bool] = None,
        resume_with_cursor: Optional[bool] = None,
        max_in_flight: Optional[int] = None,
        max_offline_queue: Optional[int] = None,
        max_queued_events: Optional[int] = None,
        max_queued_transmits: Optional[int] = None,
        max_subscriptions: Optional[int] = None,
        max_presence_topics: Optional[int] = None,
        max_rooms: Optional[int] = None,
        max_frame_len: Optional[int] = None,
        seed: Optional[int] = None,
    ) -> None: ...
    @property
    def config(self) -> Dict[str, Any]: ...
    @property
    def state(self) -> str: ...
    @property
    def reconnect_attempt(self) -> int: ...
    @property
    def cursor(self) -> Optional[str]: ...
    def newest_hlc(self, table: str) -> Optional[Dict[str, Any]]: ...
    def stats(self) -> Dict[str, int]: ...
    def set_token(self, token: Optional[str]) -> None: ...
    def poll_transmit(self) -> Optional[ClientTransmit]: ...
    def poll_event(self) -> Optional[ClientEvent]: ...
    def poll_timeout(self) -> Optional[float]: ...
    def handle_connected(self, now: float, protocol: Optional[str] = None) -> None: ...
    def handle_message(self, now: float, data: Union[str, bytes]) -> None: ...
    def handle_binary(self, now: float, length: int) -> None: ...
    def handle_disconnected(self, now: float, code: Optional[int] = None, reason: str = "") -> None: ...
    def handle_timeout(self, now: float) -> None: ...
    def connect(self, now: float) -> None: ...
    def close(self, now: float) -> None: ...
    def pull(self, now: float, tables: Sequence[str], *, since: Optional[Hlc] = None, cursor: Optional[str] = None) -> int: ...
    def push(self, now: float, changes: Sequence[ChangeRecord]) -> int: ...
    def subscribe(self, now: float, tables: Sequence[str], *, since: Optional[Hlc] = None, cursor: Optional[str] = None) -> int: ...
    def unsubscribe(self, now: float, tables: Sequence[str]) -> int: ...
    def update_presence(self, now: float, topic: str, data: JSON) -> int: ...
    def leave_presence(self, now: float, topic: str) -> int: ...
    def get_presence(self, now: float, topic: str) -> int: ...
    def join_room(self, now: float, room: str, data: JSON = None) -> int: ...
    def leave_room(self, now: float, room: str) -> int: ...
    def broadcast(self, now: float, room: str, data: JSON) -> int: ...
    def ping(self, now: float, payload: JSON = None) -> int: ...

# ----- server ------------------------------------------------------------------------

class SessionId:
    """A session (one WebSocket connection); hashable, `int()` gives its number."""
    def __int__(self) -> int: ...
    def __hash__(self) -> int: ...

class PullId:
    """A pull to answer with `Server.answer_pull`."""
    def __int__(self) -> int: ...

class PushId:
    """A push to answer with `Server.answer_push`."""
    def __int__(self) -> int: ...

class ReplayId:
    """A replay to answer with `Server.answer_replay`."""
    def __int__(self) -> int: ...

class Accept:
    """Upgrade, selecting `protocol` when set."""
    session: SessionId
    node_id: str
    protocol: Optional[str]

class Reject:
    """Refuse the upgrade with this HTTP status."""
    status: int
    reason: str

class SessionFrame:
    """Send this text frame to `session`."""
    @property
    def session(self) -> SessionId: ...
    @property
    def data(self) -> bytes: ...
    @property
    def text(self) -> str: ...

class SessionClose:
    """Close the socket of `session`."""
    session: SessionId
    code: int
    reason: str

class SessionOpened:
    session: SessionId
    node_id: str

class SessionClosed:
    session: SessionId
    node_id: str
    code: Optional[int]

class Pull:
    request: PullId
    session: SessionId
    node_id: str
    tables: List[str]
    since: Optional[Dict[str, Any]]
    cursor: Optional[str]

class Push:
    request: PushId
    session: SessionId
    node_id: str
    changes: List[ChangeRecord]

class Replay:
    request: ReplayId
    session: SessionId
    tables: List[str]
    since: Optional[Dict[str, Any]]
    cursor: Optional[str]
    head_only: bool

ServerTransmit = Union[SessionFrame, SessionClose]
ServerEvent = Union[SessionOpened, SessionClosed, Pull, Push, Replay]
Positioned = Sequence[Tuple[str, ChangeRecord]]

class Server:
    """The server state machine, with the embedded store unless `store=False`."""
    def __init__(
        self,
        *,
        store: bool = True,
        store_epoch: Optional[int] = None,
        store_retention: Optional[int] = None,
        token: Optional[str] = None,
        path: Optional[str] = None,
        allowed_origins: Optional[Sequence[str]] = None,
        presence: Optional[bool] = None,
        max_sessions: Optional[int] = None,
        max_frame_len: Optional[int] = None,
        max_oversized_frames: Optional[int] = None,
        max_invalid_frames: Optional[int] = None,
        max_in_flight: Optional[int] = None,
        max_subscriptions: Optional[int] = None,
        max_topics: Optional[int] = None,
        max_rooms: Optional[int] = None,
        max_room_size: Optional[int] = None,
        max_outbound_bytes: Optional[int] = None,
        reports_writes: Optional[bool] = None,
        max_changes_per_frame: Optional[int] = None,
        rate_limit_burst: Optional[int] = None,
        rate_limit_window: Optional[float] = None,
        idle_timeout: Optional[float] = None,
        presence_ttl: Optional[float] = None,
        ping_interval: Optional[float] = None,
        seed: Optional[int] = None,
    ) -> None: ...
    @property
    def config(self) -> Dict[str, Any]: ...
    @property
    def session_count(self) -> int: ...
    @property
    def store_head(self) -> Optional[str]: ...
    @property
    def store_len(self) -> Optional[int]: ...
    def is_open(self, session: SessionId) -> bool: ...
    def node_id(self, session: SessionId) -> Optional[str]: ...
    def subscriptions(self, session: SessionId) -> List[str]: ...
    def handle_handshake(
        self,
        now: float,
        path: str,
        query: str = "",
        headers: Optional[Sequence[Tuple[str, str]]] = None,
        protocols: Optional[Sequence[str]] = None,
        origin: Optional[str] = None,
    ) -> Union[Accept, Reject]: ...
    def handle_message(self, now: float, session: SessionId, data: Union[str, bytes]) -> None: ...
    def handle_binary(self, now: float, session: SessionId, length: int) -> None: ...
    def handle_disconnected(self, now: float, session: SessionId) -> None: ...
    def handle_sent(self, now: float, session: SessionId, length: int) -> None: ...
    def handle_timeout(self, now: float) -> None: ...
    def close_session(self, now: float, session: SessionId, code: int = 1000, reason: str = "") -> None: ...
    def shutdown(self, now: float) -> None: ...
    def answer_pull(self, now: float, request: PullId, changes: Optional[Positioned] = None, *, latest_hlc: Optional[Hlc] = None, head: str = "0.0", complete: bool = True, error: Optional[str] = None, unavailable: bool = False) -> None: ...
    def answer_replay(self, now: float, request: ReplayId, changes: Optional[Positioned] = None, *, latest_hlc: Optional[Hlc] = None, head: str = "0.0", complete: bool = True, error: Optional[str] = None, unavailable: bool = False) -> None: ...
    def answer_push(self, now: float, request: PushId, accepted: Optional[Positioned] = None, *, latest_hlc: Optional[Hlc] = None, head: str = "0.0", error: Optional[str] = None, unavailable: bool = False) -> None: ...
    def poll_transmit(self) -> Optional[ServerTransmit]: ...
    def poll_event(self) -> Optional[ServerEvent]: ...
    def poll_timeout(self) -> Optional[float]: ...
