"""structlog set-up, and the redaction step that is our second line of defence.

The first line is that no code path puts a secret value into a log field or
an exception message. The second is `Redactor`: every value the resolver
fetches is registered (the whole text, each string and number inside its
JSON, and for a binary secret its UTF-8, `repr` and base64 forms), and
`redact_processor` masks any occurrence of one in any log field before a
renderer sees it. The CLI passes its own error lines through the same
`Redactor`, so a slip in a message cannot reach a terminal.

What the mask looks like is chosen so that it does not point at the value.
An occurrence of a random-looking value is replaced in place by `<redacted>`:
its position says nothing. But a value that is a plain word (`password`,
`localhost`: letters only) is also the kind of text our messages hold as
names ("key 'password' not in secret prod/db"); masking it in place would
both blank those names and tell the reader which word the secret is. Such a
word anywhere in a field withholds the whole field instead (`WITHHELD`),
which says only that some secret was there. Fields built from the config
and from text written in templates (template, destination, reference, ...)
and the event name are never masked, so a line still says what failed where.

Scrubbing is a scan keyed by each value's first `min_length` characters, not
one regular expression of every value: its cost grows with the text, not
with the number of secrets (a regex of 10,000 alternatives takes ~70 ms a
log line), and adding a value costs O(1).
"""

from __future__ import annotations

import base64
import bisect
import logging
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any, Literal, TextIO

import structlog

from smagent.values import TooDeep, leaves, parse_json_text

REDACTED = "<redacted>"
WITHHELD = "<withheld: it held a secret value>"
LogFormat = Literal["auto", "json", "console"]
LogLevel = Literal["debug", "info", "warning", "error"]


class _Bucket:
    """The known values that start with one prefix, by length, longest first."""

    __slots__ = ("by_length", "lengths")

    def __init__(self) -> None:
        self.lengths: list[int] = []  # ascending; scanned from the end
        self.by_length: dict[int, set[str]] = {}

    def add(self, value: str) -> None:
        same = self.by_length.get(len(value))
        if same is None:
            bisect.insort(self.lengths, len(value))
            same = self.by_length[len(value)] = set()
        same.add(value)

    def discard(self, value: str) -> None:
        same = self.by_length.get(len(value))
        if same is None:
            return
        same.discard(value)
        if not same:
            del self.by_length[len(value)]
            self.lengths.remove(len(value))

    def match(self, text: str, start: int) -> str | None:
        """The longest known value at `text[start:]`."""
        for length in reversed(self.lengths):
            candidate = text[start : start + length]
            if candidate in self.by_length[length]:
                return candidate
        return None


