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

No message built here contains a secret value, nor text derived from one.
Messages name templates, lines, namespaces, secret ids and keys, and each of
those is shown only when it is written literally in the template or the
config (`_Context.show`): a key computed from another secret
(`secrets.users[secrets.cfg.name]`) is shown as `<computed>`, since its text
is secret-derived. Jinja's own messages go through the same rule
(`_SafeMessages`, `_mask_quoted`), and Python's (which quote operands) are
reduced to their type (`_describe_exception`).

The sandbox and the limits of a render are in sandbox.py, the loading of
template files (and what `{% include %}` may read) in loader.py.
"""

from __future__ import annotations

import ast
import contextvars
import functools
import inspect
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.utils import object_type_repr

from smagent import filters
from smagent.config import Config, TemplateSpec
from smagent.providers.base import FetchResult, ProviderError
from smagent.references import (
    Lookup,
    Namespace,
    ReferenceSyntaxError,
    SecretRef,
    parse_secret_call,
)
from smagent.render import arcion, sandbox
from smagent.render.loader import TemplateLoader, Unloadable
from smagent.values import Binary, BinaryAsTextError, JsonArray, JsonObject, parse_json_text

COMPUTED = "<computed>"


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
    reference: str | None = None
    """The reference as it may be shown (computed parts masked)."""
    error: ProviderError | None = None
    detail: str | None = None
    """The provider's words, with a computed secret id masked."""

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
    labels: Mapping[Lookup, str] = field(default_factory=dict)
    """Each lookup as it may be shown (computed parts masked)."""

    @property
    def complete(self) -> bool:
        return self.output is not None


# --- the objects a template sees ------------------------------------------------------------------


@dataclass(slots=True)
class _Context:
    """The values of one render, and what the template asked for."""

    values: Mapping[SecretRef, FetchResult]
    namespaces: Mapping[str, Namespace]
    providers: frozenset[str]
    known: frozenset[str] = frozenset()
    """Text written literally in the template or the config: safe to show in messages."""
    lookups: set[Lookup] = field(default_factory=set)
    missing: set[SecretRef] = field(default_factory=set)
    failed: dict[SecretRef, tuple[Lookup, ProviderError]] = field(default_factory=dict)
    """Per failed secret, the deepest lookup that hit it (`db.password`, not `db`)."""
    parsed: dict[SecretRef, Any] = field(default_factory=dict)
    """Each secret's JSON, parsed once per render however often a loop reads it."""

    def plain(self, text: object) -> str:
        """`text` as it may be shown: itself when written literally, else `<computed>`."""
        return str(text) if str(text) in self.known else COMPUTED

    def show(self, text: object) -> str:
        """`plain`, quoted when shown."""
        return repr(str(text)) if str(text) in self.known else COMPUTED

    def label(self, lookup: Lookup) -> str:
        """`str(lookup)` with every part that is not literal text masked."""
        ref = lookup.ref
        part = self.plain
        text = f"{ref.provider}:{part(ref.secret_id)}"
        if ref.version is not None:
            text += f"@{part(ref.version)}"
        if ref.stage is not None:
            text += f"#{part(ref.stage)}"
        if lookup.key:
            text += " key " + ".".join(part(k) for k in lookup.key)
        return text

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
                    f"{self.label(Lookup(lookup.ref))} is a binary secret; it has no keys", lookup
                )
            return Binary(raw, self.label(lookup))
        if not lookup.key:
            return SecretDoc(raw, self, lookup)
        return self._walk(raw, lookup)

    def _walk(self, raw: str, lookup: Lookup) -> Any:
        secret = self.plain(lookup.ref.secret_id)
        if lookup.ref not in self.parsed:
            self.parsed[lookup.ref] = parse_json_text(raw)
        node = self.parsed[lookup.ref]
        if node is None:
            raise ReferenceProblem(
                f"secret {secret} is not a JSON object, "
                f"so it has no key {self.show(lookup.key[0])}",
                lookup,
            )
        for depth, part in enumerate(lookup.key):
            at = ".".join(map(self.plain, lookup.key[:depth]))
            where = f"secret {secret}" + (f" at {at}" if at else "")
            node = _child_value(node, part, where, self.show, lookup)
        if isinstance(node, JsonObject):
            return SecretMap(node, self, lookup)
        if isinstance(node, JsonArray):
            return SecretList(node, self, lookup)
        return node


