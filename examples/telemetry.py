"""Telemetry for the example gateway: the OpenTelemetry SDK from ``OTEL_*`` variables, and
JSON logs.

- Tracing and metrics are exported over OTLP/HTTP when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is
  set (the SDK itself reads ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``,
  ``OTEL_TRACES_SAMPLER``, ``OTEL_BSP_*``...); with no endpoint nothing is installed and the
  library's instrumentation stays a no-op.
- ``GATEWAY_OTEL_REDIS=1`` adds per-command Redis spans (opentelemetry-instrumentation-redis).
- ``GATEWAY_LOG_FORMAT=json`` (the default) writes one JSON object per log line, with the
  library's structured ``extra`` fields (event, component, reason...); ``text`` keeps
  Python's plain format.

The library never configures telemetry or logging itself; this is the application's job.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping
from typing import Any

__all__ = ["JSONFormatter", "configure_logging", "configure_telemetry"]

_configured = False
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JSONFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message and any ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                payload[key] = value if isinstance(value, (str, int, float, bool)) else str(value)
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        return json.dumps(payload, separators=(",", ":"))


def configure_logging(env: Mapping[str, str]) -> None:
    """Send the root logger to stderr, as JSON unless ``GATEWAY_LOG_FORMAT=text``."""
    handler = logging.StreamHandler(sys.stderr)
    if env.get("GATEWAY_LOG_FORMAT", "json").lower() != "text":
        handler.setFormatter(JSONFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(env.get("GATEWAY_LOG_LEVEL", "INFO").upper())


def configure_telemetry(env: Mapping[str, str]) -> bool:
    """Install the SDK once per process when an OTLP endpoint is configured.

    Returns True when tracing is on (the caller then adds the ASGI instrumentation).
    """
    global _configured
    if _configured:
        return True
    if not env.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return False
    from opentelemetry import metrics, trace
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create({"service.name": env.get("OTEL_SERVICE_NAME", "gateway")})
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(tracer_provider)
    reader = PeriodicExportingMetricReader(OTLPMetricExporter())
    metrics.set_meter_provider(MeterProvider(resource=resource, metric_readers=[reader]))
    if env.get("GATEWAY_OTEL_REDIS", "0").lower() in ("1", "true", "yes"):
        from opentelemetry.instrumentation.redis import RedisInstrumentor

        RedisInstrumentor().instrument(tracer_provider=tracer_provider)
    _configured = True
    return True


def shutdown_telemetry() -> None:
    """Flush and stop exporters (at application shutdown)."""
    from opentelemetry import metrics, trace

    provider = trace.get_tracer_provider()
    if hasattr(provider, "shutdown"):
        provider.shutdown()
    meter_provider = metrics.get_meter_provider()
    if hasattr(meter_provider, "shutdown"):
        meter_provider.shutdown()
