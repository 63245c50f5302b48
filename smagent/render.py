"""Sandboxed Jinja2 rendering, and the discovery of the references a template uses.

Discovery is rendering. A template is rendered with the values known so far;
a reference with no value yet renders as `Pending` (a forgiving undefined)
and is recorded. The pipeline fetches everything recorded by every template
at once, then renders again. Most templates finish in the second round;
one whose references depend on a secret's value (a key chosen by another
secret, a loop over a secret's list) simply takes another round. This finds
every reference that static analysis would, plus the dynamic ones, and the
template is never written from a round that saw a `Pending`.

On secret data, `.name` always means the key `name`, never a Python
attribute: `secrets.db.items` is the key "items", not dict.items. This is
done in `_SecretEnvironment.getattr`, which also keeps the sandbox's rules for
every other object. Iterate a secret mapping with `| items` or `| dictsort`.

No message built here contains a secret value: problems name templates,
lines, references and key names only.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import jinja2
from jinja2.ext import Extension
from jinja2.sandbox import ImmutableSandboxedEnvironment

from smagent import filters
from smagent.config import Config, Template
from smagent.providers.base import FetchResult, ProviderError
from smagent.references import (
    ARCION_SCHEME,
    Lookup,
    Namespace,
    ReferenceSyntaxError,
    SecretRef,
    parse_secret_call,
)
from smagent.values import Binary, BinaryAsTextError, JsonArray, JsonObject, parse_json_text


class ReferenceProblem(Exception):
    """A reference in a template that cannot give a value (message holds no value)."""

    def __init__(self, message: str, lookup: Lookup | None = None) -> None:
        super().__init__(message)
        self.lookup = lookup


@dataclass(frozen=True, slots=True)
class Problem:
    """Why a template cannot be written: where, which reference, what went wrong."""

    message: str
    file: str | None = None
    line: int | None = None
    lookup: Lookup | None = None
    error: ProviderError | None = None

    def __str__(self) -> str:
        where = self.file or ""
        if self.line is not None:
            where = f"{where}:{self.line}"
        return f"{where}: {self.message}" if where else self.message


@dataclass(frozen=True, slots=True)
class RenderOutcome:
    """One render of one template with the values known so far."""

    lookups: frozenset[Lookup]
    missing: frozenset[SecretRef] = frozenset()
    output: bytes | None = None
    problems: tuple[Problem, ...] = ()

    @property
    def complete(self) -> bool:
        return self.output is not None


# --- the objects a template sees -----------------------------------------------------------------


@dataclass(slots=True)
class _Context:
    """The values of one render, and what the template asked for."""

    values: Mapping[SecretRef, FetchResult]
    namespaces: Mapping[str, Namespace]
    providers: frozenset[str]
    lookups: set[Lookup] = field(default_factory=set)
    missing: set[SecretRef] = field(default_factory=set)
    failed: dict[SecretRef, tuple[Lookup, ProviderError]] = field(default_factory=dict)
    """Per failed secret, the deepest lookup that hit it (`db.password`, not `db`)."""

    def value(self, lookup: Lookup) -> Any:
        """The value at `lookup`, or `Pending` when its secret is not fetched (or failed)."""
        self.lookups.add(lookup)
        result = self.values.get(lookup.ref)
        if result is None:
            self.missing.add(lookup.ref)
            return Pending.of(self, lookup)
        if isinstance(result, ProviderError):
            seen = self.failed.get(lookup.ref)
            if seen is None or len(lookup.key) > len(seen[0].key):
                self.failed[lookup.ref] = (lookup, result)
            return Pending.of(self, lookup)
        raw = result.reveal()
        if isinstance(raw, bytes):
            if lookup.key:
                raise ReferenceProblem(
                    f"{lookup.ref.secret_id} is a binary secret; it has no key "
                    f"{'.'.join(lookup.key)!r}",
                    lookup,
                )
            return Binary(raw, str(lookup.ref))
        if not lookup.key:
            return SecretDoc(raw, self, lookup)
        return self._walk(raw, lookup)

    def _walk(self, raw: str, lookup: Lookup) -> Any:
        node = parse_json_text(raw)
        if node is None:
            raise ReferenceProblem(
                f"secret {lookup.ref.secret_id} is not a JSON object, so it has no key "
                f"{lookup.key[0]!r}",
                lookup,
            )
        for depth, part in enumerate(lookup.key):
            at = ".".join(lookup.key[:depth])
            where = f"secret {lookup.ref.secret_id}" + (f" at {at}" if at else "")
            node = _child_value(node, part, where, lookup)
        if isinstance(node, JsonObject):
            return SecretMap(node, self, lookup)
        if isinstance(node, JsonArray):
            return SecretList(node, self, lookup)
        return node


def _child_value(node: Any, part: str, where: str, lookup: Lookup | None) -> Any:
    if isinstance(node, dict):
        if part in node:
            return node[part]
        keys = sorted(node)
        shown = ", ".join(keys[:20]) + (", ..." if len(keys) > 20 else "")
        raise ReferenceProblem(f"key {part!r} not in {where} (keys: {shown or 'none'})", lookup)
    if isinstance(node, list):
        if re.fullmatch(r"-?\d+", part) and -len(node) <= int(part) < len(node):
            return node[int(part)]
        raise ReferenceProblem(
            f"{where} is a list of {len(node)}; {part!r} is not an index", lookup
        )
    kind = type(node).__name__ if node is not None else "null"
    raise ReferenceProblem(
        f"{where} is a {kind}, not a JSON object; it has no key {part!r}", lookup
    )


class _Located:
    """A value that knows which lookup produced it, so `.KEY` extends that lookup."""

    _ctx: _Context
    _lookup: Lookup

    def _locate(self, ctx: _Context, lookup: Lookup) -> None:
        self._ctx = ctx
        self._lookup = lookup

    def child(self, key: Any) -> Any:
        return self._ctx.value(Lookup(self._lookup.ref, (*self._lookup.key, str(key))))


class Pending(_Located, jinja2.ChainableUndefined):
    """A reference whose value is not fetched yet: renders empty, chains quietly."""

    @classmethod
    def of(cls, ctx: _Context, lookup: Lookup) -> Pending:
        pending = cls(name=str(lookup))
        pending._locate(ctx, lookup)
        return pending


class SecretDoc(_Located, str):
    """The whole text of a secret: a str for every text filter; `.KEY` walks its JSON."""

    def __new__(cls, text: str, ctx: _Context, lookup: Lookup) -> SecretDoc:
        doc = super().__new__(cls, text)
        doc._locate(ctx, lookup)
        return doc

    def __repr__(self) -> str:
        return "SecretDoc(<redacted>)"


class SecretMap(_Located, JsonObject):
    """A JSON object inside a secret, that remembers where it came from (for messages)."""

    def __init__(self, data: JsonObject, ctx: _Context, lookup: Lookup) -> None:
        super().__init__(data)
        self._locate(ctx, lookup)


class SecretList(_Located, JsonArray):
    def __init__(self, data: JsonArray, ctx: _Context, lookup: Lookup) -> None:
        super().__init__(data)
        self._locate(ctx, lookup)


class StoreNode:
    """`secrets.NS` for a namespace without `secret`: each key names a whole secret."""

    __slots__ = ("_ctx", "_ns")

    def __init__(self, ctx: _Context, ns: Namespace) -> None:
        self._ctx = ctx
        self._ns = ns

    def child(self, key: Any) -> Any:
        return self._ctx.value(self._ns.lookup((str(key),)))

    def __str__(self) -> str:
        raise ReferenceProblem(
            f"namespace {self._ns.name!r} is a whole store: name a secret, "
            f"e.g. secrets.{self._ns.name}.SECRET_NAME"
        )


class SecretsRoot:
    """The `secrets` variable of every template."""

    __slots__ = ("_ctx",)

    def __init__(self, ctx: _Context) -> None:
        self._ctx = ctx

    def child(self, key: Any) -> Any:
        ns = self._ctx.namespaces.get(str(key))
        if ns is None:
            known = ", ".join(sorted(self._ctx.namespaces)) or "none declared"
            raise ReferenceProblem(
                f"unknown namespace {key!r} in secrets.{key} (namespaces: {known})"
            )
        if ns.is_store:
            return StoreNode(self._ctx, ns)
        return self._ctx.value(ns.lookup(()))

    def __str__(self) -> str:
        raise ReferenceProblem(
            "write secrets.NAMESPACE or secrets.NAMESPACE.KEY, not secrets alone"
        )


_NODES = (SecretsRoot, StoreNode, SecretDoc, SecretMap, SecretList, Pending)


def _plain_child(obj: JsonObject | JsonArray, key: Any) -> Any:
    return _child_value(obj, str(key), "this JSON value", None)


# --- the environment -----------------------------------------------------------------------------


class _SecretEnvironment(ImmutableSandboxedEnvironment):
    """The sandbox, plus key-first attribute access on secret data (module docstring)."""

    def getattr(self, obj: Any, attribute: str) -> Any:
        if isinstance(obj, _NODES):
            return obj.child(attribute)
        if isinstance(obj, JsonObject | JsonArray):
            return _plain_child(obj, attribute)
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        if isinstance(argument, jinja2.Undefined) and isinstance(obj, _NODES):
            return argument  # the key itself is not fetched yet: no lookup to make this round
        if isinstance(obj, _NODES):
            return obj.child(argument)
        if isinstance(obj, JsonObject) and isinstance(argument, str):
            return _plain_child(obj, argument)
        return super().getitem(obj, argument)


_ARCION_TOKEN = re.compile(
    re.escape(ARCION_SCHEME)
    + r"(?P<ns>[A-Za-z_][A-Za-z0-9_-]*)/(?P<key>[A-Za-z0-9_.-]*[A-Za-z0-9_-])"
)


class ArcionTokens(Extension):
    """Turns bare `arcion-sm://NS/KEY` tokens into secret lookups before parsing.

    The filter depends on where the token stands, so the file stays valid YAML
    whatever the value holds: a whole YAML scalar gets `yaml_scalar` (plain
    when it reads back the same, so `port: 3306` stays a number; quoted
    otherwise); inside `"..."` or `'...'` it gets that style's escaping;
    embedded in a longer scalar it is inserted as it is.
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
    if before.endswith('"') and after.startswith('"'):
        flt = "yaml_double_quoted_body"
    elif before.endswith("'") and after.startswith("'"):
        flt = "yaml_single_quoted_body"
    elif re.search(r"(^|[:\-\[{,])\s*$", before) and re.match(r"\s*($|#|,|\]|\})", after):
        flt = "yaml_scalar"
    else:
        flt = "string"
    return f'{{{{ secret("{match["ns"]}/{match["key"]}") | {flt} }}}}'


