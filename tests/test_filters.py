"""Tests for smagent.filters: every filter round-trips through its real consumer's parser."""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import traceback
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from dotenv import dotenv_values
from hypothesis import given, settings
from hypothesis import strategies as st

from smagent import filters
from smagent.filters import (
    FilterError,
    b64decode,
    b64encode,
    env_quote,
    mycnf_quote,
    pgpass_escape,
    scram_sha256,
    shell_quote,
    tojson,
    toyaml,
    urlencode,
    yaml_double_quoted_body,
    yaml_scalar,
    yaml_single_quoted_body,
)
from smagent.values import Binary, BinaryAsTextError, JsonObject, from_json
from tests.postgres import Postgres

CANARY = "CANARY-s3cr3t-7f1d"
NASTY = "p@ss:w/rd#1 'x' \"y\" $HOME ${X} \\ \t\n end"

# Any text but NUL, which no shell argument or environment variable can hold.
no_nul_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"))
json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
json_data = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=12,
)

YAML_TRICKY = [
    "yes", "No", "on", "OFF", "y", "null", "Null", "~", "", "0777", "0o17", "0x1F", "1_000",
    "1.0", "1e3", ".inf", "-.nan", "+5", "-0", "00", "190:20:30", "2001-02-03", "2001-02-30",
    " x", "x ", "a: b", "a:", ":", "#x", "a #b", "'q'", '"q"', "- x", "-", "?", "? x", "[x", "x]",
    "{x", "}", "a,b", "*x", "&x", "!x", "!!str x", "%x", "@x", "`x", "|", ">", "---", "...",
    "--- x", "a\nb", "a\n\nb", "\n", "a\tb", "\tx", "x\r", "é", "\u00a0x", "a\u2028b", "a\x85b",
    "\ufeffx", "\x7f", "\x00", "😀", "<<", "=", "True", "arcion-sm://ns/pw",
]  # fmt: skip


def load_value(document: str) -> Any:
    return yaml.safe_load(document)["k"]


def is_plain_int_of(loaded: object, text: str) -> bool:
    return type(loaded) is int and str(loaded) == text


def dotenv_read(line_value: str) -> str | None:
    return dotenv_values(stream=io.StringIO(f"K={line_value}\n"))["K"]


# --- tojson --------------------------------------------------------------------------------------


def test_tojson_does_not_html_escape() -> None:
    """tojson writes <, >, & and ' as they are, unlike Jinja's builtin."""
    assert "\"<a href='x'>&amp; é\"" == tojson("<a href='x'>&amp; é")


def test_tojson_keeps_key_order_and_indents() -> None:
    """tojson keeps the secret's key order and honours indent."""
    assert '{\n  "b": 1,\n  "a": [\n    true,\n    null\n  ]\n}' == tojson(
        from_json({"b": 1, "a": [True, None]}), indent=2
    )


def test_tojson_refuses_binary_inside() -> None:
    """tojson raises BinaryAsTextError naming the reference for a binary value inside data."""
    with pytest.raises(BinaryAsTextError, match="ns/blob"):
        tojson({"k": Binary(b"\x00\x01", label="ns/blob")})


@settings(max_examples=150)
@given(json_data)
def test_tojson_round_trips_through_json_loads(data: Any) -> None:
    """json.loads reads tojson's output back as the same data."""
    assert data == json.loads(tojson(data))
    assert data == json.loads(tojson(from_json(data)))


# --- yaml_scalar and toyaml ----------------------------------------------------------------------


@pytest.mark.parametrize("text", YAML_TRICKY)
def test_yaml_scalar_reads_back_as_the_same_text(text: str) -> None:
    """yaml_scalar output reads back as the exact text (or the int it spells) in every context."""
    out = yaml_scalar(text)
    for document, unwrap in [
        (f"k: {out}", lambda d: d["k"]),
        (f"- {out}", lambda d: d[0]),
        (f"[{out}, z]", lambda d: d[0]),
        (f"{{k: {out}, z: 1}}", lambda d: d["k"]),
        (out, lambda d: d),
    ]:
        loaded = unwrap(yaml.safe_load(document))
        assert loaded == text or is_plain_int_of(loaded, text), document


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("3306", "3306"),
        ("-5", "-5"),
        ("db.example.com", "db.example.com"),
        ("jdbc:mysql://db:3306/x", "jdbc:mysql://db:3306/x"),
        ("p@ss-w0rd", "p@ss-w0rd"),
        ("yes", '"yes"'),
        ("0777", '"0777"'),
        ("1.0", '"1.0"'),
        ("a: b", '"a: b"'),
        ("a #b", '"a #b"'),
        ("a,b", '"a,b"'),
        ('say "hi"\n', '"say \\"hi\\"\\n"'),
        ("\x7f\x85\u2028", '"\\x7f\\x85\\u2028"'),
    ],
)
def test_yaml_scalar_writes_plain_only_when_plain_reads_back(text: str, expected: str) -> None:
    """yaml_scalar writes plain text where it reads back, and double-quotes the rest."""
    assert expected == yaml_scalar(text)


