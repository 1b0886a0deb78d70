"""Unit tests of the pieces that decide "outage or broken connection" and "may Redis evict":
error classification, the probe's patience, the health monitor's urgent probes and the
eviction policy watch. The end-to-end behaviour against real servers is in
test_connection_resets.py and test_eviction_policy.py.
"""

from __future__ import annotations

import asyncio
import copy
import errno
import logging
import time

import pytest
from redis import exceptions as rexc
from redis.backoff import NoBackoff

from gateway_redis import RedisUnavailable
from gateway_redis._driver import GatewayRetry, no_retry, probe_until_conclusive
from gateway_redis._eviction import EvictionWatch, policy_of, unsafe_policy
from gateway_redis._translate import Outage, is_connection_lost, translate
from gateway_redis.health import HealthMonitor, HealthState

# -- classification --------------------------------------------------------------------


def _chained(outer: BaseException, inner: BaseException) -> BaseException:
    try:
        try:
            raise inner
        except BaseException:
            raise outer  # noqa: B904 - as redis-py does: the OSError is the context
    except BaseException as exc:
        return exc


@pytest.mark.parametrize(
    "error",
    [
        rexc.ConnectionError("Connection closed by server."),
        _chained(rexc.ConnectionError("Error while reading"), ConnectionResetError(104, "reset")),
        _chained(rexc.ConnectionError("Error while writing"), BrokenPipeError(32, "pipe")),
        ConnectionResetError(errno.ECONNRESET, "reset"),
        EOFError(),
    ],
)
def test_broken_connections_are_a_question_for_the_probe(error: BaseException) -> None:
    assert is_connection_lost(error)
    verdict = translate(error, "get", miss=False, deadline=1.0)  # type: ignore[arg-type]
    assert verdict is not None
    assert verdict.outage is Outage.LOST
    assert isinstance(verdict.error, RedisUnavailable)
    assert verdict.error.reason == "down"


@pytest.mark.parametrize(
    "error",
    [
        _chained(rexc.ConnectionError("Error 111 connecting"), ConnectionRefusedError(111, "no")),
        _chained(rexc.ConnectionError("Error 113 connecting"), OSError(errno.EHOSTUNREACH, "x")),
        rexc.TimeoutError("Timeout reading from socket"),
        asyncio.TimeoutError(),
        rexc.AuthenticationError("invalid password"),
        rexc.BusyLoadingError("LOADING"),
        rexc.ResponseError("ERR"),
        ValueError("a bug"),
    ],
)
def test_evidence_of_an_outage_is_not_a_broken_connection(error: BaseException) -> None:
    assert not is_connection_lost(error)


def test_refused_is_an_outage_at_once() -> None:
    error = _chained(rexc.ConnectionError("Error 111"), ConnectionRefusedError(111, "refused"))
    verdict = translate(error, "get", miss=False, deadline=1.0)  # type: ignore[arg-type]
    assert verdict is not None
    assert verdict.outage is Outage.UNREACHABLE


# -- the probe's patience --------------------------------------------------------------


async def test_probe_tries_broken_connections_again_until_one_answers() -> None:
    calls = 0

    async def attempt() -> str:
        nonlocal calls
        calls += 1
        if calls < 5:
            raise rexc.ConnectionError("Connection closed by server.")
        return "ok"

    assert await probe_until_conclusive(attempt) == "ok"
    assert calls == 5


async def test_probe_stops_at_a_conclusive_failure() -> None:
    calls = 0

    async def attempt() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise rexc.ConnectionError("Connection closed by server.")
        raise _chained(rexc.ConnectionError("Error 111"), ConnectionRefusedError(111, "no"))

    with pytest.raises(rexc.ConnectionError, match="111"):
        await probe_until_conclusive(attempt)
    assert calls == 2


async def test_probe_gives_up_on_broken_connections_after_its_patience() -> None:
    calls = 0

    async def attempt() -> None:
        nonlocal calls
        calls += 1
        raise rexc.ConnectionError("Connection closed by server.")

    started = time.monotonic()
    with pytest.raises(rexc.ConnectionError):
        await probe_until_conclusive(attempt, patience=0.05)
    took = time.monotonic() - started
    assert calls >= 3
    assert 0.05 <= took < 1.0


