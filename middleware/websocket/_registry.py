"""Open sockets indexed by user, token and session; what ends them (private).

The bridge registers every accepted socket here. Invalidation events close sockets the
moment they arrive: a token revocation (:meth:`JWTAuthenticator.on_revoked
<middleware.jwt.JWTAuthenticator.on_revoked>`, by ``(iss, jti)``) or a subject cut-off
(:meth:`~middleware.jwt.JWTAuthenticator.on_subject_revoked`) with 4401, a "log out
everywhere" (:meth:`SessionStore.on_change <gateway_redis.sessions.SessionStore.on_change>`,
``drop_user``, by user digest) with 4403. A ``drop`` of
a session is also sent for mere updates, so the session is looked up first and the socket
closed (4403) only when it is gone (``on_session_data`` hears of changed data: the bridge
re-authorizes). When the bus resyncs (events may have been lost) every token is checked
against the reloaded revocation mirror and every session looked up.
Housekeeping (twice a second) closes sockets whose token or session expired, tells token
sockets to refresh (``refresh_required``, see ``_refresh``), sends server pings and enforces
the idle timeout. A refreshed token moves its socket in the token index (:meth:`Registry.retoken`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Final, Generic, TypeVar

from gateway_redis.errors import GatewayRedisError, SessionNotFound
from gateway_redis.sessions import id_digest
from gateway_redis.support import log_fields
from middleware.websocket import _protocol as proto
from middleware.websocket._protocol import CloseCode

if TYPE_CHECKING:
    from gateway_redis.sessions import SessionEvent, SessionStore
    from middleware.jwt.authenticator import JWTAuthenticator
    from middleware.jwt.claims import TokenClaims
    from middleware.jwt.cutoff import SubjectRevoked
    from middleware.jwt.revocation import TokenRevoked
    from middleware.websocket._connection import Connection
    from middleware.websocket.bridge import WebSocketLimits

__all__ = ["Registry"]

_log = logging.getLogger("middleware.websocket.bridge")
_COMPONENT = "websocket"
_TICK: Final = 0.5  # seconds between housekeeping rounds (expiry, idle, heartbeat)
_RECHECK_BATCH: Final = 32  # sessions looked up concurrently
_K = TypeVar("_K")


class Registry:
    """The bridge's open sockets and the indexes that find them by credential."""

    def __init__(
        self,
        *,
        limits: WebSocketLimits,
        store: SessionStore,
        authenticator: JWTAuthenticator | None,
    ) -> None:
        self.limits = limits
        self.store = store
        self.authenticator = authenticator
        self.conns: set[Connection] = set()
        self._users: _Index[str] = _Index()
        self._tokens: _Index[tuple[str, str]] = _Index()
        self._sessions: _Index[str] = _Index()
        self._recheck: set[Connection] = set()
        self._recheck_wake = asyncio.Event()
        # Called with a session socket whose session data changed (permissions may follow).
        self.on_session_data: Callable[[Connection], None] | None = None

    def count(self, user: str) -> int:
        """Open sockets of the user with this digest."""
        return len(self._users.get(user))

    def of_user(self, user: str) -> list[Connection]:
        """Open sockets of the user with this digest."""
        return list(self._users.get(user))

    def add(self, conn: Connection) -> None:
        """Index an accepted (or accepting) socket."""
        identity = conn.identity
        self.conns.add(conn)
        self._users.add(identity.user, conn)
        claims = identity.claims
        if claims is not None and claims.jti is not None:
            self._tokens.add((claims.iss, claims.jti), conn)
        if identity.session_key is not None:
            self._sessions.add(identity.session_key, conn)

    def remove(self, conn: Connection) -> bool:
        """Forget a socket; False if it was not registered."""
        if conn not in self.conns:
            return False
        self.conns.discard(conn)
        identity = conn.identity
        self._users.discard(identity.user, conn)
        if identity.claims is not None and identity.claims.jti is not None:
            self._tokens.discard((identity.claims.iss, identity.claims.jti), conn)
        if identity.session_key is not None:
            self._sessions.discard(identity.session_key, conn)
        self._recheck.discard(conn)
        return True

    def retoken(self, conn: Connection, claims: TokenClaims) -> None:
        """A refreshed token: ``conn`` is tracked under the new ``(iss, jti)`` only."""
        identity = conn.identity
        old = identity.claims
        if old is not None and old.jti is not None:
            self._tokens.discard((old.iss, old.jti), conn)
        identity.claims = claims
        if claims.jti is not None:
            self._tokens.add((claims.iss, claims.jti), conn)

    def on_revoked(self, event: TokenRevoked) -> None:
        """Revocation hook: a revoked token's sockets close with 4401."""
        for conn in list(self._tokens.get((event["iss"], event["jti"]))):
            conn.close(CloseCode.TOKEN_ENDED, "token revoked")

    def on_subject_revoked(self, event: SubjectRevoked) -> None:
        """Cut-off hook: the subject's sockets on tokens issued up to the cut-off close (4401)."""
        for conn in list(self._users.get(id_digest(event["sub"]))):
            claims = conn.identity.claims
            if claims is not None and claims.sub == event["sub"] and claims.iat <= event["cutoff"]:
                conn.close(CloseCode.TOKEN_ENDED, "token revoked")

    def on_session_change(self, event: SessionEvent) -> None:
        """Session hook: look dropped sessions up; close a user's sockets."""
        if event["op"] == "drop":  # deleted, regenerated or merely updated: look it up
            for key in event["ids"]:
                conns = self._sessions.get(key)
                if conns:
                    self._recheck.update(conns)
                    self._recheck_wake.set()
        else:
            for conn in list(self._users.get(event["user"])):
                conn.close(CloseCode.SESSION_ENDED, "logged out everywhere")

    async def on_bus_resync(self) -> None:
        """Bus resync hook: events may have been lost, so re-check every credential."""
        authenticator = self.authenticator
        if authenticator is not None:
            for conn in self._tokens.every():
                claims = conn.identity.claims
                if claims is not None and authenticator.is_revoked(claims):
                    conn.close(CloseCode.TOKEN_ENDED, "token revoked")
        self._recheck.update(self._sessions.every())
        if self._recheck:
            self._recheck_wake.set()

    async def recheck_sessions(self) -> None:
        """Task: look up the sessions queued by events, expiry and resyncs."""
        while True:
            await self._recheck_wake.wait()
            self._recheck_wake.clear()
            pending = [c for c in self._recheck if c.closing is None]
            self._recheck.clear()
            for start in range(0, len(pending), _RECHECK_BATCH):
                chunk = pending[start : start + _RECHECK_BATCH]
                results = await asyncio.gather(
                    *(self._recheck_one(c) for c in chunk), return_exceptions=True
                )
                for result in results:
                    if isinstance(result, Exception):  # a bug: log it, keep checking
                        _log.error(
                            "websocket session check failed: %r",
                            result,
                            extra=log_fields(_COMPONENT, "websocket_session_check_failed"),
                        )

    async def _recheck_one(self, conn: Connection) -> None:
        identity = conn.identity
        previous = identity.session
        if previous is None:
            return
        try:
            session = await self.store.get(previous.id)
        except SessionNotFound:
            conn.close(CloseCode.SESSION_ENDED, "session ended")
            return
        except (GatewayRedisError, OSError) as exc:
            _log.info(
                "websocket session check skipped: %s",
                type(exc).__name__,
                extra=log_fields(_COMPONENT, "websocket_session_check_skipped", type(exc).__name__),
            )
            return
        identity.session = session
        if self.on_session_data is not None and session.metadata != previous.metadata:
            self.on_session_data(conn)  # what session_permissions derive from may differ
        identity.expires_at = session.expires_at.timestamp()
        idle = session.idle_expires_at
        identity.idle_check_at = idle.timestamp() if idle is not None else None

    async def housekeeping(self, check: Callable[[], None]) -> None:
        """Task: every half second, :meth:`sweep` and then ``check()`` (the fan-out's)."""
        while True:
            await asyncio.sleep(_TICK)
            try:
                self.sweep()
                check()
            except Exception:  # a bug must not stop expiry and heartbeats for good
                _log.exception(
                    "websocket housekeeping failed",
                    extra=log_fields(_COMPONENT, "websocket_housekeeping_failed"),
                )

    def sweep(self) -> None:
        """Close expired and idle sockets, ping silent ones, queue idle sessions."""
        limits = self.limits
        wall, mono = time.time(), time.monotonic()
        for conn in list(self.conns):
            if conn.closing is not None:
                continue
            identity = conn.identity
            if identity.expires_at is not None and identity.expires_at <= wall:
                token = identity.method == "token"
                code = CloseCode.TOKEN_ENDED if token else CloseCode.SESSION_ENDED
                conn.close(code, "token expired" if token else "session expired")
                continue
            if identity.refresh_at is not None and identity.refresh_at <= wall:
                identity.refresh_at = None  # once per token (see _refresh)
                conn.push_control(proto.REFRESH_REQUIRED_FRAME)
            if identity.idle_check_at is not None and identity.idle_check_at <= wall:
                identity.idle_check_at = wall + 5.0  # until the lookup answers
                self._recheck.add(conn)
                self._recheck_wake.set()
            silent = mono - conn.last_rx
            if limits.idle_timeout is not None and silent >= limits.idle_timeout:
                conn.close(CloseCode.IDLE_TIMEOUT, "idle timeout")
            elif (
                limits.ping_interval is not None
                and silent >= limits.ping_interval
                and mono - conn.last_ping >= limits.ping_interval
            ):
                conn.last_ping = mono
                conn.push_control(proto.PING_FRAME)


