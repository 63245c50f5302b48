"""Arcion Replicant's `arcion-sm://NS/KEY` tokens, written bare in a YAML template.

In an Arcion connection file any value may be written `arcion-sm://NS/KEY`, and
Replicant replaces it with that secret's value. smagent does the same, so the
file works as a template unchanged, with one promise on top: the file written
reads back, through a YAML parser, as exactly the data the tokens mean, or the
template fails (the last good file stays) with an error that names the
template, the line and the token, never the value. A file that reads back as
something else is never written.

How:

1. Compiling a template (`ArcionTokens.filter_stream`), each token in its
   literal text becomes a placeholder: letters and digits only (so it reads as
   plain text in every YAML position), with a random part drawn per process (so
   no secret value can spell it). Tokens inside `{{ }}`, `{% %}` and `{# #}`
   are not literal text: `{{ "arcion-sm://NS/KEY" }}` writes the token itself.
2. After Jinja has rendered the file (`ArcionTokens.fill`), that text is parsed
   with PyYAML's safe loader: tokens are replaced only in valid YAML, anything
   else is an error (a file that is not YAML uses `{{ secret("NS/KEY") }}`).
   The parse tells where each placeholder stands: in a scalar (its span and
   style, whether it is a key), in a comment (the token is written back as it
   was and needs no secret: Arcion samples keep commented-out lines), or in an
   anchor, alias, tag or directive (refused).
3. The intended data is that parse with each scalar that holds tokens replaced
   by its intended value. A token that is a whole plain, untagged scalar
   (`port: arcion-sm://db/port`) takes the value typed: a JSON number, boolean,
   null, object or array as itself, a string that spells a decimal integer the
   canonical way (`3306`) as that integer (SPEC: `port: 3306` stays a number),
   any other string as itself. Any other scalar holding tokens (quoted, a block
   scalar, a longer value such as `jdbc:mysql://arcion-sm://db/host:3306`, a
   tagged one) is its own text with each token replaced by the value's text,
   constructed with the scalar's tag: text, unless it says `!!int` and so on.
4. Each such scalar is rewritten in place: in its own style where that can hold
   the value (a plain value stays plain, `"..."` gets YAML escapes, `'...'`
   doubled quotes, a block scalar the value's lines indented), else as one
   double-quoted scalar, which can hold any text. The result is parsed again
   with the safe loader and must equal the intended data, types included. If
   it does not, each scalar is tried on its own, form by form, and the first
   form that reads back exactly is kept; a scalar that no form can write (a key
   too long for YAML, a tag the value does not fit) fails the template, naming
   file:line and the token, never the value.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import re
import secrets
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import jinja2
import msgspec
import yaml
from jinja2.ext import Extension
from jinja2.lexer import Token, TokenStream

from smagent import filters
from smagent.references import ARCION_SCHEME
from smagent.values import Binary, BinaryAsTextError, JsonArray, JsonObject

_TOKEN = re.compile(
    re.escape(ARCION_SCHEME)
    + r"(?P<ref>[A-Za-z_][A-Za-z0-9_-]*/[A-Za-z0-9_.-]*[A-Za-z0-9_-]|[^\s'\"\[\]{},#]*)"
)
"""A token: `NS/KEY`, or else whatever follows the scheme up to a YAML delimiter. A
malformed token (`arcion-sm://a/`, `arcion-sm://9a/x`) is a site like the others, so
the reference parser refuses it with its reason, where it stands (a scalar: the
template fails; a comment: left as written), instead of going out unreplaced."""
_CANONICAL_INT = re.compile(r"0|-?[1-9][0-9]*")
_ADVICE = (
    "write the token alone as the value (`key: {token}`) or inside a double-quoted value "
    'on one line (`key: "...{token}..."`)'
)


class Site(msgspec.Struct, frozen=True):
    """A token as written in a template: what it names, and where."""

    reference: str
    """`NS/KEY`, as written after the scheme."""
    file: str
    line: int

    @property
    def token(self) -> str:
        return ARCION_SCHEME + self.reference


class Refusal(msgspec.Struct, frozen=True):
    """Why a template's tokens cannot be written (the message holds no value)."""

    message: str
    site: Site | None = None
    line: int | None = None
    """For a problem of the whole file: its line in the template, when that is known."""


