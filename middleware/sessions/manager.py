"""Sessions through an L1 cache kept coherent by the invalidation bus.

:class:`SessionManager` wraps its client's session store (``client.sessions``), or any
other :class:`~middleware.sessions.backend.SessionBackend` (an in-memory one in unit
tests): reads come from L1 when possible. The store publishes every change that may leave
a copy wrong (update, delete, regenerate, log out everywhere; made through the manager or
not, e.g. ``client.delete_session(...)`` from an admin tool) on the client's invalidation
bus, and the manager only listens (:meth:`SessionStore.on_change
<gateway_redis.sessions.SessionStore.on_change>`), dropping the affected L1 entries on
every instance. L1 entries never outlive the session's absolute or idle expiry.

L1 is keyed by the digest of the session ID (:func:`gateway_redis.sessions.id_digest`),
as the events are; a memo of ID -> digest (in process memory only, bounded in entries and
bytes) spares the hash on every warm request. An ID that is not of the shape the store
issues (:func:`~gateway_redis.sessions.codec.is_valid_id`) is never remembered, looked up
in L1 or sent to the store: it is a session that does not exist.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any

from gateway_redis import telemetry
from gateway_redis.client import RedisClient
from gateway_redis.errors import SessionNotFound
from gateway_redis.localcache import Stamp
from gateway_redis.sessions import Session, SessionEvent, SessionEventHandler, id_digest
from gateway_redis.sessions.codec import ID_LENGTH, is_valid_id
from middleware._memo import Memo
from middleware.sessions.backend import SessionBackend

__all__ = ["SessionEntry", "SessionManager", "SessionPin"]

_L1 = telemetry.lookup_tally("session", "l1")
_L2 = telemetry.lookup_tally("session", "l2")


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
        self.user = id_digest(session.user_id)  # to drop a user's sessions ("log out everywhere")
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

    ``client`` is the shared Redis client (not owned); the manager works on its one
    session store, ``client.sessions`` (default TTL and idle timeout are the store's: see
    :meth:`RedisClient.configure_sessions <gateway_redis.RedisClient.configure_sessions>`),
    and its invalidation bus keeps L1 coherent. Instead of ``client``, ``store`` may be any
    :class:`~middleware.sessions.backend.SessionBackend` (not owned): L1 is then the one
    its :meth:`~middleware.sessions.backend.SessionBackend.local_cache` gives, kept
    coherent by its events. Exactly one of the two (``ValueError``); ``client=c`` is
    ``store=c.sessions``. Why a store seam and not ``client=None``: a manager without
    sessions somewhere has nothing to serve, and the store already publishes its changes,
    so it alone knows when a cache of them can be trusted. ``l1_ttl`` (seconds, default 30) caps how
    long a session is served from memory; ``maxsize`` bounds L1. ``clock`` gives epoch
    seconds (what session expiry
    is checked against). Raises what the store raises:
    :class:`~gateway_redis.SessionNotFound`, :class:`~gateway_redis.RedisUnavailable`.
    """

    def __init__(
        self,
        *,
        client: RedisClient | None = None,
        store: SessionBackend | None = None,
        l1_ttl: float = 30.0,
        maxsize: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        backend: SessionBackend
        if client is not None and store is None:
            backend = client.sessions
        elif store is not None and client is None:
            backend = store
        else:
            raise ValueError("give exactly one of client= and store=")
        self._store = backend
        self._l1 = backend.local_cache("session", maxsize=maxsize, ttl=l1_ttl)
        self._digest_memo: Memo[str, str] = Memo(max_key=ID_LENGTH, max_entries=maxsize)
        self._digests = self._digest_memo.entries  # read directly on the hot path
        self._clock = clock
        backend.on_change(self._on_event)

    @property
    def store(self) -> SessionBackend:
        """The underlying store: the client's one session store, or the ``store`` given."""
        return self._store

    def on_change(self, handler: SessionEventHandler) -> Callable[[], None]:
        """Call ``handler(event)`` for each session change or end on any instance (see
        :meth:`SessionStore.on_change <gateway_redis.sessions.SessionStore.on_change>`),
        after this manager's L1 has dropped it. Returns a function that removes it."""
        return self._store.on_change(handler)

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
        digest = self._digests.get(session_id) or self._key(session_id)
        if digest is None:  # malformed: no such session
            return None
        entry: SessionEntry | None = self._l1.get(digest)
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
        digest = self._key(session_id)
        stamp = self._l1.stamp(digest) if digest is not None else None
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
        """The live session, from L1 or Redis (a read; does not touch it). Raises
        :class:`~gateway_redis.SessionNotFound` for a malformed ID without asking the store."""
        digest = self._key(session_id)
        if digest is None:
            raise SessionNotFound("session not found")
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
        self._remember(id_digest(session_id), session, self._l1.generation)
        return session

    async def update(self, session_id: str, changes: Mapping[str, Any]) -> Session:
        """Merge ``changes`` (None deletes a field); never resurrects a deleted session."""
        digest = id_digest(session_id)
        self._l1.delete(digest)
        session = await self._store.update(session_id, changes)  # the store broadcasts the change
        self._remember(digest, session, self._l1.generation)
        return session

    async def touch(self, session_id: str) -> Session:
        """Record an access (sliding expiry); not broadcast: it only ever extends a session,
        so other instances' copies are merely conservative."""
        digest = id_digest(session_id)
        generation = self._l1.generation
        session = await self._store.touch(session_id)
        self._remember(digest, session, generation)
        return session

    async def delete(self, session_id: str) -> None:
        """Delete the session everywhere; no error if it is already gone."""
        digest = id_digest(session_id)
        self._l1.delete(digest)
        await self._store.delete(session_id)  # the store broadcasts the change

    async def regenerate(self, session_id: str) -> Session:
        """Move the session to a new ID (the old one stops working); returns it."""
        digest = id_digest(session_id)
        self._l1.delete(digest)
        new_id = await self._store.regenerate(session_id)  # the store broadcasts the change
        session = await self._store.get(new_id)
        self._remember(id_digest(new_id), session, self._l1.generation)
        return session

    async def delete_user_sessions(self, user_id: str) -> int:
        """Delete every session of ``user_id`` ("log out everywhere"); returns how many."""
        user = id_digest(user_id)
        self._l1.discard_where(lambda _k, e: e.user == user)
        count = await self._store.delete_user_sessions(user_id)  # the store broadcasts the change
        return count

    def forget(self, session_id: str) -> None:
        """Drop the local copy only (after an error that leaves its state unknown)."""
        self._l1.delete(id_digest(session_id))

    # -- internals -----------------------------------------------------------------------

    def _key(self, session_id: str) -> str | None:
        """The digest of ``session_id`` (memoized: a warm request hashes nothing), or None
        when it is malformed (never hashed nor remembered: it may be megabytes long)."""
        digest = self._digests.get(session_id)
        if digest is None:
            if not is_valid_id(session_id):
                return None
            digest = id_digest(session_id)
            self._digest_memo.remember(session_id, digest, len(session_id), len(digest))
        return digest

    def _remember(self, digest: str, session: Session, generation: int) -> None:
        entry = SessionEntry(session)
        self._l1.set(digest, entry, ttl=entry.ends_at - self._clock(), generation=generation)

    def _on_event(self, event: SessionEvent) -> None:
        if event["op"] == "drop":
            for digest in event["ids"]:
                self._l1.delete(digest)
        else:
            user = event["user"]
            self._l1.discard_where(lambda _k, e: e.user == user)


def _ends_at(session: Session) -> float:
    """When the session ends (absolute or idle expiry, whichever is first), epoch seconds."""
    end = session.expires_at
    if session.idle_expires_at is not None and session.idle_expires_at < end:
        end = session.idle_expires_at
    return end.timestamp()
