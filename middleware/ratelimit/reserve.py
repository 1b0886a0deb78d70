"""The approximate mode's local allowance: :class:`Reserves`.

A rule with ``batch`` > 1 charges ``batch`` units to an identity in one script, and this
instance then admits that identity's requests from those units without a round trip,
until they run out or ``batch_hold`` seconds have passed (what is left is then dropped).
Units are charged in Redis before they are used, so all instances together still never
admit more than the limit; what they may lose is the units reserved and dropped unused:
at most ``batch - cost`` per instance and identity each ``batch_hold`` seconds (fewer
requests admitted than the limit, never more). One batch is charged at a time per
identity and instance: requests arriving meanwhile wait for it and take from it, and those
it cannot cover are charged one by one, exactly; so are all requests once fewer than
``batch`` units are left in Redis.

The reserves are per process, keyed by (rule, identity): identities come from clients, so
the table is bounded (:data:`MAX_RESERVES` entries; emptied when full, which drops
reserved units: again fewer admitted, never more).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator

from gateway_redis.ratelimit import LimitState, RateDecision

__all__ = ["MAX_RESERVES", "Reserve", "Reserves"]

MAX_RESERVES = 10_000


class Reserve:
    """Units charged in Redis and not used yet: ``left`` until ``until`` (monotonic), and
    the decision of the script that charged them (for the response fields)."""

    __slots__ = ("charged", "decision", "left", "until")

    def __init__(self, decision: RateDecision, left: int, hold: float) -> None:
        self.decision = decision
        self.left = left
        self.charged = time.monotonic()
        self.until = self.charged + hold

    def take(self, cost: int) -> RateDecision | None:
        """Use ``cost`` units: the decision to answer with, or None when too few are left
        or the reserve is too old."""
        now = time.monotonic()
        if self.left < cost or now >= self.until:
            return None
        self.left -= cost
        elapsed = now - self.charged
        states = tuple(
            LimitState(
                s.limit,
                s.remaining + self.left,
                0.0,
                max(0.0, s.reset_after - elapsed),
            )
            for s in self.decision.states
        )
        return RateDecision(True, states, 0.0)


class Reserves:
    """Bounded reserves per (rule name, identity); see the module docstring. One batch is
    charged at a time per key (:meth:`charging`): concurrent requests of the identity wait
    for it instead of each charging a batch of their own."""

    __slots__ = ("_entries", "_pending")

    def __init__(self) -> None:
        self._entries: dict[tuple[str, str], Reserve] = {}
        # Batches being charged: at most one per request in flight, so bounded by them.
        self._pending: dict[tuple[str, str], asyncio.Future[None]] = {}

    def charging(self, rule: str, identity: str) -> asyncio.Future[None] | None:
        """The batch being charged for the key (await it, then :meth:`take`), or None."""
        return self._pending.get((rule, identity))

    @contextlib.contextmanager
    def charge(self, rule: str, identity: str) -> Iterator[None]:
        """Mark a batch being charged for the key for the duration of the block."""
        key = (rule, identity)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending[key] = future
        try:
            yield
        finally:
            del self._pending[key]
            future.set_result(None)

    def take(self, rule: str, identity: str, cost: int) -> RateDecision | None:
        """An admitted decision from the identity's reserve, or None (ask Redis)."""
        reserve = self._entries.get((rule, identity))
        if reserve is None:
            return None
        decision = reserve.take(cost)
        if decision is None:
            del self._entries[rule, identity]
        return decision

    def put(self, rule: str, identity: str, decision: RateDecision, left: int, hold: float) -> None:
        """Keep ``left`` units charged by ``decision`` for ``hold`` seconds."""
        if left <= 0:
            return
        if len(self._entries) >= MAX_RESERVES:
            self._entries.clear()
        self._entries[rule, identity] = Reserve(decision, left, hold)

    def __len__(self) -> int:
        return len(self._entries)
