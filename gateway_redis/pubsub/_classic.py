"""The classic subscriber connection: SUBSCRIBE and PSUBSCRIBE for every hub subscription.

One connection per hub, outside the command pool, no read timeout, driven by a
:class:`~gateway_redis.pubsub._supervisor.Supervisor`. Liveness: after
``liveness_interval`` seconds of silence a token is published (over a private unpooled
connection: no pool wait, no command span, works while the client fails fast) on the
hub's private liveness channel, which this connection is subscribed to (last, so its
confirmation also marks the end of a resubscription); not seen within
``liveness_timeout`` means the connection is dead (a frozen server keeps TCP open and says
nothing).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from typing import TYPE_CHECKING, Final, TypeVar

from redis import exceptions as rexc

from gateway_redis import _driver
from gateway_redis.pubsub._connection import open_connection
from gateway_redis.pubsub._registry import Entry, Kind, Ledger, ProtocolError, Registry
from gateway_redis.pubsub._supervisor import YIELD_EVERY, ListenerSettings, Supervisor
from gateway_redis.pubsub.envelope import RESERVED
from gateway_redis.support import describe_error, log_fields

if TYPE_CHECKING:
    from redis.asyncio.connection import AbstractConnection

    from gateway_redis.client import RedisClient

T = TypeVar("T")
_log = logging.getLogger(__name__)
_GLOB: Final = re.compile(r"([\\*?\[\]])")


class Listener(Supervisor[T]):
    """The classic connection and its two registries, ``channels`` and ``patterns``.

    ``liveness_channel`` is the hub's private channel (in the reserved namespace).
    """

    def __init__(
        self, client: RedisClient, settings: ListenerSettings[T], liveness_channel: str
    ) -> None:
        prefix = client.config.channel_prefix
        self.channels: Registry[T] = Registry(Kind("SUBSCRIBE", "UNSUBSCRIBE", prefix.encode()))
        escaped = _GLOB.sub(r"\\\1", prefix).encode()
        self.patterns: Registry[T] = Registry(Kind("PSUBSCRIBE", "PUNSUBSCRIBE", escaped))
        self._liveness = prefix.encode() + liveness_channel.encode()
        self._prefix_len = len(prefix.encode())
        super().__init__(client, Ledger(("SUBSCRIBE", self._liveness), b"subscribe"), settings)
        self._probe: AbstractConnection | None = None

    def acquire(self, registry: Registry[T], name: str, owner: T) -> Entry[T]:
        """Add ``owner`` to ``name`` in ``registry`` (``channels`` or ``patterns``); a new
        entry is subscribed by the next :meth:`kick`."""
        entry, created = registry.acquire(name, owner)
        if created:
            self.ledger.add(entry)
        return entry

    def release(self, registry: Registry[T], key: bytes, owner: T) -> None:
        """Remove ``owner``; the last one out unsubscribes with the next :meth:`kick`."""
        dropped = registry.release(key, owner)
        if dropped is not None:
            self.ledger.remove(dropped)

    def forget(self) -> None:
        """Drop every entry, waking every waiter (the hub closed or failed)."""
        self.channels.close()
        self.patterns.close()
        self.ledger.close()

    async def aclose(self) -> None:
        """Stop the supervisor; close the subscriber and liveness connections."""
        await super().aclose()
        probe, self._probe = self._probe, None
        if probe is not None:
            with contextlib.suppress(Exception):
                await probe.disconnect(nowait=True)

    def _summary(self) -> str:
        return f"{len(self.channels.entries)} channels and {len(self.patterns.entries)} patterns"

    def _report_lost(self) -> None:
        self._settings.on_lost()

    def _report_regained(self) -> None:
        self._settings.on_regained()

    def _open_connection(self) -> AbstractConnection:
        return open_connection(self._client)

    async def _read(self, conn: AbstractConnection) -> str:
        channels, patterns = self.channels.entries, self.patterns.entries
        deliver, prefix = self._settings.deliver, self._prefix_len
        ledger, liveness = self.ledger, self._liveness
        count = 0
        while True:
            reply = await conn.read_response()
            self._last_rx = time.monotonic()
            if not isinstance(reply, list) or len(reply) < 3:
                raise ProtocolError(f"unexpected reply {type(reply).__name__}")
            kind = reply[0]
            if kind == b"message":
                if reply[1] == liveness:
                    self._token_seen(reply[2])
                    continue
                entry = channels.get(reply[1])
                if entry is not None and entry.subs:
                    deliver(entry.subs, entry.name, None, reply[2])
            elif kind == b"pmessage" and len(reply) == 4:
                entry = patterns.get(reply[1])
                if entry is not None and entry.subs:
                    channel = reply[2][prefix:].decode("utf-8", "replace")
                    if not channel.startswith(RESERVED):  # other hubs' liveness channels
                        deliver(entry.subs, channel, entry.name, reply[3])
            elif not ledger.confirm(kind, reply[1]):
                raise ProtocolError(f"unexpected {kind!r} reply on the subscriber connection")
            count += 1
            if count % YIELD_EVERY == 0:
                await asyncio.sleep(0)  # a flood must not starve the consumers

    async def _check_liveness(self) -> str | None:
        """Publish a token on our private channel and wait for it; a problem or None."""
        token, seen = self._issue_token()
        try:
            # The loop's attention, not wall-clock time: a token already back in the socket
            # buffer but unread while our loop was busy does not make the server dead.
            return await _driver.wait_attentively(self._round_trip(token, seen), self._timeout)
        except (asyncio.TimeoutError, rexc.TimeoutError):
            return f"liveness token not seen within {self._timeout}s"
        except Exception as exc:
            if not _driver.is_outage_error(exc):
                raise
            # The publisher failed fast (refused, reset): that says nothing about the
            # subscriber's own connection, whose reader notices a real drop by itself.
            _log.debug(
                "pubsub liveness publish failed: %s",
                describe_error(exc),
                extra=log_fields("pubsub", "pubsub_liveness_failed", describe_error(exc)),
            )
        finally:
            self._token = None
        return None

    async def _round_trip(self, token: bytes, seen: asyncio.Future[None]) -> str | None:
        if await self._publish_token(token) < 1:
            return "liveness token reached no subscriber"
        await seen
        return None

    async def _publish_token(self, token: bytes) -> int:
        # A private unpooled connection: never waits for the pool, never traced as a
        # command, works while the client fails fast. Its socket timeouts are far longer
        # than the check's time limit (which counts only the loop's attention), so the
        # check decides.
        conn = self._probe
        if conn is None:
            timeout = 10 * self._timeout + 1.0
            conn = self._probe = open_connection(
                self._client,
                name="gateway-redis-liveness",
                read_timeout=timeout,
                connect_timeout=timeout,
                protocol=None,
            )
        try:
            if not conn.is_connected:
                await conn.connect()  # type: ignore[no-untyped-call]
            await conn.send_command("PUBLISH", self._liveness, token, check_health=False)
            return int(await conn.read_response())
        except BaseException:
            await conn.disconnect(nowait=True)
            raise
