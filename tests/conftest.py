"""Shared test helpers: canary secrets, config builders, and the CLI as a subprocess.

Canary values are planted in every provider a test builds (tests/leaks.py has
the checker and the rules): `_no_leaks` fails any test whose output, log
records, failure text or files under tmp_path hold one, and `run_cli` checks
every smagent subprocess's stdout and stderr as soon as it exits.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Generator, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

import pytest
import yaml
from hypothesis import settings

from tests import agent_process, leaks
from tests.agent_process import agent, sighup_counter  # noqa: F401 (fixtures for every test)

# Property tests: no per-example deadline (2 shared cores are noisy); on CI, a fixed
# seed, so a red run can be reproduced and a green one is not luck.
settings.register_profile("default", deadline=None)
settings.register_profile("ci", deadline=None, derandomize=True, print_blob=True)
settings.load_profile("ci" if os.environ.get("CI") else "default")

CANARY = leaks.plant("canary-7Qx9-PASSWORD-do-not-print", "CANARY")
CANARY_USER = leaks.plant("canary-user-3Fk2", "CANARY_USER")
CANARY_TOKEN = leaks.plant("canary-token-Zp81-$HOME-'q'", "CANARY_TOKEN")
CANARY_FILE = leaks.plant("canary-unused-file-secret-Hw4m", "CANARY_FILE")
"""In every secrets file a `Workspace` writes, used by no template: only a slip that
dumps the whole store (a parse error quoting the file, say) can show it."""
CANARY_ENV = leaks.plant("canary-env-9Jd3=x y;z", "CANARY_ENV")
CANARY_ENV_NAME = "CANARY_ENV_SECRET"
"""Set in the environment of every test and every process it starts (env provider)."""
CANARIES = (CANARY, CANARY_USER, CANARY_TOKEN, CANARY_FILE, CANARY_ENV)

REPO = Path(__file__).resolve().parent.parent
T = TypeVar("T")


def _loopback(address: object) -> bool:
    if not isinstance(address, tuple):  # AF_UNIX paths, abstract sockets
        return True
    try:
        return ipaddress.ip_address(str(address[0]).split("%")[0]).is_loopback
    except ValueError:  # a name: resolved by the caller first, so none reaches here
        return False


class NetworkRefused(OSError):
    """A test (or our code in it) tried to reach beyond this host."""


@pytest.fixture(autouse=True, scope="session")
def _only_loopback() -> Iterator[None]:
    """No test reaches beyond 127.0.0.1: a connect from this process to any other address
    fails the call (a client built without the local endpoint would call the real cloud)."""
    original_connect = socket.socket.connect
    original_connect_ex = socket.socket.connect_ex

    def connect(self: socket.socket, address: Any) -> None:
        if not _loopback(address):
            raise NetworkRefused(f"tests stay on this host: connect to {address!r} refused")
        original_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        if not _loopback(address):
            raise NetworkRefused(f"tests stay on this host: connect to {address!r} refused")
        return original_connect_ex(self, address)

    socket.socket.connect = connect  # type: ignore[method-assign]
    socket.socket.connect_ex = connect_ex  # type: ignore[method-assign]
    yield
    socket.socket.connect = original_connect  # type: ignore[method-assign]
    socket.socket.connect_ex = original_connect_ex  # type: ignore[method-assign]


@pytest.fixture(autouse=True, scope="session")
def _state_directory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Every smagent run of the suite keeps its state folder in the session's tmp folder,
    never in /var/lib/smagent or the user's ~/.local/state (as systemd's StateDirectory=
    would set it; a config's own `state_dir` still wins)."""
    os.environ["STATE_DIRECTORY"] = str(tmp_path_factory.mktemp("state"))
    yield
    os.environ.pop("STATE_DIRECTORY", None)