# -- retries of a call whose connection broke -------------------------------------------


class _Flaky:
    """Fails with a broken connection ``breaks`` times, then answers."""

    def __init__(self, breaks: int) -> None:
        self.breaks = breaks
        self.attempts = 0

    async def __call__(self) -> str:
        self.attempts += 1
        if self.attempts <= self.breaks:
            raise rexc.ConnectionError("Connection closed by server.")
        return "ok"


async def _noop(_error: BaseException) -> None:
    return None


async def test_broken_connections_are_retried_past_the_budget_within_patience() -> None:
    do = _Flaky(breaks=6)
    retry = GatewayRetry(NoBackoff(), 2, lost_patience=1.0)
    assert await retry.call_with_retry(do, _noop) == "ok"
    assert do.attempts == 7
    # Without patience: the budget (1 + 2 attempts) only.
    do = _Flaky(breaks=6)
    with pytest.raises(rexc.ConnectionError):
        await GatewayRetry(NoBackoff(), 2).call_with_retry(do, _noop)
    assert do.attempts == 3


async def test_patience_ends() -> None:
    do = _Flaky(breaks=10**6)
    started = time.monotonic()
    with pytest.raises(rexc.ConnectionError):
        await GatewayRetry(NoBackoff(), 2, lost_patience=0.05).call_with_retry(do, _noop)
    assert 0.05 <= time.monotonic() - started < 1.0


async def test_at_most_once_calls_are_never_retried_whatever_the_patience() -> None:
    do = _Flaky(breaks=1)
    retry = GatewayRetry(NoBackoff(), 2, lost_patience=1.0)
    with no_retry(), pytest.raises(rexc.ConnectionError):
        await retry.call_with_retry(do, _noop)
    assert do.attempts == 1


async def test_a_broken_connection_is_reported_and_retries_stop_once_redis_is_down() -> None:
    retry = GatewayRetry(NoBackoff(), 2, lost_patience=1.0)
    copied = copy.deepcopy(retry)  # what redis-py does for every connection
    assert copied.on_lost is retry.on_lost  # one hook for every copy
    reports: list[int] = []

    def report() -> bool:
        reports.append(1)
        return len(reports) < 2

    retry.on_lost.callback = report
    do = _Flaky(breaks=5)
    with pytest.raises(rexc.ConnectionError):
        await copied.call_with_retry(do, _noop)
    assert do.attempts == 2  # the second report answered "down": no third attempt
    assert len(reports) == 2


# -- the monitor -----------------------------------------------------------------------


class _Probe:
    def __init__(self) -> None:
        self.error: BaseException | None = None
        self.started: list[float] = []
        self.gate = asyncio.Event()
        self.gate.set()

    async def __call__(self) -> None:
        self.started.append(time.monotonic())
        await self.gate.wait()
        if self.error is not None:
            raise self.error


def _monitor(probe: _Probe) -> HealthMonitor:
    return HealthMonitor(
        probe,
        interval=30.0,
        probe_interval=1.0,
        is_misconfigured=lambda _e: False,
        is_inconclusive=is_connection_lost,
        logger=logging.getLogger("tests.health_evidence"),
    )


async def _settle() -> None:
    for _ in range(50):
        await asyncio.sleep(0.005)


async def test_urgent_probe_runs_at_once_and_decides() -> None:
    probe = _Probe()
    monitor = _monitor(probe)
    monitor.start()
    try:
        await _settle()
        probe.started.clear()
        asked = time.monotonic()
        monitor.check_now(urgent=True)
        assert monitor.judging
        await _settle()
        assert probe.started
        assert probe.started[0] - asked < 0.05
        assert monitor.state is HealthState.UP
        assert not monitor.judging
        # A second one right after: not held back by the 0.1 s gap of ordinary requests.
        probe.started.clear()
        probe.error = rexc.ConnectionError("Connection closed by server.")
        asked = time.monotonic()
        monitor.check_now(urgent=True)
        await _settle()
        assert probe.started[0] - asked < 0.05
        assert monitor.state is HealthState.DOWN
    finally:
        await monitor.aclose()


