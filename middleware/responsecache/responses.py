"""The HTTP side of cached responses (private): capturing the app's response, the strong
``ETag``, ``If-None-Match`` and sending a stored response.

A stored response keeps the app's headers except those the cache owns (``etag``,
``cache-control``, ``age``, ``date``); each time it is served it gets its ``ETag``, an
``Age`` and ``Cache-Control: private|public, max-age=<fresh seconds left>``. A request
whose ``If-None-Match`` lists the ``ETag`` (weak comparison, RFC 9110 13.1.2) or ``*``
gets ``304`` with no body.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field

from starlette.types import Message, Send

from gateway_redis.responsecache import StoredResponse

__all__ = ["Capture", "RequestHeaders", "make_etag", "send_stored"]

_OWNED = frozenset({b"etag", b"cache-control", b"age", b"date"})
# Statuses that are cached (heuristically cacheable ones, RFC 9111 4.2.2, minus 206/405/501
# whose meaning depends on more than the request line).
CACHEABLE = frozenset({200, 203, 204, 300, 301, 308, 404, 410})


def make_etag(body: bytes) -> str:
    """The strong entity tag of ``body``: its SHA-256, base64url, quoted (the same on every
    worker and after restarts)."""
    digest = base64.urlsafe_b64encode(hashlib.sha256(body).digest()).rstrip(b"=")
    return '"' + digest.decode() + '"'


@dataclass(slots=True)
class RequestHeaders:
    """What the cache reads from a request's headers, in one pass."""

    vary: tuple[bytes, ...] = ()
    no_cache: bool = False
    no_store: bool = False
    if_none_match: bytes | None = None

    @classmethod
    def read(cls, headers: Iterable[tuple[bytes, bytes]], vary: tuple[str, ...]) -> RequestHeaders:
        """Parse ``headers`` (raw ASGI pairs); ``vary`` are the rule's lowercase names.
        Not to be changed: a request with none of these headers shares one instance."""
        if not vary:
            for name, _value in headers:
                if name in _READ:
                    break
            else:
                return _PLAIN  # the common request: nothing to read
        found = cls()
        wanted: dict[bytes, list[bytes]] | None = (
            {name.encode(): [] for name in vary} if vary else None
        )
        for name, value in headers:
            if name == b"if-none-match":
                found.if_none_match = (
                    value if found.if_none_match is None else found.if_none_match + b"," + value
                )
            elif name == b"cache-control" or name == b"pragma":
                lowered = value.lower()
                if b"no-cache" in lowered:
                    found.no_cache = True
                if b"no-store" in lowered:
                    found.no_store = True
            if wanted is not None and name in wanted:
                wanted[name].append(value)
        if wanted is not None:
            found.vary = tuple(b",".join(v) for v in wanted.values())
        return found

    def matches(self, etag: str) -> bool:
        """Whether ``If-None-Match`` lists ``etag`` (weak comparison) or is ``*``."""
        if self.if_none_match is None:
            return False
        wanted = etag.encode()
        for candidate in self.if_none_match.split(b","):
            tag = candidate.strip()
            if tag == b"*":
                return True
            if tag.startswith(b"W/"):
                tag = tag[2:]
            if tag == wanted:
                return True
        return False


# The request headers the cache reads (besides a rule's vary names).
_READ = frozenset({b"if-none-match", b"cache-control", b"pragma"})
_PLAIN = RequestHeaders()


@dataclass(slots=True)
class Capture:
    """A ``send`` that buffers the app's response up to ``limit`` body bytes.

    Over the limit (or for a streamed response that never ends) :attr:`overflow` is set
    and everything buffered so far goes to ``passthrough``, then the rest as it comes.
    """

    limit: int
    passthrough: Send | None
    status: int = 0
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    chunks: list[bytes] = field(default_factory=list)
    size: int = 0
    complete: bool = False
    overflow: bool = False
    _start: Message | None = None

    async def __call__(self, message: Message) -> None:
        if self.overflow:
            if self.passthrough is not None:
                await self.passthrough(message)
            return
        kind = message["type"]
        if kind == "http.response.start":
            self._start = message
            self.status = int(message["status"])
            self.headers = list(message.get("headers", ()))
        elif kind == "http.response.body":
            body: bytes = message.get("body", b"")
            self.size += len(body)
            if body:
                self.chunks.append(body)
            if not message.get("more_body", False):
                self.complete = True
            if self.size > self.limit:
                await self._spill(message)

    async def _spill(self, last: Message) -> None:
        self.overflow = True
        out, buffered = self.passthrough, b"".join(self.chunks)
        self.chunks.clear()
        if out is None or self._start is None:
            return
        await out(self._start)
        more = bool(last.get("more_body", False))
        await out({"type": "http.response.body", "body": buffered, "more_body": more})

    def body(self) -> bytes:
        """The buffered body."""
        return b"".join(self.chunks)

    def stored(
        self,
        *,
        created: float,
        ttl: float,
        stale: float,
        versions: dict[str, str],
        vary: frozenset[bytes],
    ) -> StoredResponse | None:
        """The captured response as a :class:`StoredResponse`, or None when it must not be
        cached (incomplete, over the limit, an uncacheable status, ``Set-Cookie``,
        ``Cache-Control: no-store`` from the app, or a ``Vary`` naming a header outside
        ``vary``, the lowercase names the key covers)."""
        if not self.complete or self.overflow or self.status not in CACHEABLE:
            return None
        kept: list[tuple[bytes, bytes]] = []
        for name, value in self.headers:
            lowered = name.lower()
            if lowered == b"set-cookie":
                return None
            if lowered == b"cache-control" and (b"no-store" in value.lower()):
                return None
            if lowered == b"vary":
                named = {v.strip().lower() for v in value.split(b",")} - {b""}
                if not named <= vary:  # also refuses "*"
                    return None
            if lowered not in _OWNED:
                kept.append((lowered, value))
        body = self.body()
        return StoredResponse(
            status=self.status,
            headers=tuple(kept),
            body=body,
            etag=make_etag(body),
            created=created,
            ttl=ttl,
            stale=stale,
            versions=versions,
        )

    async def replay(self, send: Send, head: bool) -> None:
        """Send the captured response as it was (an uncacheable one)."""
        await send({"type": "http.response.start", "status": self.status, "headers": self.headers})
        await send({"type": "http.response.body", "body": b"" if head else self.body()})


_CONTROL = {True: b"public, max-age=%d", False: b"private, max-age=%d"}


async def send_stored(
    send: Send,
    stored: StoredResponse,
    *,
    age: float,
    public: bool,
    request: RequestHeaders,
    head: bool,
) -> None:
    """Send ``stored`` (or ``304`` for a matching ``If-None-Match``) with the cache's
    ``ETag``, ``Age`` and ``Cache-Control``; ``age`` is ``stored.age(now)``."""
    fresh = int(stored.ttl - age)
    own = (
        (b"etag", stored.etag.encode()),
        (b"cache-control", _CONTROL[public] % (fresh if fresh > 0 else 0)),
        (b"age", b"%d" % age),
    )
    if request.if_none_match is not None and stored.status == 200 and request.matches(stored.etag):
        vary = [(n, v) for n, v in stored.headers if n == b"vary"]
        await send({"type": "http.response.start", "status": 304, "headers": [*own, *vary]})
        await send({"type": "http.response.body", "body": b""})
        return
    headers = list(stored.headers)
    headers += own
    await send({"type": "http.response.start", "status": stored.status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else stored.body})
