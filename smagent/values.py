"""Python shapes of secret data as templates and filters see it.

A JSON secret is parsed into `JsonObject` / `JsonArray`: plain dict and list
subclasses (so Jinja's own filters such as `dictsort`, `items` and `length`
work) whose text form is JSON, not Python's repr. Writing `{{ secrets.ns.obj }}`
therefore puts JSON in the file, never `{'a': 1}`.

A binary secret (AWS SecretBinary) is a `Binary`: its bytes are reachable only
by the filters that accept bytes (`b64encode`), and using it as text raises
`BinaryAsTextError` naming the reference, so a template can never write
`b'...'` or mojibake into a config file.

JSON from a secret may nest at most `MAX_DEPTH` levels. Real secrets nest a
few; the limit keeps every later walk of secret data (the redactor, the
filters, the YAML writer) far from Python's recursion limit, and a value
deeper than that is refused (`TooDeep`) instead of crashing a pass with
RecursionError. `value_problem` is the check every fetched value passes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any


class BinaryAsTextError(TypeError):
    """A binary secret was used where text was expected."""

    def __init__(self, label: str) -> None:
        super().__init__(
            f"{label} is a binary secret and cannot be written as text; "
            "use '| b64encode' to write it as base64"
        )
        self.label = label


class Binary:
    """Bytes of a binary secret; see the module docstring for why it is opaque."""

    __slots__ = ("_data", "label")

    def __init__(self, data: bytes, label: str) -> None:
        self._data = data
        self.label = label

    def reveal(self) -> bytes:
        return self._data

    def __str__(self) -> str:
        raise BinaryAsTextError(self.label)

    def __repr__(self) -> str:
        return f"Binary(<redacted>, label={self.label!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Binary) and other._data == self._data

    def __hash__(self) -> int:
        return hash(self._data)


class JsonObject(dict[str, Any]):
    """A JSON object from a secret; renders as compact JSON."""

    __slots__ = ()

    def __str__(self) -> str:
        return json.dumps(self, ensure_ascii=False, separators=(",", ":"))

    def __repr__(self) -> str:
        return "JsonObject(<redacted>)"


class JsonArray(list[Any]):
    """A JSON array from a secret; renders as compact JSON."""

    __slots__ = ()

    def __str__(self) -> str:
        return json.dumps(self, ensure_ascii=False, separators=(",", ":"))

    def __repr__(self) -> str:
        return "JsonArray(<redacted>)"


MAX_DEPTH = 100
"""Levels of nesting allowed in JSON (or YAML) secret data: `{"a": 1}` is one level."""


class TooDeep(ValueError):
    """JSON nested deeper than MAX_DEPTH."""

    def __init__(self) -> None:
        super().__init__(f"nested more than {MAX_DEPTH} levels deep (the limit)")


def from_json(data: Any) -> Any:
    """Wrap parsed JSON so containers render as JSON (see module docstring).

    Iterative, so depth costs no stack; raises TooDeep past MAX_DEPTH levels.
    """
    if not isinstance(data, dict | list):
        return data
    root = _empty_like(data)
    stack: list[tuple[Any, Any, int]] = [(data, root, 1)]
    while stack:
        source, target, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise TooDeep
        items = source.items() if isinstance(source, dict) else enumerate(source)
        for key, child in items:
            if isinstance(child, dict | list):
                copy = _empty_like(child)
                stack.append((child, copy, depth + 1))
                child = copy
            if isinstance(target, dict):
                target[str(key)] = child
            else:
                target.append(child)
    return root


def _empty_like(data: dict[Any, Any] | list[Any]) -> JsonObject | JsonArray:
    return JsonObject() if isinstance(data, dict) else JsonArray()


def parse_json_text(text: str) -> Any | None:
    """The JSON container in `text`, or None when it is not a JSON object/array.

    Only objects and arrays count: a secret whose whole text is `"123"` or
    `true` is a plain string, not a JSON document with fields. A container
    nested deeper than MAX_DEPTH raises TooDeep (so does text opening with
    about a thousand brackets: json gives up before it knows whether it is JSON).
    """
    stripped = text.lstrip()
    if not stripped or stripped[0] not in "{[":
        return None
    try:
        data = json.loads(text)
    except RecursionError:  # the C parser counts its depth against the recursion limit
        raise TooDeep from None
    except ValueError:
        return None
    return from_json(data)


def value_problem(value: str | bytes) -> str | None:
    """Why a fetched value cannot be used, in words that hold no part of it; None if it can.

    Every provider's values pass through this (in the resolver), so a store
    that hands back broken text fails the references to that one secret with a
    clear `bad value`, never the pass.
    """
    if isinstance(value, bytes):
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "the value is not valid Unicode text (bytes that are not UTF-8?)"
    try:
        parse_json_text(value)
    except TooDeep as exc:
        return f"the value is JSON {exc}"
    return None


def leaves(data: object) -> Iterator[str | bytes]:
    """Every text (and number, as text) inside nested mappings and lists, without
    recursion: the strings a redactor must know of a secret's value."""
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str | bytes):
            yield item
        elif isinstance(item, int | float) and not isinstance(item, bool):
            yield str(item)