def _child_value(
    node: Any, part: str, where: str, show: Callable[[object], str], lookup: Lookup | None
) -> Any:
    if isinstance(node, dict):
        if part in node:
            return node[part]
        keys = sorted(node)
        listed = ", ".join(keys[:20]) + (", ..." if len(keys) > 20 else "")
        raise ReferenceProblem(
            f"key {show(part)} not in {where} (keys: {listed or 'none'})", lookup
        )
    if isinstance(node, list):
        if re.fullmatch(r"-?\d+", part) and -len(node) <= int(part) < len(node):
            return node[int(part)]
        raise ReferenceProblem(
            f"{where} is a list of {len(node)}; {show(part)} is not an index", lookup
        )
    kind = type(node).__name__ if node is not None else "null"
    raise ReferenceProblem(
        f"{where} is a {kind}, not a JSON object; it has no key {show(part)}", lookup
    )


_CURRENT: contextvars.ContextVar[_Context] = contextvars.ContextVar("smagent_render_context")
"""The render under way in this thread, for objects that do not carry their context."""


class _Located:
    """A value that knows which lookup produced it, so `.KEY` extends that lookup."""

    _ctx: _Context
    _lookup: Lookup

    def _locate(self, ctx: _Context, lookup: Lookup) -> None:
        self._ctx = ctx
        self._lookup = lookup

    def child(self, key: Any) -> Any:
        return self._ctx.value(Lookup(self._lookup.ref, (*self._lookup.key, str(key))))


class _SafeUndefinedError(jinja2.UndefinedError):
    """An undefined value was used; the message shows only names written in the template."""


class _SafeSecurityError(jinja2.exceptions.SecurityError):
    """The sandbox refused an attribute; the message shows it only if written in the template."""


class _SafeMessages:
    """Jinja's messages for undefined values quote the missing name, which can be computed
    from a secret (`{}[secrets.db.password | upper]`): these show it only when it is
    literal text of the template, and raise errors that say so (`_describe_exception`)."""

    __slots__ = ()
    _undefined_hint: str | None
    _undefined_obj: Any
    _undefined_name: Any
    _undefined_exception: type[jinja2.TemplateRuntimeError]

    def __init__(
        self,
        hint: str | None = None,
        obj: Any = jinja2.utils.missing,
        name: str | None = None,
        exc: type[jinja2.TemplateRuntimeError] = jinja2.UndefinedError,
    ) -> None:
        safe = _SafeSecurityError if issubclass(exc, jinja2.exceptions.SecurityError) else None
        super().__init__(hint, obj, name, safe or _SafeUndefinedError)  # type: ignore[call-arg]

    @property
    def _undefined_message(self) -> str:
        ctx = _CURRENT.get(None)
        show: Callable[[object], str] = ctx.show if ctx is not None else (lambda _: COMPUTED)
        name = self._undefined_name
        if self._undefined_exception is _SafeSecurityError:
            kind = type(self._undefined_obj).__name__
            return f"access to attribute {show(name)} of a {kind!r} object is unsafe"
        if self._undefined_hint:
            return _mask_quoted(self._undefined_hint, show)
        if self._undefined_obj is jinja2.utils.missing:
            return f"{show(name)} is undefined"
        kind = object_type_repr(self._undefined_obj)
        if not isinstance(name, str):  # an index: `[][7]`
            return f"{kind} has no element {repr(name) if show(name) != COMPUTED else COMPUTED}"
        return f"{kind!r} has no attribute {show(name)}"


class _StrictUndefined(_SafeMessages, jinja2.StrictUndefined):
    """The `undefined` of the environment: any use is an error, with a safe message."""

    __slots__ = ()


class Pending(_Located, _SafeMessages, jinja2.ChainableUndefined):
    """A reference whose value is not fetched yet: renders empty, chains quietly."""

    @classmethod
    def of(cls, ctx: _Context, lookup: Lookup) -> Pending:
        pending = cls(name=ctx.label(lookup))
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
            raise ReferenceProblem(f"unknown namespace {self._ctx.show(key)} (namespaces: {known})")
        if ns.is_store:
            return StoreNode(self._ctx, ns)
        return self._ctx.value(ns.lookup(()))

    def __str__(self) -> str:
        raise ReferenceProblem(
            "write secrets.NAMESPACE or secrets.NAMESPACE.KEY, not secrets alone"
        )


