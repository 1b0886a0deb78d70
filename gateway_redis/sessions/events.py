"""The session store's change events: their wire shapes, the one parser, the ID digest.

:class:`~gateway_redis.sessions.SessionStore` publishes one event on its client's
invalidation bus (:attr:`RedisClient.invalidation <gateway_redis.RedisClient.invalidation>`,
namespace ``session``) after each change that may leave a cached copy wrong; L1 caches
(:class:`~middleware.sessions.SessionManager`) and open WebSockets listen through
:meth:`SessionStore.on_change <gateway_redis.sessions.SessionStore.on_change>`. Wire shapes
(JSON objects; the bus adds ``ns`` and ``src``)::

    {"op": "drop", "ids": [<digest of a session ID>, ...]}   updated, deleted, or the old
                                                              ID of a regenerated session
    {"op": "drop_user", "user": "<digest of a user ID>"}     every session of the user ended

Events carry :func:`id_digest` digests, never raw session or user IDs. The shapes are
what every released version sends and reads, so instances of different versions on one
channel still understand each other.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from typing import Any, Final, Literal, TypedDict

__all__ = [
    "NAMESPACE",
    "SessionDropped",
    "SessionEvent",
    "SessionEventHandler",
    "UserSessionsDropped",
    "id_digest",
    "parse_session_event",
    "session_dropped",
    "user_sessions_dropped",
]

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
