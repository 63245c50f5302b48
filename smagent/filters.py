"""The Jinja filters for the files that databases and services read.

Each filter is a pure function from a secret value to the text one consumer
parses back exactly: `tojson` for JSON, `toyaml` / `yaml_scalar` and the two
quoted-body filters for YAML, `shell_quote` for a POSIX shell, `env_quote` for
dotenv files, `urlencode` for URLs, `b64encode` / `b64decode`, and
`scram_sha256` for PostgreSQL and pgbouncer password verifiers, `pgpass_escape`
for libpq's password file and `mycnf_quote` for MySQL/MariaDB option files. The tests
round-trip every filter through the real consumer's parser.

Why we override Jinja's own filters:

- Jinja's `tojson` is for HTML: it escapes `<`, `>`, `&` and `'` as `\\u003c`
  and so on. A config file is not HTML, and a password full of `\\u0026` is
  surprising to anyone who reads the file. Ours is plain `json.dumps`.
- Jinja's `urlencode` leaves `/` (and, for URLs, `:` `@` ...) unencoded. That
  breaks a password inside `postgres://user:PASSWORD@host/db`, so ours encodes
  every reserved character.

Conventions shared by all filters:

- Secrets must not leak through errors. No exception raised here contains the
  input: messages name the filter and the type of the value, never the value.
  Every error a filter raises on purpose is a `FilterError`, except
  `BinaryAsTextError` for bytes given to a text filter.
- A `Binary` secret (bytes) reaches only the filters that take bytes
  (`b64encode`); every text filter raises `BinaryAsTextError`, so bytes never
  turn into `b'...'` or mojibake in a file.
- The text form of a non-string value is its JSON form: `true`, `false`,
  `null`, numbers as Python prints them, objects and arrays as compact JSON.
  Secrets are JSON documents, and a Python repr (`True`, `None`) has no place in
  a config file.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import json
import re
import shlex
import stringprep
import unicodedata
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

import yaml

from smagent.values import Binary, BinaryAsTextError, JsonArray, JsonObject

__all__ = [
    "SCRAM_MAX_ITERATIONS",
    "FilterError",
    "as_text",
    "b64decode",
    "b64encode",
    "check_scram_iterations",
    "env_quote",
    "is_scram_verifier",
    "mycnf_quote",
    "pgpass_escape",
    "scram_sha256",
    "shell_quote",
    "tojson",
    "toyaml",
    "urlencode",
    "yaml_double_quoted_body",
    "yaml_scalar",
    "yaml_single_quoted_body",
]


class FilterError(ValueError):
    """A filter refused its input; the message names the filter and the type only, never the input.

    The renderer shows these messages to users as they are, and passes any
    other exception on as its type only. A ValueError (not a TypeError) even
    where the type is what is wrong, so there is one kind to catch; a binary
    secret given to a text filter raises `BinaryAsTextError` instead.
    """


# --- text conversion shared by the text filters -------------------------------------------------


def _text(value: object, filter_name: str) -> str:
    """The text form of `value` (see the module docstring), or an error naming the type."""
    if isinstance(value, str):
        return str(value)  # an exact str, even for a subclass such as markupsafe.Markup
    if isinstance(value, Binary):
        raise BinaryAsTextError(value.label)
    if isinstance(value, bytes | bytearray | memoryview):
        raise BinaryAsTextError(f"the input of {filter_name}")
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, JsonObject | JsonArray):
        return str(value)
    if isinstance(value, Mapping | list | tuple):
        return json.dumps(
            value, ensure_ascii=False, separators=(",", ":"), default=_json_default(filter_name)
        )
    raise FilterError(f"{filter_name}: cannot write a value of type {type(value).__name__} as text")


def as_text(value: object, consumer: str) -> str:
    """The text form the text filters write (module docstring), for other writers of text.

    Errors name `consumer` and the type, never the value.
    """
    return _text(value, consumer)


def _json_default(filter_name: str) -> Callable[[object], object]:
    """The `default=` hook of json.dumps: refuses bytes and unknown types, naming only the type."""

    def default(obj: object) -> object:
        if isinstance(obj, Binary):
            raise BinaryAsTextError(obj.label)
        if isinstance(obj, bytes | bytearray | memoryview):
            raise BinaryAsTextError(f"a value inside the input of {filter_name}")
        raise FilterError(
            f"{filter_name}: cannot write a value of type {type(obj).__name__} as JSON"
        )

    return default


# --- JSON ---------------------------------------------------------------------------------------


def tojson(value: object, indent: int | None = None) -> str:
    """`value` as JSON, non-ASCII kept as is and nothing HTML-escaped.

    Keys keep their order (Jinja's builtin sorts them); the output is stable
    because a secret's JSON is.
    """
    return json.dumps(value, ensure_ascii=False, indent=indent, default=_json_default("tojson"))


# --- YAML ---------------------------------------------------------------------------------------


# Characters PyYAML's reader accepts anywhere in a stream (its NON_PRINTABLE, inverted), minus the
# ones that YAML folds as line breaks inside quotes (NEL, LS, PS) and the BOM. Everything else is
# written as an escape in a double-quoted scalar.
# Compiled on first use: these Unicode classes cost milliseconds to compile, which every
# `render --once` would pay at start-up even when no template uses a YAML filter.
@functools.cache
def _yaml_verbatim() -> re.Pattern[str]:
    return re.compile(
        "[\x20-\x7e\xa0-\u2027\u202a-\ud7ff\ue000-\ufefe\uff00-\ufffd\U00010000-\U0010ffff]"
    )


_YAML_SHORT_ESCAPES = {"\\": "\\\\", '"': '\\"', "\t": "\\t", "\n": "\\n", "\r": "\\r"}


# What single quotes cannot hold: line breaks (folded into spaces) and what the reader rejects.
# The ASCII part alone compiles in microseconds and decides the usual, all-ASCII value.
_ASCII_NOT_SINGLE_QUOTABLE = re.compile("[^\t\x20-\x7e]")


@functools.cache
def _yaml_not_single_quotable() -> re.Pattern[str]:
    return re.compile("[^\t\x20-\x7e\xa0-\u2027\u202a-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _yaml_escape(char: str) -> str:
    short = _YAML_SHORT_ESCAPES.get(char)
    if short is not None:
        return short
    if char.isascii():  # decided without the Unicode class, whose compile costs ~3 ms
        if " " <= char <= "~":
            return char
    elif _yaml_verbatim().match(char):
        return char
    code = ord(char)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def _yaml_double_quoted(text: str) -> str:
    return '"' + "".join(_yaml_escape(char) for char in text) + '"'


_UNREADABLE = object()


def _yaml_safe_load(text: str) -> object:
    try:
        return yaml.safe_load(text)
    except (yaml.YAMLError, ValueError, OverflowError, RecursionError):  # e.g. 2001-02-30
        return _UNREADABLE


def _reads_back_plain(text: str, *, int_ok: bool = False) -> bool:
    """Whether `text` written plain reads back as itself (or, if `int_ok`, as the int it spells).

    Checked with PyYAML itself, in every context the text may be written in (a
    document, after `key: `, after `- `, inside `[...]` and `{...}`), rather
    than against a hand-written list of YAML's special cases (`yes`, `~`,
    `0777`, `: `, ` #`, ...), which is easy to get wrong.
    """
    if not text:
        return False
    expected = _yaml_safe_load(text)
    if isinstance(expected, str):
        if expected != text:
            return False
    elif not int_ok or type(expected) is not int or str(expected) != text:  # not a bool
        return False
    contexts = (
        (f"k: {text}", {"k": expected}),
        (f"- {text}", [expected]),
        (f"[{text}]", [expected]),
        (f"{{k: {text}}}", {"k": expected}),
    )
    # repr() compares types too: {"k": 1} == {"k": True} in Python, but not in YAML.
    return all(repr(_yaml_safe_load(doc)) == repr(want) for doc, want in contexts)


def _yaml_typed_scalar(value: bool | int | float | None) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    # PyYAML's own float spelling (`.nan`, `.inf`, `1.0e+16`) reads back as the same float.
    return yaml.safe_dump(value).split("\n", 1)[0]


def _yaml_inline(value: object, filter_name: str, *, int_text_ok: bool = False) -> str:
    """One-line YAML for `value`: a scalar, or flow `{...}` / `[...]`.

    A string reads back as the same string, except that with `int_text_ok` a
    string that spells an int (`3306`) is written plain and reads back as that
    int: `yaml_scalar`'s rule for text that replaces a token in a YAML file.
    """
    if isinstance(value, str):
        text = str(value)
        plain = _reads_back_plain(text, int_ok=int_text_ok)
        return text if plain else _yaml_double_quoted(text)
    if value is None or isinstance(value, bool | int | float):
        return _yaml_typed_scalar(value)
    if isinstance(value, Mapping):
        items = (
            f"{_yaml_key_prefix(key, filter_name)}: {_yaml_inline(item, filter_name)}"
            for key, item in value.items()
        )
        return "{" + ", ".join(items) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_yaml_inline(item, filter_name) for item in value) + "]"
    return _text(value, filter_name)  # raises: Binary, bytes and unknown types are not YAML


# PyYAML refuses an implicit key longer than 1024 characters; longer keys use `? key`.
_YAML_IMPLICIT_KEY_MAX = 1000


def _yaml_key_prefix(key: object, filter_name: str) -> str:
    """A mapping key, written `key` or, when too long for an implicit key, `? key`."""
    if isinstance(key, str):
        text = str(key)
        written = text if _reads_back_as_plain_key(text) else _yaml_double_quoted(text)
    elif key is None or isinstance(key, bool | int | float):
        written = _yaml_typed_scalar(key)
    else:
        raise FilterError(f"{filter_name}: cannot write a key of type {type(key).__name__}")
    return f"? {written}" if len(written) > _YAML_IMPLICIT_KEY_MAX else written


def _reads_back_as_plain_key(text: str) -> bool:
    if not _reads_back_plain(text) or not isinstance(_yaml_safe_load(text), str):
        return False  # a key written `3306` would read back as the int 3306
    want = repr({text: "v"})
    return all(repr(_yaml_safe_load(doc)) == want for doc in (f"{text}: v", f"{{{text}: v}}"))


def _yaml_block_lines(
    value: Mapping[Any, Any] | list[Any] | tuple[Any, ...], filter_name: str
) -> list[str]:
    """Block YAML for a non-empty mapping or sequence, one string per line."""
    lines: list[str] = []
    if isinstance(value, Mapping):
        for key, item in value.items():
            prefix = _yaml_key_prefix(key, filter_name)
            head = [prefix, ":"] if prefix.startswith("? ") else [f"{prefix}:"]
            if isinstance(item, Mapping) and item:
                lines += [*head, *("  " + line for line in _yaml_block_lines(item, filter_name))]
            elif isinstance(item, list | tuple) and item:
                lines += [*head, *_yaml_block_lines(item, filter_name)]
            else:
                lines += [*head[:-1], f"{head[-1]} {_yaml_inline(item, filter_name)}"]
        return lines
    for item in value:
        if isinstance(item, Mapping | list | tuple) and item:
            first, *rest = _yaml_block_lines(item, filter_name)
            lines += [f"- {first}", *("  " + line for line in rest)]
        else:
            lines.append(f"- {_yaml_inline(item, filter_name)}")
    return lines


def toyaml(value: object) -> str:
    """`value` as YAML that `yaml.safe_load` reads back as the same value.

    A scalar becomes one inline YAML scalar, usable after `key: `: text is
    written plain where it reads back as the same text, double-quoted
    otherwise. Unlike `yaml_scalar`, the text `3306` stays text (`"3306"`):
    toyaml keeps types, yaml_scalar keeps a token's spelling.

    A non-empty mapping or sequence becomes block YAML (the style of
    `yaml.safe_dump(..., default_flow_style=False, sort_keys=False)`) without a
    trailing newline, keys in their original order; indent it yourself, e.g.
    `{{ x | toyaml | indent(2) }}`. Every string in it is one line, so
    indenting cannot change it.

    We write the block YAML ourselves rather than with `yaml.safe_dump`:
    PyYAML's emitter, with `allow_unicode=True`, writes some characters (NEL,
    U+0085) raw inside quotes where its own parser folds them into spaces. Our
    scalars go through one writer whose output is checked with PyYAML's parser.
    """
    if isinstance(value, Mapping | list | tuple) and value:
        return "\n".join(_yaml_block_lines(value, "toyaml"))
    return _yaml_inline(value, "toyaml")


def yaml_scalar(value: object) -> str:
    """`value` as one inline YAML node that reads back as the same value.

    Text is written plain when PyYAML reads the plain text back as exactly the
    same text, or as the integer it spells (`3306` stays a number, as Arcion
    expects), in a document, after `key: `, after `- ` and inside `[...]` and
    `{...}`. Anything else (`yes`, `null`, `~`, `0777`, `1.0`, a leading space,
    `: `, ` #`, quotes, indicators, line breaks, control characters) is written
    double-quoted with YAML escapes. Numbers, booleans and null are written as
    YAML numbers, booleans and null; objects and arrays as one-line flow YAML
    in which text stays text (as in `toyaml`).
    """
    return _yaml_inline(value, "yaml_scalar", int_text_ok=True)


def yaml_double_quoted_body(value: object) -> str:
    """The escaped text to put between the quotes of an existing `"..."` YAML scalar.

    For `password: "arcion-sm://ns/pw"`. Everything that is not printable, and
    every line break, is written as an escape, so the body is always one line.
    """
    return _yaml_double_quoted(_text(value, "yaml_double_quoted_body"))[1:-1]


def yaml_single_quoted_body(value: object) -> str:
    """The escaped text to put between the quotes of an existing `'...'` YAML scalar.

    Single quotes have one escape (`''` for `'`) and fold line breaks into
    spaces, so a value with a line break or a character YAML cannot print has
    no exact form there: that raises FilterError (use double quotes instead).
    """
    text = _text(value, "yaml_single_quoted_body")
    pattern = _ASCII_NOT_SINGLE_QUOTABLE if text.isascii() else _yaml_not_single_quotable()
    if pattern.search(text):
        raise FilterError(
            "yaml_single_quoted_body: the value has a line break or a character that YAML "
            "single quotes cannot hold; quote it with double quotes and yaml_double_quoted_body"
        )
    return text.replace("'", "''")


# --- shell, dotenv, URL -------------------------------------------------------------------------


def shell_quote(value: object) -> str:
    """`value` as one POSIX shell word (`shlex.quote`): `''` for the empty string."""
    return shlex.quote(_text(value, "shell_quote"))


# The characters that need no quoting in shell, dotenv, systemd and docker alike.
_ENV_PLAIN = re.compile(r"[A-Za-z0-9_@%+=:,./-]+")
# python-dotenv expands `${NAME}` and `${NAME:-default}` in every value, quoted or not, and has no
# escape for `$`. The only way to keep a literal `${` is to let that expansion produce the `$`:
# `${'=:-$}` expands to its default, `$`, because no variable can be named `'=` (an environment
# name never contains `=`, and a dotenv key can contain neither `=` unquoted nor `'` quoted).
_ENV_LITERAL_DOLLAR_BRACE = "${'=:-$}{"


def env_quote(value: object) -> str:
    """`value` as the right-hand side of `KEY=...` in a dotenv file.

    Exact for python-dotenv (`dotenv_values`, `load_dotenv`, with its default
    `interpolate=True`), which the tests check for any text. The form is the
    simplest that is exact:

    - the empty string: nothing (`KEY=`);
    - only `A-Z a-z 0-9 _ @ % + = : , . / -`: as is;
    - no `'`, `\\`, carriage return or `${`: in single quotes, with line
      breaks as they are;
    - otherwise in double quotes, with `\\\\`, `\\"` and `\\r` escaped and each
      `${` written as `${'=:-$}{` (python-dotenv expands `${...}` even in quotes
      and has no escape for `$`; this expansion yields a literal `$`).

    Other parsers: systemd's `EnvironmentFile=` reads every form the same,
    except a value with a carriage return (it reads `\\r` as two characters) or
    `${` (it does not expand, so it reads `${'=:-$}{`). docker `--env-file`
    takes the text after `=` literally, so only the unquoted form (and the
    empty string) is exact there. A shell that sources the file reads the
    unquoted and single-quoted forms the same, but not the double-quoted one:
    use `shell_quote` for files that are sourced.
    """
    text = _text(value, "env_quote")
    if not text or _ENV_PLAIN.fullmatch(text):
        return text
    if not any(char in text for char in "'\\\r") and "${" not in text:
        return f"'{text}'"
    body = (
        text.replace("\\", "\\\\")
        .replace('"', '\\"')
        .replace("\r", "\\r")
        .replace("${", _ENV_LITERAL_DOLLAR_BRACE)
    )
    return f'"{body}"'


def urlencode(value: object) -> str:
    """`value` percent-encoded for any part of a URL; a mapping as a query string.

    Every character but `A-Z a-z 0-9 _ . - ~` is encoded (UTF-8), `/ : @ ? # &`
    included, so the result is safe as the password in `scheme://user:pw@host`.
    A mapping becomes `k1=v1&k2=v2` with the same encoding (`%20` for a space,
    not `+`, which libpq and most URL parsers would keep as a literal `+`).
    """
    if isinstance(value, Mapping):
        pairs = [(_text(key, "urlencode"), _text(item, "urlencode")) for key, item in value.items()]
        return urllib.parse.urlencode(pairs, safe="", quote_via=urllib.parse.quote)
    return urllib.parse.quote(_text(value, "urlencode"), safe="")


# --- database client files ----------------------------------------------------------------------


def pgpass_escape(value: object) -> str:
    """One field of a `.pgpass` line: libpq splits on `:` and reads `\\` as an escape.

    A line break cannot be written in a .pgpass field at all, so it is an
    error rather than a file that silently names the wrong password.
    """
    text = _text(value, "pgpass_escape")
    if "\n" in text or "\r" in text:
        raise FilterError("pgpass_escape: a .pgpass field cannot hold a line break")
    return text.replace("\\", "\\\\").replace(":", "\\:")


_MYCNF_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t", "\r": "\\r", "\b": "\\b"}


def mycnf_quote(value: object) -> str:
    """A MySQL/MariaDB option-file value in double quotes, with the parser's escapes.

    Unquoted, `#` starts a comment and surrounding spaces are dropped; inside
    double quotes the parser decodes `\\\\`, `\\"`, `\\n`, `\\t`, `\\r` and `\\b`,
    so every text survives except a NUL, which the option file cannot hold.
    """
    text = _text(value, "mycnf_quote")
    if "\x00" in text:
        raise FilterError("mycnf_quote: an option file cannot hold a NUL character")
    return '"' + "".join(_MYCNF_ESCAPES.get(char, char) for char in text) + '"'


# --- base64 -------------------------------------------------------------------------------------


def b64encode(value: object) -> str:
    """Standard base64 of a `Binary`'s bytes, of bytes, or of text as UTF-8."""
    if isinstance(value, Binary):
        data = value.reveal()
    elif isinstance(value, bytes | bytearray | memoryview):
        data = bytes(value)
    else:
        data = _text(value, "b64encode").encode("utf-8")
    return base64.b64encode(data).decode("ascii")


