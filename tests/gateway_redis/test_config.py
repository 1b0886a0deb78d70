"""RedisConfig and from_env(): defaults, good values, and every kind of bad value."""

from __future__ import annotations

from datetime import timedelta

import pytest

from gateway_redis import ConfigurationError, RedisConfig, parse_duration
from gateway_redis.config import (
    PoolLimits,
    RetryPolicy,
    SentinelSettings,
    Timeouts,
    TLSSettings,
)
from gateway_redis.support import check_seconds, ttl_milliseconds


def test_defaults_mean_localhost_6379_db0() -> None:
    cfg = RedisConfig()
    assert (cfg.host, cfg.port, cfg.db, cfg.url) == ("localhost", 6379, 0, None)
    assert cfg.key_prefix == "gw:"
    assert cfg.health_check_interval == 30.0


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("5s", 5.0),
        ("250ms", 0.25),
        ("1m30s", 90.0),
        ("1h", 3600.0),
        ("2.5", 2.5),
        ("0.5s", 0.5),
        ("1.5m", 90.0),
        ("100us", 0.0001),
        ("3", 3.0),
        (" 2s ", 2.0),
    ],
)
def test_parse_duration_accepts_go_style_and_plain_seconds(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text", ["", "5x", "s", "1m30", "-1s", "-2", "abc", "5 s", "inf", "nan", "1s2"]
)
def test_parse_duration_rejects_garbage(text: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the message is checked via from_env
        parse_duration(text)


def test_from_env_reads_every_go_variable() -> None:
    env = {
        "REDIS_HOST": "redis.internal",
        "REDIS_PORT": "6380",
        "REDIS_PASSWORD": "s3cret-pass",
        "REDIS_DB": "3",
        "REDIS_POOL_SIZE": "20",
        "REDIS_MIN_IDLE_CONNS": "5",
        "REDIS_DIAL_TIMEOUT": "5s",
        "REDIS_READ_TIMEOUT": "250ms",
        "REDIS_WRITE_TIMEOUT": "1.5",
    }
    cfg = RedisConfig.from_env(env)
    assert cfg.host == "redis.internal"
    assert cfg.port == 6380
    assert cfg.password == "s3cret-pass"
    assert cfg.db == 3
    assert cfg.pool_size == 20
    assert cfg.min_idle_conns == 5
    assert cfg.dial_timeout == 5.0
    assert cfg.read_timeout == 0.25
    assert cfg.write_timeout == 1.5


def test_from_env_url_kept_as_given() -> None:
    cfg = RedisConfig.from_env({"REDIS_URL": "rediss://user:pw@cache.example:6390/2"})
    assert cfg.url == "rediss://user:pw@cache.example:6390/2"


def test_from_env_with_nothing_set_gives_defaults() -> None:
    assert RedisConfig.from_env({}) == RedisConfig()


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"REDIS_PORT": "abc"}, ["REDIS_PORT", "abc"]),
        ({"REDIS_PORT": "70000"}, ["REDIS_PORT", "65535"]),
        ({"REDIS_PORT": ""}, ["REDIS_PORT"]),
        ({"REDIS_DB": "16"}, ["REDIS_DB", "0-15"]),
        ({"REDIS_DB": "-1"}, ["REDIS_DB"]),
        ({"REDIS_POOL_SIZE": "0"}, ["REDIS_POOL_SIZE"]),
        ({"REDIS_POOL_SIZE": "ten"}, ["REDIS_POOL_SIZE", "ten"]),
        ({"REDIS_MIN_IDLE_CONNS": "50"}, ["REDIS_MIN_IDLE_CONNS", "pool_size"]),
        ({"REDIS_DIAL_TIMEOUT": "5x"}, ["REDIS_DIAL_TIMEOUT", "5x"]),
        ({"REDIS_READ_TIMEOUT": "-1s"}, ["REDIS_READ_TIMEOUT", "negative"]),
        ({"REDIS_WRITE_TIMEOUT": "0"}, ["REDIS_WRITE_TIMEOUT", "> 0"]),
        ({"REDIS_URL": "http://localhost"}, ["REDIS_URL", "scheme"]),
        ({"REDIS_URL": "redis://localhost/99"}, ["REDIS_URL", "0-15"]),
        ({"REDIS_URL": "redis://localhost", "REDIS_HOST": "x"}, ["REDIS_URL", "REDIS_HOST"]),
        ({"REDIS_TLS": "maybe"}, ["REDIS_TLS", "maybe"]),
    ],
)
def test_from_env_bad_value_names_variable_and_problem(
    env: dict[str, str], names: list[str]
) -> None:
    with pytest.raises(ConfigurationError) as info:
        RedisConfig.from_env(env)
    for name in names:
        assert name in str(info.value)


