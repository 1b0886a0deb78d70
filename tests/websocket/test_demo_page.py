"""The demo page end to end in headless Chromium (Debian's, driven by Playwright)."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import httpx
import pytest

from gateway_redis import ChannelHistory, RedisClient, RedisConfig
from gateway_redis.embedded import EmbeddedRedis
from tests.websocket.wsutil import gateway_process, mint, request, subscribe

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


@pytest.mark.slow
@pytest.mark.skipif(not shutil.which(CHROMIUM), reason="Debian's chromium is not installed")
async def test_log_in_subscribe_and_see_a_message_published_elsewhere(
    redis_server: EmbeddedRedis, redis_admin: object, tmp_path: Path
) -> None:
    from playwright.async_api import async_playwright, expect

    # Secure cookies, as in production: browsers treat http://localhost as secure.
    with gateway_process(redis_server.url, GATEWAY_COOKIE_SECURE="1") as (gateway, _):
        base = gateway.http.replace("127.0.0.1", "localhost")
        async with async_playwright() as pw:
            context = await pw.chromium.launch_persistent_context(
                str(tmp_path / "profile"), executable_path=CHROMIUM, args=ARGS, headless=True
            )
            try:
                page = context.pages[0] if context.pages else await context.new_page()
                page.set_default_timeout(10_000)
                errors: list[str] = []
                page.on("pageerror", lambda exc: errors.append(str(exc)))
                await page.goto(base + "/")
                await expect(page.locator("#whoami")).to_have_text("nobody")

                await page.fill("#username", "bob")
                await page.fill("#password", "bob-password")
                await page.click("#login")
                await expect(page.locator("#status")).to_contain_text("connected (token)")
                await expect(page.locator("#subscribed")).to_have_text("system:broadcast")
                await page.fill("#channel", "notifications:bob")
                await page.click("#subscribe")
                await expect(page.locator("#subscribed")).to_contain_text("notifications:bob")

                # Another client (an admin's socket) publishes; the page shows it live.
                async with await gateway.connect(mint("alice", roles=("admin",))) as alice:
                    reply = await request(alice, {
                        "type": "publish", "channel": "notifications:bob",
                        "data": {"text": "hello bob, from another client"}, "id": 1,
                    })  # fmt: skip
                    assert (reply["type"], reply["id"], reply["offset"]) == ("published", 1, 1)
                message = page.locator("#log li.message", has_text="hello bob, from another")
                await expect(message).to_have_count(1)
                await expect(message.locator(".channel")).to_have_text("notifications:bob")

                # The HTTP publish route reaches the page too.
                admin_token = mint("alice", roles=("admin",))
                async with httpx.AsyncClient() as http:
                    response = await http.post(
                        gateway.http + "/api/channels/system:broadcast/publish",
                        json={"text": "broadcast over HTTP"},
                        headers={"Authorization": f"Bearer {admin_token}"},
                    )
                assert response.json()["receivers"] == 1
                await expect(
                    page.locator("#log li.message", has_text="broadcast over HTTP")
                ).to_have_count(1)

                # Disconnected, the page misses a message; reconnecting recovers it.
                await page.click("#disconnect")
                await expect(page.locator("#status")).to_contain_text("disconnected")
                async with httpx.AsyncClient() as http:
                    response = await http.post(
                        gateway.http + "/api/channels/system:broadcast/publish",
                        json={"text": "missed while away"},
                        headers={"Authorization": f"Bearer {admin_token}"},
                    )
                assert response.status_code == 200
                await page.click("#connect")
                await expect(
                    page.locator("#log li.message", has_text="missed while away")
                ).to_have_count(1)
                await expect(
                    page.locator("#log li.info", has_text="recovered the missed messages")
                ).to_have_count(2)  # both channels

                # Bob may not publish: the page shows the error; the socket stays up.
                await page.click("#publish")
                await expect(page.locator("#log li.error", has_text="forbidden")).to_have_count(1)
                await expect(page.locator("#status")).to_contain_text("connected")

                # A reload keeps the (HttpOnly, Secure) session cookie: connected by cookie.
                await page.reload()
                await expect(page.locator("#whoami")).to_have_text("bob")
                await expect(page.locator("#status")).to_contain_text("session cookie")
                async with await gateway.connect(mint("alice", roles=("admin",))) as alice:
                    await subscribe(alice, "system:broadcast")
                    await request(alice, {
                        "type": "publish", "channel": "system:broadcast",
                        "data": {"text": "after the reload"}, "id": 2,
                    })  # fmt: skip
                await expect(
                    page.locator("#log li.message", has_text="after the reload")
                ).to_have_count(1)

                # Logging out ends the session: the server closes the socket (4403).
                await page.click("#logout")
                await expect(page.locator("#status")).to_contain_text("4403")
                assert errors == []
            finally:
                await context.close()


WAIT = 60_000  # ms: generous waits for conditions (retries are 1, 2, 4, 8 s apart)


async def publish_to_broadcast(redis_url: str, *numbers: int) -> None:
    """Publish ``{"n": number}`` on system:broadcast with the example's history settings."""
    async with RedisClient(RedisConfig(url=redis_url)) as client:
        history = ChannelHistory(client, size=1000, ttl=300)
        for n in numbers:
            await history.publish("system:broadcast", {"n": n})


