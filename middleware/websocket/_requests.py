"""What the bridge does with each client frame (private).

Requests of one socket are handled one at a time, in order, so replies come back in the
order of the requests. Every outcome is exactly one reply or one error frame, except a
client ``pong`` (no reply) and a frame over the rate limit (``rate_limited``, or a close).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway_redis.errors import RedisUnavailable, SerializationError
from middleware.errors import ServiceUnavailable
from middleware.websocket import _protocol as proto
from middleware.websocket import _recovery as recovery

if TYPE_CHECKING:
    from middleware.websocket._connection import Connection
    from middleware.websocket.bridge import WebSocketBridge

__all__ = ["handle_request"]

_FORBIDDEN = "Not allowed."
_UNAVAILABLE = "Temporarily unavailable; retry shortly."
_BAD_NAME = "Invalid channel name."


async def handle_request(bridge: WebSocketBridge, conn: Connection, text: str) -> None:
    """Parse and serve one text frame from ``conn``."""
    try:
        request = proto.parse(text, bridge.limits.max_channels)
    except proto.BadRequest as exc:
        if conn.allow(exc.id):
            conn.push_control(proto.error_frame("bad_request", exc.message, exc.id))
        return
    if not conn.allow(request.id):
        return
    kind = request.type
    if kind == "ping":
        conn.push_control(proto.reply_frame("pong", request.id))
    elif kind == "subscribe":
        await _subscribe(bridge, conn, request)
    elif kind == "unsubscribe":
        await _unsubscribe(bridge, conn, request)
    elif kind == "publish":
        await _publish(bridge, conn, request)
    elif kind == "refresh":
        await bridge._refresher.refresh(conn, request)
    elif kind in ("presence", "presence_stats"):
        await _presence(bridge, conn, request)
    # "pong" answers a server ping: receiving it was the point.


def _error(conn: Connection, code: str, message: str, request: proto.Request) -> None:
    conn.push_control(proto.error_frame(code, message, request.id))


async def _subscribe(bridge: WebSocketBridge, conn: Connection, request: proto.Request) -> None:
    policy = bridge.policy
    names = request.channels
    if not all(policy.valid_name(name) for name in names):
        _error(conn, "bad_request", _BAD_NAME, request)
        return
    new = [name for name in names if name not in conn.channels]
    if len(conn.channels) + len(new) > bridge.limits.max_channels:
        limit = bridge.limits.max_channels
        _error(conn, "limit_exceeded", f"At most {limit} channels per connection.", request)
        return
    generation = bridge._reauth.generation
    try:
        for name in new:
            if not await policy.allows(conn.principal, "subscribe", name):
                _error(conn, "forbidden", _FORBIDDEN, request)
                return
    except ServiceUnavailable:
        _error(conn, "unavailable", _UNAVAILABLE, request)
        return
    histories = bridge._histories
    held = any(histories.of(name) is not None for name in new)
    try:
        # With history, every new channel is held (messages kept, not sent) while the
        # history is read: see _recovery.
        await bridge._fanout.subscribe(conn, new, hold=bridge.limits.queue_size if held else None)
    except RedisUnavailable:
        _error(conn, "unavailable", _UNAVAILABLE, request)
        return
    except ValueError:  # a name the hub refuses (its reserved namespace)
        _error(conn, "bad_request", _BAD_NAME, request)
        return
    if held:
        recover = request.recover or {}
        try:
            jobs = await recovery.catch_up(bridge._fanout, conn, histories, new, recover)
        except RedisUnavailable:
            await bridge._fanout.unsubscribe(conn, new)
            _error(conn, "unavailable", _UNAVAILABLE, request)
            return
        fields: dict[str, object] = {"positions": recovery.positions_of(jobs)}
        if request.recover is not None:
            done = {job.name: bool(job.recovered) for job in jobs}
            fields["recovered"] = {name: done.get(name, False) for name in request.recover}
        # No await from here on: the reply, then each channel's catch-up, then live.
        reply = proto.reply_frame("subscribed", request.id, channels=list(names), **fields)
        conn.push_control(reply)
        for job in jobs:
            recovery.deliver(bridge._fanout, conn, job)
    else:
        # No await since the subscription took effect: "subscribed" precedes every message.
        fields = {}
        if request.recover is not None:
            fields["recovered"] = dict.fromkeys(request.recover, False)
        reply = proto.reply_frame("subscribed", request.id, channels=list(names), **fields)
        conn.push_control(reply)
    if new and bridge._reauth.generation != generation:
        bridge._reauth.queue(conn)  # permissions changed while these were authorized
    bridge._presence.join(conn, new)  # queued, after the reply: presence channels only


async def _unsubscribe(bridge: WebSocketBridge, conn: Connection, request: proto.Request) -> None:
    names = request.channels
    if not all(bridge.policy.valid_name(name) for name in names):
        _error(conn, "bad_request", _BAD_NAME, request)
        return
    await bridge._fanout.unsubscribe(conn, names)
    conn.push_control(proto.reply_frame("unsubscribed", request.id, channels=list(names)))
    bridge._presence.leave(conn, names)  # queued


async def _publish(bridge: WebSocketBridge, conn: Connection, request: proto.Request) -> None:
    channel = request.channel
    if not bridge.policy.valid_name(channel):
        _error(conn, "bad_request", _BAD_NAME, request)
        return
    try:
        if not await bridge.policy.allows(conn.principal, "publish", channel):
            _error(conn, "forbidden", _FORBIDDEN, request)
            return
        _, position = await bridge._histories.publish(channel, request.data)
    except (ServiceUnavailable, RedisUnavailable):
        _error(conn, "unavailable", _UNAVAILABLE, request)
        return
    except SerializationError:
        _error(conn, "bad_request", "'data' must be JSON.", request)
        return
    except ValueError:
        _error(conn, "bad_request", _BAD_NAME, request)
        return
    fields = {} if position is None else {"epoch": position.epoch, "offset": position.offset}
    conn.push_control(proto.reply_frame("published", request.id, **fields))


async def _presence(bridge: WebSocketBridge, conn: Connection, request: proto.Request) -> None:
    # Who may subscribe to a channel may see its presence; nobody else learns anything.
    channel = request.channel
    if not bridge.policy.valid_name(channel):
        _error(conn, "bad_request", _BAD_NAME, request)
        return
    try:
        allowed = await bridge.policy.allows(conn.principal, "subscribe", channel)
        if allowed and bridge._presence.enabled(channel):
            fields: dict[str, object]
            if request.type == "presence_stats":
                stats = await bridge._presence.stats(channel)
                fields = {"connections": stats.connections, "users": stats.users}
            else:
                members = await bridge._presence.members(channel)
                clients = [{"user": m.user, "conn": m.conn} for m in members]
                fields = {"clients": clients}
    except (ServiceUnavailable, RedisUnavailable):
        _error(conn, "unavailable", _UNAVAILABLE, request)
        return
    if not allowed:
        _error(conn, "forbidden", _FORBIDDEN, request)
    elif not bridge._presence.enabled(channel):
        _error(conn, "bad_request", "This channel has no presence.", request)
    else:
        conn.push_control(proto.reply_frame(request.type, request.id, channel=channel, **fields))