async def test_a_broken_probe_is_not_believed_while_calls_get_replies() -> None:
    probe = _Probe()
    monitor = _monitor(probe)
    monitor.start()
    try:
        await _settle()
        probe.error = rexc.ConnectionError("Connection closed by server.")
        probe.gate.clear()
        monitor.check_now(urgent=True)
        await _settle()  # the probe runs, held at the gate
        monitor.answered()  # meanwhile, a call got its reply
        probe.gate.set()
        await _settle()
        assert monitor.state is HealthState.UP
        # A conclusive failure is believed whatever the calls did.
        probe.error = _chained(rexc.ConnectionError("Error 111"), ConnectionRefusedError(111, "x"))
        probe.gate.clear()
        monitor.check_now(urgent=True)
        await _settle()
        monitor.answered()
        probe.gate.set()
        await _settle()
        assert monitor.state is HealthState.DOWN  # type: ignore[comparison-overlap]
    finally:
        await monitor.aclose()


async def test_answers_from_an_earlier_episode_do_not_count() -> None:
    probe = _Probe()
    monitor = _monitor(probe)
    monitor.start()
    try:
        await _settle()
        monitor.check_now(urgent=True)
        monitor.answered()
        await _settle()  # that episode ends: the probe succeeded
        probe.error = rexc.ConnectionError("Connection closed by server.")
        monitor.check_now(urgent=True)  # a new episode, no answer in it
        await _settle()
        assert monitor.state is HealthState.DOWN
    finally:
        await monitor.aclose()


# -- eviction policy -------------------------------------------------------------------


def test_policy_is_read_from_raw_and_parsed_info() -> None:
    raw = b"# Memory\r\nused_memory:1\r\nmaxmemory_policy:allkeys-lru\r\n"
    assert policy_of(raw) == "allkeys-lru"
    assert policy_of(raw.decode()) == "allkeys-lru"
    assert policy_of({"maxmemory_policy": "noeviction"}) == "noeviction"
    assert policy_of(b"# Memory\r\nused_memory:1\r\n") is None
    assert policy_of(None) is None
    assert unsafe_policy("volatile-ttl")
    assert unsafe_policy("allkeys-lfu")
    assert not unsafe_policy("noeviction")


def test_watch_logs_once_per_change(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("tests.health_evidence.watch")
    caplog.set_level(logging.DEBUG, logger=logger.name)
    watch = EvictionWatch(logger)
    assert watch.unsafe is None
    assert watch.gauge() is None
    a, b = "10.0.0.1:6379", "10.0.0.2:6379"
    for _ in range(3):
        watch.update({a: b"maxmemory_policy:noeviction", b: {"maxmemory_policy": "noeviction"}})
    assert watch.unsafe is False
    assert watch.gauge() == 0.0
    for _ in range(3):
        watch.update({a: b"maxmemory_policy:noeviction", b: {"maxmemory_policy": "allkeys-lru"}})
    assert watch.unsafe is True
    assert watch.gauge() == 1.0
    assert watch.policies == {a: "noeviction", b: "allkeys-lru"}
    watch.update({a: b"maxmemory_policy:volatile-lru", b: {"maxmemory_policy": "allkeys-lru"}})
    for _ in range(3):
        watch.update({a: b"maxmemory_policy:noeviction", b: {"maxmemory_policy": "noeviction"}})
    # Unreadable: said once, and what was known stays.
    for _ in range(3):
        watch.update({a: rexc.NoPermissionError("NOPERM"), b: b"nothing"})
    assert watch.unsafe is False
    events = [(r.levelname, getattr(r, "event", None)) for r in caplog.records]
    assert events == [
        ("WARNING", "eviction_unsafe"),
        ("WARNING", "eviction_unsafe"),
        ("INFO", "eviction_safe"),
        ("INFO", "eviction_policy_unreadable"),
    ]
    assert "allkeys-lru on 10.0.0.2:6379" in caplog.records[0].getMessage()
    assert "volatile-lru on 10.0.0.1:6379" in caplog.records[1].getMessage()
