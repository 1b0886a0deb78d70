"""Rate limiting exact across instances: rules, the ASGI layer and its answers.

:mod:`~middleware.ratelimit.rules`: :class:`RateLimitRule` (method + path pattern, limits,
cost, identity, fail-open or fail-closed); :mod:`~middleware.ratelimit.middleware`:
:class:`RateLimitMiddleware`; :mod:`~middleware.ratelimit.limiter`: :class:`RateLimiter`
(one decision: identity, the script, telemetry, the outage policy);
:mod:`~middleware.ratelimit.reserve`: the approximate mode's per-process reserves;
:mod:`~middleware.ratelimit.answers`: the draft's
``RateLimit``/``RateLimit-Policy`` fields and the 429;
:mod:`~middleware.ratelimit.settings`: :class:`RateLimitSettings` for
:meth:`middleware.Gateway.install`; :mod:`~middleware.ratelimit.decorator`:
:func:`rate_limited`, a per-route Starlette endpoint decorator;
:mod:`~middleware.ratelimit.dependency`: ``RateLimit``,
a per-route FastAPI dependency (imported on demand: FastAPI is optional), whose fields
:mod:`~middleware.ratelimit.fields` (:class:`RateLimitFieldsMiddleware`) puts on responses
the endpoint built itself. The budgets live in Redis
(:class:`gateway_redis.ratelimit.RateLimitStore`: GCRA, one script per request).
"""

from __future__ import annotations

from middleware.ratelimit.decorator import rate_limited
from middleware.ratelimit.fields import RateLimitFieldsMiddleware
from middleware.ratelimit.limiter import RateLimiter
from middleware.ratelimit.middleware import RateLimitMiddleware
from middleware.ratelimit.rules import IdentityFunction, RateLimitRule
from middleware.ratelimit.settings import RateLimitSettings, install_rate_limits

__all__ = [
    "IdentityFunction",
    "RateLimitFieldsMiddleware",
    "RateLimitMiddleware",
    "RateLimitRule",
    "RateLimitSettings",
    "RateLimiter",
    "install_rate_limits",
    "rate_limited",
]
