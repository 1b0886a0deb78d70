"""Per-route rate limits for Starlette: :func:`rate_limited`, an endpoint decorator.

::

    store = RateLimitStore(gateway.client)

    @rate_limited("3/h", store=store, name="exports")
    async def export(request: Request) -> JSONResponse: ...

    app = Starlette(routes=[Route("/exports", export, methods=["POST"])])

The same decision as :class:`~middleware.ratelimit.RateLimitMiddleware` (one script per
request, per subject or address, the rule's outage policy) for the decorated endpoint
only, like RBAC's :func:`~middleware.require_permissions`: a refused request gets the 429
with ``Retry-After``, ``RateLimit-Policy`` and ``RateLimit`` without the endpoint running,
a fail-closed rule answers ``on_error``'s 503 while Redis is down (with
``RateLimit-Policy``, as a fail-open rule's responses then), and an admitted
request's response carries the two fields (whatever the endpoint returns: a Starlette
``Response`` or any ASGI app; it is handed back wrapped in a :class:`FieldedAnswer`, a
``Response`` that sends it with the fields). Routes sharing ``name`` and limits share one
budget. Put it under the authentication layer (the subject comes from the request's
claims). FastAPI routes use :class:`~middleware.ratelimit.dependency.RateLimit`; the
decorator works there too (a ``Response`` object the endpoint returns is wrapped like
Starlette's, and returned data reaches FastAPI unchanged, its fields recorded for
:class:`~middleware.ratelimit.fields.RateLimitFieldsMiddleware`).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, Literal, TypeVar

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway_redis.ratelimit import Limit, RateDecision, RateLimitStore
from middleware.errors import ErrorHandler, ServiceUnavailable, default_error_response
from middleware.proxies import TrustedProxies
from middleware.ratelimit.answers import (
    field_pairs,
    policy_header,
    rate_limited_response,
    with_fields,
)
from middleware.ratelimit.fields import record_fields
from middleware.ratelimit.limiter import RateLimiter
from middleware.ratelimit.rules import IdentityFunction, RateLimitRule

__all__ = ["FieldedAnswer", "rate_limited"]

F = TypeVar("F", bound=Callable[..., Any])


def rate_limited(
    *limits: Limit | str,
    store: RateLimitStore,
    name: str,
    identity: Literal["subject", "address"] | IdentityFunction = "subject",
    cost: int = 1,
    on_unavailable: Literal["open", "closed"] = "closed",
    proxies: TrustedProxies | None = None,
    on_error: ErrorHandler = default_error_response,
) -> Callable[[F], F]:
    """Decorate an async Starlette (or FastAPI) endpoint with a ``request`` parameter so
    that each request is charged under ``limits`` (:class:`Limit` or text such as
    ``"10/s"``) in the budget ``name``; the other arguments as for
    :class:`~middleware.ratelimit.RateLimitRule` and
    :class:`~middleware.ratelimit.RateLimitMiddleware`. See the module docstring. Raises
    ``ValueError`` for bad arguments and ``TypeError`` for an endpoint without ``request``.
    """
    rule = RateLimitRule(
        "/**", *limits, cost=cost, identity=identity, on_unavailable=on_unavailable, name=name
    )
    if not callable(on_error):
        raise ValueError("on_error must be callable")
    limiter = RateLimiter(store, proxies)
    policy = policy_header(rule.limits)

    def decorator(func: F) -> F:
        params = list(inspect.signature(func).parameters)
        if "request" not in params or not inspect.iscoroutinefunction(func):
            raise TypeError(f'{func.__qualname__} must be async with a "request" parameter')
        index = params.index("request")

        @functools.wraps(func)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            request = kwargs.get("request", args[index] if index < len(args) else None)
            if not isinstance(request, Request):
                raise TypeError("the endpoint was not given a request")
            scope = request.scope
            answer: Any
            try:
                decision = await limiter.decide(rule, scope)
            except ServiceUnavailable as error:  # Redis down, the rule fails closed
                decision, answer = None, on_error(scope, error)
            else:
                if decision is not None and not decision.allowed:
                    return rate_limited_response(decision, policy)
                answer = await func(*args, **kwargs)  # admitted, or the rule fails open
            if not callable(answer):  # data a FastAPI endpoint returns: FastAPI renders it
                record_fields(scope, field_pairs(policy, decision))
                return answer
            return FieldedAnswer(answer, policy, decision)

        return wrapper  # type: ignore[return-value]

    return decorator


class FieldedAnswer(Response):
    """An endpoint's answer (any ASGI app) sent with ``RateLimit-Policy`` (``policy``) and
    ``RateLimit`` (of ``decision``, none without one) on its response start, in place of
    any it sets itself (:func:`~middleware.ratelimit.answers.with_fields`). A
    ``Response``, so that FastAPI sends it as it is; nothing is rendered here (the answer
    sends itself, then the ``background`` task FastAPI may attach runs). The answer object
    is not changed: an endpoint may return the same one every time."""

    def __init__(self, answer: ASGIApp, policy: bytes, decision: RateDecision | None) -> None:
        # Response.__init__ is not called: there is no content of our own to render.
        self.answer = answer
        self.policy = policy
        self.decision = decision
        self.status_code = int(getattr(answer, "status_code", 200))
        self.background = None
        self.body = b""
        self.raw_headers = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.answer(scope, receive, with_fields(send, self.policy, self.decision))
        if self.background is not None:
            await self.background()
