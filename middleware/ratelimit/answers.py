"""What a rate-limited route tells its clients: the ``RateLimit-Policy`` and ``RateLimit``
fields and the 429 answer.

The fields follow the IETF HTTPAPI working group's draft *RateLimit header fields for
HTTP*, draft-ietf-httpapi-ratelimit-headers-09 (March 2025): both are Structured Field
lists (RFC 9651) with one item per quota policy, named by a string.
``RateLimit-Policy: "5-per-60s";q=5;w=60`` states a policy (``q``: quota units, ``w``:
window in seconds) and ``RateLimit: "5-per-60s";r=0;t=60`` its current state (``r``:
remaining units, ``t``: seconds until the full quota is back). A rule with several limits
lists each. The older ``RateLimit-Limit``/``-Remaining``/``-Reset`` trio of earlier drafts
is not sent. While Redis cannot be asked there is no state: a fail-open rule's responses
and a fail-closed rule's 503 carry ``RateLimit-Policy`` alone.

The 429 answer has ``Retry-After`` (whole seconds, at least 1: when every limit of the
rule would admit the request again), both fields, ``Cache-Control: no-store`` and the
generic body ``{"error": "rate_limited", "detail": ...}``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from starlette.responses import JSONResponse
from starlette.types import Message, Send

from gateway_redis.ratelimit import Limit, RateDecision

__all__ = [
    "FIELD_NAMES",
    "field_pairs",
    "policy_header",
    "rate_limited_response",
    "retry_after",
    "state_header",
    "with_fields",
]

_DETAIL = "Too many requests; retry later."
_POLICY = b"ratelimit-policy"
_STATE = b"ratelimit"
# The two fields' names, as they appear (lowercase) in ASGI headers.
FIELD_NAMES = (_POLICY, _STATE)


def _name(limit: Limit) -> str:
    return f'"{limit.limit}-per-{math.ceil(limit.period)}s"'


def policy_header(limits: Sequence[Limit]) -> bytes:
    """The ``RateLimit-Policy`` value for ``limits`` (fixed per rule: built once)."""
    return ", ".join(
        f"{_name(limit)};q={limit.limit};w={math.ceil(limit.period)}" for limit in limits
    ).encode()


def state_header(decision: RateDecision) -> bytes:
    """The ``RateLimit`` value of one decision."""
    return ", ".join(
        f"{_name(s.limit)};r={s.remaining};t={math.ceil(s.reset_after)}" for s in decision.states
    ).encode()


def retry_after(decision: RateDecision) -> int:
    """``Retry-After`` in whole seconds, at least 1."""
    return max(1, math.ceil(decision.retry_after))


def rate_limited_response(decision: RateDecision, policy: bytes) -> JSONResponse:
    """The 429 answer to a refused request (see the module docstring)."""
    return JSONResponse(
        {"error": "rate_limited", "detail": _DETAIL},
        status_code=429,
        headers={
            "Retry-After": str(retry_after(decision)),
            "RateLimit-Policy": policy.decode(),
            "RateLimit": state_header(decision).decode(),
            "Cache-Control": "no-store",
        },
    )


def field_pairs(policy: bytes, decision: RateDecision | None) -> list[tuple[bytes, bytes]]:
    """The ASGI header pairs: ``RateLimit-Policy`` (``policy``) and, with a decision, its
    ``RateLimit``."""
    if decision is None:
        return [(_POLICY, policy)]
    return [(_POLICY, policy), (_STATE, state_header(decision))]


def with_fields(send: Send, policy: bytes, decision: RateDecision | None) -> Send:
    """``send`` adding ``RateLimit-Policy`` (``policy``) and ``RateLimit`` (of
    ``decision``) to the response start, in place of any the app set itself. Without a
    decision (Redis could not be asked: a fail-open rule's response, a fail-closed rule's
    503) only the policy is stated."""
    fields = field_pairs(policy, decision)

    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = [(n, v) for n, v in message.get("headers", ()) if n not in FIELD_NAMES]
            headers += fields
            message = {**message, "headers": headers}
        await send(message)

    return wrapped
