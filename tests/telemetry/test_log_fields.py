"""Every log call of the two packages carries the structured fields (event, component, ...).

The check reads the source: a call like ``_log.warning(...)`` (on a logger object named
``_log``, ``log``, ``logger`` or ``self._logger``) must pass ``extra=log_fields(...)``.
A second test runs real log records through ``log_fields`` and a JSON formatter.
"""

from __future__ import annotations

import ast
import json
import logging
from pathlib import Path

import pytest

from gateway_redis.support import log_fields

ROOT = Path(__file__).resolve().parents[2]
LEVELS = {"debug", "info", "warning", "error", "exception", "critical", "log"}
LOGGERS = {"_log", "log", "logger", "_logger", "self._logger"}


def _name(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_name(node.value)}.{node.attr}"
    return ""


def _log_calls() -> list[tuple[str, int, ast.Call]]:
    calls = []
    for package in ("gateway_redis", "middleware"):
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            for node in ast.walk(tree):
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and node.func.attr in LEVELS
                    and _name(node.func.value) in LOGGERS
                ):
                    calls.append((str(path.relative_to(ROOT)), node.lineno, node))
            # A logger method picked into a variable (``log = self._logger.info if ...``)
            # hides the level; such calls are found by the variable's call sites below.
            for node in ast.walk(tree):
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Name)
                    and node.func.id == "log"
                    and node.args
                    and isinstance(node.args[0], ast.Constant)
                ):
                    calls.append((str(path.relative_to(ROOT)), node.lineno, node))
    return calls


def test_the_source_has_log_calls_to_check() -> None:
    assert len(_log_calls()) >= 30


def test_every_log_call_passes_structured_fields() -> None:
    missing = []
    for path, line, call in _log_calls():
        extra = next((k.value for k in call.keywords if k.arg == "extra"), None)
        if extra is None:
            missing.append(f"{path}:{line}")
        elif not (
            (isinstance(extra, ast.Call)
            and _name(extra.func) == "log_fields")
            or (isinstance(extra, ast.Dict)
            and {"event", "component"}
            <= {k.value for k in extra.keys if isinstance(k, ast.Constant)})
        ):
            missing.append(f"{path}:{line} (extra without event/component)")
    assert missing == []


def test_fields_reach_a_json_handler() -> None:
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("gateway_redis.test_log_fields")
    handler = Keep()
    logger.addHandler(handler)
    try:
        logger.warning(
            "lost (%s)", "timeout", extra=log_fields("pubsub", "pubsub_lost", "timeout", n=3)
        )
    finally:
        logger.removeHandler(handler)
    (record,) = records
    from examples.telemetry import JSONFormatter

    line = json.loads(JSONFormatter().format(record))
    assert line["event"] == "pubsub_lost"
    assert line["component"] == "pubsub"
    assert line["reason"] == "timeout"
    assert line["n"] == 3
    assert line["message"] == "lost (timeout)"


def test_fields_may_not_shadow_record_attributes() -> None:
    with pytest.raises(ValueError, match="message"):
        log_fields("x", "y", message="no")
