"""Tests for smagent.providers.secrets_yaml: bounded YAML loading, one secret to text.

Every test runs with libyaml's parser and with PyYAML's own (`libyaml`
fixture), so the bounds hold whichever one a host's PyYAML has.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import yaml

from smagent.providers import secrets_yaml
from smagent.providers.secrets_yaml import (
    MAX_MERGED,
    MAX_PARSE_DEPTH,
    MAX_TEXT,
    MAX_VALUES,
    TooDeepToParse,
    Unconvertible,
    secret_text,
)
from smagent.values import MAX_DEPTH
from tests.conftest import CANARY

FAST = 10.0
"""Seconds a bounded load or conversion may take on a loaded 2-core host (they take < 1 s)."""


@pytest.fixture(
    params=[True, pytest.param(False, id="pure-python")],
    ids=lambda v: "libyaml" if v is True else "pure-python",
)
def libyaml(request: pytest.FixtureRequest) -> bool:
    if request.param and not secrets_yaml.HAS_LIBYAML:
        pytest.skip("PyYAML was built without libyaml")
    value: bool = request.param
    return value


def load(text: str, libyaml: bool) -> dict[str, Any]:
    data = secrets_yaml.load(text, libyaml=libyaml)
    assert isinstance(data, dict)
    return data


def problem(data: dict[str, Any], name: str) -> str:
    with pytest.raises(Unconvertible) as info:
        secret_text(data[name])
    return str(info.value)


def billion_laughs(levels: int = 10) -> str:
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for level in range(1, levels):
        refs = ", ".join([f"*l{level - 1}"] * 9)
        lines.append(f"l{level}: &l{level} [{refs}]")
    return "\n".join(lines) + "\n"


BAD_SECRETS = [
    ("self-alias", "bad: &a [*a]", "at [0]: a value that contains itself (a recursive YAML alias)"),
    ("self-alias-map", "bad: &a {x: *a}", "at x: a value that contains itself"),
    ("set", "bad: !!set {a, b}", "a set (!!set), which JSON cannot hold; write a list"),
    ("nan", "bad: .nan", "a number JSON cannot hold (.nan or .inf)"),
    ("nested-inf", "bad: {x: [1, -.inf]}", "at x[1]: a number JSON cannot hold"),
    ("huge-int", "bad: " + "7" * 5000, "a number too long to read (line 2)"),
    ("huge-hex", "bad: {n: 0x" + "f" * 4000 + "}", "at n: a number too long to write"),
    ("invalid-date", "bad: {when: 2001-02-30}", "at when: a value YAML cannot read"),
    ("invalid-date-key", "bad: {2001-02-30: x}", "a value YAML cannot read"),
    ("complex-key", "bad: {? [a, b] : c}", "a list or mapping used as a key (line 2)"),
    ("duplicate-keys", "bad: {1: a, '1': b}", "at 1: two keys that both read as '1'"),
    ("nested-binary", "bad: {x: !!binary AAH/}", "at x: binary data (!!binary)"),
    ("bad-base64", "bad: !!binary 'AAAAA'", "failed to decode base64 data"),
    ("unknown-tag", "bad: !vault {path: a}", "could not determine a constructor for the tag"),
    ("unknown-scalar-tag", "bad: !env X", "could not determine a constructor"),
    ("self-merge", "bad: &m {<<: *m, a: 1}", "a merge key (<<) that includes its own mapping"),
    ("merge-scalar", "bad: {<<: 5, a: 1}", "a merge key (<<) whose value is not a mapping"),
    ("bad-omap", "bad: !!omap [a]", "line 2"),
]


@pytest.mark.parametrize(("kind", "line", "expected"), BAD_SECRETS, ids=[c[0] for c in BAD_SECRETS])
def test_bad_secret_fails_alone(libyaml: bool, kind: str, line: str, expected: str) -> None:
    """A secret that cannot be served fails alone, saying what is wrong; its neighbours work."""
    data = load(f"before: {CANARY}\n{line}\nafter: {{user: ok, pw: {CANARY}}}\n", libyaml)

    message = problem(data, "bad")

    assert expected in message
    assert CANARY == secret_text(data["before"])
    assert {"user": "ok", "pw": CANARY} == json.loads(secret_text(data["after"]))


@pytest.mark.parametrize(
    "line",
    ["bad: !!int ''", "bad: {n: !!float _}", "bad: !!bool x", "bad: [!!timestamp x]"],
    ids=["int-empty", "float-underscore", "bool", "timestamp"],
)
def test_tagged_value_that_crashes_pyyaml_fails_alone(libyaml: bool, line: str) -> None:
    """Tagged values on which PyYAML raises IndexError, KeyError or AttributeError fail alone."""
    data = load(f"before: {CANARY}\n{line}\nafter: ok\n", libyaml)

    assert "a value YAML cannot read" in problem(data, "bad")
    assert "(line 2)" in problem(data, "bad")
    assert CANARY == secret_text(data["before"])
    assert "ok" == secret_text(data["after"])


def test_non_ascii_binary_is_not_quoted(libyaml: bool) -> None:
    """`!!binary` text that is not ASCII fails alone, without quoting its character."""
    data = load('bad: !!binary "AAA\u00e9"\n', libyaml)

    message = problem(data, "bad")

    assert "!!binary data that is not ASCII base64 (line 1)" == message
    assert "\u00e9" not in message


def test_messages_never_quote_the_value(libyaml: bool) -> None:
    """Problems name kinds, keys and lines, never the secret's own text."""
    data = load(
        f"a: {{pw: {CANARY}, when: 2001-02-30}}\n"
        f"b: !!set {{{CANARY}}}\n"
        f"c: &c [{CANARY}, *c]\n"
        f"d: !{CANARY[:6]}x {CANARY}\n",
        libyaml,
    )

    messages = [problem(data, name) for name in "abcd"]

    for message in messages:
        assert CANARY not in message
        assert "2001-02-30" not in message


