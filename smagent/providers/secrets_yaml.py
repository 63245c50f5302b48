"""A secrets file's YAML read with bounded work, and one secret of it turned into text.

A secrets file is input we do not control that must be read within a pass's
deadline, and one bad secret in it must fail only itself. On top of
`bounded_yaml` (parser events composed without recursion, libyaml's parser
when PyYAML has it):

- a collection nested past `MAX_DEPTH` inside a secret is skipped (its
  events read, no nodes made) and marked `Invalid`. Past `MAX_PARSE_DEPTH`
  the whole file is refused: libyaml's scanner slows with the square of
  `[`/`{` nesting.
- aliases share one object, so loading a "billion laughs" document is cheap,
  but turning it into JSON would expand it to gigabytes. `secret_text` counts
  what it writes after expansion (`MAX_VALUES`, `MAX_TEXT`) and refuses a
  value that refers to itself (`&a [*a]`).
- merge keys (`<<: *base`) copy entries at load, and a chain of merges grows
  exponentially: at most `MAX_MERGED` entries are copied per file.
- a value PyYAML cannot build (2001-02-30, a 5,000-digit number, a list used
  as a key, an unknown `!tag`) becomes an `Invalid` marker where it stands.

So everything wrong inside one secret fails only that secret, with its line
and what is wrong; only what makes the whole file unreadable (syntax, a
duplicate or undefined anchor, a second document) fails the whole file.
Messages never quote the file's text: it holds secrets.
"""

from __future__ import annotations

import collections.abc
import datetime
import json
import math
from collections.abc import Callable, Iterator
from typing import Any, ClassVar, cast

import msgspec
import yaml
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.error import Mark
from yaml.events import AliasEvent, CollectionEndEvent, CollectionStartEvent, NodeEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from smagent import bounded_yaml
from smagent.bounded_yaml import BoundedLoader
from smagent.values import MAX_DEPTH

HAS_LIBYAML = bounded_yaml.HAS_LIBYAML

MAX_VALUES = 100_000
"""Values (scalars and containers) one secret may hold once its aliases are expanded."""
MAX_TEXT = 4 * 1024 * 1024
"""Characters of keys and strings one secret may hold once its aliases are expanded."""
MAX_MERGED = 1_000_000
"""Mapping entries that merge keys (`<<`) may copy in one file."""
MAX_PARSE_DEPTH = 1000
"""Nesting beyond which the whole file is refused: libyaml's scanner spends time that grows
with the square of the depth of `[`/`{` nesting (40,000 levels take seconds), so such a file
is not read to its end just to mark one secret."""

_TOO_DEEP_TAG = "tag:smagent,2026:too-deep"
_BUILD_ERRORS = (yaml.YAMLError, RecursionError, *bounded_yaml.BUILD_ERRORS)


class TooDeepToParse(yaml.MarkedYAMLError):
    """Nesting past MAX_PARSE_DEPTH: the file is refused as a whole."""


class Unconvertible(ValueError):
    """One secret cannot be served; the message says where and what, never the value."""


class Invalid(msgspec.Struct, frozen=True):
    """Where a value could not be built, and why (in words that hold none of it)."""

    problem: str
    line: int

    def describe(self) -> str:
        return f"{self.problem} (line {self.line})"


def _line(node: Node) -> int:
    return node.start_mark.line + 1


def _build_problem(exc: BaseException) -> str:
    if isinstance(exc, ConstructorError) and exc.problem:
        if exc.problem.startswith("failed to convert base64 data into ascii"):
            return "!!binary data that is not ASCII base64"  # PyYAML's words quote a character
        # PyYAML's other words name tags and node kinds, never the scalar's text
        return exc.problem
    if isinstance(exc, ValueError) and "digits" in str(exc):
        return "a number too long to read"
    if isinstance(exc, RecursionError):
        return "aliases or merge keys nested too deeply"
    return "a value YAML cannot read (such as an invalid date)"


