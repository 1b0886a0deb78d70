"""Server-side sessions in Redis: :class:`SessionStore` and the :class:`Session` it returns.

Applications use the client's one store, ``client.sessions`` (set up once with
``client.configure_sessions(...)``).

- :mod:`~gateway_redis.sessions.store`: the store, its key layout and its guarantees;
- :mod:`~gateway_redis.sessions.events`: the change events the store publishes on its
  client's invalidation bus (typed shapes, their parser, the ID digest they carry);
- :mod:`~gateway_redis.sessions.codec`: the stored form: session IDs, index members, slot
  tags, metadata encoding and the :class:`Session` value decoded from a stored hash (no
  Redis calls);
- :mod:`~gateway_redis.sessions.scripts`: the Lua every operation runs;
- :mod:`~gateway_redis.sessions.tags`: which hash slot a session's keys are in, random or
  keyed (``tag_key``), and what the first 12 characters of an ID are;
- ``_index`` (private): a user's index, its members (digests, never IDs) and the
  multi-session load and delete;
- ``_cluster`` (private): the single-key steps used on Redis Cluster, with their invariants.

:func:`slot_tag` is the hash tag of a user's session index without ``tag_key``, for tools
that need to know which slot holds it (session IDs carry a random tag of their own). The
default cap on one user's sessions is :data:`~gateway_redis.sessions.store.MAX_PER_USER`.
"""

from __future__ import annotations

from gateway_redis.sessions.codec import Session, slot_tag
from gateway_redis.sessions.events import (
    SessionDropped,
    SessionEvent,
    SessionEventHandler,
    UserSessionsDropped,
    id_digest,
    parse_session_event,
)
from gateway_redis.sessions.store import SessionStore

__all__ = [
    "Session",
    "SessionDropped",
    "SessionEvent",
    "SessionEventHandler",
    "SessionStore",
    "UserSessionsDropped",
    "id_digest",
    "parse_session_event",
    "slot_tag",
]