_NODES = (SecretsRoot, StoreNode, SecretDoc, SecretMap, SecretList, Pending)


def _plain_child(obj: JsonObject | JsonArray, key: Any) -> Any:
    ctx = _CURRENT.get(None)
    show: Callable[[object], str] = ctx.show if ctx is not None else (lambda _: COMPUTED)
    return _child_value(obj, str(key), "this JSON value", show, None)


# --- the environment ------------------------------------------------------------------------------


class _SecretEnvironment(sandbox.BoundedSandbox):
    """The bounded sandbox, plus key-first attribute access on secret data (module docstring)."""

    def getattr(self, obj: Any, attribute: str) -> Any:
        if isinstance(obj, _NODES):
            sandbox.step()
            return obj.child(attribute)
        if isinstance(obj, JsonObject | JsonArray):
            return _plain_child(obj, attribute)
        if isinstance(obj, Binary):
            raise BinaryAsTextError(obj.label)
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        if isinstance(obj, Binary):
            raise BinaryAsTextError(obj.label)
        if isinstance(argument, slice) or not isinstance(obj, (*_NODES, JsonObject)):
            return super().getitem(obj, argument)
        if isinstance(argument, jinja2.Undefined):
            return argument  # the key itself is not fetched yet: no lookup to make this round
        sandbox.step()
        if isinstance(obj, _NODES):
            return obj.child(argument)
        return _plain_child(obj, argument)


# --- literal text of a template -----------------------------------------------------------------


def _literals(env: jinja2.Environment, name: str, seen: set[str] | None = None) -> set[str]:
    """Every name and string written in a template (and in the templates it includes,
    imports or extends by a literal name): what messages may show of it."""
    seen = set() if seen is None else seen
    if name in seen:
        return set()
    seen.add(name)
    assert env.loader is not None
    try:
        source = env.loader.get_source(env, name)[0]
        tree = env.parse(source)
    except jinja2.TemplateError:
        return set()
    found: set[str] = set()
    for node in tree.find_all(nodes.Node):
        if isinstance(node, nodes.Getattr):
            found.add(node.attr)
        elif isinstance(node, nodes.Name | nodes.Macro | nodes.Filter | nodes.Test):
            found.add(node.name)
        elif isinstance(node, nodes.Keyword):
            found.add(node.key)
        elif isinstance(node, nodes.Const) and isinstance(node.value, str | int):
            text = str(node.value)
            found.add(text)
            found.update(re.split(r"[/.:]", text))
            # `PROVIDER:ID` and `NS/KEY`: the id or key as a whole (an id may hold `/` or `:`)
            found.update(part for sep in ":/" if sep in text for part in text.split(sep, 1))
        elif isinstance(
            node, nodes.Include | nodes.Import | nodes.FromImport | nodes.Extends
        ) and isinstance(node.template, nodes.Const):
            found |= _literals(env, str(node.template.value), seen)
    return found


# --- filters as the environment registers them ----------------------------------------------------


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
    if filters.is_scram_verifier(password):
        return password
    with sandbox.kdf_work(iterations * (2 if salt is None else 1)):  # the default salt: a 2nd KDF
        return filters.scram_sha256(password, salt=salt, iterations=iterations)


def _scram(password: Any, salt: str | None = None, iterations: int = 4096) -> str:
    """PBKDF2 is deliberately slow; an unchanged password must not cost it again each pass."""
    if isinstance(password, Binary):
        raise BinaryAsTextError(password.label)
    filters.check_scram_iterations(iterations)
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


# --- the renderer ---------------------------------------------------------------------------------


