"""The issuer's JWKS: signing keys by ``kid``, fetched off the event loop, with refresh limits.

A refetch that no longer lists a ``kid`` it listed before calls the :meth:`JWKSKeys.on_removed`
callbacks with the removed kids (:class:`~middleware.JWTAuthenticator` drops the cached
verdicts of tokens verified with them). Each instance refetches on its own schedule, so
each stops trusting a removed key (and its cached verdicts) at its own next refetch.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway_redis.support import log_fields
from middleware.errors import InvalidToken, ValidatorUnavailable
from middleware.jwt.settings import PRIVATE_KEY_TYPES, JWTSettings

__all__ = ["JWKSEntry", "JWKSKeys"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class JWKSEntry:
    """One usable signing key and the ``alg`` it is pinned to (None: any allowed)."""

    key: Any
    alg: str | None


class JWKSKeys:
    """The issuer's signing keys by `kid`, fetched off the event loop, with refresh limits."""

    def __init__(self, settings: JWTSettings, url: str) -> None:
        self._host = urlsplit(url).hostname or "?"
        self._allowed = frozenset(settings.algorithms)
        self._client = jwt.PyJWKClient(
            url, cache_keys=False, cache_jwk_set=False, timeout=settings.jwks_timeout
        )
        self._timeout = settings.jwks_timeout
        self._refresh_interval = settings.jwks_refresh_interval
        self._min_interval = settings.jwks_min_refresh_interval
        # After a failed fetch retry sooner than the usual minimum, so a blip at start-up
        # does not deny service for the whole interval.
        self._retry_backoff = min(1.0, settings.jwks_min_refresh_interval)
        self._keys: dict[str, JWKSEntry] = {}
        self._loaded = False
        self._failed = False
        self._fetched_at = -math.inf
        self._attempted_at = -math.inf
        self._lock = asyncio.Lock()
        self._removed_callbacks: list[Callable[[frozenset[str]], None]] = []

    def has(self, kid: str) -> bool:
        """Whether the key set in use lists ``kid`` (False before the first fetch)."""
        return self._loaded and kid in self._keys

    def on_removed(self, callback: Callable[[frozenset[str]], None]) -> Callable[[], None]:
        """Call ``callback(kids)`` when a refetch no longer lists ``kids`` (on the event
        loop, must not block). Returns a function that removes the callback."""
        self._removed_callbacks.append(callback)

        def remove() -> None:
            if callback in self._removed_callbacks:
                self._removed_callbacks.remove(callback)

        return remove

    def _fresh(self, now: float) -> bool:
        return self._loaded and now - self._fetched_at < self._refresh_interval

    async def get(self, kid: Any) -> JWKSEntry:
        """The key for `kid`; `InvalidToken("unknown_kid")` or `ValidatorUnavailable`."""
        if not isinstance(kid, str) or not kid:
            raise InvalidToken("unknown_kid")
        if self._fresh(time.monotonic()):
            entry = self._keys.get(kid)
            if entry is not None:
                return entry
        # One fetch at a time; waiters re-check and usually find the fresh set.
        async with self._lock:
            now = time.monotonic()
            if not self._fresh(now) or kid not in self._keys:
                wait = self._retry_backoff if self._failed else self._min_interval
                if now - self._attempted_at >= wait:
                    await self._refresh()
            entry = self._keys.get(kid)
            if entry is not None:
                return entry
            if not self._loaded or self._failed:
                raise ValidatorUnavailable("JWKS endpoint unavailable")
            raise InvalidToken("unknown_kid")

    async def refresh_if_stale(self) -> None:
        """Refetch the key set when it is older than ``jwks_refresh_interval`` (within the
        same limits as :meth:`get`); a failure keeps the keys in use."""
        if self._fresh(time.monotonic()):
            return
        async with self._lock:
            now = time.monotonic()
            wait = self._retry_backoff if self._failed else self._min_interval
            if not self._fresh(now) and now - self._attempted_at >= wait:
                await self._refresh()

    async def _refresh(self) -> None:
        self._attempted_at = time.monotonic()
        try:
            # urllib's timeout is per socket operation; bound the whole fetch too. On timeout
            # the worker thread finishes on its own and its result is dropped.
            data = await asyncio.wait_for(
                asyncio.to_thread(self._client.fetch_data), timeout=self._timeout
            )
            keys = self._parse(data)
        except Exception as exc:
            # Stale keys (if any) stay in use: an IdP outage must not log everyone out.
            self._failed = True
            logger.warning(
                "JWKS fetch from %s failed: %s",
                self._host,
                type(exc).__name__,
                extra=log_fields("jwt", "jwks_fetch_failed", type(exc).__name__),
            )
            return
        removed = frozenset(self._keys.keys() - keys.keys())
        self._keys = keys
        self._loaded = True
        self._failed = False
        self._fetched_at = time.monotonic()
        logger.debug(
            "JWKS from %s: %d usable keys",
            self._host,
            len(keys),
            extra=log_fields("jwt", "jwks_loaded"),
        )
        if removed:
            logger.info(
                "JWKS from %s no longer lists %d key(s)",
                self._host,
                len(removed),
                extra=log_fields("jwt", "jwks_keys_removed"),
            )
            for callback in list(self._removed_callbacks):
                callback(removed)

    def _parse(self, data: Any) -> dict[str, JWKSEntry]:
        raw_keys = data.get("keys") if isinstance(data, dict) else None
        if not isinstance(raw_keys, list):
            raise ValueError("JWKS has no keys list")
        keys: dict[str, JWKSEntry] = {}
        for jwk_data in raw_keys:
            if not isinstance(jwk_data, dict):
                continue
            kid, alg = jwk_data.get("kid"), jwk_data.get("alg")
            if not isinstance(kid, str) or not kid or kid in keys:
                continue
            if jwk_data.get("use") not in (None, "sig"):
                continue
            if jwk_data.get("kty") not in ("RSA", "EC", "OKP"):
                continue  # never accept symmetric keys from a URL
            if alg is not None and alg not in self._allowed:
                continue
            try:
                key = jwt.PyJWK.from_dict(jwk_data).key
            except (jwt.PyJWTError, ValueError, TypeError, KeyError):
                continue
            if isinstance(key, PRIVATE_KEY_TYPES):
                key = key.public_key()
            if isinstance(key, rsa.RSAPublicKey) and key.key_size < 2048:
                continue
            keys[kid] = JWKSEntry(key=key, alg=alg)
        if not keys:
            raise ValueError("JWKS has no usable signing keys")
        return keys
