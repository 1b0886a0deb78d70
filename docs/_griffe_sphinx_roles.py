"""A Griffe extension for the API reference. The docstrings are written in reST style, with
Sphinx roles (:class:`RedisClient`, :meth:`~gateway_redis.RedisClient.connect`) and ``::``
literal blocks; MkDocs renders Markdown. Once both packages are loaded, each role becomes:

- a cross-reference to the object's canonical path (``[`RedisClient`][gateway_redis.client.
  RedisClient]``) when it names something the reference shows: a name in a package's
  ``__all__`` or a public member of one;
- plain code when it names something that exists but is not shown (a private helper, a
  module, a builtin exception);
- a cross-reference to the name as written when it names nothing: autorefs cannot resolve
  it, so ``mkdocs build --strict`` fails on a docstring that mentions a removed name.

``::`` becomes ``:`` (the indented block after it is a Markdown code block already).
Loaded by mkdocs.yml (the python handler's ``extensions``); not part of the site.
"""

from __future__ import annotations

import builtins
import re
from collections.abc import Iterator
from typing import Any

import griffe

PACKAGES = ("gateway_redis", "middleware")
ROLE = re.compile(r":(?:py:)?(class|meth|func|attr|mod|exc|data|obj):`(~?)\.?([\w.]+)(\(\))?`")


def walk(obj: griffe.Object) -> Iterator[griffe.Object]:
    """``obj`` and every object defined under it (aliases are not followed)."""
    yield obj
    for member in obj.members.values():
        if not member.is_alias:
            yield from walk(member)  # type: ignore[arg-type]


def final(obj: Any) -> Any:
    return obj.final_target if obj.is_alias else obj


def shown_paths(collection: griffe.ModulesCollection) -> dict[str, str]:
    """What the reference renders, each package's exports and their public members (with
    the inherited ones): canonical path -> the path it is rendered under."""
    paths: dict[str, str] = {}

    def add(obj: Any, public: str) -> None:
        obj = final(obj)
        if obj.canonical_path in paths:
            return
        paths[obj.canonical_path] = public
        if obj.is_class:
            for name, member in obj.all_members.items():
                if not name.startswith("_"):
                    add(member, f"{public}.{name}")

    for package in PACKAGES:
        module = collection[package]
        for name in module.exports or ():
            add(module[name], f"{package}.{name}")
    return paths


def scope_of(obj: Any, name: str) -> str:
    """The path ``name`` means in ``obj``'s docstring: a member (inherited ones too) of
    ``obj`` or of an enclosing class, the class itself, or what Griffe resolves."""
    scope = obj
    while scope is not None:
        if scope.is_class and (name == scope.name or name in scope.all_members):
            return str(scope.path if name == scope.name else f"{scope.path}.{name}")
        scope = scope.parent
    return str(obj.resolve(name))


def locate(obj: griffe.Object, target: str, collection: griffe.ModulesCollection) -> Any:
    """The object ``target`` names in ``obj``'s docstring, or None."""
    first, _, rest = target.partition(".")
    try:
        base = first if first in PACKAGES else scope_of(obj, first)
        return final(collection[f"{base}.{rest}" if rest else base])
    except (KeyError, griffe.NameResolutionError, griffe.AliasResolutionError,
            griffe.CyclicAliasError, ValueError):  # fmt: skip
        return None


def rewrite(obj: griffe.Object, collection: griffe.ModulesCollection, shown: dict[str, str]) -> str:
    assert obj.docstring is not None

    def replace(match: re.Match[str]) -> str:
        role, tilde, target, call = match.groups()
        title = (target.rsplit(".", 1)[-1] if tilde else target) + (call or "")
        found = locate(obj, target, collection)
        if found is None:
            if role == "exc" or target in vars(builtins):
                return f"`{title}`"
            return f"[`{title}`][{target}]"  # unresolvable: fails the strict build
        if found.canonical_path in shown:
            return f"[`{title}`][{shown[found.canonical_path]}]"
        return f"`{title}`"

    text = ROLE.sub(replace, obj.docstring.value)
    return re.sub(r"(\S)::\n", r"\1:\n", re.sub(r"^::\n", "\n", text, flags=re.M))


class SphinxRoles(griffe.Extension):
    """Rewrites every docstring of both packages once, when the first is loaded (it loads
    the other: a docstring of one names objects of both)."""

    def __init__(self) -> None:
        self.done = False

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        if self.done or pkg.name not in PACKAGES:
            return
        self.done = True
        collection = loader.modules_collection
        for package in PACKAGES:
            if package not in collection:
                loader.load(package)
        loader.resolve_aliases(implicit=True)
        shown = shown_paths(collection)
        for package in PACKAGES:
            for obj in walk(collection[package]):
                if obj.docstring is not None:
                    obj.docstring.value = rewrite(obj, collection, shown)
