"""Shared fixtures: real Redis-compatible servers started by the tests themselves.

``redis_server`` is one server for the whole session, flushed before every test that
uses it; ``fault_server`` is a private server a test may kill, freeze and restart.
Binaries come from :func:`gateway_redis.embedded.find_server_binary`.
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Iterator

import pytest
import redis

from gateway_redis import RedisClient, RedisConfig
from gateway_redis.embedded import EmbeddedRedis


@pytest.fixture(scope="session")
def redis_server() -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis()
    server.start()
    yield server
    server.cleanup()


@pytest.fixture
def redis_admin(redis_server: EmbeddedRedis) -> Iterator[redis.Redis]:
    """A plain synchronous redis-py client for setting up and inspecting the server."""
    admin = redis.Redis.from_url(redis_server.url)
    admin.flushall()
    yield admin
    admin.close()


@pytest.fixture
def redis_config(redis_server: EmbeddedRedis, redis_admin: redis.Redis) -> RedisConfig:
    return RedisConfig(url=redis_server.url, min_idle_conns=2)


@pytest.fixture
async def client(redis_config: RedisConfig) -> AsyncIterator[RedisClient]:
    async with RedisClient(redis_config) as c:
        yield c


@pytest.fixture(autouse=True, scope="module")
def _earlier_tests_frozen() -> None:
    """Each test module starts with what earlier modules left alive moved out of the
    collector's way (one full collection, then ``gc.freeze()``).

    One pytest process runs the whole suite; FastAPI's module-level caches alone keep every
    application built so far alive. A generation-2 collection goes through all of it: 55-75
    ms in a lone test of the Cluster tests, and 300 ms once late in a CI run, where an
    invalidation test's "seen within 100 ms" failed. The tests time what the library does,
    not how long the collector takes over the harness's leftovers. Objects frozen here are
    still freed when nothing refers to them; only reference cycles among them stay.
    """
    gc.collect()
    gc.freeze()


@pytest.fixture
def no_collector_pauses() -> Iterator[None]:
    """The cyclic garbage collector off for the test (after one full collection).

    For tests that time calls against deadlines of a few hundred milliseconds: late in a
    full run this process holds every earlier test's leftovers, and one generation-2
    collection then stops the loop for 50 ms on a quiet machine (measured with
    ``gc.callbacks``) and for several times that on a loaded one. What such a test
    checks is how calls are routed and failed, not how long the collector runs.
    """
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@pytest.fixture
def fault_server() -> Iterator[EmbeddedRedis]:
    """A server of the test's own, to kill, freeze and restart."""
    server = EmbeddedRedis()
    server.start()
    yield server
    server.cleanup()


class Telemetry:
    """The process-wide OpenTelemetry SDK used by tests: in-memory spans and metrics."""

    def __init__(self) -> None:
        from opentelemetry import metrics, trace
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        self.spans = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.spans))
        self.metrics = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.metrics])
        trace.set_tracer_provider(self.tracer_provider)
        metrics.set_meter_provider(self.meter_provider)

    def points(self, name: str) -> list[tuple[dict[str, object], object]]:
        """(attributes, point) for every data point of the metric ``name`` right now."""
        data = self.metrics.get_metrics_data()
        found: list[tuple[dict[str, object], object]] = []
        if data is None:
            return found
        for resource_metrics in data.resource_metrics:
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    if metric.name == name:
                        for point in metric.data.data_points:
                            found.append((dict(point.attributes or {}), point))
        return found


_TELEMETRY: Telemetry | None = None


@pytest.fixture
def telemetry() -> Telemetry:
    """The SDK, installed globally once per test session (OpenTelemetry allows one)."""
    global _TELEMETRY
    if _TELEMETRY is None:
        _TELEMETRY = Telemetry()
    _TELEMETRY.spans.clear()
    return _TELEMETRY