def b64decode(value: object) -> str | Binary:
    """Decode standard base64 (strictly: no whitespace, correct padding).

    Returns text when the bytes are UTF-8, else a `Binary`, so decoded bytes
    still cannot be written as text by accident.
    """
    # surrounding whitespace is framing (`base64` on the command line ends with a newline)
    data = _strict_b64decode(_text(value, "b64decode").strip())
    if data is None:
        raise FilterError("b64decode: input is not valid base64")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return Binary(data, label="b64decode result")


def _strict_b64decode(text: str) -> bytes | None:
    # Returns None rather than raising: a decoding error holds the input, and an error raised
    # while handling it would keep it reachable as __context__.
    if not text.isascii():
        return None
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except binascii.Error:
        return None


# --- PostgreSQL SCRAM-SHA-256 -------------------------------------------------------------------

SCRAM_MAX_ITERATIONS = 100_000
"""About 40 ms per verifier here (two PBKDF2 runs); PostgreSQL's default is 4096."""
_SCRAM_PREFIX = "SCRAM-SHA-256$"
_SCRAM_SALT_CONTEXT = b"smagent scram-sha-256 salt v1"
_SCRAM_SALT_LENGTH = 16


def _saslprep_prohibited(char: str) -> bool:
    return (
        stringprep.in_table_c12(char)
        or stringprep.in_table_c21_c22(char)
        or stringprep.in_table_c3(char)
        or stringprep.in_table_c4(char)
        or stringprep.in_table_c5(char)
        or stringprep.in_table_c6(char)
        or stringprep.in_table_c7(char)
        or stringprep.in_table_c8(char)
        or stringprep.in_table_c9(char)
        or stringprep.in_table_a1(char)
    )