def test_yaml_scalar_keeps_plain_ints_as_numbers() -> None:
    """A port written as `3306` stays a YAML int, as Arcion expects."""
    assert {"port": 3306} == yaml.safe_load(f"port: {yaml_scalar('3306')}")
    assert {"port": 3306} == yaml.safe_load(f"port: {yaml_scalar(3306)}")


@pytest.mark.parametrize(
    ("value", "expected"),
    [(True, "true"), (False, "false"), (None, "null"), (1.5, "1.5"), (1e16, "1.0e+16")],
)
def test_yaml_scalar_writes_typed_scalars_as_yaml(value: object, expected: str) -> None:
    """Booleans, null and floats are written as the YAML values they are."""
    assert expected == yaml_scalar(value)
    assert value == load_value(f"k: {expected}")


@settings(max_examples=200)
@given(st.text())
def test_yaml_scalar_round_trips_any_text(text: str) -> None:
    """Any text read back from yaml_scalar's output, as a mapping value or flow item, is itself."""
    out = yaml_scalar(text)
    for loaded in (load_value(f"k: {out}"), yaml.safe_load(f"[{out}]")[0]):
        assert loaded == text or is_plain_int_of(loaded, text)


def test_yaml_scalar_keeps_text_as_text_inside_data() -> None:
    """Inside an object or array, text that spells an int stays text."""
    assert '{"": "0", a: ["3306", 3306]}' == yaml_scalar({"": "0", "a": ["3306", 3306]})


@settings(max_examples=100)
@given(json_data)
def test_yaml_scalar_round_trips_data_as_one_line(data: Any) -> None:
    """yaml_scalar writes objects and arrays as one-line flow YAML that reads back the same."""
    out = yaml_scalar(from_json(data))
    assert "\n" not in out
    loaded = load_value(f"k: {out}")
    if isinstance(data, str) and is_plain_int_of(loaded, data):
        return  # the documented exception: text spelling an integer is written plain
    assert data == loaded


@settings(max_examples=150)
@given(json_data)
def test_toyaml_round_trips_through_safe_load(data: Any) -> None:
    """yaml.safe_load reads toyaml's output back as the same data, with no trailing newline."""
    out = toyaml(from_json(data))
    assert not out.endswith("\n")
    assert data == yaml.safe_load(out)


def test_toyaml_writes_block_yaml_in_key_order() -> None:
    """toyaml writes mappings as block YAML, keys in the secret's order."""
    assert 'b: 1\na:\n- x\n- "yes"\n- c: {}\n  d: []' == toyaml(
        from_json({"b": 1, "a": ["x", "yes", {"c": {}, "d": []}]})
    )


LONG_KEY = "k" * 1100


@pytest.mark.parametrize(
    "data",
    [
        {"\x85": "\x85", "3306": "0", "yes": True, "<<": None, "a: b": "", "": {"": ["1"]}},
        {LONG_KEY: 1, "b": {LONG_KEY: [1, {LONG_KEY: {"x": 2}}]}, "c": [{LONG_KEY: []}]},
    ],
    ids=["tricky-keys", "long-keys"],
)
def test_toyaml_and_yaml_scalar_write_any_key(data: dict[str, Any]) -> None:
    """Keys YAML would misread (NEL, int-like, merge, over 1024 characters) read back the same."""
    assert data == yaml.safe_load(toyaml(data))
    assert data == yaml.safe_load(yaml_scalar(data))


def test_toyaml_scalar_is_inline() -> None:
    """toyaml of a scalar is one inline scalar usable after `key: `."""
    assert '"a: b"' == toyaml("a: b")
    assert '"3306"' == toyaml("3306")
    assert "3306" == load_value(f"k: {toyaml('3306')}")
    assert "true" == toyaml(True)