class _SecretsLoader(BoundedLoader):
    """Cuts what is too deep, and marks what it cannot build instead of failing the document."""

    max_depth = MAX_DEPTH + 1  # the file's own mapping, then MAX_DEPTH levels in a secret
    document = "a secrets file"
    # a copy: the collection constructors are replaced below, PyYAML's own stay as they are
    yaml_constructors: ClassVar[dict[str | None, Any]] = dict(SafeConstructor.yaml_constructors)

    def __init__(self, text: str, *, libyaml: bool) -> None:
        super().__init__(text, libyaml=libyaml)
        self._merged = 0
        self._flattening: set[MappingNode] = set()

    def too_deep(self, start: Any, depth: int) -> Node:
        """Consume one collection's events without recursing; stand an `Invalid` for it."""
        anchors = [start.anchor]
        level = 1
        end = start
        while level:
            end = self.get_event()
            if isinstance(end, CollectionStartEvent):
                level += 1
                if depth + level > MAX_PARSE_DEPTH:
                    raise TooDeepToParse(
                        problem=f"nested more than {MAX_PARSE_DEPTH:,} levels deep",
                        problem_mark=cast(Mark, end.start_mark),
                    )
            elif isinstance(end, CollectionEndEvent):
                level -= 1
            if isinstance(end, NodeEvent) and not isinstance(end, AliasEvent):
                anchors.append(end.anchor)
        node = ScalarNode(_TOO_DEEP_TAG, "", start.start_mark, end.end_mark)
        for anchor in anchors:
            if anchor is not None:
                self.anchors[anchor] = node
        return node

    def construct_object(self, node: Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except _BUILD_ERRORS as exc:
            self.recursive_objects.pop(node, None)
            invalid = Invalid(_build_problem(exc), _line(node))
            self.constructed_objects[node] = invalid
            return invalid

    def construct_too_deep(self, node: Node) -> Invalid:
        return Invalid(f"nested more than {MAX_DEPTH} levels deep (the limit)", _line(node))

    def flatten_mapping(self, node: MappingNode) -> None:
        """PyYAML's merge-key expansion, counting what it copies and refusing self-merges."""
        if node in self._flattening:
            raise ConstructorError(
                None, None, "a merge key (<<) that includes its own mapping", node.start_mark
            )
        self._flattening.add(node)
        try:
            self._flatten(node)
        finally:
            self._flattening.discard(node)

    def _flatten(self, node: MappingNode) -> None:
        merge: list[tuple[Node, Node]] = []
        index = 0
        while index < len(node.value):
            key_node, value_node = node.value[index]
            if key_node.tag == "tag:yaml.org,2002:merge":
                del node.value[index]
                sources = value_node.value if isinstance(value_node, SequenceNode) else [value_node]
                for source in reversed(sources):
                    if not isinstance(source, MappingNode):
                        raise ConstructorError(
                            None, None, "a merge key (<<) whose value is not a mapping", None
                        )
                    self.flatten_mapping(source)
                    self._merged += len(source.value)
                    if self._merged > MAX_MERGED:
                        raise ConstructorError(
                            None,
                            None,
                            f"merge keys (<<) that copy more than {MAX_MERGED:,} entries "
                            "in this file (the limit)",
                            None,
                        )
                    merge.extend(source.value)
            elif key_node.tag == "tag:yaml.org,2002:value":
                key_node.tag = "tag:yaml.org,2002:str"
                index += 1
            else:
                index += 1
        if merge:
            node.value = merge + node.value

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        if not isinstance(node, MappingNode):
            raise ConstructorError(None, None, f"expected a mapping, found a {node.id}", None)
        self.flatten_mapping(node)
        mapping: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, collections.abc.Hashable):
                key = Invalid("a list or mapping used as a key", _line(key_node))
            mapping[key] = self.construct_object(value_node, deep=deep)
        return mapping


def _contained(
    constructor: Callable[[Any, Node], Iterator[Any]],
) -> Callable[[Any, Node], Iterator[Any]]:
    """A collection constructor whose late failure marks its collection `Invalid`.

    PyYAML builds collections in two steps: the empty container first (so
    aliases to it work), its contents later. A failure in the second step
    cannot replace the container any more, so it is emptied and holds the
    `Invalid` marker instead.
    """

    def wrapper(self: Any, node: Node) -> Iterator[Any]:
        steps = constructor(self, node)
        data = next(steps)
        yield data
        try:
            for _ in steps:
                pass
        except _BUILD_ERRORS as exc:
            invalid = Invalid(_build_problem(exc), _line(node))
            data.clear()
            if isinstance(data, dict):
                data[invalid] = invalid
            elif isinstance(data, set):
                data.add(invalid)
            else:
                data.append(invalid)

    return wrapper


for _tag, _method in [
    ("tag:yaml.org,2002:seq", SafeConstructor.construct_yaml_seq),
    ("tag:yaml.org,2002:map", SafeConstructor.construct_yaml_map),
    ("tag:yaml.org,2002:set", SafeConstructor.construct_yaml_set),
    ("tag:yaml.org,2002:omap", SafeConstructor.construct_yaml_omap),
    ("tag:yaml.org,2002:pairs", SafeConstructor.construct_yaml_pairs),
]:
    _SecretsLoader.yaml_constructors[_tag] = _contained(_method)
_SecretsLoader.yaml_constructors[_TOO_DEEP_TAG] = _SecretsLoader.construct_too_deep


def load(text: str, *, libyaml: bool = True) -> Any:
    """The document in `text` (None when empty); yaml.YAMLError when it cannot be parsed.

    libyaml's parser when PyYAML has it (`libyaml=False` forces PyYAML's own,
    which tests use to check that both paths keep the same bounds).
    """
    loader = _SecretsLoader(text, libyaml=libyaml)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


# --- one secret as text ---------------------------------------------------------------------------


def secret_text(value: Any) -> str | bytes:
    """A loaded secret as the text (or bytes) the provider serves; Unconvertible if it cannot be.

    Strings as they are, bytes (`!!binary`) as bytes, null as empty text,
    other scalars as their plain text (`true`, `5432`, `2025-01-31`),
    mappings and lists as compact JSON (so their keys work like an AWS JSON
    secret's).
    """
    if isinstance(value, str | bytes):
        return value
    if value is None:
        return ""
    if isinstance(value, dict | list | tuple):
        return json.dumps(_Converter().convert(value), ensure_ascii=False)
    scalar = _scalar(value)
    return scalar if isinstance(scalar, str) else json.dumps(scalar)


