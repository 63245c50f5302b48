"""Tests for smagent.config_yaml: the YAML reader of the config file."""

from __future__ import annotations

import time

import pytest

from smagent.config_yaml import MAX_DEPTH, MAX_NODES, YamlProblem, load

BILLION_LAUGHS = "".join(
    [
        'a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n',
        *(
            f"{name}: &{name} [{', '.join([f'*{prev}'] * 9)}]\n"
            for prev, name in zip("abcdefgh", "bcdefghi", strict=True)
        ),
    ]
)


pytestmark = pytest.mark.parametrize("pure_python", [False, True], ids=["libyaml", "python"])
"""Every test runs with libyaml's parser and with PyYAML's Python one: both must agree."""


def problem_of(text: str, pure_python: bool) -> YamlProblem:
    with pytest.raises(YamlProblem) as info:
        load(text, pure_python=pure_python)
    return info.value


# --- merge keys -----------------------------------------------------------------------------------


def test_merge_key_copies_the_anchored_mapping(pure_python: bool) -> None:
    """`<<: *base` brings in the keys of the anchored mapping."""
    data = load(
        "base: &b {type: env, rate_limit: 3}\nuse: {<<: *b, max_concurrency: 2}\n",
        pure_python=pure_python,
    )
    assert {"type": "env", "rate_limit": 3, "max_concurrency": 2} == data["use"]


def test_explicit_key_overrides_merged_one_without_duplicate_error(pure_python: bool) -> None:
    """A key written next to `<<` wins over the merged value and is not a duplicate."""
    data = load("base: &b {a: 1, b: 2}\nuse:\n  b: 3\n  <<: *b\n", pure_python=pure_python)
    assert {"a": 1, "b": 3} == data["use"]


def test_merge_of_a_list_earlier_mappings_win(pure_python: bool) -> None:
    """`<<: [*x, *y]`: where both have a key, the first one listed wins (YAML 1.1 rule)."""
    data = load(
        "x: &x {k: from-x}\ny: &y {k: from-y, j: 1}\nuse: {<<: [*x, *y]}\n", pure_python=pure_python
    )
    assert {"k": "from-x", "j": 1} == data["use"]


def test_merge_chain_and_anchor_used_as_value_and_merged(pure_python: bool) -> None:
    """A node merged into another and also used on its own keeps its own explicit keys."""
    data = load(
        "base: &base {x: 1}\nmid: &mid {<<: *base, x: 2, y: 1}\ntop: {<<: *mid, z: 1}\n<<: *mid\n",
        pure_python=pure_python,
    )
    assert {"x": 2, "y": 1} == data["mid"]
    assert {"x": 2, "y": 1, "z": 1} == data["top"]
    assert 2 == data["x"]


def test_duplicate_key_still_refused_with_its_line(pure_python: bool) -> None:
    """Two explicit equal keys are an error naming both lines, merges or not."""
    problem = problem_of("base: &b {a: 1}\nuse:\n  <<: *b\n  a: 2\n  a: 3\n", pure_python)
    assert ("duplicate key 'a' (first at line 4)", 5, 3) == (
        problem.problem,
        problem.line,
        problem.column,
    )


def test_two_merge_keys_in_one_mapping_are_duplicates(pure_python: bool) -> None:
    """`<<` written twice in one mapping is a duplicate key (write `<<: [*a, *b]`)."""
    problem = problem_of("a: &a {x: 1}\nb: &b {y: 1}\nuse: {<<: *a, <<: *b}\n", pure_python)
    assert "duplicate key '<<'" in problem.problem


def test_merge_of_a_scalar_is_refused_with_position(pure_python: bool) -> None:
    """`<<: 1` is an error at the merged value."""
    problem = problem_of("use: {<<: 1}\n", pure_python)
    assert "expected a mapping or list of mappings for merging" in problem.problem
    assert (1, 11) == (problem.line, problem.column)


# --- keys -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "column"),
    [("? [a, b]\n: x\n", 3), ("{? {a: 1} : x}\n", 4), ("outer:\n  ? [a]\n  : x\n", 5)],
    ids=["block-list", "flow-mapping", "nested"],
)
def test_complex_key_is_refused_with_position(text: str, column: int, pure_python: bool) -> None:
    """A list or mapping used as a key is refused at the key, not a TypeError."""
    problem = problem_of(text, pure_python)
    assert "a key must be plain text" in problem.problem
    assert column == problem.column


