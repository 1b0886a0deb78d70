"""``GATEWAY_GC_THRESHOLDS``: the example gateway sets the garbage collector's thresholds
while it runs (fewer full collections, which stop the loop for a second at 20,000 sockets)
and puts the previous ones back when its lifespan ends; bad values fail at startup."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from examples.collector import DEFAULT_THRESHOLDS, collector_thresholds, tuned_collector
from examples.gateway import create_app
from gateway_redis.embedded import EmbeddedRedis
from tests.examples.conftest import gateway_env


@pytest.fixture
def thresholds_kept() -> Iterator[tuple[int, int, int]]:
    before = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    yield gc.get_threshold()
    gc.set_threshold(*before)


def test_the_setting_is_read_and_checked() -> None:
    assert collector_thresholds({}) == DEFAULT_THRESHOLDS
    assert collector_thresholds({"GATEWAY_GC_THRESHOLDS": " 5000, 20,50 "}) == (5000, 20, 50)
    assert collector_thresholds({"GATEWAY_GC_THRESHOLDS": "OFF"}) is None
    for bad in ("1,2", "1,2,3,4", "a,b,c", "0,10,10", "-1,10,10", "10000;10;100"):
        with pytest.raises(ValueError, match="GATEWAY_GC_THRESHOLDS must be three positive"):
            collector_thresholds({"GATEWAY_GC_THRESHOLDS": bad})


def test_thresholds_hold_while_the_block_runs(thresholds_kept: tuple[int, int, int]) -> None:
    with tuned_collector((5000, 20, 50)):
        assert gc.get_threshold() == (5000, 20, 50)
    assert gc.get_threshold() == thresholds_kept
    with tuned_collector(None):
        assert gc.get_threshold() == thresholds_kept
    with pytest.raises(RuntimeError), tuned_collector((5000, 20, 50)):
        raise RuntimeError("the app failed")
    assert gc.get_threshold() == thresholds_kept


def test_two_apps_ending_in_either_order_leave_the_thresholds_as_found(
    thresholds_kept: tuple[int, int, int],
) -> None:
    first, second = tuned_collector((5000, 20, 50)), tuned_collector((5000, 20, 50))
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)  # the first app ends first
    second.__exit__(None, None, None)
    assert gc.get_threshold() == thresholds_kept
    with tuned_collector((5000, 20, 50)), tuned_collector((6000, 20, 50)):
        assert gc.get_threshold() == (6000, 20, 50)
    assert gc.get_threshold() == thresholds_kept


async def test_the_gateway_tunes_the_collector_during_its_lifespan(
    redis_server: EmbeddedRedis, thresholds_kept: tuple[int, int, int]
) -> None:
    env = gateway_env(redis_server.url)
    app = create_app(env)
    async with app.router.lifespan_context(app):
        assert gc.get_threshold() == DEFAULT_THRESHOLDS
    assert gc.get_threshold() == thresholds_kept
    off = create_app({**env, "GATEWAY_GC_THRESHOLDS": "off"})
    async with off.router.lifespan_context(off):
        assert gc.get_threshold() == thresholds_kept
    with pytest.raises(ValueError, match="GATEWAY_GC_THRESHOLDS"):
        create_app({**env, "GATEWAY_GC_THRESHOLDS": "fast"})