@pytest.fixture(autouse=True)
def _no_leaks(
    request: pytest.FixtureRequest,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[None]:
    """No canary in what a test (or our code in it) prints, logs, raises or leaves in tmp_path."""
    leaks.start_test()
    monkeypatch.setenv(CANARY_ENV_NAME, CANARY_ENV)
    # asked for now, so it is torn down after this fixture's check, not before
    tmp_path = request.getfixturevalue("tmp_path") if "tmp_path" in request.fixturenames else None
    yield
    out, err = capfd.readouterr()
    sys.stdout.write(leaks.mask(out))  # shown in pytest's report, values masked
    sys.stderr.write(leaks.mask(err))
    found = leaks.find_leaks(out, "stdout") + leaks.find_leaks(err, "stderr")
    for record in [*caplog.get_records("setup"), *caplog.get_records("call")]:
        leaks.STATS["log records"] += 1
        text = record.getMessage() + "\n" + (record.exc_text or "")
        found += leaks.find_leaks(text, f"log record {record.name}:{record.levelname}")
    if tmp_path is not None:
        found += leaks.files_with_leaks(tmp_path)
    if found:
        pytest.fail(leaks.describe(found), pytrace=False)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failure's text (exception, assertion values, captured output) is shown masked."""
    report = yield
    if report.failed:
        report.sections.extend(agent_process.failure_sections())
    if report.when == "teardown":
        agent_process.end_of_test()
    if report.failed and leaks.find_leaks(str(report.longrepr), "failure text"):
        raised = call.excinfo.value if call.excinfo is not None else None
        by_code = raised is not None and not isinstance(
            raised, AssertionError | pytest.fail.Exception
        )
        note = "an exception raised by the code under test" if by_code else "the failure text"
        report.longrepr = f"{leaks.mask(str(report.longrepr))}\n[no-leaks] {note} held a canary"
    if report.sections:
        report.sections = [(title, leaks.mask(text)) for title, text in report.sections]
    return report


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The figures of the no-leaks suite, for README's Reliability section."""
    stats = leaks.STATS
    if stats["tests"]:
        terminalreporter.write_line(
            f"no-leaks: {stats['tests']} tests checked for {len(leaks.canaries())} canaries "
            f"in {len(leaks.TRANSFORMS)} forms; {stats['subprocess outputs']} smagent runs, "
            f"{stats['files']} files, {stats['log records']} log records looked at"
        )


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str

    def logs(self) -> list[dict[str, Any]]:
        """stderr parsed as JSON log lines, which it must hold only (and the CLI's `error:`
        lines): a stray print or a traceback fails the test instead of being skipped."""
        import json

        events = []
        for number, line in enumerate(self.stderr.splitlines(), 1):
            if line.startswith("error: "):
                continue
            try:
                events.append(json.loads(line))
            except ValueError:
                raise AssertionError(f"stderr line {number} is not a JSON log line") from None
        return events


def run_cli(
    *args: str | os.PathLike[str],
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    umask: int | None = None,
    timeout: float = 30,
) -> Run:
    """`python -m smagent ARGS` in a real subprocess, with its output captured, not printed.

    Both streams are checked for canaries before the test sees them; the one
    exception is stdout of `get --reveal`, whose whole point is the value.
    """
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("SMAGENT_")}
    full_env.update(env or {})
    preexec = (lambda: os.umask(umask)) if umask is not None else None
    argv = [str(arg) for arg in args]
    proc = subprocess.run(
        [sys.executable, "-m", "smagent", *argv],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd,
        timeout=timeout,
        preexec_fn=preexec,
        check=False,
    )
    leaks.STATS["subprocess outputs"] += 1
    reveals = "get" in argv and "--reveal" in argv
    command = leaks.mask(f"smagent {' '.join(argv)}")
    found = leaks.find_leaks(proc.stderr, f"stderr of {command}")
    if not reveals:
        found += leaks.find_leaks(proc.stdout, f"stdout of {command}")
    if found:
        raise AssertionError(leaks.describe(found))
    return Run(proc.returncode, proc.stdout, proc.stderr)


def assert_no_canary(*texts: str) -> None:
    for text in texts:
        leaks.assert_no_leak(text, "a text the test checked")


def fake_systemctl(folder: Path, status: int = 0) -> tuple[Path, Path]:
    """A `systemctl` script in folder/bin that records its arguments (one a line) and exits
    `status` (with systemd's words on stderr when not 0). Returns (bin folder, record)."""
    bin_dir = folder / "bin"
    bin_dir.mkdir()
    record = folder / "systemctl.argv"
    script = bin_dir / "systemctl"
    script.write_text(
        f"#!/bin/sh\nprintf '%s\\n' \"$@\" > '{record}'\n"
        f"[ {status} -eq 0 ] || echo 'Failed to kill unit: Unit pg.service not loaded.' >&2\n"
        f"exit {status}\n"
    )
    script.chmod(0o755)
    return bin_dir, record


