"""The long-running agent (`smagent render`) against moto on 127.0.0.1: issue 7's scenarios 5-7.

  steady    200 templates reading 500 secrets, refresh 30 s, for 5 minutes: the agent's CPU
            (share of one core), RSS growth, open fds, and the API calls of each refresh
            cycle counted at moto against the minimum, ceil(500 / 20) BatchGetSecretValue
  rotation  one secret, refresh 1 s, 20 rotations (put_secret_value at a random phase of
            the cycle): time to the file replaced (target: refresh + 300 ms) and from the
            file to the SIGHUP received by a helper process (target: 50 ms); median, max
  fleet     20 secrets at 5-minute freshness: API calls per host per hour, against the AWS
            Secrets Manager Agent's model (one DescribeSecret per secret per TTL: 240/h).
            Run at a refresh 100x shorter (3 s) for 20 cycles; calls per cycle do not
            depend on the refresh, so calls/h at 5 min = calls per cycle x 12.

moto runs in this process (tests/fakes/moto_server.py) with 20 ms added to every request;
the agent is a real `python -m smagent render` subprocess with an info log level, as in
production; CPU time, RSS and fds are read from /proc/PID of the agent alone. The SIGHUP
receiver is tests/sighup_counter.py (its own process; times are CLOCK_MONOTONIC, shared
by all processes). Each scenario prints a markdown table with its target and met/missed;
the exit code is 0 whatever the figures (a missed target is a row, not a crash).

Usage: `python benchmarks/agent.py [--smoke] [steady|rotation|fleet]...` (all by default).
`--smoke` runs each scenario small and short (about 20 s in all) to prove the script works.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.agent_process import AgentProcess  # noqa: E402
from tests.fakes.moto_server import MotoFake  # noqa: E402
from tests.sighup_counter import SighupCounter  # noqa: E402

LATENCY = 0.020
"""Seconds moto waits before each answer: a network round trip to a regional endpoint."""
BATCH = 20
"""BatchGetSecretValue's maximum of ids per call."""
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "AKIABENCHMARK0000001",
    "AWS_SECRET_ACCESS_KEY": "benchmark-secret-access-key",
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": "/dev/null",
    "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
}
AWS_AGENT_TTL = 300.0
"""The AWS Secrets Manager Agent's default TTL (seconds): one DescribeSecret per secret per TTL."""


@dataclass(frozen=True)
class Row:
    measure: str
    value: str
    target: str
    met: bool | None  # None: no target, a figure for the record


def table(title: str, rows: Sequence[Row]) -> str:
    lines = [f"### {title}", "", "| measure | smagent | target | |", "|---|---|---|---|"]
    for row in rows:
        verdict = "" if row.met is None else ("met" if row.met else "**missed**")
        lines.append(f"| {row.measure} | {row.value} | {row.target} | {verdict} |")
    return "\n".join(lines) + "\n"


# --- the set-up ----------------------------------------------------------------------------------


