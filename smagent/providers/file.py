"""The `file` provider: secrets from a local YAML or JSON mapping.

For trying smagent with no cloud, for tests, and for hosts whose secrets are
dropped by another tool. A secret id is a top-level name, or a `/`-separated
path into nested mappings when no top-level name matches. Strings are served
as they are, nested mappings/lists as JSON text (so their keys work like an
AWS JSON secret), and a YAML `!!binary` value as bytes (a binary secret).

A pass's deadline (`fetch_timeout`) holds whatever the file holds:

- the file is read and parsed in the provider's own daemon thread
  (`BlockingWorker`), never on the event loop. A read or parse still
  running at the deadline is not waited for: it finishes in the background
  (and, the file unchanged, serves the next pass at once), or is dropped
  when `render --once` exits;
- the work is bounded: at most `MAX_FILE_BYTES` are read, and the YAML is
  read by `secrets_yaml`, which bounds nesting, alias expansion and merge
  keys (a few hundred bytes of "billion laughs" would otherwise expand to
  gigabytes);
- the file must be a regular file: it is opened non-blocking and anything
  else (a FIFO, a device) is refused, since a read that blocks in a thread
  cannot be cancelled.

A problem inside one secret (a date YAML cannot build, a recursive alias, a
set, a NaN, nesting past the limit) fails only the references to that secret,
as `bad value` with its key path and line; only what makes the whole file
unreadable fails every reference. Parse errors report only the line and
column: PyYAML's own message quotes the offending line, which would put a
secret into the log.

The file is re-read when its size, mtime or inode changes. A refresh
(`BaseProvider.refresh`) is one `fetch` of every known secret: one look at
the file for all of them, re-parsed only when it changed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from smagent.config import FileProviderConfig
from smagent.providers import secrets_yaml
from smagent.providers.base import (
    AccessDenied,
    BadValue,
    BaseProvider,
    FetchResult,
    NotFound,
    ProviderError,
    SecretValue,
    Unavailable,
)
from smagent.providers.blocking import BlockingWorker
from smagent.references import SecretRef
from smagent.regular_file import NotRegularFile, read_regular

MAX_FILE_BYTES = 4 * 1024 * 1024
"""4 MiB: 64 secrets at AWS Secrets Manager's 64 KiB maximum, or thousands of ordinary
ones, read in a second or two. A larger file is refused at once rather than parsed past
any sensible deadline."""


class FileProvider(BaseProvider):
    def __init__(self, name: str, config: FileProviderConfig) -> None:
        super().__init__(name, config)
        self.path = Path(config.path)
        self._stamp: tuple[int, int, int] | None = None
        self._data: Mapping[str, Any] = {}
        self._worker = BlockingWorker(name)

    async def fetch(self, refs: Sequence[SecretRef]) -> Mapping[SecretRef, FetchResult]:
        results, broken = await self._worker.run(lambda: self._fetch(refs))
        # the whole file unreadable is this provider down, told once per change of state
        # (`provider.unavailable` ... `provider.recovered`, and in the agent's status), as a
        # network store's outage is; one secret missing from a good file is not
        if broken is not None:
            self.health.failed(broken, f"read {self.path}", first=True)
            self.health.finished(ok=False, had_failed=True)
        else:
            self.health.finished(ok=True, had_failed=False)
        return results

    async def test_connection(self) -> None:
        await self._worker.run(self._load)

    async def close(self) -> None:
        self._worker.close()

    def _fetch(
        self, refs: Sequence[SecretRef]
    ) -> tuple[dict[SecretRef, FetchResult], ProviderError | None]:
        try:
            data = self._load()
        except ProviderError as exc:
            return {ref: exc.for_ref(ref) for ref in refs}, exc
        return {ref: self._one(data, ref) for ref in refs}, None

    def _one(self, data: Mapping[str, Any], ref: SecretRef) -> FetchResult:
        if ref.version is not None or ref.stage is not None:
            return NotFound(
                ref, "the file provider keeps one value per secret (no version or stage)"
            )
        value = _find(data, ref.secret_id)
        if value is _MISSING:
            return NotFound(ref, f"no secret named {ref.secret_id!r} in {self.path}")
        try:
            return SecretValue(secrets_yaml.secret_text(value))
        except secrets_yaml.Unconvertible as exc:
            return BadValue(ref, f"in {self.path}: {exc}")
        except Exception as exc:  # a case the converter does not know: this secret only
            return BadValue(ref, f"in {self.path}: cannot be read ({type(exc).__name__})")

    def _load(self) -> Mapping[str, Any]:
        try:
            raw, info = read_regular(self.path, MAX_FILE_BYTES + 1)
        except NotRegularFile:
            raise Unavailable(None, f"{self.path} is not a regular file") from None
        except PermissionError as exc:  # permanent: retrying will not change the file's mode
            raise AccessDenied(None, f"cannot read {self.path}: {exc.strerror}") from None
        except OSError as exc:
            raise Unavailable(None, f"cannot read {self.path}: {exc.strerror}") from None
        if len(raw) > MAX_FILE_BYTES:
            raise Unavailable(
                None,
                f"{self.path} is larger than {MAX_FILE_BYTES // (1024 * 1024)} MiB "
                "(the limit for a secrets file); split it into several file providers",
            )
        stamp = (info.st_ino, info.st_mtime_ns, info.st_size)
        if stamp == self._stamp:
            return self._data
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = raw.count(b"\n", 0, exc.start) + 1
            raise Unavailable(None, f"{self.path} is not UTF-8 text (line {line})") from None
        if "\x00" in text:  # PyYAML would say "unacceptable character", quoting the line
            line = text.count("\n", 0, text.index("\x00")) + 1
            raise Unavailable(None, f"{self.path} holds a NUL character (line {line})")
        try:
            data = secrets_yaml.load(text) if text.strip() else {}
        except secrets_yaml.TooDeepToParse as exc:
            raise Unavailable(
                None, f"{self.path} is {exc.problem}{_position(exc)} (the limit)"
            ) from None
        except yaml.MarkedYAMLError as exc:
            raise Unavailable(None, f"{self.path} is not valid YAML/JSON{_position(exc)}") from None
        except yaml.YAMLError:
            raise Unavailable(None, f"{self.path} is not valid YAML/JSON") from None
        except RecursionError:
            raise Unavailable(None, f"{self.path} is nested too deeply to read") from None
        except Exception as exc:  # a case the loader does not know: a clear error, not a crash
            raise Unavailable(None, f"{self.path} cannot be read ({type(exc).__name__})") from None
        if not isinstance(data, dict):
            raise Unavailable(None, f"{self.path} must hold a mapping of secret names to values")
        for key, value in data.items():  # the top mapping itself could not be built
            if isinstance(key, secrets_yaml.Invalid) and value is key:
                raise Unavailable(None, f"{self.path} holds {key.describe()}")
        self._data, self._stamp = data, stamp
        return data

    def __repr__(self) -> str:
        return f"FileProvider(name={self.name!r}, path={str(self.path)!r})"


def _position(exc: yaml.MarkedYAMLError) -> str:
    mark = exc.problem_mark
    return f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""


_MISSING: Any = object()


def _find(data: Mapping[str, Any], secret_id: str) -> Any:
    if secret_id in data:
        return data[secret_id]
    node: Any = data
    for part in secret_id.split("/"):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node
