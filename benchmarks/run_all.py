"""Every benchmark of `benchmarks/`, one after the other, as one markdown report.

Usage: `python benchmarks/run_all.py [--smoke]`. Each scenario script runs in
its own process (so one's imports and memory do not weigh on the next) and
prints its own markdown table; this script adds the machine it ran on and
exits non-zero only if a script crashed (a missed target is a row of the
table, not a failure). `--smoke` is the tiny run `.ci/run` uses to prove the
scripts still work.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = ("startup", "scale", "stores", "agent", "watch")
"""In this order; a script that is not there (yet) is skipped."""


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{platform.node()}: {os.cpu_count()} cores ({cpu}), Linux {platform.release()}, "
        f"Python {platform.python_version()}"
    )


def main(argv: list[str]) -> int:
    smoke = "--smoke" in argv
    print(f"# smagent benchmarks{' (smoke)' if smoke else ''}\n")
    print(f"Machine: {machine()}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n")
    crashed = []
    for name in SCRIPTS:
        script = HERE / f"{name}.py"
        if not script.exists():
            continue
        args = [sys.executable, str(script)]
        if smoke:
            args.append("--smoke")
        print(f"## {name}\n", flush=True)
        started = time.monotonic()
        code = subprocess.call(args)
        print(f"\n_{name}: {time.monotonic() - started:.1f} s, exit {code}_\n", flush=True)
        if code != 0:
            crashed.append(name)
    if crashed:
        print(f"crashed: {', '.join(crashed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
