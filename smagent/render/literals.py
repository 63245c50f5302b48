"""The text written literally in a template: what its messages may show (messages.py)."""

from __future__ import annotations

import re

import jinja2
from jinja2 import nodes


def literals(env: jinja2.Environment, name: str, seen: set[str] | None = None) -> set[str]:
    """Every name and string written in a template (and in the templates it includes,
    imports or extends by a literal name): what messages may show of it."""
    seen = set() if seen is None else seen
    if name in seen:
        return set()
    seen.add(name)
    assert env.loader is not None
    try:
        source = env.loader.get_source(env, name)[0]
        tree = env.parse(source)
    except jinja2.TemplateError:
        return set()
    found: set[str] = set()
    for node in tree.find_all(nodes.Node):
        if isinstance(node, nodes.Getattr):
            found.add(node.attr)
        elif isinstance(node, nodes.Name | nodes.Macro | nodes.Filter | nodes.Test):
            found.add(node.name)
        elif isinstance(node, nodes.Keyword):
            found.add(node.key)
        elif isinstance(node, nodes.Const) and isinstance(node.value, str | int):
            text = str(node.value)
            found.add(text)
            found.update(re.split(r"[/.:]", text))
            # `PROVIDER:ID` and `NS/KEY`: the id or key as a whole (an id may hold `/` or `:`)
            found.update(part for sep in ":/" if sep in text for part in text.split(sep, 1))
        elif isinstance(
            node, nodes.Include | nodes.Import | nodes.FromImport | nodes.Extends
        ) and isinstance(node.template, nodes.Const):
            found |= literals(env, str(node.template.value), seen)
    return found
