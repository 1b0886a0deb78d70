"""The seam between :class:`~middleware.sessions.SessionManager` and where sessions live:
the :class:`SessionBackend` Protocol.

The Redis implementation is :class:`gateway_redis.sessions.SessionStore` (a client's
``client.sessions``); an in-memory one can stand in for unit tests of the middleware. The
contract is what the manager and the session middleware rely on:

- session IDs are issued by the backend (:meth:`SessionBackend.create`,
  :meth:`SessionBackend.regenerate`) in the shape of
  :class:`~gateway_redis.sessions.SessionStore`'s (``<12 hex>.<43 url-safe characters>``),
  since the middleware carries them in cookies and headers;
- a session ends at its absolute expiry or its idle expiry, whichever is first; every
  read of an unknown, malformed, ended or deleted session raises
  :class:`~gateway_redis.SessionNotFound`, and an outage
  :class:`~gateway_redis.RedisUnavailable` (or another
  :class:`~gateway_redis.GatewayRedisError`);
- :meth:`SessionBackend.update` merges (None deletes a field) and never writes to a
  session that is gone, so a slow save cannot resurrect a logged-out session;
- every change that may leave a cached copy wrong (update, delete, regenerate, log out
  everywhere) is delivered to the :meth:`SessionBackend.on_change` handlers, this
  backend's own changes at once (before the call returns);
- :meth:`SessionBackend.local_cache` gives caches that stay coherent with those events:
  the backend flushes and bypasses them whenever a handler might miss one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any, Protocol

from gateway_redis.localcache import LocalCache
from gateway_redis.sessions import Session, SessionEventHandler

__all__ = ["SessionBackend"]


class SessionBackend(Protocol):
    """Where a :class:`~middleware.sessions.SessionManager` keeps sessions; see the module
    docstring for the contract. Times are seconds (or ``timedelta``)."""

    async def create(
        self,
        user_id: str,
        metadata: Mapping[str, Any] | None = None,
        *,
        ttl: float | timedelta | None = None,
    ) -> str:
        """Create a session for ``user_id`` (JSON ``metadata``; None values left out) and
        return its new ID; ``ttl`` overrides the backend's default absolute lifetime."""
        ...

    async def get(self, session_id: str) -> Session:
        """The live session; a read (does not extend it)."""
        ...

    async def update(self, session_id: str, metadata: Mapping[str, Any]) -> Session:
        """Merge ``metadata`` (None deletes a field) into the live session; returns it."""
        ...

    async def touch(self, session_id: str) -> Session:
        """Record an access now (restarts the idle timeout, never past the absolute
        expiry); returns the session. Not an event: it only ever extends a session."""
        ...

    async def delete(self, session_id: str) -> None:
        """End the session; no error if it is already gone."""
        ...

    async def regenerate(self, session_id: str) -> str:
        """Move the live session to a new ID (the old one stops working); returns it."""
        ...

    async def delete_user_sessions(self, user_id: str) -> int:
        """End every session of ``user_id``; returns how many there were."""
        ...

    def on_change(self, handler: SessionEventHandler) -> Callable[[], None]:
        """Call ``handler(event)`` for each session event; returns a function that
        removes it."""
        ...

    def local_cache(self, name: str, *, maxsize: int, ttl: float) -> LocalCache[Any, Any]:
        """A new in-process cache kept coherent with :meth:`on_change` (flushed and
        bypassed while an event might be missed)."""
        ...