class _Loader(jinja2.BaseLoader):
    """Configured templates by name; `{% include %}` only below allowed folders."""

    def __init__(self, roots: list[Path]) -> None:
        self.roots = [r.resolve() for r in roots]
        self.inline: dict[str, str] = {}

    def get_source(
        self, environment: jinja2.Environment, template: str
    ) -> tuple[str, str | None, Callable[[], bool] | None]:
        if template in self.inline:
            return self.inline[template], template, lambda: True
        path = Path(template)
        candidates = [path] if path.is_absolute() else [root / path for root in self.roots]
        for candidate in candidates:
            resolved = candidate.resolve()
            if not any(resolved.is_relative_to(root) for root in self.roots):
                continue
            try:
                source = resolved.read_text(encoding="utf-8")
                mtime = os.stat(resolved).st_mtime_ns
            except (OSError, UnicodeDecodeError):
                continue
            return source, str(candidate), functools.partial(_unchanged, resolved, mtime)
        raise jinja2.TemplateNotFound(template)


def _unchanged(path: Path, mtime: int) -> bool:
    try:
        return os.stat(path).st_mtime_ns == mtime
    except OSError:
        return False


def _config_text(value: Any) -> Any:
    """`{{ x }}` of JSON `null`/`true`/`false` writes `` / `true` / `false`, as the secret
    spells them (and as the filters do), never Python's `None` / `True`."""
    if value is None:
        return ""
    if value is True:
        return "true"
    if value is False:
        return "false"
    return value


