"""What is rate-limited, and per whom: :class:`RateLimitRule`.

A rule names requests as an RBAC :class:`~middleware.rbac.Rule` does (HTTP methods and a
path pattern: ``{id}`` or ``*`` is one segment, a final ``**`` any remainder; a ``GET``
rule covers ``HEAD``), and gives one or more :class:`~gateway_redis.ratelimit.Limit` (all
must admit a request), the ``cost`` of one request, whose budget is charged (the
*identity*) and what happens while Redis cannot answer.

Identities: ``"subject"`` (default) is the authenticated subject (the verified token's
``sub``, or whatever authentication layer set the request's claims, such as API keys),
falling back to the client address for anonymous requests; ``"address"`` is always the
client address. The address comes from :class:`~middleware.TrustedProxies` given to the
middleware: the direct peer unless it is a trusted proxy, never ``X-Forwarded-For`` by
default. Or a callable ``identity(scope) -> str | None`` (None: the client address).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from starlette.types import Scope

from gateway_redis.ratelimit import Limit
from middleware._paths import PathPattern

__all__ = ["IdentityFunction", "RateLimitRule"]

IdentityFunction = Callable[[Scope], "str | None"]
"""``identity(scope) -> str | None``: whose budget a request is charged to (None: the
client address)."""

_NAME = re.compile(r"[A-Za-z0-9_.-]{1,48}")


@dataclass(frozen=True, slots=True, init=False)
class RateLimitRule:
    """Requests to ``path`` with one of ``methods`` (``"*"``: any) are charged ``cost``
    units under every one of ``limits`` (:class:`Limit` or text such as ``"10/s"``,
    ``"1000/h"``), per identity (see the module docstring).

    ``on_unavailable`` says what a request gets while Redis cannot answer: ``"closed"``
    (default: 503 with ``Retry-After``) or ``"open"`` (served unlimited; counted in
    ``gateway.ratelimit.decisions`` as ``failed_open`` and logged when the outage starts).
    ``name`` (letters, digits, ``_.-``) names the rule's budget in Redis, logs and metrics;
    by default it is derived from the methods and path, so rules with the same methods and
    path share a budget.

    ``batch`` > 1 is the approximate mode (:mod:`~middleware.ratelimit.reserve`): an
    instance charges ``batch`` units to an identity at once and admits that identity's
    next requests from them without asking Redis, for at most ``batch_hold`` seconds (then
    what is left is dropped). It never admits more than the limit (the units are charged
    before they are used); it may admit fewer: up to ``batch - cost`` units per instance
    and identity each ``batch_hold``, reserved and then dropped unused. Raises
    ``ValueError`` for bad arguments.
    """

    path: str
    limits: tuple[Limit, ...]
    methods: frozenset[str]
    cost: int
    identity: Literal["subject", "address"] | IdentityFunction
    on_unavailable: Literal["open", "closed"]
    name: str
    batch: int
    batch_hold: float
    _pattern: PathPattern = field(repr=False, compare=False)

    def __init__(
        self,
        path: str,
        *limits: Limit | str,
        methods: Iterable[str] = ("*",),
        cost: int = 1,
        identity: Literal["subject", "address"] | IdentityFunction = "subject",
        on_unavailable: Literal["open", "closed"] = "closed",
        name: str | None = None,
        batch: int = 1,
        batch_hold: float = 1.0,
    ) -> None:
        parsed = _limits(limits)
        if isinstance(methods, str):
            raise ValueError("methods must be a collection of strings")
        method_set = frozenset(m.upper() for m in methods)
        if not method_set:
            raise ValueError("methods must not be empty")
        if "GET" in method_set:
            method_set |= {"HEAD"}
        if isinstance(cost, bool) or not isinstance(cost, int) or cost < 1:
            raise ValueError(f"cost must be a positive int, got {cost!r}")
        if cost > min(limit.limit for limit in parsed):
            raise ValueError(f"cost {cost} exceeds a limit: no request could ever pass")
        if identity not in ("subject", "address") and not callable(identity):
            raise ValueError("identity must be 'subject', 'address' or a callable")
        if on_unavailable not in ("open", "closed"):
            raise ValueError(f"on_unavailable must be 'open' or 'closed', got {on_unavailable!r}")
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ValueError(f"batch must be a positive int, got {batch!r}")
        if batch > 1 and not cost <= batch <= min(limit.limit for limit in parsed):
            raise ValueError("batch must be between cost and the smallest limit")
        if (
            isinstance(batch_hold, bool)
            or not isinstance(batch_hold, (int, float))
            or not 0 < batch_hold <= 60
        ):
            raise ValueError(f"batch_hold must be in (0, 60] seconds, got {batch_hold!r}")
        pattern = PathPattern(path)
        if name is None:
            seed = f"{','.join(sorted(method_set))} {path}".encode()
            name = "r-" + hashlib.sha256(seed).hexdigest()[:12]
        elif not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ValueError(f"name must match {_NAME.pattern}, got {name!r}")
        object.__setattr__(self, "path", path)
        object.__setattr__(self, "limits", parsed)
        object.__setattr__(self, "methods", method_set)
        object.__setattr__(self, "cost", cost)
        object.__setattr__(self, "identity", identity)
        object.__setattr__(self, "on_unavailable", on_unavailable)
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "batch", batch)
        object.__setattr__(self, "batch_hold", float(batch_hold))
        object.__setattr__(self, "_pattern", pattern)

    @property
    def fail_open(self) -> bool:
        """Whether requests are served unlimited while Redis cannot answer."""
        return self.on_unavailable == "open"

    def matches(self, method: str, path: str) -> bool:
        """Whether the rule applies to a request."""
        return ("*" in self.methods or method in self.methods) and self._pattern.matches(path)


def _limits(limits: Sequence[Limit | str]) -> tuple[Limit, ...]:
    if not limits:
        raise ValueError("a rule needs at least one limit")
    if len(limits) > 8:
        raise ValueError("a rule has at most 8 limits")
    parsed = tuple(Limit.parse(x) if isinstance(x, str) else x for x in limits)
    if not all(isinstance(x, Limit) for x in parsed):
        raise ValueError("limits must be Limit instances or text such as '10/s'")
    return parsed