def test_toyaml_refuses_binary_inside() -> None:
    """toyaml raises BinaryAsTextError for a binary value inside data."""
    with pytest.raises(BinaryAsTextError, match="ns/blob"):
        toyaml({"k": [Binary(b"\xff", label="ns/blob")]})


# --- quoted YAML bodies --------------------------------------------------------------------------


@settings(max_examples=200)
@given(st.text())
def test_yaml_double_quoted_body_round_trips_any_text(text: str) -> None:
    """Any text placed in "..." via yaml_double_quoted_body reads back as itself, on one line."""
    body = yaml_double_quoted_body(text)
    assert "\n" not in body
    assert text == load_value(f'k: "{body}"')
    assert text == yaml.safe_load(f'- "{body}"')[0]


@settings(max_examples=200)
@given(st.text())
def test_yaml_single_quoted_body_round_trips_or_refuses(text: str) -> None:
    """yaml_single_quoted_body round-trips any text single quotes can hold and refuses the rest."""
    holdable = re.fullmatch(
        "[\t\x20-\x7e\xa0-\u2027\u202a-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]*", text
    )
    if holdable:
        assert text == load_value(f"k: '{yaml_single_quoted_body(text)}'")
    else:
        with pytest.raises(ValueError, match="yaml_single_quoted_body"):
            yaml_single_quoted_body(text)


def test_yaml_double_quoted_body_escapes_exactly_what_yaml_cannot_print() -> None:
    """Each character of the first planes is written as itself iff YAML prints it, else escaped."""
    printable = re.compile(
        "[\x20-\x7e\xa0-\u2027\u202a-\ud7ff\ue000-\ufefe\uff00-\ufffd\U00010000-\U0010ffff]"
    )
    short = {"\\": "\\\\", '"': '\\"', "\t": "\\t", "\n": "\\n", "\r": "\\r"}
    for code in [*range(0x3000), *range(0xFEF0, 0x10010)]:
        char = chr(code)
        if char in short:
            expected = short[char]
        elif printable.fullmatch(char):
            expected = char
        else:
            expected = f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"
        assert expected == yaml_double_quoted_body(char), hex(code)


def test_yaml_single_quoted_body_doubles_quotes() -> None:
    """A single quote is written as two."""
    assert "it''s" == yaml_single_quoted_body("it's")


@pytest.mark.parametrize("text", ["a\nb", "a\rb", "a\x85b", "a\u2028b", "\x07"])
def test_yaml_single_quoted_body_refuses_line_breaks(text: str) -> None:
    """Line breaks and unprintable characters cannot be held in single quotes: ValueError."""
    with pytest.raises(ValueError, match="yaml_single_quoted_body"):
        yaml_single_quoted_body(text)


# --- shell_quote ---------------------------------------------------------------------------------


@settings(max_examples=200)
@given(st.text())
def test_shell_quote_round_trips_through_shlex(text: str) -> None:
    """shlex.split reads shell_quote's output back as exactly one word, the text."""
    assert [text] == shlex.split(shell_quote(text))


def test_shell_quote_of_empty_text_is_an_empty_word() -> None:
    """The empty string is quoted as '' rather than vanishing."""
    assert "''" == shell_quote("")


def run_sh_printf(word: str) -> bytes:
    result = subprocess.run(
        ["/bin/sh", "-c", f"printf %s {word}"], capture_output=True, check=True, timeout=10
    )
    return result.stdout


@pytest.mark.parametrize(
    "text",
    [NASTY, "", "'", "''", "\\'", "$(id)", "`id`", "a\nb", "-n", "*", "~", "!x", "é😀", "\x01\x7f"],
)
def test_shell_quote_survives_a_real_shell(text: str) -> None:
    """/bin/sh passes shell_quote's output to a command as the exact text."""
    assert text.encode() == run_sh_printf(shell_quote(text))


@settings(max_examples=25, deadline=None)
@given(no_nul_text)
def test_shell_quote_round_trips_through_a_real_shell(text: str) -> None:
    """/bin/sh passes shell_quote's output of any text without NUL through unchanged."""
    assert text.encode() == run_sh_printf(shell_quote(text))


# --- env_quote -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", ""),
        ("s3cr3t", "s3cr3t"),
        ("user@host:5432/db,x=y+z%", "user@host:5432/db,x=y+z%"),
        ("a b", "'a b'"),
        ('a"b $HOME #c', "'a\"b $HOME #c'"),
        ("line1\nline2", "'line1\nline2'"),
        ("it's", '"it\'s"'),
        ("back\\slash", '"back\\\\slash"'),
        ("cr\r", '"cr\\r"'),
        ("${X}", '"${\'=:-$}{X}"'),
    ],
)
def test_env_quote_picks_the_simplest_exact_form(text: str, expected: str) -> None:
    """env_quote writes plain, then single-quoted, then double-quoted with escapes."""
    assert expected == env_quote(text)


