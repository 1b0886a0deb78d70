"""A small command-line client for the example gateway's ``/ws`` endpoint.

::

    python -m examples.ws_client --login alice:alice-password -s system:broadcast
    python -m examples.ws_client --token "$TOKEN" -p 'system:broadcast={"text": "hi"}'
    python -m examples.ws_client --login bob:bob-password -s notifications:bob --count 5

Logs in (``POST /auth/login``) or uses ``--token`` / ``$GATEWAY_TOKEN``, connects with the
token in ``Sec-WebSocket-Protocol: bearer, <token>`` (as a browser would; ``--header``
sends ``Authorization: Bearer`` instead), subscribes, publishes, and prints every message
as one JSON line (``batch`` frames unwrapped, server pings answered). Exits after
``--count`` messages, after ``--seconds``, or on Ctrl-C; the exit status is 0 for a normal
close, 2 when the server closed the socket with an error code.

With ``--reconnect`` a lost socket is reconnected (after a second; not when the server
refused or ended the credential: 1008, 4401, 4403) and its channels subscribed again with
``recover`` from the last position seen on each channel with history, so no message is
missed while away (the ``subscribed`` reply says ``recovered`` per channel).

A subscribe answered ``unavailable`` (the gateway could not reach Redis) is sent again, with
``recover``, after 1 s, then 2, 4, up to 8 s between tries, for as long as the socket lives.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import urllib.request
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection


def _login(base: str, credentials: str) -> str:
    username, _, password = credentials.partition(":")
    request = urllib.request.Request(
        base.rstrip("/") + "/auth/login",
        data=json.dumps({"username": username, "password": password}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        token: str = json.load(response)["access_token"]
    return token


def _frames(raw: str | bytes) -> list[dict[str, Any]]:
    frame = json.loads(raw)
    if frame.get("type") == "batch":
        return [f for f in frame["messages"] if isinstance(f, dict)]
    return [frame]


async def _request(ws: ClientConnection, frame: dict[str, Any], seq: list[int]) -> int:
    seq[0] += 1
    await ws.send(json.dumps({**frame, "id": seq[0]}))
    return seq[0]


def _subscribe_frame(channels: list[str], positions: dict[str, dict[str, Any]]) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": "subscribe", "channels": channels}
    recover = {c: positions[c] for c in channels if c in positions}
    if recover:
        frame["recover"] = recover
    return frame


_RETRY_FIRST, _RETRY_MAX = 1.0, 8.0  # seconds between subscribes answered "unavailable"


_FINAL_CODES = frozenset({1008, 4401, 4403})  # refused, token or session ended: no retry


def _track(frame: dict[str, Any], positions: dict[str, dict[str, Any]]) -> None:
    # The last position seen per channel with history, to recover from after a drop.
    kind = frame.get("type")
    if kind == "message" and isinstance(frame.get("offset"), int):
        positions[frame["channel"]] = {"epoch": frame["epoch"], "offset": frame["offset"]}
    elif kind == "subscribed":
        recovered = frame.get("recovered") or {}
        for channel, position in (frame.get("positions") or {}).items():
            if recovered.get(channel) is not True:  # else the missed messages follow
                positions[channel] = position


async def _print(
    ws: ClientConnection,
    args: argparse.Namespace,
    seq: list[int],
    positions: dict[str, dict[str, Any]] | None = None,
    subscribe_id: int | None = None,
) -> bool:
    """Print frames until done (True) or the socket closes (False). ``subscribe_id``: the
    id of the subscribe request sent, to send again if it is answered ``unavailable``."""
    positions = {} if positions is None else positions
    with contextlib.suppress(websockets.ConnectionClosed):  # closed without a close frame
        return await _print_frames(ws, args, seq, positions, subscribe_id)
    return False


async def _print_frames(
    ws: ClientConnection,
    args: argparse.Namespace,
    seq: list[int],
    positions: dict[str, dict[str, Any]],
    subscribe_id: int | None,
) -> bool:
    pause = _RETRY_FIRST
    async for raw in ws:
        for frame in _frames(raw):
            if frame.get("type") == "ping":
                await ws.send('{"type":"pong"}')
                continue
            print(json.dumps(frame), flush=True)
            _track(frame, positions)
            retry = frame.get("type") == "error" and frame.get("code") == "unavailable"
            if retry and subscribe_id is not None and frame.get("id") == subscribe_id:
                await asyncio.sleep(pause)
                pause = min(pause * 2, _RETRY_MAX)
                frame = _subscribe_frame(args.subscribe, positions)
                subscribe_id = await _request(ws, frame, seq)
                continue
            if frame.get("type") == "message":
                seq[1] += 1
                if args.count and seq[1] >= args.count:
                    return True
            done = frame.get("type") == "published" and frame.get("id") == seq[0]
            if done and not args.subscribe:
                return True  # publish-only: done once the last one is confirmed
    return False


async def run(args: argparse.Namespace) -> int:
    """Connect, subscribe, publish and print; returns the exit status."""
    token = args.token or os.environ.get("GATEWAY_TOKEN")
    if args.login:
        token = await asyncio.to_thread(_login, args.base, args.login)
    if not token:
        print("give --login user:password, --token or $GATEWAY_TOKEN", file=sys.stderr)
        return 1
    url = args.url or args.base.replace("http", "ws", 1).rstrip("/") + "/ws"
    options: dict[str, Any] = {"max_size": 2**22}
    if args.header:
        options["additional_headers"] = {"Authorization": f"Bearer {token}"}
    else:
        options["subprotocols"] = ["bearer", token]
    seq = [0, 0]  # the last request id, messages printed
    try:
        return await asyncio.wait_for(_connected(url, options, args, seq), args.seconds)
    except asyncio.TimeoutError:
        return 0


async def _connected(
    url: str, options: dict[str, Any], args: argparse.Namespace, seq: list[int]
) -> int:
    positions: dict[str, dict[str, Any]] = {}
    publish = list(args.publish)
    while True:
        try:
            async with websockets.connect(url, **options) as ws:
                subscribe_id = None
                if args.subscribe:
                    frame = _subscribe_frame(args.subscribe, positions)
                    subscribe_id = await _request(ws, frame, seq)
                for item in publish:
                    channel, _, data = item.partition("=")
                    frame = {"type": "publish", "channel": channel, "data": json.loads(data)}
                    await _request(ws, frame, seq)
                publish = []  # published once, not again after a reconnect
                if await _print(ws, args, seq, positions, subscribe_id):
                    return 0
        except (OSError, websockets.InvalidHandshake) as exc:
            if not args.reconnect:
                raise
            print(json.dumps({"connect_failed": type(exc).__name__}), file=sys.stderr)
            await asyncio.sleep(1.0)
            continue
        code = ws.close_code
        print(json.dumps({"closed": code, "reason": ws.close_reason}), file=sys.stderr)
        if not args.reconnect or code in _FINAL_CODES or code in (None, 1000):
            return 0 if code in (None, 1000) else 2
        await asyncio.sleep(1.0)


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and run the client."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="http://127.0.0.1:8000", help="gateway base URL")
    parser.add_argument("--url", help="WebSocket URL (default: <base>/ws)")
    parser.add_argument("--login", metavar="USER:PASSWORD", help="log in to get a token")
    parser.add_argument("--token", help="a bearer token (default: $GATEWAY_TOKEN)")
    parser.add_argument("--header", action="store_true", help="send Authorization: Bearer")
    parser.add_argument("-s", "--subscribe", action="append", default=[], metavar="CHANNEL")
    parser.add_argument("-p", "--publish", action="append", default=[], metavar="CHANNEL=JSON")
    parser.add_argument("--count", type=int, default=0, help="exit after N messages")
    parser.add_argument("--seconds", type=float, default=None, help="exit after N seconds")
    parser.add_argument(
        "--reconnect", action="store_true", help="reconnect after a drop, recovering history"
    )
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(run(args))
    return 130


if __name__ == "__main__":
    sys.exit(main())
