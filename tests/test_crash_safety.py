"""Crash safety: SIGKILL at random instants during passes over files under churn.

Each trial changes the secrets file, so a pass rewrites every one of about
twenty files (three folders, sizes from 60 bytes to 240 KB, modes 0600 to
0644, a service owner when run as root), and kills the pass after a random
delay. Afterwards every destination must hold exactly what it held before the
trial or the complete new content, with its mode and owner; a pass that then
runs to its end leaves no temporary file behind.

A pass is the real `render --once` entry point (`smagent.cli.main`) in a
process forked from a "zygote" that imported smagent once, so a trial costs a
fork, not an interpreter start-up. The zygote kills its own child (never a
reused pid) and reports whether the kill landed or the pass had finished.

Trials: 200 by default (~20 s); `SMAGENT_CRASH_TRIALS=5000` for a long run,
`SMAGENT_CRASH_SEED` to replay one. `pytest -s` prints the figures.

That no action is lost under the same kills (every file replaced has its
action owed in `state_dir`, and the next start runs it) is the suite in
tests/test_crash_actions.py.
"""

from __future__ import annotations

import os
import random
import stat
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from smagent.writer import TEMP_MARKER
from tests.conftest import REPO, run_cli

TRIALS = int(os.environ.get("SMAGENT_CRASH_TRIALS", "200"))
SEED = int(os.environ.get("SMAGENT_CRASH_SEED", "20261123"))
FOLDERS = ("out/a", "out/b/deep", "out/c")
LINES = (1, 10, 100, 400, 1000)  # x 64 bytes
MODES = (0o600, 0o640, 0o644, 0o600)
FILLER = "static text that stays the same in every version of the file\n"


@dataclass(frozen=True)
class Spec:
    index: int
    destination: Path
    lines: int
    mode: int
    owner: tuple[int, int] | None

    def content(self, version: int) -> bytes:
        """What the template renders for `version` of the secrets (checked once against a pass)."""
        head = f"version={version} password=pw-{version}-{self.index}\n"
        return (head + FILLER * self.lines + f"end {version}\n").encode()


def service_ids() -> tuple[int, int] | None:
    if os.geteuid() != 0:
        return None
    import pwd

    entry = pwd.getpwnam("nobody")
    return entry.pw_uid, entry.pw_gid