@settings(max_examples=200)
@given(st.text())
def test_env_quote_round_trips_through_python_dotenv(text: str) -> None:
    """python-dotenv (default interpolate=True) reads env_quote's output back as the text."""
    assert text == dotenv_read(env_quote(text))


@pytest.fixture(scope="module")
def env_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="smagent-env-") as name:
        yield Path(name)


@settings(max_examples=100)
@given(st.text())
def test_env_quote_round_trips_through_a_dotenv_file(env_dir: Path, text: str) -> None:
    """A real .env file (read with universal newlines) gives back the text, CR included."""
    path = env_dir / "test.env"
    path.write_text(f"A=1\nK={env_quote(text)}\nB=2\n", encoding="utf-8")
    assert {"A": "1", "K": text, "B": "2"} == dotenv_values(path)


def test_env_quote_survives_interpolation(monkeypatch: pytest.MonkeyPatch) -> None:
    """`${X}`, `${X:-d}` and `$X` stay literal even when X is set in the environment."""
    monkeypatch.setenv("X", "oops")
    monkeypatch.setenv("'", "oops")
    for text in ["${X}", "a${X:-d}b", "$X", "$${X}", "${", "${'=:-$}", "}${X}{", NASTY]:
        assert text == dotenv_read(env_quote(text))


# --- urlencode -----------------------------------------------------------------------------------


def test_urlencode_encodes_url_delimiters() -> None:
    """/, :, @, ?, #, & and space are all percent-encoded, a space as %20."""
    assert "a%2Fb%3Ac%40d%3Fe%23f%26g%20h~" == urlencode("a/b:c@d?e#f&g h~")


@settings(max_examples=200)
@given(st.text())
def test_urlencode_round_trips_inside_a_url(text: str) -> None:
    """unquote and urlsplit of postgres://u:{enc}@h/db give the password back."""
    encoded = urlencode(text)
    assert re.fullmatch(r"[A-Za-z0-9_.~%-]*", encoded)
    assert text == urllib.parse.unquote(encoded)
    parts = urllib.parse.urlsplit(f"postgres://u:{encoded}@h/db")
    assert ("u", "h", "/db") == (parts.username, parts.hostname, parts.path)
    assert text == urllib.parse.unquote(parts.password or "")


@settings(max_examples=150)
@given(st.dictionaries(st.text(min_size=1), st.text(), max_size=5))
def test_urlencode_mapping_round_trips_as_a_query(data: dict[str, str]) -> None:
    """A mapping becomes a query string that parse_qsl reads back, in order."""
    query = urlencode(JsonObject(data))
    assert list(data.items()) == urllib.parse.parse_qsl(query, keep_blank_values=True)


def test_urlencode_mapping_writes_values_as_json_text() -> None:
    """Non-text values in a mapping are written in their JSON text form."""
    assert "a=true&b=1&c=%5B1%2C2%5D" == urlencode(from_json({"a": True, "b": 1, "c": [1, 2]}))


# --- base64 --------------------------------------------------------------------------------------


@settings(max_examples=200)
@given(st.text())
def test_b64_round_trips_text(text: str) -> None:
    """b64decode(b64encode(text)) is the text."""
    assert text == b64decode(b64encode(text))


@settings(max_examples=200)
@given(st.binary())
def test_b64_round_trips_binary(data: bytes) -> None:
    """A Binary's bytes come back as text when they are UTF-8, else as a Binary."""
    encoded = b64encode(Binary(data, label="ns/blob"))
    assert base64.b64encode(data).decode() == encoded
    assert encoded == b64encode(data)
    decoded = b64decode(encoded)
    try:
        expected: str | Binary = data.decode("utf-8")
    except UnicodeDecodeError:
        expected = Binary(data, label="ignored")
    assert expected == decoded


def test_b64decode_accepts_surrounding_whitespace() -> None:
    """The newline `base64` leaves at the end is framing, not data."""
    assert "abc" == b64decode("YWJj\n")
    assert "abc" == b64decode("  YWJj  ")


