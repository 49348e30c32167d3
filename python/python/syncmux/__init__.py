"""syncmux: the sans-IO client and server state machines of the syncmux sync protocol.

The objects here are the Rust state machines (`syncmux` crate), in the style of h11 and
wsproto: they do no I/O and read no clock. Feed them inputs (``handle_*``, time as float
seconds from ``time.monotonic()``), issue commands (they return request ids at once), and
after every call drain ``poll_transmit()`` and ``poll_event()``, then call
``handle_timeout()`` at ``poll_timeout()``.

``syncmux.aio`` runs them over real WebSockets with asyncio and the ``websockets`` package.
"""

from ._syncmux import (
    PROTOCOL,
    Accept,
    Changes,
    Client,
    Close,
    Closed,
    ConfigError,
    Connect,
    Connected,
    Disconnected,
    Error,
    Frame,
    Presence,
    Pull,
    PullId,
    Push,
    PushId,
    Reconnecting,
    Reject,
    Replay,
    ReplayId,
    RequestError,
    Response,
    ResyncNeeded,
    Room,
    Server,
    SessionClose,
    SessionClosed,
    SessionFrame,
    SessionId,
    SessionOpened,
    SyncmuxError,
)

__all__ = [
    "PROTOCOL",
    "Accept",
    "Changes",
    "Client",
    "Close",
    "Closed",
    "ConfigError",
    "Connect",
    "Connected",
    "Disconnected",
    "Error",
    "Frame",
    "Presence",
    "Pull",
    "PullId",
    "Push",
    "PushId",
    "Reconnecting",
    "Reject",
    "Replay",
    "ReplayId",
    "RequestError",
    "Response",
    "ResyncNeeded",
    "Room",
    "Server",
    "SessionClose",
    "SessionClosed",
    "SessionFrame",
    "SessionId",
    "SessionOpened",
    "SyncmuxError",
]
