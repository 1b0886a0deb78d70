"""A socket's outbox without Redis: a run of replies (the messages a socket catches up with
on ``subscribe`` with ``recover``, issue 15) is one outbox entry, yet counts and leaves as
the frames it holds, in order, batched like any others."""

from __future__ import annotations

import json
from typing import Any

from middleware.websocket._auth import Identity
from middleware.websocket._connection import Connection, Frame
from middleware.websocket.limits import WebSocketLimits
from tests.twins import idle_connection


def socket(**limits: Any) -> Connection:
    identity = Identity(subject="s", user="u", method="token", cookie=False)
    return idle_connection(identity, limits=WebSocketLimits(**limits))


def frames(sent: list[str]) -> list[Any]:
    out: list[Any] = []
    for text in sent:
        frame = json.loads(text)
        out.extend(frame["messages"] if frame["type"] == "batch" else [frame])
    return out


async def test_a_run_leaves_as_its_frames_in_order_and_counts_as_them() -> None:
    conn = socket(queue_size=100, batch_max_bytes=1024)
    run = [json.dumps({"type": "message", "offset": n, "pad": "x" * 40}) for n in range(50)]
    conn.push_control('{"type":"subscribed"}')
    conn.push_control(run)
    conn.push(Frame("c", '{"type":"message","offset":50}'))
    assert conn.queued == 52
    sent = conn._take()
    assert len(sent) > 1  # batches of at most about batch_max_bytes
    assert all(len(text) < 1024 + 100 for text in sent)
    got = frames(sent)
    assert got[0] == {"type": "subscribed"}
    assert [f["offset"] for f in got[1:]] == list(range(51))
    assert conn.queued == 0
    assert conn._take() == []


async def test_a_run_as_long_as_the_outbox_stops_the_reader_until_it_is_taken() -> None:
    conn = socket(queue_size=10)
    conn.push_control(['{"n":1}'] * 9)
    assert not conn._full
    conn.push_control(['{"n":2}'])
    assert conn._full  # back-pressure: as for ten replies pushed one by one
    assert len(frames(conn._take())) == 10
    assert not conn._full
    conn.close(1000)
    conn.push_control(['{"n":3}'])  # a closing socket queues nothing more
    assert conn.queued == 0