def test_b64decode_labels_binary_results() -> None:
    """Bytes that are not UTF-8 decode to a Binary that cannot be written as text."""
    decoded = b64decode("/w==")
    assert isinstance(decoded, Binary)
    assert "b64decode result" == decoded.label
    with pytest.raises(BinaryAsTextError):
        str(decoded)


@pytest.mark.parametrize("text", ["abc", "ab=c", "YW Jj", "YW\nJj", "YWJj!", "ÿÿÿÿ"])
def test_b64decode_is_strict(text: str) -> None:
    """Bad padding, inner whitespace and non-alphabet characters raise ValueError."""
    with pytest.raises(ValueError, match=r"^b64decode: input is not valid base64$"):
        b64decode(text)


# --- values with every special character, and values that are not text --------------------------


def test_nasty_value_survives_every_filter(monkeypatch: pytest.MonkeyPatch) -> None:
    """A value full of YAML, shell, dotenv and URL syntax comes back unchanged from each filter."""
    monkeypatch.setenv("X", "oops")
    assert NASTY == load_value(f"k: {yaml_scalar(NASTY)}")
    assert NASTY == load_value(f"k: {toyaml(NASTY)}")
    assert {"k": NASTY} == yaml.safe_load(toyaml({"k": NASTY}))
    assert NASTY == load_value(f'k: "{yaml_double_quoted_body(NASTY)}"')
    one_line = NASTY.replace("\n", " ")
    assert one_line == load_value(f"k: '{yaml_single_quoted_body(one_line)}'")
    with pytest.raises(ValueError, match="yaml_single_quoted_body"):
        yaml_single_quoted_body(NASTY)
    assert [NASTY] == shlex.split(shell_quote(NASTY))
    assert NASTY == dotenv_read(env_quote(NASTY))
    parts = urllib.parse.urlsplit(f"postgres://u:{urlencode(NASTY)}@h/db")
    assert NASTY == urllib.parse.unquote(parts.password or "")
    assert NASTY == b64decode(b64encode(NASTY))
    assert NASTY == json.loads(tojson(NASTY))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (True, "true"),
        (None, "null"),
        (3306, "3306"),
        (JsonObject({"a": 1}), "'{\"a\":1}'"),
        ({"a": [1, "é"]}, '\'{"a":[1,"é"]}\''),
    ],
)
def test_text_filters_write_non_text_as_json_text(value: object, expected: str) -> None:
    """Booleans, null, numbers and JSON containers are quoted in their JSON text form."""
    assert expected == shell_quote(value)


TEXT_FILTERS: list[Callable[[Any], object]] = [
    yaml_scalar,
    toyaml,
    yaml_double_quoted_body,
    yaml_single_quoted_body,
    shell_quote,
    env_quote,
    urlencode,
    b64decode,
    scram_sha256,
]


@pytest.mark.parametrize("text_filter", TEXT_FILTERS, ids=lambda f: f.__name__)
def test_text_filters_refuse_binary(text_filter: Callable[[Any], object]) -> None:
    """Every text filter raises BinaryAsTextError for a Binary and for bytes."""
    with pytest.raises(BinaryAsTextError, match="ns/blob"):
        text_filter(Binary(CANARY.encode(), label="ns/blob"))
    with pytest.raises(BinaryAsTextError, match=text_filter.__name__):
        text_filter(CANARY.encode())


class Opaque:
    def __repr__(self) -> str:
        return CANARY


def failing_calls() -> list[tuple[str, Callable[[], object]]]:
    blob = Binary(CANARY.encode(), label="ns/blob")
    return [
        ("b64decode-invalid", lambda: b64decode(f"{CANARY}!")),
        ("b64decode-non-ascii", lambda: b64decode(f"{CANARY}é")),
        ("b64decode-binary", lambda: b64decode(blob)),
        ("shell_quote-binary", lambda: shell_quote(blob)),
        ("shell_quote-bytes", lambda: shell_quote(CANARY.encode())),
        ("shell_quote-object", lambda: shell_quote(Opaque())),
        ("env_quote-binary", lambda: env_quote(blob)),
        ("urlencode-binary-in-mapping", lambda: urlencode({"k": blob})),
        ("tojson-binary-in-data", lambda: tojson({"k": [blob]})),
        ("tojson-object", lambda: tojson({"k": Opaque()})),
        ("toyaml-binary-in-data", lambda: toyaml({"k": blob})),
        ("toyaml-object", lambda: toyaml([Opaque()])),
        ("yaml_scalar-object", lambda: yaml_scalar(Opaque())),
        ("yaml_single_quoted_body", lambda: yaml_single_quoted_body(f"{CANARY}\n")),
        ("scram_sha256-nul", lambda: scram_sha256(f"{CANARY}\x00")),
        ("scram_sha256-bad-salt", lambda: scram_sha256(CANARY, salt=f"{CANARY}!")),
        ("scram_sha256-iterations", lambda: scram_sha256(CANARY, iterations=0)),
        ("scram_sha256-surrogate", lambda: scram_sha256(f"{CANARY}\ud800")),
        ("toyaml-object-key", lambda: toyaml({Opaque(): 1})),
        ("pgpass_escape-line-break", lambda: pgpass_escape(f"{CANARY}\n")),
        ("mycnf_quote-nul", lambda: mycnf_quote(f"{CANARY}\x00")),
    ]


