"""Response caching for the example gateway: ``GET /api/cached/{item}`` and its invalidation.

::

    gateway = Gateway(config, ..., response_cache=cached_settings(env))   # examples.gateway
    install_cached(app, gateway)

* ``GET /api/cached/{item}`` (any authenticated caller): cached per caller (how it
  authenticated, subject, token roles and RBAC policy version) for ``GATEWAY_CACHE_TTL``
  seconds (default 30), tagged ``item:{item}``; answers
  ``{"item": ..., "user": <sub>, "computed": <int>}``, where ``computed`` counts how many
  times this process (this app) actually ran the endpoint, over all items and callers.
  Strong ``ETag``, ``304`` on a matching ``If-None-Match``,
  ``Cache-Control: private, max-age=<seconds left>``.
* ``POST /api/cached/{item}/invalidate`` (needs ``admin:read``; bearer requests are exempt
  from the CSRF check): invalidates tag ``item:{item}`` on every instance, answers
  ``{"invalidated": true}`` (503 while Redis is down).

Environment: ``GATEWAY_CACHE_TTL`` (seconds, default 30), ``GATEWAY_CACHE_MAX_BODY``
(bytes, default 65536), ``GATEWAY_CACHE_L1_BYTES`` (bytes of L1, default 16 MiB).
"""

from __future__ import annotations

from collections.abc import Mapping

from fastapi import Depends, FastAPI
from fastapi.responses import JSONResponse

from gateway_redis import RedisUnavailable
from middleware import CacheRule, Gateway, ResponseCacheSettings
from middleware.fastapi import Claims, RequirePermissions

__all__ = ["CACHED_PATH", "cached_settings", "install_cached"]

CACHED_PATH = "/api/cached/{item}"


def _number(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    try:
        value = float(raw) if raw else default
    except ValueError:
        raise ValueError(f"{name} must be a number, got {raw!r}") from None
    if not value > 0:
        raise ValueError(f"{name} must be positive, got {raw!r}")
    return value


def cached_settings(env: Mapping[str, str]) -> ResponseCacheSettings:
    """The example's response cache: one rule for ``/api/cached/{item}``."""
    return ResponseCacheSettings(
        [CacheRule(CACHED_PATH, ttl=_number(env, "GATEWAY_CACHE_TTL", 30.0), tags=["item:{item}"])],
        max_body=int(_number(env, "GATEWAY_CACHE_MAX_BODY", 65536)),
        l1_bytes=int(_number(env, "GATEWAY_CACHE_L1_BYTES", 16 * 1024 * 1024)),
    )


def install_cached(app: FastAPI, gateway: Gateway) -> None:
    """Add the two routes to ``app``. Raises ``ValueError`` without a response cache."""
    cache = gateway.response_cache
    if cache is None:
        raise ValueError("the gateway needs response_cache settings")
    computed = 0

    @app.get(CACHED_PATH)
    async def cached_item(item: str, claims: Claims) -> dict[str, object]:
        """The cached per-caller answer (see the module docstring)."""
        nonlocal computed
        computed += 1
        return {"item": item, "user": claims.sub, "computed": computed}

    @app.post(CACHED_PATH + "/invalidate", dependencies=[Depends(RequirePermissions("admin:read"))])
    async def invalidate_item(item: str) -> JSONResponse:
        """Invalidate tag ``item:{item}`` on every instance."""
        try:
            await cache.invalidate_tags(f"item:{item}")
        except RedisUnavailable:
            return JSONResponse(
                {"error": "unavailable", "detail": "the cache cannot be invalidated now"},
                status_code=503,
            )
        return JSONResponse({"invalidated": True})