def _postgres_password_bytes(password: str) -> bytes | None:
    """The bytes PostgreSQL hashes for `password`: SASLprep as its `pg_saslprep` does it.

    Like PostgreSQL (src/common/saslprep.c) and libpq: pure ASCII is used as
    is; otherwise non-ASCII spaces map to a space, "commonly mapped to nothing"
    characters are removed, and the result is NFKC-normalized. If the mapped
    text is empty, has a prohibited or unassigned character, or breaks the
    bidi rule, PostgreSQL uses the password's raw UTF-8 bytes instead, and so
    do we. The checks run on the mapped text before normalization, as
    PostgreSQL's do. The stringprep tables are RFC 3454's (Unicode 3.2), the
    same as PostgreSQL's; NFKC uses Python's Unicode version, PostgreSQL its
    own, which can differ only for characters unassigned in Unicode 3.2, which
    fall back to raw bytes anyway. None when the text has no UTF-8 form (a lone
    surrogate); not an error, which would hold the password.
    """
    try:
        raw = password.encode("utf-8")
    except UnicodeEncodeError:
        return None
    if password.isascii():
        return raw
    mapped = "".join(
        " " if stringprep.in_table_c12(char) else "" if stringprep.in_table_b1(char) else char
        for char in password
    )
    if not mapped or any(_saslprep_prohibited(char) for char in mapped):
        return raw
    if any(stringprep.in_table_d1(char) for char in mapped) and (
        any(stringprep.in_table_d2(char) for char in mapped)
        or not stringprep.in_table_d1(mapped[0])
        or not stringprep.in_table_d1(mapped[-1])
    ):
        return raw
    return unicodedata.normalize("NFKC", mapped).encode("utf-8")


