"""A stand-in for systemd's notification socket, for tests of sd_notify senders.

`NotifyListener(tmp_path)` binds an AF_UNIX datagram socket and records every
message a background thread receives: when (time.monotonic()), what (the
`KEY=VALUE` lines as a dict) and who sent it (the kernel's SCM_CREDENTIALS,
as systemd's `NotifyAccess=` checks them). Pass `listener.env` (or
`NOTIFY_SOCKET=listener.path`) to the process under test.
"""

from __future__ import annotations

import os
import socket
import struct
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

MAX_PATH = 100
"""A socket path must fit sockaddr_un (108 bytes); pytest's tmp_path can be longer."""


@dataclass(frozen=True)
class Message:
    at: float
    fields: dict[str, str]
    pid: int | None
    raw: bytes


class NotifyListener:
    """Receives sd_notify datagrams on `.path` until closed; usable as a context manager."""

    def __init__(self, folder: Path, *, abstract: bool = False, path: str | None = None) -> None:
        """A socket in `folder` (or at `path`, a path or "@name", to stand in for a restart)."""
        self._folder: str | None = None
        if path is not None:
            self.path = path
            address: str | bytes = b"\0" + path[1:].encode() if path.startswith("@") else path
        elif abstract:
            name = f"smagent-test-{uuid.uuid4().hex}"
            self.path = "@" + name
            address = b"\0" + name.encode()
        else:
            path = str(folder / "notify.sock")
            if len(path) > MAX_PATH:
                self._folder = tempfile.mkdtemp(prefix="sdn-")
                path = os.path.join(self._folder, "notify.sock")
            self.path = address = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self._sock.bind(address)
        self._sock.settimeout(0.05)
        self._messages: list[Message] = []
        self._changed = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._receive, name="notify-listener", daemon=True)
        self._thread.start()

    @property
    def env(self) -> dict[str, str]:
        return {"NOTIFY_SOCKET": self.path}

    def messages(self) -> list[tuple[float, dict[str, str]]]:
        """Every message so far, oldest first, as (monotonic time, fields)."""
        with self._changed:
            return [(m.at, m.fields) for m in self._messages]

    def records(self) -> list[Message]:
        """Every message so far with its sender's pid and raw bytes."""
        with self._changed:
            return list(self._messages)

    def times(self, key: str, value: str | None = None) -> list[float]:
        """When each message holding `key` (equal to `value`, if given) arrived."""
        return [at for at, fields in self.messages() if _matches(fields, key, value)]

    def wait_for(
        self, key: str, value: str | None = None, timeout: float = 10.0, *, since: float = 0.0
    ) -> dict[str, str]:
        """The first message received at or after `since` holding `key` (= `value`)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for message in self._messages:
                    if message.at >= since and _matches(message.fields, key, value):
                        return message.fields
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = [m.fields for m in self._messages]
                    want = key if value is None else f"{key}={value}"
                    raise TimeoutError(f"no {want} within {timeout} s; received: {seen}")
                self._changed.wait(left)

    def wait_count(
        self, key: str, count: int, timeout: float = 10.0, *, since: float = 0.0
    ) -> list[float]:
        """The arrival times of the first `count` messages holding `key` at or after `since`."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = [m.at for m in self._messages if m.at >= since and key in m.fields]
                if len(found) >= count:
                    return found[:count]
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{len(found)} of {count} {key} within {timeout} s")
                self._changed.wait(left)

    def close(self) -> None:
        """Stop receiving and remove the socket, as a stopped service manager would."""
        if self._closed:
            return
        self._closed = True
        self._thread.join()
        self._sock.close()
        if not self.path.startswith("@"):
            Path(self.path).unlink(missing_ok=True)
        if self._folder is not None:
            os.rmdir(self._folder)

    def __enter__(self) -> NotifyListener:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _receive(self) -> None:
        creds_size = socket.CMSG_SPACE(struct.calcsize("3i"))
        while not self._closed:
            try:
                data, ancillary, _flags, _addr = self._sock.recvmsg(65536, creds_size)
            except TimeoutError:
                continue
            except OSError:
                return
            pid = None
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = struct.unpack("3i", payload[: struct.calcsize("3i")])[0]
            message = Message(time.monotonic(), _parse(data), pid, data)
            with self._changed:
                self._messages.append(message)
                self._changed.notify_all()


def _parse(data: bytes) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in data.decode("utf-8", errors="replace").split("\n"):
        if line:
            key, _, value = line.partition("=")
            fields[key] = value
    return fields


def _matches(fields: dict[str, str], key: str, value: str | None) -> bool:
    return key in fields and (value is None or fields[key] == value)
