"""Rate limits exact across instances: :class:`RateLimitStore` (GCRA in one Lua step).

Each :class:`Limit` (``limit`` units per ``period``) is a generic cell rate algorithm
(GCRA) cell: one key holding the *theoretical arrival time* (TAT, microseconds on the
Redis server's clock). A request of ``cost`` units advances the TAT by ``cost`` emission
intervals (``period / limit``) and is admitted while the TAT stays within one ``period``
of now, so a full budget can be spent at once and comes back smoothly (one unit every
emission interval), with no window edge where twice the limit gets through.

One request is one round trip: a single script (EVALSHA; re-sent by EVAL when Redis lost
it to a restart or failover, ``NOSCRIPT`` never reaches the caller) reads ``TIME`` and
evaluates every limit of the request together: it is admitted only when all admit it,
and only then are the cells advanced (a refused request consumes nothing). Redis runs
one script at a time, so any number of instances sharing the keys never admit more than
the limit. Times come from the Redis server (``TIME``; Redis 7 replicates a script's
effects, not the script, so this is deterministic on replicas); the app clock is never
used. The keys of one (bucket, identity) share a hash tag: one Cluster slot.

Keys: ``<prefix>rl:{<bucket>:<sha256(identity)[:32]>}:<limit>/<period in µs>`` (the
identity, a subject or an address, is never stored in clear; a changed limit gets a fresh
cell). Each key expires when its cell is full again. Sent at most once (a lost reply is
:class:`~gateway_redis.RedisUnavailable`, never a double charge).
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from gateway_redis.client import RedisClient
from gateway_redis.support import check_seconds

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.commands.core import AsyncScript

__all__ = ["Limit", "LimitState", "RateDecision", "RateLimitStore"]

# KEYS: one cell per limit. ARGV: cost, then per limit its emission interval and its
# period (µs; period = limit * interval). Returns {allowed, now_us, then per limit
# remaining, retry_after_us, reset_us}: retry_after 0 when that limit admits the request;
# reset is when the cell is full again. Nothing is written unless every limit admits.
_GCRA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local cost = tonumber(ARGV[1])
local cells, out, allowed = {}, {1, now}, 1
for i = 1, #KEYS do
  local interval, period = tonumber(ARGV[2 * i]), tonumber(ARGV[2 * i + 1])
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0') or 0
  if tat < now then tat = now end
  local after = tat + interval * cost
  local retry = after - period - now
  if retry > 0 then allowed = 0 else retry = 0 end
  cells[i] = {tat, after}
  out[3 * i + 1] = retry
end
out[1] = allowed
for i = 1, #KEYS do
  local interval, period = tonumber(ARGV[2 * i]), tonumber(ARGV[2 * i + 1])
  -- refused: the state before the request (its cost was not charged)
  local cell = cells[i][1 + allowed]
  local remaining = math.floor((period - (cell - now)) / interval)
  if remaining < 0 then remaining = 0 end
  out[3 * i] = remaining
  out[3 * i + 2] = cell - now
  if allowed == 1 then
    local ttl = math.ceil((cell - now) / 1000)
    if ttl < 1 then ttl = 1 end
    redis.call('SET', KEYS[i], string.format('%.0f', cell), 'PX', ttl)
  end
end
return out
"""

_BUCKET = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
_MAX_LIMITS = 8
_MAX_PERIOD = 366 * 86400.0
_MAX_CHECKED = 256  # (bucket, limits, cost) specs remembered; a rule is one