class Refused(Exception):
    """The template cannot be written: see `refusals`."""

    def __init__(self, refusals: Sequence[Refusal]) -> None:
        super().__init__("; ".join(refusal.message for refusal in refusals))
        self.refusals = tuple(refusals)


class TokenError(Exception):
    """Raised by `fill`'s value callback: the token names no usable value (no value in it)."""


class ArcionTokens(Extension):
    """The Jinja extension: placeholders at compile time, `fill` after rendering."""

    def __init__(self, environment: jinja2.Environment) -> None:
        super().__init__(environment)
        self._nonce = secrets.token_hex(8)
        self._prefix = f"arcionsm{self._nonce}n"
        self.placeholder = re.compile(re.escape(self._prefix) + r"([0-9]+)z")
        self._sites: list[Site] = []
        self._index: dict[tuple[str, int, int, str], int] = {}
        self._pure: dict[str, bool] = {}
        self._lock = threading.Lock()

    # --- compile time -----------------------------------------------------------------------

    def filter_stream(self, stream: TokenStream) -> Iterator[Token]:
        file = stream.filename or stream.name or "<template>"
        pure = True
        for token in stream:
            if token.type != "data":
                pure = False
            elif ARCION_SCHEME in token.value:
                token = Token(token.lineno, token.type, self._mark(token, file))
            yield token
        # a template made of text only: its output lines are its own lines
        self._pure[stream.name or file] = pure

    def _mark(self, token: Token, file: str) -> str:
        def placeholder(match: re.Match[str]) -> str:
            line = token.lineno + token.value.count("\n", 0, match.start())
            key = (file, line, match.start(), match["ref"])
            with self._lock:
                index = self._index.get(key)
                if index is None:
                    index = self._index[key] = len(self._sites)
                    self._sites.append(Site(match["ref"], file, line))
            return f"{self._prefix}{index}z"

        return _TOKEN.sub(placeholder, token.value)

    # --- after rendering --------------------------------------------------------------------

    def fill(
        self, text: str, name: str, value: Callable[[str], object], *, ready: bool
    ) -> str | None:
        """`text` with its tokens replaced (module docstring), or None while values are pending.

        `value(reference)` gives a token's value (a `jinja2.Undefined` while it is
        not fetched) or raises `TokenError`. Called with `ready=False` (other parts
        of the template still wait for values), `fill` only asks for the values
        the tokens need, so they are fetched in the same round, and returns None.
        Raises `Refused` when the tokens cannot be written.
        """
        folded = text.lower()
        if self._nonce not in folded:
            return text
        found = list(self.placeholder.finditer(text))
        if len(found) != folded.count(self._nonce):
            raise Refused(
                [
                    Refusal(
                        "an arcion-sm:// token went through a filter or a block that changed "
                        "its text (e.g. {% filter upper %}); write {{ secret('NS/KEY') }} there"
                    )
                ]
            )
        try:
            parsed = _Parse(text)
        except _NotYaml as exc:
            if not ready:
                return None
            raise Refused([self._not_yaml(exc, name)]) from None
        refusals: list[Refusal] = []
        scalars, comments = self._locate(text, parsed, found, refusals)
        values: dict[str, object] = {}
        for scalar in scalars:
            for site in scalar.sites:
                if site.reference in values:
                    continue
                try:
                    values[site.reference] = value(site.reference)
                except TokenError as exc:
                    values[site.reference] = None
                    refusals.append(Refusal(f"{site.token}: {exc}", site))
        if not ready or any(isinstance(v, jinja2.Undefined) for v in values.values()):
            return None
        if refusals:
            raise Refused(refusals)
        return _Writer(text, name, parsed, scalars, comments, values, self).write()

    def site(self, index: int) -> Site:
        return self._sites[index]

    def is_pure(self, name: str) -> bool:
        return self._pure.get(name, False)

    def _not_yaml(self, exc: _NotYaml, name: str) -> Refusal:
        pure = self.is_pure(name)
        where = f"column {exc.column}"
        if not pure:
            where = f"line {exc.line}, {where} of the rendered output"
        return Refusal(
            f"the rendered file is not valid YAML ({where}: {exc.problem}); arcion-sm:// "
            "tokens are replaced only in a valid YAML file: fix the YAML, or in a file that "
            "is not YAML write {{ secret('NS/KEY') }} instead of arcion-sm://NS/KEY",
            line=exc.line if pure else None,
        )

    def _locate(
        self, text: str, parsed: _Parse, found: list[re.Match[str]], refusals: list[Refusal]
    ) -> tuple[list[_Scalar], list[tuple[int, int, str]]]:
        """Each placeholder's place: a scalar, a comment, or somewhere tokens cannot be."""
        parsed.find_placeholders(self.placeholder)
        scalars: dict[int, _Scalar] = {}
        comments: list[tuple[int, int, str]] = []
        for match in found:
            site = self._sites[int(match[1])]
            span = parsed.scalar_at(match.start())
            if span is not None:
                start, end = span
                node = parsed.node_ending_at(end)
                if node is None:
                    refusals.append(
                        Refusal(f"{site.token}: could not be located in the YAML", site)
                    )
                    continue
                scalar = scalars.get(id(node))
                if scalar is None:
                    scalar = scalars[id(node)] = _Scalar(
                        node, start, end, node in parsed.keys, node in parsed.implicit
                    )
                scalar.sites.append(site)
            elif parsed.in_other_token(match.start()):
                refusals.append(
                    Refusal(
                        f"{site.token}: a token cannot stand in an anchor, alias, tag or "
                        f"directive; {_ADVICE.format(token=site.token)}",
                        site,
                    )
                )
            else:
                comments.append((match.start(), match.end(), site.token))
        for scalar in scalars.values():
            if len(scalar.sites) != len(self.placeholder.findall(scalar.node.value)):
                site = scalar.sites[0]
                refusals.append(Refusal(f"{site.token}: could not be located in the YAML", site))
        return list(scalars.values()), comments


