"""API keys and opaque tokens as the lookup sees them: the presented credential, the
record a lookup answers, the keyed digest they are compared by, and an in-process table.

A credential is never compared, stored or logged as it was sent. :class:`KeyDigester`
turns it into ``HMAC-SHA256(secret, credential)`` (hex) under a server-side secret shared
by every instance: the L1 cache, the negative cache, the L2 key name and the lookup all
use that digest, so a timing difference in a dict or database lookup tells a client
nothing about a key (it would have to guess HMAC outputs), and a leaked key table or
Redis dump yields no usable key. The same secret also derives (by HMAC, with another
label) the key that seals L2 entries, so one secret serves both without reusing a key.

A lookup (:data:`KeyLookup`) is the application's: ``async def lookup(presented) ->
KeyRecord | None``. A database lookup uses ``presented.digest`` (store the digests that
:meth:`KeyDigester.digest` gives when you issue keys); an introspection call may forward
``presented.secret``, the credential itself, which must go nowhere else (its ``repr`` hides
it). None means "no such key" (401); raising anything means "cannot tell now" (503).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

__all__ = ["MAX_FIELD_BYTES", "KeyDigester", "KeyLookup", "KeyRecord", "Presented", "StaticKeys"]

MAX_FIELD_BYTES = 1024  # key ids, subjects, roles, scopes
_MIN_SECRET = 32
_DIGEST_LABEL = b"gateway-redis/apikey-digest\0"
_SEAL_LABEL = b"gateway-redis/apikey-l2-seal\0"


def _check_text(name: str, value: object, *, spaces: bool = True) -> str:
    if (
        not isinstance(value, str)
        or not value
        or len(value.encode("utf-8", "replace")) > MAX_FIELD_BYTES
        or not value.isprintable()
        or (not spaces and any(c.isspace() for c in value))
    ):
        raise ValueError(
            f"{name} must be a non-empty printable string of at most {MAX_FIELD_BYTES} bytes"
            + ("" if spaces else " without spaces")
            + f", got {value!r}"
        )
    return value


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """What a lookup knows about a valid key or token.

    ``key_id`` is its stable identifier (not the secret): the handle to revoke it by
    (:meth:`APIKeyAuthenticator.revoke`) and the claims' ``jti``. ``subject`` becomes
    ``claims.sub`` (``request.user.identity``), ``roles`` the ``roles`` claim (RBAC),
    ``scopes`` the granted scopes (``request.auth.scopes``). ``expires_at`` (epoch
    seconds, None: never) ends it; caches never serve it past then. Raises ``ValueError``
    for empty, oversized (over 1 KiB) or unprintable fields.
    """

    key_id: str
    subject: str
    roles: tuple[str, ...] = ()
    scopes: tuple[str, ...] = ()
    expires_at: float | None = None

    def __post_init__(self) -> None:
        _check_text("key_id", self.key_id)
        _check_text("subject", self.subject)
        if isinstance(self.roles, str) or isinstance(self.scopes, str):
            raise ValueError("roles and scopes must be sequences of strings, not a string")
        object.__setattr__(self, "roles", tuple(self.roles))
        object.__setattr__(self, "scopes", tuple(self.scopes))
        for role in self.roles:
            _check_text("role", role)
        for scope in self.scopes:
            _check_text("scope", scope, spaces=False)
        expires = self.expires_at
        if expires is not None and (
            isinstance(expires, bool) or not isinstance(expires, (int, float)) or expires <= 0
        ):
            raise ValueError(f"expires_at must be epoch seconds or None, got {expires!r}")


class Presented:
    """The credential of one request: ``digest`` (hex HMAC-SHA256 under the server's
    secret) and ``secret`` (the credential as sent: forward it to an introspection endpoint
    at most; never log or store it). Its ``repr`` shows a digest prefix only."""

    __slots__ = ("digest", "secret")

    def __init__(self, digest: str, secret: str) -> None:
        self.digest = digest
        self.secret = secret

    def __repr__(self) -> str:
        return f"Presented(digest={self.digest[:8]}...)"


KeyLookup = Callable[[Presented], Awaitable["KeyRecord | None"]]
"""``async def lookup(presented: Presented) -> KeyRecord | None``: the application's key
store or token introspection. None: unknown (401); an exception: unavailable (503)."""


class KeyDigester:
    """Keyed digests of credentials under ``secret`` (str or bytes, at least 32 bytes, the
    same on every instance: as secret as a signing key). ``ValueError`` otherwise."""

    __slots__ = ("_keyed", "seal_key")

    def __init__(self, secret: str | bytes) -> None:
        if not isinstance(secret, (str, bytes)):
            raise ValueError("secret must be str or bytes")
        raw = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
        if len(raw) < _MIN_SECRET:
            raise ValueError(f"secret must be at least {_MIN_SECRET} bytes")
        digest_key = hmac.new(raw, _DIGEST_LABEL, hashlib.sha256).digest()
        # Keyed once; each digest copies it (cheaper than keying HMAC per request).
        self._keyed = hmac.new(digest_key, digestmod=hashlib.sha256)
        self.seal_key = hmac.new(raw, _SEAL_LABEL, hashlib.sha256).digest()  # seals L2

    def digest(self, credential: str) -> str:
        """The hex digest of ``credential`` (what key tables store and lookups receive)."""
        mac = self._keyed.copy()
        mac.update(credential.encode("utf-8", "surrogatepass"))
        return mac.hexdigest()

    def __repr__(self) -> str:
        return "KeyDigester(<secret>)"


class StaticKeys:
    """A key table in process memory, for a fixed list of keys (configuration, tests):
    holds the digests only. ``secret`` must be the authenticator's; ``keys`` are
    ``(key, record)`` pairs. The instance is the lookup (``await table(presented)``).
    Raises ``ValueError`` for a key shorter than 16 characters or given twice, and for
    two records with one ``key_id``."""

    __slots__ = ("_digester", "_records")

    def __init__(self, secret: str | bytes, keys: Iterable[tuple[str, KeyRecord]] = ()) -> None:
        self._digester = KeyDigester(secret)
        self._records: dict[str, KeyRecord] = {}
        for key, record in keys:
            self.add(key, record)

    def add(self, key: str, record: KeyRecord) -> str:
        """Accept ``key`` as ``record``; returns its digest (``ValueError`` as above)."""
        if not isinstance(key, str) or len(key) < 16 or not key.isascii() or not key.isprintable():
            raise ValueError("an API key must be at least 16 printable ASCII characters")
        if not isinstance(record, KeyRecord):
            raise ValueError("record must be a KeyRecord")
        digest = self._digester.digest(key)
        if digest in self._records:
            raise ValueError(f"the key of {record.key_id!r} is given twice")
        if any(r.key_id == record.key_id for r in self._records.values()):
            raise ValueError(f"key_id {record.key_id!r} is given twice")
        self._records[digest] = record
        return digest

    def replace(self, key_id: str, record: KeyRecord) -> str:
        """Give the key of ``key_id`` a new ``record`` (a role change); returns its digest
        (pass it to :meth:`APIKeyAuthenticator.invalidate`). ``KeyError`` when unknown."""
        for digest, known in self._records.items():
            if known.key_id == key_id:
                self._records[digest] = record
                return digest
        raise KeyError(key_id)

    def digest_of(self, key_id: str) -> str | None:
        """The digest of the key ``key_id``, or None."""
        for digest, known in self._records.items():
            if known.key_id == key_id:
                return digest
        return None

    async def __call__(self, presented: Presented) -> KeyRecord | None:
        record = self._records.get(presented.digest)
        if record is None:
            return None
        # The dict matched on a keyed hash; confirm it is the secret's, in constant time.
        if not hmac.compare_digest(presented.digest, self._digester.digest(presented.secret)):
            return None
        return record

    def __len__(self) -> int:
        return len(self._records)
