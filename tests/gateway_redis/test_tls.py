"""TLS: every connection the library opens uses the configured TLS settings, in every mode.

The unit tests build a client (never connected) for each topology and look at every kind
of connection it makes: pooled, cluster node, probe, subscriber, liveness, sentinel. The
integration test runs a real TLS-only client against a redis-server with a TLS port and
certificates made here, and checks on the server that every connection came in over TLS.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.connection import AbstractConnection, SSLConnection

from gateway_redis import RedisClient, RedisConfig
from gateway_redis._driver import ClusterSeedConnection, PoolBackend, open_probe_connection
from gateway_redis.embedded import EmbeddedRedis, free_port
from gateway_redis.pubsub._connection import open_connection as open_subscriber_connection

TLS_FILES: dict[str, Any] = {
    "tls_ca_file": "/tls/ca.pem",
    "tls_cert_file": "/tls/c.pem",
    "tls_key_file": "/tls/k.pem",
}

CONFIGS = {
    "standalone": lambda tls: RedisConfig(host="127.0.0.1", port=6390, tls=tls, **TLS_FILES),
    "standalone-url": lambda tls: RedisConfig(
        url=f"redis{'s' if tls else ''}://127.0.0.1:6390/0", **TLS_FILES
    ),
    "sentinel": lambda tls: RedisConfig(
        sentinels=(("127.0.0.1", 26390),), sentinel_master="m", tls=tls, **TLS_FILES
    ),
    "sentinel-url": lambda tls: RedisConfig(
        url=f"redis{'s' if tls else ''}+sentinel://127.0.0.1:26390/m", **TLS_FILES
    ),
    "cluster": lambda tls: RedisConfig(cluster_nodes=(("127.0.0.1", 7390),), tls=tls, **TLS_FILES),
    "cluster-url": lambda tls: RedisConfig(
        url=f"redis{'s' if tls else ''}+cluster://127.0.0.1:7390", **TLS_FILES
    ),
}


def _connections(client: RedisClient) -> dict[str, AbstractConnection]:
    """One connection of every kind ``client`` opens, unconnected."""
    backend = client.backend
    conns: dict[str, AbstractConnection] = {
        "probe": open_probe_connection(backend),
        "subscriber": open_subscriber_connection(client),
        "lone": backend.lone_connection(),
    }
    if isinstance(backend, PoolBackend):
        conns["pool"] = backend.pool.make_connection()  # type: ignore[no-untyped-call]
    if backend.cluster is not None:
        for node in backend.cluster.nodes_manager.startup_nodes.values():
            conns[f"seed node {node.name}"] = node.acquire_connection()
        # Nodes found later (CLUSTER SLOTS, MOVED) are built from connection_kwargs.
        found = ClusterNode("127.0.0.1", 7391, **backend.cluster.connection_kwargs)
        conns["discovered node"] = found.acquire_connection()
    sentinel = backend.sentinel if isinstance(backend, PoolBackend) else None
    if sentinel is not None:
        conns["sentinel events"] = backend.sentinel_connection(("127.0.0.1", 26390))
        for i, s in enumerate(sentinel.sentinels):
            conns[f"sentinel {i}"] = s.connection_pool.make_connection()  # type: ignore[no-untyped-call]
    return conns


@pytest.mark.parametrize("mode", sorted(CONFIGS))
async def test_every_connection_uses_the_tls_settings(mode: str) -> None:
    client = RedisClient(CONFIGS[mode](True))
    try:
        conns = _connections(client)
        assert len(conns) >= 4
        for kind, conn in conns.items():
            assert isinstance(conn, SSLConnection), f"{mode}: {kind} is {type(conn).__name__}"
            ctx = conn.ssl_context
            assert (ctx.ca_certs, ctx.certfile, ctx.keyfile) == (
                "/tls/ca.pem",
                "/tls/c.pem",
                "/tls/k.pem",
            ), f"{mode}: {kind}"
            assert ctx.cert_reqs == ssl.CERT_REQUIRED, f"{mode}: {kind}"
        if mode.startswith("cluster"):
            assert isinstance(conns["probe"], ClusterSeedConnection)
    finally:
        await client.aclose()


@pytest.mark.parametrize("mode", sorted(CONFIGS))
async def test_without_tls_no_connection_uses_it(mode: str) -> None:
    client = RedisClient(CONFIGS[mode](False))
    try:
        for kind, conn in _connections(client).items():
            assert not isinstance(conn, SSLConnection), f"{mode}: {kind}"
    finally:
        await client.aclose()


def test_verification_off_is_passed_to_every_connection() -> None:
    config = CONFIGS["cluster"](True).replace(tls_verify=False)
    client = RedisClient(config)
    for kind, conn in _connections(client).items():
        assert isinstance(conn, SSLConnection)
        assert conn.ssl_context.cert_reqs == ssl.CERT_NONE, kind
        assert conn.ssl_context.check_hostname is False, kind


# -- a real TLS server -------------------------------------------------------------------


def _write_pki(directory: Path) -> dict[str, str]:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def save_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("gateway-redis test CA"))
        .issuer_name(name("gateway-redis test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = {"ca": directory / "ca.pem"}
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for who, usage in (
        ("server", ExtendedKeyUsageOID.SERVER_AUTH),
        ("client", ExtendedKeyUsageOID.CLIENT_AUTH),
    ):
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(f"gateway-redis test {who}"))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                critical=False,
            )
        )
        if who == "server":
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
        cert = builder.sign(ca_key, hashes.SHA256())
        paths[f"{who}_cert"] = directory / f"{who}.pem"
        paths[f"{who}_cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        paths[f"{who}_key"] = directory / f"{who}.key"
        save_key(key, paths[f"{who}_key"])
    return {k: str(v) for k, v in paths.items()}


@pytest.fixture(scope="module")
def tls_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[EmbeddedRedis, int, dict[str, str]]]:
    pki = _write_pki(tmp_path_factory.mktemp("pki"))
    tls_port = free_port()
    server = EmbeddedRedis(
        args=[
            "--tls-port",
            str(tls_port),
            "--tls-cert-file",
            pki["server_cert"],
            "--tls-key-file",
            pki["server_key"],
            "--tls-ca-cert-file",
            pki["ca"],
            "--tls-auth-clients",
            "yes",
        ]
    )
    try:
        server.start()
    except RuntimeError as exc:
        if "TLS" in str(exc) or "tls" in str(exc):
            pytest.skip(f"redis-server built without TLS: {exc}")
        raise
    try:
        yield server, tls_port, pki
    finally:
        server.cleanup()


@pytest.mark.slow
@pytest.mark.parametrize("form", ["fields", "url"])
async def test_a_real_tls_server_sees_only_tls_connections(
    tls_server: tuple[EmbeddedRedis, int, dict[str, str]], form: str
) -> None:
    server, tls_port, pki = tls_server
    files: dict[str, Any] = {
        "tls_ca_file": pki["ca"],
        "tls_cert_file": pki["client_cert"],
        "tls_key_file": pki["client_key"],
    }
    if form == "url":
        config = RedisConfig(url=f"rediss://127.0.0.1:{tls_port}/0", **files)
    else:
        config = RedisConfig(host="127.0.0.1", port=tls_port, tls=True, **files)
    async with RedisClient(config.replace(key_prefix=f"tls-{form}:")) as client:
        assert client.available
        await client.set("k", "v")
        assert await client.get("k") == b"v"
        assert await client.increment("n") == 1
        async with await client.subscribe("tls-news") as sub:
            assert await client.publish("tls-news", {"a": 1}) == 1
            message = await anext(sub)
            assert message.data == {"a": 1}
        session_id = await client.create_session("alice", {"x": 1})
        assert (await client.get_session(session_id)).metadata == {"x": 1}
        with redis.Redis(port=server.port) as admin:  # the plain port, for inspection
            ours = [c for c in admin.client_list() if c["name"].startswith("gateway-redis")]
        names = {c["name"] for c in ours}
        assert {"gateway-redis", "gateway-redis-probe", "gateway-redis-pubsub"} <= names
        assert all(c["laddr"].endswith(f":{tls_port}") for c in ours), ours


async def test_a_tls_server_refuses_the_client_without_tls(
    tls_server: tuple[EmbeddedRedis, int, dict[str, str]],
) -> None:
    _, tls_port, _ = tls_server
    config = RedisConfig(host="127.0.0.1", port=tls_port, operation_timeout=0.5, dial_timeout=0.5)
    async with RedisClient(config) as client:
        assert not client.available