@pytest.mark.slow
@pytest.mark.skipif(not shutil.which(CHROMIUM), reason="Debian's chromium is not installed")
async def test_a_subscribe_answered_unavailable_is_retried_with_recover(tmp_path: Path) -> None:
    """Redis is down when the page reconnects: its subscribe is answered ``unavailable``;
    the page shows that it retries, sends the subscribe again (with ``recover``) until
    Redis is back, and gets every message it missed once, in order, then live ones."""
    from playwright.async_api import async_playwright, expect

    # Redis with an append-only file synced on every write: a kill loses nothing, so the
    # history (and its epoch) survives the restart and the page's position stays valid.
    (tmp_path / "redis").mkdir()
    server = EmbeddedRedis(
        args=["--appendonly", "yes", "--appendfsync", "always"], directory=tmp_path / "redis"
    )
    server.start()
    try:
        with gateway_process(server.url) as (gateway, _):
            async with async_playwright() as pw:
                context = await pw.chromium.launch_persistent_context(
                    str(tmp_path / "profile"), executable_path=CHROMIUM, args=ARGS, headless=True
                )
                try:
                    page = context.pages[0] if context.pages else await context.new_page()
                    page.set_default_timeout(WAIT)
                    errors: list[str] = []
                    page.on("pageerror", lambda exc: errors.append(str(exc)))
                    await page.goto(gateway.http + "/")
                    await page.fill("#username", "bob")
                    await page.fill("#password", "bob-password")
                    await page.click("#login")
                    subscribed = page.locator("#subscribed")
                    await expect(subscribed).to_have_text("system:broadcast", timeout=WAIT)
                    messages = page.locator("#log li.message")
                    await publish_to_broadcast(server.url, 1)
                    await expect(messages).to_have_count(1, timeout=WAIT)

                    # Away, the page misses n=2; Redis dies; the page connects again.
                    await page.click("#disconnect")
                    await expect(page.locator("#status")).to_contain_text("disconnected")
                    await publish_to_broadcast(server.url, 2)
                    await asyncio.to_thread(server.kill)
                    await page.click("#connect")
                    refused = page.locator("#log li.error", has_text="unavailable")
                    await expect(refused).not_to_have_count(0, timeout=WAIT)
                    await expect(subscribed).to_have_text("none")
                    retry = page.locator("#retry")
                    await expect(retry).to_contain_text("Redis unavailable", timeout=WAIT)
                    await expect(retry).to_contain_text("system:broadcast")
                    await expect(retry).to_contain_text("retry 2", timeout=WAIT)  # again, 2 s on

                    # Redis is back (its data too); n=3 is published before the next retry
                    # most likely, n=4 after the page is subscribed: all arrive, once each.
                    await asyncio.to_thread(server.start)
                    await publish_to_broadcast(server.url, 3)
                    await expect(subscribed).to_have_text("system:broadcast", timeout=WAIT)
                    await expect(retry).to_be_hidden()
                    await publish_to_broadcast(server.url, 4)
                    await expect(messages).to_have_count(4, timeout=WAIT)
                    await expect(
                        page.locator("#log li.info", has_text="recovered the missed messages")
                    ).to_have_count(1)
                    texts = await messages.all_text_contents()  # newest first
                    seen = [json.loads(t.split(" system:broadcast ", 1)[1]) for t in texts]
                    assert seen[::-1] == [{"n": 1}, {"n": 2}, {"n": 3}, {"n": 4}]
                    assert await refused.count() >= 2
                    assert errors == []
                finally:
                    await context.close()
    finally:
        server.cleanup()
