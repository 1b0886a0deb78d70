"""Sessions through an L1 cache kept coherent by the invalidation bus.

:class:`SessionManager` wraps a :class:`~gateway_redis.sessions.SessionStore`: reads come
from L1 when possible; every change made through it (update, delete, regenerate, log out
everywhere) drops the affected L1 entries on every instance. L1 entries never outlive the
session's absolute or idle expiry. Events carry SHA-256 digests, never session IDs.

Changes made through any store of the same client (``client.delete_session(...)`` from an
admin tool, say) are broadcast too: the manager listens to the client's session changes.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from gateway_redis import telemetry
from gateway_redis.invalidation import InvalidationBus
from gateway_redis.sessions import Session, SessionStore

__all__ = ["SessionManager"]

_log = logging.getLogger(__name__)
_NS = "session"
_LOOKUPS = telemetry.instruments().cache_lookups
_L1 = {telemetry.ATTR_CACHE: "session", telemetry.ATTR_RESULT: "l1"}
_L2 = {telemetry.ATTR_CACHE: "session", telemetry.ATTR_RESULT: "l2"}


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8", "replace")).hexdigest()


@dataclass(frozen=True, slots=True)
class _Entry:
    session: Session
    user: str  # digest of the user id, to drop a user's sessions on "log out everywhere"


class SessionManager:
    """Session operations with an L1 cache and cross-instance invalidation.

    ``store`` is the session store (default TTLs and idle timeout are its own); ``bus``
    keeps L1 coherent. ``l1_ttl`` (seconds, default 30) caps how long a session is served
    from memory; ``maxsize`` bounds L1. Raises what the store raises:
    :class:`~gateway_redis.SessionNotFound`, :class:`~gateway_redis.RedisUnavailable`.
    """

    def __init__(
        self,
        store: SessionStore,
        *,
        bus: InvalidationBus,
        l1_ttl: float = 30.0,
        maxsize: int = 10_000,
    ) -> None:
        if not isinstance(store, SessionStore):
            raise ValueError("store must be a SessionStore")
        self._store = store
        self._bus = bus
        self._l1 = bus.local_cache("session", maxsize=maxsize, ttl=l1_ttl)
        bus.on_event(_NS, self._on_event)
        store.client.add_session_listener(self._on_store_change)

    @property
    def store(self) -> SessionStore:
        """The underlying store."""
        return self._store

    async def get(self, session_id: str) -> Session:
        """The live session, from L1 or Redis (a read; does not touch it)."""
        digest = _digest(session_id)
        entry: _Entry | None = self._l1.get(digest)
        if entry is not None and _remaining(entry.session) > 0:
            _LOOKUPS.add(1, _L1)
            return entry.session
        generation = self._l1.generation
        session = await self._store.get(session_id)
        _LOOKUPS.add(1, _L2)
        self._remember(digest, session, generation)
        return session

    async def create(
        self,
        user_id: str,
        metadata: Mapping[str, Any] | None = None,
        *,
        ttl: float | timedelta | None = None,
    ) -> Session:
        """Create a session and return it (two round trips: create, then read back)."""
        session_id = await self._store.create(user_id, metadata, ttl=ttl)
        session = await self._store.get(session_id)
        self._remember(_digest(session_id), session, self._l1.generation)
        return session

    async def update(self, session_id: str, changes: Mapping[str, Any]) -> Session:
        """Merge ``changes`` (None deletes a field); never resurrects a deleted session."""
        digest = _digest(session_id)
        self._l1.delete(digest)
        session = await self._store.update(session_id, changes)  # broadcast by the listener
        self._remember(digest, session, self._l1.generation)
        return session

    async def touch(self, session_id: str) -> Session:
        """Record an access (sliding expiry); not broadcast: it only ever extends a session,
        so other instances' copies are merely conservative."""
        digest = _digest(session_id)
        generation = self._l1.generation
        session = await self._store.touch(session_id)
        self._remember(digest, session, generation)
        return session

    async def delete(self, session_id: str) -> None:
        """Delete the session everywhere; no error if it is already gone."""
        digest = _digest(session_id)
        self._l1.delete(digest)
        await self._store.delete(session_id)  # broadcast by the listener

    async def regenerate(self, session_id: str) -> Session:
        """Move the session to a new ID (the old one stops working); returns it."""
        digest = _digest(session_id)
        self._l1.delete(digest)
        new_id = await self._store.regenerate(session_id)  # broadcast by the listener
        session = await self._store.get(new_id)
        self._remember(_digest(new_id), session, self._l1.generation)
        return session

    async def delete_user_sessions(self, user_id: str) -> int:
        """Delete every session of ``user_id`` ("log out everywhere"); returns how many."""
        user = _digest(user_id)
        self._l1.discard_where(lambda _k, e: e.user == user)
        count = await self._store.delete_user_sessions(user_id)  # broadcast by the listener
        return count

    def forget(self, session_id: str) -> None:
        """Drop the local copy only (after an error that leaves its state unknown)."""
        self._l1.delete(_digest(session_id))

    # -- internals -----------------------------------------------------------------------

    def _remember(self, digest: str, session: Session, generation: int) -> None:
        entry = _Entry(session, _digest(session.user_id))
        self._l1.set(digest, entry, ttl=_remaining(session), generation=generation)

    async def _publish(self, event: Mapping[str, Any], *, critical: bool = False) -> None:
        """Broadcast ``event`` (applied here first, even if sending fails).

        Ending a session is ``critical``: if the event cannot be sent the error propagates
        (retrying a logout is harmless). For an update the change is already in Redis, and an
        instance that cannot publish is almost always one that lost Redis, which the others
        notice too (their L1 is then off); the error is not worth failing the request for.
        """
        try:
            await self._bus.publish(_NS, event)
        except Exception:
            if critical:
                raise
            _log.warning("session invalidation not broadcast; other instances may lag")

    async def _on_store_change(self, kind: str, data: Mapping[str, str]) -> None:
        if kind == "update":
            digest = _digest(data["session_id"])
            self._l1.delete(digest)
            await self._publish({"op": "drop", "ids": [digest]})
        elif kind == "delete":
            digest = _digest(data["session_id"])
            self._l1.delete(digest)
            await self._publish({"op": "drop", "ids": [digest]}, critical=True)
        elif kind == "delete_user":
            user = _digest(data["user_id"])
            self._l1.discard_where(lambda _k, e: e.user == user)
            await self._publish({"op": "drop_user", "user": user}, critical=True)

    def _on_event(self, event: Mapping[str, Any]) -> None:
        op = event.get("op")
        if op == "drop":
            for digest in event.get("ids") or ():
                if isinstance(digest, str):
                    self._l1.delete(digest)
        elif op == "drop_user" and isinstance(event.get("user"), str):
            user = event["user"]
            self._l1.discard_where(lambda _k, e: e.user == user)


def _remaining(session: Session) -> float:
    """Seconds until the session ends (absolute or idle expiry, whichever is first)."""
    end = session.expires_at
    if session.idle_expires_at is not None and session.idle_expires_at < end:
        end = session.idle_expires_at
    return end.timestamp() - time.time()
