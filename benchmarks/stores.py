"""smagent against the stores, side by side with what users would otherwise run.

Every store is a local server on 127.0.0.1 that waits LATENCY (20 ms) before each
answer, so that waiting, not CPU, is what concurrency must hide: moto's Secrets
Manager, the Azure Key Vault fake (HTTPS) and the Vault fake of tests/fakes/ (their
`latency` knob: a WSGI middleware for moto, an `asyncio.sleep` in the aiohttp fakes).
Each contender is a fresh process (`smagent render --once`, or a script in
benchmarks/aws_by_hand.py), so wall times include start-up; requests are counted at
the server.

  fan-out     500 distinct AWS secrets in 50 templates: smagent (defaults: 50/s, 25 in
              flight; and rate_limit 100, BatchGetSecretValue's whole quota, 25 in flight)
              against a sequential boto3 get_secret_value loop + Jinja2, and against
              aws-secretsmanager-caching's SecretCache; the bound is ceil(500/20)
              BatchGetSecretValue calls issued at once by a bare boto3 script
  rate-limit  200 Vault KV v2 reads (no batch API) with rate_limit 50: wall against the
              ideal 4 s, and the most requests the server saw in any sliding second
  three       100 secrets on each of moto, the Key Vault fake and the Vault fake in one
              pass, against each provider alone (rate_limit null: the stores' speed,
              not a configured limit, decides)

Contenders alternate (A B C A B C ...), the median of ROUNDS is quoted.
Usage: `python benchmarks/stores.py [--smoke] [--rounds N]`; prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import boto3  # type: ignore[import-untyped]  # noqa: E402

from tests.fakes.keyvault import KeyVaultFake, running_vault  # noqa: E402
from tests.fakes.moto_server import REGION, MotoFake  # noqa: E402
from tests.fakes.vault import VaultFake, running  # noqa: E402

LATENCY = 0.020
BATCH = 20
"""BatchGetSecretValue's maximum ids per call."""
TENANT = "tenant-1"
CLIENT_ID = "bench-app"
CLIENT_SECRET = "bench-client-secret"  # noqa: S105 (a fake's, on 127.0.0.1)
VAULT_TOKEN = "hvs.bench-token"  # noqa: S105 (a fake's, on 127.0.0.1)
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "bench-key-id",
    "AWS_SECRET_ACCESS_KEY": "bench-secret-key",
    "AWS_DEFAULT_REGION": REGION,
}
SMAGENT = Path(sys.executable).with_name("smagent")


@dataclass
class Row:
    scenario: str
    contender: str
    walls: list[float] = field(default_factory=list)
    calls: list[int] = field(default_factory=list)
    windows: list[float] = field(default_factory=list)
    """First request's arrival to the last answer, at the server (moto only)."""
    busiest: list[int] = field(default_factory=list)

    @property
    def wall(self) -> float:
        return statistics.median(self.walls)


@dataclass
class Verdict:
    scenario: str
    what: str
    measured: str
    target: str
    met: bool


# --- the servers --------------------------------------------------------------------------------


class TimedMoto(MotoFake):
    """MotoFake that also notes when each answer left (the server-side window of a run)."""

    def __init__(self) -> None:
        super().__init__()
        self.ends: list[float] = []

    def _middleware(self, app: Any) -> Any:
        inner = super()._middleware(app)

        def timed(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            try:
                return list(inner(environ, start_response))
            finally:
                self.ends.append(time.time())

        return timed

    def window(self) -> float:
        starts = [seen.at for seen in self.calls()]
        return max(self.ends) - min(starts) if starts and self.ends else 0.0

    def clear(self) -> None:
        self.reset_counters()
        self.ends.clear()


@contextmanager
def moto_server() -> Iterator[TimedMoto]:
    server = TimedMoto()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def busiest_second(times: list[float]) -> int:
    """The most requests that arrived within any sliding 1 s window."""
    ordered = sorted(times)
    best, low = 0, 0
    for high, at in enumerate(ordered):
        while at - ordered[low] >= 1.0:
            low += 1
        best = max(best, high - low + 1)
    return best


# --- running a contender ------------------------------------------------------------------------


def environment() -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("AWS_") and k not in ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE")
    }
    return {**env, **AWS_ENV}


