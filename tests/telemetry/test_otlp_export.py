"""The example gateway exports over OTLP/HTTP to a receiver this test runs; we decode it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from gateway_redis.embedded import EmbeddedRedis, free_port

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


class _Receiver:
    def __init__(self) -> None:
        self.bodies: dict[str, list[bytes]] = {"/v1/traces": [], "/v1/metrics": [], "/v1/logs": []}
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                receiver.bodies.setdefault(self.path, []).append(body)
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def spans(self) -> list[Any]:
        found = []
        for body in self.bodies["/v1/traces"]:
            request = ExportTraceServiceRequest()
            request.ParseFromString(body)
            for rs in request.resource_spans:
                for ss in rs.scope_spans:
                    found.extend(ss.spans)
        return found

    def metric_names(self) -> set[str]:
        names = set()
        for body in self.bodies["/v1/metrics"]:
            request = ExportMetricsServiceRequest()
            request.ParseFromString(body)
            for rm in request.resource_metrics:
                for sm in rm.scope_metrics:
                    names.update(m.name for m in sm.metrics)
        return names

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[_Receiver]:
    r = _Receiver()
    yield r
    r.close()


def _request(url: str, data: dict[str, Any] | None = None, token: str | None = None) -> Any:
    headers = {"content-type": "application/json"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    body = json.dumps(data).encode() if data is not None else None
    req = urllib.request.Request(url, data=body, headers=headers)
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.loads(resp.read())


def test_gateway_exports_traces_and_metrics_over_otlp_http(
    receiver: _Receiver, redis_server: EmbeddedRedis
) -> None:
    port = free_port()
    env = {
        **os.environ,
        "REDIS_URL": redis_server.url,
        "GATEWAY_JWT_SECRET": "otlp-test-" + "Qm7vX2pL9kR4" * 4,
        "GATEWAY_CACHE_KEY": "otlp-l2-seal-" + "Zk4wT9nB2xQ7" * 3,
        "GATEWAY_COOKIE_SECURE": "0",
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver.port}",
        "OTEL_SERVICE_NAME": "gateway-under-test",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "OTEL_METRIC_EXPORT_INTERVAL": "300",
    }
    log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in the finally below
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "examples.gateway:app", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                _request(f"{base}/health")
                break
            except OSError:
                time.sleep(0.1)
        token = _request(f"{base}/auth/login", {"username": "alice", "password": "alice-password"})[
            "access_token"
        ]
        for _ in range(2):
            assert _request(f"{base}/api/me", token=token)["sub"] == "alice"

        def l1_tiers(spans: list[Any]) -> list[str]:
            # An L1 hit starts no span: the server span carries the tier.
            return [
                a.value.string_value
                for s in spans
                if s.kind == s.SPAN_KIND_SERVER
                for a in s.attributes
                if a.key == "gateway.jwt.cache.result"
            ]

        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            names = {s.name for s in receiver.spans()}
            if (
                "gateway.jwt authenticate" in names
                and l1_tiers(receiver.spans())
                and "gateway.cache.lookups" in receiver.metric_names()
            ):
                break
            time.sleep(0.1)
        spans = receiver.spans()
        auth = [s for s in spans if s.name == "gateway.jwt authenticate"]
        assert len(auth) >= 1  # the first /api/me: not in L1 yet
        by_id = {s.span_id: s for s in spans}
        # Each authenticate span hangs under the ASGI instrumentation's server span.
        for span in auth:
            parent = by_id.get(span.parent_span_id)
            assert parent is not None
            assert parent.kind == parent.SPAN_KIND_SERVER
            assert parent.trace_id == span.trace_id
        tiers = [
            a.value.string_value
            for s in auth
            for a in s.attributes
            if a.key == "gateway.cache.result"
        ]
        assert set(tiers) <= {"l2", "miss"}
        assert "l1" in l1_tiers(spans)  # the second /api/me
        for span in spans:
            for attribute in span.attributes:
                assert token not in str(attribute.value)
        assert "gateway.cache.lookups" in receiver.metric_names()
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.seek(0)
        output = log.read().decode(errors="replace")
        log.close()
    assert "Traceback" not in output, output[-3000:]


class _Gateway:
    """A real example gateway process exporting to ``receiver``."""

    def __init__(self, name: str, redis_url: str, receiver: _Receiver) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = {
            **os.environ,
            "REDIS_URL": redis_url,
            "GATEWAY_JWT_SECRET": "otlp-test-" + "Qm7vX2pL9kR4" * 4,
            "GATEWAY_CACHE_KEY": "otlp-l2-seal-" + "Zk4wT9nB2xQ7" * 3,
            "GATEWAY_COOKIE_SECURE": "0",
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver.port}",
            "OTEL_SERVICE_NAME": name,
            "OTEL_BSP_SCHEDULE_DELAY": "100",
            "OTEL_METRIC_EXPORT_INTERVAL": "1000",
        }
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "examples.gateway:app", "--port", str(self.port)],
            cwd=ROOT,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                _request(f"{self.base}/health")
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"gateway {name} did not start")

    def login(self, user: str) -> str:
        reply = _request(
            f"{self.base}/auth/login", {"username": user, "password": f"{user}-password"}
        )
        return str(reply["access_token"])

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def _service_spans(receiver: _Receiver) -> list[tuple[str, Any]]:
    found = []
    for body in receiver.bodies["/v1/traces"]:
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        for rs in request.resource_spans:
            service = next(
                (a.value.string_value for a in rs.resource.attributes if a.key == "service.name"),
                "",
            )
            for ss in rs.scope_spans:
                found.extend((service, span) for span in ss.spans)
    return found


async def test_one_trace_spans_http_publish_on_a_and_websocket_delivery_on_b(
    receiver: _Receiver, redis_server: EmbeddedRedis
) -> None:
    import asyncio

    import websockets

    a = _Gateway("gateway-a", redis_server.url, receiver)
    b = _Gateway("gateway-b", redis_server.url, receiver)
    try:
        token_b = await asyncio.to_thread(b.login, "bob")
        token_a = await asyncio.to_thread(a.login, "alice")
        async with websockets.connect(
            f"ws://127.0.0.1:{b.port}/ws",
            subprotocols=["bearer", token_b],  # type: ignore[list-item]
        ) as ws:
            await ws.send(
                json.dumps({"type": "subscribe", "channels": ["system:broadcast"], "id": 1})
            )
            reply = json.loads(await asyncio.wait_for(ws.recv(), 5))
            assert reply["type"] == "subscribed"
            sent = await asyncio.to_thread(
                _request,
                f"{a.base}/api/channels/system:broadcast/publish",
                {"text": "hello from A"},
                token_a,
            )
            assert sent["receivers"] >= 1
            for _ in range(5):  # the socket's own presence join frame may come first
                frame = json.loads(await asyncio.wait_for(ws.recv(), 5))
                messages = frame["messages"] if frame["type"] == "batch" else [frame]
                if any(m.get("data") == {"text": "hello from A"} for m in messages):
                    break
            else:
                raise AssertionError("the message did not arrive")
        deadline = time.monotonic() + 10
        deliver = publish = None
        while time.monotonic() < deadline:
            spans = _service_spans(receiver)
            publish = next(
                (
                    s
                    for svc, s in spans
                    if svc == "gateway-a" and s.name == "gateway.pubsub publish"
                ),
                None,
            )
            deliver = next(
                (s for svc, s in spans if svc == "gateway-b" and s.name == "gateway.ws deliver"),
                None,
            )
            if publish is not None and deliver is not None:
                break
            await asyncio.sleep(0.1)
        assert publish is not None, "no publish span from gateway A"
        assert deliver is not None, "no delivery span from gateway B"
        # One trace: A's HTTP server span -> A's PRODUCER span -> (Redis) -> B's CONSUMER span.
        assert deliver.trace_id == publish.trace_id
        assert deliver.parent_span_id == publish.span_id
        assert publish.kind == publish.SPAN_KIND_PRODUCER
        assert deliver.kind == deliver.SPAN_KIND_CONSUMER
        server = next(
            s
            for svc, s in _service_spans(receiver)
            if svc == "gateway-a" and s.span_id == publish.parent_span_id
        )
        assert server.kind == server.SPAN_KIND_SERVER
        for _, span in _service_spans(receiver):
            for attribute in span.attributes:
                assert token_a not in str(attribute.value)
                assert token_b not in str(attribute.value)
    finally:
        a.stop()
        b.stop()
