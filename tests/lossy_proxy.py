"""A TCP proxy in front of a real Redis server that can lose the reply to a command.

The server runs the command; the proxy swallows its reply and closes the client's
connection, which is what a network failure at the worst moment looks like to the
client. Tests use it to prove that non-idempotent commands are sent at most once.

:meth:`LossyProxies.reset_replies` turns on a second fault: a seeded fraction of the
server's replies is cut in the middle, and the client's connection is reset (RST) there,
while Redis itself stays healthy (a flaky network or middlebox).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import random
import socket
import struct


def _command_names(chunk: bytes) -> list[str]:
    """The command names in ``chunk`` (RESP arrays of bulk strings, as clients send)."""
    names = []
    for part in chunk.split(b"*")[1:]:
        lines = part.split(b"\r\n")
        if len(lines) > 2 and lines[1].startswith(b"$"):
            names.append(lines[2].decode(errors="replace").upper())
    return names


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close the connection with a RST (SO_LINGER 0) instead of a FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class LossyProxies:
    """One proxy per upstream address; every proxy shares one "lose" list and one count.

    ``lose("INCRBY")`` arms a one-shot fault: the next chunk sent by a client that
    contains INCRBY is forwarded, the server's reply is read and dropped, and both
    connections are closed. ``seen["INCRBY"]`` counts the commands that went through to a
    server. Command names are matched in whole client writes, so this is for tests only.
    """

    def __init__(self) -> None:
        self.seen: collections.Counter[str] = collections.Counter()
        self._lose: set[str] = set()
        self._servers: dict[tuple[str, int], asyncio.Server] = {}
        self._ports: dict[tuple[str, int], int] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._reset_fraction = 0.0
        self._random = random.Random(0)
        self.resets = 0
        """Connections reset in the middle of a reply (see :meth:`reset_replies`)."""

    def reset_replies(self, fraction: float, *, seed: int) -> None:
        """From now on, cut ``fraction`` of the server's replies (each chunk the proxy reads
        from a server, decided by a ``random.Random(seed)``) after their first half, and
        reset the client's connection there. ``fraction=0`` turns it off."""
        self._reset_fraction = fraction
        self._random = random.Random(seed)

    def lose(self, *names: str) -> None:
        """Lose the reply to the next occurrence of each of ``names``."""
        self._lose.update(n.upper() for n in names)

    @property
    def armed(self) -> bool:
        """Whether some armed fault has not happened yet."""
        return bool(self._lose)

    async def add(self, upstream: tuple[str, int]) -> tuple[str, int]:
        """Start a proxy to ``upstream``; returns its own address."""
        if upstream not in self._servers:

            async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                task = asyncio.current_task()
                assert task is not None
                self._tasks.add(task)
                try:
                    await self._relay(upstream, reader, writer)
                finally:
                    self._tasks.discard(task)

            server = await asyncio.start_server(handle, "127.0.0.1", 0)
            self._servers[upstream] = server
            self._ports[upstream] = server.sockets[0].getsockname()[1]
        return ("127.0.0.1", self._ports[upstream])

    def remap(self, address: tuple[str, int]) -> tuple[str, int]:
        """redis-py's ``address_remap``: the proxy for ``address`` (when there is one)."""
        port = self._ports.get((address[0], int(address[1])))
        return address if port is None else ("127.0.0.1", port)

    async def _relay(
        self,
        upstream: tuple[str, int],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*upstream)
        except OSError:
            writer.close()
            return

        async def downstream() -> None:
            with contextlib.suppress(ConnectionError):
                while data := await up_reader.read(65536):
                    if self._reset_fraction and self._random.random() < self._reset_fraction:
                        self.resets += 1
                        writer.write(data[: max(1, len(data) // 2)])
                        _reset(writer)
                        up_writer.close()
                        return
                    writer.write(data)
                    await writer.drain()
            writer.close()

        replies = asyncio.create_task(downstream())
        try:
            while chunk := await reader.read(65536):
                names = _command_names(chunk)
                self.seen.update(names)
                lost = self._lose.intersection(names)
                if lost:
                    self._lose -= lost
                    replies.cancel()  # the reply must not reach the client
                    with contextlib.suppress(asyncio.CancelledError):
                        await replies
                    up_writer.write(chunk)
                    await up_writer.drain()
                    await up_reader.read(1)  # the server ran it: its reply arrives
                    break
                up_writer.write(chunk)
                await up_writer.drain()
        except ConnectionError:
            pass
        finally:
            replies.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await replies
            writer.close()
            up_writer.close()

    async def aclose(self) -> None:
        """Stop every proxy and drop their connections."""
        for server in self._servers.values():
            server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for server in self._servers.values():
            await server.wait_closed()
