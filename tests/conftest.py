"""Shared test helpers: canary secrets, config builders, and the CLI as a subprocess.

Canary values are planted as secrets in tests; `_no_canary_in_output` fails
any test whose captured stdout/stderr holds one. A test that must see a value
(`get --reveal`) reads it from a subprocess pipe, which is never printed.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import settings

# Property tests: no per-example deadline (2 shared cores are noisy); on CI, a fixed
# seed, so a red run can be reproduced and a green one is not luck.
settings.register_profile("default", deadline=None)
settings.register_profile("ci", deadline=None, derandomize=True, print_blob=True)
settings.load_profile("ci" if os.environ.get("CI") else "default")

CANARY = "canary-7Qx9-PASSWORD-do-not-print"
CANARY_USER = "canary-user-3Fk2"
CANARY_TOKEN = "canary-token-Zp81-$HOME-'q'"
CANARIES = (CANARY, CANARY_USER, CANARY_TOKEN)

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _no_canary_in_output(capfd: pytest.CaptureFixture[str]) -> Iterator[None]:
    """Whatever a test prints (or lets our code print) must hold no canary value."""
    yield
    out, err = capfd.readouterr()
    sys.stdout.write(out)
    sys.stderr.write(err)
    for canary in CANARIES:
        assert canary not in out, "a canary secret reached stdout"
        assert canary not in err, "a canary secret reached stderr"


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str

    def logs(self) -> list[dict[str, Any]]:
        """stderr parsed as JSON log lines (non-JSON lines are skipped)."""
        import json

        events = []
        for line in self.stderr.splitlines():
            if line.startswith("{"):
                events.append(json.loads(line))
        return events


def run_cli(
    *args: str | os.PathLike[str],
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    umask: int | None = None,
    timeout: float = 30,
) -> Run:
    """`python -m smagent ARGS` in a real subprocess, with its output captured, not printed."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("SMAGENT_")}
    full_env.update(env or {})
    preexec = (lambda: os.umask(umask)) if umask is not None else None
    proc = subprocess.run(
        [sys.executable, "-m", "smagent", *map(str, args)],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd,
        timeout=timeout,
        preexec_fn=preexec,
        check=False,
    )
    return Run(proc.returncode, proc.stdout, proc.stderr)


def assert_no_canary(*texts: str) -> None:
    for text in texts:
        for canary in CANARIES:
            assert canary not in text, "a canary secret leaked"


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
        return self.root / dest

    def write(self) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "secrets.yaml").write_text(yaml.safe_dump(self.secrets, sort_keys=True))
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
