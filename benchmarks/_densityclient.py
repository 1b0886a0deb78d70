"""One client process of the density benchmark: thousands of authenticated, subscribed
WebSockets from one loopback source address, driven over a pipe.

Each socket has its own subject and token (HS256, minted here, as the example gateway's
login would), sends ``Authorization: Bearer`` in the handshake and subscribes to the
broadcast channel with its first frame; it counts as open once the ``subscribed`` reply
came. The sockets bind to their own source address (``127.0.0.x``) with
``IP_BIND_ADDRESS_NO_PORT``, so processes on different addresses do not share one range
of ephemeral ports. Frames are parsed by :class:`benchmarks._wsclient.Client`.

Commands (tuples over the pipe): ``("connect", n)`` -> ``("connected", ok, failed,
first_error)``; ``("expect", phase, timeout)`` -> the receive latencies (seconds) of
``phase`` once every socket has one, or after ``timeout``; ``("close",)``.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
import uuid
from multiprocessing.connection import Connection
from typing import Any

import jwt

from benchmarks import _wsclient

_BIND_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
_SUBSCRIBED = (b'{"type":"subscribed"', b'{"type":"batch","messages":[{"type":"subscribed"')
_IN_FLIGHT = 32  # handshakes under way at once, per process


def token(subject: str, secret: str, issuer: str, audience: str, ttl: int = 3600) -> str:
    now = int(time.time())
    claims = {
        "sub": subject, "roles": ["user"], "iat": now, "exp": now + ttl,
        "jti": uuid.uuid4().hex, "iss": issuer, "aud": audience,
    }  # fmt: skip
    return jwt.encode(claims, secret, algorithm="HS256")


class _Client(_wsclient.Client):
    """A client that remembers the start of the last text frame it got (diagnostics)."""

    first = b""
    last = b""

    def _text(self, payload: bytes, now: float) -> None:
        self.first = self.first or payload[:120]
        self.last = payload[:120]
        super()._text(payload, now)


async def _open(cfg: dict[str, Any], index: int, stats: _wsclient.Stats) -> _Client:
    loop = asyncio.get_running_loop()
    host, port = cfg["host"], cfg["port"]
    bearer = token(f"{cfg['prefix']}-{index}", cfg["secret"], cfg["issuer"], cfg["audience"])
    request = _wsclient.upgrade_request(host, port, "/ws", {"Authorization": f"Bearer {bearer}"})
    subscribe = json.dumps({"type": "subscribe", "channels": [cfg["channel"]], "id": 1})
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.IPPROTO_IP, _BIND_NO_PORT, 1)
        sock.bind((cfg["source"], 0))
        sock.setblocking(False)
        await loop.sock_connect(sock, (host, port))
    except BaseException:
        sock.close()
        raise
    _, client = await loop.create_connection(
        lambda: _Client(request, _wsclient.frame(subscribe.encode()), stats, False),
        sock=sock,
    )
    try:
        await asyncio.wait_for(client.upgraded, 120)
        await asyncio.wait_for(client.ready, 120)
        # The reply, alone or first in a batch (join frames of other sockets may follow it).
        if not client.first.startswith(_SUBSCRIBED):  # e.g. unavailable
            raise ConnectionError(client.first.decode("utf-8", "replace"))
    except BaseException:
        for future in (client.upgraded, client.ready):  # failed with the connection: seen
            future.add_done_callback(lambda f: f.cancelled() or f.exception())
        if client.transport is not None:
            client.transport.abort()
        raise
    return client


async def _serve(conn: Connection, cfg: dict[str, Any]) -> None:
    stats = _wsclient.Stats()
    clients: list[_Client] = []
    while True:
        command = await asyncio.to_thread(conn.recv)
        op = command[0]
        if op == "connect":
            n = command[1]
            failed, first_error = 0, ""
            gate = asyncio.Semaphore(_IN_FLIGHT)

            async def one(index: int, gate: asyncio.Semaphore = gate) -> None:
                nonlocal failed, first_error
                async with gate:
                    try:
                        clients.append(await _open(cfg, index, stats))
                    except (OSError, asyncio.TimeoutError, ConnectionError) as exc:
                        failed += 1
                        first_error = first_error or repr(exc)[:200]

            start = len(clients) + failed
            await asyncio.gather(*(one(start + i) for i in range(n)))
            conn.send(("connected", len(clients), failed, first_error))
        elif op == "expect":
            _, phase, timeout = command
            deadline = time.monotonic() + timeout
            while (  # noqa: ASYNC110 (a poll: counts change in data_received)
                stats.count.get(phase, 0) < len(clients) and time.monotonic() < deadline
            ):
                await asyncio.sleep(0.01)
            conn.send({
                "latencies": stats.latencies.get(phase, []), "sockets": len(clients),
                "closed": stats.closed, "resyncs": stats.resyncs,
                "missing": [c.last.decode("utf-8", "replace") for c in clients
                            if not c.per_phase.get(phase)][:5],
                "twice": sum(1 for c in clients if c.per_phase.get(phase, 0) > 1),
            })  # fmt: skip
        elif op == "close":
            for client in clients:
                if client.transport is not None:
                    client.transport.abort()
            conn.send("closed")
            return


def main(conn: Connection, cfg: dict[str, Any], cpu: int | None) -> None:
    """Entry point of a client process (``multiprocessing``, spawn); the process inherits
    the harness's raised file-descriptor limit."""
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cpu})
    try:
        import uvloop

        uvloop.run(_serve(conn, cfg))
    except ImportError:
        asyncio.run(_serve(conn, cfg))
