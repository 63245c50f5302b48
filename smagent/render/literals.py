"""The text written literally in a template: what its messages may show (messages.py).

A template's words are taken from the tree Jinja parsed to compile it (`scan`, called
by the environment's `_parse`); parsing the source a second time for them cost as much
as the compile itself. A template not compiled (or changed since) is parsed here.
"""

from __future__ import annotations

import hashlib
import re
import sys
from collections.abc import Callable, MutableMapping, Set
from pathlib import Path

import jinja2
import msgspec
from jinja2 import nodes

from smagent.render.loader import TemplateLoader


class Scan(msgspec.Struct, frozen=True):
    """What one template's own text holds: its words, and the templates it names."""

    digest: bytes
    """Of the source scanned: the words serve only that text."""
    words: frozenset[str]
    includes: tuple[str, ...]


class Literals(msgspec.Struct):
    """The literal text of a template and of what it includes by a literal name."""

    words: Set[str] = frozenset()
    paths: dict[Path, None] = msgspec.field(default_factory=dict)
    """The files read for it: when one changes, the words are read again."""
    checks: list[Callable[[], bool]] = msgspec.field(default_factory=list)
    """Each file's up-to-date check (the loader's)."""

    @property
    def current(self) -> bool:
        return all(check() for check in self.checks)


def digest(source: str) -> bytes:
    return hashlib.blake2b(source.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def scan(source: str, tree: nodes.Template) -> Scan:
    """Every name and string written in `tree` (parsed from `source`), and the names of the
    templates it includes, imports or extends by a literal name."""
    words: set[str] = set()
    includes: list[str] = []
    for node in tree.find_all(nodes.Node):
        if isinstance(node, nodes.Getattr):
            words.add(node.attr)
        elif isinstance(node, nodes.Name | nodes.Macro | nodes.Filter | nodes.Test):
            words.add(node.name)
        elif isinstance(node, nodes.Keyword):
            words.add(node.key)
        elif isinstance(node, nodes.Const) and isinstance(node.value, str | int):
            text = str(node.value)
            words.add(text)
            words.update(re.split(r"[/.:]", text))
            # `PROVIDER:ID` and `NS/KEY`: the id or key as a whole (an id may hold `/` or `:`)
            words.update(part for sep in ":/" if sep in text for part in text.split(sep, 1))
        elif isinstance(
            node, nodes.Include | nodes.Import | nodes.FromImport | nodes.Extends
        ) and isinstance(node.template, nodes.Const):
            includes.append(str(node.template.value))
    # interned: thousands of templates naming the same secrets share one string each
    return Scan(digest(source), frozenset(map(sys.intern, words)), tuple(includes))


def literals(
    env: jinja2.Environment, loader: TemplateLoader, name: str, scans: MutableMapping[str, Scan]
) -> Literals:
    """Every name and string written in a template (and in the templates it includes,
    imports or extends by a literal name): what messages may show of it. `scans`: what
    the compiles have scanned, by template name."""
    found = Literals()
    _collect(env, loader, name, scans, found, set())
    return found


def _collect(
    env: jinja2.Environment,
    loader: TemplateLoader,
    name: str,
    scans: MutableMapping[str, Scan],
    found: Literals,
    seen: set[str],
) -> None:
    if name in seen:
        return
    seen.add(name)
    try:
        source, _, check = loader.find(name, found.paths)
        found.checks.append(check)
        scanned = scans.get(name)
        if scanned is None or scanned.digest != digest(source):
            scanned = scan(source, env.parse(source))
    except jinja2.TemplateError:
        return
    found.words = found.words | scanned.words if found.words else scanned.words
    for include in scanned.includes:
        _collect(env, loader, include, scans, found, seen)
