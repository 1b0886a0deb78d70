"""Tracer, meter and instrument names for the whole library (OpenTelemetry API only).

Without an SDK every call here is a no-op. Instruments are created once per process on
the global meter provider's proxy, so an SDK configured later still receives them.
Attribute names are ``gateway.*``; values are low-cardinality and never carry tokens,
keys, session IDs or payloads.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackOptions, Observation

__all__ = [
    "ATTR_CACHE",
    "ATTR_REASON",
    "ATTR_DEGRADED",
    "ATTR_RESULT",
    "SCOPE",
    "instruments",
    "meter",
    "register_gauge_source",
    "tracer",
    "tracing_enabled",
]

SCOPE = "gateway_redis"
ATTR_CACHE = "gateway.cache.name"
ATTR_RESULT = "gateway.cache.result"
ATTR_DEGRADED = "gateway.degraded"
ATTR_REASON = "gateway.reason"

T = TypeVar("T")

tracer = trace.get_tracer(SCOPE)
meter = metrics.get_meter(SCOPE)


_tracing = False


def tracing_enabled() -> bool:
    """True once an SDK tracer provider is installed.

    Hot paths skip building spans entirely before that: even a no-op span costs a few
    microseconds of context switching per request. A global provider can be set only once,
    so a True answer is kept; until then the check reads the API's global directly, since
    ``trace.get_tracer_provider()`` consults the environment on every call (~1.8 us).
    """
    global _tracing
    if _tracing:
        return True
    provider = getattr(trace, "_TRACER_PROVIDER", None)
    if provider is None:
        return False
    _tracing = not isinstance(provider, trace.ProxyTracerProvider)
    return _tracing


class _Instruments:
    """The library's instruments, made once per process."""

    def __init__(self) -> None:
        self.cache_lookups = meter.create_counter(
            "gateway.cache.lookups",
            unit="{lookup}",
            description="Cache lookups by cache (jwt, rbac, session) and result (l1, l2, miss)",
        )
        self.pool_wait = meter.create_histogram(
            "gateway.redis.pool.wait_time",
            unit="s",
            description="Time spent waiting for a pooled Redis connection",
        )
        self.state_changes = meter.create_counter(
            "gateway.redis.state_changes",
            unit="{change}",
            description="Changes of Redis availability, by new state",
        )
        self.reconnects = meter.create_counter(
            "gateway.pubsub.reconnects",
            unit="{reconnect}",
            description="Reconnects of the shared pub/sub connection",
        )
        self.dropped = meter.create_counter(
            "gateway.pubsub.dropped",
            unit="{message}",
            description="Messages dropped because a subscriber's buffer was full",
        )
        self.invalidations = meter.create_counter(
            "gateway.invalidations",
            unit="{event}",
            description="Cache invalidation events, by kind and direction (sent, received)",
        )
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
        meter.create_observable_gauge(
            "gateway.redis.available",
            callbacks=[self._observe("available")],
            unit="1",
            description="1 when Redis is available to the client, else 0",
        )
        meter.create_observable_up_down_counter(
            "gateway.redis.pool.in_use",
            callbacks=[self._observe("pool_in_use")],
            unit="{connection}",
            description="Pooled Redis connections lent out",
        )
        meter.create_observable_up_down_counter(
            "gateway.ws.queued",
            callbacks=[self._observe("ws_queued")],
            unit="{message}",
            description="Messages waiting in WebSocket queues",
        )

    @staticmethod
    def _observe(name: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def callback(options: CallbackOptions) -> Iterable[Observation]:
            sources = _GAUGE_SOURCES.get(name, [])
            for entry in list(sources):
                ref, getter, attributes = entry
                owner = ref()
                if owner is None:
                    sources.remove(entry)
                    continue
                try:
                    value = getter(owner)
                except Exception:  # noqa: S112 - an observer must never break collection
                    continue
                yield Observation(value, attributes)

        return callback


_GAUGE_SOURCES: dict[
    str, list[tuple[weakref.ref[Any], Callable[[Any], float], dict[str, str]]]
] = {}
_instruments: _Instruments | None = None


def instruments() -> _Instruments:
    """The process's instruments (created on first use)."""
    global _instruments
    if _instruments is None:
        _instruments = _Instruments()
    return _instruments


def register_gauge_source(
    name: str, owner: T, getter: Callable[[T], float], **attributes: str
) -> None:
    """Report ``getter(owner)`` for the gauge ``name`` for as long as ``owner`` lives.

    ``name`` is one of ``available``, ``pool_in_use``, ``ws_queued``.
    """
    instruments()
    _GAUGE_SOURCES.setdefault(name, []).append((weakref.ref(owner), getter, dict(attributes)))
