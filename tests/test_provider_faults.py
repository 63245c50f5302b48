"""Faults per provider: every provider type against every kind of store fault, via `render --once`.

Each case runs the real CLI in a subprocess on a config with two providers:
`store`, the one under fault, and `other`, a healthy one of another type.
Template `a` uses `store` and has a last good file and an on_change command
that leaves a marker; template `b` uses `other`. Whatever the fault, the run:

- exits 1 (never a traceback, a crash or a hang) within `TIME_LIMIT`;
- leaves `a`'s file byte-identical and does not run `a`'s action;
- still writes `b` and runs `b`'s action;
- logs one error line for the failed reference, naming the cause, and a
  bounded number of lines in all (a state is logged once, not per retry);
- prints no secret value.

Providers are rows of `CASES`: the cloud providers join as their fakes land,
one `Harness` each. A fault a provider cannot have is listed as not
applicable, with the reason, so the table shows what is covered.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import CANARIES, CANARY, CANARY_TOKEN, Run, special_file
from tests.fakes.keyvault import Canned, KeyVaultFake
from tests.fakes.vault import VaultFake, running
from tests.leaks import allow_secrets_in, assert_no_leak

TIME_LIMIT = 4.0
"""Seconds a faulty `render --once` may take in all: fetch_timeout (1 s) plus start-up and exit
on a loaded 2-core host. A run that waited for a hung read or a parse (the defect) takes
far longer: the slow cases below take 10 s or more to finish their work."""

LAST_GOOD = "last good content\n"
MAX_LOG_LINES = 6
"""reference.failed, provider.unavailable (slow cases: the timeout), b's template.rendered
and action.ran, pass.finished: one line per state, whatever the fault."""


@dataclass
class Scene:
    """One case's workspace: the faulty store's files and the subprocess environment."""

    root: Path
    env: dict[str, str] = field(default_factory=dict)
    prefix: list[str] = field(default_factory=list)
    """A command the CLI runs under (to drop root's file-permission override)."""
    fetch_timeout: str = "1s"
    cleanups: list[Callable[[], None]] = field(default_factory=list)
    """Called after the run (a store fake to stop)."""

    @property
    def secrets(self) -> Path:
        return self.root / "store" / "secrets.yaml"


class Harness:
    """How one provider type is configured, filled with the good secret, and read healthy."""

    kind = ""
    app_id = ""

    def config(self) -> dict[str, Any]:
        raise NotImplementedError

    def plant(self, scene: Scene, good: dict[str, str]) -> None:
        raise NotImplementedError


class FileHarness(Harness):
    kind = "file"
    app_id = "app"

    def config(self) -> dict[str, Any]:
        return {"type": "file", "path": "store/secrets.yaml"}

    def plant(self, scene: Scene, good: dict[str, str]) -> None:
        scene.secrets.parent.mkdir(exist_ok=True)
        scene.secrets.write_text(yaml.safe_dump({self.app_id: good}))


class EnvHarness(Harness):
    kind = "env"
    app_id = "SMAGENT_FAULT_APP"

    def config(self) -> dict[str, Any]:
        return {"type": "env"}

    def plant(self, scene: Scene, good: dict[str, str]) -> None:
        scene.env[self.app_id] = json.dumps(good)


class AwsHarness(Harness):
    """AWS Secrets Manager: moto's server in this process (tests/fakes/moto_server.py)."""

    kind = "aws"
    app_id = "prod/app"

    def config(self) -> dict[str, Any]:
        from tests.fakes.moto_server import REGION, shared_moto

        return {"type": "aws", "region": REGION, "endpoint_url": shared_moto().endpoint}

    def plant(self, scene: Scene, good: dict[str, str]) -> None:
        import boto3

        from tests.fakes.moto_server import REGION, shared_moto

        moto = shared_moto()
        moto.reset()
        client = boto3.client(
            "secretsmanager",
            endpoint_url=moto.endpoint,
            region_name=REGION,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        client.create_secret(Name=self.app_id, SecretString=json.dumps(good))
        scene.env.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")


class VaultHarness(Harness):
    """One Vault fake for the whole session (its thread ends with the process), reset per case."""

    kind = "vault"
    app_id = "secret/data/app"
    token = "hvs.fault-harness-token"

    def __init__(self) -> None:
        self._fake: VaultFake | None = None
        self._served: AbstractContextManager[VaultFake] | None = None

    @property
    def fake(self) -> VaultFake:
        if self._fake is None:
            fake = VaultFake()
            self._served = running(fake)  # kept: collecting it would stop the server
            self._served.__enter__()  # served until the test process exits
            self._fake = fake
        return self._fake

    def config(self) -> dict[str, Any]:
        return {"type": "vault", "address": self.fake.url, "auth": {"method": "token"}}

    def plant(self, scene: Scene, good: dict[str, str]) -> None:
        self.fake.reset()
        self.fake.add_token(self.token)
        self.fake.put_kv2("app", good)
        scene.env["VAULT_TOKEN"] = self.token  # the vault CLI's variable, read when no token_file


class AzureHarness(Harness):
    """A local HTTPS Key Vault (tests/fakes/keyvault.py) read with a real client secret."""

    kind = "azure"
    app_id = "app"
    client_secret = "fault-client-secret-Qs3"

    def __init__(self) -> None:
        self.fake: KeyVaultFake | None = None

    def config(self) -> dict[str, Any]:
        assert self.fake is not None
        return {
            "type": "azure",
            "vault_url": self.fake.url,
            "credential": "client_secret",
            "tenant_id": self.fake.tenant,
            "client_id": "app-1",
            "client_secret_file": "store/client-secret",
            "authority_host": self.fake.url,
            "ca_cert": str(self.fake.ca_path),
            "verify_challenge_resource": False,
        }

    def plant(self, scene: Scene, good: dict[str, str]) -> None:
        store = scene.secrets.parent
        store.mkdir(exist_ok=True)
        (store / "client-secret").write_text(self.client_secret)
        (store / "client-secret").chmod(0o600)
        allow_secrets_in(store / "client-secret")
        self.fake = fake = KeyVaultFake(store)
        fake.clients["app-1"] = self.client_secret
        fake.start()
        scene.cleanups.append(fake.stop)
        fake.put(self.app_id, json.dumps(good))

    def vault(self) -> KeyVaultFake:
        assert self.fake is not None
        return self.fake


VAULT = VaultHarness()
AZURE = AzureHarness()
HARNESSES: dict[str, Harness] = {
    "file": FileHarness(),
    "env": EnvHarness(),
    "aws": AwsHarness(),
    "vault": VAULT,
    "azure": AZURE,
}


@dataclass(frozen=True)
class Fault:
    provider: str
    category: str
    name: str
    inject: Callable[[Scene], object]
    """Breaks the store; may return a context manager to hold during the run."""
    expect: str
    """A fragment of the failed reference's log line."""


@dataclass(frozen=True)
class NotApplicable:
    provider: str
    category: str
    reason: str


# --- the faults ----------------------------------------------------------------------------------


def set_secrets(text: str | bytes) -> Callable[[Scene], None]:
    def inject(scene: Scene) -> None:
        if isinstance(text, bytes):
            scene.secrets.write_bytes(text)
        else:
            scene.secrets.write_text(text)

    return inject


def set_app_env(value: str) -> Callable[[Scene], None]:
    def inject(scene: Scene) -> None:
        scene.env[EnvHarness.app_id] = value

    return inject


def slow_to_parse(scene: Scene) -> None:
    """A valid ~4 MiB file that libyaml needs 10 s or more to parse (nesting 990 deep)."""
    one = "[" * 990 + "]" * 990
    count = (4 * 1024 * 1024 - 1024) // (len(one) + 10)
    lines = [f"s{i:06d}: {one}\n" for i in range(count)]
    scene.secrets.write_text(f"app: {{password: {CANARY}}}\n" + "".join(lines))


def fifo(scene: Scene) -> Any:
    scene.secrets.unlink()
    return special_file(scene.secrets, "fifo")


def unreadable(scene: Scene) -> None:
    scene.secrets.chmod(0)
    if os.geteuid() == 0:  # root reads anything: run without the permission override
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: cannot drop CAP_DAC_OVERRIDE")
        scene.prefix = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--"]


@contextmanager
def moto_knobs(**knobs: Any) -> Iterator[None]:
    """moto's middleware set to misbehave for the run (reset by the next case's plant)."""
    from tests.fakes.moto_server import shared_moto

    for name, value in knobs.items():
        setattr(shared_moto().knobs, name, value)
    yield


def aws_endpoint_down(scene: Scene) -> None:
    """endpoint_url pointed at a port where nothing listens."""
    from tests.fakes.moto_server import shared_moto

    config = scene.root / "smagent.yaml"
    config.write_text(config.read_text().replace(shared_moto().endpoint, "http://127.0.0.1:9"))


def alias_bomb() -> str:
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for level in range(1, 10):
        lines.append(f"l{level}: &l{level} [{', '.join([f'*l{level - 1}'] * 9)}]")
    return "\n".join(lines) + f"\napp: {{password: {CANARY}, bomb: *l9}}\n"


def deep_json(levels: int) -> str:
    return '{"password": "x", "n":' * levels + json.dumps(CANARY) + "}" * levels


NO_WORK = "a local store has no rate limit to hit"
CASES: list[Fault | NotApplicable] = [
    # file
    Fault(
        "file",
        "outage",
        "file missing",
        lambda s: s.secrets.unlink(),
        "secrets.yaml: No such file or directory",
    ),
    Fault(
        "file",
        "outage",
        "folder missing",
        lambda s: shutil.rmtree(s.secrets.parent),
        "secrets.yaml: No such file or directory",
    ),
    Fault("file", "slow", "FIFO with no writer", fifo, "secrets.yaml is not a regular file"),
    Fault(
        "file",
        "slow",
        "14 MB file",
        set_secrets("app: " + "x" * 14_000_000 + "\n"),
        "is larger than 4 MiB (the limit for a secrets file)",
    ),
    Fault(
        "file",
        "slow",
        "parse past the deadline",
        slow_to_parse,
        "no answer within 1s (fetch_timeout)",
    ),
    Fault(
        "file",
        "malformed",
        "YAML syntax",
        set_secrets(f"app: {{password: [{CANARY}\n"),
        "is not valid YAML/JSON at line 2, column 1",
    ),
    Fault(
        "file",
        "malformed",
        "not a mapping",
        set_secrets(f"- {CANARY}\n"),
        "must hold a mapping of secret names to values",
    ),
    Fault(
        "file",
        "malformed",
        "not UTF-8",
        set_secrets(b"app: {password: \xff\xfe}\n"),
        "is not UTF-8 text (line 1)",
    ),
    Fault(
        "file",
        "malformed",
        "NUL byte",
        set_secrets(f"app: {{password: {CANARY}\x00}}\n"),
        "holds a NUL character (line 1)",
    ),
    Fault(
        "file",
        "malformed",
        "alias bomb in the secret",
        set_secrets(alias_bomb()),
        "more than 100,000 values once YAML aliases are expanded",
    ),
    Fault(
        "file",
        "malformed",
        "value YAML cannot build",
        set_secrets(f"app: {{password: {CANARY}, when: 2001-02-30}}\n"),
        "at when: a value YAML cannot read (such as an invalid date) (line 1)",
    ),
    Fault(
        "file",
        "malformed",
        "JSON text 500 deep",
        lambda s: s.secrets.write_text(yaml.safe_dump({"app": deep_json(500)})),
        "the value is JSON nested more than 100 levels deep",
    ),
    Fault("file", "credentials", "permission denied", unreadable, "Permission denied"),
    NotApplicable("file", "throttling", NO_WORK),
    # env
    Fault(
        "env",
        "outage",
        "variable not set",
        lambda s: s.env.pop(EnvHarness.app_id),
        "environment variable 'SMAGENT_FAULT_APP' is not set",
    ),
    NotApplicable("env", "slow", "reading the process environment cannot block"),
    Fault(
        "env",
        "malformed",
        "not UTF-8",
        set_app_env('{"password": "\udcff"}'),
        "the value is not valid Unicode text",
    ),
    Fault(
        "env",
        "malformed",
        "JSON 60,000 deep",  # as deep as fits in one variable (128 KiB)
        set_app_env("[" * 60_000 + "]" * 60_000),
        "the value is JSON nested more than 100 levels deep",
    ),
    Fault(
        "env",
        "malformed",
        "not JSON",
        set_app_env(CANARY),
        "is not a JSON object, so it has no key 'password'",
    ),
    NotApplicable("env", "credentials", "the process environment has no credentials"),
    NotApplicable("env", "throttling", NO_WORK),
    # aws (moto's server with the fault middleware)
    Fault("aws", "outage", "server down", aws_endpoint_down, "cannot reach http://127.0.0.1:9"),
    Fault(
        "aws",
        "slow",
        "3 s per request",
        lambda s: moto_knobs(latency=3.0),
        "no answer within 1s (fetch_timeout)",
    ),
    Fault(
        "aws",
        "malformed",
        "not JSON",
        lambda s: moto_knobs(malformed=True),
        "gave an answer that is not Secrets Manager's",
    ),
    Fault(
        "aws",
        "credentials",
        "unknown access key",
        lambda s: moto_knobs(fail={"BatchGetSecretValue": (400, "UnrecognizedClientException")}),
        "UnrecognizedClientException",
    ),
    Fault(
        "aws",
        "throttling",
        "throttling storm",
        lambda s: moto_knobs(throttle=10_000),
        "ThrottlingException: Rate exceeded",
    ),
    # vault
    Fault(
        "vault",
        "outage",
        "sealed",
        lambda s: VAULT.fake.fail_next(503, 1000, paths="secret/"),
        "vault read: HTTP 503: Vault is sealed",
    ),
    Fault(
        "vault",
        "slow",
        "answers after the deadline",
        lambda s: setattr(VAULT.fake, "latency", 5.0),
        "no answer within 1s (fetch_timeout)",
    ),
    Fault(
        "vault",
        "malformed",
        "HTML instead of JSON",
        lambda s: VAULT.fake.fail_next(
            200, 1000, message=f"<html>{CANARY}</html>", paths="secret/", html=True
        ),
        "vault read: HTTP 200: an answer that is not JSON",
    ),
    Fault(
        "vault",
        "credentials",
        "permission denied",
        lambda s: VAULT.fake.deny.add("secret/data/app"),
        "vault read: HTTP 403: 1 error occurred: * permission denied",
    ),
    Fault(
        "vault",
        "credentials",
        "token revoked",
        lambda s: VAULT.fake.tokens.clear(),
        "HTTP 403: permission denied",
    ),
    Fault(
        "vault",
        "throttling",
        "rate-limit quota",
        lambda s: VAULT.fake.fail_next(429, 1000, paths="secret/"),
        'HTTP 429: request path "secret/data/app": rate limit quota exceeded',
    ),
    # azure
    Fault(
        "azure",
        "outage",
        "vault not listening",
        lambda s: AZURE.vault().stop(),
        "Cannot connect to host 127.0.0.1",
    ),
    Fault(
        "azure",
        "slow",
        "answers after 10 s",
        lambda s: setattr(AZURE.vault(), "latency", 10.0),
        "no answer within 1s (fetch_timeout)",
    ),
    Fault(
        "azure",
        "malformed",
        "answer not JSON",
        lambda s: AZURE.vault().script.append(Canned(200, "", "", body=f"not json {CANARY}")),
        "answered with a body that is not JSON",
    ),
    Fault(
        "azure",
        "malformed",
        "answer without a value",
        lambda s: AZURE.vault().script.append(
            Canned(200, "", "", body='{"id": "https://h/secrets/app/1"}')
        ),
        "the vault answered without a value",
    ),
    Fault(
        "azure",
        "credentials",
        "client secret refused",
        lambda s: AZURE.vault().clients.update({"app-1": "another"}),
        "AADSTS7000215: Invalid client secret provided",
    ),
    Fault(
        "azure",
        "credentials",
        "no role on the vault",
        lambda s: AZURE.vault().denied.add(AzureHarness.app_id),
        "answered 403 Forbidden: Caller is not authorized",
    ),
    Fault(
        "azure",
        "throttling",
        "429 on every try",
        lambda s: AZURE.vault().fail_next(429, "Throttled", count=50, retry_after="0.05"),
        "answered 429 Throttled: Too many requests.",
    ),
]


def case_id(case: Fault | NotApplicable) -> str:
    name = case.name if isinstance(case, Fault) else "n/a"
    return f"{case.provider}-{case.category}-{name}".replace(" ", "_")


# --- the run -------------------------------------------------------------------------------------


def build(scene: Scene, harness: Harness) -> None:
    """Config, templates' last good files, the healthy provider and the good secrets."""
    root = scene.root
    if harness.kind == "file":
        other = {"type": "env"}
        other_id = "SMAGENT_FAULT_OTHER"
        scene.env[other_id] = json.dumps({"token": CANARY_TOKEN})
    else:
        other = {"type": "file", "path": "other.yaml"}
        other_id = "other"
        (root / "other.yaml").write_text(yaml.safe_dump({other_id: {"token": CANARY_TOKEN}}))
    harness.plant(scene, {"password": CANARY})

    def touch(name: str) -> list[str]:
        return [sys.executable, "-c", "import sys; open(sys.argv[1], 'a').close()", name]

    config = {
        "providers": {"store": harness.config(), "other": other},
        "namespaces": {
            "app": {"provider": "store", "secret": harness.app_id},
            "other": {"provider": "other", "secret": other_id},
        },
        "defaults": {"fetch_timeout": scene.fetch_timeout},
        "templates": [
            {
                "contents": "{{ secrets.app.password }}\n",
                "destination": "out/a",
                "on_change": [{"command": touch("ran-a")}],
            },
            {
                "contents": "{{ secrets.other.token }}\n",
                "destination": "out/b",
                "on_change": [{"command": touch("ran-b")}],
            },
        ],
    }
    (root / "smagent.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (root / "out").mkdir()
    (root / "out" / "a").write_text(LAST_GOOD)
    allow_secrets_in(root / "out" / "a", root / "out" / "b", root / "other.yaml", scene.secrets)


def render_once(scene: Scene) -> tuple[Run, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SMAGENT_", "PYTHON"))}
    env.update(scene.env)
    argv = [*scene.prefix, sys.executable, "-m", "smagent", "--log-format", "json"]
    started = time.monotonic()
    proc = subprocess.run(
        [*argv, "--config", "smagent.yaml", "render", "--once"],
        capture_output=True,
        env=env,
        cwd=scene.root,
        timeout=120,
        check=False,
    )
    elapsed = time.monotonic() - started
    out = proc.stdout.decode("utf-8", "replace")
    err = proc.stderr.decode("utf-8", "replace")
    assert_no_leak(out, "smagent's stdout")
    assert_no_leak(err, "smagent's stderr")
    return Run(proc.returncode, out, err), elapsed


@contextmanager
def injected(fault: Fault, scene: Scene) -> Iterator[None]:
    held = fault.inject(scene)
    if not isinstance(held, AbstractContextManager):  # most faults are done once injected
        yield
        return
    with held:
        yield


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_fault(tmp_path: Path, case: Fault | NotApplicable) -> None:
    """The faulty provider's file keeps its last good content, its action does not run, the
    healthy provider's file is written, exit 1 on time, one error line, no value printed."""
    if isinstance(case, NotApplicable):
        pytest.skip(f"not applicable to {case.provider}: {case.reason}")
    scene = Scene(tmp_path)
    try:
        build(scene, HARNESSES[case.provider])
        with injected(case, scene):
            result, elapsed = render_once(scene)
    finally:
        for cleanup in scene.cleanups:
            cleanup()

    logs = result.logs()
    assert 1 == result.returncode, result.stderr[-2000:]
    assert TIME_LIMIT > elapsed, f"took {elapsed:.1f}s"
    assert LAST_GOOD == (tmp_path / "out" / "a").read_text()
    assert not (tmp_path / "ran-a").exists(), "the failed template's action ran"
    assert CANARY_TOKEN + "\n" == (tmp_path / "out" / "b").read_text()
    assert (tmp_path / "ran-b").exists(), "the healthy template's action did not run"
    assert len(result.stderr.splitlines()) == len(logs), "stderr holds more than log lines"
    assert "" == result.stdout
    failed = [line for line in logs if line["level"] == "error"]
    assert 1 == len(failed), failed
    assert "a" == failed[0]["template"]
    assert case.expect in failed[0].get("detail", failed[0].get("error", ""))
    assert MAX_LOG_LINES >= len(logs), [line["event"] for line in logs]
    for canary in CANARIES:
        assert canary not in result.stderr
