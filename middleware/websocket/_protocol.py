"""The bridge's JSON protocol: parsing client frames and building server frames (private).

Client frames are parsed into :class:`Request` or rejected with :class:`BadRequest`
(which carries the client's ``id`` when it could be read). Server frames are built as text,
with compact separators; a message frame is built once per Redis message by splicing the
publisher's JSON into a per-channel prefix, never by re-encoding it per socket.
"""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

from gateway_redis.pubsub import Message

__all__ = [
    "BadRequest",
    "CloseCode",
    "Request",
    "batch_frame",
    "batched",
    "error_frame",
    "history_frames",
    "message_data",
    "message_prefix",
    "parse",
    "position_suffix",
    "reply_frame",
    "resync_frame",
]

RequestId = int | str | None
_MAX_ID_LENGTH: Final = 64
_MAX_SAFE_INT: Final = 2**53
_TYPES: Final = frozenset(
    {"subscribe", "unsubscribe", "publish", "ping", "pong", "refresh", "presence", "presence_stats"}
)
_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode
PING_FRAME: Final = '{"type":"ping"}'
REFRESH_REQUIRED_FRAME: Final = '{"type":"refresh_required"}'


class CloseCode(enum.IntEnum):
    """The close codes the bridge sends.

    ====  ==========================================================================
    1000  normal closure
    1001  the server is shutting down (:meth:`WebSocketBridge.aclose
          <middleware.websocket.WebSocketBridge.aclose>`); uvicorn's own shutdown
          would close open sockets with 1012 before the lifespan ends, so
          :meth:`Gateway.lifespan <middleware.Gateway.lifespan>` closes the bridge on
          SIGTERM/SIGINT before uvicorn hears it
    1008  policy violation: handshake refused (no or bad credentials, Origin not allowed,
          too many sockets for the user) or persistent flooding after ``rate_limited``
    1009  a frame over ``max_message_bytes``
    1011  internal error (the channel's subscription could not be restored)
    1013  try again later: outbox overflow with ``overflow="close"``; a handshake while
          the session store is unreachable
    4000  disconnected by the server (:attr:`WebSocketBridge.sockets
          <middleware.websocket.WebSocketBridge.sockets>`), its reason in the close
          reason
    4401  the token expired (``exp`` + leeway, unrefreshed) or was revoked (log in again)
    4403  the session ended: logout, session deleted or expired, "log out everywhere"
    4408  idle timeout: nothing received, server pings unanswered
    ====  ==========================================================================
    """

    GOING_AWAY = 1001
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    TRY_AGAIN_LATER = 1013
    DISCONNECTED = 4000
    TOKEN_ENDED = 4401
    SESSION_ENDED = 4403
    IDLE_TIMEOUT = 4408


class BadRequest(Exception):
    """A malformed client frame; ``id`` is the client's id when it could be read."""

    def __init__(self, message: str, request_id: RequestId = None) -> None:
        super().__init__(message)
        self.message = message
        self.id = request_id


@dataclass(frozen=True, slots=True)
class Request:
    """One well-formed client frame. ``channels`` for (un)subscribe, ``channel`` and
    ``data`` for publish (``channel`` alone for presence and presence_stats), ``data``
    (the token, a non-empty string) for refresh; ``recover`` (subscribe) maps channels to
    the ``(epoch, offset)`` the client last saw."""

    type: str
    id: RequestId
    channels: tuple[str, ...] = ()
    channel: str = ""
    data: Any = None
    recover: dict[str, tuple[str, int]] | None = None


def parse(text: str, max_channels: int) -> Request:
    """Parse one text frame; raises :class:`BadRequest`."""
    try:
        frame = json.loads(text)
    except (ValueError, RecursionError):
        raise BadRequest("The frame is not valid JSON.") from None
    if not isinstance(frame, dict):
        raise BadRequest("A frame must be a JSON object.")
    request_id = frame.get("id")
    if request_id is not None and not _valid_id(request_id):
        raise BadRequest("'id' must be an integer or a short string.")
    kind = frame.get("type")
    if not isinstance(kind, str) or kind not in _TYPES:
        raise BadRequest("Unknown or missing 'type'.", request_id)
    if kind in ("subscribe", "unsubscribe"):
        channels = frame.get("channels")
        if not isinstance(channels, list) or not channels:
            raise BadRequest("'channels' must be a non-empty list of strings.", request_id)
        if len(channels) > max_channels:
            raise BadRequest(f"At most {max_channels} channels per request.", request_id)
        if not all(isinstance(c, str) for c in channels):
            raise BadRequest("'channels' must be a non-empty list of strings.", request_id)
        names = tuple(dict.fromkeys(channels))
        recover = None
        if kind == "subscribe" and "recover" in frame:
            recover = _parse_recover(frame["recover"], names, request_id)
        return Request(kind, request_id, channels=names, recover=recover)
    if kind == "publish":
        channel = frame.get("channel")
        if not isinstance(channel, str):
            raise BadRequest("'channel' must be a string.", request_id)
        if "data" not in frame:
            raise BadRequest("'data' is required.", request_id)
        data = frame["data"]
        try:
            bad = _has_nan(data)
        except RecursionError:
            bad = True
        if bad:
            raise BadRequest("'data' must be valid JSON (no NaN or Infinity).", request_id)
        return Request(kind, request_id, channel=channel, data=data)
    if kind in ("presence", "presence_stats"):
        channel = frame.get("channel")
        if not isinstance(channel, str):
            raise BadRequest("'channel' must be a string.", request_id)
        return Request(kind, request_id, channel=channel)
    if kind == "refresh":
        token = frame.get("token")
        if not isinstance(token, str) or not token:
            raise BadRequest("'token' must be a non-empty string.", request_id)
        return Request(kind, request_id, data=token)
    return Request(kind, request_id)


