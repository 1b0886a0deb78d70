"""The per-route way to cache: :func:`cache_response` on an endpoint.

::

    @app.get("/orders/{id}")
    @cache_response(ttl=30, tags=["orders:{id}"])
    async def order(id: str, claims: Claims) -> dict[str, str]: ...

The decorator only marks the endpoint (it returns the same function, so FastAPI reads its
signature as usual). :class:`~middleware.responsecache.ResponseCacheMiddleware`, given the
application (``Gateway.install`` does), turns every marked route of it into a
:class:`CacheRule` on the route's path when it serves its first request, after the rules
of the settings (which win when both match). Routes added after that, and routes of
mounted sub-applications, are not seen: give those a :class:`CacheRule`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from middleware.responsecache.rules import CacheRule

__all__ = ["cache_response", "route_rules"]

F = TypeVar("F", bound=Callable[..., Any])
_MARK = "__gateway_response_cache__"
_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::(str|int|float|uuid))?\}")


def cache_response(
    *,
    ttl: float,
    tags: Iterable[str] = (),
    vary: Iterable[str] = (),
    public: bool = False,
    stale_while_revalidate: float = 0.0,
    stale_if_error: float = 0.0,
) -> Callable[[F], F]:
    """Mark an endpoint for the response cache, with the options of :class:`CacheRule`
    (checked now against a path holding every ``{name}`` the tags use; raises
    ``ValueError``)."""
    options: dict[str, Any] = {
        "ttl": ttl,
        "tags": tuple(tags) if not isinstance(tags, str) else tags,
        "vary": tuple(vary) if not isinstance(vary, str) else vary,
        "public": public,
        "stale_while_revalidate": stale_while_revalidate,
        "stale_if_error": stale_if_error,
    }
    names = sorted({n for t in options["tags"] for n in re.findall(r"\{([^{}]*)\}", str(t))})
    CacheRule("/" + "/".join("{" + n + "}" for n in names) if names else "/", **options)

    def mark(endpoint: F) -> F:
        setattr(endpoint, _MARK, options)
        return endpoint

    return mark


def route_rules(routes: Iterable[Any]) -> list[CacheRule]:
    """A :class:`CacheRule` for each route (anything with ``path`` and ``endpoint``, such
    as Starlette's ``Route`` and FastAPI's ``APIRoute``) whose endpoint is marked with
    :func:`cache_response`. Path converters ``str``, ``int``, ``float`` and ``uuid`` match one
    segment; a marked route with another converter raises ``ValueError``."""
    rules: list[CacheRule] = []
    for route in routes:
        options = getattr(getattr(route, "endpoint", None), _MARK, None)
        path = getattr(route, "path", None)
        if options is None or not isinstance(path, str):
            continue
        pattern = _PARAM.sub(lambda m: "{" + m.group(1) + "}", path)
        if ":" in pattern:
            raise ValueError(f"route {path!r}: only one-segment path converters can be cached")
        rules.append(CacheRule(pattern, **options))
    return rules
