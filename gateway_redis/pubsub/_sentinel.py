"""Hearing Sentinel's ``+switch-master``: subscriber connections retry at once.

After a primary dies the subscriber connections retry with backoff (up to 1 s between
attempts) until the sentinels name a new primary: without a hint the first attempt after
the switch comes on average about half a second late. :class:`SwitchWatch` subscribes to
``+switch-master`` on one sentinel at a time and calls ``on_switch()`` for our master's
switches, which cuts every retry wait short.

It is a hint, not a dependency: nothing waits for it, a sentinel that cannot be reached is
replaced by the next one (round robin, with backoff), and a missed event only costs the
backoff it would have saved.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from redis import exceptions as rexc

from gateway_redis.pubsub._connection import open_connection
from gateway_redis.pubsub._supervisor import backoff
from gateway_redis.support import cancel_and_wait, describe_error, log_fields

if TYPE_CHECKING:
    from gateway_redis.client import RedisClient

_log = logging.getLogger(__name__)
_CHANNEL: Final = b"+switch-master"


class SwitchWatch:
    """One task listening for ``+switch-master`` of the client's Sentinel master.

    ``on_switch()`` runs on the event loop for each switch of our master; it must not block.
    """

    def __init__(self, client: RedisClient, on_switch: Callable[[], None]) -> None:
        topology = client.config.topology
        self._client = client
        self._sentinels = list(topology.nodes)
        self._master = (topology.master_name or "").encode()
        self._on_switch = on_switch
        self._task: asyncio.Task[None] | None = None
        self.switches = 0
        """``+switch-master`` events heard for our master."""

    def start(self) -> None:
        """Start listening (idempotent; needs a running loop)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="gateway-redis-pubsub-sentinel"
            )

    async def aclose(self) -> None:
        """Stop listening and close the connection."""
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait(task)

    async def _run(self) -> None:
        attempt = 0
        while True:
            address = self._sentinels[attempt % len(self._sentinels)]
            # No read timeout (events are rare); the sentinels' own credentials, and TLS
            # when the topology uses it.
            conn = open_connection(
                self._client, name="gateway-redis-pubsub-sentinel", sentinel=address
            )
            try:
                await conn.connect()  # type: ignore[no-untyped-call]
                await conn.send_command("SUBSCRIBE", _CHANNEL, check_health=False)
                attempt = 0  # connected: start from this sentinel again next time
                while True:
                    self._handle(await conn.read_response())
            except (rexc.RedisError, OSError) as exc:
                _log.debug(
                    "sentinel %s:%s: %s",
                    *address,
                    describe_error(exc),
                    extra=log_fields("pubsub", "sentinel_events_failed", describe_error(exc)),
                )
            finally:
                with contextlib.suppress(Exception):
                    await conn.disconnect(nowait=True)
            attempt += 1
            await asyncio.sleep(backoff(attempt))

    def _handle(self, reply: object) -> None:
        # [b"message", b"+switch-master", b"<master> <old ip> <old port> <new ip> <new port>"]
        if not (isinstance(reply, list) and len(reply) == 3 and reply[0] == b"message"):
            return
        payload = reply[2]
        if isinstance(payload, bytes) and payload.split(b" ", 1)[0] == self._master:
            self.switches += 1
            _log.info(
                "sentinel switched the primary (%s); reconnecting now",
                payload.decode("utf-8", "replace"),
                extra=log_fields("pubsub", "pubsub_switch_master"),
            )
            self._on_switch()
