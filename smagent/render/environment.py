"""The Jinja environment of a Renderer: the bounded sandbox, plus key-first access to
secret data (context.py) and the filters for the files databases and services read."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jinja2

from smagent import filters
from smagent.render import arcion, sandbox
from smagent.render.context import NODES, plain_child
from smagent.render.loader import TemplateLoader
from smagent.render.messages import StrictUndefined
from smagent.render.scram import scram_filter
from smagent.values import Binary, BinaryAsTextError, JsonArray, JsonObject


class SecretEnvironment(sandbox.BoundedSandbox):
    """The bounded sandbox, plus key-first attribute access on secret data (context.py)."""

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


def make_environment(loader: TemplateLoader) -> SecretEnvironment:
    env = SecretEnvironment(
        loader=loader,
        undefined=StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        finalize=_config_text,
        extensions=[arcion.ArcionTokens],
        auto_reload=True,
    )
    env.register_filters({name: _waits_for_pending(fn) for name, fn in FILTERS.items()})
    return env
