"""Per-route rate limits for FastAPI: :class:`RateLimit`, a dependency.

::

    from middleware.ratelimit.dependency import RateLimit

    exports = RateLimit("3/h", store=RateLimitStore(gateway.client), name="exports")

    @app.post("/exports", dependencies=[Depends(exports)])
    async def export(claims: Claims) -> dict[str, str]: ...

The same decision as :class:`~middleware.ratelimit.RateLimitMiddleware` (one script per
request, per subject or address, the rule's outage policy), for one route: a refused
request raises FastAPI's ``HTTPException`` 429 with ``Retry-After``, ``RateLimit-Policy``
and ``RateLimit`` (so the application's exception handlers apply), fail-closed rules raise
503 with ``Retry-After`` while Redis is down, and an admitted request's response carries
the two fields, whatever the endpoint returns: they are set on FastAPI's ``Response``
parameter (which FastAPI merges only into a response it builds from returned data) and
recorded for :class:`~middleware.ratelimit.fields.RateLimitFieldsMiddleware`, which
``Gateway.install`` adds to FastAPI applications, so that a ``Response`` object the
endpoint returns gets them too. The dependency's value is the
:class:`~gateway_redis.ratelimit.RateDecision`, or None when Redis is down and the rule
fails open. Imported on demand: FastAPI is an optional dependency.
"""

from __future__ import annotations

from typing import Literal

from fastapi import HTTPException, Request, Response

from gateway_redis.ratelimit import Limit, RateDecision, RateLimitStore
from middleware.errors import ServiceUnavailable
from middleware.fastapi import http_exception
from middleware.proxies import TrustedProxies
from middleware.ratelimit.answers import field_pairs, policy_header, retry_after, state_header
from middleware.ratelimit.fields import discard_fields, record_fields
from middleware.ratelimit.limiter import RateLimiter
from middleware.ratelimit.rules import IdentityFunction, RateLimitRule

__all__ = ["RateLimit"]

_DETAIL = "Too many requests; retry later."


class RateLimit:
    """A dependency charging each request of its route under ``limits`` (:class:`Limit` or
    text such as ``"10/s"``); ``name`` names the budget (routes sharing a name and limits
    share it). ``store``, ``identity``, ``cost``, ``on_unavailable`` and ``proxies`` as for
    :class:`~middleware.ratelimit.RateLimitRule` and
    :class:`~middleware.ratelimit.RateLimitMiddleware`. Raises ``ValueError`` for bad
    arguments."""

    def __init__(
        self,
        *limits: Limit | str,
        store: RateLimitStore,
        name: str,
        identity: Literal["subject", "address"] | IdentityFunction = "subject",
        cost: int = 1,
        on_unavailable: Literal["open", "closed"] = "closed",
        proxies: TrustedProxies | None = None,
    ) -> None:
        self.rule = RateLimitRule(
            "/**",
            *limits,
            cost=cost,
            identity=identity,
            on_unavailable=on_unavailable,
            name=name,
        )
        self._limiter = RateLimiter(store, proxies)
        self._policy_field = policy_header(self.rule.limits)
        self._policy = self._policy_field.decode()

    async def __call__(self, request: Request, response: Response) -> RateDecision | None:
        try:
            decision = await self._limiter.decide(self.rule, request.scope)
        except ServiceUnavailable as error:
            discard_fields(request.scope)
            raise http_exception(error) from None
        if decision is None:
            return None
        if not decision.allowed:
            discard_fields(request.scope)
            state = state_header(decision).decode()
            headers = {
                "Retry-After": str(retry_after(decision)),
                "RateLimit-Policy": self._policy,
                "RateLimit": state,
                "Cache-Control": "no-store",
            }
            raise HTTPException(429, _DETAIL, headers)
        fields = field_pairs(self._policy_field, decision)
        record_fields(request.scope, fields)  # for an endpoint's own Response object
        response.headers["RateLimit-Policy"] = self._policy
        response.headers["RateLimit"] = fields[1][1].decode()
        return decision
