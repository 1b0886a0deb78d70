"""The session store, :class:`SessionStore`: one Redis hash per session plus a per-user
index, kept atomic by Lua.

Key layout (``<p>`` is the client's key prefix, ``<tag>`` 12 hex digits derived from the
user id, ``sha256(x)`` a hex digest)::

    <p>session:{<tag>}:<sha256(session_id)>     hash: user_id, created_at,
                                                 last_accessed_at, expires_at (ms since
                                                 the epoch) and m:<name> = JSON value
    <p>user-sessions:{<tag>}:<sha256(user_id)>  sorted set: session IDs, score = absolute
                                                 expiry (ms); TTL = the latest expiry

A session ID is ``<tag>.<43 url-safe characters>`` (256 random bits). The tag is in the
ID so that a lookup by ID alone can name the hash slot of both keys: on Redis Cluster the
session and its user's index always share a slot, so every multi-key script stays atomic.
Raw session IDs and user ids never appear in key names or logs. Every write is a fixed
Lua script (never built from input) that passes all its keys as ``KEYS``; times come from
the Redis server's clock (``TIME``), so instances with skewed clocks agree.

On Redis Cluster the operations that touch more than one key (create, regenerate, delete,
listing, "log out everywhere") run as single-key steps instead, so that they keep working
while a slot migrates; :mod:`gateway_redis.sessions._cluster` says how and which
invariants the steps keep. The Lua scripts are in :mod:`gateway_redis.sessions.scripts`.

After each change that may leave a cached copy wrong (update, delete, regenerate, log out
everywhere) the store publishes a session event on its client's invalidation bus
(:mod:`gateway_redis.sessions.events`); caches and open WebSockets follow through
:meth:`SessionStore.on_change`. Touching a session only extends it: not published.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable, Iterator, Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from redis import exceptions as rexc

from gateway_redis._translate import is_wrong_type
from gateway_redis.errors import CommandError, SessionNotFound
from gateway_redis.localcache import LocalCache
from gateway_redis.sessions._cluster import SingleKeySteps
from gateway_redis.sessions.codec import (
    Session,
    as_text,
    capped_ttl_ms,
    check_user_id,
    decode_session,
    encode_metadata,
    is_valid_id,
    sha256_hex,
    slot_tag,
)
from gateway_redis.sessions.events import (
    SessionEventHandler,
    publish,
    session_dropped,
    subscribe,
    user_sessions_dropped,
)
from gateway_redis.sessions.scripts import Scripts
from gateway_redis.support import log_fields

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from gateway_redis.client import RedisClient

__all__ = ["Session", "SessionStore"]

_log = logging.getLogger(__name__)
_CHUNK = 256  # sessions per script call, so one call never blocks Redis for long


class SessionStore:
    """Sessions in Redis with absolute and optional idle expiry, safe under concurrency.

    ``default_ttl`` (seconds or timedelta, default 24 h) is the absolute lifetime of a new
    session. ``idle_timeout`` (seconds or timedelta, default None = no idle limit) ends a
    session that has not been :meth:`touch`-ed for that long; it is applied when sessions
    are read, so changing it affects existing sessions. Both are capped at 400 days
    (``ValueError``).

    Every call goes through :meth:`RedisClient.execute` under one deadline and raises
    :class:`~gateway_redis.RedisUnavailable` when Redis is down or does not answer.
    Unknown, malformed, expired, deleted and corrupt sessions all raise
    :class:`~gateway_redis.SessionNotFound`; malformed IDs are rejected without a Redis
    call. The store holds no per-request state and may be shared.

    One store per client: applications use the client's, :attr:`RedisClient.sessions
    <gateway_redis.RedisClient.sessions>`, configured once with
    :meth:`RedisClient.configure_sessions <gateway_redis.RedisClient.configure_sessions>`.
    Constructing one directly is for tests and tools (it publishes its changes on the same
    bus, so caches stay coherent either way).
    """

    def __init__(
        self,
        client: RedisClient,
        *,
        default_ttl: float | timedelta = 86400,
        idle_timeout: float | timedelta | None = None,
    ) -> None:
        self._client = client
        self._ttl_ms = capped_ttl_ms("default_ttl", default_ttl)
        self._idle_ms = 0 if idle_timeout is None else capped_ttl_ms("idle_timeout", idle_timeout)
        self._scripts = Scripts()
        self._call = self._scripts.call
        # Redis Cluster: one key per command (see the module docstring).
        self._steps: SingleKeySteps | None = None
        if client.config.mode == "cluster":
            self._steps = SingleKeySteps(
                self._scripts,
                session_key=self._session_key,
                index_key=self._index_key,
                idle_ms=self._idle_ms,
            )

    @property
    def client(self) -> RedisClient:
        """The client this store runs on (its invalidation bus carries the changes)."""
        return self._client

    @property
    def default_ttl(self) -> float:
        """The absolute lifetime of a new session, seconds."""
        return self._ttl_ms / 1000

    @property
    def idle_timeout(self) -> float | None:
        """The idle timeout, seconds, or None (no idle limit)."""
        return self._idle_ms / 1000 if self._idle_ms else None

    def on_change(self, handler: SessionEventHandler) -> Callable[[], None]:
        """Call ``handler(event)`` for each session event (:mod:`.events`) published by
        any instance's store on this client's channel, this one's included (at once, before
        it is sent). Returns a function that removes the handler."""

        return subscribe(self._client.invalidation, handler)

    def local_cache(self, name: str, *, maxsize: int, ttl: float) -> LocalCache[Any, Any]:
        """A new in-process cache of these sessions (``ttl`` in seconds): one of the client's
        invalidation bus, flushed and bypassed while :meth:`on_change` might miss events."""
        return self._client.invalidation.local_cache(name, maxsize=maxsize, ttl=ttl)

    # -- public API -----------------------------------------------------------------------

    async def create(
        self,
        user_id: str,
        metadata: Mapping[str, Any] | None = None,
        *,
        ttl: float | timedelta | None = None,
    ) -> str:
        """Create a session for ``user_id`` and return its new ID.

        ``metadata`` values must be JSON-serializable (keys str); a value of None is left
        out. ``ttl`` (seconds or timedelta, > 0, at most 400 days) overrides the default
        absolute lifetime. Raises ``TypeError``/``ValueError`` (including
        :class:`~gateway_redis.SerializationError`) before any Redis call, and
        :class:`~gateway_redis.RedisUnavailable`. On Redis Cluster the hash and the index
        entry are written one after the other (see the module docstring), so logins keep
        working while the user's slot migrates; the same holds for every method here.
        """
        user_id = check_user_id(user_id)
        pairs, _ = encode_metadata({} if metadata is None else metadata)
        ttl_ms = self._ttl_ms if ttl is None else capped_ttl_ms("ttl", ttl)
        tag = slot_tag(user_id)
        session_id = f"{tag}.{secrets.token_urlsafe(32)}"
        steps = self._steps
        if steps is not None:

            async def call(r: Redis) -> None:
                await steps.create(r, session_id, user_id, ttl_ms, pairs)

            await self._client.execute("session.create", call)
            return session_id
        key, index = self._session_key(session_id), self._index_key(user_id)
        args: list[str | int] = [session_id, user_id, ttl_ms, self._idle_ms, *pairs]
        await self._client.execute("session.create", self._call("create", [key, index], args))
        return session_id

    async def get(self, session_id: str) -> Session:
        """The live session ``session_id``; read-only (does not extend the idle timeout).

        Raises :class:`~gateway_redis.SessionNotFound` and
        :class:`~gateway_redis.RedisUnavailable`.
        """
        key = self._checked_key(session_id)
        reply = await self._run("session.get", self._call("get", [key]))
        return decode_session(session_id, reply, self._idle_ms)

    async def update(self, session_id: str, metadata: Mapping[str, Any]) -> Session:
        """Merge ``metadata`` into the session atomically and return the result.

        Only the given fields change; a value of None deletes that field. Concurrent
        updates of different fields all survive. A session that is gone (deleted,
        expired) is never written to, so a slow save after a logout cannot resurrect it.
        Does not change expiry (use :meth:`touch`). Raises ``TypeError``/``ValueError``
        before any Redis call, :class:`~gateway_redis.SessionNotFound` and
        :class:`~gateway_redis.RedisUnavailable`.
        """
        pairs, removed = encode_metadata(metadata)
        key = self._checked_key(session_id)
        args: list[str | int] = [self._idle_ms, len(pairs), *pairs, *removed]
        reply = await self._run("session.update", self._call("update", [key], args))
        session = decode_session(session_id, reply, self._idle_ms)
        await publish(self._client.invalidation, session_dropped(session_id), critical=False)
        return session

    async def touch(self, session_id: str) -> Session:
        """Record an access: set ``last_accessed_at`` to now and restart the idle timeout.

        The key's TTL becomes min(idle timeout, time left until the absolute expiry):
        touching never extends a session past ``expires_at``. Raises
        :class:`~gateway_redis.SessionNotFound` and :class:`~gateway_redis.RedisUnavailable`.
        """
        key = self._checked_key(session_id)
        reply = await self._run("session.touch", self._call("touch", [key], [self._idle_ms]))
        return decode_session(session_id, reply, self._idle_ms)

    async def delete(self, session_id: str) -> None:
        """Delete the session and its index entry (atomically, but on Cluster: the session
        first); no error if it is gone.

        A malformed ID is a no-op. Raises :class:`~gateway_redis.RedisUnavailable`.
        """
        if not is_valid_id(session_id):
            return
        key = self._session_key(session_id)

        async def call(r: Redis) -> None:
            try:
                raw = await r.hget(key, "user_id")
                user_id = as_text(raw) if raw is not None else None
            except (rexc.ResponseError, UnicodeDecodeError):  # not a hash / not UTF-8
                user_id = None
            if user_id is None or slot_tag(user_id) != session_id[:12]:
                await r.delete(key)  # missing, or corrupt: there is no index entry to trust
                return
            await self._delete(r, self._index_key(user_id), [session_id])

        # Logout protects security: confirmed by a replica when there is one (DESIGN).
        await self._client.confirmed("session.delete", key, call)
        await publish(self._client.invalidation, session_dropped(session_id), critical=True)

    async def get_user_sessions(self, user_id: str) -> list[Session]:
        """Every live session of ``user_id``, soonest absolute expiry first.

        Expired, deleted and corrupt entries are pruned from the index as it is read.
        Raises ``TypeError``/``ValueError`` for a bad ``user_id`` and
        :class:`~gateway_redis.RedisUnavailable`.
        """
        index = self._index_key(check_user_id(user_id))

        async def call(r: Redis) -> list[tuple[str, Any]]:
            return await self._load(r, index, await self._members(r, index, user_id))

        sessions = []
        for session_id, reply in await self._client.execute("session.get_user_sessions", call):
            try:
                sessions.append(decode_session(session_id, reply, self._idle_ms))
            except SessionNotFound:
                continue
        return sessions

    async def delete_user_sessions(self, user_id: str) -> int:
        """Delete every session of ``user_id`` ("log out everywhere"); returns how many.

        Sessions created while this runs are caught by a second pass. The count is of
        sessions this call removed (a retried call after a lost reply may count fewer).
        Raises ``TypeError``/``ValueError`` for a bad ``user_id`` and
        :class:`~gateway_redis.RedisUnavailable`.
        """
        index = self._index_key(check_user_id(user_id))

        async def call(r: Redis) -> int:
            deleted = 0
            for _ in range(3):
                n, left = await self._delete(r, index, await self._members(r, index, user_id))
                deleted += n
                if not left:
                    break
            return deleted

        deleted: int = await self._client.confirmed("session.delete_user_sessions", index, call)
        await publish(self._client.invalidation, user_sessions_dropped(user_id), critical=True)
        return deleted

    async def regenerate(self, session_id: str) -> str:
        """Give the session a new ID (at login, on privilege change); returns the new ID.

        User, metadata, ``created_at`` and absolute expiry carry over; the access time is
        set to now. The old ID stops working in the same atomic step (on Cluster: before
        the new one exists; a failure in between ends the session). Raises
        :class:`~gateway_redis.SessionNotFound` and :class:`~gateway_redis.RedisUnavailable`.
        """
        old_key = self._checked_key(session_id)
        new_id = f"{session_id[:12]}.{secrets.token_urlsafe(32)}"
        new_key = self._session_key(new_id)

        async def call(r: Redis) -> Any:
            if self._steps is not None:
                return await self._steps.regenerate(r, session_id, new_id, self._user_of)
            user_id = decode_session(
                session_id, await self._call("get", [old_key])(r), self._idle_ms
            ).user_id
            keys = [old_key, new_key, self._index_key(user_id)]
            return await self._call(
                "regenerate", keys, [session_id, new_id, user_id, self._idle_ms]
            )(r)

        decode_session(new_id, await self._run("session.regenerate", call), self._idle_ms)
        await publish(self._client.invalidation, session_dropped(session_id), critical=True)
        return new_id

    # -- internals ------------------------------------------------------------------------

    def _session_key(self, session_id: str) -> str:
        return self._client.key(f"session:{{{session_id[:12]}}}:{sha256_hex(session_id)}")

    def _index_key(self, user_id: str) -> str:
        return self._client.key(f"user-sessions:{{{slot_tag(user_id)}}}:{sha256_hex(user_id)}")

    def _checked_key(self, session_id: str) -> str:
        if not is_valid_id(session_id):
            raise SessionNotFound("session not found")
        return self._session_key(session_id)

    def _chunks(self, index: str, ids: list[str]) -> Iterator[tuple[list[str], list[str]]]:
        """``(ids, [index, *their session keys])`` in chunks of :data:`_CHUNK`."""
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start : start + _CHUNK]
            yield chunk, [index, *(self._session_key(i) for i in chunk)]

    async def _load(self, r: Redis, index: str, ids: list[str]) -> list[tuple[str, Any]]:
        """``(id, [now, hash])`` for the live sessions among ``ids``; the others leave
        ``index``."""
        if self._steps is not None:
            return await self._steps.load(r, index, ids)
        found: list[tuple[str, Any]] = []
        for chunk, keys in self._chunks(index, ids):
            now, *hashes = await self._call("load_many", keys, [self._idle_ms, *chunk])(r)
            found += [(i, [now, h]) for i, h in zip(chunk, hashes, strict=True) if h]
        return found

    async def _delete(self, r: Redis, index: str, ids: list[str]) -> tuple[int, int]:
        """Delete the sessions ``ids`` and their entries in ``index``; returns (sessions
        that existed, entries left in the index). Nothing to delete: ``(0, 0)``."""
        if not ids:
            return 0, 0
        if self._steps is not None:
            return await self._steps.delete(r, index, ids)
        deleted = left = 0
        for chunk, keys in self._chunks(index, ids):
            n, left = await self._call("delete", keys, chunk)(r)
            deleted += int(n)
        return deleted, int(left)

    def _user_of(self, session_id: str, reply: Any) -> str:
        return decode_session(session_id, reply, self._idle_ms).user_id

    async def _members(self, r: Redis, index: str, user_id: str) -> list[str]:
        """The IDs in ``index``; entries that cannot belong to ``user_id`` are removed."""
        tag, ids, bad = slot_tag(user_id), list[str](), list[Any]()
        for raw in await r.zrange(index, 0, -1):
            text = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
            if is_valid_id(text) and text[:12] == tag:
                ids.append(text)
            else:
                bad.append(raw)  # written by someone else: it names no session of ours
        if bad:
            _log.warning(
                "dropping %d malformed entries from a session index",
                len(bad),
                extra=log_fields("sessions", "session_index_pruned", "malformed", entries=len(bad)),
            )
            await r.zrem(index, *bad)
        return ids

    async def _run(self, operation: str, call: Callable[[Redis], Awaitable[Any]]) -> Any:
        """``client.execute`` for scripts that return ``{now, hash}`` or nil (not found)."""
        try:
            reply = await self._client.execute(operation, call)
        except CommandError as exc:
            if not is_wrong_type(exc):
                raise
            _log.warning(
                "%s: a session key holds the wrong type",
                operation,
                extra=log_fields("sessions", "session_corrupt", "wrong type", operation=operation),
            )
            raise SessionNotFound("session not found") from None
        if reply is None:
            raise SessionNotFound("session not found")
        return reply
