"""TrustedProxies: the client address from X-Forwarded-For / Forwarded only when the direct
peer is a trusted proxy, read from the right, bounded, and validated settings."""

from __future__ import annotations

from typing import Any

import pytest

from middleware import TrustedProxies


def scope(peer: str | None, *headers: tuple[str, str]) -> dict[str, Any]:
    return {
        "type": "http",
        "client": (peer, 50000) if peer is not None else None,
        "headers": [(n.lower().encode(), v.encode()) for n, v in headers],
    }


XFF = "X-Forwarded-For"


def test_no_trusted_proxies_never_reads_a_header() -> None:
    proxies = TrustedProxies()
    assert proxies.client_address(scope("127.0.0.1", (XFF, "203.0.113.7"))) == "127.0.0.1"
    assert proxies.client_address(scope("198.51.100.2", (XFF, "1.2.3.4"))) == "198.51.100.2"


def test_an_untrusted_peer_is_the_client_whatever_it_sends() -> None:
    proxies = TrustedProxies(["10.0.0.0/8"])
    spoofed = scope("198.51.100.2", (XFF, "10.0.0.5"), ("Forwarded", "for=1.2.3.4"))
    assert proxies.client_address(spoofed) == "198.51.100.2"


def test_a_trusted_peer_gives_the_rightmost_untrusted_entry() -> None:
    proxies = TrustedProxies(["10.0.0.0/8", "127.0.0.1"])
    # The client forged "1.1.1.1"; the first proxy appended the real peer 203.0.113.7.
    chain = scope("127.0.0.1", (XFF, "1.1.1.1, 203.0.113.7, 10.1.2.3"))
    assert proxies.client_address(chain) == "203.0.113.7"
    assert proxies.client_address(scope("127.0.0.1", (XFF, "203.0.113.9"))) == "203.0.113.9"
    # Several header lines are one list, in order.
    lines = scope("10.0.0.1", (XFF, "1.1.1.1"), (XFF, "203.0.113.7"))
    assert proxies.client_address(lines) == "203.0.113.7"
    # No header: the proxy itself.
    assert proxies.client_address(scope("10.0.0.1")) == "10.0.0.1"
    # Every entry a trusted proxy: the leftmost.
    assert proxies.client_address(scope("10.0.0.1", (XFF, "10.0.0.9, 10.0.0.8"))) == "10.0.0.9"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("unknown", "10.0.0.1"),  # not an address: the proxy that wrote it
        ("garbage, 203.0.113.7", "203.0.113.7"),
        ("203.0.113.7, _hidden", "10.0.0.1"),
        ("[2001:db8::1]:4711", "2001:db8::1"),
        ("2001:db8::1", "2001:db8::1"),
        ("203.0.113.7:5000", "203.0.113.7"),
        ("::ffff:203.0.113.7", "203.0.113.7"),
    ],
)
def test_x_forwarded_for_entries(value: str, expected: str) -> None:
    proxies = TrustedProxies(["10.0.0.0/8"])
    assert proxies.client_address(scope("10.0.0.1", (XFF, value))) == expected


def test_forwarded_header_when_configured() -> None:
    proxies = TrustedProxies(["10.0.0.0/8"], header="forwarded")
    value = 'for=1.1.1.1, for="[2001:db8:cafe::17]:4711";proto=https, for=10.0.0.2;by=10.0.0.1'
    assert proxies.client_address(scope("10.0.0.1", ("Forwarded", value))) == "2001:db8:cafe::17"
    ipv4 = scope("10.0.0.1", ("Forwarded", "for=203.0.113.7:80;proto=http"))
    assert proxies.client_address(ipv4) == "203.0.113.7"
    # X-Forwarded-For is not read when Forwarded is the configured header.
    other = scope("10.0.0.1", (XFF, "203.0.113.7"))
    assert proxies.client_address(other) == "10.0.0.1"


def test_a_long_chain_is_read_only_from_the_right() -> None:
    proxies = TrustedProxies(["10.0.0.0/8"])
    chain = ", ".join(["10.0.0.3"] * 40)
    assert proxies.client_address(scope("10.0.0.1", (XFF, chain))) == "10.0.0.3"
    forged = "203.0.113.7, " + chain  # past the hop limit: never reached
    assert proxies.client_address(scope("10.0.0.1", (XFF, forged))) == "10.0.0.3"


def test_ipv6_networks_and_peers() -> None:
    proxies = TrustedProxies(["::1", "fd00::/8"])
    assert proxies.client_address(scope("::1", (XFF, "2001:db8::5"))) == "2001:db8::5"
    assert proxies.trusted("fd12::1")
    assert not proxies.trusted("127.0.0.1")
    assert not proxies.trusted("not-an-ip")


def test_no_peer_and_unix_sockets() -> None:
    proxies = TrustedProxies(["127.0.0.1"])
    assert proxies.client_address(scope(None)) is None
    assert proxies.client_address(scope("unix-peer", (XFF, "1.2.3.4"))) == "unix-peer"


def test_settings_are_validated_and_parsed_from_a_string() -> None:
    assert TrustedProxies.from_string("").networks == ()
    parsed = TrustedProxies.from_string(" 10.0.0.0/8, 127.0.0.1 ,")
    assert parsed.networks == ("10.0.0.0/8", "127.0.0.1/32")
    assert "10.0.0.0/8" in repr(parsed)
    with pytest.raises(ValueError, match="not one string"):
        TrustedProxies("10.0.0.0/8")
    with pytest.raises(ValueError, match="networks"):
        TrustedProxies(["10.0.0.0/33"])
    with pytest.raises(ValueError, match="header"):
        TrustedProxies([], header="x-real-ip")  # type: ignore[arg-type]
