"""The pub/sub wire format: what :meth:`PubSubHub.publish` writes and what subscribers read.

This module is the contract for every other publisher and subscriber on the same Redis
(redis-cli, a Go service, another language's client). It is public and stable.

Channel names
    Non-empty text of at most :data:`MAX_NAME_BYTES` UTF-8 bytes. Names starting with
    :data:`RESERVED` belong to the library (each hub's liveness channel) and are refused.
    On the wire every name carries ``RedisConfig.channel_prefix`` in front; patterns get
    the prefix with its glob characters escaped. A sharded channel (listed in
    ``RedisConfig.sharded_channels``) is published with SPUBLISH, any other with PUBLISH.

Message body
    The UTF-8 JSON of the published value, compact (``separators=(",", ":")``), non-ASCII
    kept as is, no NaN or Infinity. A subscriber delivers any body as text and, when it is
    JSON, decoded: plain JSON from another publisher arrives exactly as written.

Trace envelope
    When the publisher is inside a trace, the body is wrapped so the trace context travels
    with it::

        {"_gw":{"traceparent":"00-...","tracestate":"..."},"data":<the JSON body>}

    byte for byte in that shape: it starts with ``{"_gw":``, then a JSON object whose keys
    and values are all strings (W3C propagation headers), then ``,"data":``, the original
    body unchanged, and a final ``}``. A reader that knows the format slices the body back
    out; one that does not still reads valid JSON. A body that itself starts with
    ``{"_gw":`` is always wrapped (with ``"_gw":{}``), so plain JSON is never mistaken for
    an envelope. Anything that does not match the shape exactly is delivered as plain JSON.

History position
    A message published on a channel with history (:mod:`gateway_redis.pubsub.history`)
    always travels in the envelope, whose object then also holds ``"epoch"`` (the
    channel's history epoch, text) and ``"offset"`` (its position in that epoch, decimal
    digits as text, starting at 1), after any trace headers::

        {"_gw":{"epoch":"9f2c41d07a1b","offset":"17"},"data":<the JSON body>}

    All values are still strings, so a reader that predates positions decodes the body
    exactly as before (it sees the two keys among the propagation headers).
    :func:`decode_message` returns them as a :class:`Position`; :func:`decode` leaves
    them out of the trace context; :func:`history_payloads` checks them and slices the
    bodies out of many such messages at once, without keeping them decoded.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any, Final, NamedTuple

from gateway_redis.errors import SerializationError

__all__ = [
    "MAX_NAME_BYTES",
    "RESERVED",
    "Position",
    "check_names",
    "decode",
    "decode_message",
    "dumps",
    "encode",
    "history_payloads",
]

RESERVED: Final = "__gateway_redis__:"
"""Channel names starting with this belong to the library (the liveness channels)."""
MAX_NAME_BYTES: Final = 1024
"""Longest channel name or pattern accepted, in UTF-8 bytes."""

_HEAD: Final = b'{"_gw":'
_MID: Final = b',"data":'
_MID_TEXT: Final = _MID.decode()
_HEAD_TEXT: Final = _HEAD.decode()
_DECODER: Final = json.JSONDecoder()
_MAX_EPOCH: Final = 64  # characters


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_STRICT: Final = json.JSONDecoder(parse_constant=_refuse_constant)  # no NaN, no Infinity


class Position(NamedTuple):
    """Where a message sits in its channel's history: ``epoch`` (text that changes whenever
    the history may have been lost) and ``offset`` (1 for the first message of an epoch,
    +1 per message; 0 means "nothing published yet in this epoch")."""

    epoch: str
    offset: int


def check_names(names: tuple[object, ...], what: str) -> list[str]:
    """Validate channel names or patterns; returns them without duplicates, in order.

    ``what`` names them in error messages (``"channel"``, ``"pattern"``). Raises
    :class:`TypeError` for non-strings and :class:`ValueError` for none at all, empty
    names, names over :data:`MAX_NAME_BYTES` UTF-8 bytes, names that cannot be encoded,
    and names in the library's reserved namespace (:data:`RESERVED`).
    """
    if not names:
        raise ValueError(f"give at least one {what}")
    checked: list[str] = []
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"{what} must be str, got {type(name).__name__}")
        if not name:
            raise ValueError(f"{what} must not be empty")
        try:
            size = len(name.encode())
        except UnicodeEncodeError:
            raise ValueError(f"{what} {name!r} is not valid text") from None
        if size > MAX_NAME_BYTES:
            raise ValueError(f"{what} is {size} bytes long; the limit is {MAX_NAME_BYTES}")
        if name.startswith(RESERVED):
            raise ValueError(f"{what} names starting with {RESERVED!r} are reserved")
        checked.append(name)
    return list(dict.fromkeys(checked))


def dumps(message: Any) -> bytes:
    """The message body for ``message``: compact UTF-8 JSON.

    Raises :class:`~gateway_redis.errors.SerializationError` for a value that is not
    JSON-serializable, contains NaN or Infinity, or nests too deeply.
    """
    try:
        text = json.dumps(message, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        return text.encode()
    except (TypeError, ValueError, RecursionError) as exc:
        raise SerializationError(f"message is not JSON-serializable: {exc}") from exc


def encode(body: bytes, context: Mapping[str, str]) -> bytes:
    """The bytes to publish for a JSON ``body`` (UTF-8) and a trace ``context``.

    Without trace context the body goes out as is; with one it is wrapped in the envelope
    (module docstring) by concatenation, so receivers can slice ``body`` back out byte for
    byte. A body that itself starts like an envelope is always wrapped.
    """
    if not context and not body.startswith(_HEAD):
        return body
    header = json.dumps(dict(context), separators=(",", ":")).encode()
    return _HEAD + header + _MID + body + b"}"


def decode(raw: bytes) -> tuple[str, Any, Mapping[str, str] | None]:
    """``(payload, data, trace_context)`` for a received message body.

    ``payload`` is the publisher's text (the inner JSON for an envelope), decoded as UTF-8
    with replacement characters for invalid bytes; ``data`` is the decoded JSON or None when
    the payload is not JSON; ``trace_context`` is the envelope's propagation headers (a
    read-only mapping, without the history position) or None. Never raises.
    """
    payload, data, context, _ = decode_message(raw)
    return payload, data, context


def decode_message(raw: bytes) -> tuple[str, Any, Mapping[str, str] | None, Position | None]:
    """Like :func:`decode`, plus the message's history :class:`Position` (None when the
    envelope carries none, or a malformed one). Never raises."""
    if raw.startswith(_HEAD) and raw.endswith(b"}"):
        unwrapped = _unwrap(raw.decode("utf-8", "replace"))
        if unwrapped is not None:
            inner, data, context = unwrapped
            position = _position(context)
            return inner, data, (MappingProxyType(context) if context else None), position
    text = raw.decode("utf-8", "replace")
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):  # not JSON, or nested deeper than json can go
        data = None
    return text, data, None, None


def history_payloads(raws: Sequence[bytes], epoch: str, first: int) -> list[str] | None:
    """The payloads (the publishers' JSON text, as :func:`decode` gives them) of messages
    kept in a channel's history, ``raws[i]`` being expected at ``Position(epoch, first +
    i)``; None unless every one is an envelope carrying exactly that position around a
    payload that is strict JSON (no NaN or Infinity, no surrounding whitespace).

    For handing many messages on as text: each payload is checked, not kept decoded (no
    object per message survives the call). An envelope without trace headers is recognised
    by its exact opening. Never raises.
    """
    fast = epoch.isascii() and epoch.isalnum()  # written as is: no escaping in JSON
    opening = f'{{"_gw":{{"epoch":"{epoch}","offset":"'
    payloads: list[str] = []
    append = payloads.append
    check = _STRICT.raw_decode
    for offset, raw in enumerate(raws, first):
        text = raw.decode("utf-8", "replace")
        head = f'{opening}{offset}"}},"data":'
        start = len(head) if fast and text.startswith(head) else None
        if start is None:
            start = _traced_start(text, Position(epoch, offset))
        if start is None or not text.endswith("}"):
            return None
        payload = text[start:-1]
        try:
            end = check(payload)[1]
        except (ValueError, RecursionError):
            return None
        if end != len(payload):
            return None
        append(payload)
    return payloads


def _traced_start(text: str, at: Position) -> int | None:
    # Where the payload of an envelope with trace headers starts, if it carries ``at``.
    split = _split(text)
    if split is None:
        return None
    context, end = split
    return end + len(_MID) if _position(context) == at else None


def _position(context: dict[str, str]) -> Position | None:
    # Takes the position keys out of the context; None unless both are well formed.
    if "epoch" not in context and "offset" not in context:
        return None
    epoch, offset = context.pop("epoch", ""), context.pop("offset", "")
    if not 0 < len(epoch) <= _MAX_EPOCH or not 0 < len(offset) <= 18:
        return None
    return Position(epoch, int(offset)) if offset.isascii() and offset.isdigit() else None


def _split(text: str) -> tuple[dict[str, str], int] | None:
    # '{"_gw":' <object of strings> ',"data":' ...: the object, and where ',"data":' starts.
    if not text.startswith(_HEAD_TEXT):
        return None
    try:
        context, end = _DECODER.raw_decode(text, len(_HEAD))
    except (ValueError, RecursionError):
        return None
    if not isinstance(context, dict) or not text.startswith(_MID_TEXT, end):
        return None
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in context.items()):
        return None
    return context, end


def _unwrap(text: str) -> tuple[str, Any, dict[str, str]] | None:
    # Exactly '{"_gw":' <object of strings> ',"data":' <one JSON value> '}', nothing else.
    split = _split(text)
    if split is None:
        return None
    context, end = split
    inner = text[end + len(_MID) : -1]
    try:
        data = json.loads(inner)
    except (ValueError, RecursionError):
        return None
    return inner, data, context
