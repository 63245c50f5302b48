"""Cold start of `smagent`, side by side with its baselines (issue 7, scenario 1).

Runs, alternated in one process (A B C ... A B C ...) so machine noise hits all alike:

  python       `python -c pass`: the interpreter alone
  deps         a bare import of what a render needs (jinja2 sandbox, PyYAML, structlog, msgspec)
  deps-exit    the same, then os._exit(0): no interpreter teardown, as `smagent` exits
               (shown for fairness; the target is against `deps`)
  version      `smagent --version`
  render-once  `smagent render --once` on the shipped demo config (6 templates, files unchanged)
  check        `smagent check` on the same config (offline)

and prints a markdown table: medians, the ratios the targets are about, met or
missed, then the modules each smagent command imports (from `python -X importtime`),
with any module of a cloud SDK or of the agent flagged: none may load on a
file/env-only one-shot command.

Wall time is what the targets are about; CPU time (user + system, from wait4) is
printed beside it because it moves far less with the load of a shared machine.
Bytecode is written and warmed first (PYTHONDONTWRITEBYTECODE is dropped): an
installed smagent runs from .pyc files, and so must the measurement.

Usage: `python benchmarks/startup.py [--smoke] [--against TREE] [ROUNDS]` (exit 0 even
when a target is missed: the table says so). `--against` runs the smagent commands of
another source tree too, alternated with these: `git archive main smagent | tar -x -C
/tmp/before` then `--against /tmp/before` gives a before/after in one run.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.util
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEPS = "import jinja2.sandbox, yaml, structlog, msgspec"
# Modules a file/env-only one-shot command must never load: cloud SDKs and the agent's own.
# The one list: tests/test_startup.py asserts it with `forbidden` below.
FORBIDDEN = (
    "aiobotocore",
    "botocore",
    "boto3",
    "azure",
    "aiohttp",
    "watchfiles",
    "smagent.agent",
    "smagent.watch",
    "smagent.cache",
    "smagent.scheduler",
    "smagent.index",
    "smagent.notify",
    "smagent.metrics",
    "smagent.health",
    "smagent.status_report",
)
# (contender, baseline, target ratio): what the issue asks for.
TARGETS: tuple[tuple[str, str, float | None], ...] = (
    ("version", "python", 3.0),
    ("render-once", "deps", 1.5),
    ("render-once", "deps-exit", None),  # no target: the same without Python's teardown
)


def imported_modules(argv: list[str], env: dict[str, str]) -> list[str]:
    """The modules `argv` (a `python ...` command line) imports, in import order.

    -X importtime also lists optional imports that failed (structlog tries rich,
    colorama, ...): a top-level name with no spec here is dropped.
    """
    run = subprocess.run(
        [argv[0], "-X", "importtime", *argv[1:]], env=env, capture_output=True, text=True
    )
    names = [
        line.rsplit("|", 1)[1].strip()
        for line in run.stderr.splitlines()
        if line.startswith("import time:") and not line.rstrip().endswith("| imported package")
    ]
    return [m for m in dict.fromkeys(names) if _installed(m.split(".")[0])]


@functools.cache
def _installed(top: str) -> bool:
    return top in sys.builtin_module_names or importlib.util.find_spec(top) is not None


def forbidden(modules: list[str]) -> list[str]:
    """The modules of `modules` that FORBIDDEN names (a package and everything under it)."""
    return [m for m in modules if any(m == f or m.startswith(f + ".") for f in FORBIDDEN)]


def demo(root: Path) -> tuple[str, dict[str, str]]:
    """A copy of the demo (config, secrets, templates) and the environment it needs."""
    shutil.copytree(REPO / "examples", root / "examples")
    shutil.copytree(REPO / "templates", root / "templates")
    (root / "examples" / "secrets.yaml").chmod(0o600)  # no file.exposed warning
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["SMAGENT_DEMO_API_TOKEN"] = "bench-token"  # noqa: S105 (the demo's placeholder)
    return str(root / "examples" / "smagent.yaml"), env


def commands(config: str) -> dict[str, list[str]]:
    smagent = [sys.executable, "-m", "smagent"]
    return {
        "python": [sys.executable, "-c", "pass"],
        "deps": [sys.executable, "-c", DEPS],
        "deps-exit": [sys.executable, "-c", f"{DEPS}; import os; os._exit(0)"],
        "version": [*smagent, "--version"],
        "render-once": [*smagent, "--config", config, "--log-level", "warning", "render", "--once"],
        "check": [*smagent, "--config", config, "check"],
    }


def run_once(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU (user + system, from wait4) seconds of one run of `argv`."""
    started = time.perf_counter()
    process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert process.stderr is not None
    stderr = process.stderr.read()
    process.stderr.close()
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise SystemExit(f"{' '.join(argv)} failed: {stderr[-1000:].decode(errors='replace')}")
    return wall, usage.ru_utime + usage.ru_stime


