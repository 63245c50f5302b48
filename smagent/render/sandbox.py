"""Jinja's sandbox, plus limits on what one render of one template may cost.

`ImmutableSandboxedEnvironment` keeps templates away from Python internals and
from changing data; it does not bound work. A template is the operator's own
file, but a slip (`range(100000)` nested twice, `"-" * 10**9`, a macro that
calls itself twice) must fail with a clear error, not take the host's memory
or CPU. `BoundedSandbox` holds every render to these limits (README, "Limits
of a template"):

    MAX_TEXT         16 MiB      the rendered file, and any one string a template builds
    MAX_ITEMS        1,000,000   items in any one list a template builds
    MAX_BUILT        128 MiB     all text and lists built in one render (8 bytes per list item)
    MAX_STEPS        1,000,000   work steps per render (loop iterations, calls, filters,
                                 operators, lookups; large inputs and YAML filters weigh more)
    MAX_CPU_SECONDS  1           CPU time of one render (its own thread's, SCRAM excluded)
    MAX_INT_BITS     4,096       integers made by `*` and `**`
    MAX_RANGE        100,000     items of one range() (Jinja's own sandbox limit)

SCRAM iterations are capped per call (`filters.SCRAM_MAX_ITERATIONS`) and per
render (`MAX_KDF_ITERATIONS`, charged by the renderer when it computes one).

The steps are deterministic: a template over them always fails, whatever the
host. They are rough, though: a step can cost 0.1 µs or 10 µs. The CPU time
limit is what bounds time, at 100 times what a large real template needs.

Where the checks sit, so that nothing big is built before it is checked:

- operators `+ * % **` are intercepted (`call_binop`): repetition, powers and
  `%` formatting are checked before they run, every result after;
- every call (`call`) and every filter (`register_filters`) is a step, plus
  one per 64 characters or items of its input (fewer for the slow ones:
  `urlize`, `sort`, the YAML filters), charged before it runs; the ones that
  can grow text (`center`, `indent`, `join`, `replace`, `format`,
  `wordwrap`, ...) check their arguments first, all check their result;
- `~` goes through `join_text`, and the output of the template, of a block,
  a macro or a `{% set %}` block through `concat`, which stops at MAX_TEXT;
- each `{% for %}` iterable (and each `loop(...)` of a recursive loop) is
  wrapped in an iterator that counts a step per item.

Each limit raises `LimitExceeded`, whose message names the limit and never a
value; the renderer adds template:line from the traceback.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import re
import string
import time
import types
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.runtime import Context, LoopContext, markup_join, str_join
from jinja2.sandbox import MAX_RANGE, ImmutableSandboxedEnvironment, safe_range
from jinja2.utils import generate_lorem_ipsum

MiB = 1024 * 1024
MAX_TEXT = 16 * MiB
MAX_ITEMS = 1_000_000
MAX_BUILT = 128 * MiB
MAX_STEPS = 1_000_000
MAX_CPU_SECONDS = 1.0
MAX_INT_BITS = 4096
MAX_KDF_ITERATIONS = 1000 * 2 * 4096
"""About 1,000 new verifiers at PostgreSQL's default 4096 iterations (each costs two PBKDF2
runs with the default salt), about 1.5 s here; cached verifiers cost nothing."""

_ITEM_BYTES = 8
"""What one list item counts toward MAX_BUILT (a pointer)."""
_CHARS_PER_STEP = 64
"""A filter or method call costs one step more per this many characters (or items) of input."""
_SLOW_FILTERS = {"urlize": 2, "title": 8, "wordwrap": 8, "striptags": 32, "wordcount": 32}
_SLOW_FILTERS |= dict.fromkeys(("sort", "unique", "groupby", "dictsort", "min", "max"), 4)
"""Filters that cost far more per character or item (regular expressions, sorting): fewer
characters or items per step, so that a large input is refused before it runs (a step is
about a microsecond: urlize takes 5 s for 16 MiB)."""
_YAML_STEPS_PER_STRING = 100
"""toyaml / yaml_scalar parse each string back with PyYAML (about 0.2 ms): that many steps."""
_CPU_CHECK_EVERY = 256
"""Steps between two reads of the thread's CPU clock (a system call)."""


class LimitExceeded(Exception):
    """A render went past one of the limits; the message names the limit, never a value."""


# --- the meter of one render ---------------------------------------------------------------------


