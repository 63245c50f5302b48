"""What the agent's file watcher costs: latency from a write to its batch, and idle CPU.

  latency   20 of PATHS watched files, each written once (in place, or by renaming a
            new file over it, alternately); the time from the write to
            the batch that names it; median and worst
  idle      CPU time (user + system, the whole process: the watcher's thread and an
            idle event loop) over IDLE seconds while nothing changes

Each for the default step (smagent.watch.STEP_MS) and, for comparison, other steps.
Usage: `python benchmarks/watch.py [IDLE_SECONDS] [STEP_MS...]` (or `--smoke`).
"""

from __future__ import annotations

import asyncio
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from smagent.watch import STEP_MS, Watcher

PATHS = 50
WRITES = 20


async def measure(step_ms: int, idle_s: float) -> tuple[float, float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        paths = []
        for i in range(PATHS):
            path = root / f"folder{i % 5}" / f"template{i}.j2"
            path.parent.mkdir(exist_ok=True)
            path.write_text("x")
            paths.append(path)
        await asyncio.sleep(0.05)
        watcher = Watcher(paths, step_ms=step_ms)
        batches = watcher.changes().__aiter__()
        # armed once a first write is seen
        paths[-1].write_text("warm-up")
        await batches.__anext__()
        latencies = []
        for i in range(WRITES):
            target = paths[i]  # a file of its own: a late batch of the last write is no answer
            await asyncio.sleep(random.uniform(0.05, 0.3))  # writes at any phase of a step
            started = time.monotonic()
            if i % 2:
                new = target.with_name(".new")
                new.write_text(f"v{i}")
                os.rename(new, target)
            else:
                target.write_text(f"v{i}")
            while target not in await batches.__anext__():
                pass
            latencies.append(time.monotonic() - started)
        await asyncio.sleep(0.5)
        before = time.process_time()
        await asyncio.sleep(idle_s)
        cpu = time.process_time() - before
        await watcher.close()
    return statistics.median(latencies), max(latencies), cpu


def main() -> None:
    args = [a for a in sys.argv[1:] if a != "--smoke"]
    if len(args) < len(sys.argv) - 1:  # --smoke: a one-second run that proves the script works
        args = ["1", str(STEP_MS)]
    idle_s = float(args[0]) if args else 10.0
    steps = [int(s) for s in args[1:]] or [STEP_MS, 50]
    print(f"{PATHS} paths in 5 folders; {WRITES} writes; idle {idle_s:g} s")
    for step in steps:
        median, worst, cpu = asyncio.run(measure(step, idle_s))
        default = " (default)" if step == STEP_MS else ""
        print(
            f"step {step:>3} ms{default}: latency median {median * 1000:.0f} ms, "
            f"worst {worst * 1000:.0f} ms; idle CPU {cpu * 1000:.0f} ms in {idle_s:g} s "
            f"({100 * cpu / idle_s:.2f} %)"
        )


if __name__ == "__main__":
    main()