@dataclass(frozen=True, slots=True, init=False)
class Limit:
    """``limit`` units (requests, by default one each) per ``period`` (seconds or a
    timedelta, at most a year). A full ``limit`` may be spent at once; then one unit comes
    back every ``period / limit``. Raises ``ValueError`` for a bad value."""

    limit: int
    period: float
    interval_us: int  # emission interval, whole microseconds (rounded up: never looser)

    def __init__(self, limit: int, period: float | timedelta) -> None:
        if isinstance(limit, bool) or not isinstance(limit, int) or not 0 < limit <= 10**9:
            raise ValueError(f"limit must be an int in [1, 10**9], got {limit!r}")
        seconds = check_seconds("period", period, maximum=_MAX_PERIOD)
        object.__setattr__(self, "limit", limit)
        object.__setattr__(self, "period", seconds)
        object.__setattr__(self, "interval_us", max(1, math.ceil(seconds * 1e6 / limit)))

    @property
    def period_us(self) -> int:
        """The period as the script uses it: ``limit`` emission intervals, microseconds."""
        return self.limit * self.interval_us

    @property
    def name(self) -> str:
        """A short stable name, ``"<limit>-per-<period>s"`` (``10-per-1s``)."""
        return f"{self.limit}-per-{self.period:g}s"

    @classmethod
    def parse(cls, text: str) -> Limit:
        """``"10/s"``, ``"1000/h"``, ``"5/60s"``, ``"100/5m"``, ``"2/d"``. Raises
        ``ValueError`` naming the text."""
        count, sep, span = text.strip().partition("/")
        match = re.fullmatch(r"(\d+(?:\.\d+)?)?\s*([smhd])", span.strip())
        if not sep or not count.strip().isdigit() or match is None:
            raise ValueError(f"a limit is '<count>/<period>' such as '10/s' or '5/60s': {text!r}")
        unit = {"s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
        return cls(int(count), float(match.group(1) or 1) * unit)


@dataclass(frozen=True, slots=True)
class LimitState:
    """One limit's answer: ``remaining`` units after this request (before it, when the
    request was refused), ``retry_after`` seconds until this limit would admit the request
    (0 when it does) and ``reset_after`` seconds until its full budget is back."""

    limit: Limit
    remaining: int
    retry_after: float
    reset_after: float


@dataclass(frozen=True, slots=True)
class RateDecision:
    """The answer to :meth:`RateLimitStore.acquire`: ``allowed`` (then every limit was
    charged), one :class:`LimitState` per limit in the order given, and ``retry_after``
    (seconds; 0 when allowed): the longest wait any limit asks for."""

    allowed: bool
    states: tuple[LimitState, ...]
    retry_after: float


class RateLimitStore:
    """GCRA cells in Redis on ``client`` (not owned); see the module docstring."""

    __slots__ = ("_checked", "_client", "_script")

    def __init__(self, client: RedisClient) -> None:
        if not isinstance(client, RedisClient):
            raise ValueError("client must be a RedisClient")
        self._client = client
        self._script: AsyncScript | None = None
        self._checked: dict[tuple[str, tuple[Limit, ...], int], tuple[str, list[int]]] = {}

    @property
    def client(self) -> RedisClient:
        """The Redis client the cells live on."""
        return self._client

    @staticmethod
    def keys(bucket: str, identity: str, limits: Sequence[Limit]) -> list[str]:
        """The cell names (without the client's prefix) of ``identity`` in ``bucket``."""
        digest = hashlib.sha256(identity.encode("utf-8", "surrogatepass")).hexdigest()[:32]
        return [f"rl:{{{bucket}:{digest}}}:{limit.limit}/{limit.period_us}" for limit in limits]

    async def acquire(
        self, bucket: str, identity: str, limits: Sequence[Limit], *, cost: int = 1
    ) -> RateDecision:
        """Charge ``cost`` units to ``identity`` (a subject, an address: any string) under
        every one of ``limits`` in ``bucket`` (a rule's name: letters, digits and ``_.:-``,
        at most 64) if all of them admit it. One round trip.

        Raises ``ValueError`` for bad arguments (``cost`` above a limit could never be
        admitted), :class:`~gateway_redis.RedisUnavailable` and
        :class:`~gateway_redis.CommandError`.
        """
        if not isinstance(identity, str):
            raise ValueError("identity must be a str")
        if not isinstance(limits, tuple):
            limits = tuple(limits)
        # A rule's (bucket, limits, cost) is checked once, then found here (bounded).
        spec = self._checked.get((bucket, limits, cost)) if type(cost) is int else None
        if spec is None:
            spec = self._check(bucket, limits, cost)
        prefix, args = spec
        digest = hashlib.sha256(identity.encode("utf-8", "surrogatepass")).hexdigest()[:32]
        keys = [f"{prefix}{digest}}}:{limit.limit}/{limit.period_us}" for limit in limits]
        client = self._client
        reply: Any = await client.execute(
            "ratelimit", lambda r: self._run(r, keys, args), retry=False
        )
        states = []
        for i, limit in enumerate(limits):
            remaining, retry, reset = reply[3 * i + 2], reply[3 * i + 3], reply[3 * i + 4]
            states.append(LimitState(limit, int(remaining), int(retry) / 1e6, int(reset) / 1e6))
        retry_after = max(s.retry_after for s in states)
        return RateDecision(bool(int(reply[0])), tuple(states), retry_after)

    def _check(self, bucket: str, limits: tuple[Limit, ...], cost: int) -> tuple[str, list[int]]:
        if not isinstance(bucket, str) or not _BUCKET.fullmatch(bucket):
            raise ValueError(f"bucket must match {_BUCKET.pattern}, got {bucket!r}")
        if not limits or len(limits) > _MAX_LIMITS or not all(isinstance(x, Limit) for x in limits):
            raise ValueError(f"limits must be 1 to {_MAX_LIMITS} Limit instances")
        if isinstance(cost, bool) or not isinstance(cost, int) or cost < 1:
            raise ValueError(f"cost must be a positive int, got {cost!r}")
        if cost > min(x.limit for x in limits):
            raise ValueError(f"cost {cost} exceeds a limit: it could never be admitted")
        args: list[int] = [cost]
        for limit in limits:
            args += (limit.interval_us, limit.period_us)
        spec = (self._client.key(f"rl:{{{bucket}:"), args)
        if len(self._checked) >= _MAX_CHECKED:
            self._checked.clear()
        self._checked[bucket, limits, cost] = spec
        return spec

    def _run(self, r: Redis, keys: list[str], args: list[int]) -> Awaitable[Any]:
        script = self._script
        if script is None:
            script = self._script = r.register_script(_GCRA)
        # EVALSHA, then SCRIPT LOAD + EVALSHA on NOSCRIPT (a restarted or new primary).
        return script(keys, args, client=r)
