"""Every Python code block of README.md and docs/ runs, against a real Redis, so no documented
example can rot.

Each ```` ```python ```` block is compiled on its own (top-level ``await`` and ``async with``
allowed, as in ``python -m asyncio``) and executed in a fresh namespace with ``REDIS_URL``
naming the test's Redis server and ``JWT_SECRET`` set. A block that defines an ASGI ``app``
and awaits nothing at its top level has the app's lifespan run after it (startup connects
Redis, shutdown closes it); blocks that serve requests drive the app themselves, in process.

Blocks that are not run:

- the README's quick start, which ``tests/middleware/test_app.py`` runs verbatim and drives
  end to end (the docs' quick start is checked to be the same block, byte for byte);
- a block right below an HTML comment ``<!-- not-executed: reason -->``. Keep them rare:
  prefer making an example self-contained.

Any other block that fails is reported with its file and line. Other languages (``sh``,
``js``...) are not run.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette

from gateway_redis.embedded import EmbeddedRedis
from tests.middleware.test_app import quick_start_source

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
PYTHON = {"python", "py", "python3"}
FENCE = re.compile(r"^(?P<indent> *)(?P<fence>```+|~~~+)\s*(?P<info>[^\n`]*)$")
MARKER = re.compile(r"^\s*<!--\s*not-executed:\s*(?P<reason>\S.*?)\s*-->\s*$")
DEADLINE = 60.0


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # of the opening fence, 1-based
    language: str
    source: str
    marker: str | None  # the reason of a not-executed marker right above it

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def code_blocks(path: Path) -> list[Block]:
    """The fenced code blocks of a Markdown file (indented fences too, as in admonitions)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        indent, fence = len(opening["indent"]), opening["fence"]
        language = opening["info"].strip().split(" ")[0].lower()
        end = i + 1
        while end < len(lines) and lines[end].strip() != fence:
            end += 1
        body = "\n".join(line[indent:] for line in lines[i + 1 : end]) + "\n"
        above = i - 1
        while above >= 0 and not lines[above].strip():
            above -= 1
        marker = MARKER.match(lines[above]) if above >= 0 else None
        found.append(Block(path, i + 1, language, body, marker["reason"] if marker else None))
        i = end + 1
    return found


PYTHON_BLOCKS = [b for doc in DOCUMENTS for b in code_blocks(doc) if b.language in PYTHON]


def test_the_documents_have_python_blocks_and_the_docs_quick_start_is_the_readmes() -> None:
    assert len(PYTHON_BLOCKS) >= 5, [b.where for b in PYTHON_BLOCKS]
    quick = [b for b in code_blocks(ROOT / "docs" / "quickstart.md") if b.language in PYTHON]
    assert quick, "docs/quickstart.md has no python block"
    assert quick[0].source == quick_start_source(), (
        "docs/quickstart.md's first python block must be the README's quick start, verbatim"
    )


def test_markers_are_rare_and_give_a_reason() -> None:
    marked = [b for b in PYTHON_BLOCKS if b.marker is not None]
    assert len(marked) <= max(2, len(PYTHON_BLOCKS) // 5), [b.where for b in marked]


async def run_block(block: Block) -> None:
    flags = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
    code = compile(block.source, block.where, "exec", flags=flags)
    namespace: dict[str, Any] = {"__name__": "docs_example"}
    outcome = eval(code, namespace)  # the documented example, by design
    awaited = inspect.iscoroutine(outcome)
    if awaited:
        await outcome
    app = namespace.get("app")
    if isinstance(app, Starlette) and not awaited:
        async with app.router.lifespan_context(app):
            pass


@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=[b.where for b in PYTHON_BLOCKS])
async def test_python_block_runs(
    block: Block,
    redis_server: EmbeddedRedis,
    redis_admin: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if block.source == quick_start_source():
        pytest.skip("the README's quick start: run and driven by tests/middleware/test_app.py")
    if block.marker is not None:
        pytest.skip(f"marked not-executed: {block.marker}")
    for name in ("REDIS_HOST", "REDIS_PORT", "REDIS_DB", "REDIS_SENTINELS",
                 "REDIS_CLUSTER_NODES", "REDIS_SENTINEL_MASTER"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    monkeypatch.setenv("JWT_SECRET", secrets.token_urlsafe(32))
    try:
        await asyncio.wait_for(run_block(block), DEADLINE)
    except Exception as exc:
        pytest.fail(
            f"{block.where}: the documented example failed: {type(exc).__name__}: {exc}\n"
            "Make it self-contained, or mark it with <!-- not-executed: reason --> right "
            "above the block if it cannot run.",
            pytrace=True,
        )
