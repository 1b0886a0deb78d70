"""Live subscriptions re-authorized when permissions change, on every instance (private).

A subscription is authorized once, when the client asks for it; permissions can be taken
away afterwards. The bridge therefore asks the channel policy again, for every channel a
socket holds, whenever the answer may have changed:

* :meth:`PermissionCache.invalidate(subject) <middleware.PermissionCache.invalidate>`, made
  on any instance (:meth:`PermissionCache.on_change`): the sockets of that subject (token
  and cookie-session sockets alike: the subject is the session's user id);
* a policy version bump (``on_change(None)``) and an invalidation-bus resync (events may
  have been lost): every socket;
* a cookie session whose data changed (the bridge's session look-up saw new metadata, from
  which ``session_permissions`` may derive): that session's sockets;
* a subscribe that was being authorized while one of the above arrived: that socket.

Channels the server API subscribed the socket to (``server_api``) are not re-checked: the
policy did not grant them, so it does not take them away. Channels no longer allowed are
unsubscribed and the client is told with
``{"type": "unsubscribed", "channels": [...], "reason": "forbidden"}`` (no ``id``: nobody
asked); the socket stays open with its other channels.

Bounded work: one task does every re-check; events that arrive while it runs are merged
into its next round (ten thousand invalidations are one or two rounds, never ten thousand
concurrent checks). A round checks at most :data:`_BATCH` sockets at once and yields to the
event loop between batches, and each socket's permissions are fetched once per round.

When the permissions cannot be known (the permission source is down: ``ServiceUnavailable``,
or a resolver raised) the socket keeps its channels and is checked again after
:data:`_RETRY_DELAY` seconds until an answer comes (logged once per round, as a warning).
That is the degradation policy's rule for the bridge (keep sockets open; an outage is not a
denial, just as a subscribe then answers ``unavailable``, never ``forbidden``): an outage of
the permission source must not unsubscribe everybody. The cost is that a withdrawal made
during such an outage takes effect when the source answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Iterable
from typing import TYPE_CHECKING, Final

from gateway_redis.sessions import id_digest
from gateway_redis.support import log_fields
from middleware.websocket import _protocol as proto

if TYPE_CHECKING:
    from middleware.websocket._connection import Connection
    from middleware.websocket.channels import ChannelPolicy, Principal

__all__ = ["Reauthorizer"]

_log = logging.getLogger("middleware.websocket.bridge")
_COMPONENT = "websocket"
_BATCH: Final = 32  # sockets checked concurrently; the loop runs other work between batches
_RETRY_DELAY: Final = 1.0  # seconds before sockets whose permissions were unknown are retried
REASON_FORBIDDEN: Final = "forbidden"


class _Once:
    """A principal whose permissions are fetched at most once (one socket, one round)."""

    __slots__ = ("_granted", "_principal", "subject")

    def __init__(self, principal: Principal) -> None:
        self.subject = principal.subject
        self._principal = principal
        self._granted: Collection[str] | None = None

    async def permissions(self) -> Collection[str]:
        if self._granted is None:
            self._granted = await self._principal.permissions()
        return self._granted


class Reauthorizer:
    """Queues sockets whose permissions may have changed and re-checks them in one task.

    ``conns()`` lists every open socket, ``of_user(digest)`` those of one user (by the
    SHA-256 digest of the subject); ``unsubscribe(conn, names)`` removes channels from a
    socket (the fan-out's). See the module docstring.
    """

    def __init__(
        self,
        *,
        policy: ChannelPolicy,
        conns: Callable[[], Iterable[Connection]],
        of_user: Callable[[str], Iterable[Connection]],
        unsubscribe: Callable[[Connection, list[str]], Awaitable[None]],
    ) -> None:
        self._policy = policy
        self._conns = conns
        self._of_user = of_user
        self._unsubscribe = unsubscribe
        self._pending: set[Connection] = set()
        self._everyone = False
        self._retry: set[Connection] = set()
        self._retry_at = 0.0
        self._wake = asyncio.Event()
        self.generation = 0  # bumped by every change: a subscribe straddling one re-queues
        self.rounds = 0  # completed rounds (for tests and metrics)

    # -- what may have changed (all synchronous, never wait) ----------------------------

    def subject_changed(self, subject: str | None) -> None:
        """:meth:`PermissionCache.on_change` hook: ``subject``'s sockets, or (None) all."""
        self.generation += 1
        if subject is None:
            self._everyone = True
        else:
            self._pending.update(self._of_user(id_digest(subject)))
        self._wake.set()

    async def on_resync(self) -> None:
        """Bus resync hook: permission events may have been lost, so re-check everyone.
        Only queues the work (a resync must not wait on every socket's permissions)."""
        self.subject_changed(None)

    def queue(self, conn: Connection) -> None:
        """Re-check one socket (a session's data changed, a subscribe raced a change)."""
        self.generation += 1
        self._pending.add(conn)
        self._wake.set()

    def forget(self, conn: Connection) -> None:
        """The socket closed: drop it from the queues."""
        self._pending.discard(conn)
        self._retry.discard(conn)

    # -- the task ---------------------------------------------------------------------

    async def run(self) -> None:
        """Task: wait for changes, check what they queued, forever."""
        while True:
            await self._next()
            try:
                await self.check_round()
            except Exception:  # a bug must not stop re-authorization for good
                _log.exception(
                    "websocket permission re-check failed",
                    extra=log_fields(_COMPONENT, "websocket_reauthorize_failed"),
                )

    async def _next(self) -> None:
        if not self._retry:
            await self._wake.wait()
        else:
            delay = self._retry_at - time.monotonic()
            if delay > 0:
                with contextlib.suppress(asyncio.TimeoutError):  # TimeoutError only from 3.11
                    await asyncio.wait_for(self._wake.wait(), delay)
            if time.monotonic() >= self._retry_at:
                self._pending.update(self._retry)
                self._retry.clear()
        self._wake.clear()

    async def check_round(self) -> None:
        """Check every queued socket now (the task's one round; tests call it directly)."""
        if self._everyone:
            self._everyone = False
            self._pending.clear()
            targets = list(self._conns())
        else:
            targets = list(self._pending)
            self._pending.clear()
        targets = [c for c in targets if c.closing is None and c.channels]
        unknown: list[Connection] = []
        failure: str | None = None
        for start in range(0, len(targets), _BATCH):
            if start:
                await asyncio.sleep(0)  # many sockets: let requests and messages through
            chunk = targets[start : start + _BATCH]
            results = await asyncio.gather(*(self._check(c) for c in chunk), return_exceptions=True)
            for conn, result in zip(chunk, results, strict=True):
                if isinstance(result, asyncio.CancelledError):
                    raise result  # the bridge is closing
                if isinstance(result, BaseException):  # ServiceUnavailable, a resolver's error
                    unknown.append(conn)
                    failure = failure or type(result).__name__
        self.rounds += 1
        if unknown:
            if not self._retry:
                self._retry_at = time.monotonic() + _RETRY_DELAY
            self._retry.update(c for c in unknown if c.closing is None)
            _log.warning(
                "websocket permissions unknown for %d sockets (%s); subscriptions kept, retrying",
                len(unknown),
                failure,
                extra=log_fields(_COMPONENT, "websocket_reauthorize_deferred", failure or ""),
            )

    async def _check(self, conn: Connection) -> None:
        principal = _Once(conn.principal)
        denied = []
        granted = conn.granted or ()
        for name in list(conn.channels):
            if name in granted:
                continue  # subscribed by the server (server_api): not the policy's to take
            if not await self._policy.allows(principal, "subscribe", name):
                denied.append(name)
        denied = [name for name in denied if name in conn.channels]
        if not denied or conn.closing is not None:
            return
        await self._unsubscribe(conn, denied)
        conn.push_control(unsubscribed_frame(denied, REASON_FORBIDDEN))
        _log.info(
            "websocket unsubscribed from %d channels no longer allowed",
            len(denied),
            extra=log_fields(_COMPONENT, "websocket_unsubscribed_forbidden", channels=len(denied)),
        )


def unsubscribed_frame(channels: list[str], reason: str) -> str:
    """A server-initiated ``unsubscribed`` frame: ``{"type": "unsubscribed", "channels":
    [...], "reason": reason}`` (no ``id``)."""
    return proto.reply_frame("unsubscribed", None, channels=channels, reason=reason)