def test_keys_are_the_text_as_written(pure_python: bool) -> None:
    """`1:`, `null:`, `~:`, `yes:`, `1.5:` and `2024-01-01:` are the keys as written."""
    data = load("1: a\nnull: b\n~: c\nyes: d\n1.5: e\n2024-01-01: f\n", pure_python=pure_python)
    assert ["1", "null", "~", "yes", "1.5", "2024-01-01"] == list(data)


def test_quoted_and_plain_spelling_of_one_key_are_duplicates(pure_python: bool) -> None:
    """`1:` and `"1":` are one key, so the second is a duplicate."""
    assert "duplicate key '1'" in problem_of('1: a\n"1": b\n', pure_python).problem


# --- values ---------------------------------------------------------------------------------------


def test_dates_stay_text(pure_python: bool) -> None:
    """An unquoted date is its text (a stage label), not a datetime."""
    assert {"stage": "2024-01-01", "n": 3, "ok": True, "none": None} == load(
        "stage: 2024-01-01\nn: 3\nok: true\nnone: null\n", pure_python=pure_python
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a: !!int abc\n", "cannot read this value as int"),
        ("a: !!float abc\n", "cannot read this value as float"),
        ("a: !!int " + "9" * 5000 + "\n", "cannot read this value as int"),
        ("a: !!timestamp 2001-02-30\n", "!!timestamp is not used in a config"),
        ("a: !!set {x, y}\n", "!!set is not used in a config"),
        ("a: !!omap [{x: 1}]\n", "!!omap is not used in a config"),
        ("a: !!python/object:os.system {}\n", "could not determine a constructor"),
        ("a: !vault secret/x\n", "could not determine a constructor for the tag '!vault'"),
        ("a: !!binary abc\n", "failed to decode base64 data"),
    ],
    ids=["int", "float", "int-digits", "timestamp", "set", "omap", "python", "local-tag", "b64"],
)
def test_bad_or_foreign_tag_is_refused_at_its_position(
    text: str, expected: str, pure_python: bool
) -> None:
    """A tagged value that cannot be built, or a tag a config has no use for, names line 1."""
    problem = problem_of(text, pure_python)
    assert expected in problem.problem
    assert (1, 4) == (problem.line, problem.column)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a: !!int ''\n", "cannot read this value as int"),
        ("a: !!int '+'\n", "cannot read this value as int"),
        ("a: !!float _\n", "cannot read this value as float"),
        ("a: !!bool x\n", "cannot read this value as bool"),
    ],
    ids=["int-empty", "int-sign", "float-underscore", "bool"],
)
def test_tagged_value_that_crashes_pyyaml_is_refused_at_its_position(
    text: str, expected: str, pure_python: bool
) -> None:
    """Tagged values on which PyYAML raises IndexError or KeyError are errors at line 1."""
    problem = problem_of(text, pure_python)
    assert (expected, 1, 4) == (problem.problem, problem.line, problem.column)


def test_binary_value_is_bytes(pure_python: bool) -> None:
    """`!!binary` gives bytes (the config then says where bytes are not accepted)."""
    assert {"a": b"hello"} == load("a: !!binary aGVsbG8=\n", pure_python=pure_python)


def test_control_character_is_refused_with_position(pure_python: bool) -> None:
    """A raw control character is named with its line and column."""
    problem = problem_of("a: 1\nb: \x01\n", pure_python)
    assert ("character U+0001 is not allowed in YAML", 2, 4) == (
        problem.problem,
        problem.line,
        problem.column,
    )


# --- documents ------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "\n", "# comment\n", "---\n", "--- \n...\n"])
def test_empty_document_is_none(text: str, pure_python: bool) -> None:
    """No document, or an empty one, loads as None."""
    assert load(text, pure_python=pure_python) is None


def test_second_document_is_refused(pure_python: bool) -> None:
    """A second `---` is an error at that line."""
    problem = problem_of("a: 1\n---\nb: 2\n", pure_python)
    assert "holds one YAML document" in problem.problem
    assert 2 == problem.line


def test_crlf_line_ends_are_read(pure_python: bool) -> None:
    """Windows line ends are plain line ends."""
    assert {"a": {"b": "c"}} == load("a:\r\n  b: c\r\n", pure_python=pure_python)


# --- bounds ---------------------------------------------------------------------------------------


def nested(depth: int) -> str:
    return "a: " + "[" * (depth - 1) + "]" * (depth - 1) + "\n"


def test_nesting_up_to_the_limit_loads(pure_python: bool) -> None:
    """MAX_DEPTH levels (the top mapping counts as one) load."""
    data = load(nested(MAX_DEPTH), pure_python=pure_python)
    depth = 1
    node = data["a"]
    while node:
        node, depth = node[0], depth + 1
    assert MAX_DEPTH - 1 == depth


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 500, 100_000])
def test_deeper_nesting_is_refused_without_recursion_error(depth: int, pure_python: bool) -> None:
    """Past MAX_DEPTH levels: a YamlProblem at the first level too many."""
    problem = problem_of(nested(depth), pure_python)
    assert f"nested more than {MAX_DEPTH} levels deep" == problem.problem
    assert (1, 3 + MAX_DEPTH) == (problem.line, problem.column)


def test_depth_through_aliases_is_refused(pure_python: bool) -> None:
    """A chain of anchors, each one level deeper, counts as the depth it expands to."""
    lines = ["a0: &a0 [x]"] + [f"a{i}: &a{i} [*a{i - 1}]" for i in range(1, MAX_DEPTH + 1)]
    problem = problem_of("\n".join(lines) + "\n", pure_python)
    assert "levels deep once aliases are expanded" in problem.problem


def test_billion_laughs_is_refused_fast(pure_python: bool) -> None:
    """An alias bomb (9^9 strings) is refused by size, in well under a second of work."""
    started = time.process_time()
    problem = problem_of(BILLION_LAUGHS, pure_python)
    assert f"aliases expand this to more than {MAX_NODES} values" in problem.problem
    assert 7 == problem.line  # `g`, the first anchor past the limit
    assert time.process_time() - started < 2


def test_shared_aliases_within_the_limit_load(pure_python: bool) -> None:
    """Many aliases of a small node are fine: only the expanded size counts."""
    text = "a: &a {k: v}\nb: [" + ", ".join(["*a"] * 10_000) + "]\n"
    data = load(text, pure_python=pure_python)
    assert 10_000 == len(data["b"])
    assert {"k": "v"} == data["b"][-1]


@pytest.mark.parametrize(
    "text", ["a: &a [1, *a]\n", "a: &a {k: *a}\n", "a: &a {<<: {b: *a}}\n"], ids=str
)
def test_alias_inside_its_own_node_is_refused(text: str, pure_python: bool) -> None:
    """A cyclic alias is refused instead of building a structure nothing can walk."""
    assert "an alias refers to a node that contains it" == problem_of(text, pure_python).problem


def test_undefined_alias_is_refused_with_position(pure_python: bool) -> None:
    """An alias to no anchor names its line and column."""
    problem = problem_of("a: 1\nb: *nope\n", pure_python)
    assert ("found undefined alias 'nope'", 2, 4) == (
        problem.problem,
        problem.line,
        problem.column,
    )


def test_tab_indent_is_named_as_a_tab(pure_python: bool) -> None:
    """A tab used to indent is named as such, with its line and column."""
    problem = problem_of("a:\n\tb: 1\n", pure_python)
    assert ("found a tab that cannot start any token (YAML indents with spaces)", 2, 1) == (
        problem.problem,
        problem.line,
        problem.column,
    )


@pytest.mark.parametrize("text", ['a: "\\ud800"\n', 'a: "x\\udfffy"\n', '"\\ud800": 1\n'], ids=str)
def test_lone_surrogate_escape_is_refused(pure_python: bool, text: str) -> None:
    """A `\\ud800` escape (half a UTF-16 pair) cannot be encoded anywhere: refused on line 1."""
    problem = problem_of(text, pure_python)
    assert 1 == problem.line
    assert "escape" in problem.problem


def test_anchor_defined_twice_is_refused(pure_python: bool) -> None:
    """A second `&x` (a copy-paste slip: which one does `*x` mean?) is an error at it."""
    problem = problem_of("a: &x 1\nb: &x 2\nc: *x\n", pure_python)
    assert ("found duplicate anchor 'x'", 2, 4) == (problem.problem, problem.line, problem.column)