# --- parsing ----------------------------------------------------------------------------------


class _NotYaml(Exception):
    def __init__(self, problem: str, line: int, column: int) -> None:
        super().__init__(problem)
        self.problem = problem
        self.line = line
        self.column = column


_QUOTED = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|#x[0-9a-fA-F]+")


# The parser (not the scanner) quotes the kind of token it met: '<block end>', ',', ']'...
_TOKEN_KIND = re.compile(r"'(<[a-z ]+>|[,:?\-\[\]{}])'")


def _shown(quoted: str, parser: bool) -> str:
    """A quoted part of a PyYAML message: kept when it names a kind of token, else masked."""
    return quoted if parser and _TOKEN_KIND.fullmatch(quoted) else "…"


def _not_yaml(exc: BaseException, text: str) -> _NotYaml:
    """A parser error as a message with no text of the file in it (it may hold values)."""
    if isinstance(exc, RecursionError):
        return _NotYaml("nested too deeply", 1, 1)
    if isinstance(exc, yaml.reader.ReaderError):
        line = text.count("\n", 0, exc.position) + 1
        column = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
        return _NotYaml("a character YAML does not allow", line, column)
    if isinstance(exc, yaml.MarkedYAMLError):
        parts = [p for p in (exc.context, exc.problem) if p]
        parser = isinstance(exc, yaml.parser.ParserError)
        problem = _QUOTED.sub(lambda m: _shown(m[0], parser), ", ".join(parts)) or "not valid YAML"
        if "cannot start any token" in problem:
            problem += " (a tab, or a character such as @ or ` that no plain value starts with)"
        mark = exc.problem_mark or exc.context_mark
        if mark is not None:
            return _NotYaml(problem, mark.line + 1, mark.column + 1)
        return _NotYaml(problem, 1, 1)
    return _NotYaml("not valid YAML", 1, 1)


_YAML_ERRORS = (yaml.YAMLError, RecursionError, ValueError, TypeError, OverflowError)


