"""Fuzzing the ``REDIS_*`` variables and Redis URLs (gateway_redis.config).

Documented errors: :func:`parse_duration` raises ``ValueError``; :class:`RedisConfig` and
:meth:`RedisConfig.from_env` raise :class:`ConfigurationError` "for any invalid value"
(from_env naming the variable). Nothing else may escape, and no message, ``repr`` or
redacted URL may show the password.
"""

from __future__ import annotations

import math
import string

from hypothesis import example, given
from hypothesis import strategies as st

from gateway_redis import ConfigurationError, RedisConfig
from gateway_redis.config import parse_duration

PASSWORD = "Pw-4f7c1e9a-secret"  # distinctive: found nowhere else in a generated URL

VARIABLES = (
    "REDIS_URL",
    "REDIS_HOST",
    "REDIS_PORT",
    "REDIS_USERNAME",
    "REDIS_PASSWORD",
    "REDIS_DB",
    "REDIS_POOL_SIZE",
    "REDIS_MIN_IDLE_CONNS",
    "REDIS_DIAL_TIMEOUT",
    "REDIS_READ_TIMEOUT",
    "REDIS_WRITE_TIMEOUT",
    "REDIS_POOL_TIMEOUT",
    "REDIS_OPERATION_TIMEOUT",
    "REDIS_HEALTH_CHECK_INTERVAL",
    "REDIS_RETRY_ATTEMPTS",
    "REDIS_KEY_PREFIX",
    "REDIS_CHANNEL_PREFIX",
    "REDIS_SHARDED_CHANNELS",
    "REDIS_TLS",
    "REDIS_TLS_VERIFY",
    "REDIS_SENTINELS",
    "REDIS_SENTINEL_MASTER",
    "REDIS_SENTINEL_USERNAME",
    "REDIS_SENTINEL_PASSWORD",
    "REDIS_CLUSTER_NODES",
)

SCHEMES = (
    "redis",
    "rediss",
    "unix",
    "redis+sentinel",
    "rediss+sentinel",
    "redis+cluster",
    "rediss+cluster",
    "http",
    "",
    "REDIS",
)
URL_CHARS = string.ascii_letters + string.digits + ":/@[]%.,?#-_ +é\x00"

durations = st.one_of(
    st.text(max_size=30),
    st.from_regex(r"\A\s*-?(\d{1,400}(\.\d*)?|\.\d+)((ns|us|µs|ms|s|m|h)\d*)*\s*\Z"),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
)


def _url(scheme: str, user: str, password: bool, hosts: list[str], path: str, query: str) -> str:
    userinfo = f"{user}:{PASSWORD}@" if password else (f"{user}@" if user else "")
    return f"{scheme}://{userinfo}{','.join(hosts)}{path}{query}"


urls = st.one_of(
    st.builds(
        _url,
        st.sampled_from(SCHEMES),
        st.text(URL_CHARS, max_size=6),
        st.booleans(),
        st.lists(
            st.one_of(
                st.from_regex(r"\A[a-z0-9.\-]{0,12}(:[0-9]{0,6})?\Z"),
                st.from_regex(r"\A\[[0-9a-f:]{0,10}\]?(:[0-9]{0,6})?\Z"),
                st.text(URL_CHARS, max_size=10),
            ),
            max_size=3,
        ),
        st.one_of(
            st.just(""),
            st.from_regex(r"\A(/[a-z0-9%]{0,4}){0,3}/?\Z"),
            st.text(URL_CHARS, max_size=8),
        ),
        st.sampled_from(("", "?", "?ssl_cert_reqs=none", "#frag")),
    ),
    st.text(max_size=40),
)

env_values = st.one_of(
    st.text(max_size=20),
    durations,
    urls,
    st.from_regex(r"\A-?\d{1,6}\Z"),
    st.sampled_from(("true", "false", "1", "0", "yes", "", " ")),
)


def _is_password(url: str) -> bool:
    """True when PASSWORD stands in ``url`` as a password does (``:<password>@``) and
    nowhere else (Hypothesis also tries the module's string constants on their own)."""
    return url.count(PASSWORD) == 1 and f":{PASSWORD}@" in url


def _no_password(text: str) -> None:
    assert PASSWORD not in text, text


@given(durations)
@example("1" * 400 + "h")
@example("1e400")
@example("nan")
@example("5s-1s")
def test_parse_duration_raises_only_value_error(text: str) -> None:
    try:
        seconds = parse_duration(text)
    except ValueError:
        return
    assert isinstance(seconds, float)
    assert math.isfinite(seconds)
    assert seconds >= 0


@given(urls, st.booleans())
@example("redis://[::1", False)  # urlsplit's own ValueError: was not a ConfigurationError
@example(f"unix://u:{PASSWORD}@host", False)  # was echoed unredacted
@example(f"redis+sentinel://u:{PASSWORD}/x@h:1/m/99", False)  # '/' in the password
@example(f"redis+cluster://u:{PASSWORD}?@h:1/1", False)
def test_url_raises_only_configuration_error_and_never_shows_the_password(
    url: str, separate_password: bool
) -> None:
    secret = _is_password(url)
    try:
        config = RedisConfig(url=url, password="other" if separate_password else None)
    except ConfigurationError as exc:
        if secret:
            _no_password(str(exc))
        return
    if not secret:
        return
    _no_password(repr(config))
    _no_password(config.redacted_url)
    _no_password(repr(config.topology))


@given(st.dictionaries(st.sampled_from(VARIABLES), env_values, max_size=6))
@example({"REDIS_URL": "redis://[::1"})  # was a bare ValueError naming no variable
@example({"REDIS_SENTINELS": "h:26379"})  # named the field sentinel_master, not the variable
@example({"REDIS_DIAL_TIMEOUT": "1" * 400 + "h"})
@example({"REDIS_SENTINELS": "[::1]:0", "REDIS_SENTINEL_MASTER": "m"})
def test_from_env_raises_only_configuration_error_naming_a_variable(env: dict[str, str]) -> None:
    secret = (
        _is_password(env.get("REDIS_URL", ""))
        and sum(PASSWORD in value for value in env.values()) == 1
    )
    try:
        config = RedisConfig.from_env(env)
    except ConfigurationError as exc:
        message = str(exc)
        assert message.split(":", 1)[0] in VARIABLES or message.startswith(
            ("sentinels and", "url and", "tls_cert_file", "password given", "REDIS_URL and")
        ), message
        if secret:
            _no_password(message)
        return
    if not secret:
        return
    _no_password(repr(config))
    _no_password(config.redacted_url)
