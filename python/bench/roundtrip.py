#!/usr/bin/env python3
"""A client request round trip through the bindings, against the same frames encoded and
decoded with Python's ``json`` module alone; printed as a ratio measured in the same run.

    python python/bench/roundtrip.py [--changes N] [--rounds N]

Bindings: ``Client.pull`` (encodes the request), ``poll_transmit`` (the frame as ``bytes``),
``handle_message`` with the server's ``pull_response`` (decoding, correlating by id, typed
response), ``poll_event`` (the response payload as Python dicts, unknown fields included).
Baseline: ``json.dumps`` of the same request envelope, ``.encode()``, ``json.loads`` of the same
response and a dict lookup to correlate it. Both sides see byte-identical response frames. A
ratio above 1 means the bindings are slower than bare ``json`` by that factor: the price of a
protocol state machine (timers, bounds, typed validation) over raw dicts.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Callable

import syncmux


def response_frame(changes: int) -> tuple:
    records = [
        {"table": "docs", "pk": str(i), "field": "title", "crdt_type": "lww",
         "hlc": {"ts": 1_700_000_000_000 + i, "c": 0, "node": "bench"}, "node_id": "bench",
         "value": f"value {i}", "x-app": {"rev": i}}
        for i in range(changes)
    ]
    payload = json.dumps({"changes": records, "latest_hlc": records[-1]["hlc"] if records else {"ts": 0, "c": 0, "node": ""},
                          "cursor": "7.%d" % changes}, separators=(",", ":"))
    return '{"type":"pull_response","id":"', '","payload":' + payload + "}"


def bindings(rounds: int, head: str, tail: str) -> float:
    client = syncmux.Client("ws://bench/sync/ws", "bench", ping_interval=0, request_timeout=0)
    now = 1.0
    client.connect(now)
    client.poll_transmit()
    client.handle_connected(now, "syncmux.v1")
    while client.poll_event() is not None:
        pass
    start = time.perf_counter()
    for _ in range(rounds):
        request = client.pull(now, ["docs"], cursor="7.0")
        frame = client.poll_transmit().data
        client.handle_message(now, head + str(request) + tail)
        event = client.poll_event()
        assert event.id == request and frame
        event.value["changes"]
    return time.perf_counter() - start


def plain_json(rounds: int, head: str, tail: str) -> float:
    pending: dict = {}
    next_id = 1
    start = time.perf_counter()
    for _ in range(rounds):
        request = str(next_id)
        next_id += 1
        frame = json.dumps({"type": "pull_request", "id": request,
                            "payload": {"tables": ["docs"], "cursor": "7.0", "node_id": "bench"}},
                           separators=(",", ":")).encode()
        pending[request] = frame
        message = json.loads(head + request + tail)
        assert pending.pop(message["id"]) and message["type"] == "pull_response"
        message["payload"]["changes"]
    return time.perf_counter() - start


def best(run: Callable[[int, str, str], float], rounds: int, head: str, tail: str, repeats: int = 5) -> float:
    return min(run(rounds, head, tail) for _ in range(repeats)) / rounds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=20_000)
    p.add_argument("--changes", type=int, nargs="*", default=[0, 10, 100])
    args = p.parse_args()
    print(f"{'changes':>8} {'bindings µs':>12} {'json µs':>10} {'ratio':>7}")
    for n in args.changes:
        head, tail = response_frame(n)
        rounds = max(200, args.rounds // max(1, n))
        ours = best(bindings, rounds, head, tail)
        base = best(plain_json, rounds, head, tail)
        print(f"{n:>8} {ours * 1e6:>12.2f} {base * 1e6:>10.2f} {ours / base:>7.2f}")


if __name__ == "__main__":
    main()
