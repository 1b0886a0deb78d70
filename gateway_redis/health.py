"""Availability of Redis: one state machine per client, fed by calls and by probes; and
:class:`ClientState`, the client's lifecycle (here so that the pub/sub hub can read it
without importing the client module).

States: ``up`` (calls go through), ``down`` (calls fail fast; a probe runs about once a
second until Redis answers) and ``misconfigured`` (Redis answers but refuses our
credentials; probed slowly, never in a storm). Every change of state is logged once and
handed to listeners.

A call that failed for want of Redis switches the state to ``down`` at once when the
failure itself is evidence (nothing listens, no reply in time). A broken connection (reset,
closed mid-reply) is not: a flaky network or middlebox breaks one connection of a healthy
server. Such a call asks for an immediate probe (:meth:`HealthMonitor.check_now` with
``urgent=True``), and only a failing probe marks Redis down; a server that was killed
refuses the probe's reconnect, so it is still noticed within milliseconds. A probe that
itself meets only broken connections is not believed when calls got their replies after
the failure it judges (:meth:`HealthMonitor.answered`): the server answers, the network
between is flaky.

In cluster mode a failed call does not switch the state itself: it asks for a probe
(:meth:`HealthMonitor.check_now`), and the probe (``CLUSTER INFO`` on a node) decides, so
one node that stops answering fails only the calls routed to it; while such a node is
known, probes run every ``probe_interval`` (:meth:`HealthMonitor.probe_often`) to see it
come back.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import Awaitable, Callable

from gateway_redis.support import add_listener, call_listeners, cancel_and_wait, describe_error

__all__ = ["ClientState", "HealthMonitor", "HealthState", "StateListener"]

# While up, probes asked for by check_now() (failing calls in cluster mode can ask in a
# storm) start at least this many seconds apart; urgent ones (a broken connection: is the
# server gone?) at least _MIN_URGENT_GAP apart.
_MIN_PROBE_GAP = 0.1
_MIN_URGENT_GAP = 0.01


class ClientState(enum.Enum):
    """Lifecycle of a :class:`~gateway_redis.RedisClient`: a closed client cannot be reused."""

    NEW = "new"
    CONNECTED = "connected"
    CLOSED = "closed"


class HealthState(str, enum.Enum):
    """Whether Redis can serve calls."""

    UP = "up"
    DOWN = "down"
    MISCONFIGURED = "misconfigured"


StateListener = Callable[[HealthState, str], None]
"""Called as ``listener(new_state, reason)`` on every change of state, on the event loop."""

Probe = Callable[[], Awaitable[None]]


class HealthMonitor:
    """Owns the availability state and the background task that probes Redis.

    ``probe`` raises when Redis is not usable: an exception for which ``is_misconfigured``
    returns True (refused credentials) moves the state to ``misconfigured``, any other to
    ``down``, except one for which ``is_inconclusive`` returns True (a broken connection)
    when calls got replies since the failure being judged.
    """

    def __init__(
        self,
        probe: Probe,
        *,
        interval: float,
        probe_interval: float,
        is_misconfigured: Callable[[BaseException], bool],
        is_inconclusive: Callable[[BaseException], bool] = lambda _error: False,
        logger: logging.Logger,
        on_recover: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._probe = probe
        self._interval = interval
        self._probe_interval = probe_interval
        self._is_misconfigured = is_misconfigured
        self._is_inconclusive = is_inconclusive
        self._logger = logger
        self._on_recover = on_recover
        self._state = HealthState.UP
        self._reason = "connected"
        self._since = time.monotonic()
        self._listeners: list[StateListener] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._down_votes: dict[str, str] = {}
        self._closed = False
        self._last_probe = 0.0
        self._often = False
        self._urgent = False
        self._answered = False
        self.judging = False
        """True while a broken connection awaits the probe's verdict (the client then
        calls :meth:`answered` after each call that got its reply)."""

    @property
    def state(self) -> HealthState:
        """The current state."""
        return self._state

    @property
    def reason(self) -> str:
        """Why the state is what it is (``"connected"``, ``"timeout"``, ...)."""
        return self._reason

    @property
    def available(self) -> bool:
        """True when calls may go to Redis."""
        return self._state is HealthState.UP

    def add_listener(self, listener: StateListener) -> Callable[[], None]:
        """Register ``listener``; returns a function that removes it."""
        return add_listener(self._listeners, listener)

    def start(self) -> None:
        """Start the background probe task (idempotent)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="gateway-redis-health"
            )

    async def aclose(self) -> None:
        """Stop the background task and wait for it."""
        self._closed = True
        task, self._task = self._task, None
        if task is None:
            return
        await cancel_and_wait(task)
        if not task.cancelled():
            task.result()

    def report_failure(self, error: BaseException, reason: str) -> None:
        """A call failed because Redis was unreachable or misconfigured: switch at once."""
        state = HealthState.MISCONFIGURED if self._is_misconfigured(error) else HealthState.DOWN
        self._set(state, reason)

    def hold_down(self, source: str, reason: str) -> None:
        """Another component (the pub/sub liveness check) reports Redis unusable."""
        self._down_votes[source] = reason
        self._set(HealthState.DOWN, reason)

    def release_down(self, source: str) -> None:
        """``source`` no longer sees a problem; the next probe may bring the state up."""
        if self._down_votes.pop(source, None) is not None:
            self._wake.set()

    def probe_often(self, on: bool) -> None:
        """While ``on``, probe every ``probe_interval`` even when up (something needs
        watching that is not an outage: a cluster node that stopped answering)."""
        self._often = on

    def check_now(self, urgent: bool = False) -> None:
        """Run a probe as soon as possible (while up: at most every 0.1 s, or every 0.01 s
        when ``urgent``). A request that comes while a probe runs gets a probe of its own
        after it (that one may have started before the failure it must judge)."""
        if urgent:
            if not self.judging:
                self._answered = False
            self._urgent = self.judging = True
        self._wake.set()

    def answered(self) -> None:
        """A call got its reply while :attr:`judging`: Redis itself answers."""
        self._answered = True

    def _set(self, state: HealthState, reason: str) -> None:
        if state is self._state:
            return
        previous = self._state
        self._state, self._reason, self._since = state, reason, time.monotonic()
        log = self._logger.info if state is HealthState.UP else self._logger.warning
        log(
            "redis %s -> %s (%s)",
            previous.value,
            state.value,
            reason,
            extra={
                "event": "redis_state",
                "component": "health",
                "state": state.value,
                "previous": previous.value,
                "reason": reason,
            },
        )
        call_listeners(
            self._listeners,
            state,
            reason,
            logger=self._logger,
            message="health listener failed",
            fields=("health", "health_listener_failed"),
        )
        self._wake.set()

    async def _wait(self, seconds: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)
        self._wake.clear()

    async def _run(self) -> None:
        misconfigured_delay = self._probe_interval
        while not self._closed:
            if self._state is HealthState.UP:
                await self._wait(self._probe_interval if self._often else self._interval)
                gap = _MIN_URGENT_GAP if self._urgent else _MIN_PROBE_GAP
                gap += self._last_probe - time.monotonic()
                if gap > 0:
                    await asyncio.sleep(gap)
                self._urgent = False
            elif self._state is HealthState.MISCONFIGURED:
                # Slow down: a refused password answered once a second is no storm, but
                # there is nothing to gain from asking faster.
                await asyncio.sleep(misconfigured_delay)
                misconfigured_delay = min(misconfigured_delay * 2, 30.0)
            else:
                # Interruptible: check_now()/release_down() probe at once.
                await self._wait(self._probe_interval)
            self._last_probe = time.monotonic()
            try:
                await self._probe()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not (self._answered and self._is_inconclusive(exc)):
                    self.report_failure(exc, describe_error(exc))
                continue
            finally:
                self.judging = self._urgent  # another failure came meanwhile
                if not self.judging:
                    self._answered = False
            if self._state is not HealthState.UP:
                if self._down_votes:
                    continue
                misconfigured_delay = self._probe_interval
                if self._on_recover is not None:
                    try:
                        await self._on_recover()
                    except asyncio.CancelledError:
                        raise
                    except Exception as exc:
                        self.report_failure(exc, describe_error(exc))
                        continue
                self._set(HealthState.UP, "probe succeeded")
