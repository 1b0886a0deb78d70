"""Handing a WebSocket over to the bridge once the Gateway's layers have checked its
handshake, so that their coroutines do not stay suspended for the socket's whole life
(private).

Every ASGI layer is a coroutine that awaits the next one. For an HTTP request that chain
lives for milliseconds; for a WebSocket it lives as long as the socket: the Gateway's
authentication, authorization, session, CSRF, rate-limit and cache layers, then Starlette's
exception layer and router, about fourteen suspended frames (with their locals and
closures) per socket, some 4 KB each at 20,000 sockets (the density benchmark).

:class:`WebSocketHandoff`, outermost of the Gateway's layers, sees a WebSocket handshake
that the router would give to the bridge's route. It sets a :class:`Handoff` (in a
context variable, not in the scope: every key a socket's scope gains is kept for its life)
and runs the layers as usual: each does its handshake work (the JWT layer authenticates
the token, the session layer loads the session, RBAC checks its rules, and any of them may
refuse the handshake exactly as before). :class:`HandoffTail`, innermost of the layers,
takes the scope, ``receive`` and ``send`` as the layers left them instead of calling on;
the layers' coroutines then return. The handoff runs the bridge with what was taken:
directly when nothing but Starlette's exception layer and router lay between the layers
and the route (the route is the router's first match), else through the rest of the
application. What a layer must do when the socket ends (the session layer saves the
session) it registers with :meth:`Handoff.after`; it runs when the bridge returns, as it
did when the layer's ``finally`` ran.

Differences, for the bridge's route only: exceptions raised by the bridge do not pass
through Starlette's exception layer (``app.exception_handler``; the bridge handles its own
errors and closes the socket itself), and on the direct path the scope does not get the
router's keys (``endpoint``, ``path_params``, ``router``), which the bridge does not read.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextvars import ContextVar

from starlette.routing import BaseRoute, Match, Router
from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["Handoff", "HandoffPoint", "HandoffTail", "WebSocketHandoff", "current_handoff"]

_HANDOFF: ContextVar[Handoff | None] = ContextVar("gateway_handoff", default=None)


def current_handoff() -> Handoff | None:
    """The :class:`Handoff` of the WebSocket handshake the layers are checking, if any."""
    return _HANDOFF.get()


class Handoff:
    """One WebSocket on its way through the layers: what the tail took, and what must run
    when the socket ends."""

    __slots__ = ("_after", "taken")

    def __init__(self) -> None:
        self.taken: tuple[Scope, Receive, Send] | None = None
        self._after: list[Callable[[], Awaitable[None]]] = []

    def after(self, action: Callable[[], Awaitable[None]]) -> None:
        """Run ``action()`` when the socket has ended (or was refused), innermost first."""
        self._after.append(action)

    async def finish(self) -> None:
        actions, self._after = self._after, []
        for action in reversed(actions):
            await action()


class HandoffPoint:
    """Shared by one :class:`WebSocketHandoff` and its :class:`HandoffTail` (which
    Starlette builds later, when the application first serves)."""

    __slots__ = ("bridge", "direct", "route", "router", "tail")

    def __init__(self, router: Router, route: BaseRoute, bridge: ASGIApp, direct: bool) -> None:
        self.router = router
        self.route = route
        self.bridge = bridge
        self.direct = direct  # nothing but Starlette's layers between the tail and the router
        self.tail: HandoffTail | None = None


async def _taken() -> None:
    return None


class HandoffTail:
    """Innermost of the Gateway's layers: takes a WebSocket that carries a :class:`Handoff`;
    everything else passes through without a frame of its own."""

    _asgi_single_callable = True  # ASGI 3 for asgiref (see WebSocketHandoff)

    def __init__(self, app: ASGIApp, *, point: HandoffPoint) -> None:
        self.app = app
        point.tail = self

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        handoff = _HANDOFF.get() if scope["type"] == "websocket" else None
        if handoff is None or handoff.taken is not None:
            return self.app(scope, receive, send)
        handoff.taken = (scope, receive, send)
        return _taken()


class WebSocketHandoff:
    """Outermost of the Gateway's layers: see the module docstring. Anything but a
    WebSocket for the bridge's route passes through without a frame of its own."""

    # A plain __call__ returning an awaitable: tell asgiref (OpenTelemetry's ASGI
    # middleware wraps what it is given with it) that this is ASGI 3, not ASGI 2.
    _asgi_single_callable = True

    def __init__(self, app: ASGIApp, *, point: HandoffPoint) -> None:
        self.app = app
        self._point = point

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        if scope["type"] != "websocket":
            return self.app(scope, receive, send)
        point = self._point
        for route in point.router.routes:  # the router's own choice: its first full match
            match, _ = route.matches(scope)
            if match is Match.FULL:
                if route is point.route and point.tail is not None:
                    return self._handoff(scope, receive, send)
                break
        return self.app(scope, receive, send)

    async def _handoff(self, scope: Scope, receive: Receive, send: Send) -> None:
        point = self._point
        handoff = Handoff()
        try:
            reset = _HANDOFF.set(handoff)
            try:
                await self.app(scope, receive, send)  # the layers' handshake work
            finally:
                _HANDOFF.reset(reset)
            taken = handoff.taken
            if taken is None:  # refused by a layer (its answer was sent)
                return
            handoff.taken = None
            scope, receive, send = taken
            tail = point.tail
            if point.direct or tail is None:
                # Not the router's keys (endpoint, path_params, router): the bridge reads none.
                await point.bridge(scope, receive, send)
            else:
                await tail.app(scope, receive, send)
        finally:
            await handoff.finish()
