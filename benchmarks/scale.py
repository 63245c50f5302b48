"""Scale: `smagent render --once` against the minimal script (minimal.py), 100 to 10,000 templates.

Each template is 10 lines with 3 references each to 200 secrets of a `file`
provider. For each size and layout (one folder, or spread over 100 folders) it
times, alternating smagent and the minimal script in one run (A B A B ...):

  first      every destination missing: each file rendered and written
  unchanged  every destination already right: rendered, compared, not written

and prints the medians, the ratio smagent / minimal against the issue's targets
(1.3x first, 1.5x unchanged), the peak RSS of each child (target < 100 MB at
10,000 templates) and the time per template at each size (the growth curve).
The two contenders' outputs are checked byte for byte after every first run.

Usage: `python benchmarks/scale.py [--smoke] [--sizes 100,1000] [--rounds 5]
[--big-rounds 3]`: `--big-rounds` applies from 10,000 templates (a round there
takes minutes on a small machine; the table says how many were run).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
SECRETS = 200
LINES = 10
REFS_PER_LINE = 3
FOLDERS_SPREAD = 100
TARGET_FIRST = 1.3
TARGET_UNCHANGED = 1.5
TARGET_RSS_MB = 100.0
BIG = 10_000


@dataclass
class Sample:
    seconds: list[float] = field(default_factory=list)
    rss_mb: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


def _secret_name(n: int) -> str:
    return f"s{n:03d}"


def build(root: Path, count: int, spread: bool) -> tuple[list[str], list[str], Path, Path]:
    """The scenario's files under `root`: the smagent command, the minimal one, and
    the two output trees (each contender writes its own)."""
    root.mkdir(parents=True)
    secrets = root / "secrets.yaml"
    secrets.write_text(
        "".join(f"{_secret_name(n)}: 'value {n} of the scale benchmark'\n" for n in range(SECRETS))
    )
    sources = root / "templates"
    sources.mkdir()
    outputs = {"smagent": root / "out-smagent", "minimal": root / "out-minimal"}
    config_lines = [
        "providers:",
        "  local: {type: file, path: secrets.yaml}",
        "namespaces:",
        "  app: {provider: local}",
        'defaults: {mode: "0600"}',
        "state_dir: state",
        "templates:",
    ]
    jobs = []
    ref = 0
    for t in range(count):
        lines = []
        for line in range(LINES):
            refs = []
            for _ in range(REFS_PER_LINE):
                refs.append("{{ secrets.app." + _secret_name(ref % SECRETS) + " }}")
                ref += 7
            lines.append(f"key_{t}_{line} = {refs[0]}:{refs[1]}@{refs[2]}\n")
        source = sources / f"t{t:05d}.conf.j2"
        source.write_text("".join(lines))
        folder = f"d{t % FOLDERS_SPREAD:03d}/" if spread else ""
        relative = f"{folder}t{t:05d}.conf"
        config_lines.append(
            # relative, so that 10,000 fit in smagent's config limit of 1 MiB
            f"  - {{source: templates/{source.name}, destination: out-smagent/{relative}}}"
        )
        jobs.append(f"{source}\t{outputs['minimal'] / relative}\t600\n")
    config = root / "smagent.yaml"
    config.write_text("\n".join(config_lines) + "\n")
    jobs_file = root / "jobs.tsv"
    jobs_file.write_text("".join(jobs))
    smagent = [
        sys.executable, "-m", "smagent", "--config", str(config),
        "--log-level", "warning", "render", "--once",
    ]  # fmt: skip
    minimal = [sys.executable, str(HERE / "minimal.py"), str(secrets), "app", str(jobs_file)]
    return smagent, minimal, outputs["smagent"], outputs["minimal"]


def empty_tree(out: Path, count: int, spread: bool) -> None:
    """The output folders, present and empty (both contenders start alike)."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    if spread:
        for n in range(min(count, FOLDERS_SPREAD)):
            (out / f"d{n:03d}").mkdir()


