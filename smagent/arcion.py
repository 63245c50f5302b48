"""Arcion Replicant's `arcion-sm://NS/KEY` tokens, written bare in a YAML template."""

from __future__ import annotations

import re
from typing import Any

from jinja2.ext import Extension

from smagent.filters import FilterError
from smagent.references import ARCION_SCHEME

_ARCION_TOKEN = re.compile(
    re.escape(ARCION_SCHEME)
    + r"(?P<ns>[A-Za-z_][A-Za-z0-9_-]*)/(?P<key>[A-Za-z0-9_.-]*[A-Za-z0-9_-])"
)
_COMMENT_START = re.compile(r"(^|\s)#")


class ArcionTokens(Extension):
    """Turns bare `arcion-sm://NS/KEY` tokens into secret lookups before parsing.

    The filter depends on where the token stands, so the file stays valid YAML
    whatever the value holds: a whole YAML scalar gets `yaml_scalar` (plain
    when it reads back the same, so `port: 3306` stays a number; quoted
    otherwise); inside `"..."` or `'...'` it gets that style's escaping;
    inside a longer plain value it is inserted as it is, and a value that
    would break the line (spaces, line breaks) is an error. A token after a
    `#` that starts a comment is left alone: Arcion samples keep old lines
    commented out.
    """

    def preprocess(self, source: str, name: str | None, filename: str | None = None) -> str:
        if ARCION_SCHEME not in source:
            return source
        return _ARCION_TOKEN.sub(_arcion_expression, source)


def _arcion_expression(match: re.Match[str]) -> str:
    line_start = match.string.rfind("\n", 0, match.start()) + 1
    line_end = match.string.find("\n", match.end())
    before = match.string[line_start : match.start()]
    after = match.string[match.end() : None if line_end < 0 else line_end]
    quote = _open_quote(before)
    if quote == '"':
        flt = "yaml_double_quoted_body"
    elif quote == "'":
        flt = "yaml_single_quoted_body"
    elif _COMMENT_START.search(before):
        return match.group(0)
    elif re.search(r"(^|[:\-\[{,])\s*$", before) and re.match(r"\s*($|#|,|\]|\})", after):
        flt = "yaml_scalar"
    else:
        flt = "yaml_plain_fragment"
    return f'{{{{ secret("{match["ns"]}/{match["key"]}") | {flt} }}}}'


_SCALAR_START = re.compile(r"(^\s*|[:\-]\s+|[\[{,]\s*)$")


def _open_quote(before: str) -> str | None:
    """The quote a YAML line is inside at its end, if any.

    A quote opens a scalar only where a scalar starts (line start, after `: `,
    `- `, `[`, `{`, `,`), so the apostrophe of `it's` opens nothing; a `#`
    after a space outside quotes starts a comment.
    """
    state: str | None = None
    index = 0
    while index < len(before):
        char = before[index]
        if state is None:
            if char in "\"'" and _SCALAR_START.search(before[:index]):
                state = char
            elif char == "#" and (index == 0 or before[index - 1].isspace()):
                return None
        elif state == '"':
            if char == "\\":
                index += 1
            elif char == '"':
                state = None
        elif char == "'":
            if before[index + 1 : index + 2] == "'":
                index += 1
            else:
                state = None
        index += 1
    return state


def yaml_plain_fragment(value: Any) -> str:
    """An Arcion value inside a longer unquoted YAML value: only text that cannot break it."""
    text = str(value)
    if any(char.isspace() or not char.isprintable() for char in text):
        raise FilterError(
            "a value with spaces or line breaks cannot stand inside a longer unquoted YAML "
            "value; put quotes around that value in the file"
        )
    return text
