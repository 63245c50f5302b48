"""The text written literally in a template: what its messages may show (messages.py)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import jinja2
from jinja2 import nodes

from smagent.render.loader import TemplateLoader


@dataclass(slots=True)
class Literals:
    """The literal text of a template and of what it includes by a literal name."""

    words: set[str] = field(default_factory=set)
    paths: dict[Path, None] = field(default_factory=dict)
    """The files read for it: when one changes, the words are read again."""
    checks: list[Callable[[], bool]] = field(default_factory=list)
    """Each file's up-to-date check (the loader's)."""

    @property
    def current(self) -> bool:
        return all(check() for check in self.checks)


def literals(env: jinja2.Environment, loader: TemplateLoader, name: str) -> Literals:
    """Every name and string written in a template (and in the templates it includes,
    imports or extends by a literal name): what messages may show of it."""
    found = Literals()
    _collect(env, loader, name, found, set())
    return found


def _collect(
    env: jinja2.Environment, loader: TemplateLoader, name: str, found: Literals, seen: set[str]
) -> None:
    if name in seen:
        return
    seen.add(name)
    try:
        source, _, check = loader.find(name, found.paths)
        found.checks.append(check)
        tree = env.parse(source)
    except jinja2.TemplateError:
        return
    words = found.words
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
            _collect(env, loader, str(node.template.value), found, seen)