class _Loader(yaml.SafeLoader):
    """The safe loader, remembering each token's span and which scalars YAML types by text."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.scalar_spans: dict[int, int] = {}
        """End -> start of each scalar token (the scalar's own text, no tag or anchor)."""
        self.other_spans: list[tuple[int, int]] = []
        self.implicit: set[yaml.Node] = set()

    def get_token(self) -> Any:
        token = super().get_token()  # type: ignore[no-untyped-call]
        if isinstance(token, yaml.ScalarToken):
            self.scalar_spans[token.end_mark.index] = token.start_mark.index
        elif isinstance(
            token, yaml.AnchorToken | yaml.AliasToken | yaml.TagToken | yaml.DirectiveToken
        ):
            self.other_spans.append((token.start_mark.index, token.end_mark.index))
        return token

    def compose_scalar_node(self, anchor: Any) -> yaml.ScalarNode:
        event: Any = self.peek_event()  # type: ignore[no-untyped-call]
        node: yaml.ScalarNode = super().compose_scalar_node(anchor)
        if event.tag in (None, "!") and event.implicit[0]:
            self.implicit.add(node)
        return node


class _Parse:
    """The YAML structure of a text with placeholders in it."""

    def __init__(self, text: str) -> None:
        loader = _Loader(text)
        try:
            roots: list[yaml.Node] = []
            while loader.check_node():
                root = loader.get_node()
                if root is not None:
                    roots.append(root)
        except _YAML_ERRORS as exc:
            raise _not_yaml(exc, text) from None
        finally:
            loader.dispose()
        self.roots: list[yaml.Node] = roots
        self.implicit = loader.implicit
        self._starts = sorted((start, end) for end, start in loader.scalar_spans.items())
        self._others = sorted(loader.other_spans)
        self._nodes: dict[int, yaml.ScalarNode] = {}
        self.keys: set[yaml.Node] = set()

    def find_placeholders(self, placeholder: re.Pattern[str]) -> None:
        """Note every scalar node whose value holds a placeholder, and which nodes are keys."""
        seen: set[int] = set()
        stack = list(self.roots)
        while stack:
            node = stack.pop()
            if id(node) in seen:
                continue
            seen.add(id(node))
            if isinstance(node, yaml.ScalarNode):
                if placeholder.search(node.value):
                    self._nodes[node.end_mark.index] = node
            elif isinstance(node, yaml.MappingNode):
                for key, item in node.value:
                    self.keys.add(key)
                    stack += (key, item)
            elif isinstance(node, yaml.SequenceNode):
                stack += node.value

    def scalar_at(self, index: int) -> tuple[int, int] | None:
        """The span of the scalar token holding `index`, if any."""
        at = bisect.bisect_right(self._starts, (index, float("inf"))) - 1
        if at >= 0 and self._starts[at][0] <= index < self._starts[at][1]:
            return self._starts[at][0], int(self._starts[at][1])
        return None

    def node_ending_at(self, end: int) -> yaml.ScalarNode | None:
        return self._nodes.get(end)

    def in_other_token(self, index: int) -> bool:
        return any(start <= index < end for start, end in self._others)


# --- the intended data and its comparison with what a reader gets ------------------------------


class _Constructor(yaml.constructor.SafeConstructor):
    """The safe constructor, with given values for some nodes.

    `bypass` (a placeholder pattern): a scalar that still holds a placeholder is
    taken as its text, whatever its tag, so one scalar can be checked while the
    others are not written yet.
    """

    def __init__(
        self, replaced: Mapping[yaml.Node, object], bypass: re.Pattern[str] | None = None
    ) -> None:
        super().__init__()
        self._replaced = replaced
        self._bypass = bypass

    def construct_object(self, node: yaml.Node, deep: bool = False) -> object:
        if node in self._replaced:
            return self._replaced[node]
        if (
            self._bypass is not None
            and isinstance(node, yaml.ScalarNode)
            and self._bypass.search(node.value)
        ):
            return node.value
        return super().construct_object(node, deep)


def _construct(
    roots: Sequence[yaml.Node],
    replaced: Mapping[yaml.Node, object],
    bypass: re.Pattern[str] | None = None,
) -> list[object]:
    constructor = _Constructor(replaced, bypass)
    return [constructor.construct_document(root) for root in roots]


def _read(text: str, bypass: re.Pattern[str] | None = None) -> list[object] | None:
    """The documents a YAML reader gets from `text` (safe loader), or None if it cannot."""
    try:
        parsed = _Parse(text)
        return _construct(parsed.roots, {}, bypass)
    except (_NotYaml, *_YAML_ERRORS):
        return None


def _same(left: object, right: object) -> bool:
    """Equal as YAML data: types too (1 is not 1.0 nor True), key order, NaN equal to NaN.

    Iterative, and each pair of containers is compared once, so deep data and
    data with many aliases to one node cost no more than their size.
    """
    seen: set[tuple[int, int]] = set()
    stack: list[tuple[object, object]] = [(left, right)]
    while stack:
        a, b = stack.pop()
        if type(a) is not type(b):
            return False
        if isinstance(a, dict | list | tuple | set):
            pair = (id(a), id(b))
            if pair in seen:
                continue
            seen.add(pair)
            assert isinstance(b, dict | list | tuple | set)
            if len(a) != len(b):
                return False
            if isinstance(a, dict):
                assert isinstance(b, dict)
                for (ka, va), (kb, vb) in zip(a.items(), b.items(), strict=True):
                    stack += ((ka, kb), (va, vb))
            elif isinstance(a, set):
                if {(type(x), repr(x)) for x in a} != {(type(x), repr(x)) for x in b}:
                    return False
            else:
                stack += zip(a, b, strict=True)
        elif isinstance(a, float):
            if repr(a) != repr(b):
                return False
        elif a != b:
            return False
    return True


def _typed(value: object) -> object:
    """The value of a token that is a whole plain scalar, as Arcion means it (module docstring)."""
    if isinstance(value, Binary):
        raise BinaryAsTextError(value.label)
    if isinstance(value, str):
        text = str.__str__(value)
        if _CANONICAL_INT.fullmatch(text):
            try:
                return int(text)
            except ValueError:  # longer than Python converts: PyYAML cannot read it as an int
                return text
        return text
    if isinstance(value, JsonObject | JsonArray):
        return json.loads(str(value))
    return value


_STYLES = {
    None: "an unquoted value",
    "'": "a single-quoted value",
    '"': "a double-quoted value",
    "|": "a literal block value (|)",
    ">": "a folded block value (>)",
}


class _Scalar(msgspec.Struct, eq=False):
    """A scalar that holds placeholders, and how it may be written."""

    node: yaml.ScalarNode
    start: int
    end: int
    key: bool
    implicit: bool
    sites: list[Site] = msgspec.field(default_factory=list)
    typed: bool = False
    intended: object = None
    text: str | None = None
    """The scalar's text with the values in, for a scalar that is not typed."""
    candidates: list[str] = msgspec.field(default_factory=list)

    def tokens(self) -> str:
        return ", ".join(dict.fromkeys(site.token for site in self.sites))

    def where(self, source: str) -> str:
        kind = _STYLES.get(self.node.style, "a value")
        if self.key:
            kind = kind.replace("value", "key")
        if "\n" in source and self.node.style not in ("|", ">"):
            kind += " that spans several lines"
        return kind


class _Writer:
    """Steps 3 and 4 of the module docstring, for one rendered text."""

    def __init__(
        self,
        text: str,
        name: str,
        parsed: _Parse,
        scalars: list[_Scalar],
        comments: list[tuple[int, int, str]],
        values: Mapping[str, object],
        tokens: ArcionTokens,
    ) -> None:
        self.text = text
        self.name = name
        self.parsed = parsed
        self.scalars = scalars
        self.comments = comments
        self.values = values
        self.tokens = tokens
        self.pattern = tokens.placeholder

    def write(self) -> str:
        refusals: list[Refusal] = []
        for scalar in self.scalars:
            refusal = self._prepare(scalar)
            if refusal is not None:
                refusals.append(refusal)
        if refusals:
            raise Refused(refusals)
        try:
            intended = _construct(self.parsed.roots, {s.node: s.intended for s in self.scalars})
        except _YAML_ERRORS as exc:
            raise Refused([self.tokens._not_yaml(_not_yaml(exc, self.text), self.name)]) from None
        chosen = {id(s): s.candidates[0] for s in self.scalars}
        output = self._assemble(chosen, restore=True)
        read = _read(output)
        if read is not None and _same(intended, read):
            return output
        for scalar in self.scalars:  # find the scalars no form can write
            form = self._first_exact(scalar)
            if form is None:
                refusals.append(self._refusal(scalar))
            else:
                chosen[id(scalar)] = form
        if refusals:
            raise Refused(refusals)
        output = self._assemble(chosen, restore=True)
        read = _read(output)
        if read is not None and _same(intended, read):
            return output
        raise Refused([self._refusal(scalar) for scalar in self.scalars])

    def _prepare(self, scalar: _Scalar) -> Refusal | None:
        """The scalar's intended value and the forms it may be written in, best first."""
        node = scalar.node
        first = scalar.sites[0]
        scalar.typed = (
            scalar.implicit and len(scalar.sites) == 1 and bool(self.pattern.fullmatch(node.value))
        )
        try:
            if scalar.typed:
                value = self.values[first.reference]
                scalar.intended = _typed(value)
                if scalar.key and isinstance(scalar.intended, dict | list):
                    return Refusal(
                        f"{first.token}: the value is a JSON object or array, which cannot be a "
                        "mapping key; use the token as a value",
                        first,
                    )
                scalar.candidates.append(filters.yaml_scalar(value))
                if isinstance(scalar.intended, str):
                    scalar.candidates.append(_double_quoted(scalar.intended))
                return None
            texts = {
                site.reference: filters.as_text(self.values[site.reference], "arcion-sm")
                for site in scalar.sites
            }
        except BinaryAsTextError as exc:
            return Refusal(str(exc), first)
        except (filters.FilterError, ValueError):
            return Refusal(f"{first.token}: the value cannot be written as YAML text", first)
        scalar.text = self.pattern.sub(lambda m: texts[self._site(m).reference], node.value)
        try:
            scalar.intended = _Constructor({}).construct_object(
                yaml.ScalarNode(node.tag, scalar.text, style=node.style)
            )
        except _YAML_ERRORS:
            tag = node.tag.replace("tag:yaml.org,2002:", "!!")
            return Refusal(
                f"{scalar.tokens()}: the scalar is tagged {tag} and the value with the text "
                "around it is not a valid one; remove the tag or fix the value",
                first,
            )
        scalar.candidates += self._forms(scalar, texts)
        return None

    def _forms(self, scalar: _Scalar, texts: Mapping[str, str]) -> list[str]:
        """The scalar in its own style with the values in, then as one double-quoted scalar."""
        source = self.text[scalar.start : scalar.end]
        style = scalar.node.style
        forms: list[str] = []

        def splice(piece: Callable[[str], str]) -> str:
            return self.pattern.sub(lambda m: piece(texts[self._site(m).reference]), source)

        if style == '"':
            forms.append(splice(filters.yaml_double_quoted_body))
        elif style == "'":
            # not for a line break or a character single quotes cannot hold
            with contextlib.suppress(filters.FilterError):
                forms.append(splice(filters.yaml_single_quoted_body))
        elif style in ("|", ">"):
            indent = _block_indent(source)
            forms.append(splice(lambda text: text.replace("\n", "\n" + indent)))
        else:
            forms.append(splice(lambda text: text))
        assert scalar.text is not None
        # a block scalar's span ends with the line breaks after it (and the next line's
        # indentation): they stay, so the lines after it keep their place
        tail = re.search(r"\n[\n ]*\Z", source) if style in ("|", ">") else None
        forms.append(_double_quoted(scalar.text) + (tail[0] if tail else ""))
        return forms

    def _site(self, match: re.Match[str]) -> Site:
        return self.tokens.site(int(match[1]))

    def _first_exact(self, scalar: _Scalar) -> str | None:
        """The first form of `scalar` that reads back exactly, the other scalars as they are."""
        try:
            want = _construct(self.parsed.roots, {scalar.node: scalar.intended}, self.pattern)
        except _YAML_ERRORS:
            return None
        for form in scalar.candidates:
            read = _read(self._assemble({id(scalar): form}, restore=False), self.pattern)
            if read is not None and _same(want, read):
                return form
        return None

    def _assemble(self, forms: Mapping[int, str], *, restore: bool) -> str:
        edits = [(s.start, s.end, forms[id(s)]) for s in self.scalars if id(s) in forms]
        if restore:
            edits += self.comments
        parts: list[str] = []
        at = 0
        for start, end, text in sorted(edits):
            parts += (self.text[at:start], text)
            at = end
        parts.append(self.text[at:])
        return "".join(parts)

    def _refusal(self, scalar: _Scalar) -> Refusal:
        first = scalar.sites[0]
        where = scalar.where(self.text[scalar.start : scalar.end])
        tokens = scalar.tokens()
        if scalar.key:
            advice = "use the token as a value, not in a key"
        else:
            advice = _ADVICE.format(token=first.token)
        return Refusal(
            f"{tokens}: the value cannot be written into {where} so that the file reads back "
            f"exactly; {advice}",
            first,
        )


def _double_quoted(text: str) -> str:
    return '"' + filters.yaml_double_quoted_body(text) + '"'


def _block_indent(source: str) -> str:
    """The indentation of a block scalar's content: that of its first line with text."""
    for line in source.split("\n")[1:]:
        if line.strip(" "):
            return line[: len(line) - len(line.lstrip(" "))]
    return ""
