"""The pure-ASGI rate-limiting layer: :class:`RateLimitMiddleware`.

::

    store = RateLimitStore(client)
    app.add_middleware(
        RateLimitMiddleware,
        store=store,
        rules=[RateLimitRule("/api/search", "10/s", "1000/h", on_unavailable="open")],
    )

Install it inside the authentication layer (added before it with ``add_middleware``) so
that the subject is known; :meth:`middleware.Gateway.install` does (``rate_limits=``).

For each HTTP request the first rule that matches its method and path applies (one rule,
so one Redis round trip: put specific rules first); the rule a (method, path) needs is
memoized, bounded in entries and bytes like RBAC's, so a request to a path no rule names
costs one dict lookup and no Redis. A limited request costs one
:meth:`RateLimitStore.acquire` (one script, :class:`~middleware.ratelimit.limiter.
RateLimiter`); every response of a limited route carries ``RateLimit-Policy`` and
``RateLimit`` and a refused request gets 429 with ``Retry-After``
(:mod:`~middleware.ratelimit.answers`). WebSocket handshakes and other scope types pass
through.

When Redis cannot answer (or answers an error), the rule decides: ``on_unavailable="open"``
serves the request without limit (``failed_open``, a warning in the log when the outage
starts and an info line when limits are checked again), ``"closed"`` answers
``on_error``'s 503 with ``Retry-After``; either way with ``RateLimit-Policy`` alone (no
state is known). Never a 500; never a limit
kept in process memory (each instance would admit the whole limit).

Telemetry: ``gateway.ratelimit.decisions`` (counter; ``gateway.ratelimit.rule``, the
rule's name, and ``gateway.ratelimit.result``: ``allowed``, ``limited``, ``failed_open``,
``failed_closed``, ``allowed_local``: served from an approximate-mode reserve) and, with
tracing on, a ``gateway.ratelimit check`` span with the same
attributes and ``gateway.degraded``.
"""

from __future__ import annotations

from collections.abc import Sequence

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway_redis.ratelimit import RateLimitStore
from middleware._memo import Memo
from middleware._paths import route_path
from middleware.errors import ErrorHandler, ServiceUnavailable, default_error_response
from middleware.proxies import TrustedProxies
from middleware.ratelimit.answers import policy_header, rate_limited_response, with_fields
from middleware.ratelimit.limiter import RateLimiter
from middleware.ratelimit.rules import RateLimitRule

__all__ = ["RateLimitMiddleware"]

_MAX_MEMO_PATH = 2048  # characters of method and path: longer requests are not memoized
_MEMO_SIZE = 2048


class RateLimitMiddleware:
    """Enforces ``rules`` (a sequence of :class:`RateLimitRule`, tried in order) with
    ``store``; see the module docstring. ``proxies`` resolves client addresses (default: no
    trusted proxy, the direct peer); ``on_error`` builds the 503 of fail-closed rules.
    Raises ``ValueError`` for bad arguments."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        store: RateLimitStore,
        rules: Sequence[RateLimitRule],
        proxies: TrustedProxies | None = None,
        on_error: ErrorHandler = default_error_response,
    ) -> None:
        if not all(isinstance(r, RateLimitRule) for r in rules):
            raise ValueError("rules must be RateLimitRule instances")
        if not callable(on_error):
            raise ValueError("on_error must be callable")
        self.app = app
        self._limiter = RateLimiter(store, proxies)
        self._rules = tuple(rules)
        self._on_error = on_error
        # (method, path) -> ((rule, policy field),) or () when none applies; bounded.
        self._memo: Memo[tuple[str, str], tuple[tuple[RateLimitRule, bytes], ...]] = Memo(
            max_key=_MAX_MEMO_PATH, max_entries=_MEMO_SIZE
        )
        self._found = self._memo.entries
        self._policies = tuple((rule, policy_header(rule.limits)) for rule in self._rules)

    @property
    def rules(self) -> tuple[RateLimitRule, ...]:
        """The rules, in the order they are tried."""
        return self._rules

    @property
    def limiter(self) -> RateLimiter:
        """What decides each limited request (its store, identities, telemetry)."""
        return self._limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self._rules:
            await self.app(scope, receive, send)
            return
        method: str = scope["method"]
        path: str = route_path(scope) if scope.get("root_path") else scope["path"]
        found = self._found.get((method, path))
        if found is None:
            found = self._lookup(method, path)
        if not found:
            await self.app(scope, receive, send)
            return
        rule, policy = found[0]
        try:
            decision = await self._limiter.decide(rule, scope)
        except ServiceUnavailable as error:  # Redis down, the rule fails closed
            await self._on_error(scope, error)(scope, receive, with_fields(send, policy, None))
            return
        if decision is None:  # Redis down, the rule fails open
            await self.app(scope, receive, with_fields(send, policy, None))
        elif decision.allowed:
            await self.app(scope, receive, with_fields(send, policy, decision))
        else:
            await rate_limited_response(decision, policy)(scope, receive, send)

    def rule_for(self, method: str, path: str) -> RateLimitRule | None:
        """The first rule matching a request, or None. Memoized per method and path
        (bounded; paths over 2,048 characters are matched every time)."""
        found = self._found.get((method, path))
        if found is None:
            found = self._lookup(method, path)
        return found[0][0] if found else None

    def _lookup(self, method: str, path: str) -> tuple[tuple[RateLimitRule, bytes], ...]:
        found = next(((p,) for p in self._policies if p[0].matches(method, path)), ())
        self._memo.remember((method, path), found, len(method) + len(path))
        return found