def test_billion_laughs_is_refused_fast_and_alone(libyaml: bool) -> None:
    """An alias bomb fails its own secrets within the value budget, fast; the file still loads."""
    started = time.monotonic()
    data = load(f"fine: {CANARY}\n" + billion_laughs(), libyaml)

    refused = [name for name in data if name != "fine" and _fails(data[name])]

    assert ["l5", "l6", "l7", "l8", "l9"] == refused  # 9**6 > MAX_VALUES
    assert f"more than {MAX_VALUES:,} values once YAML aliases are expanded" in problem(data, "l9")
    assert CANARY == secret_text(data["fine"])
    assert FAST > time.monotonic() - started


def test_alias_of_a_big_string_is_refused_by_text_size(libyaml: bool) -> None:
    """Aliases that repeat one long string past MAX_TEXT are refused (values stay few)."""
    long = "x" * (MAX_TEXT // 8)
    data = load(f"s: &s {long}\nmany: [{', '.join(['*s'] * 9)}]\nfew: [*s, *s]\n", libyaml)

    assert "MiB of text once YAML aliases are expanded" in problem(data, "many")
    assert [long, long] == json.loads(secret_text(data["few"]))


def test_merge_bomb_is_refused_fast(libyaml: bool) -> None:
    """Merge keys that copy more than MAX_MERGED entries fail the mappings past it, fast."""
    lines = ["m0: &m0 {a: 1, b: 2, c: 3, d: 4, e: 5, f: 6, g: 7, h: 8, i: 9}"]
    for level in range(1, 12):
        refs = ", ".join([f"*m{level - 1}"] * 9)
        lines.append(f"m{level}: &m{level} {{<<: [{refs}], k{level}: 1}}")
    started = time.monotonic()

    data = load("\n".join(lines) + "\n", libyaml)

    assert f"copy more than {MAX_MERGED:,} entries in this file" in problem(data, "m11")
    assert "k1" in json.loads(secret_text(data["m1"]))
    assert FAST > time.monotonic() - started


def test_merge_keys_still_merge(libyaml: bool) -> None:
    """Ordinary merge keys work as YAML says: the mapping's own keys win, earlier merges win."""
    data = load(
        "base: &base {host: db, port: 5432}\n"
        "other: &other {port: 6432, tls: true}\n"
        "app: {<<: [*base, *other], port: 7000, user: app}\n"
        "one: {<<: *base}\n",
        libyaml,
    )

    assert {"host": "db", "port": 7000, "tls": True, "user": "app"} == json.loads(
        secret_text(data["app"])
    )
    assert {"host": "db", "port": 5432} == json.loads(secret_text(data["one"]))


def nested(depth: int, leaf: str = "x") -> str:
    return "[" * depth + leaf + "]" * depth


def test_nesting_at_the_limit_is_served(libyaml: bool) -> None:
    """A secret nested exactly MAX_DEPTH levels deep is served as JSON."""
    data = load(f"ok: {nested(MAX_DEPTH)}\n", libyaml)

    value = json.loads(secret_text(data["ok"]))

    for _ in range(MAX_DEPTH):
        value = value[0]
    assert "x" == value


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, MAX_DEPTH + 50, MAX_PARSE_DEPTH - 2])
def test_nesting_past_the_limit_fails_that_secret(libyaml: bool, depth: int) -> None:
    """A secret nested past MAX_DEPTH fails alone, naming the limit and its line."""
    data = load(f"before: {CANARY}\ndeep: {nested(depth, CANARY)}\nafter: ok\n", libyaml)

    message = problem(data, "deep")

    assert f"nested more than {MAX_DEPTH} levels deep (the limit)" in message
    assert "(line 2)" in message
    assert CANARY not in message
    assert "ok" == secret_text(data["after"])


