"""Real Redis topologies on loopback ports, built from server binaries: Sentinel, Cluster."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from contextlib import contextmanager

import redis

from gateway_redis.embedded import EmbeddedRedis, EmbeddedSentinel, free_port

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
                # The replica's link is up before the primary puts it online (on its first
                # ACK); until then WAIT does not count it and confirmed writes do not wait.
                with redis.Redis(port=self.primary.port) as r:
                    info = r.info("replication")
                online = any(
                    isinstance(v, dict) and v.get("state") == "online"
                    for k, v in info.items()
                    if k.startswith("slave")
                )
                ready = link == "up" and online
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


class ClusterTopology:
    """A Redis Cluster of ``primaries`` primaries, each with ``replicas`` replicas."""

    def __init__(self, primaries: int = 3, replicas: int = 1, node_timeout_ms: int = 1000) -> None:
        from gateway_redis.embedded import find_server_binary

        self.nodes = [
            EmbeddedRedis(
                port=free_port(cluster=True),
                args=[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-node-timeout",
                    str(node_timeout_ms),
                    "--cluster-replica-validity-factor",
                    "0",
                ],
            )
            for _ in range(primaries * (1 + replicas))
        ]
        try:
            for node in self.nodes:
                _start_cluster_node(node)
        except BaseException:
            self.cleanup()
            raise
        cli = find_server_binary("cli")
        import subprocess

        addresses = [f"127.0.0.1:{n.port}" for n in self.nodes]
        subprocess.run(
            [
                cli,
                "--cluster",
                "create",
                *addresses,
                "--cluster-replicas",
                str(replicas),
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        self._wait_ok()

    @property
    def addresses(self) -> tuple[tuple[str, int], ...]:
        return tuple(("127.0.0.1", n.port) for n in self.nodes)

    def _wait_ok(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if all(self.state(n.port) == "ok" for n in self.nodes if n.running):
                    return
            except redis.RedisError:
                pass
            time.sleep(0.1)
        raise RuntimeError("cluster did not reach state ok")

    @staticmethod
    def state(port: int) -> str:
        with redis.Redis(port=port, socket_timeout=1) as r:
            info = r.execute_command("CLUSTER INFO")
        if isinstance(info, dict):
            return str(info.get("cluster_state", "unknown"))
        text = info.decode() if isinstance(info, bytes) else str(info)
        for line in text.splitlines():
            if line.startswith("cluster_state:"):
                return line.split(":", 1)[1].strip()
        return "unknown"

    def primary_for_slot(self, slot: int) -> EmbeddedRedis:
        live = next(n for n in self.nodes if n.running)
        with redis.Redis(port=live.port, socket_timeout=1) as r:
            for start, end, primary, *_ in r.execute_command("CLUSTER SLOTS"):
                if start <= slot <= end:
                    port = int(primary[1])
                    return next(n for n in self.nodes if n.port == port)
        raise RuntimeError(f"slot {slot} not covered")

    def cleanup(self) -> None:
        for node in self.nodes:
            node.cleanup()


def _start_cluster_node(node: EmbeddedRedis, attempts: int = 5) -> None:
    """Start a cluster node; a port pair taken meanwhile (by any process's outgoing
    connection: free_port only saw it free) is replaced by another, a few times."""
    base = node.args
    for attempt in range(attempts):
        node.args = (*base, "--cluster-config-file", f"nodes-{node.port}.conf")
        try:
            node.start()
            return
        except RuntimeError as exc:
            if "Address already in use" not in str(exc) or attempt == attempts - 1:
                raise
            node.port = free_port(cluster=True)


@contextmanager
def cluster_topology() -> Iterator[ClusterTopology]:
    topo = ClusterTopology()
    try:
        yield topo
    finally:
        topo.cleanup()


# -- helpers for tests that look inside a topology (added; nothing above depends on them) --


def replica_caught_up(primary_port: int, replica_port: int) -> bool:
    """True when the replica on ``replica_port`` has applied every write the primary has
    (replication offsets; ``WAIT`` from a connection that wrote nothing proves nothing)."""
    with (
        redis.Redis(port=primary_port, socket_timeout=1) as primary,
        redis.Redis(port=replica_port, socket_timeout=1) as replica,
    ):
        wanted = int(primary.info("replication")["master_repl_offset"])
        return int(replica.info("replication").get("slave_repl_offset", -1)) >= wanted


def client_list(port: int, kind: str | None = None) -> list[dict[str, str]]:
    """``CLIENT LIST`` (``TYPE kind`` when given) of the server on ``port``."""
    with redis.Redis(port=port, socket_timeout=1) as r:
        return r.client_list(_type=kind) if kind else r.client_list()  # type: ignore[no-any-return]


def ports_with_client(ports: list[int], name: str, kind: str | None = "pubsub") -> list[int]:
    """The ports (of those given, skipping servers that do not answer) holding a client
    connection named ``name``."""
    found = []
    for port in ports:
        try:
            clients = client_list(port, kind)
        except redis.RedisError:
            continue
        if any(c.get("name") == name for c in clients):
            found.append(port)
    return found


def node_id(port: int) -> str:
    """``CLUSTER MYID`` of the node on ``port``."""
    with redis.Redis(port=port, socket_timeout=1) as r:
        raw = r.execute_command("CLUSTER MYID")
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def error_stats(port: int) -> dict[str, int]:
    """Error replies the server has sent, by prefix (``INFO errorstats``): MOVED, ASK..."""
    with redis.Redis(port=port, socket_timeout=1) as r:
        info = r.info("errorstats")
    return {k.removeprefix("errorstat_"): int(v["count"]) for k, v in info.items()}


def command_calls(port: int, command: str) -> int:
    """How many times ``command`` ran on the server (``INFO commandstats``)."""
    with redis.Redis(port=port, socket_timeout=1) as r:
        info = r.info("commandstats")
    entry = info.get(f"cmdstat_{command.lower()}")
    return int(entry["calls"]) if entry else 0


def tag_for_slot(slot: int, stem: str = "t") -> str:
    """A hash tag (text between braces) whose keys all fall in ``slot``."""
    from redis.crc import key_slot

    i = 0
    while key_slot(f"{stem}{i}".encode()) != slot:
        i += 1
    return f"{stem}{i}"


def begin_migration(topo: ClusterTopology, slot: int, target_port: int) -> tuple[int, int]:
    """CLUSTER SETSLOT IMPORTING on the target, MIGRATING on the owner of ``slot``.

    From here on the owner answers ASK for keys it no longer has. Returns
    ``(source_port, target_port)``.
    """
    source = topo.primary_for_slot(slot)
    if source.port == target_port:
        raise ValueError("the slot is already on the target")
    with (
        redis.Redis(port=source.port, socket_timeout=5) as src,
        redis.Redis(port=target_port, socket_timeout=5) as dst,
    ):
        dst.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", node_id(source.port))
        src.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", node_id(target_port))
    return source.port, target_port


def move_keys(source_port: int, target_port: int, keys: list[str] | list[bytes]) -> None:
    """MIGRATE ``keys`` (all in one slot being migrated) from source to target."""
    if keys:
        with redis.Redis(port=source_port, socket_timeout=10) as src:
            src.execute_command("MIGRATE", "127.0.0.1", target_port, "", 0, 5000, "KEYS", *keys)


def finish_migration(
    topo: ClusterTopology,
    slot: int,
    source_port: int,
    target_port: int,
    *,
    batch: int = 10,
    pause: float = 0.0,
) -> int:
    """Move the keys left in ``slot`` in batches of ``batch`` (``pause`` seconds apart),
    then CLUSTER SETSLOT NODE everywhere, as redis-cli does: the target first, then the
    source (which starts answering MOVED), then the other primaries. Returns keys moved."""
    moved = 0
    with redis.Redis(port=source_port, socket_timeout=10) as src:
        while True:
            keys = src.execute_command("CLUSTER GETKEYSINSLOT", slot, batch)
            if not keys:
                break
            move_keys(source_port, target_port, keys)
            moved += len(keys)
            if pause:
                time.sleep(pause)
    owner = node_id(target_port)
    order = [target_port, source_port]
    order += [n.port for n in topo.nodes if n.running and n.port not in order]
    for port in order:
        with (
            redis.Redis(port=port, socket_timeout=5) as r,
            contextlib.suppress(
                redis.ResponseError  # replicas refuse SETSLOT; they learn it from the bus
            ),
        ):
            r.execute_command("CLUSTER SETSLOT", slot, "NODE", owner)
    return moved


def primaries(topo: ClusterTopology) -> list[EmbeddedRedis]:
    """The running nodes that currently serve slots as primaries."""
    live = next(n for n in topo.nodes if n.running)
    with redis.Redis(port=live.port, socket_timeout=1) as r:
        ports = {int(primary[1]) for _, _, primary, *_ in r.execute_command("CLUSTER SLOTS")}
    return [n for n in topo.nodes if n.port in ports]
