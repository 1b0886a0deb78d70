"""docker/: the files parse, agree with the code, and the image's command runs the gateway.

Docker itself is not available on our machines; everything that can be checked without it
is checked here.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway_redis import RedisConfig
from gateway_redis.embedded import EmbeddedRedis, free_port

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"


def _compose() -> dict[str, Any]:
    data = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    assert isinstance(data, dict)
    return data


def _dockerfile_cmd() -> list[str]:
    text = (DOCKER / "Dockerfile").read_text()
    match = re.search(r"^CMD (\[.*\])$", text, re.MULTILINE)
    assert match, "Dockerfile has no exec-form CMD"
    cmd = json.loads(match.group(1))
    assert isinstance(cmd, list)
    return [str(part) for part in cmd]


def _gateway_variables() -> set[str]:
    """GATEWAY_* / OTEL_* names the example gateway reads (from its source)."""
    source = "\n".join(p.read_text() for p in (ROOT / "examples").glob("*.py"))
    return set(re.findall(r"\"((?:GATEWAY|OTEL)_[A-Z_]+)\"", source))


def test_compose_has_the_stack() -> None:
    services = _compose()["services"]
    assert {"redis", "gateway-a", "gateway-b", "otel-collector", "jaeger"} <= set(services)
    for name in ("gateway-a", "gateway-b"):
        assert services[name]["build"]["dockerfile"] == "docker/Dockerfile"
        assert "redis" in services[name]["depends_on"]


def test_compose_redis_variables_are_accepted_by_from_env() -> None:
    for name in ("gateway-a", "gateway-b"):
        env = {k: str(v) for k, v in _compose()["services"][name]["environment"].items()}
        redis_env = {k: v for k, v in env.items() if k.startswith("REDIS_")}
        assert redis_env, "no REDIS_* variables"
        config = RedisConfig.from_env(redis_env)
        assert config.host == "redis"
        # Every REDIS_* name in the compose file is one from_env reads.
        table = ROOT / "gateway_redis" / "config" / "_env.py"
        known = set(re.findall(r"\"(REDIS_[A-Z_]+)\"", table.read_text()))
        assert set(redis_env) <= known, set(redis_env) - known


def test_compose_gateway_variables_are_ones_the_gateway_reads() -> None:
    read = _gateway_variables()
    for name in ("gateway-a", "gateway-b"):
        env = _compose()["services"][name]["environment"]
        for key in env:
            if key.startswith("GATEWAY_"):
                assert key in read, f"{key} set in compose but never read by examples/"
            if key.startswith("OTEL_") and key != "OTEL_SERVICE_NAME":
                # Read by the OpenTelemetry SDK itself; must be a standard name.
                assert key in {
                    "OTEL_EXPORTER_OTLP_ENDPOINT",
                    "OTEL_EXPORTER_OTLP_PROTOCOL",
                    "OTEL_TRACES_SAMPLER",
                    "OTEL_RESOURCE_ATTRIBUTES",
                }


def test_collector_config_has_the_pipelines() -> None:
    config = yaml.safe_load((DOCKER / "otel-collector.yaml").read_text())
    assert "otlp" in config["receivers"]
    assert config["receivers"]["otlp"]["protocols"]["http"]["endpoint"].endswith(":4318")
    pipelines = config["service"]["pipelines"]
    assert set(pipelines) >= {"traces", "metrics"}
    assert "otlp/jaeger" in pipelines["traces"]["exporters"]
    for pipeline in pipelines.values():
        for part in ("receivers", "processors", "exporters"):
            for item in pipeline.get(part, []):
                assert item in config[part], f"{item} used but not defined in {part}"
    endpoint = _compose()["services"]["gateway-a"]["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"]
    assert endpoint.startswith("http://otel-collector:4318")


def test_dockerfile_runs_as_non_root_with_healthcheck() -> None:
    text = (DOCKER / "Dockerfile").read_text()
    assert re.search(r"^USER (?!root)\w+", text, re.MULTILINE)
    assert "HEALTHCHECK" in text
    assert "/health" in text
    assert "slim" in text.split("\n", 3)[2] or "-slim" in text


@pytest.mark.slow
def test_image_command_serves_health_locally(redis_server: EmbeddedRedis) -> None:
    cmd = _dockerfile_cmd()
    assert cmd[0] == "uvicorn"
    port = free_port()
    args = [sys.executable, "-m", "uvicorn", *cmd[1:]]
    args[args.index("--host") + 1] = "127.0.0.1"
    args[args.index("--port") + 1] = str(port)
    env = {
        **os.environ,
        "REDIS_URL": redis_server.url,
        "GATEWAY_JWT_SECRET": "test-secret-" + "x9Kq2" * 8,
    }
    env.pop("REDIS_HOST", None)
    log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in the finally below
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        body = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as resp:
                    body = json.loads(resp.read())
                    break
            except OSError:
                time.sleep(0.1)
        if body is None:
            log.seek(0)
            output = log.read().decode(errors="replace")[-3000:]
            raise AssertionError(f"gateway did not answer; {shlex.join(args)}\n{output}")
        assert body["redis"] == "up"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_compose_gateway_settings_are_accepted_at_startup() -> None:
    """The demo secret must pass the same checks the gateway applies when it starts."""
    from middleware.jwt import JWTSettings

    env = _compose()["services"]["gateway-a"]["environment"]
    algorithms = tuple(env["GATEWAY_JWT_ALGORITHMS"].split(","))
    JWTSettings(
        algorithms=algorithms,
        key=env["GATEWAY_JWT_SECRET"],
        issuer=env["GATEWAY_JWT_ISSUER"],
        audience=env["GATEWAY_JWT_AUDIENCE"],
    )