@pytest.mark.parametrize("depth", [MAX_PARSE_DEPTH + 1, 100_000])
def test_nesting_past_the_parse_limit_refuses_the_file_fast(libyaml: bool, depth: int) -> None:
    """Past MAX_PARSE_DEPTH the whole file is refused with a position, without a crash or stall."""
    started = time.monotonic()

    with pytest.raises(TooDeepToParse) as info:
        secrets_yaml.load(f"ok: 1\ndeep: {nested(depth, CANARY)}\n", libyaml=libyaml)

    assert f"nested more than {MAX_PARSE_DEPTH:,} levels deep" == info.value.problem
    assert info.value.problem_mark is not None
    assert 1 == info.value.problem_mark.line
    assert FAST > time.monotonic() - started


def test_alias_into_a_cut_collection_fails_too(libyaml: bool) -> None:
    """An anchor inside a collection cut for depth can still be aliased: the alias fails too."""
    inner = "[" * (MAX_DEPTH + 5) + "&inner [x]" + "]" * (MAX_DEPTH + 5)
    data = load(f"deep: {inner}\nuses: {{v: *inner}}\nok: fine\n", libyaml)

    assert "nested more than" in problem(data, "uses")
    assert "fine" == secret_text(data["ok"])


def test_aliases_deepen_past_the_limit(libyaml: bool) -> None:
    """A shallow alias of a deep value counts its expanded depth."""
    data = load(f"d: &d {nested(MAX_DEPTH - 1)}\ntwice: {nested(10, '*d')}\n", libyaml)

    assert json.loads(secret_text(data["d"]))
    assert f"nested more than {MAX_DEPTH} levels deep" in problem(data, "twice")


def test_shared_values_are_not_cycles(libyaml: bool) -> None:
    """One anchor used twice side by side is repetition, not recursion."""
    data = load("s: &s {a: 1}\nboth: [*s, *s, {x: *s}]\n", libyaml)

    assert [{"a": 1}, {"a": 1}, {"x": {"a": 1}}] == json.loads(secret_text(data["both"]))


@pytest.mark.parametrize(
    ("yaml_value", "expected"),
    [
        (
            "{2001-01-01: x, 2001-01-02 10:00:00: y}",
            {"2001-01-01": "x", "2001-01-02 10:00:00": "y"},
        ),
        ("{1: a, 1.5: b, ~: c, false: d}", {"1": "a", "1.5": "b", "null": "c", "false": "d"}),
        ("{when: 2001-01-01, n: null, t: true}", {"when": "2001-01-01", "n": None, "t": True}),
        ("!!omap [{a: 1}, {b: 2}]", [["a", 1], ["b", 2]]),
    ],
    ids=["date-keys", "scalar-keys", "scalars", "omap"],
)
def test_yaml_scalars_become_json(libyaml: bool, yaml_value: str, expected: Any) -> None:
    """Dates and other scalar keys become their text, as json.dumps writes keys."""
    data = load(f"v: {yaml_value}\n", libyaml)

    assert expected == json.loads(secret_text(data["v"]))


@pytest.mark.parametrize(
    ("yaml_value", "expected"),
    [("5432", "5432"), ("1.5", "1.5"), ("true", "true"), ("~", ""), ("2025-01-31", "2025-01-31")],
)
def test_top_level_scalars_become_text(libyaml: bool, yaml_value: str, expected: str) -> None:
    """A whole secret that is a scalar is served as its plain text."""
    assert expected == secret_text(load(f"v: {yaml_value}\n", libyaml)["v"])


def test_error_positions_match_between_parsers() -> None:
    """libyaml and PyYAML report the same line and column for a syntax error."""
    if not secrets_yaml.HAS_LIBYAML:
        pytest.skip("PyYAML was built without libyaml")
    text = f"a: 1\nb: [x, {CANARY}\nc: 2\n"
    marks = []
    for libyaml in (True, False):
        with pytest.raises(yaml.MarkedYAMLError) as info:
            secrets_yaml.load(text, libyaml=libyaml)
        mark = info.value.problem_mark
        assert mark is not None
        marks.append((mark.line, mark.column))

    assert marks[0] == marks[1]


def test_value_budget_is_exact(libyaml: bool) -> None:
    """MAX_VALUES values pass once aliases are expanded; one more is refused."""
    row = "[" + ", ".join(["1"] * 99) + "]"  # an alias of it counts 100: itself and 99 ones
    rows = ", ".join(["*r"] * (MAX_VALUES // 100))
    data = load(f"r: &r {row}\nat: [{rows}]\nover: [{rows}, 1]\n", libyaml)

    assert MAX_VALUES // 100 == len(json.loads(secret_text(data["at"])))
    assert f"at [{MAX_VALUES // 100}]: more than 100,000 values" in problem(data, "over")


def _fails(value: Any) -> bool:
    try:
        secret_text(value)
    except Unconvertible:
        return True
    return False
