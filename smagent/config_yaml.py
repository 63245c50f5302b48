"""The config file's YAML: strict, one document, text keys, anchors and merges, bounded.

A hostile or broken config must give an error the user can act on, never a
crash, a hang or a silent surprise. On top of `bounded_yaml` (no recursion,
at most `MAX_DEPTH` levels), `load` refuses with the line and column where
it happens, as a `YamlProblem`:
- a billion-laughs alias bomb (it builds in a blink, aliases being shared
  objects, then explodes in whatever walks the result): the expanded size is
  measured before anything is built;
- an alias inside the node it names (a cyclic structure);
- a complex key (`? [a, b]`) or a bad tagged value (`!!int x`), which PyYAML
  would raise as TypeError or ValueError with no position;
- two equal keys (PyYAML silently keeps the last one).

Keys are the text as written (`1:`, `null:`, `yes:` are the keys "1", "null",
"yes"): every key in a config is a name, and showing the user `True` for the
`yes` they wrote helps no one. Timestamps are not resolved (`stage:
2024-01-01` is the text, not a date). Merge keys (`<<: *base`) work as YAML
1.1 defines them: an explicit key overrides a merged one, and that is not a
duplicate.
"""

from __future__ import annotations

import re
from collections.abc import Hashable
from typing import Any

import yaml
from yaml.composer import ComposerError
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from smagent.bounded_yaml import BUILD_ERRORS, BoundedLoader, Open

MAX_DEPTH = 64
"""Nesting levels, counted through aliases; a real config needs about 6."""

MAX_NODES = 1_000_000
"""Nodes after alias expansion: about what a 1 MiB file holds written out in full."""

_TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"
_NOT_PRINTABLE = re.compile(
    "[^\x09\x0a\x0d\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]"
)
"""What YAML does not allow in a stream, checked here so the position is in characters."""
_SURROGATE = re.compile("[\ud800-\udfff]")


