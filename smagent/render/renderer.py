"""The Renderer: one Jinja environment for a config, and one render of one template.

See the package docstring for what a render is (discovery is rendering) and
the module map. Compiled templates are cached across passes: compiling is
the expensive part of a render.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import jinja2

from smagent.config import Config, TemplateSpec
from smagent.providers.base import FetchResult
from smagent.references import (
    Lookup,
    ReferenceSyntaxError,
    SecretRef,
    parse_secret_call,
    spellings,
)
from smagent.render import arcion, sandbox
from smagent.render.context import RenderContext, SecretsRoot, Words
from smagent.render.environment import SecretEnvironment
from smagent.render.literals import Literals, literals
from smagent.render.loader import TemplateLoader, Unloadable
from smagent.render.messages import (
    describe_exception,
    mask_quoted,
    showing,
    template_position,
)
from smagent.render.outcome import COMPUTED, Problem, ReferenceProblem, RenderOutcome


class Renderer:
    """One Jinja environment for a config: compiled templates are cached across passes,
    and across config reloads that keep what loading a template depends on (`for_config`).

    The agent calls `for_config` after a reload and `invalidate` when template files
    change, between passes (renders of one pass may run in threads at once).
    """

    def __init__(self, config: Config) -> None:
        self.loader = _loader_for(config)
        self.env = SecretEnvironment(self.loader)
        self.arcion: arcion.ArcionTokens = self.env.extensions[arcion.ArcionTokens.identifier]  # type: ignore[assignment]
        self._known: dict[str, tuple[jinja2.Template, Literals]] = {}
        self._lookups: dict[Lookup, Lookup] = {}
        """One object per distinct lookup, shared by every outcome naming it."""
        self._configure(config)

    def _configure(self, config: Config) -> None:
        self.namespaces = config.namespaces
        self.providers = frozenset(config.providers)
        self._config_known = frozenset(_config_words(config))
        self.loader.inline.clear()
        self._names: dict[str, str] = {}
        self.env.hold(len(config.templates))
        for template in config.templates:
            self._names[template.name] = self._register(template)

    def for_config(self, config: Config) -> Renderer:
        """This renderer for a reloaded `config`: itself, updated, when the folders templates
        load from and the files they may not read are the same, keeping every compiled
        template whose text cannot have changed; else a new Renderer."""
        loader = _loader_for(config)
        if (loader.roots, loader.denied) != (self.loader.roots, self.loader.denied):
            return Renderer(config)
        inline = dict(self.loader.inline)
        # A template no longer configured may no longer be read outside the folders: load
        # it again if an include asks for it. Inline text is never checked for changes.
        stale = self.loader.sources - loader.sources
        self.loader.sources = loader.sources
        self._configure(config)
        stale |= {key for key, text in inline.items() if self.loader.inline.get(key) != text}
        self._forget(stale)
        return self

    def invalidate(self, paths: Iterable[Path]) -> None:
        """These files changed: the next render of a template that read one of them (or looked
        for it: a missing include) reads them again, whatever their size and times say."""
        changed: set[Path] = set()
        for path in paths:
            changed |= {path, Path(os.path.abspath(path))}
            with contextlib.suppress(OSError, RuntimeError):
                changed.add(path.resolve())
        self._forget(self.loader.forget(changed))
        for name, (_, found) in list(self._known.items()):
            if not changed.isdisjoint(found.paths):
                self._known.pop(name, None)

    def _forget(self, names: set[str]) -> None:
        self.env.forget(names)
        for name in names:
            self.loader.looked_at.pop(name, None)
            self._known.pop(name, None)

    def _register(self, template: TemplateSpec) -> str:
        if template.source is not None:
            return str(template.source)
        key = f"<inline {template.name}>"
        self.loader.inline[key] = template.contents or ""
        return key

    def template_file(self, template: TemplateSpec) -> str:
        return str(template.source) if template.source is not None else template.name

    def _known_text(self, name: str, compiled: jinja2.Template) -> Words:
        """The config's words and the template's literal text (kept while its files are)."""
        cached = self._known.get(name)
        if cached is None or cached[0] is not compiled or not cached[1].current:
            cached = self._known[name] = (
                compiled,
                literals(self.env, self.loader, name, self.env.scans),
            )
        return Words(self._config_known, cached[1].words)

    def render(
        self, template: TemplateSpec, values: Mapping[SecretRef, FetchResult]
    ) -> RenderOutcome:
        """Render once with `values`; see the package docstring for what an outcome means."""
        ctx = RenderContext(
            values, self.namespaces, self.providers, known=Words(self._config_known)
        )
        name = self._names.get(template.name) or self._register(template)
        label = self.template_file(template)
        # `show` for undefined values, whose messages are built lazily
        with showing(ctx.show), self.env.recording(ctx.files):
            try:
                with sandbox.metered() as meter:
                    compiled = self.env.get_template(name)
                    ctx.known = self._known_text(name, compiled)
                    meter.start_clock()
                    text = compiled.render(
                        secrets=SecretsRoot(ctx), secret=self._secret_function(ctx)
                    )
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

    def _shown_file(self, ctx: RenderContext, filename: str | None) -> str | None:
        """A template file as messages may name it: an include's path holds its name,
        which is masked when that name was computed."""
        if filename is None:
            return None
        asked = self.loader.names.get(filename)
        if asked is None or asked in self.loader.sources or asked in ctx.known:
            return filename
        return COMPUTED

    def _outcome(self, ctx: RenderContext, **kwargs: Any) -> RenderOutcome:
        # Shared: thousands of templates naming the same few hundred secrets kept a copy
        # of each lookup and label per template (most of the memory of a pass at scale).
        shared = self._lookups
        lookups = frozenset(shared.setdefault(lookup, lookup) for lookup in ctx.lookups)
        labels = {lookup: sys.intern(ctx.label(lookup)) for lookup in lookups}
        return RenderOutcome(lookups, labels=labels, files=frozenset(ctx.files), **kwargs)

    def _unfinished(self, ctx: RenderContext, label: str, exc: Exception | None) -> RenderOutcome:
        if ctx.failed:
            problems = []
            for lookup, error in sorted(ctx.failed.values(), key=lambda pair: str(pair[0])):
                reference = ctx.label(lookup)
                detail = error.detail
                if lookup.ref.secret_id not in ctx.known:  # the store quotes the id it was given
                    for spelling in spellings(lookup.ref.secret_id):
                        detail = detail.replace(spelling, COMPUTED)
                message = f"{reference}: {error.kind}: {detail}"
                problems.append(Problem(message, label, None, reference, error, detail))
            return self._outcome(ctx, problems=tuple(problems))
        if ctx.missing:
            missing = frozenset(ctx.missing)
            return self._outcome(ctx, missing=missing, computed=ctx.computed_parts())
        assert exc is not None
        file, line = template_position(exc.__traceback__, self.loader)
        file = label if file is None or file in self.loader.inline else self._shown_file(ctx, file)
        culprit = exc.lookup if isinstance(exc, ReferenceProblem) else None
        shown = ctx.label(culprit) if culprit is not None else None
        problem = Problem(describe_exception(exc, ctx.show), file, line, shown)
        return self._outcome(ctx, problems=(problem,))

    def _token_value(self, ctx: RenderContext) -> Callable[[str], Any]:
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

    def _secret_function(self, ctx: RenderContext) -> Callable[..., Any]:
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
                    message = str(exc) if literal else mask_quoted(str(exc), ctx.show)
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


def _loader_for(config: Config) -> TemplateLoader:
    sources = [t.source for t in config.templates if t.source is not None]
    roots = [config.folder, *(source.parent for source in sources)]
    denied = {config.path: "the config file", **_provider_files(config)}
    return TemplateLoader(roots, denied, sources)


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
