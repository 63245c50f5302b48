"""Start-up cost of `smagent render --once`, side by side with its baselines.

Runs, interleaved in one process so machine noise hits all of them alike:

  python       `python -c pass`: the interpreter alone
  deps         importing what a render needs (jinja2 sandbox, PyYAML, structlog, msgspec)
  render-once  `smagent render --once` on the shipped demo config (6 templates, files unchanged)
  check        `smagent check` on the same config (offline)

and prints medians and the ratios that matter: how much smagent adds on top
of its own dependencies' import cost. Usage: `python benchmarks/startup.py [ROUNDS]`.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main(rounds: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        shutil.copytree(REPO / "examples", root / "examples")
        shutil.copytree(REPO / "templates", root / "templates")
        config = str(root / "examples" / "smagent.yaml")
        env = {**os.environ, "SMAGENT_DEMO_API_TOKEN": "bench-token"}
        smagent = [sys.executable, "-m", "smagent", "--config", config]
        commands = {
            "python": [sys.executable, "-c", "pass"],
            "deps": [sys.executable, "-c", "import jinja2.sandbox, yaml, structlog, msgspec"],
            "render-once": [*smagent, "--log-level", "warning", "render", "--once"],
            "check": [*smagent, "check"],
        }
        subprocess.run(commands["render-once"], env=env, check=True, capture_output=True)
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(rounds):
            for name, argv in commands.items():
                started = time.perf_counter()
                subprocess.run(argv, env=env, check=True, capture_output=True)
                times[name].append(time.perf_counter() - started)
    medians = {name: statistics.median(values) for name, values in times.items()}
    for name, value in medians.items():
        print(f"{name:12} median {value * 1000:7.1f} ms over {rounds} runs")
    print(f"render-once / python : {medians['render-once'] / medians['python']:.2f}x")
    print(f"render-once / deps   : {medians['render-once'] / medians['deps']:.2f}x")
    print(f"check / deps         : {medians['check'] / medians['deps']:.2f}x")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 15)
