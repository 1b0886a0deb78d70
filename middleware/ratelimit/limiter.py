"""One rate-limit decision, shared by the middleware and the per-route dependency:
:class:`RateLimiter`.

It finds whose budget a request is charged to (:meth:`RateLimiter.identity`), runs the one
:meth:`~gateway_redis.ratelimit.RateLimitStore.acquire` script, counts the decision in
``gateway.ratelimit.decisions`` (in process, read by the SDK when it collects, like
``gateway.cache.lookups``: a synchronous ``Counter.add`` costs microseconds with an SDK
installed), traces it when tracing is on (a ``gateway.ratelimit check`` span) and applies
the rule's outage policy: a warning in the log when Redis stops answering, an info line
when it answers again. Rules with ``batch`` > 1 (the approximate mode) are served from
per-process reserves when they can (:mod:`~middleware.ratelimit.reserve`; counted as
``allowed_local``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from opentelemetry.metrics import CallbackOptions, Observation
from starlette.types import Scope

from gateway_redis import GatewayRedisError, telemetry
from gateway_redis.ratelimit import RateDecision, RateLimitStore
from gateway_redis.support import log_fields
from middleware.errors import ServiceUnavailable
from middleware.proxies import TrustedProxies
from middleware.ratelimit.reserve import Reserves
from middleware.ratelimit.rules import RateLimitRule
from middleware.scope import API_KEY_KEY, get_claims_or_none
from middleware.telemetry import ATTR_RATELIMIT_RESULT, ATTR_RATELIMIT_RULE

__all__ = ["RateLimiter"]

_log = logging.getLogger(__name__)
# (rule name, result) -> decisions; rule names come from the configuration: a small dict.
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


class RateLimiter:
    """Decides requests against rules with ``store``; ``proxies`` resolves client addresses
    (None: no trusted proxy, the direct peer). Raises ``ValueError`` for bad arguments."""

    __slots__ = ("_degraded", "_proxies", "_reserves", "_store")

    def __init__(self, store: RateLimitStore, proxies: TrustedProxies | None = None) -> None:
        if not isinstance(store, RateLimitStore):
            raise ValueError("store must be a RateLimitStore")
        if proxies is not None and not isinstance(proxies, TrustedProxies):
            raise ValueError("proxies must be TrustedProxies or None")
        self._store = store
        self._proxies = proxies if proxies is not None else TrustedProxies()
        self._degraded = False
        self._reserves = Reserves()  # approximate-mode rules only
        _instrument()

    @property
    def store(self) -> RateLimitStore:
        """The store the budgets live in."""
        return self._store

    def identity(self, rule: RateLimitRule, scope: Scope) -> str:
        """Whose budget a request is charged to: ``sub:<kind>:<subject>`` (the kind of
        :func:`~middleware.scope.get_auth_kind`, ``jwt`` or ``apikey``: a token whose
        ``sub`` reads ``apikey:ci`` never spends the API key ``ci``'s budget), ``fn:<the
        rule's function's answer>`` or ``ip:<client address>`` (``ip:unknown`` when the
        server gives no peer address)."""
        kind = rule.identity
        if kind == "subject":
            claims = get_claims_or_none(scope)
            if claims is not None:
                key = scope.get(API_KEY_KEY) is not None
                return ("sub:apikey:" if key else "sub:jwt:") + claims.sub
        elif callable(kind):
            custom = kind(scope)
            if custom is not None:
                return "fn:" + custom
        return "ip:" + (self._proxies.client_address(scope) or "unknown")

    async def decide(self, rule: RateLimitRule, scope: Scope) -> RateDecision | None:
        """Charge the request to its identity under ``rule``: one round trip (none when an
        approximate-mode rule's local reserve covers it; two when its batch no longer fits
        and the request is charged alone). Returns the decision, or None when Redis cannot
        answer and the rule fails open. Raises :class:`~middleware.errors.ServiceUnavailable`
        when it cannot answer and the rule fails closed."""
        identity = self.identity(rule, scope)
        batch = rule.batch
        reserves = self._reserves
        if batch > 1:
            local = reserves.take(rule.name, identity, rule.cost)
            if local is None:
                pending = reserves.charging(rule.name, identity)
                if pending is not None:  # another request is charging a batch: wait for it
                    await pending
                    local = reserves.take(rule.name, identity, rule.cost)
                    batch = 1  # not covered by it: this request alone, exactly
            if local is not None:
                _count(rule.name, "allowed_local")
                return local
        try:
            if batch > 1:
                with reserves.charge(rule.name, identity):
                    decision = await self._acquire(rule, identity, batch)
                    if decision.allowed:
                        reserves.put(rule.name, identity, decision, batch, rule.batch_hold)
                        taken = reserves.take(rule.name, identity, rule.cost)
                        decision = taken if taken is not None else decision
                if not decision.allowed:  # fewer than a batch left: this request alone
                    decision = await self._acquire(rule, identity, rule.cost)
            else:
                decision = await self._acquire(rule, identity, rule.cost)
        except GatewayRedisError as error:
            self._unavailable(rule, error)  # raises when the rule fails closed
            return None
        if self._degraded:
            self._degraded = False
            _log.info(
                "rate limits are checked again",
                extra=log_fields("ratelimit", "recovered", rule=rule.name),
            )
        _count(rule.name, "allowed" if decision.allowed else "limited")
        return decision

    async def _acquire(self, rule: RateLimitRule, identity: str, cost: int) -> RateDecision:
        if not telemetry.tracing_enabled():
            return await self._store.acquire(rule.name, identity, rule.limits, cost=cost)
        with telemetry.tracer.start_as_current_span(
            "gateway.ratelimit check", record_exception=False
        ) as span:
            recording = span.is_recording()
            if recording:
                span.set_attribute(ATTR_RATELIMIT_RULE, rule.name)
            try:
                decision = await self._store.acquire(rule.name, identity, rule.limits, cost=cost)
            except GatewayRedisError:
                if recording:
                    span.set_attribute(telemetry.ATTR_DEGRADED, True)
                raise
            if recording:
                result = "allowed" if decision.allowed else "limited"
                span.set_attribute(ATTR_RATELIMIT_RESULT, result)
            return decision

    def _unavailable(self, rule: RateLimitRule, error: GatewayRedisError) -> None:
        _count(rule.name, "failed_open" if rule.fail_open else "failed_closed")
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
        if not rule.fail_open:
            raise ServiceUnavailable("ratelimit_unavailable")