class Meter:
    """What one render has spent so far. One per render; renders run in threads.

    CPU time is the thread's own (`time.thread_time`), so renders running side
    by side, or a busy host, do not count against each other; SCRAM's PBKDF2
    time is left out of it, having its own budget in iterations.
    """

    __slots__ = ("_cpu_start", "_next_cpu_check", "built", "kdf_iterations", "steps")

    def __init__(self) -> None:
        self.steps = 0
        self.built = 0
        self.kdf_iterations = 0
        self._cpu_start = time.thread_time()
        self._next_cpu_check = _CPU_CHECK_EVERY

    def start_clock(self) -> None:
        """Count CPU time from now (compiling a large template is not the template's work)."""
        self._cpu_start = time.thread_time()

    def step(self, count: int = 1) -> None:
        self.steps += count
        if self.steps > MAX_STEPS:
            raise LimitExceeded(
                f"more than {MAX_STEPS:,} steps of work in one render (loop iterations, calls, "
                "filters, operators, lookups): a loop too long or nested too deep, or a macro "
                "that calls itself"
            )
        if self.steps >= self._next_cpu_check:
            self._next_cpu_check = self.steps + _CPU_CHECK_EVERY
            if time.thread_time() - self._cpu_start > MAX_CPU_SECONDS:
                raise LimitExceeded(
                    f"more than {MAX_CPU_SECONDS:g} s of CPU time in one render: a loop too "
                    "long or nested too deep, or filters over very large values"
                )

    def build(self, size: int) -> None:
        self.built += size
        if self.built > MAX_BUILT:
            raise LimitExceeded(
                f"more than {MAX_BUILT // MiB} MiB of text and lists built in one render"
            )

    @contextlib.contextmanager
    def kdf(self, iterations: int) -> Iterator[None]:
        self.kdf_iterations += iterations
        if self.kdf_iterations > MAX_KDF_ITERATIONS:
            raise LimitExceeded(
                f"more than {MAX_KDF_ITERATIONS:,} SCRAM (PBKDF2) iterations in one render, "
                "about 1,000 new verifiers at the default 4096 iterations: split the template, "
                "or use fewer iterations"
            )
        started = time.thread_time()
        try:
            yield
        finally:
            self._cpu_start += time.thread_time() - started


_METER: contextvars.ContextVar[Meter | None] = contextvars.ContextVar("smagent_meter", default=None)


@contextlib.contextmanager
def metered() -> Iterator[Meter]:
    """Hold the renders of this block (in this thread) to the limits, with a fresh meter."""
    meter = Meter()
    token = _METER.set(meter)
    try:
        yield meter
    finally:
        _METER.reset(token)


def step(count: int = 1) -> None:
    """Charge `count` steps to the render under way, if any."""
    meter = _METER.get()
    if meter is not None:
        meter.step(count)


@contextlib.contextmanager
def kdf_work(iterations: int) -> Iterator[None]:
    """Around PBKDF2 work of `iterations`: charged to its own budget, not to CPU time."""
    meter = _METER.get()
    if meter is None:
        yield
        return
    with meter.kdf(iterations):
        yield


# --- size checks ---------------------------------------------------------------------------------


def _check_length(count: int) -> None:
    if count > MAX_TEXT:
        raise LimitExceeded(
            f"a text of more than {MAX_TEXT // MiB} MiB (the limit for any text a template builds)"
        )


def _check_items(count: int) -> None:
    if count > MAX_ITEMS:
        raise LimitExceeded(f"a list of more than {MAX_ITEMS:,} items")


def _check_int_bits(bits: int) -> None:
    if bits > MAX_INT_BITS:
        raise LimitExceeded(f"an integer of more than {MAX_INT_BITS:,} bits")


def _check_number(value: object, what: str, limit: int = MAX_TEXT) -> None:
    """A width, count or precision argument that sizes what is built."""
    if isinstance(value, int) and value > limit:
        raise LimitExceeded(f"{what} larger than {limit:,}")


def built(value: Any) -> Any:
    """Check and charge a value a template has just built; returns it."""
    if isinstance(value, str):
        _check_length(len(value))
        size = len(value)
    elif isinstance(value, list | tuple | dict | set | frozenset):
        _check_items(len(value))
        size = len(value) * _ITEM_BYTES
    elif isinstance(value, int) and not isinstance(value, bool):
        _check_int_bits(value.bit_length())
        return value
    else:
        return value
    meter = _METER.get()
    if meter is not None:
        meter.build(size)
    return value