def measure(
    argvs: dict[str, list[str]], envs: dict[str, dict[str, str]], rounds: int
) -> dict[str, tuple[float, float]]:
    """Median wall and CPU seconds per contender, contenders alternated round by round."""
    for name, argv in argvs.items():  # writes the .pyc files and the demo's output once
        run_once(argv, envs[name])
    walls: dict[str, list[float]] = {name: [] for name in argvs}
    cpus: dict[str, list[float]] = {name: [] for name in argvs}
    for _ in range(rounds):
        for name, argv in argvs.items():
            wall, cpu = run_once(argv, envs[name])
            walls[name].append(wall)
            cpus[name].append(cpu)
    return {name: (statistics.median(walls[name]), statistics.median(cpus[name])) for name in argvs}


def report(
    medians: dict[str, tuple[float, float]], modules: dict[str, list[str]], rounds: int
) -> list[str]:
    py_wall, py_cpu = medians["python"]
    deps_wall, deps_cpu = medians["deps"]
    lines = [
        f"Cold start, median of {rounds} alternated runs (Python {sys.version.split()[0]}, "
        f"{os.cpu_count()} cores; CPU = user + system of the process, less sensitive to load)",
        "",
        "| command | wall ms | / python | / deps | CPU ms | CPU / python | CPU / deps |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, (wall, cpu) in medians.items():
        lines.append(
            f"| {name} | {wall * 1000:.1f} | {wall / py_wall:.2f}x | {wall / deps_wall:.2f}x "
            f"| {cpu * 1000:.1f} | {cpu / py_cpu:.2f}x | {cpu / deps_cpu:.2f}x |"
        )
    lines += ["", "| target (wall) | ratio | limit | | CPU ratio |", "|---|---:|---:|---|---:|"]
    for name, base, limit in TARGETS:
        ratio = medians[name][0] / medians[base][0]
        cpu_ratio = medians[name][1] / medians[base][1]
        if limit is None:
            lines.append(f"| {name} / {base} | {ratio:.2f}x | - | (no target) | {cpu_ratio:.2f}x |")
            continue
        verdict = "met" if ratio <= limit else "missed"
        lines.append(
            f"| {name} / {base} | {ratio:.2f}x | {limit:g}x | {verdict} | {cpu_ratio:.2f}x |"
        )
    lines += ["", "| command | modules | smagent modules | third-party packages | forbidden |"]
    lines += ["|---|---:|---|---|---|"]
    for name, names in modules.items():
        ours = [m.removeprefix("smagent.") for m in names if m.startswith("smagent.")]
        third = sorted({m.split(".")[0] for m in names} - STDLIB - {"smagent"})
        bad = forbidden(names)
        lines.append(
            f"| {name} | {len(names)} | {' '.join(ours) or '-'} | {' '.join(third) or '-'} "
            f"| {' '.join(bad) or 'none'} |"
        )
    return lines


STDLIB = frozenset(sys.stdlib_module_names) | {"__future__", "_distutils_hack"}
SMAGENT_COMMANDS = ("version", "render-once", "check")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("rounds", nargs="?", type=int, default=15)
    parser.add_argument("--smoke", action="store_true", help="3 rounds: proves the script works")
    parser.add_argument(
        "--against",
        metavar="TREE",
        type=Path,
        help="also run smagent's commands from another source tree (e.g. `git archive` of main "
        "unpacked there), alternated with these: a before/after in one run",
    )
    args = parser.parse_args()
    rounds = 3 if args.smoke else args.rounds
    # Run from the demo's folder: `python -m` puts the working folder first on sys.path, and
    # from a checkout it would import that checkout's smagent whatever --against says.
    with tempfile.TemporaryDirectory() as tmp, contextlib.chdir(tmp):
        config, env = demo(Path(tmp))
        argvs = commands(config)
        envs = dict.fromkeys(argvs, env)
        if args.against is not None:
            for name in SMAGENT_COMMANDS:
                argvs[f"{name} (against)"] = argvs[name]
                envs[f"{name} (against)"] = {**env, "PYTHONPATH": str(args.against.resolve())}
        medians = measure(argvs, envs, rounds)
        modules = {name: imported_modules(argvs[name], env) for name in SMAGENT_COMMANDS}
    print("\n".join(report(medians, modules, rounds)))


if __name__ == "__main__":
    main()
