"""Whether Redis may evict this library's keys: its ``maxmemory-policy``, read on every probe.

With an ``allkeys-*`` or ``volatile-*`` policy Redis deletes keys when ``maxmemory`` is
reached, and every key of ours has a TTL, so ``volatile-*`` counts too: an evicted deny-list
entry, subject cut-off or session index entry brings a revoked token or an ended session
back. Security keys need ``maxmemory-policy noeviction``, or a Redis instance of their own
that has it (a separate *database* does not help: the policy and eviction are per
instance).

The policy is read from ``INFO memory`` (``maxmemory_policy``), which works where
``CONFIG GET`` is disabled (managed Redis), on the server (Cluster: on every primary) at
connect and on each health probe. :class:`EvictionWatch` keeps the verdict for the client
(``RedisClient.eviction_unsafe``) and the gauge ``gateway.redis.eviction_unsafe``, and logs
once per change: a warning when a policy that can evict is seen, one line when it is gone,
and once (info) when the policy cannot be read.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from gateway_redis.support import describe_error, log_fields

__all__ = ["EvictionWatch", "policy_of", "unsafe_policy"]

_EVICTING = ("allkeys-", "volatile-")
_FIX = (
    "set `maxmemory-policy noeviction` on that server (CONFIG SET maxmemory-policy "
    "noeviction, and in its configuration so that it survives a restart), or give this "
    "library's keys a Redis instance of their own that uses noeviction"
)


def policy_of(reply: object) -> str | None:
    """``maxmemory_policy`` from an ``INFO memory`` reply (raw text, or the dict redis-py
    parses it into); None when it is not there."""
    if isinstance(reply, Mapping):
        value = reply.get("maxmemory_policy")
        return None if value is None else str(value)
    if isinstance(reply, bytes):
        reply = reply.decode(errors="replace")
    if isinstance(reply, str):
        for line in reply.splitlines():
            name, _, value = line.partition(":")
            if name == "maxmemory_policy":
                return value.strip()
    return None


def unsafe_policy(policy: str) -> bool:
    """True for a policy under which Redis may evict our keys (``allkeys-*``, ``volatile-*``)."""
    return policy.startswith(_EVICTING)


class EvictionWatch:
    """The last known eviction policies of the client's Redis servers and what they mean.

    :meth:`check` reads them (``read`` is the backend's ``read_info``) and never raises:
    when the servers cannot be reached, nothing is learned (the probe judges availability).
    """

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger
        self._unsafe: tuple[tuple[str, str], ...] | None = None  # None: never read
        self._policies: dict[str, str] = {}
        self._said_unreadable = False

    @property
    def unsafe(self) -> bool | None:
        """True when some server may evict our keys, False when none may, None before the
        policy could be read."""
        return None if self._unsafe is None else bool(self._unsafe)

    @property
    def policies(self) -> dict[str, str]:
        """The ``maxmemory-policy`` last read from each server, by address."""
        return dict(self._policies)

    def gauge(self) -> float | None:
        """The value of ``gateway.redis.eviction_unsafe``: 1, 0, or None (not known)."""
        return None if self._unsafe is None else float(bool(self._unsafe))

    async def check(self, read: Callable[[str], Awaitable[dict[str, Any]]]) -> None:
        """Read the policies with ``read("memory")`` and take note of them."""
        try:
            replies = await read("memory")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # unreachable now: the probe decides what that means
            self._logger.debug(
                "could not read maxmemory_policy: %s",
                describe_error(exc),
                extra=log_fields("health", "eviction_policy_unread", describe_error(exc)),
            )
            return
        self.update(replies)

    def update(self, replies: Mapping[str, object]) -> None:
        """Take note of the ``INFO memory`` replies (by server; an exception for a server
        that answered with an error) and log what changed."""
        policies: dict[str, str] = {}
        unreadable: list[str] = []
        for server, reply in sorted(replies.items()):
            policy = None if isinstance(reply, BaseException) else policy_of(reply)
            if policy is None:
                unreadable.append(server)
            else:
                policies[server] = policy
        if unreadable and not self._said_unreadable:
            self._said_unreadable = True
            self._logger.info(
                "cannot read maxmemory_policy from Redis at %s (INFO memory refused or "
                "incomplete): the library cannot check that its security keys (revocations, "
                "session indexes) are safe from eviction; make sure the policy is noeviction",
                ", ".join(unreadable),
                extra=log_fields("health", "eviction_policy_unreadable", servers=unreadable),
            )
        if not policies:
            return
        self._policies = policies
        unsafe = tuple((s, p) for s, p in policies.items() if unsafe_policy(p))
        if unsafe == self._unsafe:
            return
        was_unsafe = bool(self._unsafe)
        self._unsafe = unsafe
        if unsafe:
            described = ", ".join(f"{p} on {s}" for s, p in unsafe)
            self._logger.warning(
                "Redis may evict security keys: maxmemory-policy is %s. When memory runs "
                "out, Redis can delete token revocations and session index entries, and a "
                "revoked token or an ended session works again. Fix: %s.",
                described,
                _FIX,
                extra=log_fields(
                    "health",
                    "eviction_unsafe",
                    policies=[p for _, p in unsafe],
                    servers=[s for s, _ in unsafe],
                ),
            )
        elif was_unsafe:
            self._logger.info(
                "Redis no longer evicts security keys: maxmemory-policy is now %s",
                ", ".join(f"{p} on {s}" for s, p in policies.items()),
                extra=log_fields(
                    "health", "eviction_safe", policies=sorted(set(policies.values()))
                ),
            )
