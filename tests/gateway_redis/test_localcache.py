"""The L1 cache: bounds, per-entry TTL, LRU order, generations, bypass."""

from __future__ import annotations

import pytest

from gateway_redis.localcache import LocalCache


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_entries_expire_after_their_own_ttl_capped_by_the_cache_ttl() -> None:
    clock = Clock()
    cache: LocalCache[str, int] = LocalCache(maxsize=10, ttl=10, timer=clock)
    cache.set("short", 1, ttl=2)
    cache.set("long", 2, ttl=100)  # capped at 10
    clock.now += 2
    assert cache.get("short") is None
    assert cache.get("long") == 2
    clock.now += 8
    assert cache.get("long") is None
    assert len(cache) == 0


def test_least_recently_used_entry_is_evicted_first() -> None:
    cache: LocalCache[str, int] = LocalCache(maxsize=2, ttl=10)
    cache.set("a", 1)
    cache.set("b", 2)
    assert cache.get("a") == 1  # "b" is now the least recently used
    cache.set("c", 3)
    assert cache.get("b") is None
    assert (cache.get("a"), cache.get("c")) == (1, 3)


def test_store_with_stale_generation_is_dropped() -> None:
    cache: LocalCache[str, int] = LocalCache(maxsize=10, ttl=10)
    generation = cache.generation
    cache.delete("unrelated")  # an invalidation arrives while the value was being read
    assert cache.set("k", 1, generation=generation) is False
    assert cache.get("k") is None
    assert cache.set("k", 1, generation=cache.generation) is True


def test_non_positive_ttl_stores_nothing() -> None:
    cache: LocalCache[str, int] = LocalCache(maxsize=10, ttl=10)
    assert cache.set("k", 1, ttl=0) is False
    assert cache.set("k", 1, ttl=-5) is False
    assert cache.set("k", 1, ttl=float("nan")) is False
    assert "k" not in cache


def test_disabled_cache_is_flushed_and_bypassed_until_enabled() -> None:
    cache: LocalCache[str, int] = LocalCache(maxsize=10, ttl=10)
    cache.set("k", 1)
    cache.disable()
    assert cache.get("k") is None
    assert cache.set("k", 2) is False
    assert len(cache) == 0
    cache.enable()
    assert cache.set("k", 3) is True
    assert cache.get("k") == 3


def test_discard_where_drops_matching_entries() -> None:
    cache: LocalCache[str, int] = LocalCache(maxsize=10, ttl=10)
    for i in range(6):
        cache.set(f"k{i}", i)
    assert cache.discard_where(lambda _k, v: v % 2 == 0) == 3
    assert sorted(k for k in ("k0", "k1", "k2", "k3", "k4", "k5") if k in cache) == [
        "k1",
        "k3",
        "k5",
    ]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"maxsize": 0}, "maxsize"),
        ({"maxsize": True}, "maxsize"),
        ({"ttl": 0}, "ttl"),
        ({"ttl": float("inf")}, "ttl"),
        ({"ttl": "5"}, "ttl"),
    ],
)
def test_invalid_settings_raise_value_error(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LocalCache(**kwargs)  # type: ignore[arg-type]


def test_a_stamp_is_current_only_while_its_entry_is_stored_and_in_date() -> None:
    clock = Clock()
    cache: LocalCache[str, int] = LocalCache(maxsize=2, ttl=10, timer=clock)
    assert cache.stamp("missing") is None
    cache.set("a", 1)
    stamp = cache.stamp("a")
    assert stamp is not None
    assert cache.is_current(stamp)
    assert cache.get("a") == 1  # reads and LRU moves leave it current
    assert cache.is_current(stamp)
    cache.set("a", 1)  # replaced, even by an equal value
    assert not cache.is_current(stamp)

    for end in (
        lambda: cache.delete("a"),
        lambda: cache.discard_where(lambda key, _: key == "a"),
        cache.clear,
        cache.disable,
        lambda: (cache.set("b", 2), cache.set("c", 3)),  # evicted
    ):
        cache.enable()
        cache.set("a", 1)
        stamp = cache.stamp("a")
        assert stamp is not None
        end()
        assert not cache.is_current(stamp)

    cache.enable()
    cache.set("a", 1, ttl=2)
    stamp = cache.stamp("a")
    assert stamp is not None
    clock.now += 1.999
    assert cache.is_current(stamp)
    clock.now += 0.001
    assert not cache.is_current(stamp)
    assert cache.stamp("a") is None


def test_max_bytes_evicts_least_recently_used_entries_by_declared_size() -> None:
    cache: LocalCache[str, int] = LocalCache(maxsize=100, ttl=10, max_bytes=100)
    cache.set("a", 1, size=40)
    cache.set("b", 2, size=40)
    assert cache.get("a") == 1  # "b" is now the least recently used
    cache.set("c", 3, size=40)  # 120 > 100: "b" goes
    assert cache.get("b") is None
    assert cache.size_in_bytes == 80
    assert not cache.set("huge", 4, size=101)  # larger than the whole budget
    cache.set("a", 5, size=10)  # replacing an entry gives its bytes back
    assert cache.size_in_bytes == 50
    cache.delete("c")
    assert cache.size_in_bytes == 10
    cache.clear()
    assert cache.size_in_bytes == 0
    with pytest.raises(ValueError, match="max_bytes"):
        LocalCache(maxsize=1, ttl=1, max_bytes=0)
