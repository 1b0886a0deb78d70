"""Keeping one subscriber connection alive: sessions, reconnects, health votes, liveness.

Why a raw :class:`redis.asyncio.connection.Connection` and not redis-py's ``PubSub``:
``PubSub`` reconnects and resubscribes silently (redis-py 7.2+), so messages lost meanwhile
go unnoticed, and it keeps channel bookkeeping we would have to mirror. A raw RESP2
connection gives every drop as an exception and every reply as a plain array, in command
order, which is what :class:`~gateway_redis.pubsub._registry.Ledger` relies on.

:class:`Supervisor` is the machinery shared by the classic connection
(:mod:`~gateway_redis.pubsub._classic`) and each node's sharded connection
(:mod:`~gateway_redis.pubsub._sharded`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, Generic, TypeVar

from redis import exceptions as rexc

from gateway_redis import _driver
from gateway_redis.pubsub._registry import Entry, Ledger
from gateway_redis.support import cancel_and_wait, describe_error, log_fields

if TYPE_CHECKING:
    from redis.asyncio.connection import AbstractConnection

    from gateway_redis.client import RedisClient

T = TypeVar("T")
_log = logging.getLogger(__name__)

YIELD_EVERY: Final = 64
"""Messages a reader handles before letting other tasks run. Below the default buffer size
(100): consumers woken by one burst get to run before the burst can overflow them."""
_IDLE: Final = "idle"  # a session ended because its connection was no longer wanted
_LINGER: Final = 5.0  # seconds an unwanted connection stays open (churn of last subscribers)

Deliver = Callable[[set[T], str, str | None, bytes], None]
"""``deliver(subscribers, channel, pattern, raw_body)``: hand a message to subscribers."""


@dataclasses.dataclass(frozen=True, slots=True)
class ListenerSettings(Generic[T]):
    """What every subscriber connection of one hub shares: liveness timing and the hub's
    callbacks. Built once by the hub; callbacks run on the event loop and must not block.

    ``liveness_interval``: seconds of silence before a connection is checked;
    ``liveness_timeout``: seconds the check may take before the connection counts as
    dead. ``deliver`` hands a message to subscribers; ``on_lost()`` /
    ``on_regained()``: the classic connection was lost / everything lost was subscribed
    again (classic or sharded); ``on_shard_lost(entries)``: confirmed sharded channels
    stopped being subscribed; ``on_refused(entry)``: Redis refused a sharded channel for
    good; ``on_failed()``: a connection's supervisor died of a bug.
    Raises :class:`ValueError` for a liveness time that is not > 0.
    """

    liveness_interval: float
    liveness_timeout: float
    deliver: Deliver[T]
    on_lost: Callable[[], None]
    on_regained: Callable[[], None]
    on_shard_lost: Callable[[list[Entry[T]]], None]
    on_refused: Callable[[Entry[T]], None]
    on_failed: Callable[[], None]

    def __post_init__(self) -> None:
        if not self.liveness_interval > 0 or not self.liveness_timeout > 0:
            raise ValueError("liveness_interval and liveness_timeout must be > 0 seconds")


def backoff(attempt: int, *, base: float = 0.05, cap: float = 1.0) -> float:
    """Seconds to wait before reconnect ``attempt`` (1, 2, ...): exponential, jittered, capped."""
    ceiling = min(cap, base * 2.0 ** min(attempt - 1, 16))
    return ceiling / 2 + random.uniform(0, ceiling / 2)


class Supervisor(Generic[T]):
    """Owns one subscriber connection: one supervisor task, one *session* per connection.

    A session connects (bounded by ``dial_timeout + read_timeout``), subscribes everything
    in ``ledger`` and runs three tasks until the first one ends: the reader (replies and
    messages), the writer (subscription changes, woken by :meth:`kick`) and the watchdog
    (waits for the resubscription to be confirmed, then checks liveness). However a session
    ends, nothing counts as subscribed any more (``ledger.reset()``); subscribers are told
    (:meth:`_report_lost`) and the supervisor reconnects: at once after a session that
    lived, else with jittered exponential backoff capped at 1 s. A connection that is not
    :attr:`wanted` (a shard connection whose channels all left) ends its session after a
    short linger and waits, quietly, until it is wanted again.

    Health: an unresponsive server (liveness failed) or a failed connection attempt votes
    the client down (:meth:`_vote_down`: ``hold_down(source)``) at once. A plain drop
    (CLIENT KILL, output buffer limit) gets a grace period of one liveness interval first:
    it is usually repaired in milliseconds, and Redis itself is fine. Once resubscribed:
    the vote is withdrawn (``release_down``, ``check_now``) and, if it was a reconnect,
    :meth:`_report_regained` runs. Retry waits end early on :meth:`wake` (Sentinel's
    ``+switch-master``). A bug in the supervisor calls the settings' ``on_failed()``.

    Subclasses provide the connection (:meth:`_open_connection`), the reader
    (:meth:`_read`), the liveness check (:meth:`_check_liveness`) and :meth:`_summary`.
    """

    _source = "pubsub"  # the health monitor's name for this connection's vote
    _task_name = "gateway-redis-pubsub"

    def __init__(self, client: RedisClient, ledger: Ledger[T], settings: ListenerSettings[T]):
        self._client = client
        self.ledger = ledger
        self._settings = settings
        self._interval = settings.liveness_interval
        self._timeout = settings.liveness_timeout
        self._setup_timeout = client.config.dial_timeout + client.config.read_timeout
        self._dirty = asyncio.Event()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._grace: asyncio.TimerHandle | None = None
        self.live = False
        """True while connected and every subscription is confirmed."""
        self.failing = False
        """True after a connection attempt failed, until one succeeds."""
        self.failed = False
        """True once the supervisor died of a bug; the listener is then unusable."""
        self.reconnects = 0
        """Successful resubscriptions after a lost connection."""
        self._ever_live = self._held = False
        self._live_since = self._lost_at = self._last_rx = 0.0
        self._token: tuple[bytes, asyncio.Future[None]] | None = None
        self._token_seq = 0

    @property
    def started(self) -> bool:
        """True once :meth:`start` ran."""
        return self._task is not None

    @property
    def wanted(self) -> bool:
        """Whether a connection is needed at all (the classic one always is)."""
        return True

    def start(self) -> None:
        """Start the supervisor task (idempotent; needs a running loop)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._supervise(), name=self._task_name
            )

    def kick(self) -> None:
        """Subscriptions changed: let the writer bring the connection up to date."""
        self._dirty.set()

    def wake(self) -> None:
        """The server may be reachable now (Sentinel switched the primary): cut short the
        wait before the next connection attempt."""
        self._wake.set()

    async def aclose(self) -> None:
        """Cancel and await the supervisor (and with it every session task); close sockets."""
        task, self._task = self._task, None
        if self._grace is not None:
            self._grace.cancel()
        if task is not None:
            await cancel_and_wait(task)
        self.live = False
        if self._held:  # a closed listener has no say in the client's health
            self._held = False
            self._vote_up(answered=False)

    # -- for subclasses -------------------------------------------------------------------

    def _open_connection(self) -> AbstractConnection:
        raise NotImplementedError

    async def _read(self, conn: AbstractConnection) -> str:
        raise NotImplementedError

    async def _check_liveness(self) -> str | None:
        """Check that the connection still serves us; a problem or None."""
        raise NotImplementedError

    def _summary(self) -> str:
        """What is subscribed, for logs."""
        raise NotImplementedError

    def _session_ended(self, was_live: bool) -> None:
        """Called after every session, before the ledger is reset."""

    def _issue_token(self) -> tuple[bytes, asyncio.Future[None]]:
        """A new liveness token, and the future :meth:`_token_seen` resolves when the
        reader sees it come back. The check that issued it clears ``self._token``."""
        self._token_seq += 1
        token = b"%d" % self._token_seq
        seen: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._token = (token, seen)
        return token, seen

    def _token_seen(self, token: bytes) -> None:
        """The reader saw ``token`` come back on the connection."""
        current = self._token
        if current is not None and token == current[0] and not current[1].done():
            current[1].set_result(None)

    def _report_lost(self) -> None:
        """A live connection was lost (its subscriptions may miss messages)."""

    def _report_regained(self) -> None:
        """Everything was subscribed again after a lost connection."""

    def _vote_down(self, reason: str) -> None:
        """Tell the client's health this connection's server is unusable."""
        self._client.monitor.hold_down(self._source, f"{self._source}: {reason}")

    def _vote_up(self, *, answered: bool) -> None:
        """Withdraw :meth:`_vote_down`: the server answered, or its opinion no longer
        matters (idle, closed)."""
        self._client.monitor.release_down(self._source)
        self._client.monitor.check_now()

    # -- the supervisor -------------------------------------------------------------------

    async def _supervise(self) -> None:
        attempt = 0
        loop = asyncio.get_running_loop()
        try:
            while True:
                if not self.wanted:
                    self._go_idle()
                    while not self.wanted:
                        await self._dirty.wait()
                        self._dirty.clear()
                    attempt = 0
                reason, unresponsive = await self._session(self._open_connection())
                was_live, self.live = self.live, False
                self._token = None
                self._session_ended(was_live)
                # Nothing is subscribed any more: a subscriber arriving from now on waits
                # for the next connection's confirmation.
                self.ledger.reset()
                if not self.wanted:
                    continue
                if was_live:
                    self._lost_at = time.monotonic()
                    self._report_lost()
                    _log.warning(
                        "%s connection lost (%s); resubscribing",
                        self._source,
                        reason,
                        extra=log_fields("pubsub", "pubsub_lost", reason),
                    )
                    if unresponsive:
                        self._hold(reason)
                    else:
                        self._grace = loop.call_later(self._interval, self._hold, reason)
                    if self._lost_at - self._live_since >= self._interval:  # not flapping
                        attempt = 0
                        continue
                else:
                    self._hold(reason)
                    if not self.failing:
                        _log.warning(
                            "%s cannot connect (%s); retrying",
                            self._source,
                            reason,
                            extra=log_fields("pubsub", "pubsub_connect_failed", reason),
                        )
                        self.failing = True
                attempt += 1
                await self._pause(backoff(attempt))
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug, not an outage: never leave subscribers deaf and waiting
            _log.exception(
                "%s listener failed; ending every subscription",
                self._source,
                extra=log_fields("pubsub", "pubsub_listener_failed"),
            )
            self.failed, self.live = True, False
            self._hold("pubsub listener failed")
            self._settings.on_failed()

    async def _pause(self, seconds: float) -> None:
        if not self._wake.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                async with _driver.Deadline(seconds):
                    await self._wake.wait()
        self._wake.clear()

    def _hold(self, reason: str) -> None:
        if self._grace is not None:
            self._grace.cancel()
            self._grace = None
        self._held = True
        self._vote_down(reason)

    def _go_idle(self) -> None:
        # Nothing to serve: whatever this connection reported no longer matters.
        if self._grace is not None:
            self._grace.cancel()
            self._grace = None
        self.failing = False
        if self._held:
            self._held = False
            self._vote_up(answered=False)

    async def _session(self, conn: AbstractConnection) -> tuple[str, bool]:
        """Connect, resubscribe, serve until the connection fails.

        Returns why it ended, and whether Redis stopped answering (the watchdog ended it).
        """
        try:
            try:
                async with _driver.Deadline(self._setup_timeout):
                    await conn.connect()  # type: ignore[no-untyped-call]
            except Exception as exc:
                return f"connect failed: {describe_error(exc)}", True
            self.ledger.reset()
            self._last_rx = time.monotonic()
            self._dirty.set()
            loop = asyncio.get_running_loop()
            tasks = [
                loop.create_task(self._read(conn), name=f"{self._task_name}-reader"),
                loop.create_task(self._write(conn), name=f"{self._task_name}-writer"),
                loop.create_task(self._watch(), name=f"{self._task_name}-liveness"),
            ]
            try:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            finally:
                await cancel_and_wait(*tasks)
            ended = done.pop()
            error = ended.exception()
            reason = describe_error(error) if error is not None else ended.result()
            return reason, ended is tasks[2] and reason != _IDLE
        finally:
            with contextlib.suppress(Exception):
                await conn.disconnect(nowait=True)

    async def _write(self, conn: AbstractConnection) -> str:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            commands = self.ledger.pending_commands()
            if not commands:
                continue
            if not conn.is_connected:  # send_* would reconnect silently
                raise rexc.ConnectionError("subscriber connection closed")
            await conn.send_packed_command(conn.pack_commands(commands), check_health=False)

    async def _watch(self) -> str:
        try:
            async with _driver.Deadline(self._setup_timeout):
                await self.ledger.ready.wait()
        except asyncio.TimeoutError:
            return f"subscriptions not confirmed within {self._setup_timeout}s"
        self._became_live()
        unwanted_since: float | None = None
        while True:
            await asyncio.sleep(self._interval / 2)
            now = time.monotonic()
            if self.wanted:
                unwanted_since = None
            elif unwanted_since is None:
                unwanted_since = now
            elif now - unwanted_since >= _LINGER:
                return _IDLE
            if now - self._last_rx >= self._interval:
                problem = await self._check_liveness()
                if problem is not None:
                    return problem

    def _became_live(self) -> None:
        self.live, self.failing = True, False
        self._wake.clear()  # a hint older than this connection is stale
        self._live_since = time.monotonic()
        reconnected, self._ever_live = self._ever_live, True
        if self._grace is not None:
            self._grace.cancel()
            self._grace = None
        if self._held:
            self._held = False
            self._vote_up(answered=True)
        if reconnected:
            self.reconnects += 1
            _log.info(
                "%s resubscribed %s after %.2fs",
                self._source,
                self._summary(),
                self._live_since - self._lost_at,
                extra=log_fields("pubsub", "pubsub_resubscribed", reconnects=self.reconnects),
            )
            self._report_regained()
