"""Metrics and spans of the Redis side, read back through the SDK's in-memory reader."""

from __future__ import annotations

import asyncio

import pytest
from opentelemetry.trace import SpanKind

from gateway_redis import RedisClient, RedisConfig, RedisUnavailable
from gateway_redis.embedded import EmbeddedRedis
from tests.conftest import Telemetry


async def test_availability_state_changes_and_pool_wait_are_measured(
    telemetry: Telemetry, fault_server: EmbeddedRedis
) -> None:
    before = {
        attrs.get("gateway.redis.state"): point.value  # type: ignore[attr-defined]
        for attrs, point in telemetry.points("gateway.redis.state_changes")
    }
    async with RedisClient(RedisConfig(url=fault_server.url, probe_interval=0.1)) as c:
        for i in range(20):
            await c.set(f"k{i}", "v")
        waits = telemetry.points("gateway.redis.pool.wait_time")
        assert waits
        assert sum(p.count for _, p in waits) >= 20  # type: ignore[attr-defined]
        available = [p.value for a, p in telemetry.points("gateway.redis.available")]  # type: ignore[attr-defined]
        assert 1 in available
        fault_server.kill()
        with pytest.raises(RedisUnavailable):
            await c.get("k1")
        assert 0 in [p.value for a, p in telemetry.points("gateway.redis.available")]  # type: ignore[attr-defined]
        fault_server.start()
        for _ in range(100):
            if c.available:
                break
            await asyncio.sleep(0.05)
        assert c.available
    after = {
        attrs.get("gateway.redis.state"): point.value  # type: ignore[attr-defined]
        for attrs, point in telemetry.points("gateway.redis.state_changes")
    }
    assert after.get("down", 0) - before.get("down", 0) == 1
    assert after.get("up", 0) - before.get("up", 0) == 1


async def test_publish_span_is_a_producer_without_payload_or_secrets(
    telemetry: Telemetry, client: RedisClient
) -> None:
    secret = "payload-secret-value"
    await client.publish("orders:42", {"card": secret})
    spans = [s for s in telemetry.spans.get_finished_spans() if s.name == "gateway.pubsub publish"]
    assert len(spans) == 1
    span = spans[0]
    assert span.kind is SpanKind.PRODUCER
    for value in (span.attributes or {}).values():
        assert secret not in str(value)


async def test_health_probes_create_no_spans_with_redis_instrumentation(
    telemetry: Telemetry, redis_config: RedisConfig
) -> None:
    from opentelemetry.instrumentation.redis import RedisInstrumentor

    instrumentor = RedisInstrumentor()
    instrumentor.instrument(tracer_provider=telemetry.tracer_provider)
    try:
        async with RedisClient(redis_config.replace(health_check_interval=0.05)) as c:
            telemetry.spans.clear()
            await asyncio.sleep(0.3)  # several periodic probes
            assert c.available
            assert telemetry.spans.get_finished_spans() == ()
            await c.exists("anything")
            # The instrumentation is live: a real command is traced.
            assert len(telemetry.spans.get_finished_spans()) >= 1
    finally:
        instrumentor.uninstrument()


async def test_invalidations_are_counted_by_kind_and_direction(
    telemetry: Telemetry, redis_config: RedisConfig
) -> None:
    from gateway_redis.invalidation import InvalidationBus

    def counts() -> dict[tuple[object, object], float]:
        return {
            (a.get("gateway.invalidation.kind"), a.get("gateway.invalidation.direction")): p.value  # type: ignore[attr-defined]
            for a, p in telemetry.points("gateway.invalidations")
        }

    before = counts()
    async with (
        RedisClient(redis_config) as c1,
        RedisClient(redis_config) as c2,
        InvalidationBus(c1) as bus1,
        InvalidationBus(c2) as bus2,
    ):
        seen: list[object] = []
        bus1.on_event("demo", lambda e: None)
        bus2.on_event("demo", seen.append)
        assert await bus1.wait_synced(5)
        assert await bus2.wait_synced(5)
        for _ in range(3):
            await bus1.publish("demo", {"op": "drop"})
        # An event for a namespace nobody handles is not counted (no label explosion).
        await c1.publish(bus1.channel, {"ns": "attacker-chosen", "src": "x"})
        for _ in range(100):
            if len(seen) == 3:
                break
            await asyncio.sleep(0.01)
    after = counts()
    assert after.get(("demo", "sent"), 0) - before.get(("demo", "sent"), 0) == 3
    assert after.get(("demo", "received"), 0) - before.get(("demo", "received"), 0) == 3
    assert ("attacker-chosen", "received") not in after


async def test_a_closed_client_leaves_the_availability_gauge(
    telemetry: Telemetry, redis_config: RedisConfig
) -> None:
    def observed() -> list[object]:
        return [p.value for _, p in telemetry.points("gateway.redis.available")]  # type: ignore[attr-defined]

    # Other tests' clients may still be alive and report (FastAPI's lru_caches keep the
    # endpoints of apps built in-process, and with them their never-connected clients,
    # which report 0; sources with the same attributes make one point): this client must
    # leave the gauge as it found it.
    before = observed()
    kept = []
    async with RedisClient(redis_config) as c:
        kept.append(c)  # alive after close: only its state keeps it out of the gauge
        assert observed() == [1]
    assert observed() == before  # closed is not "down"
    assert kept[0].state.value == "closed"