class Renderer:
    """One Jinja environment for a config: compiled templates are cached across passes."""

    def __init__(self, config: Config) -> None:
        sources = [t.source for t in config.templates if t.source is not None]
        roots = [config.folder, *(source.parent for source in sources)]
        denied = {config.path: "the config file", **_provider_files(config)}
        self.loader = TemplateLoader(roots, denied, sources)
        self.env = _SecretEnvironment(
            loader=self.loader,
            undefined=_StrictUndefined,
            autoescape=False,
            keep_trailing_newline=True,
            finalize=_config_text,
            extensions=[arcion.ArcionTokens],
            auto_reload=True,
        )
        self.env.register_filters({name: _waits_for_pending(fn) for name, fn in FILTERS.items()})
        self.arcion: arcion.ArcionTokens = self.env.extensions[arcion.ArcionTokens.identifier]  # type: ignore[assignment]
        self.namespaces = config.namespaces
        self.providers = frozenset(config.providers)
        self._config_known = frozenset(_config_words(config))
        self._known: dict[str, tuple[jinja2.Template, frozenset[str]]] = {}
        self._names: dict[str, str] = {}
        for template in config.templates:
            self._names[template.name] = self._register(template)

    def _register(self, template: TemplateSpec) -> str:
        if template.source is not None:
            return str(template.source)
        key = f"<inline {template.name}>"
        self.loader.inline[key] = template.contents or ""
        return key

    def template_file(self, template: TemplateSpec) -> str:
        return str(template.source) if template.source is not None else template.name

    def _known_text(self, name: str, compiled: jinja2.Template) -> frozenset[str]:
        cached = self._known.get(name)
        if cached is not None and cached[0] is compiled:
            return cached[1]
        known = self._config_known | _literals(self.env, name)
        self._known[name] = (compiled, known)
        return known

    def render(
        self, template: TemplateSpec, values: Mapping[SecretRef, FetchResult]
    ) -> RenderOutcome:
        """Render once with `values`; see the module docstring for what an outcome means."""
        ctx = _Context(values, self.namespaces, self.providers, known=self._config_known)
        name = self._names.get(template.name) or self._register(template)
        label = self.template_file(template)
        token = _CURRENT.set(ctx)
        try:
            with sandbox.metered() as meter:
                compiled = self.env.get_template(name)
                ctx.known = self._known_text(name, compiled)
                meter.start_clock()
                text = compiled.render(secrets=SecretsRoot(ctx), secret=self._secret_function(ctx))
            ready = not (ctx.failed or ctx.missing)
            filled = self.arcion.fill(text, name, self._token_value(ctx), ready=ready)
        except arcion.Refused as exc:
            return self._outcome(ctx, problems=self._refused(exc, label))
        except jinja2.TemplateSyntaxError as exc:
            inline = not exc.filename or exc.filename.startswith("<inline")
            file = label if inline else self._shown_file(ctx, exc.filename)
            problem = Problem(f"template syntax error: {exc.message}", file, exc.lineno)
            return self._outcome(ctx, problems=(problem,))
        except Exception as exc:
            if isinstance(exc, Unloadable) and exc.asked == name:  # the template itself
                message = f"cannot load the template: {exc.describe(name_shown=True)}"
                return self._outcome(ctx, problems=(Problem(message, label),))
            return self._unfinished(ctx, label, exc)
        finally:
            _CURRENT.reset(token)
        if filled is None or ctx.failed or ctx.missing:
            return self._unfinished(ctx, label, None)
        try:
            output = filled.encode("utf-8")
        except UnicodeEncodeError:
            message = "the output holds text that is not valid Unicode (a lone surrogate)"
            return self._outcome(ctx, problems=(Problem(message, label),))
        if len(output) > sandbox.MAX_TEXT:
            message = (
                f"output larger than {sandbox.MAX_TEXT // sandbox.MiB} MiB as UTF-8 "
                "(the limit for a rendered file)"
            )
            return self._outcome(ctx, problems=(Problem(message, label),))
        return self._outcome(ctx, output=output)

    def _shown_file(self, ctx: _Context, filename: str | None) -> str | None:
        """A template file as messages may name it: an include's path holds its name,
        which is masked when that name was computed."""
        if filename is None:
            return None
        asked = self.loader.names.get(filename)
        if asked is None or asked in self.loader.sources or asked in ctx.known:
            return filename
        return COMPUTED

    @staticmethod
    def _outcome(ctx: _Context, **kwargs: Any) -> RenderOutcome:
        lookups = frozenset(ctx.lookups)
        labels = {lookup: ctx.label(lookup) for lookup in lookups}
        return RenderOutcome(lookups, labels=labels, **kwargs)

    def _unfinished(self, ctx: _Context, label: str, exc: Exception | None) -> RenderOutcome:
        if ctx.failed:
            problems = []
            for lookup, error in sorted(ctx.failed.values(), key=lambda pair: str(pair[0])):
                reference = ctx.label(lookup)
                detail = error.detail
                if lookup.ref.secret_id not in ctx.known:  # the store quotes the id it was given
                    detail = detail.replace(lookup.ref.secret_id, COMPUTED)
                message = f"{reference}: {error.kind}: {detail}"
                problems.append(Problem(message, label, None, reference, error, detail))
            return self._outcome(ctx, problems=tuple(problems))
        if ctx.missing:
            return self._outcome(ctx, missing=frozenset(ctx.missing))
        assert exc is not None
        file, line = _template_position(exc.__traceback__, self.loader)
        file = label if file is None or file in self.loader.inline else self._shown_file(ctx, file)
        culprit = exc.lookup if isinstance(exc, ReferenceProblem) else None
        shown = ctx.label(culprit) if culprit is not None else None
        problem = Problem(_describe_exception(exc, ctx.show), file, line, shown)
        return self._outcome(ctx, problems=(problem,))

    def _token_value(self, ctx: _Context) -> Callable[[str], Any]:
        """The value of an `arcion-sm://NS/KEY` token, for `ArcionTokens.fill`."""

        def value(reference: str) -> Any:
            try:
                lookup = parse_secret_call(reference, ctx.namespaces, ctx.providers)
            except ReferenceSyntaxError as exc:
                raise arcion.TokenError(str(exc)) from None
            ctx.known = ctx.known | {reference, *reference.split("/", 1), *lookup.key}
            try:
                return ctx.value(lookup)
            except ReferenceProblem as exc:
                raise arcion.TokenError(str(exc)) from None

        return value

    def _refused(self, exc: arcion.Refused, label: str) -> tuple[Problem, ...]:
        problems = []
        for refusal in exc.refusals:
            site = refusal.site
            if site is None:
                problems.append(Problem(refusal.message, label, refusal.line))
                continue
            file = label if site.file in self.loader.inline else site.file
            problems.append(Problem(refusal.message, file, site.line, site.token))
        return tuple(problems)

    def _secret_function(self, ctx: _Context) -> Callable[..., Any]:
        def secret(*args: Any, **kwargs: Any) -> Any:
            try:
                bound = _SECRET_SIGNATURE.bind(*args, **kwargs).arguments
            except TypeError as exc:  # names an argument, never a value
                raise ReferenceProblem(f"secret(): {exc}; {_HOW_TO_CALL}") from None
            reference = bound["reference"]
            key, version, stage = (bound.get(name) for name in ("key", "version", "stage"))
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
                if str(reference) in ctx.known:
                    given = (key, version, stage)
                    literal = all(arg is None or str(arg) in ctx.known for arg in given)
                    message = str(exc) if literal else _mask_quoted(str(exc), ctx.show)
                    raise ReferenceProblem(message) from None
                raise ReferenceProblem(
                    f"secret({COMPUTED}) is not a reference: write 'NAMESPACE/KEY' or "
                    "'PROVIDER:SECRET_ID'"
                ) from None
            return ctx.value(lookup)

        return secret