def _parse_recover(
    value: object, channels: tuple[str, ...], request_id: RequestId
) -> dict[str, tuple[str, int]]:
    # {"<channel>": {"epoch": "<text>", "offset": <int >= 0>}, ...}, channels of the request
    shape = '\'recover\' must map channels of the request to {"epoch": ..., "offset": ...}.'
    if not isinstance(value, dict):
        raise BadRequest(shape, request_id)
    recover: dict[str, tuple[str, int]] = {}
    for channel, position in value.items():
        if channel not in channels or not isinstance(position, dict):
            raise BadRequest(shape, request_id)
        epoch, offset = position.get("epoch"), position.get("offset")
        if not isinstance(epoch, str) or not 0 < len(epoch) <= _MAX_ID_LENGTH:
            raise BadRequest(shape, request_id)
        if isinstance(offset, bool) or not isinstance(offset, int):
            raise BadRequest(shape, request_id)
        if not 0 <= offset < _MAX_SAFE_INT:
            raise BadRequest(shape, request_id)
        recover[channel] = (epoch, offset)
    return recover


def _valid_id(value: object) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return -_MAX_SAFE_INT < value < _MAX_SAFE_INT
    return isinstance(value, str) and len(value) <= _MAX_ID_LENGTH


def _has_nan(value: Any) -> bool:
    # json.loads accepts NaN/Infinity; browsers' JSON.parse does not. Nesting is bounded
    # by json.loads itself (RecursionError above), so plain recursion is safe here.
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_has_nan(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_nan(v) for v in value)
    return False


def reply_frame(kind: str, request_id: RequestId, **fields: Any) -> str:
    """``{"type": kind, ...fields, "id": id}`` (``id`` only when the client sent one)."""
    frame: dict[str, Any] = {"type": kind, **fields}
    if request_id is not None:
        frame["id"] = request_id
    return _dumps(frame)


def error_frame(code: str, message: str, request_id: RequestId = None) -> str:
    """An ``error`` frame; ``message`` is generic, never an internal detail."""
    return reply_frame("error", request_id, code=code, message=message)


def resync_frame(channels: Iterable[str]) -> str:
    """``{"type": "resync", "channels": [...]}``."""
    return _dumps({"type": "resync", "channels": list(channels)})


def batch_frame(frames: list[str]) -> str:
    """One ``batch`` frame joining already-serialized frames, in order."""
    return '{"type":"batch","messages":[' + ",".join(frames) + "]}"


def batched(frames: list[str], limit: int) -> list[str]:
    """``frames`` (serialized, in order) as frames to send: alone, or joined in ``batch``
    frames of at most about ``limit`` characters each."""
    if len(frames) <= 1:
        return frames
    out: list[str] = []
    chunk: list[str] = []
    size = 0
    for text in frames:
        if chunk and size + len(text) > limit:
            out.append(chunk[0] if len(chunk) == 1 else batch_frame(chunk))
            chunk, size = [], 0
        chunk.append(text)
        size += len(text) + 1
    if chunk:
        out.append(chunk[0] if len(chunk) == 1 else batch_frame(chunk))
    return out


def message_prefix(channel: str) -> str:
    """The text of a message frame up to its data: ``{"type":"message","channel":..,"data":``."""
    return '{"type":"message","channel":' + _dumps(channel) + ',"data":'


def position_suffix(message: Message) -> str:
    """``,"offset":<n>,"epoch":"<e>"`` for a message with a history position, else ``""``:
    spliced in before a message frame's final ``}``."""
    if message.offset is None or message.epoch is None:
        return ""
    return ',"offset":' + str(message.offset) + ',"epoch":' + _dumps(message.epoch)


def history_frames(channel: str, epoch: str, first: int, payloads: Iterable[str]) -> list[str]:
    """The message frames of ``payloads`` (strict JSON, as
    :meth:`~gateway_redis.ChannelHistory.read_payloads` gives them) on ``channel``, at
    offsets ``first``, ``first + 1``...: the same text as for a :class:`Message` (its
    :func:`message_data` and :func:`position_suffix`), built without one."""
    prefix = message_prefix(channel)
    tail = ',"epoch":' + _dumps(epoch) + "}"
    return [f'{prefix}{data},"offset":{at}{tail}' for at, data in enumerate(payloads, first)]


def message_data(message: Message) -> str:
    """The JSON text of a Redis message's data, for splicing into a frame.

    JSON payloads go out as the publisher wrote them; payloads that are not JSON (plain
    text from redis-cli) become a JSON string. Python's parser accepts ``NaN`` and
    ``Infinity``, which browsers reject: such payloads are re-encoded (non-finite numbers
    become strings' worth of nothing: the whole payload is then sent as a string).
    """
    payload = message.payload
    data = message.data
    if data is None and payload.strip() != "null":
        return _dumps(payload)
    if ("NaN" in payload or "Infinity" in payload) and _has_nan(data):
        return _dumps(payload)
    return payload.strip()
