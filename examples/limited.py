"""Rate limiting in the example gateway: ``GET /api/limited`` and ``GET /api/limited/strict``.

::

    gateway.install(app, ..., rate_limits=limited_settings(env, guards.proxies))  # gateway.py
    install_limited(app)                                         # the two routes

Both routes need a token (any authenticated caller) and are limited per subject, with one
budget shared by every instance (:class:`~middleware.ratelimit.RateLimitMiddleware`, GCRA
in Redis); every answer carries the draft's ``RateLimit-Policy`` and ``RateLimit`` fields,
and a refused request gets 429 with ``Retry-After``.

========================  ==========================  =====================================
route                     default limit               while Redis is down
========================  ==========================  =====================================
``GET /api/limited``      5 per 60 s                  fails **open**: 200, unlimited (a
                                                      warning in the log, counted in
                                                      ``gateway.ratelimit.decisions``)
``GET /api/limited/       2 per 10 s and 20 per hour  fails **closed**: 503 with
strict``                                              ``Retry-After``
========================  ==========================  =====================================

Both answer ``{"ok": true}``. Environment: ``GATEWAY_RATELIMIT_LIMITED`` and
``GATEWAY_RATELIMIT_STRICT`` replace the limits (comma-separated, each ``<count>/<period>``
such as ``10/s``, ``1000/h``, ``5/60s``; the tests give ``50/3600s``). Anonymous callers
never reach the routes (401 first); addresses, where a rule uses them, come from
``GATEWAY_TRUSTED_PROXIES`` (:mod:`examples.guards`).
"""

from __future__ import annotations

from collections.abc import Mapping

from fastapi import FastAPI

from gateway_redis import Limit
from middleware import RateLimitRule, RateLimitSettings, TrustedProxies
from middleware.fastapi import Claims

__all__ = ["LIMITED_DEFAULT", "STRICT_DEFAULT", "install_limited", "limited_settings"]

LIMITED_DEFAULT = "5/60s"
STRICT_DEFAULT = "2/10s,20/h"


def _limits(env: Mapping[str, str], name: str, default: str) -> tuple[Limit, ...]:
    raw = env.get(name) or default
    try:
        return tuple(Limit.parse(item) for item in raw.split(",") if item.strip())
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None


def limited_settings(env: Mapping[str, str], proxies: TrustedProxies) -> RateLimitSettings:
    """The example's rate-limit rules, read from ``env``; ``ValueError`` naming a bad
    variable."""
    return RateLimitSettings(
        [
            RateLimitRule(
                "/api/limited/strict",
                *_limits(env, "GATEWAY_RATELIMIT_STRICT", STRICT_DEFAULT),
                methods=["GET"],
                on_unavailable="closed",
                name="api-limited-strict",
            ),
            RateLimitRule(
                "/api/limited",
                *_limits(env, "GATEWAY_RATELIMIT_LIMITED", LIMITED_DEFAULT),
                methods=["GET"],
                on_unavailable="open",
                name="api-limited",
            ),
        ],
        proxies=proxies,
    )


def install_limited(app: FastAPI) -> None:
    """Add the two routes (their limits come from :func:`limited_settings`)."""

    @app.get("/api/limited")
    async def limited(claims: Claims) -> dict[str, bool]:
        """Any authenticated caller: 5 per 60 s per subject; fails open."""
        return {"ok": True}

    @app.get("/api/limited/strict")
    async def strict(claims: Claims) -> dict[str, bool]:
        """Any authenticated caller: 2 per 10 s and 20 per hour per subject; fails closed."""
        return {"ok": True}
