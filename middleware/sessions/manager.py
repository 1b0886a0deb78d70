"""Sessions through an L1 cache kept coherent by the invalidation bus.

:class:`SessionManager` wraps a :class:`~gateway_redis.sessions.SessionStore`: reads come
from L1 when possible; every change made through it (update, delete, regenerate, log out
everywhere) drops the affected L1 entries on every instance. L1 entries never outlive the
session's absolute or idle expiry. Events carry SHA-256 digests, never session IDs.

Changes made through any store of the same client (``client.delete_session(...)`` from an
admin tool, say) are broadcast too: the manager listens to the client's session changes.

L1 is keyed by the SHA-256 digest of the session ID, as the events are; a bounded memo of
ID -> digest (in process memory only) spares the hash on every warm request.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any

from gateway_redis import telemetry
from gateway_redis.invalidation import InvalidationBus
from gateway_redis.localcache import Stamp
from gateway_redis.sessions import Session, SessionStore
from gateway_redis.support import log_fields

__all__ = ["SessionEntry", "SessionManager", "SessionPin"]

_log = logging.getLogger(__name__)
_NS = "session"
_L1 = telemetry.lookup_tally("session", "l1")
_L2 = telemetry.lookup_tally("session", "l2")


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8", "replace")).hexdigest()


class SessionEntry:
    """An L1 entry: the session and the times a hit re-checks, as epoch seconds. Read only.

    ``flat`` is a plain dict of the metadata when it holds no containers (a request may
    shallow-copy it), else None.
    """

    __slots__ = ("ends_at", "flat", "idle_touch_at", "last", "session", "user")

    flat: dict[str, Any] | None

    def __init__(self, session: Session) -> None:
        self.session = session
        # No dict or list values: a request's copy of the metadata can be a shallow copy of
        # this plain dict (never handed out, never written).
        metadata = session.metadata
        flat = not any(type(v) in (dict, list) for v in metadata.values())
        self.flat = dict(metadata) if flat else None
        self.user = _digest(session.user_id)  # to drop a user's sessions ("log out everywhere")
        self.ends_at = _ends_at(session)
        self.last = session.last_accessed_at.timestamp()
        idle = session.idle_expires_at
        # Touched at least twice per idle timeout, so an active session never idles out.
        self.idle_touch_at = (self.last + idle.timestamp()) / 2 if idle is not None else math.inf


class SessionPin:
    """An L1 answer of :meth:`SessionManager.pin`, for a caller that remembers it across
    requests: ``entry`` may be served again while :meth:`SessionManager.is_current` says
    so. Immutable."""

    __slots__ = ("_current", "_stamp", "_until", "entry")

    def __init__(
        self, entry: SessionEntry, stamp: Stamp, until: float, current: Callable[[Stamp], bool]
    ) -> None:
        self.entry = entry
        self._stamp = stamp
        self._until = until
        self._current = current  # the L1 cache's is_current, bound once


class SessionManager:
    """Session operations with an L1 cache and cross-instance invalidation.

    ``store`` is the session store (default TTLs and idle timeout are its own); ``bus``
    keeps L1 coherent. ``l1_ttl`` (seconds, default 30) caps how long a session is served
    from memory; ``maxsize`` bounds L1. ``clock`` gives epoch seconds (what session expiry
    is checked against). Raises what the store raises:
    :class:`~gateway_redis.SessionNotFound`, :class:`~gateway_redis.RedisUnavailable`.
    """

    def __init__(
        self,
        store: SessionStore,
        *,
        bus: InvalidationBus,
        l1_ttl: float = 30.0,
        maxsize: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not isinstance(store, SessionStore):
            raise ValueError("store must be a SessionStore")
        self._store = store
        self._bus = bus
        self._l1 = bus.local_cache("session", maxsize=maxsize, ttl=l1_ttl)
        self._digests: dict[str, str] = {}
        self._digests_max = maxsize
        self._clock = clock
        bus.on_event(_NS, self._on_event)
        store.client.add_session_listener(self._on_store_change)

    @property
    def store(self) -> SessionStore:
        """The underlying store."""
        return self._store

    def cached(self, session_id: str, touch_interval: float = math.inf) -> Session | None:
        """The session from L1 if it is there, live, and was last touched less than
        ``touch_interval`` seconds ago (and less than half its idle timeout), else None.

        Synchronous (no Redis, no await): the hot path of a warm request. Counts nothing
        (the caller counts what it serves). L1 is empty and bypassed while the invalidation
        bus is out of sync.
        """
        entry = self.entry(session_id, touch_interval)
        return entry.session if entry is not None else None

    def entry(self, session_id: str, touch_interval: float = math.inf) -> SessionEntry | None:
        """Like :meth:`cached`, but the L1 entry itself (the session and its metadata as a
        plain dict when flat). Synchronous, no Redis, counts nothing."""
        entry: SessionEntry | None = self._l1.get(self._key(session_id))
        if entry is None:
            return None
        now = self._clock()
        if entry.ends_at <= now or now - entry.last >= touch_interval or now >= entry.idle_touch_at:
            return None
        return entry

    def pin(self, session_id: str, touch_interval: float = math.inf) -> SessionPin | None:
        """Like :meth:`entry`, but a :class:`SessionPin` of it, or None. Synchronous."""
        entry = self.entry(session_id, touch_interval)
        if entry is None:
            return None
        stamp = self._l1.stamp(self._key(session_id))
        if stamp is None:
            return None
        until = min(entry.ends_at, entry.last + touch_interval, entry.idle_touch_at)
        return SessionPin(entry, stamp, until, self._l1.is_current)

    def is_current(self, pin: SessionPin) -> bool:
        """Whether ``pin.entry`` may still be served as it is: it is still the live L1
        entry (no change, drop, eviction or flush since) within its TTL, and no expiry or
        touch is due. One dict lookup, two clock reads."""
        return pin._current(pin._stamp) and self._clock() < pin._until

    async def get(self, session_id: str) -> Session:
        """The live session, from L1 or Redis (a read; does not touch it)."""
        digest = self._key(session_id)
        entry: SessionEntry | None = self._l1.get(digest)
        if entry is not None and entry.ends_at > self._clock():
            _L1.value += 1
            return entry.session
        generation = self._l1.generation
        session = await self._store.get(session_id)
        _L2.value += 1
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

    def _key(self, session_id: str) -> str:
        """The digest of ``session_id`` (memoized: a warm request hashes nothing)."""
        digest = self._digests.get(session_id)
        if digest is None:
            digest = _digest(session_id)
            if len(self._digests) >= self._digests_max:
                self._digests.clear()
            self._digests[session_id] = digest
        return digest

    def _remember(self, digest: str, session: Session, generation: int) -> None:
        entry = SessionEntry(session)
        self._l1.set(digest, entry, ttl=entry.ends_at - self._clock(), generation=generation)

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
            _log.warning(
                "session invalidation not broadcast; other instances may lag",
                extra=log_fields("sessions", "session_invalidation_not_sent"),
            )

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


def _ends_at(session: Session) -> float:
    """When the session ends (absolute or idle expiry, whichever is first), epoch seconds."""
    end = session.expires_at
    if session.idle_expires_at is not None and session.idle_expires_at < end:
        end = session.idle_expires_at
    return end.timestamp()