def _input_steps(value: object, per_step: int = _CHARS_PER_STEP) -> int:
    if isinstance(value, str | list | tuple | dict):
        return 1 + len(value) // per_step
    return 1


# --- operators -----------------------------------------------------------------------------------


def _check_repeat(left: Any, right: Any) -> None:
    """`seq * n` (either way round) and `int * int`, before they run."""
    seq, count = (left, right) if isinstance(left, str | list | tuple) else (right, left)
    if isinstance(seq, str | list | tuple) and isinstance(count, int):
        total = len(seq) * max(count, 0)
        _check_length(total) if isinstance(seq, str) else _check_items(total)
    elif isinstance(left, int) and isinstance(right, int):
        _check_int_bits(abs(left).bit_length() + abs(right).bit_length())


def _check_power(base: Any, exponent: Any) -> None:
    if isinstance(base, int) and isinstance(exponent, int) and exponent > 0 and abs(base) > 1:
        _check_int_bits((abs(base).bit_length() - 1) * exponent + 1)  # a lower bound


_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?")


def _check_percent_format(fmt: str, args: Any) -> None:
    """`fmt % args`: no width or precision may build more than MAX_TEXT."""
    star = False
    for match in _PERCENT_SPEC.finditer(fmt):
        for part in match.groups():
            if part == "*":
                star = True
            elif part is not None:
                _check_digits(part)
    if star:
        for arg in args if isinstance(args, tuple) else (args,):
            _check_number(arg, "a width or precision")


def _check_digits(digits: str) -> None:
    if len(digits) > len(str(MAX_TEXT)) or int(digits) > MAX_TEXT:
        raise LimitExceeded(f"a width or precision larger than {MAX_TEXT:,}")


def _check_brace_format(fmt: str, args: Iterable[Any]) -> None:
    """`fmt.format(...)`: widths and precisions written in `fmt`, or taken from the arguments."""
    try:
        fields = list(string.Formatter().parse(fmt))
    except ValueError:
        return  # the call itself fails, with nothing built
    nested = False
    for _, _, spec, _ in fields:
        if spec:
            nested = nested or "{" in spec
            for digits in re.findall(r"\d+", spec):
                _check_digits(digits)
    if nested:
        for arg in args:
            _check_number(arg, "a width or precision")


def _check_replace(text: Any, old: Any, new: Any, count: Any = -1) -> None:
    if not (isinstance(text, str) and isinstance(old, str) and isinstance(new, str)):
        return
    if len(new) <= len(old):
        return
    found = len(text) + 1 if old == "" else text.count(old)
    if isinstance(count, int) and count >= 0:
        found = min(found, count)
    _check_length(len(text) + found * (len(new) - len(old)))


def _check_join(separator: str, items: list[Any] | tuple[Any, ...]) -> None:
    _check_items(len(items))
    size = sum(len(item) if isinstance(item, str) else 1 for item in items)
    _check_length(size + max(len(items) - 1, 0) * len(separator))


def _lines(text: str) -> int:
    return text.count("\n") + 1


