"""The rate limiter as the composition root installs it: :class:`RateLimitSettings` and
:func:`install_rate_limits` (what :meth:`middleware.Gateway.install` calls for its
``rate_limits`` argument)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from starlette.applications import Starlette

from gateway_redis import RedisClient
from gateway_redis.ratelimit import RateLimitStore
from middleware.errors import ErrorHandler
from middleware.proxies import TrustedProxies
from middleware.ratelimit.middleware import RateLimitMiddleware
from middleware.ratelimit.rules import RateLimitRule

__all__ = ["RateLimitSettings", "install_rate_limits"]


@dataclass(frozen=True, slots=True)
class RateLimitSettings:
    """``rules`` (tried in order, the first match applies) and the ``proxies`` that client
    addresses are taken from (None: no trusted proxy, the direct peer)."""

    rules: Sequence[RateLimitRule]
    proxies: TrustedProxies | None = None

    def __post_init__(self) -> None:
        if isinstance(self.rules, RateLimitRule) or not all(
            isinstance(r, RateLimitRule) for r in self.rules
        ):
            raise ValueError("rules must be a sequence of RateLimitRule")
        object.__setattr__(self, "rules", tuple(self.rules))
        if self.proxies is not None and not isinstance(self.proxies, TrustedProxies):
            raise ValueError("proxies must be TrustedProxies or None")


def install_rate_limits(
    app: Starlette,
    client: RedisClient,
    limits: RateLimitSettings | Sequence[RateLimitRule],
    on_error: ErrorHandler,
) -> None:
    """Add :class:`RateLimitMiddleware` on ``client`` to ``app`` (nothing when there are no
    rules); it must run after authentication, so call this before adding that layer.
    Raises ``ValueError`` for bad settings."""
    settings = limits if isinstance(limits, RateLimitSettings) else RateLimitSettings(limits)
    if not settings.rules:
        return
    app.add_middleware(
        RateLimitMiddleware,
        store=RateLimitStore(client),
        rules=settings.rules,
        proxies=settings.proxies,
        on_error=on_error,
    )
