#!/usr/bin/env python3
"""The sync server on the embedded store, in Python: the Rust example server's main flags.

    python examples/server.py [--listen 127.0.0.1:8787] [--token T] [--rate-limit N/SECS|0]
        [--max-frame BYTES] [--max-outbound BYTES] [--ping-interval MS] [--idle-timeout MS]
        [--presence-ttl MS] [--room-max N] [--max-connections N]

Every flag can also come from the same environment variable as the Rust server's
(``SYNCMUX_LISTEN``, ``SYNCMUX_TOKEN``, ...). Serves ``ws://ADDR/sync/ws`` and prints
``listening on ws://ADDR/sync/ws`` once ready (the real port when given port 0). Every
handshake is decided by the state machine (``syncmux.Server``), as in the Rust server:
subprotocol selection, 4426 on a version mismatch, HTTP 401 for a missing or wrong token
(header, ``access_token`` or ``token`` query), 404 off the path. On SIGINT or SIGTERM it
closes every session with 1001 and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
from typing import Any, Dict, Optional

from syncmux import ConfigError, aio

WS_PATH = "/sync/ws"


def _millis(value: str) -> float:
    try:
        return int(value) / 1000.0
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number of milliseconds")


def _count(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number")
    return n


def _rate_limit(value: str) -> tuple:
    if value == "0":
        return 0, 60  # a burst of 0 turns the limit off
    bad = argparse.ArgumentTypeError(f"{value!r} is not N/SECS (for example 100/60) or 0")
    n, sep, secs = value.partition("/")
    if not sep:
        raise bad
    try:
        return int(n), int(secs)
    except ValueError:
        raise bad


def _env(name: str) -> Optional[str]:
    return os.environ.get("SYNCMUX_" + name)


def parse(argv: Optional[list] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="server.py", description=__doc__.split("\n")[0])
    p.add_argument("--listen", default=_env("LISTEN") or "127.0.0.1:8787", metavar="ADDR",
                   help="address to listen on; port 0 picks a free port [env SYNCMUX_LISTEN]")
    p.add_argument("--token", default=_env("TOKEN"), metavar="T",
                   help="require this token from every client [env SYNCMUX_TOKEN]")
    p.add_argument("--rate-limit", type=_rate_limit, default=_env("RATE_LIMIT"), metavar="N/SECS|0",
                   help="per-session token bucket; 0 disables it [default: 100/60]")
    p.add_argument("--max-frame", type=_count, default=_env("MAX_FRAME"), metavar="BYTES",
                   help="longest frame in bytes [default: 1048576]")
    p.add_argument("--max-outbound", type=_count, default=_env("MAX_OUTBOUND"), metavar="BYTES",
                   help="bytes queued for one session before it is closed 4503 [default: 8388608]")
    p.add_argument("--ping-interval", type=_millis, default=_env("PING_INTERVAL"), metavar="MS",
                   help="ping a session silent this long [default: 30000]")
    p.add_argument("--idle-timeout", type=_millis, default=_env("IDLE_TIMEOUT"), metavar="MS",
                   help="close a session silent this long (4408) [default: 90000]")
    p.add_argument("--presence-ttl", type=_millis, default=_env("PRESENCE_TTL"), metavar="MS",
                   help="presence expires after this long without a frame [default: 60000]")
    p.add_argument("--room-max", type=_count, default=_env("ROOM_MAX"), metavar="N",
                   help="most members of one room [default: 1000]")
    p.add_argument("--max-connections", type=_count, default=_env("MAX_CONNECTIONS"), metavar="N",
                   help="most sessions at once; beyond it an upgrade gets HTTP 503 [default: 100000]")
    args = p.parse_args(argv)
    # Values from the environment come in as strings: parse them as the flags are.
    for name, kind in [("rate_limit", _rate_limit), ("max_frame", _count), ("max_outbound", _count),
                       ("ping_interval", _millis), ("idle_timeout", _millis),
                       ("presence_ttl", _millis), ("room_max", _count), ("max_connections", _count)]:
        value = getattr(args, name)
        if isinstance(value, str):
            try:
                setattr(args, name, kind(value))
            except argparse.ArgumentTypeError as e:
                p.error(str(e))
    return args


def config(args: argparse.Namespace) -> Dict[str, Any]:
    c: Dict[str, Any] = {"path": WS_PATH, "token": args.token}
    if args.rate_limit is not None:
        c["rate_limit_burst"], c["rate_limit_window"] = args.rate_limit
    for flag, key in [("max_frame", "max_frame_len"), ("max_outbound", "max_outbound_bytes"),
                      ("ping_interval", "ping_interval"), ("idle_timeout", "idle_timeout"),
                      ("presence_ttl", "presence_ttl"), ("room_max", "max_room_size"),
                      ("max_connections", "max_sessions")]:
        value = getattr(args, flag)
        if value is not None:
            c[key] = value
    # A fresh epoch per start, as the Rust server: cursors of an earlier run are stale.
    c["store_epoch"] = int(time.time() * 1000)
    return c


async def main() -> int:
    args = parse()
    host, _, port = args.listen.rpartition(":")
    try:
        serving = aio.serve(host.strip("[]") or "127.0.0.1", int(port), **config(args))
    except (ConfigError, ValueError) as e:
        print(f"server.py: error: {e}", file=sys.stderr)
        return 2
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        server = await serving
    except OSError as e:
        print(f"error: cannot listen on {args.listen}: {e}", file=sys.stderr)
        return 1
    bound_host, bound_port = server.address
    if ":" in bound_host:
        bound_host = f"[{bound_host}]"
    print(f"listening on ws://{bound_host}:{bound_port}{WS_PATH}", flush=True)
    await stop.wait()
    await server.close()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