def timed(command: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{command[:4]} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return wall


def smagent(config: Path) -> list[str]:
    runner = [str(SMAGENT)] if SMAGENT.exists() else [sys.executable, "-m", "smagent"]
    return [*runner, "--config", str(config), "render", "--once"]


def write_config(root: Path, providers: dict[str, Any], templates: Path, name: str) -> Path:
    """A config rendering every template of `templates` into root/out-NAME (JSON is YAML)."""
    out = root / f"out-{name}"
    entries = [
        {"source": str(t), "destination": str(out / t.name.removesuffix(".j2"))}
        for t in sorted(templates.iterdir())
    ]
    config = {
        "state_dir": str(root / f"state-{name}"),
        "providers": providers,
        "templates": entries,
    }
    path = root / f"smagent-{name}.yaml"
    path.write_text(json.dumps(config, indent=1))
    return path


def fresh(root: Path, name: str) -> None:
    """Each run is a first run: no output and no state of the previous one."""
    for sub in (f"out-{name}", f"state-{name}"):
        shutil.rmtree(root / sub, ignore_errors=True)


def write_templates(folder: Path, refs: list[str], per_template: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(0, len(refs), per_template):
        lines = [f"k{j} = {{{{ {ref} }}}}\n" for j, ref in enumerate(refs[i : i + per_template])]
        (folder / f"t{i // per_template:03d}.conf.j2").write_text("".join(lines))


def aws_provider(moto: MotoFake, **limits: Any) -> dict[str, Any]:
    return {"type": "aws", "region": REGION, "endpoint_url": moto.endpoint, **limits}


def fill_moto(moto: MotoFake, names: list[str]) -> dict[str, str]:
    """Create the secrets; their version ids."""
    client = boto3.client(
        "secretsmanager",
        endpoint_url=moto.endpoint,
        region_name=REGION,
        aws_access_key_id=AWS_ENV["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=AWS_ENV["AWS_SECRET_ACCESS_KEY"],
    )
    return {
        name: client.create_secret(Name=name, SecretString=f"value-of-{name}")["VersionId"]
        for name in names
    }


# --- scenario 2: fan-out ------------------------------------------------------------------------


def fan_out(
    root: Path, rounds: int, secrets: int, templates: int
) -> tuple[list[Row], list[Verdict]]:
    names = [f"bench/s{n:04d}" for n in range(secrets)]
    folder = root / "fan-out"
    write_templates(folder, [f'secret("aws:{n}")' for n in names], secrets // templates)
    env = environment()
    with moto_server() as moto:
        fill_moto(moto, names)
        env["AWS_ENDPOINT_URL_SECRETS_MANAGER"] = moto.endpoint
        moto.knobs.latency = LATENCY
        by_hand = str(Path(__file__).with_name("aws_by_hand.py"))
        default = write_config(root, {"aws": aws_provider(moto)}, folder, "default")
        tuned = write_config(
            root,
            {"aws": aws_provider(moto, rate_limit=100, max_concurrency=25)},
            folder,
            "tuned",
        )
        contenders: dict[str, tuple[str, list[str]]] = {
            "smagent (defaults: 50/s, 25 in flight)": ("default", smagent(default)),
            "smagent (rate_limit 100, 25 in flight)": ("tuned", smagent(tuned)),
            "boto3 get_secret_value loop + jinja2": (
                "loop",
                [sys.executable, by_hand, "loop", str(folder), str(root / "out-loop")],
            ),
            "SecretCache (aws-secretsmanager-caching) + jinja2": (
                "cache",
                [sys.executable, by_hand, "cache", str(folder), str(root / "out-cache")],
            ),
            "bound: ceil(N/20) batch calls at once (boto3 threads)": (
                "bound",
                [sys.executable, by_hand, "bound", str(folder), str(root / "out-bound"), *names],
            ),
        }
        rows = {label: Row("fan-out", label) for label in contenders}
        for _ in range(rounds):
            for label, (name, command) in contenders.items():
                fresh(root, name)
                moto.clear()
                rows[label].walls.append(timed(command, env))
                rows[label].calls.append(moto.count())
                rows[label].windows.append(moto.window())
    for name, _ in contenders.values():
        if name != "bound":
            check_outputs(root / f"out-{name}", folder, secrets)
    labels = list(rows)
    best, loop, cache, bound = rows[labels[1]], rows[labels[2]], rows[labels[3]], rows[labels[4]]
    minimum = math.ceil(secrets / BATCH)
    bound_window = statistics.median(bound.windows)
    verdicts = []
    for row in (rows[labels[0]], best):
        window = statistics.median(row.windows)
        calls = statistics.median(row.calls)
        short = row.contender.split(" (")[1].rstrip(")")
        verdicts += [
            Verdict(
                "fan-out",
                f"{short}: speed-up over the boto3 loop",
                f"{loop.wall / row.wall:.1f}x",
                ">= 20x",
                loop.wall / row.wall >= 20,
            ),
            Verdict(
                "fan-out",
                f"{short}: speed-up over the loop, at the server (start-up excluded)",
                f"{statistics.median(loop.windows) / window:.0f}x",
                "(none)",
                True,
            ),
            Verdict(
                "fan-out",
                f"{short}: server window / bound's",
                f"{window * 1000:.0f} / {bound_window * 1000:.0f} ms"
                f" = {window / bound_window:.2f}x",
                "<= 1.5x",
                window / bound_window <= 1.5,
            ),
            Verdict(
                "fan-out",
                f"{short}: wall / bound's wall",
                f"{row.wall / bound.wall:.2f}x",
                "(start-up included)",
                True,
            ),
            Verdict(
                "fan-out",
                f"{short}: API calls",
                f"{calls:g}",
                f"= {minimum}",
                calls == minimum,
            ),
        ]
    verdicts.append(
        Verdict(
            "fan-out",
            "SecretCache: speed-up of smagent (tuned)",
            f"{cache.wall / best.wall:.1f}x",
            "(none)",
            True,
        )
    )
    return list(rows.values()), verdicts


def check_outputs(out: Path, templates: Path, secrets: int) -> None:
    """Every contender rendered the same bytes: each secret's value, once."""
    text = "".join(p.read_text() for p in sorted(out.iterdir()) if not p.name.startswith("."))
    if text.count("value-of-") != secrets or len(list(out.iterdir())) != len(
        list(templates.iterdir())
    ):
        raise SystemExit(f"{out}: wrong output")


# --- scenario 3: the rate limit -----------------------------------------------------------------


def rate_limit(root: Path, rounds: int, reads: int, limit: int) -> tuple[list[Row], list[Verdict]]:
    """The same `reads` through two stores without a batch read, alternated."""
    paths = [f"bench/r{n:04d}" for n in range(reads)]
    vault_folder, aws_folder = root / "rate-vault", root / "rate-aws"
    write_templates(vault_folder, [f'secret("vault:secret/{p}", key="v")' for p in paths], 10)
    vault = VaultFake()
    vault.add_token(VAULT_TOKEN)
    for p in paths:
        vault.put_kv2(p, {"v": f"value-of-{p}"})
    token_file = root / "vault-token"
    token_file.write_text(VAULT_TOKEN)
    token_file.chmod(0o600)
    rows = {
        "vault": Row("rate-limit", f"smagent, Vault KV v2, rate_limit {limit}"),
        "aws": Row("rate-limit", f"smagent, AWS by VersionId, rate_limit {limit}"),
    }
    spans: dict[str, list[float]] = {"vault": [], "aws": []}
    with ExitStack() as stack:
        moto = stack.enter_context(moto_server())
        stack.enter_context(running(vault))
        versions = fill_moto(moto, paths)
        write_templates(
            aws_folder, [f'secret("aws:{p}", version="{versions[p]}")' for p in paths], 10
        )
        vault.latency = moto.knobs.latency = LATENCY
        vault_provider = {
            "type": "vault",
            "address": vault.url,
            "auth": {"method": "token", "token_file": str(token_file)},
            "rate_limit": limit,
        }
        configs = {
            "vault": write_config(root, {"vault": vault_provider}, vault_folder, "rate-vault"),
            "aws": write_config(
                root, {"aws": aws_provider(moto, rate_limit=limit)}, aws_folder, "rate-aws"
            ),
        }
        env = environment()
        for _ in range(rounds):
            for key, config in configs.items():
                fresh(root, f"rate-{key}")
                vault.requests.clear()
                moto.clear()
                rows[key].walls.append(timed(smagent(config), env))
                if key == "vault":
                    times = [seen.at for seen in vault.requests]
                else:
                    times = [seen.at for seen in moto.calls()]
                rows[key].calls.append(len(times))
                rows[key].busiest.append(busiest_second(times))
                spans[key].append(max(times) - min(times) + LATENCY)
    check_outputs(root / "out-rate-vault", vault_folder, reads)
    check_outputs(root / "out-rate-aws", aws_folder, reads)
    ideal = reads / limit
    verdicts = []
    for key, row in rows.items():
        store = "Vault" if key == "vault" else "AWS"
        span = statistics.median(spans[key])
        worst = max(row.busiest)
        verdicts += [
            Verdict(
                "rate-limit",
                f"{store}: wall / ideal",
                f"{row.wall:.2f} / {ideal:.2f} s = {row.wall / ideal:.2f}x",
                "<= 1.1x",
                row.wall / ideal <= 1.1,
            ),
            Verdict(
                "rate-limit",
                f"{store}: first request to last answer, at the server / ideal",
                f"{span:.2f} / {ideal:.2f} s = {span / ideal:.2f}x",
                "(start-up excluded)",
                True,
            ),
            Verdict(
                "rate-limit",
                f"{store}: most requests in any sliding 1 s (all runs)",
                f"{worst} of {statistics.median(row.calls):g}",
                f"<= {limit}",
                worst <= limit,
            ),
        ]
    return list(rows.values()), verdicts


# --- scenario 4: three providers at once --------------------------------------------------------


def three_stores(root: Path, rounds: int, each: int) -> tuple[list[Row], list[Verdict]]:
    unlimited = {"rate_limit": None}
    names = [f"bench-{n:04d}" for n in range(each)]
    token_file = root / "vault-token3"
    token_file.write_text(VAULT_TOKEN)
    secret_file = root / "kv-client-secret"
    secret_file.write_text(CLIENT_SECRET)
    for path in (token_file, secret_file):
        path.chmod(0o600)
    refs = {
        "aws": [f'secret("aws:aws/{n}")' for n in names],
        "kv": [f'secret("kv:{n}")' for n in names],
        "vault": [f'secret("vault:secret/{n}", key="v")' for n in names],
    }
    with ExitStack() as stack:
        moto = stack.enter_context(moto_server())
        fill_moto(moto, [f"aws/{n}" for n in names])
        kv: KeyVaultFake = stack.enter_context(running_vault(root, tenant=TENANT))
        kv.clients[CLIENT_ID] = CLIENT_SECRET
        for n in names:
            kv.put(n, f"value-of-{n}")
        vault = VaultFake()
        vault.add_token(VAULT_TOKEN)
        for n in names:
            vault.put_kv2(n, {"v": f"value-of-{n}"})
        stack.enter_context(running(vault))
        moto.knobs.latency = kv.latency = vault.latency = LATENCY
        providers = {
            "aws": aws_provider(moto, **unlimited),
            "kv": {
                "type": "azure",
                "vault_url": kv.url,
                "credential": "client_secret",
                "tenant_id": TENANT,
                "client_id": CLIENT_ID,
                "client_secret_file": str(secret_file),
                "authority_host": kv.url,
                "ca_cert": str(kv.ca_path),
                "verify_challenge_resource": False,
                **unlimited,
            },
            "vault": {
                "type": "vault",
                "address": vault.url,
                "auth": {"method": "token", "token_file": str(token_file)},
                **unlimited,
            },
        }
        configs: dict[str, Path] = {}
        for store in ("aws", "kv", "vault"):
            folder = root / f"three-{store}"
            write_templates(folder, refs[store], 10)
            configs[store] = write_config(root, {store: providers[store]}, folder, store)
        together = root / "three-all"
        write_templates(together, [r for store in refs.values() for r in store], 10)
        configs["all"] = write_config(root, providers, together, "all")
        labels = {
            "all": "smagent, the three stores in one pass",
            "aws": "smagent, moto alone",
            "kv": "smagent, Key Vault fake alone",
            "vault": "smagent, Vault fake alone",
        }
        rows = {key: Row("three", label) for key, label in labels.items()}
        env = environment()
        for _ in range(rounds):
            for key, config in configs.items():
                fresh(root, key)
                moto.clear()
                kv.requests.clear()
                vault.requests.clear()
                rows[key].walls.append(timed(smagent(config), env))
                rows[key].calls.append(moto.count() + len(kv.requests) + len(vault.requests))
        check_outputs(root / "out-all", together, 3 * each)
    slowest = max(rows[k].wall for k in ("aws", "kv", "vault"))
    ratio = rows["all"].wall / slowest
    return list(rows.values()), [
        Verdict(
            "three",
            "three at once / slowest alone",
            f"{rows['all'].wall:.2f} / {slowest:.2f} s = {ratio:.2f}x",
            "<= 1.3x",
            ratio <= 1.3,
        )
    ]


# --- the table ----------------------------------------------------------------------------------


def table(rows: list[Row], verdicts: list[Verdict], rounds: int) -> str:
    lines = [
        f"Stores: {platform.node() or 'host'}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}; {LATENCY * 1000:.0f} ms injected per request; "
        f"median of {rounds} alternated run(s)",
        "",
        "| scenario | contender | wall (median) | min .. max | requests at the server |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        calls = f"{statistics.median(row.calls):g}" if row.calls else ""
        lines.append(
            f"| {row.scenario} | {row.contender} | {row.wall:.3f} s | "
            f"{min(row.walls):.3f} .. {max(row.walls):.3f} | {calls} |"
        )
    lines += ["", "| scenario | measure | measured | target | met |", "|---|---|---|---|---|"]
    for v in verdicts:
        lines.append(
            f"| {v.scenario} | {v.what} | {v.measured} | {v.target} | {'yes' if v.met else 'NO'} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="one small run of each (seconds)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--only", choices=("fan-out", "rate-limit", "three"), action="append", default=None
    )
    args = parser.parse_args()
    rounds = 1 if args.smoke else args.rounds
    only = set(args.only or ("fan-out", "rate-limit", "three"))
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    rows: list[Row] = []
    verdicts: list[Verdict] = []
    with tempfile.TemporaryDirectory(prefix="smagent-bench-") as tmp:
        root = Path(tmp)
        if "fan-out" in only:
            r, v = fan_out(root, rounds, 40, 4) if args.smoke else fan_out(root, rounds, 500, 50)
            rows += r
            verdicts += v
        if "rate-limit" in only:
            r, v = (
                rate_limit(root, rounds, 20, 10)
                if args.smoke
                else rate_limit(root, rounds, 200, 50)
            )
            rows += r
            verdicts += v
        if "three" in only:
            r, v = three_stores(root, rounds, 10 if args.smoke else 100)
            rows += r
            verdicts += v
    print(table(rows, verdicts, rounds))


if __name__ == "__main__":
    main()