def finishes_within(limit: float, call: Callable[[], T]) -> T:
    """`call()` in a worker thread; the test fails if it is still running after `limit` seconds.

    For calls that must not block (an open of a FIFO, say): without this the
    only guard would be pytest's timeout, which ends the whole run instead of
    naming the hang. With `special_file`, the blocked thread is released after.
    """
    outcome: list[tuple[bool, Any]] = []

    def target() -> None:
        try:
            outcome.append((True, call()))
        except BaseException as exc:  # handed to the test below, whatever it is
            outcome.append((False, exc))

    started = time.monotonic()
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(limit)
    elapsed = time.monotonic() - started
    assert not thread.is_alive(), f"still blocked after {elapsed:.1f}s (a hang)"
    ok, value = outcome[0]
    if not ok:
        raise value
    return cast(T, value)


@contextmanager
def special_file(path: Path, kind: str) -> Iterator[Path]:
    """A FIFO (with no writer) or a folder at `path`.

    Afterwards the FIFO's write end is opened and closed: a reader stuck on it
    (the bug under test) then gets EOF, so a failing test ends instead of
    leaving a worker thread that the event loop would wait for forever.
    """
    if kind == "folder":
        path.mkdir()
        yield path
        return
    os.mkfifo(path)
    try:
        yield path
    finally:
        with contextlib.suppress(OSError):  # ENXIO: no reader, nothing to release
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))


def flock_held(path: Path) -> bool:
    """Whether some process holds a `flock` on the file at `path` (per /proc/locks)."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return False
    inode = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    with open("/proc/locks") as locks:
        return any(line.split()[1] == "FLOCK" and inode in line.split() for line in locks)


class Workspace:
    """A config folder in tmp_path: secrets file, templates, config, output folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.out = root / "out"
        self.secrets: dict[str, Any] = {}
        self.providers: dict[str, Any] = {"local": {"type": "file", "path": "secrets.yaml"}}
        self.namespaces: dict[str, Any] = {}
        self.templates: list[dict[str, Any]] = []
        self.defaults: dict[str, Any] = {}

    @property
    def config_path(self) -> Path:
        return self.root / "smagent.yaml"

    def template(
        self, name: str, text: str, *, destination: str | None = None, **extra: Any
    ) -> Path:
        """Add a template file `name` rendered to out/<name without .j2>."""
        source = self.root / "templates" / name
        source.parent.mkdir(parents=True, exist_ok=True)
        source.write_text(text)
        dest = destination or f"out/{name.removesuffix('.j2')}"
        self.templates.append({"source": f"templates/{name}", "destination": dest, **extra})
        leaks.allow_secrets_in(self.root / dest)
        return self.root / dest

    def write(self) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        secrets = {**self.secrets, "unused-canary": CANARY_FILE}
        (self.root / "secrets.yaml").write_text(yaml.safe_dump(secrets, sort_keys=True))
        (self.root / "secrets.yaml").chmod(0o600)  # as an operator keeps it: no file.exposed
        leaks.allow_secrets_in(self.root / "secrets.yaml")
        config: dict[str, Any] = {"providers": self.providers, "namespaces": self.namespaces}
        if self.defaults:
            config["defaults"] = self.defaults
        config["templates"] = self.templates
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        return self.config_path

    def run(self, *args: str, **kwargs: Any) -> Run:
        self.write()
        return run_cli("--config", self.config_path, *args, **kwargs)


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    """A workspace with one `db` namespace holding canary credentials."""
    workspace = Workspace(tmp_path)
    workspace.secrets = {
        "prod/db": {
            "username": CANARY_USER,
            "password": CANARY,
            "host": "db.internal",
            "port": 5432,
            "nested": {"deep": {"deeper": {"value": "leaf-value-1234"}}},
        },
        "api-token": CANARY_TOKEN,
    }
    workspace.namespaces = {
        "db": {"provider": "local", "secret": "prod/db"},
        "store": {"provider": "local"},
    }
    return workspace


@pytest.fixture(scope="session")
def postgres() -> Iterator[object]:
    """One throwaway PostgreSQL server for the session (see tests/postgres.py)."""
    from tests.postgres import start_postgres

    yield from start_postgres()
