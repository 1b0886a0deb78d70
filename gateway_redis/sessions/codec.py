"""The stored form of a session: IDs, index members, slot tags, metadata encoding, and
the :class:`Session` value decoded from a stored hash.

Nothing here talks to Redis. :mod:`gateway_redis.sessions.store` describes the key layout.
Public (by module path, not re-exported) so that tools, other services and the benchmarks
read and write sessions exactly as the store does.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from types import MappingProxyType
from typing import Any

from gateway_redis.errors import SerializationError, SessionNotFound
from gateway_redis.support import check_seconds, log_fields

__all__ = [
    "ID_LENGTH",
    "MAX_TTL_MS",
    "Session",
    "as_text",
    "capped_ttl_ms",
    "check_user_id",
    "decode_json",
    "decode_session",
    "encode_metadata",
    "index_member",
    "is_valid_id",
    "ms_to_datetime",
    "new_id",
    "parse_member",
    "sha256_hex",
    "slot_tag",
]

_log = logging.getLogger(__name__)
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
TAG_DOMAIN = b"gateway-redis/session-slot-tag/v1\x00"
ID_RE = re.compile(r"[0-9a-f]{12}\.[A-Za-z0-9_-]{42}[AEIMQUYcgkosw048]")
MEMBER_RE = re.compile(r"[0-9a-f]{12}:[0-9a-f]{64}")
ID_LENGTH = 56
# Browsers cap cookie lifetimes at 400 days; a longer session cannot be carried anyway.
MAX_TTL_MS = 400 * 86_400_000
# Built once: json.dumps/json.loads with arguments build a new encoder/decoder on every call.
_encode_json = json.JSONEncoder(allow_nan=False, separators=(",", ":")).encode
_decode_json = json.JSONDecoder().decode


def decode_json(value: bytes | str) -> object:
    """One stored metadata value (UTF-8 JSON text) -> its value; ValueError when corrupt."""
    return _decode_json(value.decode() if isinstance(value, bytes) else value)


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def slot_tag(user_id: str) -> str:
    """The 12 hex digits that tag ``user_id``'s session index key (its hash slot on
    Cluster). Session IDs do not carry it: each has its own random tag."""
    return hashlib.sha256(TAG_DOMAIN + user_id.encode()).hexdigest()[:12]


def new_id() -> str:
    """A new session ID: ``<12 random hex digits>.<43 url-safe characters>``.

    The first part is the hash tag of the session's key (its slot on Cluster); it is
    random, so it says nothing about the user and two sessions of one user share nothing.
    The second part carries 256 random bits.
    """
    return f"{secrets.token_hex(6)}.{secrets.token_urlsafe(32)}"


def index_member(session_id: str) -> str:
    """How a user's index names ``session_id`` when the ID's first 12 characters are its
    key's tag (random tags, and 0.1.0's IDs): ``<tag>:<sha256(session_id)>``, enough to
    find the session's key, never the ID itself (which grants the session)."""
    return f"{session_id[:12]}:{sha256_hex(session_id)}"


def parse_member(member: str) -> str | None:
    """``member`` of a user's index as :func:`index_member` writes it, or None when it is
    malformed. A raw session ID (as 0.1.0 wrote them) is
    returned converted, so that the caller can replace it."""
    if MEMBER_RE.fullmatch(member):
        return member
    if is_valid_id(member):
        return index_member(member)
    return None


def ms_to_datetime(ms: int) -> datetime:
    return EPOCH + timedelta(milliseconds=ms)


def as_text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def is_valid_id(session_id: object) -> bool:
    return (
        isinstance(session_id, str)
        and len(session_id) == ID_LENGTH
        and ID_RE.fullmatch(session_id) is not None
    )


def check_user_id(user_id: object) -> str:
    if not isinstance(user_id, str):
        raise TypeError(f"user_id must be str, got {type(user_id).__name__}")
    if not user_id:
        raise ValueError("user_id must not be empty")
    user_id.encode()  # UnicodeEncodeError (a ValueError) for lone surrogates
    return user_id


