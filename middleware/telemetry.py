"""The ASGI side's telemetry: span attribute names and the WebSocket instruments.

Built on :mod:`gateway_redis.telemetry` (the same tracer, meter and ``gateway.*`` naming),
which knows nothing of ASGI. A lookup served from L1 sets ``gateway.jwt.cache.result``,
``gateway.rbac.cache.result`` or ``gateway.session.cache.result`` (``"l1"``) on the
request's server span instead of starting a child span (see that module's docstring for
the measurements behind this).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from opentelemetry.metrics import CallbackOptions, Observation

from gateway_redis.telemetry import meter

__all__ = [
    "ATTR_APIKEY_RESULT",
    "ATTR_JWT_RESULT",
    "ATTR_RATELIMIT_RESULT",
    "ATTR_RATELIMIT_RULE",
    "ATTR_RBAC_RESULT",
    "ATTR_SESSION_RESULT",
    "WebSocketInstruments",
    "websocket_instruments",
]

# Set on the current (server) span instead of a child span when a lookup is served from L1:
# no I/O happened, and a span per hit cost more than the whole warm request.
ATTR_APIKEY_RESULT = "gateway.apikey.cache.result"
ATTR_JWT_RESULT = "gateway.jwt.cache.result"
ATTR_RBAC_RESULT = "gateway.rbac.cache.result"
ATTR_SESSION_RESULT = "gateway.session.cache.result"
# The rate limiter's decisions: the rule's name and allowed/limited/failed_open/failed_closed.
ATTR_RATELIMIT_RULE = "gateway.ratelimit.rule"
ATTR_RATELIMIT_RESULT = "gateway.ratelimit.result"

T = TypeVar("T")


class WebSocketInstruments:
    """``gateway.ws.connections`` (up-down counter), ``gateway.ws.dropped`` (counter),
    ``gateway.ws.queued`` (observed from every registered source), and presence's
    ``gateway.ws.presence.dropped`` (joins/leaves not written: queue full or Redis down;
    repaired by the heartbeat or the TTL) and ``gateway.ws.presence.suppressed`` (join/leave
    events not sent: the channel was over its ``join_leave_limit``) counters. Made once
    per process: get them with :func:`websocket_instruments`."""

    def __init__(self) -> None:
        self.ws_connections = meter.create_up_down_counter(
            "gateway.ws.connections",
            unit="{connection}",
            description="Open WebSocket connections",
        )
        self.ws_dropped = meter.create_counter(
            "gateway.ws.dropped",
            unit="{message}",
            description="Messages dropped from WebSocket queues on overflow",
        )
        self.ws_presence_dropped = meter.create_counter(
            "gateway.ws.presence.dropped",
            unit="{write}",
            description="Presence joins and leaves not written (queue full or Redis down)",
        )
        self.ws_presence_suppressed = meter.create_counter(
            "gateway.ws.presence.suppressed",
            unit="{event}",
            description="Join/leave events not sent: the channel was over its join_leave_limit",
        )
        self._queued: list[tuple[weakref.ref[Any], Callable[[Any], float | None]]] = []
        meter.create_observable_up_down_counter(
            "gateway.ws.queued",
            callbacks=[self._observe_queued],
            unit="{message}",
            description="Messages waiting in WebSocket queues",
        )

    def observe_queued(self, owner: T, getter: Callable[[T], float | None]) -> None:
        """Report ``getter(owner)`` in ``gateway.ws.queued`` for as long as ``owner`` lives
        (nothing while it returns None)."""
        self._queued.append((weakref.ref(owner), getter))

    def _observe_queued(self, options: CallbackOptions) -> Iterable[Observation]:
        for entry in list(self._queued):
            ref, getter = entry
            owner = ref()
            if owner is None:
                self._queued.remove(entry)
                continue
            try:
                value = getter(owner)
            except Exception:  # noqa: S112 - an observer must never break collection
                continue
            if value is not None:
                yield Observation(value, {})


_instruments: WebSocketInstruments | None = None


def websocket_instruments() -> WebSocketInstruments:
    """The process's WebSocket instruments (created on first use)."""
    global _instruments
    if _instruments is None:
        _instruments = WebSocketInstruments()
    return _instruments