@pytest.mark.parametrize(
    ("name", "call"), failing_calls(), ids=[name for name, _ in failing_calls()]
)
def test_errors_never_contain_the_value(name: str, call: Callable[[], object]) -> None:
    """No filter's error (message, args, chained errors, traceback) contains the input."""
    with pytest.raises((ValueError, TypeError)) as info:
        call()
    rendered = "".join(traceback.format_exception(info.value))
    assert CANARY not in rendered, name
    assert CANARY not in repr(info.value.args), name
    assert CANARY not in repr(info.value.__context__), name


@pytest.mark.parametrize(
    ("name", "call"), failing_calls(), ids=[name for name, _ in failing_calls()]
)
def test_every_deliberate_error_is_a_filter_error(name: str, call: Callable[[], object]) -> None:
    """A filter refusing its input raises FilterError, or BinaryAsTextError for binary input."""
    expected = BinaryAsTextError if "binary" in name or "bytes" in name else FilterError
    with pytest.raises((FilterError, BinaryAsTextError)) as info:
        call()
    assert expected is type(info.value)


def test_filter_error_is_a_public_value_error() -> None:
    """FilterError is a ValueError, not a TypeError, and is in the module's `__all__`."""
    assert (True, False) == (
        issubclass(FilterError, ValueError),
        issubclass(FilterError, TypeError),
    )
    assert "FilterError" in filters.__all__


# --- scram_sha256 --------------------------------------------------------------------------------

VERIFIER = re.compile(
    r"SCRAM-SHA-256\$(?P<iterations>\d+):(?P<salt>[A-Za-z0-9+/=]+)"
    r"\$(?P<stored>[A-Za-z0-9+/=]+):(?P<server>[A-Za-z0-9+/=]+)"
)


