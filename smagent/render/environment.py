"""The Jinja environment of a Renderer: the bounded sandbox, plus key-first access to
secret data (context.py), the filters for the files databases and services read, and
a record of the template files each render loads."""

from __future__ import annotations

import contextlib
import contextvars
import functools
import weakref
from collections.abc import Callable, Iterator, MutableMapping
from pathlib import Path
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.utils import LRUCache

from smagent import filters
from smagent.render import arcion, literals, sandbox
from smagent.render.context import NODES, plain_child
from smagent.render.loader import TemplateLoader
from smagent.render.messages import StrictUndefined
from smagent.render.scram import scram_filter
from smagent.values import Binary, BinaryAsTextError, JsonArray, JsonObject

CACHE_ROOM = 400
"""Compiled templates kept beyond the configured ones: includes, imports, computed names."""

_FILES: contextvars.ContextVar[set[Path] | None] = contextvars.ContextVar(
    "smagent_render_files", default=None
)
"""Where the render under way in this thread records the files its templates came from."""


class SecretEnvironment(sandbox.BoundedSandbox):
    """The bounded sandbox, plus key-first attribute access on secret data (context.py)."""

    def __init__(self, loader: TemplateLoader) -> None:
        super().__init__(
            loader=loader,
            undefined=StrictUndefined,
            autoescape=False,
            keep_trailing_newline=True,
            finalize=_config_text,
            extensions=[arcion.ArcionTokens],
            auto_reload=True,
        )
        self.template_loader = loader
        self.scans: dict[str, literals.Scan] = {}
        """Each compiled template's literal text, by name (literals.py)."""
        self.register_filters({name: _waits_for_pending(fn) for name, fn in FILTERS.items()})

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        """Jinja's parse, scanned for literal text while the tree is at hand (literals.py)."""
        tree = super()._parse(source, name, filename)
        if name is not None:
            self.scans[name] = literals.scan(source, tree)
        return tree

    @contextlib.contextmanager
    def recording(self, files: set[Path]) -> Iterator[None]:
        """Add to `files` every file the templates loaded in this block read or looked for."""
        token = _FILES.set(files)
        try:
            yield
        finally:
            _FILES.reset(token)

    def _load_template(
        self, name: str, globals: MutableMapping[str, Any] | None
    ) -> jinja2.Template:
        """Every load goes through here: the template itself, `include` (of a name or a
        list), `import`, `from ... import`, `extends`; cached or not, found or not."""
        try:
            return super()._load_template(name, globals)
        finally:
            files = _FILES.get()
            if files is not None and isinstance(name, str):
                files.update(self.template_loader.looked_at.get(name, ()))

    def hold(self, templates: int) -> None:
        """Size the compiled-template cache to keep `templates` configured templates plus room
        for what they include: Jinja's default of 400 made every template past the 400th
        compile again in each render round (and again each pass)."""
        capacity = templates + CACHE_ROOM
        cache = self.cache
        if not isinstance(cache, LRUCache) or cache.capacity >= capacity:
            return
        bigger = LRUCache(capacity)
        for key, template in reversed(cache.items()):  # oldest first: recency kept
            bigger[key] = template
        self.cache = bigger

    def forget(self, names: set[str]) -> None:
        """Drop the compiled templates of `names`: the next load reads their files again."""
        for name in names:
            self.scans.pop(name, None)
        if self.cache is None:
            return
        for name in names:
            with contextlib.suppress(KeyError):
                del self.cache[(weakref.ref(self.template_loader), name)]

    def getattr(self, obj: Any, attribute: str) -> Any:
        if isinstance(obj, NODES):
            sandbox.step()
            return obj.child(attribute)
        if isinstance(obj, JsonObject | JsonArray):
            return plain_child(obj, attribute)
        if isinstance(obj, Binary):
            raise BinaryAsTextError(obj.label)
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        if isinstance(obj, Binary):
            raise BinaryAsTextError(obj.label)
        if isinstance(argument, slice) or not isinstance(obj, (*NODES, JsonObject)):
            return super().getitem(obj, argument)
        if isinstance(argument, jinja2.Undefined):
            return argument  # the key itself is not fetched yet: no lookup to make this round
        sandbox.step()
        if isinstance(obj, NODES):
            return obj.child(argument)
        return plain_child(obj, argument)


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
    "scram_sha256": scram_filter,
    "pgpass_escape": filters.pgpass_escape,
    "mycnf_quote": filters.mycnf_quote,
}
