"""What a one-shot command imports: no cloud SDK and no agent module unless it needs one."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.startup import forbidden
from tests.conftest import REPO


def imported(*args: str | Path) -> list[str]:
    """The modules `python -m smagent ARGS` imports (-X importtime), after checking it exits 0."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMAGENT_")}
    env["SMAGENT_DEMO_API_TOKEN"] = "startup-token"  # the demo's placeholder
    run = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "smagent", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=False,
    )
    assert 0 == run.returncode, run.stderr[-2000:]
    return [
        line.rsplit("|", 1)[1].strip()
        for line in run.stderr.splitlines()
        if line.startswith("import time:") and "imported package" not in line
    ]


@pytest.fixture(scope="module")
def demo_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the shipped demo (file and env providers only)."""
    root = tmp_path_factory.mktemp("demo")
    shutil.copytree(REPO / "examples", root / "examples")
    shutil.copytree(REPO / "templates", root / "templates")
    (root / "examples" / "secrets.yaml").chmod(0o600)
    return root / "examples" / "smagent.yaml"


@pytest.mark.parametrize(
    "command", [("render", "--once"), ("render", "--dry-run"), ("check",)], ids=" ".join
)
def test_one_shot_commands_import_no_sdk_and_no_agent_module(
    demo_config: Path, command: tuple[str, ...]
) -> None:
    """A file/env-only one-shot command loads no cloud SDK and nothing of the agent."""
    modules = imported("--config", demo_config, *command)
    assert "smagent.pipeline" in modules  # the probe sees the command's own imports
    assert [] == forbidden(modules)


def test_version_imports_only_the_command_line() -> None:
    """`--version` answers without the config, logging, YAML, msgspec or structlog stack."""
    modules = imported("--version")
    heavy = ("yaml", "msgspec", "structlog", "jinja2", "asyncio")
    assert [] == forbidden(modules)
    assert [] == [m for m in modules if m.split(".")[0] in heavy]
    assert ["smagent", "smagent.cli"] == sorted(m for m in modules if m.split(".")[0] == "smagent")


EXIT_PROBE = """
import atexit, sys, threading
import smagent.cli as cli

class Teardown:
    def __del__(self):
        print("teardown ran", flush=True)

cli.KEPT = Teardown()  # freed only when the interpreter tears its modules down
atexit.register(print, "exit handler ran", flush=True)
if sys.argv[1] == "thread":
    release = threading.Event()
    threading.Thread(target=release.wait, args=(0.5,)).start()  # still running at the end
sys.argv = ["smagent", *sys.argv[2:]]
cli.run()
"""


@pytest.mark.parametrize(
    ("thread", "args", "code", "teardown"),
    [
        ("none", ["check"], 0, False),
        ("none", ["--config", "missing.yaml", "check"], 2, False),
        ("thread", ["check"], 0, True),
    ],
    ids=["ok", "usage-error", "thread-still-running"],
)
def test_exit_skips_the_interpreter_teardown(
    demo_config: Path, thread: str, args: list[str], code: int, teardown: bool
) -> None:
    """`smagent` exits with main's code, its exit handlers run and its output flushed, without
    tearing the interpreter down; unless a non-daemon thread still runs (Python waits for it)."""
    if args[0] == "check":
        args = ["--config", str(demo_config), *args]
    run = subprocess.run(
        [sys.executable, "-c", EXIT_PROBE, thread, *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        cwd=demo_config.parent,
    )
    assert code == run.returncode, run.stderr[-2000:]
    assert "exit handler ran" in run.stdout
    assert teardown == ("teardown ran" in run.stdout)
    if code == 0:
        assert run.stdout.startswith("config ok: ")  # the command's own output, all of it
    else:
        assert "missing.yaml" in run.stderr


def test_a_profiler_still_gets_its_results(demo_config: Path, tmp_path: Path) -> None:
    """Under cProfile (or coverage), `smagent` exits the ordinary way: the profile is written."""
    profile = tmp_path / "smagent.prof"
    profiler = [sys.executable, "-m", "cProfile", "-o", str(profile)]
    run = subprocess.run(
        [*profiler, "-m", "smagent", "--config", str(demo_config), "check"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        cwd=demo_config.parent,
    )
    assert 0 == run.returncode, run.stderr[-2000:]
    assert profile.stat().st_size > 0