def check_verifier(verifier: str, secret: bytes) -> tuple[int, bytes]:
    """Recompute StoredKey and ServerKey from the parsed salt (RFC 5802) and compare."""
    match = VERIFIER.fullmatch(verifier)
    assert match is not None
    iterations = int(match["iterations"])
    salt = base64.b64decode(match["salt"], validate=True)
    salted = hashlib.pbkdf2_hmac("sha256", secret, salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored = base64.b64encode(hashlib.sha256(client_key).digest()).decode()
    server = base64.b64encode(hmac.new(salted, b"Server Key", hashlib.sha256).digest()).decode()
    assert (stored, server) == (match["stored"], match["server"])
    return iterations, salt


def test_scram_sha256_keys_match_an_independent_computation() -> None:
    """StoredKey and ServerKey recomputed with hashlib/hmac from the verifier's salt match."""
    iterations, salt = check_verifier(scram_sha256("pencil"), b"pencil")
    assert 4096 == iterations
    assert 16 == len(salt)


def test_scram_sha256_salt_is_derived_from_the_password() -> None:
    """The default salt is PBKDF2-HMAC-SHA256(password, a fixed context, iterations)[:16]."""
    _, salt = check_verifier(scram_sha256("pencil", iterations=5000), b"pencil")
    expected = hashlib.pbkdf2_hmac("sha256", b"pencil", b"smagent scram-sha-256 salt v1", 5000, 16)
    assert expected == salt


def test_scram_sha256_is_deterministic() -> None:
    """The same password gives the same verifier; different passwords get different salts."""
    assert scram_sha256("pencil") == scram_sha256("pencil")
    _, salt_a = check_verifier(scram_sha256("pencil"), b"pencil")
    _, salt_b = check_verifier(scram_sha256("pencil2"), b"pencil2")
    assert salt_a != salt_b


def test_scram_sha256_pins_salt_and_iterations() -> None:
    """salt= (base64) and iterations= appear in the verifier as given."""
    salt = base64.b64encode(b"0123456789abcdef").decode()
    verifier = scram_sha256("pencil", salt=salt, iterations=10000)
    assert verifier.startswith(f"SCRAM-SHA-256$10000:{salt}$")
    check_verifier(verifier, b"pencil")


def test_scram_sha256_leaves_a_verifier_unchanged() -> None:
    """A value that is already a SCRAM-SHA-256 verifier is returned as is."""
    verifier = scram_sha256("pencil")
    assert verifier == scram_sha256(verifier)


@pytest.mark.parametrize(
    ("password", "prepared"),
    [
        ("fi\x07", b"fi\x07"),  # pure ASCII: used as is, control characters included
        ("\ufb01", b"fi"),  # NFKC
        ("\uff50\uff41\uff53\uff53\u2460", b"pass1"),  # fullwidth letters, circled digit
        ("a\u00a0b\u3000c", b"a b c"),  # non-ASCII spaces map to a space
        ("a\u00adb\u200bc", b"ab c"),  # soft hyphen maps to nothing; ZWSP is a space in RFC 3454
        ("cafe\u0301", "caf\u00e9".encode()),  # NFKC composes
        ("\ufb01\x07", "\ufb01\x07".encode()),  # prohibited control character: raw bytes
        ("abc\u05d0", "abc\u05d0".encode()),  # RandALCat with LCat: raw bytes
        ("\u05d0\u05d1", "\u05d0\u05d1".encode()),  # RandALCat only: allowed
        ("\u00ad", "\u00ad".encode()),  # maps to nothing at all: raw bytes
        ("\U000e0001x\u00e9", "\U000e0001x\u00e9".encode()),  # tagging character: raw bytes
    ],
)
def test_scram_sha256_applies_postgres_saslprep(password: str, prepared: bytes) -> None:
    """The password is SASLprep-ed like PostgreSQL's pg_saslprep, with its raw-bytes fallback."""
    salt = base64.b64encode(b"fixed salt").decode()
    check_verifier(scram_sha256(password, salt=salt), prepared)


@pytest.mark.parametrize("iterations", [0, -1, True])
def test_scram_sha256_rejects_bad_iterations(iterations: int) -> None:
    """iterations must be a positive integer."""
    with pytest.raises(ValueError, match="iterations"):
        scram_sha256("pencil", iterations=iterations)


@pytest.mark.parametrize("salt", ["", "not base64!", "YWJj\n"])
def test_scram_sha256_rejects_bad_salt(salt: str) -> None:
    """salt= must be non-empty, strict base64."""
    with pytest.raises(ValueError, match="salt"):
        scram_sha256("pencil", salt=salt)


# --- scram_sha256 against a real PostgreSQL ------------------------------------------------------

PG_CASES = [
    # (role, password the verifier is made from, password the client logs in with)
    ("app_ascii", NASTY, NASTY),
    ("app_unicode", "pässwörd-密码-🔑", "pässwörd-密码-🔑"),
    ("app_nfkc", "\uff50\uff41\uff53\uff53\u2460\ufb01", "pass1fi"),
    ("app_spaces", "caf\u00e9\u00a0x\u00ad", "cafe\u0301 x"),
    ("app_prohibited", "\ufb01\x07", "\ufb01\x07"),
    ("app_bidi", "abc\u05d0", "abc\u05d0"),
]


@pytest.mark.postgres
def test_scram_sha256_verifier_logs_in_to_postgres(postgres: Postgres) -> None:
    """PostgreSQL stores our verifier as is and accepts the password (SASLprep-equivalent too)."""
    salt = base64.b64encode(b"pinned-salt-1234").decode()
    cases = [*PG_CASES, ("app_pinned", "pinned é", "pinned é")]
    for role, password, _ in cases:
        verifier = scram_sha256(password, salt=salt if role == "app_pinned" else None)
        assert "'" not in verifier
        postgres.admin(f"CREATE ROLE {role} LOGIN PASSWORD '{verifier}'")
        query = f"SELECT rolpassword FROM pg_authid WHERE rolname = '{role}'"  # noqa: S608
        stored = postgres.admin(query)
        assert verifier == stored
    for role, _, login_password in cases:
        logged_in = postgres.login(role, login_password)
        assert logged_in is True, f"{role} could not log in"


@pytest.mark.postgres
def test_scram_sha256_verifier_rejects_wrong_passwords(postgres: Postgres) -> None:
    """PostgreSQL refuses a wrong password, and the raw-bytes fallback is not normalized."""
    postgres.admin(f"CREATE ROLE app_wrong LOGIN PASSWORD '{scram_sha256('right-pässword')}'")
    for wrong in ["wrong", "right-passsword", "right-pässword "]:
        logged_in = postgres.login("app_wrong", wrong)
        assert logged_in is False, "a wrong password was accepted"
    postgres.admin(f"CREATE ROLE app_raw LOGIN PASSWORD '{scram_sha256(chr(0xFB01) + chr(7))}'")
    logged_in = postgres.login("app_raw", "fi\x07")
    assert logged_in is False, "the prohibited password was normalized"


# --- pgpass_escape and mycnf_quote, read back by libpq and MariaDB's option-file parser ----------


@given(st.text(alphabet=st.characters(blacklist_characters="\n\r\x00"), max_size=40))
def test_pgpass_escape_round_trips_libpq_rules(text: str) -> None:
    """Unescaping the way libpq does (backslash takes the next char) gives the text back."""
    escaped = pgpass_escape(text)
    assert ":" not in re.sub(r"\\.", "", escaped)
    assert text == re.sub(r"\\(.)", r"\1", escaped)


def test_pgpass_escape_refuses_line_breaks() -> None:
    """A line break cannot live in .pgpass: an error that does not quote the value."""
    with pytest.raises(ValueError, match="line break") as info:
        pgpass_escape(f"{CANARY}\nx")
    assert CANARY not in str(info.value)


@pytest.mark.postgres
def test_pgpass_file_logs_in_to_postgres(postgres: Any, tmp_path: Path) -> None:
    """A .pgpass line written with pgpass_escape lets psql log in with a nasty password."""
    password = "p:a\\ss:wo\\:rd é 'q' \"d\" #x"
    postgres.admin(f"CREATE ROLE pgpass_user LOGIN PASSWORD '{scram_sha256(password)}'")
    passfile = tmp_path / "pgpass"
    fields = ["127.0.0.1", str(postgres.port), "*", "pgpass_user", password]
    passfile.write_text(":".join(pgpass_escape(f) if f != "*" else f for f in fields) + "\n")
    passfile.chmod(0o600)
    assert postgres.login("pgpass_user", passfile=passfile) is True
    wrong = tmp_path / "wrong"
    wrong.write_text(f"127.0.0.1:{postgres.port}:*:pgpass_user:{password}\n")  # unescaped
    wrong.chmod(0o600)
    assert postgres.login("pgpass_user", passfile=wrong) is False


MY_PRINT_DEFAULTS = shutil.which("my_print_defaults")


def _read_mycnf(path: Path) -> dict[str, str]:
    if MY_PRINT_DEFAULTS is None:
        if os.environ.get("CI"):
            pytest.fail("my_print_defaults (mariadb-client-core) missing while CI is set")
        pytest.skip("my_print_defaults (Debian mariadb-client-core) is not installed")
    result = subprocess.run(
        [MY_PRINT_DEFAULTS, f"--defaults-file={path}", "client"],
        capture_output=True,
        check=True,
        timeout=10,
    )
    out: dict[str, str] = {}
    for chunk in result.stdout.decode("utf-8").split("--")[1:]:
        key, _, value = chunk.partition("=")
        out[key] = value[:-1] if value.endswith("\n") else value
    return out


@settings(max_examples=60, deadline=None)
@given(
    st.text(
        alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00-"),
        max_size=30,
    )
)
def test_mycnf_quote_round_trips_through_mariadb(text: str) -> None:
    """MariaDB's own option-file parser reads back exactly what mycnf_quote wrote."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "my.cnf"
        path.write_text(f"[client]\npassword = {mycnf_quote(text)} # trailing comment\n")
        assert {"password": text} == _read_mycnf(path)


def test_mycnf_quote_keeps_comment_and_quote_characters() -> None:
    """A password with #, quotes, backslashes and spaces survives the real parser."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "my.cnf"
        nasty = " p#ss \"w\" 'o' \\rd\t "
        path.write_text(f"[client]\npassword = {mycnf_quote(nasty)}\n")
        assert {"password": nasty} == _read_mycnf(path)


def test_mycnf_quote_refuses_nul() -> None:
    """NUL cannot live in an option file: an error without the value."""
    with pytest.raises(ValueError, match="NUL") as info:
        mycnf_quote(f"{CANARY}\x00")
    assert CANARY not in str(info.value)