def moto_client(moto: MotoFake) -> Any:
    import boto3  # type: ignore[import-untyped]

    return boto3.client(
        "secretsmanager",
        region_name="us-east-1",
        endpoint_url=moto.endpoint,
        aws_access_key_id=AWS_ENV["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=AWS_ENV["AWS_SECRET_ACCESS_KEY"],
    )


def write_config(
    root: Path,
    moto: MotoFake,
    refresh: str,
    templates: list[dict[str, Any]],
    secrets: int,
) -> Path:
    config = {
        "providers": {
            "aws": {
                "type": "aws",
                "region": "us-east-1",
                "endpoint_url": moto.endpoint,
                "rate_limit": 100,
                "max_concurrency": 10,
            }
        },
        "namespaces": {
            f"s{i}": {"provider": "aws", "secret": f"bench/{i}"} for i in range(secrets)
        },
        "defaults": {"refresh": refresh},
        "state_dir": str(root / "state"),
        "templates": templates,
    }
    path = root / "smagent.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def create_secrets(client: Any, count: int) -> None:
    for i in range(count):
        client.create_secret(
            Name=f"bench/{i}",
            SecretString=json.dumps({"username": f"user{i}", "password": f"pw-{i}-v0"}),
        )


def start_agent(config: Path) -> AgentProcess:
    process = AgentProcess.render(config, env=AWS_ENV, log_level="info")
    process.start()
    process.wait_for("agent.ready", timeout=120)
    return process


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def cycles_of(times: Sequence[float], gap: float) -> list[int]:
    """Requests per refresh cycle: request times grouped where they are `gap` s apart or more."""
    groups: list[int] = []
    last = -math.inf
    for at in sorted(times):
        if at - last >= gap:
            groups.append(0)
        groups[-1] += 1
        last = at
    return groups


# --- 5. steady state -----------------------------------------------------------------------------


def steady(moto: MotoFake, smoke: bool) -> str:
    n_templates, n_secrets = (20, 50) if smoke else (200, 500)
    refresh = 1.0 if smoke else 30.0
    duration = 6.0 if smoke else 300.0
    client = moto_client(moto)
    create_secrets(client, n_secrets)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        templates = []
        for t in range(n_templates):
            picks = sorted({(3 * t + k) % n_secrets for k in range(3)})
            picks += [t % n_secrets] if n_secrets > 3 * n_templates else []
            body = "".join(
                f"user{k} = {{{{ secrets.s{s}.username }}}}\n"
                f"pass{k} = {{{{ secrets.s{s}.password }}}}\n"
                for k, s in enumerate(picks)
            )
            # 10-line templates, as in the scale measurements
            body += "".join(f"# line {i}\n" for i in range(10 - 2 * len(picks)))
            templates.append({"contents": body, "destination": str(root / "out" / f"{t}.conf")})
        # every secret read by some template (3 per template, 600 references for 500 secrets)
        used = {(3 * t + k) % n_secrets for t in range(n_templates) for k in range(3)}
        assert len(used) == n_secrets, "each secret must be read by a template"
        config = write_config(root, moto, f"{int(refresh * 1000)}ms", templates, n_secrets)
        moto.reset_counters()
        process = start_agent(config)
        try:
            first_pass = moto.count()
            # warm-up: one refresh cycle, so that lazily built state (the first check) is in
            time.sleep(refresh * 1.5)
            moto.reset_counters()
            cpu0, rss0, fds0 = process.cpu_seconds(), rss_kib(process.pid), open_fds(process.pid)
            started = time.monotonic()
            rss_samples, fd_samples = [rss0], [fds0]
            while (elapsed := time.monotonic() - started) < duration:
                time.sleep(min(refresh / 10, duration - elapsed))  # in and between cycles
                rss_samples.append(rss_kib(process.pid))
                fd_samples.append(open_fds(process.pid))
            wall = time.monotonic() - started
            cpu = process.cpu_seconds() - cpu0
            calls = moto.calls()
            alive = process.alive()
        finally:
            process.kill()
    per_cycle = cycles_of([c.at for c in calls], gap=refresh / 2)
    ops = sorted({c.operation for c in calls})
    minimum = math.ceil(n_secrets / BATCH)
    cpu_share = cpu / wall
    third = max(1, len(fd_samples) // 3)
    growth_mib = (rss_samples[-1] - rss0) / 1024
    title = (
        f"Agent steady state: {n_templates} templates, {n_secrets} secrets, refresh "
        f"{refresh:g} s, {wall:.0f} s measured after one warm-up cycle (moto +20 ms/request)"
    )
    rows = [
        Row(
            "CPU, share of one core", f"{cpu_share:.2%} ({cpu:.2f} s CPU)", "< 1%", cpu_share < 0.01
        ),
        Row(
            "RSS growth (first -> last sample)",
            f"{growth_mib:+.1f} MiB ({rss0 / 1024:.0f} -> {rss_samples[-1] / 1024:.0f}, "
            f"max {max(rss_samples) / 1024:.0f} MiB)",
            "< 5 MB",
            growth_mib * 1.048576 < 5,
        ),
        Row(
            "open fds, idle (min) first / last third; max while checking",
            f"{min(fd_samples[:third])} / {min(fd_samples[-third:])}; {max(fd_samples)}",
            "flat (idle fds do not grow)",
            min(fd_samples[-third:]) <= min(fd_samples[:third]),
        ),
        Row(
            "API calls per refresh cycle (each cycle)",
            f"{per_cycle} ({', '.join(ops)})",
            f"= ceil({n_secrets}/20) = {minimum}",
            bool(per_cycle) and all(c == minimum for c in per_cycle),
        ),
        Row("API calls of the first pass", str(first_pass), f">= {minimum}", None),
        Row("agent alive at the end", str(alive), "yes", alive),
    ]
    return table(title, rows)


# --- 6. rotation latency -------------------------------------------------------------------------


def rotation(moto: MotoFake, smoke: bool) -> str:
    rotations = 3 if smoke else 20
    refresh = 1.0
    client = moto_client(moto)
    client.create_secret(Name="bench/rotating", SecretString=json.dumps({"password": "v0"}))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        with SighupCounter(root).start() as counter:
            out = root / "out" / "app.conf"
            templates = [
                {
                    "contents": "password = {{ secrets.r.password }}\n",
                    "destination": str(out),
                    "on_change": [{"signal": "HUP", "pidfile": str(counter.pidfile)}],
                }
            ]
            config = write_config(root, moto, "1s", templates, 0)
            data = yaml.safe_load(config.read_text())
            data["namespaces"] = {"r": {"provider": "aws", "secret": "bench/rotating"}}
            config.write_text(yaml.safe_dump(data, sort_keys=False))
            process = start_agent(config)
            to_file: list[float] = []
            to_signal: list[float] = []
            try:
                counter.wait_count(1, timeout=10)  # the first pass wrote the file: one SIGHUP
                for i in range(1, rotations + 1):
                    time.sleep(random.uniform(0.2, 1.2))  # any phase of the refresh cycle
                    expected = f"password = v{i}\n"
                    put = time.monotonic()
                    client.put_secret_value(
                        SecretId="bench/rotating", SecretString=json.dumps({"password": f"v{i}"})
                    )
                    written = poll(lambda e=expected: read(out) == e, 10, "the rotated file")  # type: ignore[misc]
                    counter.wait_count(i + 1, timeout=10)
                    signalled = counter.times()[-1]
                    to_file.append(written - put)
                    to_signal.append(signalled - written)
                alive = process.alive()
            finally:
                process.kill()
    limit_file = refresh + 0.3
    title = (
        f"Rotation latency: put_secret_value -> file replaced -> SIGHUP received, refresh 1 s, "
        f"{rotations} rotations at random phases (moto +20 ms/request)"
    )
    rows = [
        Row(
            "put -> file replaced, median / max",
            f"{ms(statistics.median(to_file))} / {ms(max(to_file))}",
            f"<= {ms(limit_file)}",
            max(to_file) <= limit_file,
        ),
        Row(
            "file replaced -> SIGHUP received, median / max",
            f"{ms(statistics.median(to_signal))} / {ms(max(to_signal))}",
            "<= 50 ms",
            max(to_signal) <= 0.050,
        ),
        Row(
            "put -> SIGHUP, max",
            ms(max(f + s for f, s in zip(to_file, to_signal, strict=True))),
            "",
            None,
        ),
        Row("agent alive at the end", str(alive), "yes", alive),
    ]
    return table(title, rows)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def read(path: Path) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None


def poll(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll every 2 ms; the time.monotonic() `predicate` became true."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"not within {timeout}s: {what}")
        time.sleep(0.002)
    return time.monotonic()


# --- 7. fleet cost -------------------------------------------------------------------------------


def fleet(moto: MotoFake, smoke: bool) -> str:
    n_secrets = 20
    freshness = 300.0
    refresh = 1.0 if smoke else 3.0
    n_cycles = 4 if smoke else 20
    client = moto_client(moto)
    create_secrets(client, n_secrets)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        templates = [
            {
                "contents": f"{{{{ secrets.s{i}.username }}}}:{{{{ secrets.s{i}.password }}}}\n",
                "destination": str(root / "out" / f"{i}.conf"),
            }
            for i in range(n_secrets)
        ]
        config = write_config(root, moto, f"{int(refresh * 1000)}ms", templates, n_secrets)
        moto.reset_counters()
        process = start_agent(config)
        try:
            time.sleep(refresh * 1.5)  # past the first pass and the first check
            moto.reset_counters()
            started = time.monotonic()
            time.sleep(refresh * n_cycles)
            wall = time.monotonic() - started
            calls = moto.calls()
        finally:
            process.kill()
    per_cycle = len(calls) / (wall / refresh)
    per_hour = per_cycle * 3600 / freshness
    aws_agent = n_secrets * 3600 / AWS_AGENT_TTL
    ops = sorted({c.operation for c in calls})
    title = (
        f"Fleet cost: {n_secrets} secrets at {freshness / 60:g}-minute freshness; measured over "
        f"{wall:.0f} s at refresh {refresh:g} s ({wall / refresh:.0f} cycles), "
        f"calls per hour = calls per cycle x 3600 / {freshness:g}"
    )
    rows = [
        Row("API calls measured", f"{len(calls)} ({', '.join(ops)})", "", None),
        Row("API calls per refresh cycle", f"{per_cycle:.2f}", f"ceil({n_secrets}/20) = 1", None),
        Row("API calls per host per hour", f"{per_hour:.1f}", "<= 12", per_hour <= 12.0 + 1e-9),
        Row(
            "AWS Secrets Manager Agent (1 DescribeSecret / secret / TTL 300 s)",
            f"{aws_agent:.0f} per hour ({aws_agent / max(per_hour, 1e-9):.0f}x smagent)",
            "",
            None,
        ),
    ]
    return table(title, rows)


# --- main ----------------------------------------------------------------------------------------

SCENARIOS: dict[str, Callable[[MotoFake, bool], str]] = {
    "steady": steady,
    "rotation": rotation,
    "fleet": fleet,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--smoke", action="store_true", help="tiny and short: prove it runs")
    parser.add_argument("scenarios", nargs="*", metavar="|".join(SCENARIOS), default=[])
    args = parser.parse_args(argv)
    chosen = args.scenarios or list(SCENARIOS)
    unknown = [name for name in chosen if name not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {unknown}; choose from {list(SCENARIOS)}")
    moto = MotoFake()
    moto.start()
    try:
        print(f"# smagent agent benchmarks{' (smoke)' if args.smoke else ''}\n")
        print(f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}, {time.ctime()}\n")
        for name in chosen:
            moto.reset()
            moto.knobs.latency = LATENCY
            print(SCENARIOS[name](moto, args.smoke), flush=True)
    finally:
        moto.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