class _Index(Generic[_K]):
    """Open sockets by key. A key with one socket (nearly every user, token and session)
    maps to the socket itself, not to a one-element set: a set costs about 200 bytes, and
    there are two or three indexes per socket."""

    __slots__ = ("_map",)

    def __init__(self) -> None:
        self._map: dict[_K, Connection | set[Connection]] = {}

    def get(self, key: _K) -> Collection[Connection]:
        """The sockets under ``key`` (do not change the collection returned)."""
        held = self._map.get(key)
        if held is None:
            return ()
        return held if isinstance(held, set) else (held,)

    def every(self) -> list[Connection]:
        """Every socket in the index (a copy)."""
        found: list[Connection] = []
        for held in self._map.values():
            if isinstance(held, set):
                found.extend(held)
            else:
                found.append(held)
        return found

    def add(self, key: _K, conn: Connection) -> None:
        held = self._map.get(key)
        if held is None:
            self._map[key] = conn
        elif isinstance(held, set):
            held.add(conn)
        elif held is not conn:
            self._map[key] = {held, conn}

    def discard(self, key: _K, conn: Connection) -> None:
        held = self._map.get(key)
        if held is conn:
            del self._map[key]
        elif isinstance(held, set):
            held.discard(conn)
            if len(held) == 1:
                self._map[key] = held.pop()
