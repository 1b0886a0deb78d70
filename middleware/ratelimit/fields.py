"""The fields of a per-route limit decided inside the route: :class:`RateLimitFieldsMiddleware`.

FastAPI merges the headers a dependency sets on its injected ``Response`` only into a
response FastAPI builds itself (the endpoint returned data); an endpoint returning a
``Response`` object of its own would drop the ``RateLimit-Policy`` and ``RateLimit``
fields of the :class:`~middleware.ratelimit.dependency.RateLimit` dependency. So the
dependency also records them in the request's scope (:func:`record_fields`; so does
:func:`~middleware.ratelimit.rate_limited` for data a FastAPI endpoint returns), and this
layer, outside the route, puts them on the response start whatever the endpoint returned,
in place of any the response carries (so a FastAPI-built response has each field once).

:meth:`middleware.Gateway.install` adds it to FastAPI applications (outside the response
cache, inside the other layers); an application without the Gateway adds it itself::

    app.add_middleware(RateLimitFieldsMiddleware)

Without the layer the dependency's fields still reach responses that FastAPI builds.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from middleware.ratelimit.answers import FIELD_NAMES

__all__ = ["RateLimitFieldsMiddleware", "discard_fields", "record_fields"]

# The scope key of the (name, value) fields recorded for the response: a list the layer
# puts there (shared by shallow copies of the scope), None without the layer.
FIELDS_KEY = "gateway.ratelimit.fields"


def record_fields(scope: Scope, fields: list[tuple[bytes, bytes]]) -> None:
    """Have the layer (when installed) send ``fields`` with this request's response."""
    recorded = scope.get(FIELDS_KEY)
    if recorded is not None:
        recorded.extend(fields)


def discard_fields(scope: Scope) -> None:
    """Forget the fields recorded so far: an error answer raised instead (a 429, a 503)
    carries its own headers only, as FastAPI sends it."""
    recorded = scope.get(FIELDS_KEY)
    if recorded:
        recorded.clear()


class RateLimitFieldsMiddleware:
    """Adds the rate-limit fields recorded during an HTTP request to its response (see the
    module docstring)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        recorded: list[tuple[bytes, bytes]] = []
        scope[FIELDS_KEY] = recorded

        async def fielded(message: Message) -> None:
            if recorded and message["type"] == "http.response.start":
                kept = message.get("headers", ())
                headers = [(n, v) for n, v in kept if n.lower() not in FIELD_NAMES]
                headers += recorded
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, fielded)