class Redactor:
    """The set of known secret strings, and the scrubbing of text that may hold them.

    Strings shorter than `min_length` are not scrubbed: replacing every `1`
    or `on` in a log line would make logs useless and protect nothing.
    """

    def __init__(self, min_length: int = 4) -> None:
        self.min_length = min_length
        self._index: dict[str, _Bucket] = {}
        self._holders: dict[str, int] = {}
        """Each registered text -> how many registered values hold it (see `retire`)."""

    def __len__(self) -> int:
        return len(self._holders)

    def add(self, value: str | bytes) -> None:
        """Register a fetched value (never raises: it runs on every fetch).

        Registrations are counted: a value added twice (two secrets that hold
        one password, or a value fetched again) stays known until retired twice.
        """
        for text in set(_forms(value)):
            if len(text) < self.min_length:
                continue
            holders = self._holders.get(text, 0)
            self._holders[text] = holders + 1
            if holders:
                continue
            prefix = text[: self.min_length]
            bucket = self._index.get(prefix)
            if bucket is None:
                bucket = self._index[prefix] = _Bucket()
            bucket.add(text)

    def retire(self, value: str | bytes) -> None:
        """Undo one `add` of `value`: the long-running agent's cache calls it when a value
        has rotated out, so the set of known values does not grow for months and scrubbing
        stops masking text that is no longer a secret. A text still held by another
        registered value stays known."""
        for text in set(_forms(value)):
            holders = self._holders.get(text)
            if holders is None:
                continue
            if holders > 1:
                self._holders[text] = holders - 1
                continue
            del self._holders[text]
            prefix = text[: self.min_length]
            bucket = self._index.get(prefix)
            if bucket is not None:
                bucket.discard(text)
                if not bucket.lengths:
                    del self._index[prefix]

    def scrub(self, text: str) -> str:
        """`text` with known values masked (see the module docstring for the two masks)."""
        index = self._index
        width = self.min_length
        if not index or len(text) < width:
            return text
        pieces: list[str] = []
        done = 0
        position = 0
        last = len(text) - width
        while position <= last:
            bucket = index.get(text[position : position + width])
            found = bucket.match(text, position) if bucket is not None else None
            if found is None:
                position += 1
                continue
            if found.isalpha():
                return WITHHELD
            pieces.append(text[done:position])
            pieces.append(REDACTED)
            position = done = position + len(found)
        if not pieces:
            return text
        pieces.append(text[done:])
        return "".join(pieces)

    def scrub_any(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.scrub(value)
        if isinstance(value, dict):
            return {k: self.scrub_any(v) for k, v in value.items()}
        if isinstance(value, list | tuple | set | frozenset):
            return [self.scrub_any(v) for v in value]
        if isinstance(value, int | float | bool) or value is None:
            return value
        structlog_form = getattr(value, "__structlog__", None)
        if callable(structlog_form):
            return self.scrub(str(structlog_form()))
        return self.scrub(str(value))


def _forms(value: str | bytes) -> Iterable[str]:
    """The texts in which a value can show up in a log line."""
    if isinstance(value, bytes):
        yield from value.decode("utf-8", "replace").split("\ufffd")  # the UTF-8 runs
        yield repr(value)[2:-1]  # as an f-string or exception text shows bytes
        yield base64.b64encode(value).decode("ascii")  # as `| b64encode` writes it
        return
    yield value
    try:
        data = parse_json_text(value)
    except TooDeep:  # refused by the resolver; its whole text is registered above
        return
    for leaf in leaves(data):  # JSON holds no bytes
        if isinstance(leaf, str):
            yield leaf


REDACTOR = Redactor()
"""The process-wide registry: the resolver adds to it, logging and the CLI scrub with it."""


CONFIG_FIELDS = frozenset(
    {
        "event",
        "level",
        "timestamp",
        "template",
        "destination",
        "path",
        "provider",
        "reference",
        "action",
        "error_type",
    }
)
"""Fields whose text comes from the config file, from text written in a template (a
reference's label masks every computed part) or from our code, never from a secret: not
scrubbed, so a secret that happens to equal a folder name (a username, say) does not blank
out paths, and the mask cannot point at which name a secret equals."""


def shown(ref: object) -> str:
    """A secret reference as an event's `reference` field may show it (that field is not
    scrubbed): a name computed in a template, registered by `Resolver.conceal`, masked.
    For events whose reference comes from a fetch or a lease, not from a template's text."""
    return REDACTOR.scrub(str(ref))


def redact_processor(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key, value in list(event_dict.items()):
        if key not in CONFIG_FIELDS or not isinstance(value, str):
            event_dict[key] = REDACTOR.scrub_any(value)
    return event_dict


def configure(
    fmt: LogFormat = "auto", level: LogLevel = "info", stream: TextIO | None = None
) -> None:
    """Logs go to stderr: JSON lines unless stderr is a terminal (or `fmt` says)."""
    out = stream if stream is not None else sys.stderr
    use_json = fmt == "json" or (fmt == "auto" and not _isatty(out))
    renderer: structlog.typing.Processor
    if use_json:
        renderer = structlog.processors.JSONRenderer(default=_json_default)
    else:
        renderer = structlog.dev.ConsoleRenderer(
            colors=_isatty(out), exception_formatter=structlog.dev.plain_traceback
        )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact_processor,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )


def _json_default(value: Any) -> str:
    return REDACTOR.scrub(str(value))


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def get_logger(**context: Any) -> structlog.typing.FilteringBoundLogger:
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger(**context)
    return logger