def _check_str_method(method: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Bound str methods that can build more than their input."""
    text, name = method.__self__, method.__name__
    if name in ("center", "ljust", "rjust", "zfill") and args:
        _check_number(args[0], f"{name}() width")
    elif name == "expandtabs":
        tabsize = args[0] if args else kwargs.get("tabsize", 8)
        if isinstance(tabsize, int):
            _check_length(len(text) + text.count("\t") * tabsize)
    elif name == "replace" and len(args) >= 2:
        _check_replace(text, *args[:3])


# --- filters -------------------------------------------------------------------------------------
# One check per filter that can build much more than its input, with the filter's own signature:
# arguments the filter would refuse make the check raise TypeError, and the filter then says so.


def _center(value: Any, width: Any = 80) -> None:
    _check_number(width, "center() width")


def _indent(s: Any, width: Any = 4, first: Any = False, blank: Any = False) -> None:
    size = len(width) if isinstance(width, str) else width
    if isinstance(s, str) and isinstance(size, int):
        _check_length(len(s) + _lines(s) * size)


def _wordwrap(
    s: Any,
    width: Any = 79,
    break_long_words: Any = True,
    wrapstring: Any = None,
    break_on_hyphens: Any = True,
) -> None:
    if isinstance(s, str) and isinstance(width, int) and width > 0:
        breaks = len(s) // width + _lines(s)
        _check_length(len(s) + breaks * len(wrapstring if isinstance(wrapstring, str) else "\n"))


def _format(value: Any, *args: Any, **kwargs: Any) -> None:
    if isinstance(value, str):
        _check_percent_format(value, args or tuple(kwargs.values()))


def _replace(s: Any, old: Any, new: Any, count: Any = None) -> None:
    _check_replace(s, old, new, -1 if count is None else count)


def _batch(value: Any, linecount: Any, fill_with: Any = None) -> None:
    _check_number(linecount, "batch() size", MAX_ITEMS)


def _slice(value: Any, slices: Any, fill_with: Any = None) -> None:
    _check_number(slices, "slice() count", MAX_ITEMS)


def _tojson(value: Any, indent: Any = None) -> None:
    _check_number(len(indent) if isinstance(indent, str) else indent, "tojson() indent", 1024)


def _yaml(value: Any) -> None:
    step(_YAML_STEPS_PER_STRING * _yaml_strings(value, MAX_STEPS // _YAML_STEPS_PER_STRING + 1))


def _yaml_strings(value: Any, limit: int) -> int:
    """How many strings (keys and values) a YAML filter parses back, counting up to `limit`."""
    count, stack = 0, [value]
    while stack and count < limit:
        item = stack.pop()
        if isinstance(item, str):
            count += 1
        elif isinstance(item, Mapping):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return count


_FILTER_CHECKS: dict[str, Callable[..., None]] = {
    "center": _center,
    "indent": _indent,
    "wordwrap": _wordwrap,
    "format": _format,
    "replace": _replace,
    "batch": _batch,
    "slice": _slice,
    "tojson": _tojson,
    "toyaml": _yaml,
    "yaml_scalar": _yaml,
}


def _join_items(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    """`join`: its items as a list, checked with the separator (a generator is read once)."""
    value = args[0]
    if isinstance(value, jinja2.Undefined):
        return args
    items = value if isinstance(value, list | tuple) else list(value)
    separator = args[1] if len(args) > 1 else kwargs.get("d", "")
    attribute = args[2] if len(args) > 2 else kwargs.get("attribute")
    if isinstance(separator, str) and attribute is None:
        _check_join(separator, items)
    else:
        _check_items(len(items))
    return (items, *args[1:])


def bounded_filter(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn` as a filter held to the limits: a step, its arguments checked, its result checked."""
    skip = 1 if hasattr(fn, "jinja_pass_arg") else 0  # context / environment / eval context
    check = _FILTER_CHECKS.get(name)
    per_step = _SLOW_FILTERS.get(name, _CHARS_PER_STEP)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        head, rest = args[:skip], args[skip:]
        step(_input_steps(rest[0], per_step) if rest else 1)
        try:
            if name == "join" and rest:
                rest = _join_items(rest, kwargs)
            elif check is not None:
                check(*rest, **kwargs)
        except TypeError:
            pass  # arguments the filter itself refuses: let it say so
        return built(fn(*head, *rest, **kwargs))

    return wrapper


# --- loops ---------------------------------------------------------------------------------------

LOOP_FILTER = "_smagent_counted"
"""The internal filter every `{% for %}` iterable goes through (see `_BoundedCodeGenerator`)."""


class _Counted:
    """An iterable that charges a step per item; keeps `len()` for `loop.length`."""

    __slots__ = ("_items",)

    def __init__(self, items: Any) -> None:
        self._items = items

    def __iter__(self) -> Iterator[Any]:
        meter = _METER.get()
        for item in self._items:
            if meter is not None:
                meter.step()
            yield item

    def __len__(self) -> int:
        return len(self._items)


def _counted(items: Any) -> Any:
    if isinstance(items, jinja2.Undefined):
        return items  # keeps Jinja's own behaviour for undefined iterables
    return _Counted(items)


class _BoundedCodeGenerator(CodeGenerator):
    """Jinja's code generator with two changes: counted loops, and `~` through `join_text`."""

    def visit_Template(self, node: nodes.Template, frame: Frame | None = None) -> None:
        for loop in node.find_all(nodes.For):
            loop.iter = nodes.Filter(loop.iter, LOOP_FILTER, [], [], None, None)
            loop.iter.set_lineno(loop.lineno)
        super().visit_Template(node, frame)

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.join_text(context.eval_ctx.autoescape, (")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


# --- the environment -----------------------------------------------------------------------------


class BoundedSandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox, held to the limits of the module docstring."""

    code_generator_class = _BoundedCodeGenerator
    intercepted_binops = frozenset({"+", "*", "%", "**"})

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.filters = {name: bounded_filter(name, fn) for name, fn in self.filters.items()}
        self.filters[LOOP_FILTER] = _counted
        self.globals["range"] = _bounded_range
        self.concat = self._concat  # type: ignore[method-assign]

    def register_filters(self, filters: Mapping[str, Callable[..., Any]]) -> None:
        self.filters.update({name: bounded_filter(name, fn) for name, fn in filters.items()})

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        step()
        if operator == "*":
            _check_repeat(left, right)
        elif operator == "**":
            _check_power(left, right)
        elif operator == "%" and isinstance(left, str):
            _check_percent_format(left, right)
        return built(self.binop_table[operator](left, right))

    def call(
        __self,  # Jinja's spelling, so that no keyword argument of the call can clash
        __context: Context,
        __obj: Any,
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        step(_input_steps(getattr(__obj, "__self__", None)) + 2)
        if isinstance(__obj, LoopContext) and args:  # loop(...) in a recursive loop
            args = (_counted(args[0]), *args[1:])
        elif isinstance(__obj, types.BuiltinMethodType) and isinstance(__obj.__self__, str):
            if __obj.__name__ == "join" and len(args) == 1 and not kwargs:
                items = args[0] if isinstance(args[0], list | tuple) else list(args[0])
                _check_join(__obj.__self__, items)
                args = (items,)
            else:
                _check_str_method(__obj, args, kwargs)
        elif __obj is generate_lorem_ipsum:
            _check_lipsum(*args, **kwargs)
        return built(super().call(__context, __obj, *args, **kwargs))

    def getattr(self, obj: Any, attribute: str) -> Any:
        step()
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        step()
        return super().getitem(obj, argument)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        fmt = value.__self__
        is_map = value.__name__ == "format_map"

        @functools.wraps(wrapped)
        def checked(*args: Any, **kwargs: Any) -> str:
            values = [*args, *kwargs.values()]
            if is_map and args and isinstance(args[0], Mapping):
                values = list(args[0].values())
            _check_brace_format(fmt, values)
            text: str = wrapped(*args, **kwargs)
            return text

        return checked

    def join_text(self, autoescape: bool, parts: tuple[Any, ...]) -> str:
        """`a ~ b ~ c`: checked before the text is joined."""
        step()
        texts = [part if isinstance(part, str) else str(part) for part in parts]
        _check_length(sum(map(len, texts)))
        text: str = built(markup_join(parts) if autoescape else str_join(texts))
        return text

    def _concat(self, parts: Iterable[str]) -> str:
        """The output of a template, block, macro or `{% set %}` block: stops at MAX_TEXT.

        The template's own output arrives as a generator; the error is thrown
        into it, so its traceback (and the message) points at the line whose
        output crossed the limit.
        """
        chunks: list[str] = []
        pieces: list[str] = []
        total = 0
        for piece in parts:
            total += len(piece)
            if total > MAX_TEXT:
                error = LimitExceeded(
                    f"output larger than {MAX_TEXT // MiB} MiB (the limit for a rendered file, "
                    "a block or a macro)"
                )
                if isinstance(parts, types.GeneratorType):
                    parts.throw(error)
                raise error
            pieces.append(piece)
            if len(pieces) == 4096:  # many small pieces cost far more memory than their text
                chunks.append("".join(pieces))
                pieces.clear()
        chunks.append("".join(pieces))
        text: str = built("".join(chunks))
        return text


def _bounded_range(*args: int) -> range:
    try:
        return safe_range(*args)
    except OverflowError:
        raise LimitExceeded(f"range() of more than {MAX_RANGE:,} items") from None


def _check_lipsum(n: Any = 5, html: Any = True, min: Any = 20, max: Any = 100) -> None:
    if isinstance(n, int) and isinstance(max, int) and n * max > 100_000:
        raise LimitExceeded("lipsum() of more than 100,000 words")
