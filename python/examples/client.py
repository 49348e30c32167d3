#!/usr/bin/env python3
"""A command-line sync client in Python: the Rust example client's commands and JSON lines.

    python examples/client.py --url URL --node-id ID [--token T] [--reconnect-delay MS]
        [--max-reconnect-delay MS] [--ping-interval MS] [--request-timeout MS] COMMAND
    COMMAND: pull [--since HLC] [--cursor C] TABLE... | push FILE|-
           | subscribe [--since HLC] [--cursor C] TABLE...
           | presence TOPIC JSON | room ROOM [MESSAGE]

One JSON object per line on stdout, the same lines as the Rust client (``syncmux.aio`` on
the same state machine). ``subscribe``, ``presence`` and ``room`` (without a message) keep
running and print what arrives, across reconnects, until Ctrl-C; a refusal by the server (or
a close that ends reconnecting) stops them. Errors print their code and message and exit 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from typing import Any, Awaitable, Optional

import syncmux
from syncmux import RequestError, aio


def line(value: Any) -> None:
    # serde_json's compact form with sorted keys, as the Rust client prints.
    print(json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False), flush=True)


def fail(code: str, message: str) -> int:
    line({"error": {"code": code, "message": message}})
    return 1


def _millis(value: str) -> float:
    try:
        return int(value) / 1000.0
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number of milliseconds")


def parse() -> argparse.Namespace:
    env = os.environ.get
    p = argparse.ArgumentParser(prog="client.py", description=__doc__.split("\n")[0])
    p.add_argument("--url", default=env("SYNCMUX_URL"), required=env("SYNCMUX_URL") is None)
    p.add_argument("--node-id", default=env("SYNCMUX_NODE_ID"), required=env("SYNCMUX_NODE_ID") is None, metavar="ID")
    p.add_argument("--token", default=env("SYNCMUX_TOKEN"), metavar="T")
    for flag in ("reconnect-delay", "max-reconnect-delay", "ping-interval", "request-timeout"):
        var = "SYNCMUX_" + flag.upper().replace("-", "_")
        p.add_argument("--" + flag, type=_millis, default=env(var), metavar="MS")
    sub = p.add_subparsers(dest="command", required=True)
    pull = sub.add_parser("pull")
    pull.add_argument("--since")
    pull.add_argument("--cursor")
    pull.add_argument("tables", nargs="+", metavar="TABLE")
    push = sub.add_parser("push")
    push.add_argument("file")
    subscribe = sub.add_parser("subscribe")
    subscribe.add_argument("--since")
    subscribe.add_argument("--cursor")
    subscribe.add_argument("tables", nargs="+", metavar="TABLE")
    presence = sub.add_parser("presence")
    presence.add_argument("topic")
    presence.add_argument("json")
    room = sub.add_parser("room")
    room.add_argument("room")
    room.add_argument("message", nargs="?")
    args = p.parse_args()
    for name in ("reconnect_delay", "max_reconnect_delay", "ping_interval", "request_timeout"):
        value = getattr(args, name)
        if isinstance(value, str):  # from the environment
            try:
                setattr(args, name, _millis(value))
            except argparse.ArgumentTypeError as e:
                p.error(str(e))
    return args


def client_config(args: argparse.Namespace) -> dict:
    config: dict = {"token": args.token}
    for name in ("reconnect_delay", "max_reconnect_delay", "ping_interval", "request_timeout"):
        if getattr(args, name) is not None:
            config[name] = getattr(args, name)
    # As the Rust client: a connection is healthy after the shorter of the default 5 s and
    # the reconnect delay.
    if args.reconnect_delay is not None:
        config["healthy_after"] = min(5.0, args.reconnect_delay)
    return config


def presence_json(event: syncmux.Presence) -> dict:
    out = {"type": event.kind, "node_id": event.node_id, "topic": event.topic}
    if event.data is not None:
        out["data"] = event.data
    return out


def room_json(event: syncmux.Room) -> dict:
    out: dict = {"event": event.event, "room": event.room}
    for key in ("node_id", "data", "members"):
        if getattr(event, key) is not None:
            out[key] = getattr(event, key)
    return out


async def follow(client: aio.AsyncClient, command: Awaitable[Any]) -> int:
    """Prints events until Ctrl-C or until the client closes for good, and the outcome of the
    command that started following once it has one."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    pending: Optional[asyncio.Future] = asyncio.ensure_future(command)
    stopping = asyncio.ensure_future(stop.wait())
    events = client.__aiter__()
    next_event = asyncio.ensure_future(events.__anext__())
    try:
        while True:
            waiting = [w for w in (pending, next_event, stopping) if w is not None]
            done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if stopping in done:
                return 0
            if pending is not None and pending in done:
                fut, pending = pending, None
                try:
                    line(fut.result())
                except RequestError as e:
                    if e.kind == "Server":
                        return fail(e.code, str(e))
                    line({"event": "error", "code": e.code, "message": str(e)})
                continue
            try:
                event = next_event.result()
            except StopAsyncIteration:
                return fail("DISCONNECTED", "client is closed")
            next_event = asyncio.ensure_future(events.__anext__())
            if isinstance(event, syncmux.Connected):
                line({"event": "connected"})
            elif isinstance(event, syncmux.Disconnected):
                line({"event": "disconnected", "code": event.code, "reason": event.reason})
            elif isinstance(event, syncmux.Reconnecting):
                line({"event": "reconnecting", "attempt": event.attempt, "delay_ms": int(event.delay * 1000)})
            elif isinstance(event, syncmux.Changes):
                for change in event.changes:
                    line({"change": change, "cursor": event.cursor})
            elif isinstance(event, syncmux.Presence):
                line({"presence": presence_json(event)})
            elif isinstance(event, syncmux.Room):
                line({"room": room_json(event)})
            elif isinstance(event, syncmux.ResyncNeeded):
                line({"event": "resync_needed", "tables": event.tables})
            elif isinstance(event, syncmux.Error):
                line({"event": "error", "code": event.code, "message": event.message})
            elif isinstance(event, syncmux.Closed):
                code = str(event.code) if event.reason == "server" else "CLOSED"
                line({"event": "closed", "code": code, "message": event.message})
                return fail("DISCONNECTED", "client is closed")
            else:
                line({"event": repr(event)})
    finally:
        for task in (pending, next_event, stopping):
            if task is not None:
                task.cancel()


