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
so one Redis round trip: put specific rules first); the rules a (method, path) needs are
memoized, bounded in entries and bytes like RBAC's, so a request to a path no rule names
costs one dict lookup and no Redis. A limited request costs one
:meth:`RateLimitStore.acquire` (one script); every response of a limited route carries
``RateLimit-Policy`` and ``RateLimit`` and a refused request gets 429 with
``Retry-After`` (:mod:`~middleware.ratelimit.answers`). WebSocket handshakes and other
scope types pass through.

When Redis cannot answer (or answers an error), the rule decides: ``on_unavailable="open"``
serves the request without limit and without the fields (``failed_open``, a warning in
the log when the outage starts and an info line when limits are checked again),
``"closed"`` answers ``on_error``'s 503 with ``Retry-After``. Never a 500; never a limit
kept in process memory (each instance would admit the whole limit).

Telemetry: ``gateway.ratelimit.decisions`` (counter, counted in process and read when the
SDK collects; ``gateway.ratelimit.rule``, the
rule's name, and ``gateway.ratelimit.result``: ``allowed``, ``limited``, ``failed_open``,
``failed_closed``) and, with tracing on, a ``gateway.ratelimit check`` span with the same
attributes and ``gateway.degraded``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

from opentelemetry.metrics import CallbackOptions, Observation
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway_redis import GatewayRedisError, telemetry
from gateway_redis.ratelimit import RateDecision, RateLimitStore
from gateway_redis.support import log_fields
from middleware._memo import Memo
from middleware._paths import route_path
from middleware.errors import ErrorHandler, ServiceUnavailable, default_error_response
from middleware.proxies import TrustedProxies
from middleware.ratelimit.answers import policy_header, rate_limited_response, state_header
from middleware.ratelimit.rules import RateLimitRule
from middleware.scope import get_claims_or_none
from middleware.telemetry import ATTR_RATELIMIT_RESULT, ATTR_RATELIMIT_RULE

__all__ = ["RateLimitMiddleware"]

_log = logging.getLogger(__name__)
_MAX_MEMO_PATH = 2048  # characters of method and path: longer requests are not memoized
_MEMO_SIZE = 2048
_POLICY = b"ratelimit-policy"
_STATE = b"ratelimit"
# Decisions counted in process, read by the SDK when it collects (as gateway.cache.lookups:
# a synchronous Counter.add costs microseconds with an SDK installed). Keys: (rule name,
# result); rule names come from the configuration, so the dict stays small.
_COUNTS: dict[tuple[str, str], int] = {}
_instrumented = False


def _observe(options: CallbackOptions) -> Iterable[Observation]:
    for (rule, result), count in list(_COUNTS.items()):
        yield Observation(count, {ATTR_RATELIMIT_RULE: rule, ATTR_RATELIMIT_RESULT: result})


def _instrument() -> None:
    global _instrumented
    if not _instrumented:
        _instrumented = True
        telemetry.meter.create_observable_counter(
            "gateway.ratelimit.decisions",
            callbacks=[_observe],
            unit="{request}",
            description="Rate-limit decisions by rule and result (allowed, limited, "
            "failed_open, failed_closed)",
        )


def _count(rule: str, result: str) -> None:
    key = (rule, result)
    _COUNTS[key] = _COUNTS.get(key, 0) + 1


