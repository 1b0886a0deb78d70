"""The server API of the WebSocket bridge: act on a user's live sockets, on every instance.

::

    control = bridge.sockets                         # a SocketControl
    await control.disconnect("bob", "account suspended")   # close code 4000
    await control.unsubscribe("bob", "rooms:42")     # "unsubscribed", "reason": "server"
    await control.subscribe("bob", "rooms:42")       # "subscribed", then the messages

A user is named by subject (a token's ``sub``, a cookie session's user id) and means every
socket of that user, token and session sockets alike, on every instance sharing the Redis.
Each call is applied on this instance at once and broadcast on the client's
:class:`~gateway_redis.invalidation.InvalidationBus` (namespace ``ws``; the subject travels
as its SHA-256 digest, as in session events), so any instance may call it and every
instance applies it on receipt (well under 100 ms on a LAN). Calls return once the event is
sent, not once every socket acted: ``subscribe`` and ``unsubscribe`` run in one task per
instance, in the order the events arrived.

* :meth:`SocketControl.disconnect` closes the sockets with close code **4000**
  (:attr:`CloseCode.DISCONNECTED <middleware.websocket.CloseCode.DISCONNECTED>`) and
  ``reason`` as the close reason (at most 123 UTF-8 bytes, as the WebSocket protocol
  allows). Nothing stops the client from reconnecting: refuse its credentials as well
  (revoke its tokens, end its sessions) to keep it out.
* :meth:`SocketControl.unsubscribe` removes the channel from the sockets that hold it; each
  gets ``{"type": "unsubscribed", "channels": [channel], "reason": reason}`` (no ``id``;
  ``reason`` defaults to ``"server"``).
* :meth:`SocketControl.subscribe` subscribes the sockets as if they had asked: each gets
  ``{"type": "subscribed", "channels": [channel]}`` (no ``id``) and then every later
  message. It bypasses the channel policy's subscribe check (the server decided) but not
  the per-socket ``max_channels`` limit: a socket at the limit is left as it is (logged).
  Sockets that already hold the channel get no frame. Either way the channel is then
  exempt from the live re-checks of permissions (a permission change or a bus resync does
  not take it away: the policy did not grant it) until it leaves the socket (the client
  unsubscribes, or :meth:`SocketControl.unsubscribe`); a later client ``subscribe`` to it
  is checked by the policy again.

Events are fire-and-forget: an instance whose bus connection is down when one is sent never
applies it (a bus resync reloads revocations, not these commands). ``subscribe`` and
``unsubscribe`` reach only sockets open when the event arrives. Each method raises
``ValueError`` for a bad argument, :class:`~gateway_redis.errors.RedisUnavailable` when
the event could not be sent (it was applied on this instance all the same) and
``RuntimeError`` once the bridge is closed.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Final

from gateway_redis.errors import RedisUnavailable
from gateway_redis.sessions import id_digest
from gateway_redis.support import cancel_and_wait, log_fields
from middleware.websocket import _protocol as proto
from middleware.websocket._protocol import CloseCode
from middleware.websocket._reauthorize import unsubscribed_frame

if TYPE_CHECKING:
    from gateway_redis.invalidation import InvalidationBus
    from middleware.websocket._connection import Connection
    from middleware.websocket._fanout import Fanout
    from middleware.websocket._presence import Presences
    from middleware.websocket.channels import ChannelPolicy
    from middleware.websocket.limits import WebSocketLimits

__all__ = ["NAMESPACE", "SocketControl"]

_log = logging.getLogger("middleware.websocket.bridge")
_COMPONENT = "websocket"
NAMESPACE: Final = "ws"
_MAX_CLOSE_REASON: Final = 123  # bytes: RFC 6455 leaves 123 for the reason
_MAX_REASON: Final = 64  # characters of an unsubscribed frame's reason
_MAX_PENDING: Final = 10_000  # queued (un)subscribe commands per instance
_OPS: Final = frozenset({"disconnect", "unsubscribe", "subscribe"})


class SocketControl:
    """Disconnect, unsubscribe and subscribe a user's sockets on every instance; see the
    module docstring. Built by the bridge (:attr:`WebSocketBridge.sockets
    <middleware.websocket.WebSocketBridge.sockets>`); not constructed directly."""

    def __init__(
        self,
        *,
        bus: InvalidationBus,
        policy: ChannelPolicy,
        limits: WebSocketLimits,
        fanout: Fanout,
        of_user: Callable[[str], Iterable[Connection]],
        presence: Presences | None = None,
    ) -> None:
        self._bus = bus
        self._presence = presence
        self._policy = policy
        self._limits = limits
        self._fanout = fanout
        self._of_user = of_user
        self._pending: deque[tuple[str, str, str, str]] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._remove = bus.on_event(NAMESPACE, self._on_event)

    # -- the API ----------------------------------------------------------------------

    async def disconnect(self, user: str, reason: str = "") -> None:
        """Close every socket of ``user`` (a subject) with 4000 and ``reason``."""
        _subject(user)
        if not isinstance(reason, str) or len(reason.encode("utf-8")) > _MAX_CLOSE_REASON:
            raise ValueError(f"reason must be a string of at most {_MAX_CLOSE_REASON} bytes")
        await self._send({"op": "disconnect", "user": id_digest(user), "reason": reason})

    async def unsubscribe(self, user: str, channel: str, reason: str = "server") -> None:
        """Remove ``channel`` from every socket of ``user``; they are told ``reason``."""
        _subject(user)
        self._channel(channel)
        if not isinstance(reason, str) or not reason or len(reason) > _MAX_REASON:
            raise ValueError(f"reason must be a non-empty string of at most {_MAX_REASON}")
        event = {"op": "unsubscribe", "user": id_digest(user), "channel": channel}
        await self._send({**event, "reason": reason})

    async def subscribe(self, user: str, channel: str) -> None:
        """Subscribe every socket of ``user`` to ``channel`` (no permission check)."""
        _subject(user)
        self._channel(channel)
        await self._send({"op": "subscribe", "user": id_digest(user), "channel": channel})

    def _channel(self, channel: str) -> None:
        if not isinstance(channel, str) or not self._policy.valid_name(channel):
            raise ValueError("channel must be a valid channel name (not a reserved one)")

    async def _send(self, event: Mapping[str, Any]) -> None:
        if self._closed:
            raise RuntimeError("the websocket bridge is closed")
        await self._bus.publish(NAMESPACE, event)

    # -- applying events (here and from other instances) -------------------------------

    def _on_event(self, event: Mapping[str, Any]) -> None:
        op, user = event.get("op"), event.get("user")
        if self._closed or op not in _OPS or not isinstance(user, str):
            return
        conns = [c for c in self._of_user(user) if c.closing is None]
        if not conns:
            return
        if op == "disconnect":
            reason = event.get("reason")
            reason = reason if isinstance(reason, str) else ""
            for conn in conns:
                conn.close(CloseCode.DISCONNECTED, reason[:_MAX_CLOSE_REASON])
            return
        channel, reason = event.get("channel"), event.get("reason", "server")
        if not isinstance(channel, str) or not self._policy.valid_name(channel):
            return
        if len(self._pending) >= _MAX_PENDING:
            _log.warning(
                "websocket server command dropped: %d pending",
                len(self._pending),
                extra=log_fields(_COMPONENT, "websocket_command_dropped", str(op)),
            )
            return
        self._pending.append((str(op), user, channel, str(reason)[:_MAX_REASON]))
        self._wake.set()
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="gateway-ws-server-api"
            )

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                op, user, channel, reason = self._pending.popleft()
                for conn in list(self._of_user(user)):
                    try:
                        if op == "subscribe":
                            await self._subscribe(conn, channel)
                        else:
                            await self._unsubscribe(conn, channel, reason)
                    except Exception:  # a bug: log it, keep serving commands
                        _log.exception(
                            "websocket server command failed",
                            extra=log_fields(_COMPONENT, "websocket_command_failed", op),
                        )

    async def _unsubscribe(self, conn: Connection, channel: str, reason: str) -> None:
        if conn.closing is not None or channel not in conn.channels:
            return
        await self._fanout.unsubscribe(conn, [channel])
        conn.push_control(unsubscribed_frame([channel], reason))
        if self._presence is not None:
            self._presence.leave(conn, [channel])  # queued

    async def _subscribe(self, conn: Connection, channel: str) -> None:
        if conn.closing is not None:
            return
        if channel in conn.channels:
            _grant(conn, channel)  # held already: now by the server's decision as well
            return
        if len(conn.channels) >= self._limits.max_channels:
            _log.info(
                "websocket server subscribe skipped: the socket is at max_channels",
                extra=log_fields(_COMPONENT, "websocket_command_skipped", "limit_exceeded"),
            )
            return
        try:
            await self._fanout.subscribe(conn, [channel])
        except RedisUnavailable as exc:
            _log.warning(
                "websocket server subscribe failed: %s",
                type(exc).__name__,
                extra=log_fields(_COMPONENT, "websocket_command_failed", "unavailable"),
            )
            return
        if channel in conn.channels:  # not closing meanwhile
            _grant(conn, channel)
            conn.push_control(proto.reply_frame("subscribed", None, channels=[channel]))
            if self._presence is not None:
                self._presence.join(conn, [channel])  # queued

    async def aclose(self) -> None:
        """Stop applying events and end the task; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._remove()
        self._pending.clear()
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait(task)
            if not task.cancelled():
                task.exception()


def _grant(conn: Connection, channel: str) -> None:
    if conn.granted is None:
        conn.granted = set()
    conn.granted.add(channel)


def _subject(user: str) -> None:
    if not isinstance(user, str) or not user:
        raise ValueError("user must be a non-empty subject (token sub or session user id)")
