"""Python shapes of secret data as templates and filters see it.

A JSON secret is parsed into `JsonObject` / `JsonArray`: plain dict and list
subclasses (so Jinja's own filters such as `dictsort`, `items` and `length`
work) whose text form is JSON, not Python's repr. Writing `{{ secrets.ns.obj }}`
therefore puts JSON in the file, never `{'a': 1}`.

A binary secret (AWS SecretBinary) is a `Binary`: its bytes are reachable only
by the filters that accept bytes (`b64encode`), and using it as text raises
`BinaryAsTextError` naming the reference, so a template can never write
`b'...'` or mojibake into a config file.
"""

from __future__ import annotations

import json
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


def from_json(data: Any) -> Any:
    """Wrap parsed JSON so containers render as JSON (see module docstring)."""
    if isinstance(data, dict):
        return JsonObject({str(k): from_json(v) for k, v in data.items()})
    if isinstance(data, list):
        return JsonArray(from_json(v) for v in data)
    return data


def parse_json_text(text: str) -> Any | None:
    """The JSON container in `text`, or None when it is not a JSON object/array.

    Only objects and arrays count: a secret whose whole text is `"123"` or
    `true` is a plain string, not a JSON document with fields.
    """
    stripped = text.lstrip()
    if not stripped or stripped[0] not in "{[":
        return None
    try:
        return from_json(json.loads(text))
    except ValueError:
        return None