def build(root: Path, count: int = 20) -> list[Spec]:
    ids = service_ids()
    specs = []
    templates = []
    (root / "templates").mkdir(parents=True)
    for i in range(count):
        spec = Spec(
            index=i,
            destination=root / FOLDERS[i % len(FOLDERS)] / f"file{i}.conf",
            lines=LINES[i % len(LINES)],
            mode=MODES[i % len(MODES)],
            owner=ids if i % 2 else None,
        )
        body = (
            f"version={{{{ secrets.app.version }}}} password={{{{ secrets.app.password }}}}-{i}\n"
            + FILLER * spec.lines
            + "end {{ secrets.app.version }}\n"
        )
        (root / "templates" / f"file{i}.j2").write_text(body)
        entry: dict[str, object] = {
            "source": f"templates/file{i}.j2",
            "destination": str(spec.destination),
            "mode": f"{spec.mode:04o}",
        }
        if spec.owner is not None:
            entry["owner"], entry["group"] = spec.owner
        templates.append(entry)
        specs.append(spec)
    config = {
        "providers": {"local": {"type": "file", "path": "secrets.yaml"}},
        "namespaces": {"app": {"provider": "local", "secret": "app"}},
        "templates": templates,
    }
    (root / "smagent.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return specs


def set_version(root: Path, version: int) -> None:
    """The secrets file for `version`, replaced atomically (the input is not under test)."""
    staged = root / "secrets.yaml.new"
    staged.write_text(
        yaml.safe_dump({"app": {"version": version, "password": f"pw-{version}"}}, sort_keys=True)
    )
    staged.replace(root / "secrets.yaml")


_ZYGOTE = """
import os, select, signal, sys, time
from smagent import cli, pipeline, render, writer  # imported once; every child inherits them
from smagent.providers import file  # noqa: F401
config, log = sys.argv[1], sys.argv[2]
argv = ["--config", config, "--log-format", "json", "render", "--once"]
print("ready", flush=True)
for line in sys.stdin:
    delay = float(line)
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:
        code = 70
        try:
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            code = cli.main(argv)
        finally:
            os._exit(code)
    pidfd = os.pidfd_open(pid)
    ready, _, _ = select.select([pidfd], [], [], delay)
    if not ready:
        os.kill(pid, signal.SIGKILL)  # not reaped yet: the pid cannot have been reused
    _, status = os.waitpid(pid, 0)
    os.close(pidfd)
    elapsed = time.monotonic() - started
    if os.WIFSIGNALED(status):
        print(f"killed {os.WTERMSIG(status)} {elapsed:.4f}", flush=True)
    else:
        print(f"exited {os.WEXITSTATUS(status)} {elapsed:.4f}", flush=True)
"""


@dataclass
class Zygote:
    proc: subprocess.Popen[str]

    def trial(self, delay: float) -> tuple[str, int, float]:
        """One pass, killed after `delay` seconds unless it ends first: (what, code, seconds)."""
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write(f"{delay}\n")
        self.proc.stdin.flush()
        what, code, elapsed = self.proc.stdout.readline().split()
        return what, int(code), float(elapsed)


@dataclass
class Figures:
    trials: int = 0
    kills: int = 0
    completed: int = 0
    kills_mid_write: int = 0
    kills_with_some_files_new: int = 0
    files_checked: int = 0
    failures: list[str] = field(default_factory=list)

    def enough(self, trials: int) -> bool:
        """`trials` done and the kills covered the interesting instants; else go on, up to twice
        `trials`: where a kill lands depends on the machine's load, and a run that happened to
        land too few mid-write must take more trials, not pass or fail by luck."""
        if len(self.failures) > 20 or self.trials >= 2 * trials:
            return True
        if self.trials < trials:
            return False
        return trials < 100 or (self.kills_mid_write >= trials // 20 and self.completed >= 1)


def temp_files(root: Path) -> list[Path]:
    return sorted(
        p for folder in FOLDERS for p in (root / folder).iterdir() if TEMP_MARKER in p.name
    )


def check_file(spec: Spec, allowed: tuple[bytes, ...], failures: list[str], when: str) -> bytes:
    """The destination holds one of `allowed`, whole, with the spec's mode and owner."""
    st = spec.destination.lstat()
    content = spec.destination.read_bytes()
    if content not in allowed:
        failures.append(f"{when}: {spec.destination.name}: torn or unexpected ({len(content)} B)")
    if not stat.S_ISREG(st.st_mode) or spec.mode != stat.S_IMODE(st.st_mode):
        failures.append(f"{when}: {spec.destination.name}: mode {stat.S_IMODE(st.st_mode):o}")
    if spec.owner is not None and spec.owner != (st.st_uid, st.st_gid):
        failures.append(f"{when}: {spec.destination.name}: owner {st.st_uid}:{st.st_gid}")
    return content


@pytest.mark.timeout(120 + 2 * TRIALS)  # ~0.15 s a trial, at most 2 x TRIALS; a hang still ends
def test_sigkill_at_random_instants_leaves_old_or_new_files(tmp_path: Path) -> None:
    """SIGKILL anywhere in a pass: each file is its old or new whole self; no temp file survives."""
    specs = build(tmp_path)
    rng = random.Random(SEED)
    figures = Figures()
    log = tmp_path / "child.log"
    with subprocess.Popen(
        [sys.executable, "-c", _ZYGOTE, str(tmp_path / "smagent.yaml"), str(log)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    ) as proc:
        zygote = Zygote(proc)
        assert proc.stdout is not None
        assert "ready\n" == proc.stdout.readline()
        # Calibration: whole passes, so every file exists and the content model is checked.
        durations = []
        for version in (1, 2, 3):
            set_version(tmp_path, version)
            what, code, elapsed = zygote.trial(60)
            assert ("exited", 0) == (what, code), log.read_text()[-3000:]
            durations.append(elapsed)
            for spec in specs:
                check_file(spec, (spec.content(version),), figures.failures, "calibration")
        assert [] == figures.failures
        horizon = sorted(durations)[1] * 1.1
        before = {spec: spec.destination.read_bytes() for spec in specs}
        leftovers: list[Path] = []
        started = time.monotonic()
        version = 3
        while not figures.enough(TRIALS):
            version += 1
            set_version(tmp_path, version)
            what, code, elapsed = zygote.trial(rng.uniform(0, horizon))
            figures.trials += 1
            when = f"trial {version - 3} (seed {SEED})"
            if what == "killed":
                figures.kills += 1
            elif code == 0:
                figures.completed += 1
                if leftovers:  # this pass started after them, so it must have removed them
                    still = [p for p in leftovers if p.exists()]
                    if still:
                        figures.failures.append(f"{when}: leftovers survived a start: {still}")
            else:
                figures.failures.append(f"{when}: pass exited {code}: {log.read_text()[-2000:]}")
            new_files = 0
            for spec in specs:
                new = spec.content(version)
                content = check_file(spec, (before[spec], new), figures.failures, when)
                figures.files_checked += 1
                new_files += content == new and before[spec] != new
                before[spec] = content
            leftovers = temp_files(tmp_path)
            if what == "killed":
                figures.kills_mid_write += bool(leftovers)
                figures.kills_with_some_files_new += 0 < new_files < len(specs)
            elif leftovers:
                figures.failures.append(f"{when}: a finished pass left {leftovers}")
        seconds = time.monotonic() - started
        proc.kill()

    # The next start: a real `smagent render --once` removes every leftover and writes all.
    final = run_cli("--config", tmp_path / "smagent.yaml", "render", "--once")
    assert 0 == final.returncode, final.stderr
    assert [] == temp_files(tmp_path)
    for spec in specs:
        check_file(spec, (spec.content(version),), figures.failures, "final pass")

    print(
        f"\ncrash safety: {figures.trials} trials (seed {SEED}) in {seconds:.1f}s, "
        f"{figures.kills} SIGKILLs ({figures.kills_mid_write} left a temp file, "
        f"{figures.kills_with_some_files_new} between two files), "
        f"{figures.completed} passes finished, {figures.files_checked} files checked, "
        f"{len(figures.failures)} failures"
    )
    assert [] == figures.failures
    assert TRIALS <= figures.trials <= 2 * TRIALS
    assert figures.kills >= TRIALS // 2, "most kills should land before the pass ends"
    if TRIALS >= 100:
        assert figures.kills_mid_write >= TRIALS // 20, "too few kills landed mid-write"
        assert figures.completed >= 1, "no pass ran to its end to clean up after a kill"
