"""Role-based access control: rules by method and path, and per-route requirements.

::

    permissions = PermissionCache(StaticRolePermissions({"admin": ["*"]}), client=client)
    app.add_middleware(
        RBACMiddleware,
        permissions=permissions,
        rules=[Rule("/admin/**", "admin:read", methods=("GET",))],
    )

Install it inside :class:`~middleware.jwt.JWTMiddleware` (added before it with
``add_middleware``, so it runs after it). Every request gets a :class:`PermissionContext`
(``get_permission_context(request)``) that resolves the principal's permissions lazily, at
most once per request. Every rule matching the request must be satisfied; a request that
matches a rule but carries no token gets 401, one lacking a permission gets 403, and a
permission source that cannot answer gets 503. A Redis outage is never a 403: the source is
asked directly. Per-route requirements: :func:`require_permissions` for Starlette endpoints,
:class:`middleware.fastapi.RequirePermissions` for FastAPI.

The rules a (method, path) needs are memoized, bounded in entries and bytes; a path longer
than 2,048 characters is matched against the rules every time, never remembered.
Permissions found in L1 (or given synchronously by an in-process source such as
:class:`StaticRolePermissions`) are checked with no await and no span:
``gateway.rbac.cache.result`` (``l1`` or ``uncached``) goes on the current (server) span.
Asking the cache's L2 or the source gets a ``gateway.rbac authorize`` span.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

from gateway_redis import telemetry
from middleware._memo import Memo
from middleware._paths import PathPattern, route_path
from middleware.errors import (
    ErrorHandler,
    MiddlewareError,
    NotAuthenticated,
    PermissionDenied,
    default_error_response,
)
from middleware.jwt.claims import TokenClaims
from middleware.rbac.permissions import PermissionCache
from middleware.rbac.sources import check_permission, permission_granted
from middleware.scope import CLAIMS_KEY, PERMISSIONS_KEY, get_permission_context
from middleware.telemetry import ATTR_RBAC_RESULT

__all__ = ["PermissionContext", "RBACMiddleware", "Rule", "require_permissions"]

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


@dataclass(frozen=True, slots=True, init=False)
class Rule:
    """Requests to ``path`` (a :class:`~middleware._paths.PathPattern`: ``{id}`` or ``*`` is
    one segment, a final ``**`` is any remainder) with one of ``methods`` (``"*"`` = any;
    WebSocket handshakes count as ``GET``) need every one of ``permissions``. A rule for
    ``GET`` covers ``HEAD`` too: routers answer ``HEAD`` with the ``GET`` endpoint."""

    path: str
    permissions: tuple[str, ...]
    methods: frozenset[str]
    _pattern: PathPattern = field(repr=False, compare=False)

    def __init__(self, path: str, *permissions: str, methods: Iterable[str] = ("*",)) -> None:
        if not permissions:
            raise ValueError("a rule needs at least one permission")
        required = tuple(check_permission(p) for p in permissions)
        if any("*" in p for p in required):
            raise ValueError("required permissions cannot contain wildcards")
        if isinstance(methods, str):
            raise ValueError("methods must be a collection of strings")
        method_set = frozenset(m.upper() for m in methods)
        if not method_set:
            raise ValueError("methods must not be empty")
        if "GET" in method_set:
            method_set |= {"HEAD"}
        object.__setattr__(self, "path", path)
        object.__setattr__(self, "permissions", required)
        object.__setattr__(self, "methods", method_set)
        object.__setattr__(self, "_pattern", PathPattern(path))

    def matches(self, method: str, path: str) -> bool:
        """Whether the rule applies to a request."""
        return ("*" in self.methods or method in self.methods) and self._pattern.matches(path)


class PermissionContext:
    """The permissions of one request's principal, resolved at most once (per request)."""

    __slots__ = ("_cache", "_granted", "claims")

    def __init__(
        self,
        cache: PermissionCache,
        claims: TokenClaims | None,
        *,
        granted: frozenset[str] | None = None,
    ) -> None:
        """``granted``, when given, is the principal's permissions already resolved."""
        self._cache = cache
        self.claims = claims
        self._granted = granted

    async def permissions(self) -> frozenset[str]:
        """The principal's permissions (empty when anonymous). Raises
        :class:`~middleware.errors.ServiceUnavailable` when the source cannot answer."""
        if self._granted is None:
            if self.claims is None:
                self._granted = frozenset()
            else:
                self._granted = await self._cache.permissions(self.claims)
        return self._granted

    async def has(self, *required: str) -> bool:
        """Whether every one of ``required`` is granted."""
        granted = await self.permissions()
        return all(permission_granted(granted, p) for p in required)

    async def require(self, *required: str) -> None:
        """Raise :class:`NotAuthenticated` (anonymous) or :class:`PermissionDenied` unless
        every one of ``required`` is granted."""
        if self.claims is None:
            raise NotAuthenticated("missing_token")
        if not await self.has(*required):
            raise PermissionDenied("forbidden", required=required)