async def run(client: aio.AsyncClient, args: argparse.Namespace) -> int:
    if args.command == "pull":
        line(await client.pull(args.tables, since=args.since, cursor=args.cursor))
    elif args.command == "push":
        try:
            text = sys.stdin.read() if args.file == "-" else open(args.file, encoding="utf-8").read()
        except OSError as e:
            return fail("INVALID_PAYLOAD", f"invalid response: {args.file}: {e}")
        try:
            changes = json.loads(text)
            if not isinstance(changes, list):
                raise ValueError("not an array")
        except ValueError as e:
            return fail("INVALID_PAYLOAD", f"invalid response: {args.file}: not a JSON array of change records: {e}")
        line(await client.push(changes))
    elif args.command == "subscribe":
        async def subscribed() -> Any:
            ack = await client.subscribe(args.tables, since=args.since, cursor=args.cursor)
            return {"subscribed": True, "resume": ack}
        return await follow(client, subscribed())
    elif args.command == "presence":
        try:
            data = json.loads(args.json)
        except ValueError as e:
            return fail("INVALID_PAYLOAD", f"invalid response: argument is not JSON: {e}")

        async def joined() -> Any:
            await client.update_presence(args.topic, data)
            return await client.get_presence(args.topic)
        return await follow(client, joined())
    elif args.command == "room" and args.message is None:
        async def in_room() -> Any:
            await client.join_room(args.room)
            return {"joined": args.room}
        return await follow(client, in_room())
    else:
        await client.join_room(args.room)
        await client.broadcast(args.room, args.message)
        line({"sent": args.message, "room": args.room})
    return 0


async def main() -> int:
    args = parse()
    try:
        client = await aio.connect(args.url, args.node_id, wait=False, **client_config(args))
    except (syncmux.ConfigError, ValueError) as e:
        print(f"client.py: error: {e}", file=sys.stderr)
        return 2
    try:
        status = await run(client, args)
    except RequestError as e:
        await client.close()
        return fail(e.code, str(e))
    except syncmux.SyncmuxError as e:
        await client.close()
        return fail(e.code, str(e))
    except ConnectionError:
        return fail("DISCONNECTED", "client is closed")
    await client.close()
    return status


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
