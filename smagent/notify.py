"""The sd_notify protocol: how the agent tells systemd it is ready, busy, alive or leaving.

Written against the protocol (sd_notify(3)), not libsystemd: a message is one
datagram of `KEY=VALUE` lines sent to the AF_UNIX socket named by
`$NOTIFY_SOCKET` (a path, or `@name` for the abstract namespace). The
service manager reads the sender's credentials from the kernel, so with
`NotifyAccess=main` only our own process may speak for the unit.

Three rules shape this module:

- The variables are taken out of `os.environ` as soon as they are read.
  Actions run commands as our children; a child that inherited
  `NOTIFY_SOCKET` could send READY=1 or WATCHDOG=1 in our name, and one that
  inherited `WATCHDOG_USEC` might believe it is being watched.
- A send never blocks and never raises. systemd being slow to read (queue
  full), restarted (socket gone) or absent must not stall or kill the agent,
  so the socket is non-blocking and every error is swallowed; the first one
  of a run of failures is logged at debug, the next only after a send worked.
- The watchdog is fed from the event loop (`watchdog()` is a task on it), not
  from a thread: the ping proves that the loop still turns, so a loop wedged
  by a blocking call misses its pings and systemd restarts the service.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time

from smagent.logging import REDACTOR, get_logger

log = get_logger()

STATUS_MAX = 400
"""Characters of a STATUS= text kept: `systemctl status` shows one line."""


class Notifier:
    """Sends sd_notify messages to one socket; with no socket, every call does nothing."""

    def __init__(self, address: str | None, watchdog_usec: int | None = None) -> None:
        """`address` as written in NOTIFY_SOCKET; `watchdog_usec` as in WATCHDOG_USEC."""
        self._address: str | bytes | None = _socket_address(address) if address else None
        self._socket: socket.socket | None = None
        self._failing = False
        if self._address is not None:
            try:
                self._socket = socket.socket(
                    socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
                )
            except OSError as exc:
                log.debug("notify.unavailable", reason=exc.strerror or str(exc))
        self.enabled = self._socket is not None
        self.watchdog_interval: float | None = (
            watchdog_usec / 2 / 1_000_000 if self.enabled and watchdog_usec else None
        )

    @classmethod
    def from_environment(cls) -> Notifier:
        """A Notifier for what systemd passed us; the variables are removed from os.environ."""
        address = os.environ.pop("NOTIFY_SOCKET", None)
        usec_text = os.environ.pop("WATCHDOG_USEC", None)
        pid_text = os.environ.pop("WATCHDOG_PID", None)
        return cls(address or None, _watchdog_usec(usec_text, pid_text))

    def ready(self, status: str) -> None:
        """The service is up (after the first pass, and again after each reload)."""
        self._send(f"READY=1\nSTATUS={_one_line(status)}")

    def status(self, text: str) -> None:
        """A one-line summary shown by `systemctl status`."""
        self._send(f"STATUS={_one_line(text)}")

    def reloading(self) -> None:
        """A reload began; `ready()` ends it. MONOTONIC_USEC lets systemd order the two."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self._send(f"RELOADING=1\nMONOTONIC_USEC={usec}")

    def stopping(self) -> None:
        """The service is shutting down."""
        self._send("STOPPING=1")

    def ping(self) -> None:
        """Tell the watchdog we are alive."""
        self._send("WATCHDOG=1")

    async def watchdog(self) -> None:
        """Ping every `watchdog_interval` from the event loop, forever; at once if no watchdog."""
        if self.watchdog_interval is None:
            return
        while True:
            self.ping()
            await asyncio.sleep(self.watchdog_interval)

    def close(self) -> None:
        """Close the socket; later calls do nothing."""
        sock, self._socket = self._socket, None
        if sock is not None:
            sock.close()

    def _send(self, message: str) -> None:
        sock = self._socket
        if sock is None or self._address is None:
            return
        try:
            sock.sendto(message.encode("utf-8", errors="replace"), self._address)
        except OSError as exc:  # BlockingIOError (queue full), gone socket, refused, ...
            if not self._failing:
                self._failing = True
                log.debug(
                    "notify.failed",
                    socket=_printable(self._address),
                    reason=exc.strerror or type(exc).__name__,
                )
            return
        if self._failing:
            self._failing = False
            log.debug("notify.recovered", socket=_printable(self._address))


def _socket_address(text: str) -> str | bytes | None:
    """NOTIFY_SOCKET as sendto() wants it: a path, or a leading NUL for an abstract name."""
    if text.startswith("/"):
        return text
    if text.startswith("@") and len(text) > 1:
        return b"\0" + text[1:].encode()
    # vsock:... (a VM's manager, systemd >= 253) and anything else: not ours to speak
    log.debug("notify.unsupported", socket=text)
    return None


def _watchdog_usec(usec_text: str | None, pid_text: str | None) -> int | None:
    """WATCHDOG_USEC when it is meant for this process (WATCHDOG_PID absent or ours)."""
    if not usec_text:
        return None
    if pid_text and pid_text.strip() != str(os.getpid()):
        return None
    try:
        usec = int(usec_text)
    except ValueError:
        log.debug("notify.watchdog_invalid", value=usec_text)
        return None
    return usec if usec > 0 else None


def _one_line(text: str) -> str:
    """`text` on one line (control characters as spaces), scrubbed, at most STATUS_MAX chars."""
    flat = "".join(" " if ch < " " or ch == "\x7f" else ch for ch in text)
    flat = REDACTOR.scrub(flat)
    return flat if len(flat) <= STATUS_MAX else flat[: STATUS_MAX - 1] + "…"


def _printable(address: str | bytes) -> str:
    return "@" + address[1:].decode(errors="replace") if isinstance(address, bytes) else address
