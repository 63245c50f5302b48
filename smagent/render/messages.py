"""Messages of a failed render that never hold a secret value, nor text derived from one.

Messages name templates, lines, namespaces, secret ids and keys, and each of
those is shown only when it is written literally in the template or the
config (`RenderContext.show` in context.py): a key computed from another
secret (`secrets.users[secrets.cfg.name]`) is shown as `<computed>`, since its
text is secret-derived. Jinja's own messages go through the same rule
(`SafeMessages`, `mask_quoted`), and Python's (which quote operands) are
reduced to their type (`describe_exception`).
"""

from __future__ import annotations

import ast
import contextlib
import contextvars
import os
import re
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any

import jinja2
from jinja2.utils import object_type_repr

from smagent import filters
from smagent.render import sandbox
from smagent.render.loader import TemplateLoader, Unloadable
from smagent.render.outcome import COMPUTED, ReferenceProblem
from smagent.values import BinaryAsTextError

Show = Callable[[object], str]
"""How a name may be shown: quoted when written literally, else `<computed>`."""


def _mask(_: object) -> str:
    return COMPUTED


_SHOW: contextvars.ContextVar[Show] = contextvars.ContextVar("smagent_render_show")
"""`show` of the render under way in this thread, for objects that do not carry their context."""


@contextlib.contextmanager
def showing(show: Show) -> Iterator[None]:
    """Messages built in this block (in this thread) show names by `show`."""
    token = _SHOW.set(show)
    try:
        yield
    finally:
        _SHOW.reset(token)


def current_show() -> Show:
    """`show` of the render under way; outside a render every name is masked."""
    return _SHOW.get(_mask)


class SafeUndefinedError(jinja2.UndefinedError):
    """An undefined value was used; the message shows only names written in the template."""


class SafeSecurityError(jinja2.exceptions.SecurityError):
    """The sandbox refused an attribute; the message shows it only if written in the template."""


class SafeMessages:
    """Jinja's messages for undefined values quote the missing name, which can be computed
    from a secret (`{}[secrets.db.password | upper]`): these show it only when it is
    literal text of the template, and raise errors that say so (`describe_exception`)."""

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
        safe = SafeSecurityError if issubclass(exc, jinja2.exceptions.SecurityError) else None
        super().__init__(hint, obj, name, safe or SafeUndefinedError)  # type: ignore[call-arg]

    @property
    def _undefined_message(self) -> str:
        show = current_show()
        name = self._undefined_name
        if self._undefined_exception is SafeSecurityError:
            kind = type(self._undefined_obj).__name__
            return f"access to attribute {show(name)} of a {kind!r} object is unsafe"
        if self._undefined_hint:
            return mask_quoted(self._undefined_hint, show)
        if self._undefined_obj is jinja2.utils.missing:
            return f"{show(name)} is undefined"
        kind = object_type_repr(self._undefined_obj)
        if not isinstance(name, str):  # an index: `[][7]`
            return f"{kind} has no element {repr(name) if show(name) != COMPUTED else COMPUTED}"
        return f"{kind!r} has no attribute {show(name)}"


class StrictUndefined(SafeMessages, jinja2.StrictUndefined):
    """The `undefined` of the environment: any use is an error, with a safe message."""

    __slots__ = ()


def template_position(
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


def describe_exception(exc: Exception, show: Show) -> str:
    """A message for a failed render that cannot carry a value, nor text derived from one.

    Our own errors are written never to hold values, and our undefined values
    build theirs from names written in the template (`SafeMessages`). Jinja's
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
    if isinstance(exc, SafeSecurityError):
        return f"blocked by the sandbox: {exc}"
    if isinstance(exc, jinja2.exceptions.SecurityError):
        return "blocked by the sandbox: a call it does not allow"
    if isinstance(
        exc,
        ReferenceProblem
        | BinaryAsTextError
        | filters.FilterError
        | sandbox.LimitExceeded
        | SafeUndefinedError,
    ):
        return str(exc)
    if isinstance(exc, jinja2.TemplateError):
        return mask_quoted(str(exc), show)
    kind = type(exc)
    words = next((w for t, w in _PLAIN_WORDS.items() if issubclass(kind, t)), "an error")
    return f"{kind.__name__} while rendering: {words} (values are not shown)"


_QUOTED = re.compile(r"'(?:[^'\\\n]|\\.)*'" + r'|"(?:[^"\\\n]|\\.)*"')


def mask_quoted(text: str, show: Show) -> str:
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
