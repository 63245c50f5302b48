"""YAML for the config file: bounded, one document, text keys, anchors and merges.

PyYAML's SafeLoader is close to what a config needs, but a hostile or broken
file can make it misbehave in ways a user cannot act on:
- 500 nested `[` overflow the composer's recursion (a RecursionError, no line);
- a billion-laughs alias bomb builds in a blink (aliases are shared objects)
  and then explodes in whatever walks the result;
- an alias inside the node it names builds a cyclic structure;
- a complex key (`? [a, b]`) or a bad tagged value (`!!int x`, an invalid
  date) raises TypeError or ValueError with no position;
- silently, the last of two equal keys wins.

`load` refuses each of these with the line and column where it happens, as a
`YamlProblem`. Keys are the text as written (`1:`, `null:`, `yes:` are the
keys "1", "null", "yes"): every key in a config is a name, and showing the
user `True` for the `yes` they wrote helps no one. Timestamps are not
resolved (`stage: 2024-01-01` is the text, not a date). Merge keys
(`<<: *base`) work as YAML 1.1 defines them: an explicit key overrides a
merged one, and that is not a duplicate.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import yaml
from yaml.composer import ComposerError
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

MAX_DEPTH = 64
"""Nesting levels, counted through aliases; a real config needs about 6."""

MAX_NODES = 1_000_000
"""Nodes after alias expansion: about what a 1 MiB file holds written out in full."""

_MERGE_TAG = "tag:yaml.org,2002:merge"
_TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"


class YamlProblem(Exception):
    """Why a text is not an acceptable YAML document, and where (1-based), when known."""

    def __init__(self, problem: str, line: int | None = None, column: int | None = None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.line = line
        self.column = column


def load(text: str) -> Any:
    """The one document in `text` (None when empty), or a YamlProblem."""
    try:
        loader = _Loader(text)
    except yaml.reader.ReaderError as exc:  # checked on the whole text before parsing starts
        line = text.count("\n", 0, exc.position) + 1
        column = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
        char = exc.character if isinstance(exc.character, int) else ord(exc.character)
        raise YamlProblem(f"character U+{char:04X} is not allowed in YAML", line, column) from None
    try:
        return loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = str(exc.problem or exc.context or "invalid YAML")
        if mark is None:
            raise YamlProblem(problem) from None
        raise YamlProblem(problem, mark.line + 1, mark.column + 1) from None
    except yaml.YAMLError as exc:
        raise YamlProblem(str(exc)) from None
    except RecursionError:  # not reachable within MAX_DEPTH; kept so a bug cannot crash
        raise YamlProblem(f"nested more than {MAX_DEPTH} levels deep") from None
    finally:
        loader.dispose()


class _Loader(yaml.SafeLoader):
    yaml_implicit_resolvers = {  # noqa: RUF012 - PyYAML's own class-level table, filtered
        first: [(tag, regexp) for tag, regexp in resolvers if tag != _TIMESTAMP_TAG]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self._depth = 0

    def get_single_data(self) -> Any:
        node = self.get_single_node()
        if node is None:
            return None
        _check_expansion(node)
        return self.construct_document(node)

    def get_single_node(self) -> Node | None:
        try:
            return super().get_single_node()
        except ComposerError as exc:
            if exc.problem == "but found another document":
                raise ComposerError(
                    None,
                    None,
                    "a config file holds one YAML document; this `---` starts a second one",
                    exc.problem_mark,
                ) from None
            raise

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
                raise ComposerError(None, None, f"nested more than {MAX_DEPTH} levels deep", mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def compose_mapping_node(self, anchor: Any) -> MappingNode:
        """Keys are checked here, before any merge rewrites the node: text only, no repeats."""
        node: MappingNode = super().compose_mapping_node(anchor)
        seen: dict[str, yaml.Mark] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, ScalarNode):
                raise ComposerError(
                    None,
                    None,
                    f"a key must be plain text, not a {_kind(key_node)} (a YAML complex key)",
                    key_node.start_mark,
                )
            key = key_node.value if key_node.tag != _MERGE_TAG else "<<"
            if key in seen:
                first = seen[key]
                raise ComposerError(
                    None,
                    None,
                    f"duplicate key {key!r} (first at line {first.line + 1})",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark
        return node

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
        except (ValueError, OverflowError, TypeError):  # `!!int x`, `!!timestamp 2001-02-30`
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
    _Loader.add_constructor(f"tag:yaml.org,2002:{_tag}", _refuse)


def _check_expansion(root: Node) -> None:
    """Refuse a cyclic alias, or a document too deep or too large once aliases are expanded.

    Iterative, and each distinct node is measured once: the size of a node is
    1 + the sizes of its children, so an alias bomb's exponential size is
    computed in linear time and refused before anything walks it.
    """
    measured: dict[int, tuple[int, int]] = {}  # id(node) -> (expanded nodes, expanded depth)
    open_nodes: set[int] = set()
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        ident = id(node)
        if children_done:
            open_nodes.discard(ident)
            children = [measured[id(child)] for child in _children(node)]
            size = 1 + sum(n for n, _ in children)
            depth = 1 + max((d for _, d in children), default=0)
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


def _kind(node: Node) -> str:
    return "list" if isinstance(node, SequenceNode) else "mapping"
