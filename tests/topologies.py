"""Real Redis topologies on loopback ports, built from server binaries: Sentinel, Cluster."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import redis

from gateway_redis.embedded import EmbeddedRedis, EmbeddedSentinel

MASTER = "gwmaster"


class SentinelTopology:
    """One primary, one replica and three sentinels (quorum 2)."""

    def __init__(self) -> None:
        self.primary = EmbeddedRedis()
        self.primary.start()
        self.replica = EmbeddedRedis(args=["--replicaof", "127.0.0.1", str(self.primary.port)])
        self.replica.start()
        self.sentinels = [
            EmbeddedSentinel(
                master_name=MASTER,
                master_host="127.0.0.1",
                master_port=self.primary.port,
                down_after=1.0,
                failover_timeout=3.0,
            )
            for _ in range(3)
        ]
        for sentinel in self.sentinels:
            sentinel.start()
        self._wait_ready()

    @property
    def addresses(self) -> tuple[tuple[str, int], ...]:
        return tuple(("127.0.0.1", s.port) for s in self.sentinels)

    def master_address(self) -> tuple[str, int]:
        for sentinel in self.sentinels:
            if not sentinel.running:
                continue
            with redis.Redis(port=sentinel.port, socket_timeout=1) as r:
                host, port = r.sentinel_get_master_addr_by_name(MASTER)
                return (host.decode() if isinstance(host, bytes) else host, int(port))
        raise RuntimeError("no sentinel answers")

    def node(self, port: int) -> EmbeddedRedis:
        return self.primary if self.primary.port == port else self.replica

    def _wait_ready(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with redis.Redis(port=self.replica.port) as r:
                    link = r.info("replication").get("master_link_status")
                ready = link == "up"
                for sentinel in self.sentinels:
                    with redis.Redis(port=sentinel.port) as r:
                        state = r.sentinel_master(MASTER)
                        ready = ready and int(state.get("num-other-sentinels", 0)) >= 2
                        ready = ready and int(state.get("num-slaves", 0)) >= 1
                if ready:
                    return
            except redis.RedisError:
                pass
            time.sleep(0.1)
        raise RuntimeError("sentinel topology did not become ready")

    def wait_failover(self, old_port: int, timeout: float = 20.0) -> tuple[str, int]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                address = self.master_address()
                if address[1] != old_port:
                    return address
            except (redis.RedisError, RuntimeError):
                pass
            time.sleep(0.05)
        raise RuntimeError("no failover happened")

    def cleanup(self) -> None:
        for server in (*self.sentinels, self.replica, self.primary):
            server.cleanup()


@contextmanager
def sentinel_topology() -> Iterator[SentinelTopology]:
    topo = SentinelTopology()
    try:
        yield topo
    finally:
        topo.cleanup()
