"""Tests for smagent.values: JSON from secrets, its depth limit, and the check of fetched values."""

from __future__ import annotations

import json

import pytest

from smagent.values import (
    MAX_DEPTH,
    JsonArray,
    JsonObject,
    TooDeep,
    from_json,
    parse_json_text,
    value_problem,
)
from tests.conftest import CANARY


def nested_json(depth: int) -> str:
    return '{"a":' * depth + json.dumps(CANARY) + "}" * depth


def test_from_json_keeps_order_types_and_text_form() -> None:
    """Containers become JsonObject/JsonArray in their order; str() is compact JSON."""
    data = {"b": [1, {"c": None}], "a": True}

    wrapped = from_json(data)

    assert isinstance(wrapped, JsonObject)
    assert isinstance(wrapped["b"], JsonArray)
    assert isinstance(wrapped["b"][1], JsonObject)
    assert ["b", "a"] == list(wrapped)
    assert '{"b":[1,{"c":null}],"a":true}' == str(wrapped)


def test_depth_at_the_limit_parses() -> None:
    """JSON nested exactly MAX_DEPTH levels is parsed and walked."""
    node = parse_json_text(nested_json(MAX_DEPTH))

    for _ in range(MAX_DEPTH):
        node = node["a"]
    assert CANARY == node


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 500, 100_000])
def test_deeper_json_raises_too_deep_not_recursion_error(depth: int) -> None:
    """Past MAX_DEPTH, parse_json_text raises TooDeep (500 and 100,000 levels crashed before)."""
    with pytest.raises(TooDeep) as info:
        parse_json_text(nested_json(depth))

    assert f"nested more than {MAX_DEPTH} levels deep (the limit)" == str(info.value)


def test_from_json_refuses_deep_python_data_iteratively() -> None:
    """from_json walks without recursion: 100,000 levels raise TooDeep, not RecursionError."""
    data: list[object] = []
    for _ in range(100_000):
        data = [data]

    with pytest.raises(TooDeep):
        from_json(data)


@pytest.mark.parametrize("text", ["", "plain", "[not json", '"123"', "true", "{"])
def test_non_containers_are_not_json(text: str) -> None:
    """Only a JSON object or array counts; anything else is plain text (None)."""
    assert None is parse_json_text(text)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (CANARY, None),
        (b"\xff\x00binary", None),
        (json.dumps({"user": CANARY}), None),
        (nested_json(MAX_DEPTH), None),
        (nested_json(MAX_DEPTH + 1), f"the value is JSON nested more than {MAX_DEPTH} levels"),
        (CANARY + "\udcff", "the value is not valid Unicode text"),
        # too deep for json to find out whether it is JSON at all: refused the same way
        ("[" * 100_000, f"the value is JSON nested more than {MAX_DEPTH} levels"),
    ],
    ids=["text", "bytes", "json", "json-at-limit", "json-too-deep", "surrogate", "brackets"],
)
def test_value_problem(value: str | bytes, expected: str | None) -> None:
    """value_problem names what makes a fetched value unusable, never the value itself."""
    problem = value_problem(value)

    if expected is None:
        assert None is problem
    else:
        assert problem is not None
        assert problem.startswith(expected)
        assert CANARY not in problem
