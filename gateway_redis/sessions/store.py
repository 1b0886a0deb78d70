"""The session store, :class:`SessionStore`: one Redis hash per session plus a per-user
index, kept atomic by Lua.

Key layout (``<p>`` is the client's key prefix, ``<tag>`` a session's key tag and
``<utag>`` its user's, :mod:`~gateway_redis.sessions.tags`; ``sha256(x)`` a hex digest)::

    <p>session:{<tag>}:<sha256(session_id)>        hash: user_id, created_at,
                                                    last_accessed_at, expires_at (ms since
                                                    the epoch) and m:<name> = JSON value
    <p>user-sessions:{<utag>}:<sha256(user_id)>    sorted set: <tag>:<sha256(session_id)>
                                                    per session, score = absolute expiry
                                                    (ms); TTL = the latest expiry

A session ID is ``<12 hex digits>.<43 url-safe characters>`` (256 random bits). Without
``tag_key`` the 12 digits are random and are the key's tag; with it, ``<tag>`` = ``<utag>``
(a user's keys share a slot) shows in the ID masked: either way an ID says nothing about
its user, and two IDs of one user share nothing. Redis holds no session ID: key names and
index members carry digests, so reading Redis, a replica, a backup or ``MONITOR`` gives
no session away; listed sessions carry only their ID's digest (:class:`~.codec.Session`).
User ids never appear in key names or logs. Every script is fixed Lua (never built from
input) that passes its keys as ``KEYS`` (one exception: ``create`` in
:mod:`~gateway_redis.sessions.scripts`); times come from the Redis server's clock.

A user has at most ``max_per_user`` sessions: a create that goes over ends the user's
sessions that expire soonest (with one lifetime for all, the oldest, to the millisecond;
never the new one) in the same script (on Cluster: before the create returns), publishing
their change events. Index entries of sessions that already ended count until the index
is next pruned: the cap may end a session early, never late.

On Redis Cluster the operations that touch more than one key (create, regenerate, delete,
listing, "log out everywhere") run as single-key steps, which need no shared slot and
keep working while a slot migrates; :mod:`gateway_redis.sessions._cluster` says how
and which invariants the steps keep. The Lua scripts are in
:mod:`gateway_redis.sessions.scripts`, the index in ``_index``.

After each change that may leave a cached copy wrong (update, delete, regenerate, log out
everywhere) the store publishes a session event on its client's invalidation bus
(:mod:`gateway_redis.sessions.events`); caches and open WebSockets follow through
:meth:`SessionStore.on_change`. Touching a session only extends it: not published.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from redis import exceptions as rexc

from gateway_redis._translate import is_wrong_type
from gateway_redis.errors import CommandError, SessionNotFound
from gateway_redis.localcache import LocalCache
from gateway_redis.sessions._index import UserIndex, digests
from gateway_redis.sessions.codec import (
    Session,
    as_text,
    capped_ttl_ms,
    check_user_id,
    decode_session,
    encode_metadata,
    is_valid_id,
    new_id,
)
from gateway_redis.sessions.events import (
    SessionEventHandler,
    publish,
    session_dropped,
    sessions_dropped,
    subscribe,
    user_sessions_dropped,
)
from gateway_redis.sessions.scripts import Scripts
from gateway_redis.sessions.tags import TagScheme, check_tag_key
from gateway_redis.support import log_fields

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from gateway_redis.client import RedisClient

__all__ = ["MAX_PER_USER", "Session", "SessionStore"]

_log = logging.getLogger(__name__)
MAX_PER_USER = 100
"""The default cap on sessions per user (:class:`SessionStore` ``max_per_user``)."""
_CAP_LIMIT = 100_000


class SessionStore:
    """Sessions in Redis with absolute and optional idle expiry, safe under concurrency.

    ``default_ttl`` (seconds or timedelta, default 24 h) is the absolute lifetime of a new
    session. ``idle_timeout`` (seconds or timedelta, default None = no idle limit) ends a
    session that has not been :meth:`touch`-ed for that long; it is applied when sessions
    are read, so changing it affects existing sessions. Both are capped at 400 days
    (``ValueError``). ``max_per_user`` (default :data:`MAX_PER_USER`, 1 to 100,000) caps
    a user's sessions: creating one more ends those that expire soonest (the oldest, when
    they share a lifetime), atomically with the create, and publishes their change events
    (open WebSockets of those sessions close as after a logout). ``tag_key`` (str or bytes,
    at least 32 bytes, the same on every instance; default None) keeps each user's keys in
    one hash slot while IDs still share nothing; changing it logs everyone out
    (:mod:`~gateway_redis.sessions.tags`).

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
        max_per_user: int = MAX_PER_USER,
        tag_key: str | bytes | None = None,
    ) -> None:
        self._client = client
        self._ttl_ms = capped_ttl_ms("default_ttl", default_ttl)
        self._idle_ms = 0 if idle_timeout is None else capped_ttl_ms("idle_timeout", idle_timeout)
        if (
            isinstance(max_per_user, bool)
            or not isinstance(max_per_user, int)
            or not 1 <= max_per_user <= _CAP_LIMIT
        ):
            raise ValueError(f"max_per_user must be an int from 1 to 100000, got {max_per_user!r}")
        self._cap = max_per_user
        scripts = Scripts()
        self._call = scripts.call
        self._tags = TagScheme(check_tag_key("tag_key", tag_key))
        self._index = UserIndex(
            client, scripts, self._tags, idle_ms=self._idle_ms, cap=max_per_user
        )
        # Redis Cluster: one key per command (see the module docstring).
        self._steps = self._index.steps

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

    @property
    def max_per_user(self) -> int:
        """The most sessions one user can have; a new one ends the oldest."""
        return self._cap

    @property
    def settings(self) -> tuple[float, float | None, int, str | None]:
        """``(default_ttl, idle_timeout, max_per_user, a fingerprint of tag_key or None)``,
        to compare two stores' settings (the key itself is never shown)."""
        return self.default_ttl, self.idle_timeout, self._cap, self._tags.fingerprint

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
        :class:`~gateway_redis.RedisUnavailable`. A user's sessions over
        :attr:`max_per_user` end (see the class docstring). On Redis Cluster the hash and
        the index entry are written one after the other (see the module docstring), so
        logins keep working while a slot migrates; the same holds for every
        method here.
        """
        user_id = check_user_id(user_id)
        pairs, _ = encode_metadata({} if metadata is None else metadata)
        ttl_ms = self._ttl_ms if ttl is None else capped_ttl_ms("ttl", ttl)
        session_id = self._tags.new_id(user_id)
        member, index = self._index.member(session_id), self._index.index_key(user_id)
        steps = self._steps
        if steps is not None:

            async def call(r: Redis) -> list[str]:
                return digests(await steps.create(r, member, user_id, ttl_ms, pairs))

            ended = await self._client.execute("session.create", call)
        else:
            key, prefix = self._index.key_of(member), self._index.session_prefix
            args: list[str | int] = [member, user_id, ttl_ms, self._idle_ms, self._cap, prefix]
            reply = await self._client.execute(
                "session.create", self._call("create", [key, index], [*args, *pairs])
            )
            ended = [as_text(d) for d in reply]
        if ended:  # ended by the cap: like a logout, their sockets and copies must go
            await publish(self._client.invalidation, sessions_dropped(ended), critical=True)
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
        key = self._index.session_key(session_id)

        async def call(r: Redis) -> None:
            try:
                raw = await r.hget(key, "user_id")
                user_id = as_text(raw) if raw is not None else None
            except (rexc.ResponseError, UnicodeDecodeError):  # not a hash / not UTF-8
                user_id = None
            if user_id is None:
                await r.delete(key)  # missing, or corrupt: there is no index entry to trust
                return
            members = [self._index.member(session_id)]
            await self._index.delete(r, self._index.index_key(user_id), members)

        # Logout protects security: confirmed by a replica when there is one (DESIGN).
        await self._client.confirmed("session.delete", key, call)
        await publish(self._client.invalidation, session_dropped(session_id), critical=True)

    async def get_user_sessions(self, user_id: str) -> list[Session]:
        """Every live session of ``user_id``, soonest absolute expiry first.

        The store keeps no session IDs, so these sessions have an empty ``id``: each has
        its ID's ``digest`` (compare it with :func:`~gateway_redis.sessions.id_digest` of an
        ID you hold). Expired, deleted and corrupt entries are pruned from the index as it
        is read. Raises ``TypeError``/``ValueError`` for a bad ``user_id`` and
        :class:`~gateway_redis.RedisUnavailable`.
        """
        index = self._index.index_key(check_user_id(user_id))

        async def call(r: Redis) -> list[tuple[str, Any]]:
            return await self._index.load(r, index, await self._index.members(r, index))

        sessions = []
        for member, reply in await self._client.execute("session.get_user_sessions", call):
            try:
                sessions.append(decode_session("", reply, self._idle_ms, member[13:]))
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
        index = self._index.index_key(check_user_id(user_id))

        async def call(r: Redis) -> int:
            deleted = 0
            for _ in range(3):
                n, left = await self._index.delete(r, index, await self._index.members(r, index))
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
        the new one exists; a failure in between ends the session). The new ID shares
        nothing with the old one. Raises :class:`~gateway_redis.SessionNotFound` and
        :class:`~gateway_redis.RedisUnavailable`.
        """
        old_key = self._checked_key(session_id)
        draw, made = new_id(), [""]  # one draw: a retried call makes the same new ID

        def new_for(user_id: str) -> str:
            made[0] = self._tags.new_id(user_id, draw)
            return made[0]

        async def call(r: Redis) -> Any:
            if self._steps is not None:
                return await self._steps.regenerate(r, session_id, new_for, self._user_of)
            user_id = decode_session(
                session_id, await self._call("get", [old_key])(r), self._idle_ms
            ).user_id
            new, index = new_for(user_id), self._index.index_key(user_id)
            keys = [old_key, self._index.session_key(new), index]
            args: list[str | int] = [self._index.member(session_id), self._index.member(new)]
            args += [user_id, self._idle_ms]
            return await self._call("regenerate", keys, args)(r)

        decode_session(made[0], await self._run("session.regenerate", call), self._idle_ms)
        await publish(self._client.invalidation, session_dropped(session_id), critical=True)
        return made[0]

    # -- internals ------------------------------------------------------------------------

    def _checked_key(self, session_id: str) -> str:
        if not is_valid_id(session_id):
            raise SessionNotFound("session not found")
        return self._index.session_key(session_id)

    def _user_of(self, session_id: str, reply: Any) -> str:
        return decode_session(session_id, reply, self._idle_ms).user_id

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