class RBACMiddleware:
    """Enforces ``rules`` and provides a :class:`PermissionContext` to every request.

    ``permissions`` resolves (and caches) permissions. ``rules`` is a sequence of
    :class:`Rule`; ``deny_unmatched`` makes requests that match no rule answer 403 (default:
    allowed, leaving it to per-route requirements). ``on_error`` builds error responses.
    Other scope types pass through.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        permissions: PermissionCache,
        rules: Sequence[Rule] = (),
        deny_unmatched: bool = False,
        on_error: ErrorHandler = default_error_response,
    ) -> None:
        if not isinstance(permissions, PermissionCache):
            raise ValueError("permissions must be a PermissionCache")
        if not all(isinstance(r, Rule) for r in rules):
            raise ValueError("rules must be Rule instances")
        if not callable(on_error):
            raise ValueError("on_error must be callable")
        self.app = app
        self._cache = permissions
        self._rules = tuple(rules)
        self._deny_unmatched = bool(deny_unmatched)
        self._on_error = on_error
        # (method, path) -> required permissions (empty: no rule matched). Paths come from
        # clients: bounded in entries and bytes; the hot path reads the dict.
        self._requirement_memo: Memo[tuple[str, str], tuple[str, ...]] = Memo(
            max_key=_MAX_MEMO_PATH, max_entries=_MEMO_SIZE
        )
        self._requirements = self._requirement_memo.entries

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http" and kind != "websocket":
            await self.app(scope, receive, send)
            return
        claims: TokenClaims | None = scope.get(CLAIMS_KEY)
        context = PermissionContext(self._cache, claims)
        scope[PERMISSIONS_KEY] = context
        required = self.required_for(scope)
        if required:
            # The warm path: permissions from L1, no await, no span.
            granted = self._cache.cached(claims) if claims is not None else None
            if granted is not None:
                cacheable = self._cache.cacheable
                if cacheable:
                    _L1_LOOKUP.value += 1
                context._granted = granted
                if granted_all(granted, required):
                    if telemetry.tracing_enabled():
                        telemetry.annotate_current_span(
                            _L1_SPAN_ATTRS if cacheable else _LOCAL_SPAN_ATTRS
                        )
                    await self.app(scope, receive, send)
                    return
            try:
                if telemetry.tracing_enabled():
                    with telemetry.tracer.start_as_current_span(
                        "gateway.rbac authorize", record_exception=False
                    ) as span:
                        if span.is_recording():
                            span.set_attribute("gateway.rbac.required", len(required))
                        await context.require(*required)
                else:
                    await context.require(*required)
            except MiddlewareError as error:
                await self._on_error(scope, error)(scope, receive, send)
                return
        elif self._deny_unmatched:
            await self._on_error(scope, PermissionDenied("no_rule"))(scope, receive, send)
            return
        await self.app(scope, receive, send)

    @property
    def permissions(self) -> PermissionCache:
        """The permission cache the rules are checked against."""
        return self._cache

    @property
    def deny_unmatched(self) -> bool:
        """Whether a request that matches no rule is refused (403)."""
        return self._deny_unmatched

    def required_for(self, scope: Scope) -> tuple[str, ...]:
        """:meth:`required` for a request's scope (WebSocket handshakes count as GET)."""
        if not self._rules:
            return ()
        path: str = scope["path"]
        if scope.get("root_path"):
            path = route_path(scope)
        found = self._requirements.get((scope.get("method", "GET"), path))
        return found if found is not None else self.required(scope.get("method", "GET"), path)

    def required(self, method: str, path: str) -> tuple[str, ...]:
        """The permissions the rules require for a request (empty when no rule matches),
        each once, in rule order. Memoized per method and path (bounded)."""
        if not self._rules:
            return ()
        key = (method, path)
        found = self._requirements.get(key)
        if found is not None:
            return found
        required: list[str] = []
        for rule in self._rules:
            if rule.matches(method, path):
                required.extend(rule.permissions)
        found = tuple(dict.fromkeys(required))
        # The method counts too: some servers accept any token there.
        self._requirement_memo.remember(key, found, len(method) + len(path))
        return found


_MAX_MEMO_PATH = 2048  # characters of method and path: longer requests are not memoized
_MEMO_SIZE = 2048
_L1_LOOKUP = telemetry.lookup_tally("rbac", "l1")
_L1_SPAN_ATTRS = {ATTR_RBAC_RESULT: "l1"}
_LOCAL_SPAN_ATTRS = {ATTR_RBAC_RESULT: "uncached"}


def granted_all(granted: frozenset[str], required: tuple[str, ...]) -> bool:
    """Whether ``granted`` covers every one of ``required`` (wildcards included)."""
    for permission in required:
        if permission not in granted and not permission_granted(granted, permission):
            return False
    return True


def require_permissions(
    *permissions: str, on_error: ErrorHandler = default_error_response
) -> Callable[[F], F]:
    """Decorate a Starlette endpoint (with a ``request`` or ``websocket`` parameter, as for
    Starlette's ``@requires``) so it runs only when every one of ``permissions`` is granted.

    Otherwise the endpoint returns ``on_error``'s response (HTTP) or closes the socket
    (WebSocket). Needs :class:`RBACMiddleware`.
    """
    required = tuple(check_permission(p) for p in permissions)
    if not required or any("*" in p for p in required):
        raise ValueError("give one or more permissions, without wildcards")

    def decorator(func: F) -> F:
        params = list(inspect.signature(func).parameters)
        names = [n for n in params if n in ("request", "websocket")]
        if not names:
            raise TypeError(f'no "request" or "websocket" parameter in {func.__qualname__}')
        index = params.index(names[0])

        @functools.wraps(func)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            conn = kwargs.get(params[index], args[index] if index < len(args) else None)
            if not isinstance(conn, HTTPConnection):
                raise TypeError("the endpoint was not given a request or websocket")
            try:
                await get_permission_context(conn).require(*required)
            except MiddlewareError as error:
                answer = on_error(conn.scope, error)
                if isinstance(conn, WebSocket):
                    await answer(conn.scope, conn.receive, conn.send)
                    return None
                return answer  # Starlette calls whatever the endpoint returns as ASGI
            return await func(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorator
