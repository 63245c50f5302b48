"""Arcion tokens: every YAML position reads back exactly, or is refused with a clear error.

The oracle is written here, independently of smagent/arcion.py: the template
with the token swapped for a marker is read with PyYAML, and the marker is
replaced in the data the way Arcion means it (a token that is a whole plain
scalar takes the value typed, `3306` as a number; anywhere else the value's
text goes into the scalar's text). The rendered file, read back with PyYAML,
must give exactly that data, types included, or the template must fail with
an error that names template:line and the token and holds no value.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from smagent.config import Config, load_config
from smagent.providers.base import SecretValue
from smagent.references import SecretRef
from smagent.render import Renderer, RenderOutcome, arcion
from tests.conftest import CANARY, Workspace, assert_no_canary, run_cli

TOKEN = "arcion-sm://m/v"
MARKER = "zqmarkerzq"
SECRET = SecretRef("local", "m")


@dataclass(frozen=True)
class Position:
    name: str
    text: str
    typed: bool = False
    """The token is a whole plain scalar: the value is typed (`3306` a number)."""

    @property
    def commented(self) -> bool:
        """The token stands in a YAML comment: the data does not hold it."""
        docs = list(yaml.safe_load_all(self.text.replace(TOKEN, MARKER)))
        return MARKER not in json.dumps(docs, default=str)

    @property
    def line(self) -> int:
        return self.text[: self.text.index(TOKEN)].count("\n") + 1


def pos(name: str, text: str, *, typed: bool = False) -> Position:
    return Position(name, text.replace("TOKEN", TOKEN), typed)


POSITIONS = [
    pos("value", "k: TOKEN\n", typed=True),
    pos("value-before-comment", "k: TOKEN  # note\n", typed=True),
    pos("value-nested", "a:\n  b:\n    c: TOKEN\n  d: 1\n", typed=True),
    pos("seq-item", "- TOKEN\n- other\n", typed=True),
    pos("seq-of-maps", "- k: TOKEN\n  o: 1\n", typed=True),
    pos("nested-seq", "k:\n  - x\n  - TOKEN\n", typed=True),
    pos("flow-seq", "k: [TOKEN, other]\n", typed=True),
    pos("flow-seq-multiline", "k: [\n  a,\n  TOKEN,\n]\n", typed=True),
    pos("flow-map", "k: {a: TOKEN, b: c}\n", typed=True),
    pos("flow-map-key", "k: {TOKEN: v}\n", typed=True),
    pos("document", "TOKEN\n", typed=True),
    pos("after-doc-start", "--- TOKEN\n", typed=True),
    pos("before-doc-end", "k: TOKEN\n...\n", typed=True),
    pos("second-document", "a: 1\n---\nk: TOKEN\n", typed=True),
    pos("after-directive", "%YAML 1.1\n---\nk: TOKEN\n", typed=True),
    pos("block-key", "TOKEN: v\nz: 1\n", typed=True),
    pos("explicit-key", "? TOKEN\n: v\n", typed=True),
    pos("anchored-and-aliased", "k: &a TOKEN\nj: *a\n", typed=True),
    pos("merged", "base: &b {k: TOKEN}\nuse:\n  <<: *b\n  o: 1\n", typed=True),
    pos("crlf-lines", "k: TOKEN\r\nj: 2\r\n", typed=True),
    pos("after-bom", "\ufeffk: TOKEN\n", typed=True),
    pos("tagged-str", "k: !!str TOKEN\n"),
    pos("anchor-and-tag", "k: &a !!str TOKEN\nj: *a\n"),
    pos("double-quoted", 'k: "TOKEN"\n'),
    pos("double-quoted-part", 'k: "pre TOKEN post"\n'),
    pos("double-quoted-escapes", 'k: "a\\"b TOKEN \\\\"\n'),
    pos("double-quoted-key", '"TOKEN": v\n'),
    pos("double-quoted-multiline", 'k: "first\n  TOKEN\n  last"\n'),
    pos("double-quoted-line-end", 'k: "first TOKEN\n  last"\n'),
    pos("single-quoted", "k: 'TOKEN'\n"),
    pos("single-quoted-part", "k: 'it''s TOKEN'\n"),
    pos("single-quoted-hash", "k: 'a # TOKEN'\n"),
    pos("single-quoted-multiline", "k: 'first\n  TOKEN'\n"),
    pos("after-word-colon", "url: jdbc:mysql:TOKEN\n"),
    pos("inside-url", "url: jdbc:mysql://TOKEN:3306/db\n"),
    pos("before-at-suffix", "k: TOKEN@suffix\n"),
    pos("after-word-space", "k: prefix TOKEN\n"),
    pos("two-tokens", "k: TOKEN:TOKEN\n"),
    pos("after-hash-no-space", "k: a#TOKEN\n"),
    pos("after-tab-in-quotes", "k: 'a\tTOKEN'\n"),
    pos("flow-seq-part", "k: [pre-TOKEN, x]\n"),
    pos("plain-multiline-last", "k: first\n  TOKEN\n"),
    pos("plain-multiline-middle", "k: first\n  TOKEN\n  last\n"),
    pos("literal-block", "k: |\n  TOKEN\n"),
    pos("literal-block-part", "k: |\n  before TOKEN after\n  # not a comment\n"),
    pos("literal-block-strip", "k: |-\n  line\n  TOKEN\nz: 1\n"),
    pos("literal-block-keep", "k: |+\n  TOKEN\n\nz: 1\n"),
    pos("folded-block", "k: >\n  TOKEN\n"),
    pos("folded-block-strip", "k: >-\n  a\n  TOKEN\n"),
    pos("commented-line", "# k: TOKEN\nk: 1\n"),
    pos("comment-after-value", "k: 1  # was TOKEN\n"),
    pos("comment-in-flow", "k: [1, # TOKEN\n  2]\n"),
]

HOSTILE: list[object] = [
    "simple", "with space", "a: b", "a #b", "a#b", "it's", 'say "hi"', "'lead", '"lead',
    "@at", "*star", "&amp", "!bang", "%pct", "|pipe", ">gt", "-dash", "- item", "?q", "? q",
    "~", "null", "Null", "yes", "No", "on", "true", "0x1F", "0o17", "017", "1e3", "1.5",
    ".inf", "-.inf", ".nan", "3306", "-1", "0", "+1", "1_000", "12:30", "2001-12-14",
    "line1\nline2", "trailing\n", "\nleading", "tab\there", "\tlead tab", "trail tab\t",
    "ünïcødé ✓ 😀", "", " ", "trailing  ", "  leading", "a,b", "[x]", "{y}", "a\rb",
    "back\\slash", "---", "...", "\u2028ls", "\x85nel", "<<", "=", "k: [v]", "#hash",
    "nul\x00byte", "\ufeffbom", "a\n\n  b\n",
    f"{CANARY}: #'\"", f"- {CANARY}\n ", f" {CANARY}",
    3306, 1.5, -0.0, True, False, None, {"a": 1, "b": "3306", "c": [None]}, ["x", 2],
]  # fmt: skip


def text_of(value: object) -> str:
    """The text of a value inside a longer scalar: JSON's spelling for non-strings."""
    if isinstance(value, str):
        return value
    if isinstance(value, float | int) and not isinstance(value, bool):
        return str(value)
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def typed(value: object) -> object:
    """A whole plain token's value: a canonical decimal integer string becomes a number."""
    if isinstance(value, str) and re.fullmatch(r"0|-?[1-9][0-9]*", value):
        return int(value)
    return value


class Unwritable(Exception):
    """The intended data itself cannot exist (an object as a mapping key)."""


def substitute(data: object, position: Position, value: object) -> object:
    if isinstance(data, str):
        if position.typed and data == MARKER:
            return typed(value)
        return data.replace(MARKER, text_of(value))
    if isinstance(data, dict):
        out = {}
        for key, item in data.items():
            new_key = substitute(key, position, value)
            if isinstance(new_key, dict | list):
                raise Unwritable
            out[new_key] = substitute(item, position, value)
        return out
    if isinstance(data, list):
        return [substitute(item, position, value) for item in data]
    return data


def unwritable(position: Position, value: object) -> bool:
    try:
        expected(position, value)
    except Unwritable:
        return True
    return False


def expected(position: Position, value: object) -> list[object]:
    docs = yaml.safe_load_all(position.text.replace(TOKEN, MARKER))
    return [substitute(doc, position, value) for doc in docs]


def strict(data: object) -> object:
    """Data with its types spelled out, so 1, 1.0 and True differ and NaN equals NaN."""
    if isinstance(data, dict):
        return ("dict", [(strict(k), strict(v)) for k, v in data.items()])
    if isinstance(data, list):
        return ("list", [strict(item) for item in data])
    if isinstance(data, float):
        return ("float", "nan" if math.isnan(data) else repr(data))
    return (type(data).__name__, data)


# --- the renderer over every position -------------------------------------------------------


@dataclass
class Table:
    renderer: Renderer
    config: Config
    root: Path

    def render(self, index: int, value: object) -> RenderOutcome:
        values = {SECRET: SecretValue(json.dumps({"v": value}))}
        return self.renderer.render(self.config.templates[index], values)

    def label(self, index: int) -> str:
        return str(self.config.templates[index].source)


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> Table:
    root = tmp_path_factory.mktemp("arcion")
    ws = Workspace(root)
    ws.namespaces = {"m": {"provider": "local", "secret": "m"}}
    for index, position in enumerate(POSITIONS):
        source = root / "templates" / f"p{index}.yaml"
        source.parent.mkdir(parents=True, exist_ok=True)
        source.write_bytes(position.text.encode())  # CRLF kept as written
        ws.templates.append({"source": f"templates/p{index}.yaml", "destination": f"out/{index}"})
    config = load_config(ws.write())
    return Table(Renderer(config), config, root)


def check(table: Table, index: int, value: object) -> bool:
    """Assert the position's contract for one value; True when the value was written."""
    position = POSITIONS[index]
    outcome = table.render(index, value)
    try:
        want: list[object] | None = expected(position, value)
    except Unwritable:
        want = None
    if outcome.output is not None:
        assert want is not None, f"{position.name}: wrote data that cannot exist"
        got = list(yaml.safe_load_all(outcome.output.decode("utf-8")))
        assert strict(want) == strict(got), f"{position.name}: read back differently"
        if position.commented:
            assert TOKEN.encode() in outcome.output  # a commented-out token stays as written
        return True
    assert outcome.problems, position.name
    messages = [str(problem) for problem in outcome.problems]
    assert any(f"{table.label(index)}:{position.line}: " in m for m in messages), messages
    assert any(TOKEN in m for m in messages), messages
    assert_no_canary(*messages)
    if isinstance(value, str) and len(value) >= 6:
        assert all(value not in m for m in messages), position.name
    return False


TEXT_VALUES = [value for value in HOSTILE if isinstance(value, str)]


@pytest.mark.parametrize("index", range(len(POSITIONS)), ids=[p.name for p in POSITIONS])
def test_every_value_reads_back_exactly_or_is_refused(table: Table, index: int) -> None:
    """Each position and hostile value: the file reads back as the intended data.

    Refused (with a clear error) only where the intended data cannot exist: an
    object or a list as a mapping key.
    """
    for value in HOSTILE:
        written = check(table, index, value)
        assert (value, written) == (value, not unwritable(POSITIONS[index], value))


def test_the_table_is_large() -> None:
    """The table covers at least 30 positions and the hostile values the issue lists."""
    assert len(POSITIONS) >= 30
    assert len(POSITIONS) * len(HOSTILE) >= 2000


# --- property: random values in random positions ------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**20), max_value=10**20)
    | st.floats(allow_nan=False, allow_infinity=False)
)
yaml_ish = st.sampled_from(
    [":", ": ", " #", "#", "'", '"', "\\", "\n", "\r", "\t", " ", "-", "?", "@", "`", "|", ">",
     "*", "&", "!", "%", "~", "{", "}", "[", "]", ",", "---", "...", "\u2028", "\x85", "yes",
     "null", "0x", "0", "1", "e3", ".", "\ufeff", "\x00", "é", "😀"]
)  # fmt: skip
texts = st.lists(yaml_ish | st.text(max_size=4), max_size=8).map("".join) | st.text(
    st.characters(exclude_categories=["Cs"])
)
values = (
    texts
    | json_scalars
    | st.recursive(
        json_scalars | texts,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
        max_leaves=6,
    )
)


EXAMPLES = int(os.environ.get("SMAGENT_FUZZ_EXAMPLES", "400"))


@settings(max_examples=EXAMPLES)
@given(index=st.integers(0, len(POSITIONS) - 1), value=values)
def test_random_values_never_silently_corrupt(table: Table, index: int, value: object) -> None:
    """Random values in random positions read back exactly, or the data cannot exist (refused)."""
    written = check(table, index, value)
    assert written == (not unwritable(POSITIONS[index], value))


# --- particular rules -----------------------------------------------------------------------


def render_text(tmp_path: Path, text: str, fields: dict[str, object]) -> RenderOutcome:
    ws = Workspace(tmp_path)
    ws.namespaces = {"m": {"provider": "local", "secret": "m"}}
    ws.template("c.yaml", text)
    config = load_config(ws.write())
    values = {SECRET: SecretValue(json.dumps(fields))}
    return Renderer(config).render(config.templates[0], values)


def problems(outcome: RenderOutcome) -> str:
    assert outcome.output is None
    return "\n".join(map(str, outcome.problems))


def test_port_stays_a_number_and_text_stays_text(tmp_path: Path) -> None:
    """`port: TOKEN` with "3306" is the number 3306; `yes` and `0777` stay text."""
    text = "port: arcion-sm://m/port\nu: arcion-sm://m/u\nm: arcion-sm://m/mode\n"
    outcome = render_text(tmp_path, text, {"port": "3306", "u": "yes", "mode": "0777"})
    assert outcome.output is not None
    assert b'port: 3306\nu: "yes"\nm: "0777"\n' == outcome.output


def test_plain_value_stays_plain_when_it_can(tmp_path: Path) -> None:
    """A value that fits stays unquoted inside a longer plain value: the line looks as written."""
    text = "url: jdbc:mysql://arcion-sm://m/host:3306/db?user=arcion-sm://m/user\n"
    outcome = render_text(tmp_path, text, {"host": "db.internal", "user": "replicant"})
    assert b"url: jdbc:mysql://db.internal:3306/db?user=replicant\n" == outcome.output


def test_literal_block_takes_a_multi_line_value(tmp_path: Path) -> None:
    """A PEM certificate in a `|` block is indented line by line and reads back exactly."""
    pem = "-----BEGIN CERTIFICATE-----\nMIIB\n  x: #y\n-----END CERTIFICATE-----"
    text = "ssl:\n  cert: |\n    arcion-sm://m/pem\n  verify: true\n"
    outcome = render_text(tmp_path, text, {"pem": pem})
    assert outcome.output is not None
    assert b"\n    MIIB\n      x: #y\n" in outcome.output
    assert {"ssl": {"cert": pem + "\n", "verify": True}} == yaml.safe_load(outcome.output)


def test_block_scalar_that_cannot_hold_the_value_is_double_quoted(tmp_path: Path) -> None:
    """A value a `|` block cannot hold (a final line break under clip): one double-quoted line."""
    text = "ssl:\n  cert: |\n    arcion-sm://m/pem\n\n  verify: true\n"
    outcome = render_text(tmp_path, text, {"pem": "A\nB\n"})
    assert b'ssl:\n  cert: "A\\nB\\n\\n"\n\n  verify: true\n' == outcome.output


def test_a_refusal_names_the_line_the_token_and_what_to_do(tmp_path: Path) -> None:
    """A key that cannot hold the value: file:line, the token, what to do; never the value."""
    text = "a: 1\nb: 2\narcion-sm://m/v: x\n"
    message = problems(render_text(tmp_path, text, {"v": CANARY * 40}))
    assert f"c.yaml:3: {TOKEN}: the value cannot be written into an unquoted key" in message
    assert "use the token as a value, not in a key" in message
    assert_no_canary(message)


def test_not_yaml_is_refused(tmp_path: Path) -> None:
    """A file with tokens that is not valid YAML: an error with the line, no value, no output."""
    text = "k: arcion-sm://m/v\nbad: [unclosed\n"
    message = problems(render_text(tmp_path, text, {"v": CANARY}))
    assert "c.yaml:3: the rendered file is not valid YAML" in message
    assert "secret('NS/KEY')" in message
    assert_no_canary(message)


def test_not_yaml_message_never_quotes_the_file(tmp_path: Path) -> None:
    """PyYAML's own message quotes a character of the file; ours masks it (it may be a secret's)."""
    text = "{{ secrets.m.x }}\nk: arcion-sm://m/v\n"
    message = problems(render_text(tmp_path, text, {"v": "ok", "x": "@Q"}))
    assert "not valid YAML" in message
    assert "'@'" not in message
    assert "cannot start any token" in message


def test_tokens_in_anchors_and_tags_are_refused(tmp_path: Path) -> None:
    """A token used as an anchor name or a tag cannot be written: a clear error."""
    for text in ("k: &arcion-sm://m/v x\n", "k: !arcion-sm://m/v x\n"):
        outcome = render_text(tmp_path, text, {"v": "a"})
        message = problems(outcome)
        assert "not valid YAML" in message or "anchor, alias, tag or directive" in message


def test_tagged_int_takes_a_number_or_is_refused(tmp_path: Path) -> None:
    """`!!int TOKEN` reads back as the int; a value that is not one is refused, not written."""
    text = "port: !!int arcion-sm://m/v\n"
    assert {"port": 3306} == yaml.safe_load(render_text(tmp_path, text, {"v": "3306"}).output or "")
    message = problems(render_text(tmp_path, text, {"v": CANARY}))
    assert "tagged !!int" in message
    assert_no_canary(message)


def test_object_value_cannot_be_a_key(tmp_path: Path) -> None:
    """A JSON object as a whole-key token is refused: YAML keys must be scalars here."""
    message = problems(render_text(tmp_path, "arcion-sm://m/v: x\n", {"v": {"a": 1}}))
    assert "cannot be a mapping key" in message


def test_jinja_string_and_comment_keep_the_token(tmp_path: Path) -> None:
    """`{{ "arcion-sm://..." }}` writes the token itself, `{# #}` drops it: no lookup either."""
    text = 'a: {{ "arcion-sm://nope/x" }}\n{# arcion-sm://nope/y #}b: 1\n'
    outcome = render_text(tmp_path, text, {})
    assert b"a: arcion-sm://nope/x\nb: 1\n" == outcome.output
    assert () == outcome.lookups


def test_commented_token_needs_no_secret(tmp_path: Path) -> None:
    """A token in a YAML comment is kept as written and its namespace need not exist."""
    text = "# password: arcion-sm://old/pw\nk: arcion-sm://m/v  # was arcion-sm://old/v\n"
    outcome = render_text(tmp_path, text, {"v": "a #b"})
    assert b'# password: arcion-sm://old/pw\nk: "a #b"  # was arcion-sm://old/v\n' == (
        outcome.output
    )


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        ("arcion-sm://m/", "ends with '/'"),
        ("arcion-sm://9m/v", "is not a reference"),
        ("arcion-sm://", "needs a reference"),
    ],
)
def test_malformed_token_is_refused_not_written_through(
    tmp_path: Path, token: str, reason: str
) -> None:
    """A token that names no NS/KEY fails the template with the reason; in a comment it stays."""
    outcome = render_text(tmp_path, f"k: {token}\n", {"v": "a"})
    assert None is outcome.output
    assert reason in problems(outcome)
    commented = render_text(tmp_path, f"# k: {token}\nk: arcion-sm://m/v\n", {"v": "a"})
    assert f"# k: {token}\nk: a\n".encode() == commented.output


def test_filter_that_changes_a_token_is_refused(tmp_path: Path) -> None:
    """A token whose text a filter changed ({% filter upper %}) is an error, not garbage."""
    text = "{% filter upper %}k: arcion-sm://m/v{% endfilter %}\n"
    assert "changed its text" in problems(render_text(tmp_path, text, {"v": "a"}))


def test_token_repeated_by_a_loop(tmp_path: Path) -> None:
    """A token inside a loop is replaced in every copy."""
    text = "{% for i in range(3) %}k{{ i }}: arcion-sm://m/v\n{% endfor %}"
    outcome = render_text(tmp_path, text, {"v": "a: b"})
    assert {"k0": "a: b", "k1": "a: b", "k2": "a: b"} == yaml.safe_load(outcome.output or "")


def test_unknown_key_and_namespace_name_the_line(tmp_path: Path) -> None:
    """A token naming a missing key or namespace fails with file:line and the token."""
    message = problems(render_text(tmp_path, "a: 1\nk: arcion-sm://m/nope\n", {"v": "x"}))
    assert "c.yaml:2: arcion-sm://m/nope: key 'nope' not in secret m" in message
    message = problems(render_text(tmp_path, "k: arcion-sm://zz/v\n", {"v": "x"}))
    assert "c.yaml:1: arcion-sm://zz/v: " in message
    assert "unknown namespace 'zz'" in message


def test_binary_value_is_refused(tmp_path: Path) -> None:
    """A binary secret behind a token is refused with the usual b64encode advice."""
    ws = Workspace(tmp_path)
    ws.namespaces = {"bin": {"provider": "local"}}
    ws.template("c.yaml", "k: arcion-sm://bin/blob\n")
    config = load_config(ws.write())
    outcome = Renderer(config).render(
        config.templates[0],
        {SecretRef("local", "blob"): SecretValue(b"\x00\x01")},
    )
    assert "binary secret" in problems(outcome)


def test_tokens_are_found_in_the_same_round_as_other_references(tmp_path: Path) -> None:
    """A first render with no values asks for the tokens' secrets too (one fetch round)."""
    ws = Workspace(tmp_path)
    ws.namespaces = {"m": {"provider": "local", "secret": "m"}, "o": {"provider": "local"}}
    ws.template("c.yaml", "a: {{ secrets.o.other }}\nk: arcion-sm://m/v\n# arcion-sm://m/old\n")
    config = load_config(ws.write())
    outcome = Renderer(config).render(config.templates[0], {})
    assert {SECRET, SecretRef("local", "other")} == set(outcome.missing)
    assert {("v",), ()} == {lookup.key for lookup in outcome.lookups}


# --- end to end: the real command -----------------------------------------------------------


@pytest.fixture
def arcion_ws(tmp_path: Path) -> Workspace:
    ws = Workspace(tmp_path)
    ws.namespaces = {"m": {"provider": "local", "secret": "m"}}
    return ws


def test_render_once_refuses_and_keeps_the_old_file(arcion_ws: Workspace) -> None:
    """`render --once`: a token that cannot be written fails with exit 1, the old file stays."""
    ws = arcion_ws
    ws.secrets = {"m": json.dumps({"v": f"{CANARY}\n- injected: true"})}
    dest = ws.template("conn.yaml", "a: 1\nport: !!int arcion-sm://m/v\n")
    ws.template("ok.yaml", "k: arcion-sm://m/v\n")
    config = ws.write()
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text("old: content\n")
    run = run_cli("--config", config, "--log-format", "json", "render", "--once")
    assert 1 == run.returncode
    assert "old: content\n" == dest.read_text()
    assert_no_canary(run.stdout, run.stderr)
    assert "conn.yaml:2: arcion-sm://m/v: the scalar is tagged !!int" in run.stderr
    written = yaml.safe_load((ws.out / "ok.yaml").read_text())
    assert {"k": f"{CANARY}\n- injected: true"} == written  # the other template still written


def test_render_once_writes_exact_yaml_for_a_hostile_value(arcion_ws: Workspace) -> None:
    """`render --once` writes a hostile value inside a JDBC URL so it reads back exactly."""
    ws = arcion_ws
    password = f"{CANARY} #x: 'y' \"z\" @"
    ws.secrets = {"m": json.dumps({"v": password})}
    dest = ws.template("conn.yaml", "url: jdbc:mysql://u:arcion-sm://m/v@db:3306/x\nport: 1\n")
    run = run_cli("--config", ws.write(), "render", "--once")
    assert 0 == run.returncode, run.stderr
    assert {"url": f"jdbc:mysql://u:{password}@db:3306/x", "port": 1} == yaml.safe_load(
        dest.read_text()
    )
    assert_no_canary(run.stdout, run.stderr)


def test_render_once_refuses_a_file_that_is_not_yaml(arcion_ws: Workspace) -> None:
    """`render --once` on a non-YAML file with a token: exit 1, a clear error, the old file kept."""
    ws = arcion_ws
    ws.secrets = {"m": json.dumps({"v": CANARY})}
    dest = ws.template("app.ini", "[db]\npassword = arcion-sm://m/v\n")
    config = ws.write()
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text("old\n")
    run = run_cli("--config", config, "render", "--once")
    assert 1 == run.returncode
    assert "old\n" == dest.read_text()
    assert "app.ini:2: the rendered file is not valid YAML" in run.stderr
    assert_no_canary(run.stdout, run.stderr)


# --- the check itself ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("left", "right"),
    [
        (1, True),
        (1, 1.0),
        (0.0, -0.0),
        ("3306", 3306),
        ({"a": 1, "b": 2}, {"b": 2, "a": 1}),
        ([1, [2]], [1, [2.0]]),
        ({1: "x"}, {True: "x"}),
        (None, ""),
    ],
)
def test_comparison_is_strict_about_types_and_order(left: object, right: object) -> None:
    """The read-back check tells 1 from True and 1.0, text from numbers, and key order."""
    assert not arcion._same([left], [right])
    assert arcion._same([left], [left])


def test_comparison_takes_nan_and_shared_data() -> None:
    """NaN equals NaN; data shared many times (YAML aliases) is compared once, quickly."""
    assert arcion._same(float("nan"), float("nan"))
    shared: list[object] = ["x"]
    for _ in range(60):  # 2**60 leaves if walked naively
        shared = [shared, shared]
    copy: list[object] = ["x"]
    for _ in range(60):
        copy = [copy, copy]
    assert arcion._same(shared, copy)
    looped: list[object] = []
    looped.append(looped)
    assert arcion._same(looped, looped)


def test_alias_bomb_around_a_token_is_quick(tmp_path: Path) -> None:
    """A template full of nested YAML aliases is checked without expanding them."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    text = "\n".join([*lines, "k: arcion-sm://m/v", ""])
    outcome = render_text(tmp_path, text, {"v": "a: b"})
    assert outcome.output is not None
    assert {"k": "a: b"}.items() <= yaml.safe_load(outcome.output).items()


def test_deep_nesting_is_an_error_not_a_crash(tmp_path: Path) -> None:
    """A YAML file nested deeper than the parser can go: a clear error, no traceback."""
    text = "k: arcion-sm://m/v\nd: " + "[" * 1000 + "]" * 1000 + "\n"
    assert "nested too deeply" in problems(render_text(tmp_path, text, {"v": "x"}))


def test_included_token_names_the_included_file(tmp_path: Path) -> None:
    """A token in an included file is reported at that file's line."""
    ws = Workspace(tmp_path)
    ws.namespaces = {"m": {"provider": "local", "secret": "m"}}
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "part.yaml").write_text("x: 1\nk: !!int arcion-sm://m/v\n")
    ws.template("c.yaml", 'a: 1\n{% include "part.yaml" %}')
    config = load_config(ws.write())
    values = {SECRET: SecretValue(json.dumps({"v": "not a number"}))}
    outcome = Renderer(config).render(config.templates[0], values)
    assert "part.yaml:2: arcion-sm://m/v: the scalar is tagged !!int" in problems(outcome)


def test_not_yaml_after_jinja_names_the_output_line(tmp_path: Path) -> None:
    """When Jinja made the text, the YAML error names the line of the rendered output."""
    text = "{% for i in range(2) %}\nk{{ i }}: 1\n{% endfor %}bad: [x\nk: arcion-sm://m/v\n"
    message = problems(render_text(tmp_path, text, {"v": "x"}))
    assert "c.yaml: the rendered file is not valid YAML (line " in message
    assert "of the rendered output" in message


def test_each_scalar_gets_its_own_form(tmp_path: Path) -> None:
    """Scalars are checked one by one when one needs its fallback form; a tagged one stays."""
    text = "port: !!int arcion-sm://m/port\nk: first\n  arcion-sm://m/v\nq: 'arcion-sm://m/v'\n"
    outcome = render_text(tmp_path, text, {"port": "3306", "v": "a: b"})
    assert b"port: !!int 3306\nk: \"first a: b\"\nq: 'a: b'\n" == outcome.output


def test_token_text_in_a_secret_value_is_not_expanded(tmp_path: Path) -> None:
    """A value that spells a token is written as it is: one secret cannot pull in another."""
    text = "k: {{ secrets.m.w }}\nj: arcion-sm://m/w\n"
    outcome = render_text(tmp_path, text, {"w": "arcion-sm://m/v", "v": CANARY})
    assert {"k": "arcion-sm://m/v", "j": "arcion-sm://m/v"} == yaml.safe_load(outcome.output or "")