_Scalar = str | int | float | bool | None


def _scalar(value: Any) -> _Scalar:
    """A scalar as JSON holds it; dates as their text, as they are written."""
    if isinstance(value, Invalid):
        raise Unconvertible(value.describe())
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        if value.bit_length() > 14_000:  # about 4,200 digits: Python refuses to print more
            raise Unconvertible("a number too long to write")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise Unconvertible("a number JSON cannot hold (.nan or .inf)")
        return value
    if isinstance(value, datetime.date):
        return str(value)
    if isinstance(value, bytes):
        raise Unconvertible("binary data (!!binary): only a whole secret can be binary")
    if isinstance(value, set | frozenset):
        raise Unconvertible("a set (!!set), which JSON cannot hold; write a list")
    raise Unconvertible(f"a value of type {type(value).__name__}")


def _key_text(key: Any) -> str:
    """A mapping key as JSON writes it: 1 -> "1", true -> "true", a date as its text."""
    if isinstance(key, str):
        return key
    if isinstance(key, Invalid):
        raise Unconvertible(key.describe())
    if isinstance(key, dict | list | tuple | bytes | set | frozenset):
        raise Unconvertible("a key that is not text")
    scalar = _scalar(key)
    return scalar if isinstance(scalar, str) else json.dumps(scalar)


class _Frame:
    __slots__ = ("items", "label", "source", "target")

    def __init__(self, source: Any, target: Any, label: str) -> None:
        self.source = source
        self.target = target
        self.label = label
        self.items: Iterator[tuple[Any, Any]] = (
            iter(source.items()) if isinstance(source, dict) else enumerate(source)
        )


class _Converter:
    """Copies a loaded value into plain JSON data, iteratively, within the budgets."""

    def __init__(self) -> None:
        self.values = 0
        self.text = 0

    def convert(self, root: dict[Any, Any] | list[Any] | tuple[Any, ...]) -> Any:
        frames = [_Frame(root, _empty(root), "")]
        top = frames[0].target
        on_path = {id(root)}
        while frames:
            frame = frames[-1]
            item = next(frame.items, None)
            if item is None:
                frames.pop()
                on_path.discard(id(frame.source))
                continue
            key, child = item
            try:
                descend = self._step(frame, key, child, len(frames), on_path)
            except Unconvertible as exc:
                path = "".join(f.label for f in frames[1:]) + _label(frame.target, key)
                raise Unconvertible(f"{_shown(path)}{exc}") from None
            if descend is not None:
                frames.append(_Frame(child, *descend))
                on_path.add(id(child))
        return top

    def _step(
        self, frame: _Frame, key: Any, child: Any, depth: int, on_path: set[int]
    ) -> tuple[Any, str] | None:
        """Copy one entry; for a container, its empty copy and label to descend into."""
        self.values += 1
        if self.values > MAX_VALUES:
            raise Unconvertible(
                f"more than {MAX_VALUES:,} values once YAML aliases are expanded (the limit)"
            )
        target = frame.target
        if isinstance(target, dict):
            key = _key_text(key)
            if key in target:
                raise Unconvertible(f"two keys that both read as {key!r}")
            self._add_text(key)
        if isinstance(child, dict | list | tuple):
            if id(child) in on_path:
                raise Unconvertible("a value that contains itself (a recursive YAML alias)")
            if depth >= MAX_DEPTH:
                raise Unconvertible(f"nested more than {MAX_DEPTH} levels deep (the limit)")
            copy = _empty(child)
            _put(target, key, copy)
            return copy, _label(target, key)
        scalar = _scalar(child)
        if isinstance(scalar, str):
            self._add_text(scalar)
        _put(target, key, scalar)
        return None

    def _add_text(self, text: str) -> None:
        self.text += len(text)
        if self.text > MAX_TEXT:
            raise Unconvertible(
                f"more than {MAX_TEXT // (1024 * 1024)} MiB of text once YAML aliases are "
                "expanded (the limit)"
            )


def _label(target: Any, key: Any) -> str:
    if not isinstance(target, dict):
        return f"[{key}]"
    if isinstance(key, Invalid):  # the marker of a mapping that could not be built
        return ""
    return f".{key}" if isinstance(key, str) else ".<a key>"


def _shown(path: str) -> str:
    """`at a.b[2]: `, shortened in the middle when long (keys are names, but may be long)."""
    path = path.lstrip(".")
    if not path:
        return ""
    if len(path) > 80:
        path = f"{path[:38]}...{path[-38:]}"
    return f"at {path}: "


def _empty(source: Any) -> Any:
    return {} if isinstance(source, dict) else []


def _put(target: Any, key: Any, value: Any) -> None:
    if isinstance(target, dict):
        target[key] = value
    else:
        target.append(value)
