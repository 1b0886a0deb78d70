"""The bridge's protocol against the example gateway on a real uvicorn server."""

from __future__ import annotations

import asyncio
import json
import subprocess

import httpx
import redis

from gateway_redis.embedded import EmbeddedRedis, find_server_binary
from tests.websocket.wsutil import Gateway, frames, mint, next_message, request, subscribe


async def test_redis_cli_publish_reaches_a_browser_style_client(
    gateway: Gateway, redis_server: EmbeddedRedis
) -> None:
    token, _ = await gateway.login("bob", "bob-password")
    async with await gateway.connect(token) as ws:
        assert ws.subprotocol == "bearer"  # browsers require the server to pick one
        await subscribe(ws, "system:broadcast", "notifications:bob")
        cli = find_server_binary("cli")
        for channel, payload in (
            ("system:broadcast", '{"text": "from redis-cli", "n": [1, 2.5, null]}'),
            ("notifications:bob", "plain text, not JSON"),
        ):
            out = await asyncio.to_thread(
                subprocess.run,
                [cli, "-h", redis_server.host, "-p", str(redis_server.port),
                 "PUBLISH", channel, payload],
                capture_output=True, check=True, timeout=10,
            )  # fmt: skip
            assert out.stdout.strip() == b"1"  # one subscriber connection: the gateway's
        first = await next_message(ws)
        assert first == {
            "type": "message",
            "channel": "system:broadcast",
            "data": {"text": "from redis-cli", "n": [1, 2.5, None]},
        }
        second = await next_message(ws)
        assert second == {
            "type": "message",
            "channel": "notifications:bob",
            "data": "plain text, not JSON",
        }


async def test_subscribe_publish_ping_unsubscribe_echo_ids(gateway: Gateway) -> None:
    alice = mint("alice", roles=("admin",))
    async with await gateway.connect(alice, via="header") as ws:
        assert ws.subprotocol is None
        assert await request(ws, {"type": "ping", "id": "p-1"}) == {"type": "pong", "id": "p-1"}
        reply = await request(ws, {"type": "subscribe", "channels": ["system:broadcast"], "id": 7})
        position = reply.pop("positions")["system:broadcast"]  # a channel with history
        assert reply == {"type": "subscribed", "channels": ["system:broadcast"], "id": 7}
        epoch, offset = position["epoch"], position["offset"] + 1
        data = {"text": "héllo", "nested": {"list": [1, True, None]}}
        await ws.send(
            json.dumps({"type": "publish", "channel": "system:broadcast", "data": data, "id": 8})
        )
        got: list[dict[str, object]] = []
        while len(got) < 2:  # presence is on: the socket's own join frame may come
            got.extend(f for f in await frames(ws) if f["type"] not in ("join", "leave"))
        # The message may overtake the reply: it is delivered as soon as Redis has it.
        assert sorted(got, key=lambda f: str(f["type"])) == [
            {
                "type": "message",
                "channel": "system:broadcast",
                "data": data,
                "offset": offset,
                "epoch": epoch,
            },
            {"type": "published", "epoch": epoch, "offset": offset, "id": 8},
        ]
        reply = await request(ws, {"type": "unsubscribe", "channels": ["system:broadcast"]})
        assert reply == {"type": "unsubscribed", "channels": ["system:broadcast"]}
        await request(ws, {"type": "publish", "channel": "system:broadcast", "data": 1, "id": 9})
        assert await request(ws, {"type": "ping", "id": 10}) == {"type": "pong", "id": 10}


async def test_a_message_published_right_after_subscribed_is_delivered(gateway: Gateway) -> None:
    admin = redis.Redis(host="127.0.0.1", port=_redis_port(gateway))
    try:
        for attempt in range(20):
            async with await gateway.connect(mint(f"u{attempt}")) as ws:
                channel = f"notifications:u{attempt}"
                await subscribe(ws, channel)
                await asyncio.to_thread(admin.publish, channel, json.dumps(attempt))
                assert (await next_message(ws))["data"] == attempt
    finally:
        admin.close()


async def test_http_publish_needs_the_permission_and_counts_receivers(gateway: Gateway) -> None:
    bob_token, _ = await gateway.login("bob", "bob-password")
    alice_token, _ = await gateway.login("alice", "alice-password")
    async with await gateway.connect(bob_token) as ws, httpx.AsyncClient() as http:
        await subscribe(ws, "notifications:bob")
        url = gateway.http + "/api/channels/notifications:bob/publish"
        bob_auth = {"Authorization": f"Bearer {bob_token}"}
        denied = await http.post(url, json={"x": 1}, headers=bob_auth)
        assert denied.status_code == 403
        anonymous = await http.post(url, json={"x": 1})
        assert anonymous.status_code == 401
        ok = await http.post(
            url, json={"text": "for bob"}, headers={"Authorization": f"Bearer {alice_token}"}
        )
        assert ok.status_code == 200
        assert ok.json()["receivers"] == 1  # with "epoch" and "offset": history is on
        assert (await next_message(ws))["data"] == {"text": "for bob"}
        auth = {"Authorization": f"Bearer {alice_token}"}
        other_url = gateway.http + "/api/channels/private:x/publish"
        other = await http.post(other_url, json=1, headers=auth)
        assert other.status_code == 403  # outside the policy, even with the permission
        bad = await http.post(url, content=b"{not json", headers=auth)
        assert bad.status_code == 400
        huge = await http.post(url, content=b"[" + b"1," * 40_000 + b"1]", headers=auth)
        assert huge.status_code == 413


async def test_demo_page_and_its_assets_are_served(gateway: Gateway) -> None:
    async with httpx.AsyncClient(base_url=gateway.http) as http:
        page = await http.get("/")
        assert page.status_code == 200
        assert '<script src="/static/app.js">' in page.text
        assert "//" not in page.text  # no external resources (no CDN)
        script = await http.get("/static/app.js")
        assert script.status_code == 200
        assert 'new WebSocket(url, ["bearer", token])' in script.text
        plain = await http.get("/ws")
        assert plain.status_code in (404, 426)


async def test_queued_messages_arrive_as_one_batch_in_order(gateway: Gateway) -> None:
    async with await gateway.connect(mint("carol")) as ws:
        await subscribe(ws, "system:broadcast")
        admin = redis.Redis(host="127.0.0.1", port=_redis_port(gateway))
        try:
            pipe = admin.pipeline(transaction=False)
            for i in range(80):  # fewer than the queue holds: nothing may be dropped
                pipe.publish("system:broadcast", json.dumps({"i": i}))
            await asyncio.to_thread(pipe.execute)
        finally:
            admin.close()
        seen: list[int] = []
        batches = 0
        while len(seen) < 80:
            raw = json.loads(await asyncio.wait_for(ws.recv(), 5))
            items = raw["messages"] if raw["type"] == "batch" else [raw]
            items = [f for f in items if f["type"] not in ("join", "leave")]  # presence is on
            batches += raw["type"] == "batch"
            assert all(f["type"] == "message" for f in items)
            seen.extend(f["data"]["i"] for f in items)
        assert seen == list(range(80))
        assert batches >= 1


def _redis_port(gateway: Gateway) -> int:
    assert gateway.app is not None
    return int(gateway.app.state.redis.config.url.rsplit(":", 1)[1].split("/")[0])


async def test_frames_helper_unwraps(gateway: Gateway) -> None:
    async with await gateway.connect(mint("dave")) as ws:
        await ws.send('{"type":"ping","id":1}')
        assert await frames(ws) == [{"type": "pong", "id": 1}]