def encode_metadata(metadata: object) -> tuple[list[str], list[str]]:
    """``(m:name, json, ...)`` pairs to write and ``m:name`` fields to delete (value None)."""
    if not isinstance(metadata, Mapping):
        raise TypeError(f"metadata must be a mapping, got {type(metadata).__name__}")
    pairs: list[str] = []
    removed: list[str] = []
    for name, value in metadata.items():
        if not isinstance(name, str):
            raise TypeError(f"metadata keys must be str, got {type(name).__name__}")
        name.encode()
        if value is None:
            removed.append("m:" + name)
            continue
        try:
            data = _encode_json(value)
        except TypeError as exc:
            raise SerializationError(f"metadata[{name!r}] is not JSON-serializable: {exc}") from exc
        except (ValueError, RecursionError) as exc:
            raise ValueError(f"metadata[{name!r}] cannot be stored as JSON: {exc}") from exc
        pairs += ["m:" + name, data]
    return pairs, removed


def capped_ttl_ms(name: str, ttl: float | timedelta) -> int:
    """``ttl`` (seconds or timedelta, > 0) in whole milliseconds (at least 1), at most
    400 days; raises ``TypeError``/``ValueError`` naming ``name``."""
    ms = max(1, round(check_seconds(name, ttl) * 1000))
    if ms > MAX_TTL_MS:
        raise ValueError(f"{name} must be at most 400 days, got {ttl!r}")
    return ms


@dataclass(frozen=True, slots=True)
class Session:
    """One session as stored in Redis; a snapshot, not a live view.

    Times are UTC-aware datetimes at millisecond precision, from the Redis server's clock.
    ``expires_at`` is the absolute expiry (creation + TTL), which nothing extends;
    ``idle_expires_at`` is when the session ends unless touched (``last_accessed_at`` +
    the store's idle timeout; None without one): it ends at the earlier of the two.
    ``metadata`` is a read-only mapping of JSON values. The ID and metadata stay out of
    ``repr`` (the ID is a bearer credential; logs must not carry it).

    ``digest`` is the SHA-256 hex digest of the ID (as session events carry it:
    :func:`~gateway_redis.sessions.id_digest`), filled in from ``id`` when not given.
    Sessions listed by :meth:`SessionStore.get_user_sessions
    <gateway_redis.sessions.SessionStore.get_user_sessions>` have an empty ``id`` and only
    the digest: the store keeps no session IDs (an ID grants its session), so compare
    ``digest`` with ``id_digest(the ID you hold)``.
    """

    id: str = field(repr=False)
    user_id: str
    metadata: Mapping[str, Any] = field(repr=False, hash=False)
    created_at: datetime
    last_accessed_at: datetime
    expires_at: datetime
    idle_expires_at: datetime | None = None
    digest: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        if not self.digest and self.id:
            object.__setattr__(self, "digest", sha256_hex(self.id))


def decode_session(session_id: str, reply: Any, idle_ms: int, digest: str = "") -> Session:
    """Build a :class:`Session` from a script's ``[now_ms, flat HGETALL]`` reply.

    ``idle_ms`` is the store's idle timeout (0: none). A session known only by the
    ``digest`` of its ID (listed from an index) has ``session_id`` "". Raises
    :class:`~gateway_redis.SessionNotFound` for a missing, expired or corrupt session (a
    corrupt one is logged, without its ID).
    """
    try:
        now, flat = int(reply[0]), reply[1]
        if not flat:
            raise SessionNotFound("session not found")
        fields = {as_text(k): v for k, v in zip(flat[::2], flat[1::2], strict=True)}
        user_id = as_text(fields["user_id"])
        created, last, expires = (
            int(fields[f]) for f in ("created_at", "last_accessed_at", "expires_at")
        )
        metadata = {k[2:]: decode_json(v) for k, v in fields.items() if k.startswith("m:")}
    except SessionNotFound:
        raise
    except (KeyError, ValueError, TypeError, IndexError, RecursionError) as exc:
        _log.warning(
            "corrupt session record %s: %s",
            (digest or sha256_hex(session_id))[:8],
            type(exc).__name__,
            extra=log_fields("sessions", "session_corrupt", type(exc).__name__),
        )
        raise SessionNotFound("session not found") from None
    idle_until = last + idle_ms if idle_ms else None
    if expires <= now or (idle_until is not None and idle_until <= now):
        raise SessionNotFound("session not found")
    return Session(
        id=session_id,
        user_id=user_id,
        metadata=MappingProxyType(metadata),
        created_at=ms_to_datetime(created),
        last_accessed_at=ms_to_datetime(last),
        expires_at=ms_to_datetime(expires),
        idle_expires_at=None if idle_until is None else ms_to_datetime(idle_until),
        digest=digest,
    )