def run(command: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of one child."""
    start = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert child.stderr is not None
    errors = child.stderr.read()
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - start
    child.stderr.close()
    if child.returncode != 0:
        sys.exit(f"{command[:4]} exited {child.returncode}:\n{errors.decode()[-2000:]}")
    return seconds, usage.ru_maxrss / 1024


def same_outputs(a: Path, b: Path) -> bool:
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    if files_a != files_b or not files_a:
        return False
    return all((a / p).read_bytes() == (b / p).read_bytes() for p in files_a)


def measure(tmp: Path, count: int, spread: bool, rounds: int) -> dict[tuple[str, str], Sample]:
    root = tmp / f"{count}-{'spread' if spread else 'one'}"
    smagent, minimal, out_s, out_m = build(root, count, spread)
    contenders = {"smagent": (smagent, out_s), "minimal": (minimal, out_m)}
    samples = {(who, phase): Sample() for who in contenders for phase in ("first", "unchanged")}
    for _ in range(rounds):
        for who, (command, out) in contenders.items():
            empty_tree(out, count, spread)
            seconds, rss = run(command)
            samples[who, "first"].seconds.append(seconds)
            samples[who, "first"].rss_mb.append(rss)
        if not same_outputs(out_s, out_m):
            sys.exit(f"outputs differ at {count} templates ({root})")
        for who, (command, _) in contenders.items():
            seconds, rss = run(command)
            samples[who, "unchanged"].seconds.append(seconds)
            samples[who, "unchanged"].rss_mb.append(rss)
    shutil.rmtree(root)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a tiny run (seconds), for CI")
    parser.add_argument("--sizes", default="100,1000,10000")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--big-rounds", type=int, default=3)
    parser.add_argument("--layouts", default="one,spread")
    args = parser.parse_args()
    sizes = [20] if args.smoke else [int(s) for s in args.sizes.split(",")]
    layouts = args.layouts.split(",")
    rounds_default = 1 if args.smoke else args.rounds
    print(f"Scale: smagent render --once vs benchmarks/minimal.py; {os.cpu_count()} cores, "
          f"Python {sys.version.split()[0]}; {LINES} lines x {REFS_PER_LINE} refs per template, "
          f"{SECRETS} secrets (file provider)\n")  # fmt: skip
    print(
        "| templates | folders | rounds | first: smagent / minimal (s) | ratio | target 1.3x "
        "| unchanged: smagent / minimal (s) | ratio | target 1.5x "
        "| peak RSS smagent / minimal (MB) | target < 100 MB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    curve = []
    with tempfile.TemporaryDirectory(prefix="smagent-scale-") as tmp:
        for count in sizes:
            rounds = args.big_rounds if count >= BIG and not args.smoke else rounds_default
            for layout in layouts:
                spread = layout == "spread"
                s = measure(Path(tmp), count, spread, rounds)
                first = s["smagent", "first"].median / s["minimal", "first"].median
                same = s["smagent", "unchanged"].median / s["minimal", "unchanged"].median
                rss_s = max(s["smagent", "first"].rss_mb + s["smagent", "unchanged"].rss_mb)
                rss_m = max(s["minimal", "first"].rss_mb + s["minimal", "unchanged"].rss_mb)
                rss_target = "met" if rss_s < TARGET_RSS_MB else "missed"
                if count < BIG:
                    rss_target = "-" if rss_s < TARGET_RSS_MB else "over"
                folders = min(count, FOLDERS_SPREAD) if spread else 1
                print(
                    f"| {count:,} | {folders} | {rounds} "
                    f"| {s['smagent', 'first'].median:.2f} / {s['minimal', 'first'].median:.2f} "
                    f"| {first:.2f}x | {'met' if first <= TARGET_FIRST else 'missed'} "
                    f"| {s['smagent', 'unchanged'].median:.2f} / "
                    f"{s['minimal', 'unchanged'].median:.2f} "
                    f"| {same:.2f}x | {'met' if same <= TARGET_UNCHANGED else 'missed'} "
                    f"| {rss_s:.0f} / {rss_m:.0f} | {rss_target} |",
                    flush=True,
                )
                curve.append((count, layout, s))
    print("\nGrowth per template (median time / templates, ms):\n")
    print("| templates | folders | smagent first | minimal first | smagent unchanged "
          "| minimal unchanged |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for count, layout, s in curve:
        per = [s[key].median / count * 1000 for key in (
            ("smagent", "first"), ("minimal", "first"),
            ("smagent", "unchanged"), ("minimal", "unchanged"))]  # fmt: skip
        print(f"| {count:,} | {layout} | " + " | ".join(f"{p:.2f}" for p in per) + " |")


if __name__ == "__main__":
    main()
