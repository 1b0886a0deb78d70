"""Per-request session state (used by the session middleware).

:class:`SessionHandle` is what ``get_session_handle(request)`` returns: the loaded session,
the ``request.session`` dict and the operations that change the session's identity.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from gateway_redis import telemetry
from gateway_redis.errors import RedisUnavailable, SessionNotFound
from gateway_redis.sessions import Session
from gateway_redis.support import log_fields
from middleware.errors import ServiceUnavailable
from middleware.sessions.manager import SessionManager

__all__ = ["SessionData", "SessionHandle"]

_log = logging.getLogger(__name__)


_MISSING: Any = object()


def _copy(value: Any) -> Any:
    """A deep copy of a JSON value (much cheaper than ``copy.deepcopy`` or a JSON trip)."""
    if type(value) is dict:
        return {k: _copy(v) for k, v in value.items()}
    if type(value) is list:
        return [_copy(v) for v in value]
    return value


def _shallow(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """A plain dict of ``metadata`` (a read-only proxy's ``copy()`` is a C-level dict copy;
    ``dict(proxy)`` goes key by key)."""
    copy = getattr(metadata, "copy", None)
    data = copy() if copy is not None else None
    return data if type(data) is dict else dict(metadata)


def _copy_metadata(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """``data`` for a session: flat values shared (immutable), containers deep-copied."""
    data = _shallow(metadata)
    for key, value in data.items():
        kind = type(value)
        if kind is dict or kind is list:
            data[key] = _copy(value)
    return data


class SessionData(dict[str, Any]):
    """``request.session``: a plain ``dict`` of the session's metadata (this subclass only
    lets the middleware tell, in O(1), a request that never wrote to it)."""

    __slots__ = ()


class _Untouched(SessionData):
    """A :class:`SessionData` nothing has written to yet, holding only immutable values
    (the stored values themselves): the first write of any kind turns it into a plain
    :class:`SessionData` (``__class__`` assignment), so an untouched session needs no
    comparison at the end of the request. Reading never changes it."""

    __slots__ = ()

    def __setitem__(self, key: str, value: Any) -> None:
        _written(self)
        dict.__setitem__(self, key, value)

    def __delitem__(self, key: str) -> None:
        _written(self)
        dict.__delitem__(self, key)

    def __ior__(self, other: Any) -> Any:  # type: ignore[misc]
        _written(self)
        return dict.__ior__(self, other)

    def clear(self) -> None:
        _written(self)
        dict.clear(self)

    def pop(self, *args: Any) -> Any:
        _written(self)
        return dict.pop(self, *args)

    def popitem(self) -> tuple[str, Any]:
        _written(self)
        return dict.popitem(self)

    def setdefault(self, key: str, default: Any = None) -> Any:
        _written(self)
        return dict.setdefault(self, key, default)

    def update(self, *args: Any, **kwargs: Any) -> None:
        _written(self)
        dict.update(self, *args, **kwargs)


def _written(data: _Untouched) -> None:
    object.__setattr__(data, "__class__", SessionData)


def _same(a: Any, b: Any) -> bool:
    """JSON equality: like ``==`` but ``1``, ``1.0`` and ``True`` differ, as they do in JSON."""
    if type(a) is not type(b):
        return False
    if type(a) is dict:
        return a.keys() == b.keys() and all(_same(v, b[k]) for k, v in a.items())
    if type(a) is list:
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


class SessionHandle:
    """One request's session: the loaded :class:`Session`, its data and the controls.

    ``data`` is the dict in ``scope["session"]`` (``request.session``); it is edited in
    place by the methods below, so references to it stay valid. Methods raise
    :class:`~middleware.errors.ServiceUnavailable` when Redis is unavailable (the session
    middleware answers 503 if the response has not started).
    """

    __slots__ = ("_clear", "_issue", "_manager", "_session", "_stored", "available", "data")

    def __init__(
        self,
        manager: SessionManager,
        session: Session | None,
        available: bool,
        *,
        stale_id: bool = False,
    ) -> None:
        self._manager = manager
        self._issue = False
        self._clear = stale_id
        self.available = available
        self._session = session
        if session is None:
            self._stored: Mapping[str, Any] = {}
            self.data: SessionData = SessionData()
        else:
            # The stored values are never mutated (data holds copies of containers), so
            # they are the baseline of changes().
            self._stored = session.metadata
            self.data = SessionData(_copy_metadata(session.metadata))

    @classmethod
    def warm(
        cls, manager: SessionManager, session: Session, flat: dict[str, Any] | None
    ) -> SessionHandle:
        """The handle of a session served from L1 (the hot path: no validation). ``flat``
        is a plain dict of the metadata when it holds no containers (shallow-copied: its
        values are immutable), else None (deep copy)."""
        self = cls.__new__(cls)
        self._manager = manager
        self._issue = self._clear = False
        self.available = True
        self._session = session
        self._stored = session.metadata
        self.data = (
            _Untouched(flat) if flat is not None else SessionData(_copy_metadata(session.metadata))
        )
        return self

    @property
    def session(self) -> Session | None:
        """The session as loaded or last saved; None without one."""
        return self._session

    @property
    def issued(self) -> bool:
        """True when the response must carry a new session ID (created or regenerated)."""
        return self._issue and self._session is not None

    @property
    def ended(self) -> bool:
        """True when the client must drop its session ID (deleted, ended or unknown)."""
        return self._clear and not self.issued

    @property
    def id(self) -> str | None:
        """The session ID (a credential: never log it), or None."""
        return None if self._session is None else self._session.id

    def changes(self) -> dict[str, Any]:
        """The fields of ``data`` that differ from the stored session (None = removed)."""
        stored = self._stored
        if type(self.data) is _Untouched:
            return {}
        changed = {k: v for k, v in self.data.items() if not _same(v, stored.get(k, _MISSING))}
        changed.update({k: None for k in stored if k not in self.data})
        return changed

    async def create(
        self,
        user_id: str,
        metadata: Mapping[str, Any] | None = None,
        *,
        ttl: float | timedelta | None = None,
    ) -> Session:
        """Start a new session (at login) with a new ID; an existing one is deleted first.

        ``data`` becomes the new session's metadata (data of the old session is not
        carried over). The response sets the cookie.
        """
        try:
            if self._session is not None:
                await self._manager.delete(self._session.id)
            session = await self._manager.create(user_id, metadata, ttl=ttl)
        except RedisUnavailable as exc:
            raise ServiceUnavailable("session_unavailable") from exc
        self._load(session)
        self._issue, self._clear = True, False
        return session

    async def regenerate(self) -> Session:
        """Give the session a new ID (privilege change); the old ID stops working.

        Pending changes in ``data`` are kept and saved under the new ID. Raises
        :class:`LookupError` without a session.
        """
        if self._session is None:
            raise LookupError("there is no session to regenerate")
        try:
            session = await self._manager.regenerate(self._session.id)
        except SessionNotFound:
            self._gone()
            raise LookupError("the session ended meanwhile") from None
        except RedisUnavailable as exc:
            raise ServiceUnavailable("session_unavailable") from exc
        self._session = session
        self._issue = True
        return session

    async def delete(self) -> None:
        """End the session (logout): deleted in Redis on every instance, cookie cleared."""
        if self._session is not None:
            try:
                await self._manager.delete(self._session.id)
            except RedisUnavailable as exc:
                raise ServiceUnavailable("session_unavailable") from exc
        self._gone()

    async def save(self) -> Session | None:
        """Save pending changes now (the middleware also does it after the endpoint)."""
        if self._session is None:
            if self.data and self.available:
                _log.debug(
                    "data written without a session is discarded",
                    extra=log_fields("sessions", "session_data_discarded"),
                )
            return None
        changes = self.changes()
        if not changes:
            return self._session
        try:
            if telemetry.tracing_enabled():
                with telemetry.tracer.start_as_current_span(
                    "gateway.session save", record_exception=False
                ) as span:
                    if span.is_recording():
                        span.set_attribute("gateway.session.fields", len(changes))
                    session = await self._manager.update(self._session.id, changes)
            else:
                session = await self._manager.update(self._session.id, changes)
        except SessionNotFound:
            self._gone()  # a concurrent logout wins: never resurrect
            return None
        except RedisUnavailable as exc:
            raise ServiceUnavailable("session_unavailable") from exc
        self._load(session)  # refreshes data in place from what was stored
        return session

    def before_response(self) -> bool:
        """Whether there may be anything to do before the response starts: a save, or the
        session ID to set or clear (False for a warm request that wrote nothing)."""
        return self._issue or self._clear or self.needs_save()

    def needs_save(self) -> bool:
        """Whether :meth:`save` may have anything to do (False when nothing was written)."""
        if self._session is None:
            return bool(self.data)  # save() only logs that the data is discarded
        return type(self.data) is not _Untouched

    def _load(self, session: Session | None) -> None:
        self._session = session
        metadata = session.metadata if session is not None else {}
        # The stored values are never mutated (data holds copies), so they are the baseline.
        self._stored = metadata
        # Same dict object throughout (the app may hold it); containers are deep copies.
        self.data.clear()
        self.data.update(_copy_metadata(metadata))

    def _gone(self) -> None:
        had = self._session is not None or self._issue
        self._load(None)
        self._issue = False
        self._clear = self._clear or had
