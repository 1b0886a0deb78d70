"""The documentation site: ``mkdocs build --strict`` passes, and fails on a reference to a
name that no longer exists, in a page or in a docstring (the API reference turns the
docstrings' Sphinx roles into cross-references: ``docs/_griffe_sphinx_roles.py``).

``scripts/test`` builds the site strictly before pytest; these tests keep the failure
modes honest (a ``--quiet`` build, for one, hides the warnings ``--strict`` counts).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import griffe
import pytest

ROOT = Path(__file__).resolve().parents[2]
MKDOCS = Path(sys.executable).with_name("mkdocs")


def roles_extension() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "griffe_sphinx_roles", ROOT / "docs" / "_griffe_sphinx_roles.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sphinx_roles_become_cross_references_code_or_failures() -> None:
    ext = roles_extension()
    loader = griffe.GriffeLoader(
        extensions=griffe.load_extensions(ext.SphinxRoles()), search_paths=[str(ROOT)]
    )
    loader.load("gateway_redis")  # the extension loads middleware too
    collection = loader.modules_collection
    execute = collection["gateway_redis.client.RedisClient.execute"]
    # A public method inherited from a private mixin: linked where the reference shows it.
    assert "[`confirmed`][gateway_redis.RedisClient.confirmed]" in execute.docstring.value
    shown = ext.shown_paths(collection)
    client = collection["gateway_redis.client.RedisClient"]
    client.docstring.value = (
        "See :class:`RedisConfig`, :exc:`ValueError`, :mod:`gateway_redis.support`, "
        ":meth:`no_such_method` and :class:`~gateway_redis.NoSuchClass`::\n\n    x = 1\n"
    )
    text = ext.rewrite(client, collection, shown)
    assert "[`RedisConfig`][gateway_redis.RedisConfig]" in text
    assert "`ValueError`," in text  # a builtin: code, no link
    assert "`gateway_redis.support`," in text  # exists, not in the reference: code
    assert "[`no_such_method`][no_such_method]" in text  # unresolvable: fails the build
    assert "[`NoSuchClass`][gateway_redis.NoSuchClass]" in text
    assert text.endswith("[gateway_redis.NoSuchClass]:\n\n    x = 1\n")  # reST "::"


def build(tmp_path: Path, extra: str = "") -> subprocess.CompletedProcess[str]:
    """``mkdocs build --strict`` of a copy of the site (``extra`` appended to a page)."""
    site = tmp_path / "project"
    shutil.copytree(ROOT / "docs", site / "docs")
    shutil.copy(ROOT / "mkdocs.yml", site / "mkdocs.yml")
    for package in ("gateway_redis", "middleware"):
        (site / package).symlink_to(ROOT / package)
    if extra:
        with (site / "docs" / "client.md").open("a", encoding="utf-8") as page:
            page.write(extra)
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    return subprocess.run(
        [str(MKDOCS), "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=site, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


@pytest.mark.slow
def test_the_site_builds_strictly(tmp_path: Path) -> None:
    done = build(tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "site" / "quickstart" / "index.html").is_file()
    reference = (tmp_path / "site" / "reference" / "middleware" / "index.html").read_text()
    assert 'id="middleware.Gateway"' in reference


@pytest.mark.slow
@pytest.mark.parametrize(
    "extra",
    [
        "\n[a link](no-such-page.md)\n",
        "\n[a removed name][middleware.NoSuchName]\n",
        "\n::: gateway_redis.NoSuchName\n",
    ],
    ids=["link", "cross-reference", "api-block"],
)
def test_a_broken_reference_fails_the_strict_build(tmp_path: Path, extra: str) -> None:
    done = build(tmp_path, extra)
    assert done.returncode != 0, done.stderr[-3000:]
