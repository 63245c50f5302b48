"""The "No leaks" suite's checker: canary secrets, the forms they can leak in, where they may be.

Every provider a test builds holds canary values (the `ws` fixture's secrets
file, the process environment, the in-memory fakes). The autouse fixture in
conftest.py then fails any test whose stdout or stderr (at the file-descriptor
level, so child processes that inherit them count, and so do our structlog
events, which print there), stdlib log records,
failure text or files under `tmp_path` hold a canary, in any of the forms
`TRANSFORMS` lists; `run_cli` checks each smagent subprocess's own output the
same way as soon as it exits. Case is ignored throughout, so `|upper`,
`|lower`, `|title` and `|capitalize` are all caught by one search.

What may hold a value, exactly:
- a file registered with `allow_secrets_in` (the secrets file a test writes,
  the destination a template renders into) — nothing else in `tmp_path`;
- the stdout of `smagent get ... --reveal` (see `run_cli`).

A leak is reported by canary name and transform, with the value masked: the
report must not itself print what it guards.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import stat
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

MAX_FILE_BYTES = 64 * 1024 * 1024
"""Files larger than this are checked on their first 64 MiB (a test's 14 MB secrets file fits)."""


def _base64_cores(value: str, alphabet: Callable[[bytes], bytes]) -> Iterator[str]:
    """The part of base64(text) that depends only on `value`, at each of the 3 byte alignments.

    `b64encode` of the value alone gives alignment 0; a value inside a longer
    encoded string (a basic-auth header, a whole file) sits at any alignment.
    """
    data = value.encode()
    for offset in range(3):
        encoded = alphabet(b"\0" * offset + data).decode()
        start = 4 * -(-offset // 3)
        end = 4 * ((offset + len(data)) // 3)
        yield encoded[start:end].rstrip("=")


def _halves(value: str) -> Iterator[str]:
    """A value cut in two (a truncated log line): each half, when long enough to mean it."""
    half = len(value) // 2
    for part in (value[:half], value[half:]):
        if len(part) >= 10:
            yield part


TRANSFORMS: dict[str, Callable[[str], Iterable[str]]] = {
    "as is": lambda v: [v],
    "reversed": lambda v: [v[::-1]],
    "base64": lambda v: _base64_cores(v, base64.b64encode),
    "base64url": lambda v: _base64_cores(v, base64.urlsafe_b64encode),
    "URL-encoded": lambda v: {
        urllib.parse.quote(v, safe=""),
        urllib.parse.quote(v),
        urllib.parse.quote_plus(v),
    },
    "hex": lambda v: [v.encode().hex()],
    "JSON-escaped": lambda v: {json.dumps(v)[1:-1], json.dumps(v, ensure_ascii=False)[1:-1]},
    "Python repr": lambda v: [repr(v)[1:-1]],
    "shell-quoted": lambda v: [shlex.quote(v)],
    "half": _halves,
}
"""Each name, and the texts a value takes in that form. Each is also found in upper, lower
or mixed case (`|upper`, `|lower`, `|title`): the search ignores case, and says which."""


@dataclass(frozen=True, slots=True)
class Leak:
    canary: str
    """The canary's name, never its value."""
    transform: str
    where: str
    case: str = ""
    """"" when found with the form's own letter case, else upper-case, lower-case, mixed case."""

    def __str__(self) -> str:
        how = f"{self.transform}, {self.case}" if self.case else self.transform
        return f"{self.canary} ({how}) in {self.where}"


@dataclass(slots=True)
class _Registry:
    names: dict[str, str]
    """value -> name, for every canary planted this session."""
    needles: list[tuple[str, str, str, str]] | None = None
    """(lower-cased text, canary name, transform name, text), longest first; built on demand."""
    masker: tuple[re.Pattern[str], dict[str, str]] | None = None


_REGISTRY = _Registry({})
_ALLOWED: set[Path] = set()
STATS = {"tests": 0, "subprocess outputs": 0, "files": 0, "log records": 0}
"""What the suite looked at this session (printed at the end of the run)."""


def plant(value: str, name: str) -> str:
    """Register `value` as a canary (session-wide); returns it, for use as a constant."""
    if len(value) < 8:
        raise ValueError("a canary shorter than 8 characters would match ordinary text")
    _REGISTRY.names[value] = name
    _REGISTRY.needles = _REGISTRY.masker = None
    return value


def canaries() -> dict[str, str]:
    """name -> value of every canary planted so far."""
    return {name: value for value, name in _REGISTRY.names.items()}


def _needles() -> list[tuple[str, str, str, str]]:
    if _REGISTRY.needles is None:
        found: dict[str, tuple[str, str, str]] = {}
        for value, name in _REGISTRY.names.items():
            for transform, forms in TRANSFORMS.items():
                for form in forms(value):
                    found.setdefault(form.lower(), (name, transform, form))
        _REGISTRY.needles = sorted(
            ((lower, *rest) for lower, rest in found.items()),
            key=lambda needle: -len(needle[0]),
        )
    return _REGISTRY.needles


def _case(seen: str, form: str) -> str:
    if seen == form:
        return ""
    if seen == form.upper():
        return "upper-case"
    if seen == form.lower():
        return "lower-case"
    return "mixed case"


def find_leaks(text: str | bytes, where: str) -> list[Leak]:
    """Every canary form in `text`, one `Leak` per (canary, transform)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "surrogateescape")
    haystack = text.lower()
    same_length = len(haystack) == len(text)  # false only for a few exotic letters
    leaks: dict[tuple[str, str], Leak] = {}
    needles = _needles()
    if len(haystack) > 1_000_000:
        # a needle with a character the text lacks cannot be in it: one pass over a big
        # file instead of one per needle (hundreds are planted by the end of a session)
        present = set(haystack)
        needles = [needle for needle in needles if present.issuperset(needle[0])]
    for needle, name, transform, form in needles:
        start = haystack.find(needle)
        if start >= 0 and (name, transform) not in leaks:
            seen = text[start : start + len(needle)] if same_length else form
            leaks[name, transform] = Leak(name, transform, where, _case(seen, form))
    return list(leaks.values())


def mask(text: str) -> str:
    """`text` with every canary form replaced by `<CANARY_NAME transform>` (case-insensitive)."""
    if not _REGISTRY.names:
        return text
    if _REGISTRY.masker is None:
        labels = {needle: f"<{name} {how}>" for needle, name, how, _ in _needles()}
        pattern = re.compile("|".join(re.escape(needle) for needle in labels), re.IGNORECASE)
        _REGISTRY.masker = pattern, labels
    pattern, labels = _REGISTRY.masker
    return pattern.sub(lambda match: labels.get(match[0].lower(), "<canary>"), text)


def assert_no_leak(text: str | bytes, where: str) -> None:
    """Fail (with the value masked) when `text` holds any canary form."""
    leaks = find_leaks(text, where)
    if leaks:
        raise AssertionError(describe(leaks))


def describe(leaks: Iterable[Leak]) -> str:
    lines = [f"a canary secret leaked: {leak}" for leak in leaks]
    return "\n".join(lines)


# --- files -------------------------------------------------------------------------------------


def allow_secrets_in(*paths: os.PathLike[str] | str) -> None:
    """These files are meant to hold secret values this test (a secrets file, a destination)."""
    _ALLOWED.update(Path(os.path.abspath(p)) for p in paths)


def start_test() -> None:
    _ALLOWED.clear()
    STATS["tests"] += 1


def files_with_leaks(root: Path) -> list[Leak]:
    """Every regular file under `root`, except the allowed ones, checked for canaries.

    Symlinks are not followed (a test may point one at /dev/zero or outside
    tmp_path) and FIFOs, sockets and devices are never opened.
    """
    leaks: list[Leak] = []
    for folder, subfolders, files in os.walk(root):
        for name in files:
            path = Path(folder, name)
            if path in _ALLOWED:
                continue
            try:
                if not stat.S_ISREG(os.lstat(path).st_mode):
                    continue
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            except OSError:  # gone, or unreadable on purpose (mode 000): nothing to read
                continue
            with os.fdopen(fd, "rb") as handle:
                data = handle.read(MAX_FILE_BYTES)
            STATS["files"] += 1
            leaks += find_leaks(data, f"file {path.relative_to(root)}")
        subfolders[:] = [d for d in subfolders if not os.path.islink(os.path.join(folder, d))]
    return leaks
