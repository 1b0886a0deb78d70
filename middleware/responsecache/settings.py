"""The response cache's configuration: :class:`ResponseCacheSettings`.

Everything a client controls is bounded here: the bytes of L1 (the sum of cached bodies
and headers), the size of one cacheable body, the requests that may wait for one
computation and how long, and how long one instance waits for another's.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from middleware.responsecache.rules import CacheRule

__all__ = ["ResponseCacheSettings"]


def _positive(name: str, value: object, *, integer: bool = False) -> None:
    if integer:
        if type(value) is not int or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
        return
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")


@dataclass(frozen=True, slots=True, init=False)
class ResponseCacheSettings:
    """``rules``: the :class:`CacheRule` list (the first matching rule applies).

    ``max_body`` (bytes, default 256 KiB): larger responses are served, never cached.
    ``l1_bytes`` (default 32 MiB) and ``l1_entries`` (default 10,000) bound L1.
    ``max_waiters`` (default 10,000, over all keys): requests that wait for a computation
    in flight on this instance; beyond it a request computes its own response (uncached).
    ``wait_timeout`` (seconds, default 10): the longest such a wait; then the request
    computes its own. ``lock_ttl`` (seconds, default 10): the Redis fill lock's lifetime (an
    instance that dies while computing holds it no longer). ``lock_wait`` (seconds,
    default 2): how long an instance polls Redis for another instance's result, every
    ``poll_interval`` (default 0.02 s), before computing itself. ``honour_no_cache``
    (default True): a request's ``Cache-Control: no-cache`` skips the lookup (the fresh
    response is then stored). Raises ``ValueError``.
    """

    rules: tuple[CacheRule, ...]
    max_body: int
    l1_bytes: int
    l1_entries: int
    max_waiters: int
    wait_timeout: float
    lock_ttl: float
    lock_wait: float
    poll_interval: float
    honour_no_cache: bool

    def __init__(
        self,
        rules: Iterable[CacheRule],
        *,
        max_body: int = 256 * 1024,
        l1_bytes: int = 32 * 1024 * 1024,
        l1_entries: int = 10_000,
        max_waiters: int = 10_000,
        wait_timeout: float = 10.0,
        lock_ttl: float = 10.0,
        lock_wait: float = 2.0,
        poll_interval: float = 0.02,
        honour_no_cache: bool = True,
    ) -> None:
        if isinstance(rules, (str, CacheRule)):
            raise ValueError("rules must be a collection of CacheRule")
        rule_list = tuple(rules)
        if not all(isinstance(r, CacheRule) for r in rule_list):
            raise ValueError("rules must be CacheRule instances")
        for name, value in (
            ("max_body", max_body),
            ("l1_bytes", l1_bytes),
            ("l1_entries", l1_entries),
            ("max_waiters", max_waiters),
        ):
            _positive(name, value, integer=True)
        for name, seconds in (
            ("wait_timeout", wait_timeout),
            ("lock_ttl", lock_ttl),
            ("lock_wait", lock_wait),
            ("poll_interval", poll_interval),
        ):
            _positive(name, seconds)
        if not isinstance(honour_no_cache, bool):
            raise ValueError("honour_no_cache must be a bool")
        object.__setattr__(self, "rules", rule_list)
        object.__setattr__(self, "max_body", max_body)
        object.__setattr__(self, "l1_bytes", l1_bytes)
        object.__setattr__(self, "l1_entries", l1_entries)
        object.__setattr__(self, "max_waiters", max_waiters)
        object.__setattr__(self, "wait_timeout", float(wait_timeout))
        object.__setattr__(self, "lock_ttl", float(lock_ttl))
        object.__setattr__(self, "lock_wait", float(lock_wait))
        object.__setattr__(self, "poll_interval", float(poll_interval))
        object.__setattr__(self, "honour_no_cache", honour_no_cache)
