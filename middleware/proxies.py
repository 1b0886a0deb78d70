"""The client's address behind reverse proxies: :class:`TrustedProxies`.

Anything keyed by client address (login throttles, rate limits, audit logs) must not take
it from a header a client can write. ``X-Forwarded-For`` and ``Forwarded`` (RFC 7239) are
lists that every proxy appends to: only the entries appended by proxies you run can be
believed. So the direct peer (the ASGI ``client``) is the address, unless it is in one of
the configured trusted networks; then the chosen header is read from the right, skipping
entries that are trusted proxies themselves, and the first other entry is the client.
Entries further left were written by whoever sent the request and are never used.

Configure one header, the one your outermost proxy sets (with the other, a client could
send a forged one that the proxy passes through untouched). With no trusted networks (the
default) no header is ever read. uvicorn's own ``--proxy-headers`` rewrites the ASGI
``client`` before the application sees it (and trusts 127.0.0.1 by default): use either it
(with an explicit ``--forwarded-allow-ips``) or this helper behind ``--no-proxy-headers``,
not both.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Literal

from starlette.requests import HTTPConnection
from starlette.types import Scope

__all__ = ["TrustedProxies"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Entries read from the right at most: a chain of proxies is short, and a client cannot
# make the gateway split a long header into many pieces.
MAX_HOPS = 16


def _address(text: str) -> IPAddress | None:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _forwarded_for(element: str) -> str:
    """The node of the ``for=`` parameter of one ``Forwarded`` element, port removed."""
    for pair in element.split(";"):
        name, _, value = pair.strip().partition("=")
        if name.strip().lower() != "for":
            continue
        node = value.strip().strip('"')
        if node.startswith("["):  # "[2001:db8::1]:4711"
            return node[1 : node.find("]")] if "]" in node else ""
        return node.split(":", 1)[0] if node.count(":") == 1 else node
    return ""


def _forwarded_entry(entry: str) -> str:
    """One ``X-Forwarded-For`` entry without brackets or port."""
    entry = entry.strip()
    if entry.startswith("["):
        return entry[1 : entry.find("]")] if "]" in entry else ""
    return entry.split(":", 1)[0] if entry.count(":") == 1 else entry


class TrustedProxies:
    """Resolves the client address of a request; see the module docstring.

    ``networks`` are the trusted proxies (``"10.0.0.0/8"``, ``"127.0.0.1"``, IPv4 or IPv6;
    empty: none, the direct peer is always the client). ``header`` is
    ``"x-forwarded-for"`` (default) or ``"forwarded"``. Raises ``ValueError`` for a bad
    network or header.
    """

    __slots__ = ("_header", "_networks", "_parse")

    def __init__(
        self,
        networks: Iterable[str] = (),
        *,
        header: Literal["x-forwarded-for", "forwarded"] = "x-forwarded-for",
    ) -> None:
        if isinstance(networks, str):
            raise ValueError("networks must be a collection of networks, not one string")
        parsed: list[IPNetwork] = []
        for network in networks:
            try:
                parsed.append(ipaddress.ip_network(str(network).strip(), strict=False))
            except ValueError:
                raise ValueError(f"networks: not an IP network: {network!r}") from None
        if header not in ("x-forwarded-for", "forwarded"):
            raise ValueError(f"header must be 'x-forwarded-for' or 'forwarded', got {header!r}")
        self._networks = tuple(parsed)
        self._header = header.encode()
        self._parse = _forwarded_for if header == "forwarded" else _forwarded_entry

    @classmethod
    def from_string(
        cls, value: str, *, header: Literal["x-forwarded-for", "forwarded"] = "x-forwarded-for"
    ) -> TrustedProxies:
        """From a comma-separated list (an environment variable); empty: none."""
        return cls([n for n in value.split(",") if n.strip()], header=header)

    @property
    def networks(self) -> tuple[str, ...]:
        """The trusted networks, normalised."""
        return tuple(str(n) for n in self._networks)

    def trusted(self, address: str) -> bool:
        """Whether ``address`` (an IP address) is one of the trusted proxies."""
        parsed = _address(address)
        return parsed is not None and self._trusts(parsed)

    def _trusts(self, address: IPAddress) -> bool:
        return any(address.version == n.version and address in n for n in self._networks)

    def client_address(self, conn: HTTPConnection | Scope) -> str | None:
        """The client's address (normalised text) for a request or WebSocket (a Starlette
        connection or an ASGI scope), or None when the server gives no peer address.

        The direct peer unless it is a trusted proxy; then the rightmost header entry that
        is not a trusted proxy (or the leftmost one when all are). An entry that is not an
        IP address (``unknown``, an obfuscated name) stops the walk: the address is the
        proxy that wrote it.
        """
        scope = conn.scope if isinstance(conn, HTTPConnection) else conn
        client = scope.get("client")
        if not client:
            return None
        peer_text = str(client[0])
        peer = _address(peer_text)
        if peer is None or not self._networks or not self._trusts(peer):
            return str(peer) if peer is not None else peer_text
        values = [v.decode("latin-1") for n, v in scope.get("headers", ()) if n == self._header]
        if not values:
            return str(peer)
        entries = ",".join(values).rsplit(",", MAX_HOPS)
        if len(entries) > MAX_HOPS:
            entries[0] = ""  # the rest of a longer list: not read
        found = peer
        for entry in reversed(entries):
            address = _address(self._parse(entry))
            if address is None:
                break
            found = address
            if not self._trusts(address):
                break
        return str(found)

    def __repr__(self) -> str:
        return f"<TrustedProxies {', '.join(self.networks) or 'none'} via {self._header.decode()}>"
