"""The `file` provider: secrets from a local YAML or JSON mapping.

For trying smagent with no cloud, for tests, and for hosts whose secrets are
dropped by another tool. A secret id is a top-level name, or a `/`-separated
path into nested mappings when no top-level name matches. Strings are served
as they are, nested mappings/lists as JSON text (so their keys work like an
AWS JSON secret), and a YAML `!!binary` value as bytes (a binary secret).

The file is re-read when its size or mtime changes, off the event loop. It
must be a regular file: it is opened non-blocking and anything else (a FIFO, a
device) is refused, since a read that blocks in a worker thread cannot be
cancelled and would keep `render --once` from ever exiting.
Parse errors report only the line and column: PyYAML's own message quotes the
offending line, which would put a secret into the log; a value PyYAML cannot
build (an invalid date) or nesting too deep to parse is reported without
position or content.
"""

from __future__ import annotations

import asyncio
import datetime
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from smagent.config import FileProvider as FileProviderConfig
from smagent.providers.base import FetchResult, NotFound, SecretValue, Unavailable
from smagent.references import SecretRef
from smagent.regular_file import NotRegularFile, read_regular


class FileProvider:
    def __init__(self, name: str, config: FileProviderConfig) -> None:
        self.name = name
        self.path = Path(config.path)
        self._stamp: tuple[int, int] | None = None
        self._data: Mapping[str, Any] = {}

    async def fetch(self, refs: Sequence[SecretRef]) -> Mapping[SecretRef, FetchResult]:
        try:
            data = await asyncio.to_thread(self._load)
        except Unavailable as exc:
            return {ref: Unavailable(ref, exc.detail) for ref in refs}
        return {ref: self._one(data, ref) for ref in refs}

    async def current_version(self, ref: SecretRef) -> str | None:
        return None

    async def test_connection(self) -> None:
        await asyncio.to_thread(self._load)

    async def aclose(self) -> None:
        return None

    def _one(self, data: Mapping[str, Any], ref: SecretRef) -> FetchResult:
        if ref.version is not None or ref.stage is not None:
            return NotFound(
                ref, "the file provider keeps one value per secret (no version or stage)"
            )
        value = _find(data, ref.secret_id)
        if value is _MISSING:
            return NotFound(ref, f"no secret named {ref.secret_id!r} in {self.path}")
        if isinstance(value, bytes):
            return SecretValue(value)
        if isinstance(value, str):
            return SecretValue(value)
        if isinstance(value, bool):
            return SecretValue("true" if value else "false")
        if value is None:
            return SecretValue("")
        if isinstance(value, datetime.date):  # a YAML timestamp: its text, not a quoted JSON string
            return SecretValue(str(value))
        return SecretValue(json.dumps(value, ensure_ascii=False, default=str))

    def _load(self) -> Mapping[str, Any]:
        try:
            raw, info = read_regular(self.path)
        except NotRegularFile:
            raise Unavailable(None, f"{self.path} is not a regular file") from None
        except OSError as exc:
            raise Unavailable(None, f"cannot read {self.path}: {exc.strerror}") from None
        stamp = (info.st_mtime_ns, info.st_size)
        if stamp == self._stamp:
            return self._data
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise Unavailable(None, f"{self.path} is not UTF-8 text") from None
        try:
            data = yaml.safe_load(text) if text.strip() else {}
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise Unavailable(None, f"{self.path} is not valid YAML/JSON{where}") from None
        except yaml.YAMLError:
            raise Unavailable(None, f"{self.path} is not valid YAML/JSON") from None
        except (ValueError, OverflowError):  # a value PyYAML matched but cannot build: 2001-02-30
            raise Unavailable(
                None, f"{self.path} holds a value YAML cannot read (such as an invalid date)"
            ) from None
        except RecursionError:
            raise Unavailable(None, f"{self.path} is nested too deeply to read") from None
        if not isinstance(data, dict):
            raise Unavailable(None, f"{self.path} must hold a mapping of secret names to values")
        self._data, self._stamp = data, stamp
        return data

    def __repr__(self) -> str:
        return f"FileProvider(name={self.name!r}, path={str(self.path)!r})"


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