class YamlProblem(Exception):
    """Why a text is not an acceptable YAML document, and where (1-based), when known."""

    def __init__(self, problem: str, line: int | None = None, column: int | None = None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.line = line
        self.column = column


def load(text: str, *, pure_python: bool = False) -> Any:
    """The one document in `text` (None when empty), or a YamlProblem.

    `pure_python` uses PyYAML's Python parser even when libyaml is there (for tests:
    both must behave alike).
    """
    if found := _NOT_PRINTABLE.search(text):
        line, column = _position(text, found.start())
        raise YamlProblem(f"character U+{ord(found[0]):04X} is not allowed in YAML", line, column)
    loader = _ConfigLoader(text, libyaml=not pure_python)
    try:
        return loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = str(exc.problem or exc.context or "invalid YAML")
        if mark is None:
            raise YamlProblem(problem) from None
        if "cannot start any token" in problem and _char_at(text, mark.line, mark.column) == "\t":
            problem = "found a tab that cannot start any token (YAML indents with spaces)"
        raise YamlProblem(problem, mark.line + 1, mark.column + 1) from None
    except yaml.YAMLError as exc:
        raise YamlProblem(str(exc)) from None
    finally:
        loader.dispose()


def _char_at(text: str, line: int, column: int) -> str:
    lines = text.split("\n", line + 1)
    return lines[line][column : column + 1] if line < len(lines) else ""


def _position(text: str, index: int) -> tuple[int, int]:
    line_start = text.rfind("\n", 0, index) + 1
    return text.count("\n", 0, index) + 1, index - line_start + 1


class _ConfigLoader(BoundedLoader):
    """Composition checks and construction rules of a config."""

    max_depth = MAX_DEPTH
    document = "a config file"
    yaml_implicit_resolvers = {  # noqa: RUF012 - PyYAML's own class-level table, filtered
        first: [(tag, regexp) for tag, regexp in resolvers if tag != _TIMESTAMP_TAG]
        for first, resolvers in BoundedLoader.yaml_implicit_resolvers.items()
    }

    def get_single_node(self) -> Node | None:
        document = super().get_single_node()
        if document is not None:
            _check_expansion(document)
        return document

    def check_scalar(self, event: Any) -> None:
        if _SURROGATE.search(event.value):  # libyaml refuses them, Python does not
            half = "a \\uD800-\\uDFFF escape is half a character, not text"
            raise ComposerError(None, None, half, event.start_mark)

    def check_key(self, mapping: Open, key: Node) -> None:
        if not isinstance(key, ScalarNode):
            kind = "list" if isinstance(key, SequenceNode) else "mapping"
            raise ComposerError(
                None,
                None,
                f"a key must be plain text, not a {kind} (a YAML complex key)",
                key.start_mark,
            )
        keys = mapping.keys = {} if mapping.keys is None else mapping.keys
        text = key.value
        if text in keys:
            first = keys[text]
            raise ComposerError(
                None,
                None,
                f"duplicate key {text!r} (first at line {first.line + 1})",
                key.start_mark,
            )
        keys[text] = key.start_mark

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        if not isinstance(node, MappingNode):
            raise ConstructorError(
                None, None, f"expected a mapping, found {node.id}", node.start_mark
            )
        self.flatten_mapping(node)  # merged pairs first, so the explicit ones override them
        mapping: dict[Hashable, Any] = {}
        for key_node, value_node in node.value:
            mapping[key_node.value] = self.construct_object(value_node, deep=deep)
        return mapping

    def construct_object(self, node: Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except BUILD_ERRORS:  # `!!int x`, `!!bool x`
            tag = node.tag.rsplit(":", 1)[-1]
            raise ConstructorError(
                None, None, f"cannot read this value as {tag}", node.start_mark
            ) from None


def _refuse(loader: yaml.SafeLoader, node: Node) -> Any:
    raise ConstructorError(
        None,
        None,
        f"{node.tag.replace('tag:yaml.org,2002:', '!!')} is not used in a config; "
        "write a plain list, mapping or string",
        node.start_mark,
    )


# Sets and pairs would pass as lists in random or surprising order (a `command`
# argv from a !!set); a timestamp is never what a config key wants.
for _tag in ("set", "omap", "pairs", "timestamp"):
    _ConfigLoader.add_constructor(f"tag:yaml.org,2002:{_tag}", _refuse)


def _check_expansion(root: Node) -> None:
    """Refuse a cyclic alias, or a document too deep or too large once aliases are expanded.

    Iterative, and each distinct node is measured once: the size of a node is
    1 + the sizes of its children, so an alias bomb's exponential size is
    computed in linear time and refused before anything walks it.
    """
    measured: dict[int, tuple[int, int]] = {}  # id(node) -> (nodes, collection depth)
    open_nodes: set[int] = set()
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        ident = id(node)
        if children_done:
            open_nodes.discard(ident)
            children = [measured[id(child)] for child in _children(node)]
            size = 1 + sum(n for n, _ in children)
            deepest = max((d for _, d in children), default=0)
            depth = deepest if isinstance(node, ScalarNode) else deepest + 1
            if depth > MAX_DEPTH:
                raise ComposerError(
                    None,
                    None,
                    f"nested more than {MAX_DEPTH} levels deep once aliases are expanded",
                    node.start_mark,
                )
            if size > MAX_NODES:
                raise ComposerError(
                    None,
                    None,
                    f"aliases expand this to more than {MAX_NODES} values (an alias bomb?)",
                    node.start_mark,
                )
            measured[ident] = (size, depth)
            continue
        if ident in measured:
            continue
        if ident in open_nodes:
            raise ComposerError(
                None, None, "an alias refers to a node that contains it", node.start_mark
            )
        open_nodes.add(ident)
        stack.append((node, True))
        stack.extend((child, False) for child in _children(node))


def _children(node: Node) -> list[Node]:
    if isinstance(node, SequenceNode):
        return list(node.value)
    if isinstance(node, MappingNode):
        return [part for pair in node.value for part in pair]
    return []
