"""The session store's change events: wire shapes, the one parser, the ID digest, and how
the store publishes them and listeners subscribe (:func:`publish`, :func:`subscribe`).

:class:`~gateway_redis.sessions.SessionStore` publishes one event on its client's
invalidation bus (:attr:`RedisClient.invalidation <gateway_redis.RedisClient.invalidation>`,
namespace ``session``) after each change that may leave a cached copy wrong; L1 caches
(:class:`~middleware.sessions.SessionManager`) and open WebSockets listen through
:meth:`SessionStore.on_change <gateway_redis.sessions.SessionStore.on_change>`. Wire shapes
(JSON objects; the bus adds ``ns`` and ``src``)::

    {"op": "drop", "ids": [<digest of a session ID>, ...]}   updated, deleted, ended by
                                                              the per-user cap, or the old
                                                              ID of a regenerated session
    {"op": "drop_user", "user": "<digest of a user ID>"}     every session of the user ended

Events carry :func:`id_digest` digests, never raw session or user IDs. The shapes are
what every released version sends and reads, so instances of different versions on one
channel still understand each other.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final, Literal, TypedDict

from gateway_redis.support import log_fields

if TYPE_CHECKING:
    from gateway_redis.invalidation import InvalidationBus

__all__ = [
    "NAMESPACE",
    "SessionDropped",
    "SessionEvent",
    "SessionEventHandler",
    "UserSessionsDropped",
    "id_digest",
    "parse_session_event",
    "publish",
    "session_dropped",
    "sessions_dropped",
    "subscribe",
    "user_sessions_dropped",
]

_log = logging.getLogger(__name__)

NAMESPACE: Final = "session"
"""The invalidation bus namespace of session events."""


class SessionDropped(TypedDict):
    """Sessions (by :func:`id_digest` of their IDs) changed or ended: drop cached copies
    and look them up again."""

    op: Literal["drop"]
    ids: list[str]


class UserSessionsDropped(TypedDict):
    """Every session of one user (by :func:`id_digest` of the user ID) ended."""

    op: Literal["drop_user"]
    user: str


SessionEvent = SessionDropped | UserSessionsDropped
SessionEventHandler = Callable[[SessionEvent], None]
"""``handler(event)``: runs on the event loop for every session event, local or remote;
must not block (an exception is logged and turns every L1 cache off until a resync)."""


def id_digest(value: str) -> str:
    """The SHA-256 hex digest of a session or user ID, as session events carry it (and as
    caches of sessions key their entries, to match events without keeping raw IDs)."""
    return hashlib.sha256(value.encode("utf-8", "replace")).hexdigest()


def session_dropped(session_id: str) -> SessionDropped:
    """The event for a changed or ended session."""
    return {"op": "drop", "ids": [id_digest(session_id)]}


def sessions_dropped(digests: list[str]) -> SessionDropped:
    """The event for sessions known by :func:`id_digest` of their IDs (ended by the
    per-user cap: the store keeps no raw IDs)."""
    return {"op": "drop", "ids": list(digests)}


def user_sessions_dropped(user_id: str) -> UserSessionsDropped:
    """The event for "every session of ``user_id`` ended"."""
    return {"op": "drop_user", "user": id_digest(user_id)}


def parse_session_event(event: Mapping[str, Any]) -> SessionEvent | None:
    """``event`` (as received from the bus) as a typed session event, or None when it is
    not one this version understands (ignored). Entries of ``ids`` that are not strings
    are left out."""
    op = event.get("op")
    if op == "drop":
        ids = event.get("ids")
        if not isinstance(ids, list):
            return None
        return {"op": "drop", "ids": [i for i in ids if isinstance(i, str)]}
    if op == "drop_user":
        user = event.get("user")
        if isinstance(user, str):
            return {"op": "drop_user", "user": user}
    return None


async def publish(bus: InvalidationBus, event: SessionEvent, *, critical: bool) -> None:
    """Broadcast ``event`` on ``bus`` (applied here first, even if sending fails).

    Ending a session is ``critical``: if the event cannot be sent the error propagates
    (retrying a logout is harmless). For an update the change is already in Redis, and an
    instance that cannot publish is almost always one that lost Redis, which the others
    notice too (their L1 is then off); the error is not worth failing the call for.
    """
    try:
        await bus.publish(NAMESPACE, event)
    except Exception:
        if critical:
            raise
        _log.warning(
            "session invalidation not broadcast; other instances may lag",
            extra=log_fields("sessions", "session_invalidation_not_sent"),
        )


def subscribe(bus: InvalidationBus, handler: SessionEventHandler) -> Callable[[], None]:
    """Call ``handler`` with each session event on ``bus`` that :func:`parse_session_event`
    understands; returns a function that removes it."""

    def on_event(event: Mapping[str, Any]) -> None:
        parsed = parse_session_event(event)
        if parsed is not None:
            handler(parsed)

    return bus.on_event(NAMESPACE, on_event)
