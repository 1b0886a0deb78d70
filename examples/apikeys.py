"""API keys for the example gateway: parsed from the environment, checked by the library's
API-key layer (:mod:`middleware.apikeys`), revocable on every instance.

``GATEWAY_API_KEYS`` is a comma-separated list of ``name:key:role`` entries (unset or
empty: no API keys). A request with ``X-API-Key: <key>`` is authenticated as subject
``apikey:<name>`` with that one role (RBAC as for a token with ``"roles": [<role>]``), so
``GET /api/me`` answers ``{"sub": "apikey:<name>", "roles": [<role>]}``; a wrong key gets a
bare 401. ``name`` is 1-64 letters, digits, ``_``, ``-`` or ``.``; ``key`` is 16-256
printable ASCII characters without ``,`` or ``:`` (generate one with ``python -c "import
secrets; print(secrets.token_urlsafe(32))"``); ``role`` is one of the gateway's roles. A
bad entry stops the startup with a ``ValueError`` naming the entry by position and name
(never echoing a key); so does a name or key given twice.

``GATEWAY_API_KEY_SECRET`` (at least 32 bytes, the same on every instance) keys the
digests the keys are kept and compared as, and seals their verdicts cached in Redis;
without it ``GATEWAY_CACHE_KEY`` is used (the library derives separate keys from it), and
without either a random secret for this process (a warning says so; instances then share
revocations but not cached verdicts).

``POST /api/admin/apikeys/{name}/revoke`` (``admin:read``, like everything under
``/api/admin``) refuses the key on every instance within the invalidation latency, also
for instances started later, for 30 days (remove it from ``GATEWAY_API_KEYS`` before
then); ``{"revoked": true}``, or 503 when the revocation could not be confirmed in Redis.
"""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Iterable, Mapping
from typing import Any

from fastapi import FastAPI

from gateway_redis import RedisUnavailable
from middleware import APIKeySettings, Gateway, KeyRecord, ServiceUnavailable, StaticKeys

__all__ = ["api_key_settings", "install_apikeys", "parse_api_keys"]

log = logging.getLogger("examples.apikeys")
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_KEY = re.compile(r"[!-~]{16,256}")  # printable ASCII, no space; ',' and ':' split entries


def parse_api_keys(value: str, roles: Iterable[str]) -> list[tuple[str, KeyRecord]]:
    """``(key, record)`` pairs of a ``GATEWAY_API_KEYS`` value; ``ValueError`` naming the
    first bad entry (by position and name, never by key)."""
    known = set(roles)
    entries: list[tuple[str, KeyRecord]] = []
    names: set[str] = set()
    keys: set[str] = set()
    for position, raw in enumerate(value.split(","), start=1):
        entry = raw.strip()
        if not entry:
            continue
        parts = entry.split(":")
        where = f"GATEWAY_API_KEYS entry {position}"
        if len(parts) != 3:
            raise ValueError(f"{where} must be name:key:role (keys contain no ':' or ',')")
        name, key, role = (p.strip() for p in parts)
        if not _NAME.fullmatch(name):
            raise ValueError(f"{where}: the name must be 1-64 of A-Z a-z 0-9 _ - .")
        where = f"{where} ({name})"
        if not _KEY.fullmatch(key):
            raise ValueError(f"{where}: the key must be 16-256 printable ASCII characters")
        if role not in known:
            raise ValueError(f"{where}: unknown role {role!r} (known: {sorted(known)})")
        if name in names:
            raise ValueError(f"{where}: the name is given twice")
        if key in keys:
            raise ValueError(f"{where}: the key is the same as another entry's")
        names.add(name)
        keys.add(key)
        entries.append((key, KeyRecord(name, f"apikey:{name}", roles=(role,))))
    return entries


def api_key_settings(env: Mapping[str, str], roles: Iterable[str]) -> APIKeySettings | None:
    """The API-key settings of ``env`` (see the module docstring), or None without keys."""
    entries = parse_api_keys(env.get("GATEWAY_API_KEYS") or "", roles)
    if not entries:
        return None
    secret = env.get("GATEWAY_API_KEY_SECRET") or env.get("GATEWAY_CACHE_KEY") or None
    if secret is None:
        log.warning(
            "no GATEWAY_API_KEY_SECRET or GATEWAY_CACHE_KEY: API key verdicts are "
            "not shared between instances"
        )
        secret = secrets.token_urlsafe(32)
    if len(secret.encode()) < 32:
        raise ValueError("GATEWAY_API_KEY_SECRET must be at least 32 bytes")
    return APIKeySettings(lookup=StaticKeys(secret, entries), secret=secret)


def install_apikeys(app: FastAPI, gateway: Gateway) -> None:
    """Add ``POST /api/admin/apikeys/{name}/revoke`` when ``gateway`` has API keys."""
    api_keys = gateway.api_keys
    if api_keys is None:
        return

    @app.post("/api/admin/apikeys/{name}/revoke")
    async def revoke_api_key(name: str) -> dict[str, Any]:
        """Refuse the key ``name`` on every instance (RBAC: ``admin:read``)."""
        try:
            await api_keys.revoke(name)
        except RedisUnavailable:
            raise ServiceUnavailable("revocation_unavailable") from None
        return {"revoked": True}
