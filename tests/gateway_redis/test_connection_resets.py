"""One broken connection is not an outage; a killed server still is, at once (issue 14 item 2).

Through a proxy that resets a quarter of the server's replies in the middle while Redis
itself is healthy, the only calls that fail are those whose own connection was cut and
that could not be sent again (at-most-once commands, or idempotent ones cut on every
attempt of their retry budget and for the 0.25 s they may go on retrying a broken
connection): none fails fast as ``down`` because another connection broke. A SIGKILL of
the server is still noticed within 100 ms while calls run, directly and through the proxy.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import AsyncIterator

import pytest
import redis
from redis import exceptions as rexc

from gateway_redis import CacheKeyNotFound, HealthState, RedisClient, RedisConfig, RedisUnavailable
from gateway_redis.embedded import EmbeddedRedis
from tests.lossy_proxy import LossyProxies

pytestmark = pytest.mark.slow

_WORKERS = 10
_ROUNDS = 60  # calls per worker: 600 in all
_KILL_DETECTED_WITHIN = 0.1


@pytest.fixture
async def proxies() -> AsyncIterator[LossyProxies]:
    proxies = LossyProxies()
    yield proxies
    await proxies.aclose()


def _own_connection_cut(error: RedisUnavailable) -> bool:
    """The call itself met a broken connection (not a fast failure because of others)."""
    return isinstance(error.__cause__, (rexc.ConnectionError, OSError, EOFError))


async def _traffic(client: RedisClient, prefix: str, stop: float) -> dict[str, list[object]]:
    """_WORKERS workers, _ROUNDS calls each: GET and SET (retried), INCR (at most once)."""
    outcome: dict[str, list[object]] = collections.defaultdict(list)

    async def worker(w: int) -> None:
        for i in range(_ROUNDS):
            if time.perf_counter() > stop:
                return
            kind = ("get", "get", "set", "set", "incr")[i % 5]
            try:
                if kind == "get":
                    await client.get(f"{prefix}{w}")
                elif kind == "set":
                    await client.set(f"{prefix}{w}", str(i))
                else:
                    await client.increment(f"{prefix}n{w}")
            except RedisUnavailable as exc:
                outcome[f"{kind} failed"].append(exc)
                if kind == "incr":
                    outcome["incr failed by worker"].append(w)
            except CacheKeyNotFound:
                outcome[f"{kind} ok"].append(None)
            else:
                outcome[f"{kind} ok"].append(None)
            await asyncio.sleep(0.02)  # paced like request traffic, not a tight loop

    await asyncio.gather(*(worker(w) for w in range(_WORKERS)))
    return outcome


async def test_reset_connections_fail_only_their_own_calls(
    redis_server: EmbeddedRedis, redis_admin: redis.Redis, proxies: LossyProxies
) -> None:
    host, port = await proxies.add(("127.0.0.1", redis_server.port))
    changes: list[HealthState] = []
    async with RedisClient(RedisConfig(url=f"redis://{host}:{port}", min_idle_conns=2)) as c:
        c.add_state_listener(lambda state, _reason: changes.append(state))
        await c.set("reset:0", "x")
        proxies.reset_replies(0.25, seed=20261203)
        outcome = await _traffic(c, "reset:", time.perf_counter() + 30.0)
        proxies.reset_replies(0.0, seed=0)
        # A probe sent after the last reset may still hold its connection for a moment: a
        # leak is a connection that never comes back.
        settle = time.monotonic() + 5.0
        while c.pool_in_use and time.monotonic() < settle:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        in_use = c.pool_in_use
    failed_incr = collections.Counter(outcome.pop("incr failed by worker", []))
    failures = [e for k, v in outcome.items() if k.endswith("failed") for e in v]
    calls = sum(len(v) for v in outcome.values())
    collateral = [e for e in failures if not _own_connection_cut(e)]  # type: ignore[arg-type]
    counts = {k: len(v) for k, v in sorted(outcome.items())}
    print(
        f"\n{calls} calls through a proxy resetting 25% of replies ({proxies.resets} resets): "
        f"{len(failures)} failed ({len(failures) / calls:.1%}), {len(collateral)} of them "
        f"without their own connection cut (fast 'down' failures); by kind {counts}; "
        f"state changes {[s.value for s in changes]}"
    )
    assert calls == _WORKERS * _ROUNDS
    assert in_use == 0, "a connection was not given back to the pool"
    assert not collateral, f"{len(collateral)} calls failed for others' broken connections"
    assert changes == [], "Redis was healthy: the client should never have gone down"
    assert proxies.resets > calls // 10, "the proxy should have reset many replies"
    # A failed GET/SET was retried on fresh connections and cut on every one of its
    # attempts, at least 1 + retry_attempts (each attempt that fails here is a reset: nothing times
    # out or is refused); an INCR was cut once and never sent again.
    attempts = 1 + RedisConfig().retry_attempts
    idempotent_failed = len(outcome["get failed"]) + len(outcome["set failed"])
    assert attempts * idempotent_failed + len(outcome["incr failed"]) <= proxies.resets
    # At most once: each worker's counter has every INCR that succeeded and at most the
    # ones that failed (their reply was cut, the server may have run them), never more.
    for w in range(_WORKERS):
        raw = redis_admin.get(f"{RedisConfig().key_prefix}reset:n{w}")
        value = int(raw) if raw is not None else 0
        ok = sum(1 for i in range(_ROUNDS) if i % 5 == 4) - failed_incr[w]
        assert ok <= value <= ok + failed_incr[w]


@pytest.mark.parametrize("through_proxy", [False, True], ids=["direct", "proxy"])
async def test_killed_server_is_noticed_within_100ms_under_traffic(
    fault_server: EmbeddedRedis, proxies: LossyProxies, through_proxy: bool
) -> None:
    port = fault_server.port
    if through_proxy:
        _, port = await proxies.add(("127.0.0.1", fault_server.port))
    down_at: list[float] = []
    noticed_event = asyncio.Event()

    def listener(state: HealthState, _reason: str) -> None:
        if state is HealthState.DOWN:
            down_at.append(time.perf_counter())
            noticed_event.set()

    async with RedisClient(RedisConfig(url=f"redis://127.0.0.1:{port}", min_idle_conns=2)) as c:
        c.add_state_listener(listener)
        stop = asyncio.Event()

        async def worker(w: int) -> None:
            i = 0
            while not stop.is_set():
                i += 1
                try:
                    if i % 3:
                        await c.get(f"kill:{w}")
                    else:
                        await c.increment(f"kill:n{w}")
                except (RedisUnavailable, CacheKeyNotFound):
                    pass
                await asyncio.sleep(0.002)

        tasks = [asyncio.create_task(worker(w)) for w in range(4)]
        try:
            await asyncio.sleep(0.3)
            assert c.available
            assert not down_at
            killed = time.perf_counter()
            fault_server.kill()  # SIGKILL, then reaped
            reaped = time.perf_counter()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(noticed_event.wait(), 2.0)
        finally:
            stop.set()
            await asyncio.gather(*tasks)
        assert down_at, "the kill was not noticed within 2 s"
        noticed = down_at[0] - killed
        started = time.perf_counter()
        with pytest.raises(RedisUnavailable) as info:
            await c.get("kill:0")
        fail_fast = time.perf_counter() - started
        print(
            f"\nkill ({'through the proxy' if through_proxy else 'direct'}) noticed "
            f"{noticed * 1000:.1f} ms after SIGKILL (process reaped after "
            f"{(reaped - killed) * 1000:.1f} ms); next call failed in {fail_fast * 1000:.2f} ms"
        )
        assert info.value.__cause__ is None  # failed fast, without touching the network
        assert noticed < _KILL_DETECTED_WITHIN
        assert fail_fast < 0.05
