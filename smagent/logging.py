"""structlog set-up, and the redaction step that is our second line of defence.

The first line is that no code path puts a secret value into a log field or
an exception message. The second is `Redactor`: every value the resolver
fetches is registered (the whole text and each string inside its JSON), and
`redact_processor` replaces any occurrence of one in any log field with
`<redacted>` before a renderer sees it. The CLI passes its own error lines
through the same `Redactor`, so a slip in a message cannot reach a terminal.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any, Literal, TextIO

import structlog

from smagent.values import parse_json_text

REDACTED = "<redacted>"
LogFormat = Literal["auto", "json", "console"]
LogLevel = Literal["debug", "info", "warning", "error"]


class Redactor:
    """The set of known secret strings, and the scrubbing of text that may hold them.

    Strings shorter than `min_length` are not scrubbed: replacing every `1`
    or `on` in a log line would make logs useless and protect nothing.
    """

    def __init__(self, min_length: int = 4) -> None:
        self.min_length = min_length
        self._values: set[str] = set()
        self._pattern: re.Pattern[str] | None = None

    def add(self, value: str | bytes) -> None:
        texts: Iterable[str]
        if isinstance(value, bytes):
            texts = [value.decode("utf-8", "replace")]
        else:
            texts = [value, *_json_strings(value)]
        new = {t for t in texts if len(t) >= self.min_length and t not in self._values}
        if new:
            self._values |= new
            self._pattern = None

    def scrub(self, text: str) -> str:
        if not self._values:
            return text
        if self._pattern is None:
            alternatives = sorted(self._values, key=len, reverse=True)
            self._pattern = re.compile("|".join(re.escape(v) for v in alternatives))
        return self._pattern.sub(REDACTED, text)

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


def _json_strings(text: str) -> list[str]:
    """Every string and number inside `text` when it is a JSON container."""
    data = parse_json_text(text)
    if data is None:
        return []
    found: list[str] = []
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str):
            found.append(item)
        elif isinstance(item, int | float) and not isinstance(item, bool):
            found.append(str(item))
    return found


REDACTOR = Redactor()
"""The process-wide registry: the resolver adds to it, logging and the CLI scrub with it."""


CONFIG_FIELDS = frozenset(
    {"event", "level", "timestamp", "template", "destination", "path", "provider"}
)
"""Fields whose text comes from the config file, never from a secret: not scrubbed, so a
secret that happens to equal a folder name (a username, say) does not blank out paths."""


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
