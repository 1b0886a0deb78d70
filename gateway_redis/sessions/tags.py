"""Session ID tags: which hash slot a session's key and its user's index live in, and what
the first 12 characters of a session ID are (:class:`TagScheme`).

Two schemes; neither lets an ID name or link its user:

* **random** (no ``tag_key``, the default): each ID opens with 12 random hex digits, which
  are also its key's hash tag; the user's index is in the slot of :func:`~.codec.slot_tag`
  of the user id. A user's sessions are spread over slots, so on Redis Cluster the store
  runs its single-key steps (it does in either scheme), and outside Cluster its scripts
  name keys of several slots (a sharded proxy that refuses cross-slot commands, with the
  client in standalone mode, needs the keyed scheme).
* **keyed** (``tag_key``, a secret of at least 32 bytes that every instance shares): a
  user's tag is ``HMAC-SHA256(tag_key, user id)`` (12 hex digits), shared by the user's
  session keys and index, so all of a user's keys are in one slot. The ID shows the tag
  XOR-masked with ``HMAC-SHA256(tag_key, the ID's random part)``: different in every ID,
  and without the key neither computable from a user id nor comparable between IDs.
  Changing the key is a cut-over: IDs made under another key (or by 0.1.0) no longer
  resolve, and their users log in again; the old sessions expire at their TTL.
"""

from __future__ import annotations

import hashlib
import hmac

from gateway_redis.sessions.codec import new_id, sha256_hex, slot_tag

__all__ = ["MIN_KEY_BYTES", "TagScheme", "check_tag_key"]

MIN_KEY_BYTES = 32
_USER = b"gateway-redis/session-user-tag/v1\x00"
_MASK = b"gateway-redis/session-id-mask/v1\x00"


def check_tag_key(name: str, key: object) -> bytes | None:
    """``key`` (str, UTF-8 encoded, or bytes; at least 32 bytes; or None) as bytes;
    ``ValueError`` naming ``name`` otherwise. Never puts the key in the message."""
    if key is None:
        return None
    if isinstance(key, str):
        key = key.encode()
    if not isinstance(key, bytes):
        raise ValueError(f"{name} must be str or bytes, got {type(key).__name__}")
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"{name} must be at least {MIN_KEY_BYTES} bytes, got {len(key)}")
    return key


class TagScheme:
    """The tags of one session store: random without ``key``, keyed with it (see the
    module docstring). Holds the key; never shows it (``repr``, :attr:`fingerprint`)."""

    __slots__ = ("_key",)

    def __init__(self, key: bytes | None) -> None:
        self._key = key

    @property
    def keyed(self) -> bool:
        return self._key is not None

    @property
    def fingerprint(self) -> str | None:
        """A digest that tells two keys apart (None: random tags), to compare settings."""
        return None if self._key is None else sha256_hex(self._key.hex())[:16]

    def __repr__(self) -> str:
        return f"<TagScheme {'keyed' if self._key is not None else 'random'}>"

    def user_tag(self, user_id: str) -> str:
        """The hash tag of ``user_id``'s index (and, keyed, of its sessions' keys)."""
        if self._key is None:
            return slot_tag(user_id)
        return hmac.new(self._key, _USER + user_id.encode(), hashlib.sha256).hexdigest()[:12]

    def new_id(self, user_id: str, draw: str | None = None) -> str:
        """A new session ID for ``user_id``, from ``draw`` (a fresh
        :func:`~.codec.new_id`, made here when None; given, the same ``draw`` makes the same
        ID, so that a retried call repeats itself)."""
        draw = new_id() if draw is None else draw
        if self._key is None:
            return draw
        token = draw[13:]
        return f"{int(self.user_tag(user_id), 16) ^ _mask(self._key, token):012x}.{token}"

    def key_tag(self, session_id: str) -> str:
        """The hash tag of the key of ``session_id`` (a well-formed ID)."""
        if self._key is None:
            return session_id[:12]
        return f"{int(session_id[:12], 16) ^ _mask(self._key, session_id[13:]):012x}"


def _mask(key: bytes, token: str) -> int:
    """48 bits that hide a user's tag in the ID whose random part is ``token``."""
    digest = hmac.new(key, _MASK + token.encode(), hashlib.sha256).digest()
    return int.from_bytes(digest[:6], "big")
