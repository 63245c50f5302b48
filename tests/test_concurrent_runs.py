"""Two runs on the same destinations: neither removes the other's file in flight, both succeed.

Real processes throughout: `python -m smagent render --once`, or a child that
imported smagent once and calls its CLI entry point pass after pass (the same
code as the command, without paying the interpreter start-up every pass).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from smagent.writer import TEMP_MARKER
from tests.conftest import REPO, flock_held, run_cli

TEMPLATES = 12
FILLER = "a line of static text, the same in every version of the file\n"


def make_runs(root: Path, names: list[str], lines: int) -> dict[str, Path]:
    """One config per name, all writing the same destinations with the name's own value."""
    (root / "templates").mkdir(parents=True, exist_ok=True)
    for i in range(TEMPLATES):
        body = (
            "{{ secrets.db.password }}\n"
            + FILLER * lines * (i + 1)
            + "end {{ secrets.db.password }}\n"
        )
        (root / "templates" / f"t{i}.j2").write_text(body)
    configs = {}
    for name in names:
        (root / f"secrets-{name}.yaml").write_text(
            yaml.safe_dump({"db": {"password": f"v-{name}"}})
        )
        config = {
            "providers": {"local": {"type": "file", "path": f"secrets-{name}.yaml"}},
            "namespaces": {"db": {"provider": "local", "secret": "db"}},
            "templates": [
                {"source": f"templates/t{i}.j2", "destination": f"out/t{i}", "mode": "0640"}
                for i in range(TEMPLATES)
            ],
        }
        configs[name] = root / f"{name}.yaml"
        configs[name].write_text(yaml.safe_dump(config))
    return configs


def expected_contents(root: Path, names: list[str], lines: int) -> dict[int, set[bytes]]:
    """For each template index, every complete content one of the runs may leave."""
    return {
        i: {(f"v-{n}\n" + FILLER * lines * (i + 1) + f"end v-{n}\n").encode() for n in names}
        for i in range(TEMPLATES)
    }


def temp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if TEMP_MARKER in p.name)


def events(stderr: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


@contextmanager
def stopped(proc: subprocess.Popen[str]) -> Iterator[None]:
    """SIGSTOP `proc` for the block, SIGCONT after, whatever happens."""
    proc.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        proc.send_signal(signal.SIGCONT)


def test_start_up_clean_up_keeps_a_live_writers_temp_file(tmp_path: Path) -> None:
    """A run frozen mid-write keeps its temp file through another run's start-up; both exit 0."""
    lines = 4_000  # files of 0.25 to 3 MB: a temp file lives long enough to be caught
    configs = make_runs(tmp_path, ["a", "b"], lines)
    out = tmp_path / "out"
    writer = subprocess.Popen(
        [sys.executable, "-m", "smagent", "--config", str(configs["b"]), "render", "--once"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        deadline = time.monotonic() + 30
        caught: list[str] = []
        while not caught and writer.poll() is None and time.monotonic() < deadline:
            if out.is_dir() and temp_files(out):
                with stopped(writer):
                    # Caught mid-write: a temp file that exists and is locked while it is frozen.
                    caught = [name for name in temp_files(out) if flock_held(out / name)]
                    if caught:
                        other = run_cli("--config", configs["a"], "render", "--once")
            time.sleep(0.001)
        assert caught, "the writer finished before one of its temp files could be caught"
        _, stderr = writer.communicate(timeout=60)
    finally:
        writer.kill()
        writer.wait()

    assert 0 == other.returncode, other.stderr
    assert 0 == writer.returncode, stderr
    in_use = [e["path"] for e in events(other.stderr) if e["event"] == "tempfile.in_use"]
    assert [str(out / name) for name in caught] == in_use
    assert [] == [e for e in events(other.stderr) if e["event"] == "tempfile.removed"]
    assert [] == temp_files(out)
    valid = expected_contents(tmp_path, ["a", "b"], lines)
    assert [] == [i for i in range(TEMPLATES) if (out / f"t{i}").read_bytes() not in valid[i]]


_LOOPING_CHILD = """
import os, sys
from smagent.cli import main
config, passes = sys.argv[1], int(sys.argv[2])
codes = [main(["--config", config, "--log-format", "json", "render", "--once"])
         for _ in range(passes)]
print(" ".join(map(str, codes)))
"""


def test_two_processes_rendering_in_a_loop_never_fail_or_tear_a_file(tmp_path: Path) -> None:
    """Two processes passing over the same files: every pass exit 0, every read a whole file."""
    lines, passes = 100, 25
    configs = make_runs(tmp_path, ["a", "b"], lines)
    valid = expected_contents(tmp_path, ["a", "b"], lines)
    out = tmp_path / "out"
    assert 0 == run_cli("--config", configs["a"], "render", "--once").returncode
    bad_reads: list[int] = []
    reads = 0
    done = threading.Event()

    def reader() -> None:
        nonlocal reads
        while not done.is_set():
            for i in range(TEMPLATES):
                reads += 1
                if (out / f"t{i}").read_bytes() not in valid[i]:
                    bad_reads.append(i)

    watcher = threading.Thread(target=reader)
    watcher.start()
    try:
        children = [
            subprocess.Popen(
                [sys.executable, "-c", _LOOPING_CHILD, str(configs[name]), str(passes)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                cwd=REPO,
                env={**os.environ, "PYTHONPATH": str(REPO)},
            )
            for name in ("a", "b")
        ]
        results = [child.communicate(timeout=120) for child in children]
    finally:
        done.set()
        watcher.join()

    for child, (stdout, stderr) in zip(children, results, strict=True):
        assert 0 == child.returncode, stderr[-2000:]
        assert ["0"] * passes == stdout.split(), stderr[-2000:]
        logged = {e["event"] for e in events(stderr)}
        assert "tempfile.removed" not in logged
        assert "template.rendered" in logged  # the runs really rewrote each other's files
    assert [] == bad_reads
    assert reads > TEMPLATES
    assert [] == temp_files(out)