def test_timedelta_accepted_and_stored_as_seconds() -> None:
    cfg = RedisConfig(dial_timeout=timedelta(milliseconds=1500), read_timeout=2)
    assert cfg.dial_timeout == 1.5
    assert isinstance(cfg.read_timeout, float)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"db": 16},
        {"port": 0},
        {"pool_size": 0},
        {"min_idle_conns": -1},
        {"dial_timeout": 0},
        {"read_timeout": -1.0},
        {"operation_timeout": float("inf")},
        {"retry_attempts": 11},
        {"port": True},
        {"url": "unix://"},
        {"tls_cert_file": "cert.pem"},
    ],
)
def test_constructor_rejects_invalid_values(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError):
        RedisConfig(**kwargs)  # type: ignore[arg-type]


def test_password_never_in_repr() -> None:
    cfg = RedisConfig(password="hunter2-very-secret")
    assert "hunter2" not in repr(cfg)
    assert "***" in repr(cfg)
    url_cfg = RedisConfig(url="redis://user:hunter2-very-secret@host:6379/0")
    assert "hunter2" not in repr(url_cfg)
    assert "hunter2" not in url_cfg.redacted_url


def test_password_in_url_and_separately_is_ambiguous() -> None:
    with pytest.raises(ConfigurationError):
        RedisConfig(url="redis://:a@host:6379", password="b")


def test_unix_socket_url_accepted() -> None:
    assert RedisConfig(url="unix:///run/redis.sock").url == "unix:///run/redis.sock"


@pytest.mark.parametrize(
    "url", ["redis://127.0.0.1:6379", "unix:///tmp/redis.sock", "redis+cluster://a:7000,b:7001"]
)
def test_tls_beside_a_plain_url_is_refused_instead_of_silently_plain(url: str) -> None:
    with pytest.raises(ConfigurationError, match=r"rediss://"):
        RedisConfig(url=url, tls=True)


def test_tls_beside_a_plain_url_names_the_variable() -> None:
    with pytest.raises(ConfigurationError, match=r"^REDIS_TLS: "):
        RedisConfig.from_env({"REDIS_URL": "redis://127.0.0.1:6379", "REDIS_TLS": "true"})


def test_tls_with_a_rediss_url_is_fine() -> None:
    assert RedisConfig(url="rediss://127.0.0.1:6380", tls=True).topology.tls


def test_grouped_views_follow_the_flat_fields_and_replace() -> None:
    cfg = RedisConfig(dial_timeout=timedelta(seconds=2), pool_size=20, min_idle_conns=3)
    assert cfg.timeouts == Timeouts(dial=2.0, read=1.0, write=1.0, pool=1.0, operation=1.5)
    assert cfg.pool == PoolLimits(size=20, min_idle=3)
    assert cfg.retry == RetryPolicy(attempts=2, backoff_base=0.005, backoff_cap=0.1)
    assert cfg.sentinel is None
    changed = cfg.replace(read_timeout=0.5, retry_attempts=0)
    assert changed.timeouts.read == 0.5
    assert changed.retry.attempts == 0
    assert cfg.timeouts.read == 1.0
    assert changed == RedisConfig(
        dial_timeout=2, pool_size=20, min_idle_conns=3, read_timeout=0.5, retry_attempts=0
    )


def test_sentinel_view_from_the_url_keeps_the_password_out_of_repr() -> None:
    cfg = RedisConfig(
        url="rediss+sentinel://s1:26380,s2/primary/2", sentinel_password="sentinel-secret"
    )
    assert cfg.sentinel == SentinelSettings(
        nodes=(("s1", 26380), ("s2", 26379)),
        master="primary",
        username=None,
        password="sentinel-secret",
    )
    assert "sentinel-secret" not in repr(cfg.sentinel)
    assert "sentinel-secret" not in repr(cfg)
    assert cfg.tls_settings == TLSSettings(
        enabled=True, ca_file=None, cert_file=None, key_file=None, verify=True
    )
    assert cfg.topology is cfg.topology  # resolved once, not parsed on each access


def test_from_env_names_the_variable_for_a_value_the_constructor_rejects() -> None:
    with pytest.raises(ConfigurationError, match=r"^REDIS_OPERATION_TIMEOUT: .*> 0"):
        RedisConfig.from_env({"REDIS_OPERATION_TIMEOUT": "0s"})
    with pytest.raises(ConfigurationError, match=r"^REDIS_SHARDED_CHANNELS: .*glob"):
        RedisConfig.from_env({"REDIS_SHARDED_CHANNELS": "a?b"})


@pytest.mark.parametrize(
    ("value", "error"),
    [(0, ValueError), (-1.5, ValueError), (float("nan"), ValueError), (float("inf"), ValueError),
     (True, TypeError), ("1", TypeError), (11, ValueError)],
)  # fmt: skip
def test_check_seconds_rejects_what_is_not_a_positive_finite_duration(
    value: object, error: type[Exception]
) -> None:
    with pytest.raises(error, match=r"^idle "):
        check_seconds("idle", value, maximum=10)  # type: ignore[arg-type]


def test_check_seconds_accepts_numbers_and_timedeltas() -> None:
    assert check_seconds("t", 2) == 2.0
    assert check_seconds("t", timedelta(milliseconds=250)) == 0.25
    assert check_seconds("t", 0, allow_zero=True) == 0.0
    assert ttl_milliseconds(3) == 3000
    assert ttl_milliseconds(0.0001) == 1