_SECRET_SIGNATURE = inspect.Signature(
    [
        inspect.Parameter("reference", inspect.Parameter.POSITIONAL_OR_KEYWORD),
        *(
            inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None)
            for name in ("key", "version", "stage")
        ),
    ]
)
"""How a template may call `secret()`; checked by hand so a wrong call is a clear error."""
_HOW_TO_CALL = (
    "call it as secret('NS/KEY') or secret('PROVIDER:SECRET_ID', key=..., version=..., stage=...)"
)


def _provider_files(config: Config) -> dict[Path, str]:
    """Files a provider reads (secrets, tokens, keys): never includable by a template."""
    files = {}
    for provider_name, provider in config.providers.items():
        for struct in (provider, getattr(provider, "auth", None)):
            for name in getattr(struct, "__struct_fields__", ()):
                value = getattr(struct, name)
                if name.endswith(("path", "_file", "ca_cert")) and isinstance(value, str):
                    files[Path(value)] = f"a file provider {provider_name!r} reads"
    return files


def _config_words(config: Config) -> set[str]:
    """Names, ids and paths from the config: not secret, so messages may show them."""
    words = set(config.namespaces) | set(config.providers)
    for ns in config.namespaces.values():
        words.update(w for w in (ns.secret, ns.version, ns.stage) if w is not None)
    words.update(str(t.source) for t in config.templates if t.source is not None)
    return words