class RateLimitMiddleware:
    """Enforces ``rules`` (a sequence of :class:`RateLimitRule`) with ``store``; see the
    module docstring. ``proxies`` resolves client addresses (default: no trusted proxy, the
    direct peer); ``on_error`` builds the 503 of fail-closed rules. Raises ``ValueError``
    for bad arguments (two rules of one name with different limits among them)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        store: RateLimitStore,
        rules: Sequence[RateLimitRule],
        proxies: TrustedProxies | None = None,
        on_error: ErrorHandler = default_error_response,
    ) -> None:
        if not isinstance(store, RateLimitStore):
            raise ValueError("store must be a RateLimitStore")
        if not all(isinstance(r, RateLimitRule) for r in rules):
            raise ValueError("rules must be RateLimitRule instances")
        if proxies is not None and not isinstance(proxies, TrustedProxies):
            raise ValueError("proxies must be TrustedProxies or None")
        if not callable(on_error):
            raise ValueError("on_error must be callable")
        self.app = app
        self._store = store
        self._rules = tuple(rules)
        self._proxies = proxies if proxies is not None else TrustedProxies()
        self._on_error = on_error
        self._policies = {rule.name: policy_header(rule.limits) for rule in self._rules}
        # (method, path) -> (rule,) or () when none applies; bounded like RBAC's.
        self._memo: Memo[tuple[str, str], tuple[RateLimitRule, ...]] = Memo(
            max_key=_MAX_MEMO_PATH, max_entries=_MEMO_SIZE
        )
        self._found = self._memo.entries
        self._degraded = False
        _instrument()

    @property
    def rules(self) -> tuple[RateLimitRule, ...]:
        """The rules, in the order they are tried."""
        return self._rules

    @property
    def store(self) -> RateLimitStore:
        """The store the budgets live in."""
        return self._store

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self._rules:
            await self.app(scope, receive, send)
            return
        method: str = scope["method"]
        path: str = route_path(scope) if scope.get("root_path") else scope["path"]
        found = self._found.get((method, path))
        if found is None:
            found = self.rule_for(method, path)
        if not found:
            await self.app(scope, receive, send)
            return
        rule = found[0]
        identity = self.identity(rule, scope)
        try:
            if telemetry.tracing_enabled():
                decision = await self._traced(rule, identity)
            else:
                decision = await self._store.acquire(
                    rule.name, identity, rule.limits, cost=rule.cost
                )
        except GatewayRedisError as error:
            await self._unavailable(rule, error, scope, receive, send)
            return
        if self._degraded:
            self._degraded = False
            _log.info(
                "rate limits are checked again",
                extra=log_fields("ratelimit", "recovered", rule=rule.name),
            )
        policy = self._policies[rule.name]
        if not decision.allowed:
            _count(rule.name, "limited")
            await rate_limited_response(decision, policy)(scope, receive, send)
            return
        _count(rule.name, "allowed")
        await self.app(scope, receive, _with_fields(send, policy, decision))

    def rule_for(self, method: str, path: str) -> tuple[RateLimitRule, ...]:
        """``(rule,)``: the first rule matching a request, or ``()``. Memoized per method
        and path (bounded; paths over 2,048 characters are matched every time)."""
        key = (method, path)
        found = self._found.get(key)
        if found is not None:
            return found
        found = next(((r,) for r in self._rules if r.matches(method, path)), ())
        self._memo.remember(key, found, len(method) + len(path))
        return found

    def identity(self, rule: RateLimitRule, scope: Scope) -> str:
        """Whose budget a request is charged to: ``sub:<subject>`` or ``ip:<address>``
        (``ip:unknown`` when the server gives no peer address), or the rule's function's
        answer prefixed ``fn:``."""
        kind = rule.identity
        if kind == "subject":
            claims = get_claims_or_none(scope)
            if claims is not None:
                return "sub:" + claims.sub
        elif callable(kind):
            custom = kind(scope)
            if custom is not None:
                return "fn:" + custom
        return "ip:" + (self._proxies.client_address(scope) or "unknown")

    async def _traced(self, rule: RateLimitRule, identity: str) -> RateDecision:
        with telemetry.tracer.start_as_current_span(
            "gateway.ratelimit check", record_exception=False
        ) as span:
            try:
                decision = await self._store.acquire(
                    rule.name, identity, rule.limits, cost=rule.cost
                )
            except GatewayRedisError:
                if span.is_recording():
                    span.set_attribute(ATTR_RATELIMIT_RULE, rule.name)
                    span.set_attribute(telemetry.ATTR_DEGRADED, True)
                raise
            if span.is_recording():
                span.set_attribute(ATTR_RATELIMIT_RULE, rule.name)
                span.set_attribute(
                    ATTR_RATELIMIT_RESULT, "allowed" if decision.allowed else "limited"
                )
            return decision

    async def _unavailable(
        self,
        rule: RateLimitRule,
        error: GatewayRedisError,
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        result = "failed_open" if rule.fail_open else "failed_closed"
        _count(rule.name, result)
        if not self._degraded:
            self._degraded = True
            _log.warning(
                "rate limits cannot be checked (%s): rule %s fails %s",
                type(error).__name__,
                rule.name,
                rule.on_unavailable,
                extra=log_fields(
                    "ratelimit", "degraded", getattr(error, "reason", None), rule=rule.name
                ),
            )
        if rule.fail_open:
            await self.app(scope, receive, send)
            return
        unavailable = ServiceUnavailable("ratelimit_unavailable")
        await self._on_error(scope, unavailable)(scope, receive, send)


def _with_fields(send: Send, policy: bytes, decision: RateDecision) -> Send:
    state = state_header(decision)

    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = [(n, v) for n, v in message.get("headers", ()) if n not in (_POLICY, _STATE)]
            headers += ((_POLICY, policy), (_STATE, state))
            message = {**message, "headers": headers}
        await send(message)

    return wrapped
