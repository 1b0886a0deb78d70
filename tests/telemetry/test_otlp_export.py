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
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            names = {s.name for s in receiver.spans()}
            if (
                "gateway.jwt authenticate" in names
                and "gateway.cache.lookups" in receiver.metric_names()
            ):
                break
            time.sleep(0.1)
        spans = receiver.spans()
        auth = [s for s in spans if s.name == "gateway.jwt authenticate"]
        assert len(auth) >= 2
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
        assert "l1" in tiers
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