def _waits_for_pending(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A filter given a not-yet-fetched value returns it unchanged instead of computing."""

    @functools.wraps(fn)
    def wrapper(value: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(value, jinja2.Undefined):
            return value
        for arg in (*args, *kwargs.values()):
            if isinstance(arg, jinja2.Undefined):
                return arg
        return fn(value, *args, **kwargs)

    return wrapper


@functools.lru_cache(maxsize=4096)
def _scram_cached(password: str, salt: str | None, iterations: int) -> str:
    return filters.scram_sha256(password, salt=salt, iterations=iterations)


def _scram(password: Any, salt: str | None = None, iterations: int = 4096) -> str:
    """PBKDF2 is deliberately slow; an unchanged password must not cost it again each pass."""
    return _scram_cached(
        str.__str__(str(password)), None if salt is None else str(salt), iterations
    )


FILTERS: dict[str, Callable[..., Any]] = {
    "tojson": filters.tojson,
    "toyaml": filters.toyaml,
    "yaml_scalar": filters.yaml_scalar,
    "yaml_double_quoted_body": filters.yaml_double_quoted_body,
    "yaml_single_quoted_body": filters.yaml_single_quoted_body,
    "shell_quote": filters.shell_quote,
    "env_quote": filters.env_quote,
    "urlencode": filters.urlencode,
    "b64encode": filters.b64encode,
    "b64decode": filters.b64decode,
    "scram_sha256": _scram,
    "pgpass_escape": filters.pgpass_escape,
    "mycnf_quote": filters.mycnf_quote,
}


class Renderer:
    """One Jinja environment for a config: compiled templates are cached across passes."""

    def __init__(self, config: Config) -> None:
        roots = [config.folder, *(t.source.parent for t in config.templates if t.source)]
        self.loader = _Loader(roots)
        self.env = _SecretEnvironment(
            loader=self.loader,
            undefined=jinja2.StrictUndefined,
            autoescape=False,
            keep_trailing_newline=True,
            finalize=_config_text,
            extensions=[ArcionTokens],
            auto_reload=True,
        )
        self.env.filters.update({name: _waits_for_pending(fn) for name, fn in FILTERS.items()})
        self.namespaces = config.namespaces
        self.providers = frozenset(config.providers)
        self._names: dict[str, str] = {}
        for template in config.templates:
            self._names[template.name] = self._register(template)

    def _register(self, template: Template) -> str:
        if template.source is not None:
            return str(template.source)
        key = f"<inline {template.name}>"
        self.loader.inline[key] = template.contents or ""
        return key

    def template_file(self, template: Template) -> str:
        return str(template.source) if template.source is not None else template.name

    def render(self, template: Template, values: Mapping[SecretRef, FetchResult]) -> RenderOutcome:
        """Render once with `values`; see the module docstring for what an outcome means."""
        ctx = _Context(values, self.namespaces, self.providers)
        name = self._names.get(template.name) or self._register(template)
        label = self.template_file(template)
        try:
            jinja_template = self.env.get_template(name)
            text = jinja_template.render(
                secrets=SecretsRoot(ctx), secret=self._secret_function(ctx)
            )
        except jinja2.TemplateSyntaxError as exc:
            file = (
                exc.filename if exc.filename and not exc.filename.startswith("<inline") else label
            )
            problem = Problem(f"template syntax error: {exc.message}", file, exc.lineno)
            return RenderOutcome(frozenset(ctx.lookups), problems=(problem,))
        except jinja2.TemplateNotFound as exc:
            problem = Problem(f"template not found: {exc.name}", label)
            return RenderOutcome(frozenset(ctx.lookups), problems=(problem,))
        except Exception as exc:
            return self._unfinished(ctx, label, exc)
        if ctx.failed or ctx.missing:
            return self._unfinished(ctx, label, None)
        try:
            output = text.encode("utf-8")
        except UnicodeEncodeError:
            problem = Problem(
                "the output holds text that is not valid Unicode (a lone surrogate)", label
            )
            return RenderOutcome(frozenset(ctx.lookups), problems=(problem,))
        return RenderOutcome(frozenset(ctx.lookups), output=output)

    def _unfinished(self, ctx: _Context, label: str, exc: Exception | None) -> RenderOutcome:
        lookups = frozenset(ctx.lookups)
        if ctx.failed:
            problems = tuple(
                Problem(
                    f"{lookup}: {error.kind}: {error.detail}", label, lookup=lookup, error=error
                )
                for lookup, error in sorted(ctx.failed.values(), key=lambda pair: pair[0])
            )
            return RenderOutcome(lookups, problems=problems)
        if ctx.missing:
            return RenderOutcome(lookups, missing=frozenset(ctx.missing))
        assert exc is not None
        file, line = _template_position(exc.__traceback__, self.loader)
        if file in self.loader.inline:
            file = label
        message = _describe_exception(exc)
        lookup = exc.lookup if isinstance(exc, ReferenceProblem) else None
        return RenderOutcome(lookups, problems=(Problem(message, file or label, line, lookup),))

    def _secret_function(self, ctx: _Context) -> Callable[..., Any]:
        def secret(
            reference: str,
            key: str | None = None,
            version: str | int | None = None,
            stage: str | None = None,
        ) -> Any:
            try:
                lookup = parse_secret_call(
                    reference,
                    ctx.namespaces,
                    ctx.providers,
                    key=key,
                    version=None if version is None else str(version),
                    stage=stage,
                )
            except ReferenceSyntaxError as exc:
                raise ReferenceProblem(str(exc)) from None
            return ctx.value(lookup)

        return secret


def _template_position(tb: TracebackType | None, loader: _Loader) -> tuple[str | None, int | None]:
    """The innermost template file and line in a traceback Jinja has rewritten."""
    file: str | None = None
    line: int | None = None
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if filename in loader.inline or (os.path.isabs(filename) and not filename.endswith(".py")):
            file, line = filename, tb.tb_lineno
        tb = tb.tb_next
    return file, line


def _raised_in(exc: Exception, filename: str) -> bool:
    tb = exc.__traceback__
    last = None
    while tb is not None:
        last, tb = tb, tb.tb_next
    return last is not None and last.tb_frame.f_code.co_filename == filename


def _describe_exception(exc: Exception) -> str:
    """A message for a failed render that cannot carry a value.

    Our own errors are written never to hold values; Jinja's undefined errors
    name variables and types only. Any other exception (a TypeError from
    arithmetic, a filter's ValueError) is described by its type and, for the
    kinds known not to quote their input, its message.
    """
    if isinstance(exc, ReferenceProblem | BinaryAsTextError | jinja2.UndefinedError):
        return str(exc)
    if isinstance(exc, jinja2.exceptions.SecurityError):
        return f"blocked by the sandbox: {exc}"
    if isinstance(exc, ValueError | TypeError) and _raised_in(exc, filters.__file__):
        return str(exc)  # our filters' messages name the filter and type, never the input
    return f"{type(exc).__name__} while rendering (values are not shown)"


def extract(lookup: Lookup, result: FetchResult) -> str | bytes:
    """The text (or bytes) at `lookup` in a fetched secret, as `smagent get` prints it."""
    ctx = _Context({lookup.ref: result}, {}, frozenset())
    value = ctx.value(lookup)
    if isinstance(value, Binary):
        return value.reveal()
    if isinstance(value, Pending):
        failed = ctx.failed.get(lookup.ref)
        detail = f"{failed[1].kind}: {failed[1].detail}" if failed else "no value"
        raise ReferenceProblem(detail, lookup)
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str.__str__(str(value))