def check_scram_iterations(iterations: object) -> None:
    """An iteration count PostgreSQL accepts (at least 1), and at most SCRAM_MAX_ITERATIONS."""
    if isinstance(iterations, bool) or not isinstance(iterations, int):
        raise FilterError("scram_sha256: iterations must be an integer")
    if not 1 <= iterations <= SCRAM_MAX_ITERATIONS:
        raise FilterError(
            f"scram_sha256: iterations must be from 1 (PostgreSQL's minimum) "
            f"to {SCRAM_MAX_ITERATIONS:,}"
        )


def is_scram_verifier(value: str) -> bool:
    """Whether `value` already is a verifier (`scram_sha256` returns it unchanged)."""
    return value.startswith(_SCRAM_PREFIX)


def scram_sha256(password: object, salt: str | None = None, iterations: int = 4096) -> str:
    """A PostgreSQL / pgbouncer SCRAM-SHA-256 verifier for `password`.

    `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>` (RFC 5802 and
    7677, base64), what `ALTER ROLE ... PASSWORD` and pgbouncer's userlist.txt
    accept. The password is SASLprep-ed as PostgreSQL does it (see
    `_postgres_password_bytes`). A value that already starts with
    `SCRAM-SHA-256$` is a verifier and is returned unchanged, as PostgreSQL
    treats it.

    The verifier is deterministic, so an unchanged password gives an unchanged
    file (a random salt would rewrite pgbouncer's userlist and reload it on
    every refresh). The default salt is the first 16 bytes of
    PBKDF2-HMAC-SHA256(password, "smagent scram-sha-256 salt v1", iterations).
    Why PBKDF2 and not a plain HMAC: the salt is public (PostgreSQL and
    pgbouncer send it to any client that starts to log in as the role, before
    any proof), so a salt derived from the password is a hash of it that anyone
    who can reach the server can test guesses against. With PBKDF2 each guess
    costs as much as against the verifier itself; with a plain HMAC it would
    cost `iterations` times less. It still means equal passwords have equal
    verifiers everywhere; pin a salt per role with `salt=` (base64) to avoid
    that. `iterations` defaults to 4096, PostgreSQL's default; PostgreSQL
    accepts any count from 1 up, we take 1 to `SCRAM_MAX_ITERATIONS`, so that
    a typo cannot tie up the host for minutes per verifier.
    """
    check_scram_iterations(iterations)
    text = _text(password, "scram_sha256")
    if text.startswith(_SCRAM_PREFIX):
        return text
    if "\x00" in text:
        raise FilterError("scram_sha256: a PostgreSQL password cannot contain a NUL character")
    secret = _postgres_password_bytes(text)
    if secret is None:
        raise FilterError("scram_sha256: the password is not valid Unicode text")
    if salt is None:
        salt_bytes = hashlib.pbkdf2_hmac(
            "sha256", secret, _SCRAM_SALT_CONTEXT, iterations, dklen=_SCRAM_SALT_LENGTH
        )
    else:
        pinned = _strict_b64decode(_text(salt, "scram_sha256"))
        if not pinned:
            raise FilterError("scram_sha256: salt must be non-empty base64")
        salt_bytes = pinned
    salted = hashlib.pbkdf2_hmac("sha256", secret, salt_bytes, iterations)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.digest(salted, b"Server Key", "sha256")

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode("ascii")

    return f"{_SCRAM_PREFIX}{iterations}:{b64(salt_bytes)}${b64(stored_key)}:{b64(server_key)}"
