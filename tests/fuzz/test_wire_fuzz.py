"""Fuzzing what arrives from outside on the wire: WebSocket client frames
(``middleware.websocket._protocol.parse``) and pub/sub bodies from other publishers
(``gateway_redis.pubsub.envelope``), and the frames the bridge builds from them.

Documented errors: ``parse`` raises ``BadRequest`` only; ``envelope.decode`` never raises;
``check_names`` raises ``TypeError``/``ValueError``. What ``parse`` accepts must go on
without surprises (a publish's data serializes with ``envelope.dumps``), and every message
frame built from any body is JSON a browser's strict ``JSON.parse`` accepts.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from gateway_redis.pubsub import Message, envelope
from middleware.websocket._protocol import (
    BadRequest,
    Request,
    message_data,
    message_prefix,
    parse,
)

MAX_CHANNELS = 5


def _reject_constant(name: str) -> Any:
    raise AssertionError(f"{name} is not JSON a browser accepts")


def strict_loads(text: str) -> Any:
    """``JSON.parse``: no NaN, Infinity or -Infinity."""
    return json.loads(text, parse_constant=_reject_constant)


json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.integers(min_value=2**1000, max_value=2**1100),  # past float range
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
ids = st.one_of(
    st.none(),
    st.integers(),
    st.text(max_size=80),
    st.booleans(),
    st.floats(),
    st.lists(st.integers(), max_size=2),
)
frames = st.one_of(
    st.text(max_size=200),
    st.builds(
        lambda kind, rid, channels, channel, data, extra: json.dumps(
            {
                "type": kind,
                "id": rid,
                "channels": channels,
                "channel": channel,
                "data": data,
                **extra,
            }
        ),
        st.one_of(
            st.sampled_from(("subscribe", "unsubscribe", "publish", "ping", "pong")), json_scalars
        ),
        ids,
        st.one_of(st.lists(st.one_of(st.text(max_size=10), json_scalars), max_size=8), json_values),
        st.one_of(st.text(max_size=10), json_scalars),
        json_values,
        st.dictionaries(st.text(max_size=5), json_values, max_size=2),
    ),
    json_values.map(json.dumps),
)


@given(frames)
@example("[" * 100_000)  # deeper than json can go
@example('{"type":"publish","channel":"c","data":' + "[" * 5000 + "]" * 5000 + "}")
@example('{"type":"publish","channel":"c","data":[NaN]}')
@example('{"type":"subscribe","channels":["a","a"],"id":9007199254740993}')
@example('{"type":"ping","id":true}')
def test_client_frames_parse_or_raise_bad_request(text: str) -> None:
    try:
        request = parse(text, MAX_CHANNELS)
    except BadRequest as exc:
        rejected: BadRequest | None = exc
    else:
        rejected = None
    if rejected is not None:
        assert rejected.id is None or isinstance(rejected.id, (int, str))
        assert not isinstance(rejected.id, bool)
        return
    assert isinstance(request, Request)
    assert request.id is None or (
        isinstance(request.id, (int, str)) and not isinstance(request.id, bool)
    )
    if request.type in ("subscribe", "unsubscribe"):
        assert 1 <= len(request.channels) <= MAX_CHANNELS
        assert all(isinstance(c, str) for c in request.channels)
        assert len(set(request.channels)) == len(request.channels)
    if request.type == "publish":
        assert isinstance(request.channel, str)
        body = envelope.dumps(request.data)  # what publishing it does next: must not raise
        assert strict_loads(body.decode()) == request.data


envelope_bodies = st.one_of(
    st.binary(max_size=200),
    st.text(max_size=100).map(str.encode),
    st.builds(
        lambda head, mid, tail: b'{"_gw":' + head + mid + tail + b"}",
        st.one_of(st.binary(max_size=30), json_values.map(lambda v: json.dumps(v).encode())),
        st.sampled_from((b',"data":', b',"data" :', b",", b"")),
        st.one_of(st.binary(max_size=30), json_values.map(lambda v: json.dumps(v).encode())),
    ),
)


@given(envelope_bodies)
@example(b'{"_gw":{"traceparent":"00-x"},"data":NaN}')
@example(b'{"_gw":{},"data":' + b"[" * 100_000 + b"}")
@example(b'{"_gw":{"a":1},"data":1}')
@example(b'{"_gw":{"a":"b"},"data":1}x}')
@example(b"\xff\xfe")
def test_bodies_from_other_publishers_decode_and_make_valid_frames(raw: bytes) -> None:
    payload, data, context = envelope.decode(raw)  # documented: never raises
    assert isinstance(payload, str)
    if context is not None:
        assert context
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in context.items())
    frame = message_prefix("chan") + message_data(Message("chan", payload, data)) + "}"
    decoded = strict_loads(frame)
    assert decoded["type"] == "message"
    assert decoded["channel"] == "chan"


finite_json = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=20),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


@given(finite_json, st.dictionaries(st.text(max_size=10), st.text(max_size=20), max_size=3))
@example({"_gw": {}}, {})
@example({"_gw": {"traceparent": "x"}, "data": 1}, {})
def test_what_we_publish_decodes_to_what_was_sent(value: Any, context: dict[str, str]) -> None:
    body = envelope.dumps(value)
    payload, data, got = envelope.decode(envelope.encode(body, context))
    assert payload == body.decode()
    assert data == value
    assert (dict(got) if got is not None else {}) == context


@given(
    st.lists(
        st.one_of(st.text(max_size=30), st.binary(max_size=5), st.integers(), st.none()), max_size=4
    )
)
@example(["\ud800"])  # a lone surrogate cannot be encoded
@example(["__gateway_redis__:x"])
@example(["x" * 1025])
def test_channel_names_are_checked_with_documented_errors(names: list[object]) -> None:
    try:
        checked = envelope.check_names(tuple(names), "channel")
    except (TypeError, ValueError):
        return
    assert checked
    assert all(
        isinstance(n, str) and n and len(n.encode()) <= envelope.MAX_NAME_BYTES for n in checked
    )
