"""Many lean WebSocket clients in one process, driven over a pipe by the fan-out benchmark.

A minimal RFC 6455 client on ``asyncio.Protocol`` (no compression, zero mask key): the
receive path is a few slices and one ``json.loads`` per frame, so one process can take
hundreds of thousands of frames per second and the server stays the bottleneck. Each
published payload is ``{"p": phase, "s": seq, "ts": epoch seconds, "pad": ...}``; it may
arrive bare (encode/broadcaster forwards the published string), inside our bridge's
``message`` frame, or in a ``batch`` of them. Latency = receive time - ``ts``.

Commands (tuples over the pipe): ``("connect", n, stalled, stagger)`` -> ``("connected",
ok, failed)``; ``("seen", phase)`` -> how many readers have a message of ``phase``;
``("expect", phase, per_reader, timeout)`` -> stats once every reader has ``per_reader``
messages of ``phase`` or after ``timeout`` seconds; ``("close",)``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import time
from multiprocessing.connection import Connection
from typing import Any


def frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """A masked client frame (mask key 0: valid, and no XOR needed)."""
    n = len(payload)
    if n < 126:
        header = bytes([0x80 | opcode, 0x80 | n])
    elif n < 65536:
        header = bytes([0x80 | opcode, 0x80 | 126]) + n.to_bytes(2, "big")
    else:
        header = bytes([0x80 | opcode, 0x80 | 127]) + n.to_bytes(8, "big")
    return header + b"\0\0\0\0" + payload


class Stats:
    def __init__(self) -> None:
        self.count: dict[int, int] = {}
        self.latencies: dict[int, list[float]] = {}
        self.last_recv: dict[int, float] = {}
        self.resyncs = 0
        self.closed = 0


class Client(asyncio.Protocol):
    def __init__(
        self, request: bytes, first_frame: bytes | None, stats: Stats, stalled: bool
    ) -> None:
        self.request = request
        self.first_frame = first_frame
        self.stats = stats
        self.stalled = stalled
        self.transport: asyncio.Transport | None = None
        self.upgraded = asyncio.get_running_loop().create_future()
        self.ready = asyncio.get_running_loop().create_future()  # first frame answered
        self.buf = b""
        self.partial = b""
        self.per_phase: dict[int, int] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.request)  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        self.stats.closed += 1
        for fut in (self.upgraded, self.ready):
            if not fut.done():
                fut.set_exception(ConnectionError("closed"))

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        if not self.upgraded.done():
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self.buf = buf
                return
            head, buf = buf[:end], buf[end + 4 :]
            if b" 101 " not in head.split(b"\r\n", 1)[0]:
                self.upgraded.set_exception(ConnectionError(head[:80].decode("latin-1")))
                assert self.transport is not None
                self.transport.close()
                return
            self.upgraded.set_result(None)
            if self.first_frame is not None:
                assert self.transport is not None
                self.transport.write(self.first_frame)
            else:
                self._became_ready()
        now = time.time()
        pos, size = 0, len(buf)
        while size - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            length, head = b1 & 0x7F, 2
            if length == 126:
                if size - pos < 4:
                    break
                length, head = int.from_bytes(buf[pos + 2 : pos + 4], "big"), 4
            elif length == 127:
                if size - pos < 10:
                    break
                length, head = int.from_bytes(buf[pos + 2 : pos + 10], "big"), 10
            if size - pos < head + length:
                break
            payload = buf[pos + head : pos + head + length]
            pos += head + length
            opcode = b0 & 0x0F
            if not b0 & 0x80:  # fragment
                self.partial += payload
                continue
            if opcode == 0x0:
                payload, self.partial = self.partial + payload, b""
                opcode = 0x1
            if opcode == 0x1:
                self._text(payload, now)
            elif opcode == 0x9 and self.transport is not None:
                self.transport.write(frame(payload, 0xA))
            elif opcode == 0x8 and self.transport is not None:
                self.transport.write(frame(payload[:2], 0x8))
                self.transport.close()
                return
        self.buf = buf[pos:]

    def _became_ready(self) -> None:
        if not self.ready.done():
            self.ready.set_result(None)
        if self.stalled and self.transport is not None:
            self.transport.pause_reading()  # never read again: the kernel buffers fill up

    def _text(self, payload: bytes, now: float) -> None:
        if not self.ready.done():
            self._became_ready()
            if b'"p"' not in payload:
                return  # the subscribe reply
        obj = json.loads(payload)
        kind = obj.get("type")
        if kind == "batch":
            items = obj["messages"]
        elif kind is None:
            items = [{"data": obj}]  # a bare published payload (broadcaster)
        else:
            items = [obj]
        stats = self.stats
        for item in items:
            t = item.get("type")
            if t == "resync":
                stats.resyncs += 1
            elif t == "ping" and self.transport is not None:
                self.transport.write(frame(b'{"type":"pong"}'))
            data = item.get("data")
            if not isinstance(data, dict) or "p" not in data:
                continue
            phase = data["p"]
            self.per_phase[phase] = self.per_phase.get(phase, 0) + 1
            stats.count[phase] = stats.count.get(phase, 0) + 1
            stats.latencies.setdefault(phase, []).append(now - data["ts"])
            stats.last_recv[phase] = now


def upgrade_request(host: str, port: int, path: str, headers: dict[str, str]) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {path} HTTP/1.1", f"Host: {host}:{port}", "Upgrade: websocket",
        "Connection: Upgrade", f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13",
        *(f"{k}: {v}" for k, v in headers.items()),
    ]  # fmt: skip
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def _open(
    host: str, port: int, path: str, headers: dict[str, str], first: bytes | None,
    stats: Stats, stalled: bool,
) -> Client:  # fmt: skip
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if stalled:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await loop.sock_connect(sock, (host, port))
    _, client = await loop.create_connection(
        lambda: Client(upgrade_request(host, port, path, headers), first, stats, stalled), sock=sock
    )
    await asyncio.wait_for(client.upgraded, 10)
    await asyncio.wait_for(client.ready, 10)
    return client


async def _serve(conn: Connection, target: dict[str, Any]) -> None:
    stats = Stats()
    readers: list[Client] = []
    stalled: list[Client] = []
    host, port, path = target["host"], target["port"], target["path"]
    headers: dict[str, str] = target["headers"]
    first = target["first_frame"].encode() if target.get("first_frame") else None
    first_frame = frame(first) if first else None
    while True:
        command = await asyncio.to_thread(conn.recv)
        op = command[0]
        if op == "connect":
            _, n, n_stalled, stagger = command
            ok = failed = 0

            async def one(is_stalled: bool) -> None:
                nonlocal ok, failed
                try:
                    c = await _open(host, port, path, headers, first_frame, stats, is_stalled)
                except (OSError, asyncio.TimeoutError, ConnectionError):
                    failed += 1
                    return
                ok += 1
                (stalled if is_stalled else readers).append(c)

            if stagger and n:
                # encode/broadcaster loses concurrent first subscribers: one first, alone.
                await one(False)
                await asyncio.sleep(stagger)
                n -= 1
            for start in range(0, n, 100):
                await asyncio.gather(*(one(False) for _ in range(min(100, n - start))))
            for _ in range(n_stalled):
                await one(True)
            conn.send(("connected", ok, failed))
        elif op == "seen":
            phase = command[1]
            conn.send(sum(1 for c in readers if c.per_phase.get(phase)))
        elif op == "expect":
            _, phase, per_reader, timeout = command
            deadline = time.monotonic() + timeout
            expected = per_reader * len(readers)
            while stats.count.get(phase, 0) < expected and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.01)  # a poll: counts change in data_received
            lat = sorted(stats.latencies.get(phase, []))
            conn.send({
                "readers": len(readers), "expected": expected,
                "delivered": stats.count.get(phase, 0), "latencies": lat,
                "last_recv": stats.last_recv.get(phase, float("nan")),
                "resyncs": stats.resyncs, "closed": stats.closed,
            })  # fmt: skip
        elif op == "close":
            for c in readers + stalled:
                if c.transport is not None:
                    c.transport.abort()
            conn.send("closed")
            return


def main(conn: Connection, target: dict[str, Any], cpu: int | None) -> None:
    """Entry point of the client process (``multiprocessing``, spawn)."""
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cpu})
    try:
        import uvloop

        uvloop.run(_serve(conn, target))
    except ImportError:
        asyncio.run(_serve(conn, target))
