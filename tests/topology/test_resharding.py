"""Resharding a live Redis Cluster under traffic: MOVED, ASK and TRYAGAIN never reach callers.

A hash slot holding cache keys and a session (its hash and its user's index, put in that
slot by the test: session IDs carry random tags) moves from one primary to another while
workers run a steady stream of cache get/set and session get/update/list through
:class:`RedisClient`. Two ways:

* by hand (CLUSTER SETSLOT IMPORTING/MIGRATING, MIGRATE in batches with pauses, SETSLOT
  NODE), so the ASK window is long enough for every kind of operation to hit it, and a
  session's two keys are split across the nodes for a moment (TRYAGAIN for any command
  that used both: on Cluster the session store sends none);
* with ``redis-cli --cluster reshard``, as an operator would.

Three more tests pin single operations against a slot in migration: a read of a key that
already moved (one ASK), a login (a new session hash plus the user's index), and every
session operation while a user's keys sit on both nodes.

Each traffic test asserts zero errors, counts operations, reads the servers' own error
counters (``INFO errorstats``: the MOVED/ASK/TRYAGAIN replies they sent) to prove the
redirections really happened, checks that no write was lost and no connection was left
open, and prints the figures.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import secrets
import subprocess
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis
from redis.asyncio.connection import AbstractConnection
from redis.crc import key_slot

from gateway_redis import RedisClient, RedisConfig, SessionNotFound
from gateway_redis.embedded import find_server_binary
from gateway_redis.sessions import id_digest
from gateway_redis.sessions import slot_tag as session_tag
from gateway_redis.sessions.codec import encode_metadata, index_member
from gateway_redis.sessions.scripts import Scripts
from tests.topologies import (
    ClusterTopology,
    begin_migration,
    command_calls,
    error_stats,
    finish_migration,
    move_keys,
    node_id,
    primaries,
    tag_for_slot,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

WORKERS = 6
FILLER = 1500  # extra keys in the slot, so that moving it takes a while


def _session_key(c: RedisClient, session_id: str) -> str:
    """Where the session store keeps ``session_id`` (the layout in gateway_redis.sessions)."""
    digest = hashlib.sha256(session_id.encode()).hexdigest()
    return c.key(f"session:{{{session_id[:12]}}}:{digest}")


async def _session_in_slot(c: RedisClient, user: str, slot: int, metadata: dict[str, Any]) -> str:
    """A session of ``user`` whose key is in ``slot``.

    Session IDs carry a random tag, so the store cannot be asked for one in a given slot:
    this writes it as the store's Cluster create does (the public scripts), with a tag
    chosen for the slot.
    """
    i = 0
    while key_slot(f"{i:012x}".encode()) != slot:
        i += 1
    session_id = f"{i:012x}.{secrets.token_urlsafe(32)}"
    pairs, _ = encode_metadata(metadata)
    index = c.key(f"user-sessions:{{{session_tag(user)}}}:{id_digest(user)}")
    scripts = Scripts()

    async def create(r: Any) -> None:
        args: list[str | int] = [user, 86_400_000, 0, *pairs]
        expires = await scripts.call("create_hash", [_session_key(c, session_id)], args)(r)
        index_args: list[str | int] = [index_member(session_id), int(expires), 100]
        await scripts.call("index_add", [index], index_args)(r)

    await c.execute("test.session_in_slot", create)
    return session_id


def _user_in_slot(slot: int) -> str:
    """A user ID whose sessions (and session index) live in ``slot``."""
    i = 0
    while key_slot(session_tag(f"u{i}").encode()) != slot:
        i += 1
    return f"u{i}"


@dataclass
class Traffic:
    """Workers running cache and session operations on one slot until stopped."""

    client: RedisClient
    tag: str
    session_id: str
    user: str
    ops: Counter[str] = field(default_factory=Counter)
    errors: list[tuple[str, str]] = field(default_factory=list)
    slowest: float = 0.0
    last_cache: dict[int, int] = field(default_factory=dict)
    last_session: dict[int, int] = field(default_factory=dict)
    stop: bool = False

    async def _op(self, name: str, call: Awaitable[Any]) -> tuple[bool, Any]:
        started = time.perf_counter()
        try:
            result = await call
        except Exception as exc:  # anything reaching the caller is a failure here
            self.errors.append((name, f"{type(exc).__name__}: {exc}"))
            return False, None
        finally:
            self.slowest = max(self.slowest, time.perf_counter() - started)
        self.ops[name] += 1
        return True, result

    async def worker(self, i: int) -> None:
        c, key, sid = self.client, f"{{{self.tag}}}:w{i}", self.session_id
        n = 0
        while not self.stop:
            n += 1
            if (await self._op("cache.set", c.set(key, str(n), ttl=300)))[0]:
                self.last_cache[i] = n
            ok, value = await self._op("cache.get", c.get(key))
            if ok and value != str(self.last_cache.get(i)).encode():
                self.errors.append(("cache.get", f"read {value!r} after writing {n}"))
            await self._op("session.get", c.get_session(sid))
            if (await self._op("session.update", c.update_session(sid, {f"w{i}": n})))[0]:
                self.last_session[i] = n
            if i == 0:  # a multi-key script: the index and every session hash
                ok, sessions = await self._op("session.list", c.get_user_sessions(self.user))
                if ok and id_digest(sid) not in {s.digest for s in sessions}:
                    self.errors.append(("session.list", "the session is missing"))
            await asyncio.sleep(0.002)


def digests(*session_ids: str) -> set[str]:
    return {id_digest(i) for i in session_ids}


async def _close_leaked_connections() -> int:
    """Close (and count) redis-py connections still open although their client was closed.

    Counted here rather than left to surface as unraisable ResourceWarnings when the
    test's event loop closes.
    """
    gc.collect()
    loop = asyncio.get_running_loop()
    leaked = [
        o
        for o in gc.get_objects()
        if isinstance(o, AbstractConnection)
        and o.is_connected
        and getattr(getattr(o._writer, "transport", None), "_loop", None) is loop
    ]
    for conn in leaked:
        await conn.disconnect()
    return len(leaked)


async def _under_traffic(
    cluster: ClusterTopology,
    label: str,
    slot: int,
    move: Callable[[int, int], None],
) -> None:
    """Fill ``slot``, start the workers, ``move(slot, target_port)`` in a thread, check;
    then no socket may have been left unclosed."""
    try:
        await _move_under_traffic(cluster, label, slot, move)
    finally:
        leaked = await _close_leaked_connections()
        print(f"{label}: {leaked} connections left open after the client was closed")
    assert leaked == 0


async def _move_under_traffic(
    cluster: ClusterTopology,
    label: str,
    slot: int,
    move: Callable[[int, int], None],
) -> None:
    tag = tag_for_slot(slot, stem="rs")
    user = _user_in_slot(slot)
    config = RedisConfig(cluster_nodes=cluster.addresses[:3], key_prefix=f"{label}:")
    async with RedisClient(config) as c:
        assert key_slot(c.key(f"{{{tag}}}:x").encode()) == slot
        for start in range(0, FILLER, 100):
            await asyncio.gather(
                *(
                    c.set(f"{{{tag}}}:fill{j}", "x" * 100, ttl=300)
                    for j in range(start, min(start + 100, FILLER))
                )
            )
        session_id = await _session_in_slot(c, user, slot, {"role": "viewer"})
        assert key_slot(session_id[:12].encode()) == slot  # the session shares the slot

        source = cluster.primary_for_slot(slot)
        target = next(p for p in primaries(cluster) if p.port != source.port)
        watched = (source.port, target.port)
        errors_before = {p: error_stats(p) for p in watched}
        asking_before = command_calls(target.port, "asking")

        traffic = Traffic(c, tag, session_id, user)
        workers = [asyncio.create_task(traffic.worker(i)) for i in range(WORKERS)]
        try:
            await asyncio.sleep(0.5)
            ops_before = sum(traffic.ops.values())
            started = time.perf_counter()
            await asyncio.to_thread(move, slot, target.port)
            took = time.perf_counter() - started
            ops_during = sum(traffic.ops.values()) - ops_before
            await asyncio.sleep(1.0)  # MOVED for every client connection's stale slot map
        finally:
            traffic.stop = True
            await asyncio.gather(*workers)

        assert cluster.primary_for_slot(slot).port == target.port
        redirects: Counter[str] = Counter()
        for port in watched:
            after = error_stats(port)
            for kind in ("MOVED", "ASK", "TRYAGAIN"):
                redirects[kind] += after.get(kind, 0) - errors_before[port].get(kind, 0)
        asking = command_calls(target.port, "asking") - asking_before
        print(
            f"\n{label}: slot {slot} ({FILLER + WORKERS + 2} keys) moved from node "
            f"{source.port} to {target.port} in {took:.2f}s; {sum(traffic.ops.values())} "
            f"operations ({ops_during} during the move), {len(traffic.errors)} errors, "
            f"slowest {traffic.slowest * 1000:.0f} ms; servers replied MOVED "
            f"{redirects['MOVED']}, ASK {redirects['ASK']}, TRYAGAIN {redirects['TRYAGAIN']}; "
            f"ASKING {asking}; by operation {dict(sorted(traffic.ops.items()))}"
        )
        if traffic.errors:
            kinds = Counter(f"{op}: {text[:90]}" for op, text in traffic.errors)
            lines = [f"  {n} x {kind}" for kind, n in kinds.most_common(8)]
            print("errors by kind:", *lines, sep="\n")
        assert traffic.errors == [], traffic.errors[:10]
        # The move was really seen by the clients.
        assert redirects["MOVED"] > 0
        assert redirects["ASK"] > 0
        assert ops_during > 0
        names = ("cache.set", "cache.get", "session.get", "session.update", "session.list")
        assert all(traffic.ops[name] > 0 for name in names)

        # Nothing acknowledged was lost, and the data now lives on the target.
        for i, n in traffic.last_cache.items():
            assert await c.get(f"{{{tag}}}:w{i}") == str(n).encode()
        session = await c.get_session(session_id)
        assert session.metadata["role"] == "viewer"
        for i, n in traffic.last_session.items():
            assert session.metadata[f"w{i}"] == n
        assert [s.digest for s in await c.get_user_sessions(user)] == [id_digest(session_id)]
        assert await c.get(f"{{{tag}}}:fill{FILLER - 1}") == b"x" * 100
        with redis.Redis(port=target.port) as r:
            assert r.execute_command("CLUSTER COUNTKEYSINSLOT", slot) >= FILLER + 2
        await c.delete_session(session_id)
        with pytest.raises(SessionNotFound):
            await c.get_session(session_id)


async def test_ask_redirect_when_the_importing_node_has_idle_connections(
    cluster: ClusterTopology,
) -> None:
    """One caller, one key already migrated: a single ASK must be followed, nothing else.

    redis-py 8.1's async cluster client sends ASKING and the redirected command through two
    separately pooled connections; with idle connections to the importing node the command
    went out without ASKING and bounced MOVED/ASK until ClusterError('TTL exhausted.').
    ``_driver.ClusterNodeConnection`` sends them as one pipeline on one connection.
    """
    slot = 7_000
    tag = tag_for_slot(slot, stem="ask")
    config = RedisConfig(cluster_nodes=cluster.addresses[:3], key_prefix="ask:")
    try:
        async with RedisClient(config) as c:
            await c.set(f"{{{tag}}}:moved", "here", ttl=300)
            source = cluster.primary_for_slot(slot)
            target = next(p for p in primaries(cluster) if p.port != source.port)
            # Give the client a few idle connections to the importing node, as any busy
            # gateway has: concurrent calls on a slot that node owns.
            with redis.Redis(port=target.port) as r:
                owned = r.execute_command("CLUSTER SLOTS")
            theirs = next(
                int(start) for start, _, primary, *_ in owned if int(primary[1]) == target.port
            )
            other = tag_for_slot(theirs, stem="idle")
            await asyncio.gather(*(c.set(f"{{{other}}}:{i}", "x", ttl=60) for i in range(8)))
            await asyncio.to_thread(begin_migration, cluster, slot, target.port)
            try:
                await asyncio.to_thread(
                    move_keys, source.port, target.port, [c.key(f"{{{tag}}}:moved")]
                )
                asks = error_stats(source.port).get("ASK", 0)
                assert await c.get(f"{{{tag}}}:moved") == b"here"  # source: ASK; target: value
                assert error_stats(source.port).get("ASK", 0) - asks == 1
            finally:
                await asyncio.to_thread(finish_migration, cluster, slot, source.port, target.port)
    finally:
        leaked = await _close_leaked_connections()
        print(f"\nask: {leaked} connections left open after the client was closed")
    assert leaked == 0


async def test_login_while_the_users_slot_migrates(cluster: ClusterTopology) -> None:
    """A login (new session hash + the user's index) and a listing while the slot migrates.

    A script over both keys gets TRYAGAIN for the whole migration (a key being created is
    on neither node; then the new hash is on the importing node, the index on the other):
    on Cluster the session store runs single-key steps (see ``gateway_redis.sessions``).
    """
    slot = 9_000
    user = _user_in_slot(slot)
    config = RedisConfig(cluster_nodes=cluster.addresses[:3], key_prefix="login:")
    try:
        async with RedisClient(config) as c:
            first = await c.create_session(user, {"n": 1})  # the index exists
            source = cluster.primary_for_slot(slot)
            target = next(p for p in primaries(cluster) if p.port != source.port)
            await asyncio.to_thread(begin_migration, cluster, slot, target.port)
            try:
                ports = (source.port, target.port)
                tries = sum(error_stats(p).get("TRYAGAIN", 0) for p in ports)
                try:
                    second = await c.create_session(user, {"n": 2})
                finally:
                    tryagain = sum(error_stats(p).get("TRYAGAIN", 0) for p in ports) - tries
                    print(f"\nlogin during migration: TRYAGAIN replied {tryagain} times")
                assert {s.digest for s in await c.get_user_sessions(user)} == digests(first, second)
            finally:
                await asyncio.to_thread(finish_migration, cluster, slot, source.port, target.port)
            assert {s.digest for s in await c.get_user_sessions(user)} == digests(first, second)
    finally:
        leaked = await _close_leaked_connections()
    assert leaked == 0


async def test_every_session_operation_while_the_users_keys_are_split(
    cluster: ClusterTopology,
) -> None:
    """Mid-migration, one session already on the importing node, the index and another
    session still on the migrating one: every session operation works, keeps the index
    right and leaves nothing behind, without a single TRYAGAIN."""
    slot = 10_000
    user = _user_in_slot(slot)
    config = RedisConfig(cluster_nodes=cluster.addresses[:3], key_prefix="split:")
    try:
        async with RedisClient(config) as c:
            a = await _session_in_slot(c, user, slot, {"n": "a"})
            b = await _session_in_slot(c, user, slot, {"n": "b"})
            source = cluster.primary_for_slot(slot)
            target = next(p for p in primaries(cluster) if p.port != source.port)
            await asyncio.to_thread(begin_migration, cluster, slot, target.port)
            try:
                await asyncio.to_thread(move_keys, source.port, target.port, [_session_key(c, a)])
                ports = (source.port, target.port)
                tries = sum(error_stats(p).get("TRYAGAIN", 0) for p in ports)
                new = await c.create_session(user, {"n": "new"})  # in a random slot
                assert {s.digest for s in await c.get_user_sessions(user)} == digests(a, b, new)
                assert dict((await c.update_session(a, {"x": 1})).metadata) == {"n": "a", "x": 1}
                b2 = await c.sessions.regenerate(b)
                with pytest.raises(SessionNotFound):
                    await c.get_session(b)
                assert (await c.get_session(b2)).metadata["n"] == "b"
                await c.delete_session(a)
                assert {s.digest for s in await c.get_user_sessions(user)} == digests(b2, new)
                assert await c.delete_user_sessions(user) == 2
                assert await c.get_user_sessions(user) == []
                tryagain = sum(error_stats(p).get("TRYAGAIN", 0) for p in ports) - tries
            finally:
                await asyncio.to_thread(finish_migration, cluster, slot, source.port, target.port)
            assert tryagain == 0
            with redis.Redis(port=target.port) as r:  # no hash, no index entry left over
                assert r.execute_command("CLUSTER COUNTKEYSINSLOT", slot) == 0
    finally:
        leaked = await _close_leaked_connections()
    assert leaked == 0


async def test_slot_moved_by_hand_under_traffic(cluster: ClusterTopology) -> None:
    """Besides ASK and TRYAGAIN, this once showed one failed call marking the whole cluster
    down (every caller failing fast): in cluster mode the health probe decides that now."""
    slot = 12_000

    def move(slot: int, target: int) -> None:
        source, _ = begin_migration(cluster, slot, target)
        with redis.Redis(port=source, decode_responses=True) as r:
            keys = r.execute_command("CLUSTER GETKEYSINSLOT", slot, FILLER + 100)
        # A session hash alone first, its user's index 50 ms later: scripts that use both
        # get TRYAGAIN meanwhile. Then the rest, slowly: every kind of operation meets ASK
        # for keys already moved.
        move_keys(source, target, [k for k in keys if k.startswith("rs-hand:session:")])
        time.sleep(0.05)
        move_keys(source, target, [k for k in keys if k.startswith("rs-hand:user-sessions:")])
        finish_migration(cluster, slot, source, target, batch=20, pause=0.01)

    await _under_traffic(cluster, "rs-hand", slot, move)


async def test_slot_moved_by_redis_cli_reshard_under_traffic(cluster: ClusterTopology) -> None:
    # redis-cli moves the lowest-numbered slots of the source: slot 0 is always its own.
    slot = 0

    def move(slot: int, target: int) -> None:
        source = cluster.primary_for_slot(slot)
        source_id, target_id = node_id(source.port), node_id(target)
        command = f"--cluster reshard 127.0.0.1:{source.port} --cluster-from {source_id} "
        command += f"--cluster-to {target_id} --cluster-slots 1 --cluster-yes --cluster-pipeline 10"
        cli = find_server_binary("cli")
        subprocess.run([cli, *command.split()], check=True, capture_output=True, timeout=60)

    await _under_traffic(cluster, "rs-cli", slot, move)