def _template_position(
    tb: TracebackType | None, loader: TemplateLoader
) -> tuple[str | None, int | None]:
    """The innermost template file and line in a traceback Jinja has rewritten."""
    file: str | None = None
    line: int | None = None
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if filename in loader.inline or (os.path.isabs(filename) and not filename.endswith(".py")):
            file, line = filename, tb.tb_lineno
        tb = tb.tb_next
    return file, line


_PLAIN_WORDS: dict[type[BaseException], str] = {
    ZeroDivisionError: "division by zero",
    OverflowError: "a number too large",
    RecursionError: "nesting too deep (a macro, include or recursive loop that does not end)",
    MemoryError: "out of memory",
    TypeError: "an operation on a value of the wrong type",
    ValueError: "a value this operation cannot take",
    KeyError: "a missing key",
    IndexError: "an index out of range",
    AttributeError: "a missing attribute",
}


def _describe_exception(exc: Exception, show: Callable[[object], str]) -> str:
    """A message for a failed render that cannot carry a value, nor text derived from one.

    Our own errors are written never to hold values, and our undefined values
    build theirs from names written in the template (`_SafeMessages`). Jinja's
    other errors quote their variable parts with repr(): those are shown only
    when written in the template. Anything else (a TypeError from arithmetic,
    a ValueError from `int()`) is described by its type alone: Python quotes
    the operands (`invalid literal for int() with base 10: '...'`).
    """
    if isinstance(exc, Unloadable):
        return f"template {show(exc.asked)}: {exc.describe(show(exc.asked) != COMPUTED)}"
    if isinstance(exc, jinja2.TemplatesNotFound):
        names = ", ".join(show(name) for name in exc.templates) or "none given"
        return f"none of the templates {names} could be loaded"
    if isinstance(exc, _SafeSecurityError):
        return f"blocked by the sandbox: {exc}"
    if isinstance(exc, jinja2.exceptions.SecurityError):
        return "blocked by the sandbox: a call it does not allow"
    if isinstance(
        exc,
        ReferenceProblem
        | BinaryAsTextError
        | filters.FilterError
        | sandbox.LimitExceeded
        | _SafeUndefinedError,
    ):
        return str(exc)
    if isinstance(exc, jinja2.TemplateError):
        return _mask_quoted(str(exc), show)
    kind = type(exc)
    words = next((w for t, w in _PLAIN_WORDS.items() if issubclass(kind, t)), "an error")
    return f"{kind.__name__} while rendering: {words} (values are not shown)"


_QUOTED = re.compile(r"'(?:[^'\\\n]|\\.)*'" + r'|"(?:[^"\\\n]|\\.)*"')


def _mask_quoted(text: str, show: Callable[[object], str]) -> str:
    """`text` with each repr()-quoted string shown only if written literally (see `show`).

    Jinja writes every variable part of its messages as repr(). A quoted part
    that is not a repr (`"key"` in fixed wording) stays. If a quote is left
    over, the message cannot be split safely, and only its kind is given.
    """

    def replace(match: re.Match[str]) -> str:
        quoted = match.group(0)
        try:
            value = ast.literal_eval(quoted)
        except (ValueError, SyntaxError):
            return COMPUTED
        return show(value) if repr(value) == quoted else quoted

    masked = _QUOTED.sub(replace, text)
    rest = _QUOTED.sub("", masked)
    if "'" in rest or '"' in rest:
        return "an error in the template (its text may hold values, so it is not shown)"
    return masked


def extract(lookup: Lookup, result: FetchResult) -> str | bytes:
    """The text (or bytes) at `lookup` in a fetched secret, as `smagent get` prints it."""
    typed = [lookup.ref.secret_id, lookup.ref.version, lookup.ref.stage, *lookup.key]
    known = frozenset(text for text in typed if text is not None)
    ctx = _Context({lookup.ref: result}, {}, frozenset(), known=known)
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
