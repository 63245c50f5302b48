"""Arcion Replicant's secret-manager file: `{type: arcion, path: FILE}` and Replicant's flags.

Against moto (tests/fakes/moto_server.py's shared server), which also serves
STS: every request is counted at the server with the access key id that
signed it, so "two namespaces with different keys are two sessions" and "the
role was assumed with the namespace's keys" are what AWS would have seen.
The inline credentials of the Arcion files are canaries: the autouse
`_no_leaks` fixture and `run_cli` fail a test whose output, logs, errors or
files (other than the Arcion file itself) show one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml

from smagent.config import ConfigError, load_config
from smagent.config_arcion import ArcionAwsProviderConfig, ArcionAzureProviderConfig
from smagent.providers import create_provider, open_providers
from smagent.references import Namespace
from tests import leaks
from tests.conftest import CANARY, CANARY_USER, REPO, run_cli
from tests.fakes.moto_server import REGION, MotoFake, shared_moto
from tests.leaks import allow_secrets_in, assert_no_leak

KEY_A = leaks.plant("AKIAARCIONCANARYA1", "ARCION_ACCESS_KEY_A")
SECRET_A = leaks.plant("arcion-secret-key-A-Qz7w", "ARCION_SECRET_KEY_A")
KEY_B = leaks.plant("AKIAARCIONCANARYB2", "ARCION_ACCESS_KEY_B")
SECRET_B = leaks.plant("arcion-secret-key-B-Lm3e", "ARCION_SECRET_KEY_B")
CLIENT_SECRET = leaks.plant("arcion-client-secret-Vv9p", "ARCION_CLIENT_SECRET")
NUMERIC_SECRET = leaks.plant("98765432101234", "ARCION_NUMERIC_SECRET_KEY")
ENV_KEY = "env-chain-key-id"
ROLE = "arn:aws:iam::123456789012:role/replicant"

MYSQL = {"host": "db.example", "port": 3306, "username": CANARY_USER, "password": CANARY}
EXPECTED_MYSQL = (REPO / "templates" / "mysql.yaml").read_text()


@pytest.fixture(scope="session")
def moto_server() -> MotoFake:
    return shared_moto()


@pytest.fixture
def moto(moto_server: MotoFake, monkeypatch: pytest.MonkeyPatch) -> MotoFake:
    """moto (Secrets Manager and STS) with no secrets; the default chain's keys in the
    environment, and AWS_ENDPOINT_URL pointing every AWS client at moto."""
    moto_server.reset()
    for name in ("AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in aws_env(moto_server).items():
        monkeypatch.setenv(name, value)
    return moto_server


def aws_env(moto: MotoFake) -> dict[str, str]:
    return {
        "AWS_ACCESS_KEY_ID": ENV_KEY,
        "AWS_SECRET_ACCESS_KEY": "env-chain-secret",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_ENDPOINT_URL": moto.endpoint,
    }


def seed(moto: MotoFake, **secrets: dict[str, Any]) -> None:
    client = boto3.client(
        "secretsmanager",
        endpoint_url=moto.endpoint,
        region_name=REGION,
        aws_access_key_id="seed-key-id",
        aws_secret_access_key="seed-secret",
    )
    for name, value in secrets.items():
        client.create_secret(Name=name, SecretString=json.dumps(value))
    moto.reset_counters()


def arcion_file(root: Path, data: dict[str, Any], mode: int = 0o600) -> Path:
    path = root / "secret-manager.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    path.chmod(mode)
    allow_secrets_in(path)  # Replicant's file holds inline credentials by design
    return path


def smagent_config(root: Path, providers: dict[str, Any] | None = None, **extra: Any) -> Path:
    """A config rendering the seed Arcion connection file, unchanged, to out/mysql.yaml."""
    config = {
        "providers": providers or {},
        "defaults": {"fetch_timeout": "10s"},
        "templates": [
            {"source": str(REPO / "templates" / "mysql.yaml"), "destination": "out/mysql.yaml"}
        ],
        **extra,
    }
    path = root / "smagent.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    allow_secrets_in(root / "out" / "mysql.yaml", root / "out" / "other.txt")
    return path


def rendered_mysql() -> str:
    return (
        EXPECTED_MYSQL.replace("arcion-sm://mysql_src/host", "db.example")
        .replace("arcion-sm://mysql_src/port", "3306")
        .replace("arcion-sm://mysql_src/username", CANARY_USER)
        .replace("arcion-sm://mysql_src/password", CANARY)
    )


def signed_by(moto: MotoFake, key: str, operation: str | None = None) -> int:
    """Requests the server saw signed with `key` (a count: a key may be a canary)."""
    return sum(1 for seen in moto.calls(operation) if seen.access_key == key)


def render_once(config: Path, *args: str, env: dict[str, str], level: str = "info") -> Any:
    return run_cli(
        "--log-format", "json", "--log-level", level, "--config", config, "render", "--once",
        *args, env=env,
    )  # fmt: skip


# --- AWS namespaces ----------------------------------------------------------------------------


def test_mysql_yaml_from_aws_namespaces(tmp_path: Path, moto: MotoFake) -> None:
    """The seed Arcion connection file renders unchanged from an Arcion AWS file: each key of
    the secret's JSON in place, `port` still a number."""
    seed(moto, mysql_src=MYSQL)
    sm = arcion_file(
        tmp_path,
        {
            "type": "AWS",
            "use-password-rotation": True,
            "cache-refresh-max-retries": 3,
            "namespaces": {"mysql_src": {"region": REGION}},
        },
    )
    config = smagent_config(tmp_path, {"arcion": {"type": "arcion", "path": sm.name}})

    result = render_once(config, env=aws_env(moto))

    assert 0 == result.returncode, result.stderr[-2000:]
    written = (tmp_path / "out" / "mysql.yaml").read_text()
    assert rendered_mysql() == written
    assert 3306 == yaml.safe_load(written)["port"]
    assert 1 == signed_by(moto, ENV_KEY, "BatchGetSecretValue")  # region only: default chain


def two_namespace_file(root: Path, second_key: str, second_secret: str) -> Path:
    return arcion_file(
        root,
        {
            "type": "AWS",
            "namespaces": {
                "mysql_src": {"region": REGION, "access-key": KEY_A, "secret-key": SECRET_A},
                "other": {"region": REGION, "access-key": second_key, "secret-key": second_secret},
            },
        },
    )


def other_template(config: Path) -> None:
    data = yaml.safe_load(config.read_text())
    data["templates"].append(
        {"contents": "{{ secrets.other.password }}\n", "destination": "out/other.txt"}
    )
    config.write_text(yaml.safe_dump(data, sort_keys=False))


def test_each_credential_set_is_its_own_session(tmp_path: Path, moto: MotoFake) -> None:
    """Two namespaces with different access keys: two providers, each signing its own
    requests with its own keys (counted at the server); never the environment's."""
    seed(moto, mysql_src=MYSQL, other={"password": CANARY})
    config = smagent_config(
        tmp_path,
        {"arc": {"type": "arcion", "path": two_namespace_file(tmp_path, KEY_B, SECRET_B).name}},
    )
    other_template(config)

    assert ("arc.mysql_src", "arc.other") == load_config(config).groups["arc"]
    result = render_once(config, env=aws_env(moto))

    assert 0 == result.returncode, result.stderr[-2000:]
    assert rendered_mysql() == (tmp_path / "out" / "mysql.yaml").read_text()
    assert f"{CANARY}\n" == (tmp_path / "out" / "other.txt").read_text()
    assert 1 == signed_by(moto, KEY_A)
    assert 1 == signed_by(moto, KEY_B)
    assert 0 == signed_by(moto, ENV_KEY)


def test_identical_credentials_share_one_session(tmp_path: Path, moto: MotoFake) -> None:
    """Two namespaces with the same keys and region: one provider, one batch call for both."""
    seed(moto, mysql_src=MYSQL, other={"password": CANARY})
    config = smagent_config(
        tmp_path,
        {"arc": {"type": "arcion", "path": two_namespace_file(tmp_path, KEY_A, SECRET_A).name}},
    )
    other_template(config)

    loaded = load_config(config)
    assert ("arc.mysql_src",) == loaded.groups["arc"]
    assert Namespace("other", "arc.mysql_src", "other") == loaded.namespaces["other"]
    result = render_once(config, env=aws_env(moto))

    assert 0 == result.returncode, result.stderr[-2000:]
    assert {"BatchGetSecretValue": 1} == moto.by_operation()
    assert 1 == signed_by(moto, KEY_A)


def test_role_assumed_with_the_namespace_keys(tmp_path: Path, moto: MotoFake) -> None:
    """access-key + secret-key + role-arn + session-name: STS AssumeRole signed with the
    namespace's keys, then Secrets Manager read with the role's temporary keys."""
    seed(moto, mysql_src=MYSQL)
    ns = {
        "region": REGION,
        "access-key": KEY_A,
        "secret-key": SECRET_A,
        "role-arn": ROLE,
        "session-name": "replicant",
    }
    sm = arcion_file(tmp_path, {"type": "AWS", "namespaces": {"mysql_src": ns}})
    config = smagent_config(tmp_path, {"arc": {"type": "arcion", "path": sm.name}})

    result = render_once(config, env=aws_env(moto), level="debug")  # no key in debug logs either

    assert 0 == result.returncode, result.stderr[-2000:]
    assert rendered_mysql() == (tmp_path / "out" / "mysql.yaml").read_text()
    assert 1 == signed_by(moto, KEY_A, "AssumeRole")
    assert 0 == signed_by(moto, KEY_A, "BatchGetSecretValue")
    (read,) = moto.calls("BatchGetSecretValue")
    assert read.access_key.startswith("ASIA")  # STS's temporary credentials


async def test_role_assumed_with_the_default_chain(tmp_path: Path, moto: MotoFake) -> None:
    """role-arn + session-name + region: the role is assumed with the default chain's keys, once
    for many reads (the credentials are kept until they near expiry)."""
    seed(moto, mysql_src=MYSQL)
    ns = {"region": REGION, "role-arn": ROLE, "session-name": "replicant"}
    sm = arcion_file(tmp_path, {"type": "AWS", "namespaces": {"mysql_src": ns}})
    config = load_config(smagent_config(tmp_path, {"arc": {"type": "arcion", "path": sm.name}}))

    from smagent.resolver import Resolver

    async with open_providers(config.providers) as providers:
        for _ in range(3):
            ref = config.namespaces["mysql_src"].lookup(("password",)).ref
            found = (await Resolver(providers, 10).resolve([ref]))[ref]
            assert "SecretValue" == type(found).__name__, found

    assert 1 == signed_by(moto, ENV_KEY, "AssumeRole")
    assert 3 == len(moto.calls("BatchGetSecretValue"))
    assert 0 == signed_by(moto, ENV_KEY, "BatchGetSecretValue")


def test_refused_assume_role_fails_the_references(tmp_path: Path, moto: MotoFake) -> None:
    """STS refusing the role fails the template with exit 1, naming the reference and STS's
    words, no traceback; nothing written."""
    seed(moto, mysql_src=MYSQL)
    ns = {"region": REGION, "role-arn": ROLE, "access-key": KEY_A, "secret-key": SECRET_A}
    sm = arcion_file(tmp_path, {"type": "AWS", "namespaces": {"mysql_src": ns}})
    config = smagent_config(tmp_path, {"arc": {"type": "arcion", "path": sm.name}})
    moto.knobs.fail = {"AssumeRole": (403, "AccessDenied")}

    result = render_once(config, env=aws_env(moto), level="debug")

    assert 1 == result.returncode
    failed = [e for e in result.logs() if e["event"] == "reference.failed"]  # JSON lines only:
    assert failed  # the SDK's own traceback of the refused refresh is not printed
    for event in failed:
        assert event["reference"].startswith("arc.mysql_src:mysql_src key ")
        assert ("access denied", "AccessDenied: injected AccessDenied") == (
            event["error"],
            event["detail"],
        )
    assert not (tmp_path / "out" / "mysql.yaml").exists()


# --- Replicant's flags -------------------------------------------------------------------------


def test_replicant_flags_end_to_end(tmp_path: Path, moto: MotoFake) -> None:
    """`render --once --use-sm-provider AWS --secret-manager FILE` as Replicant takes them (the
    file relative to the current folder); `check` and `--dry-run` honour them too."""
    seed(moto, mysql_src=MYSQL)
    arcion_file(
        tmp_path,
        {"type": "AWS", "namespaces": {"mysql_src": {"access-key": KEY_A, "secret-key": SECRET_A}}},
    )
    config = smagent_config(tmp_path)
    flags = ("--use-sm-provider", "aws", "--secret-manager", "secret-manager.yaml")
    env = aws_env(moto)

    check = run_cli("--config", config, "check", "--connect", *flags, env=env, cwd=tmp_path)
    dry = run_cli("--config", config, "render", "--dry-run", *flags, env=env, cwd=tmp_path)
    once = run_cli("--config", config, "render", "--once", *flags, env=env, cwd=tmp_path)

    assert 0 == check.returncode, check.stderr[-2000:]
    assert "arcion-sm.mysql_src:mysql_src key password  ok" in check.stdout
    assert 0 == dry.returncode, dry.stderr[-2000:]
    assert "would change" in dry.stdout
    assert 0 == once.returncode, once.stderr[-2000:]
    assert rendered_mysql() == (tmp_path / "out" / "mysql.yaml").read_text()
    assert 3 == signed_by(moto, KEY_A, "BatchGetSecretValue")


def test_use_sm_provider_aws_without_a_file(tmp_path: Path, moto: MotoFake) -> None:
    """`--use-sm-provider AWS` alone, as Replicant: each token's NS is the secret of that name,
    read with the default chain; a namespace that is no secret fails naming it (exit 1)."""
    seed(moto, mysql_src=MYSQL)
    config = smagent_config(tmp_path)
    other_template(config)

    result = render_once(config, "--use-sm-provider", "AWS", env=aws_env(moto))

    assert 1 == result.returncode
    assert rendered_mysql() == (tmp_path / "out" / "mysql.yaml").read_text()
    (failed,) = {e["reference"] for e in result.logs() if e["event"] == "reference.failed"}
    assert "arcion-sm:other key password" == failed
    assert 1 == signed_by(moto, ENV_KEY, "BatchGetSecretValue")  # both secrets, one call


def test_use_sm_provider_azure_needs_a_file(tmp_path: Path) -> None:
    """`--use-sm-provider AZURE` without a file: exit 2, saying what to add."""
    result = run_cli("--config", smagent_config(tmp_path), "check", "--use-sm-provider", "AZURE")

    assert 2 == result.returncode
    assert "error: --use-sm-provider: AZURE needs --secret-manager FILE" in result.stderr


def test_use_sm_provider_none(tmp_path: Path, moto: MotoFake) -> None:
    """NONE: no secret manager, so a token fails clearly (exit 1, the namespace named);
    NONE with a --secret-manager file is a usage error (exit 2)."""
    config = smagent_config(tmp_path)
    sm = arcion_file(tmp_path, {"type": "AWS", "namespaces": {"mysql_src": {}}})

    none = render_once(config, "--use-sm-provider", "NONE", env=aws_env(moto))
    both = render_once(
        config, "--use-sm-provider", "NONE", "--secret-manager", str(sm), env=aws_env(moto)
    )

    assert 1 == none.returncode
    assert "unknown namespace 'mysql_src'" in none.stderr
    assert 2 == both.returncode
    assert "error: --secret-manager: --use-sm-provider NONE uses no secret manager" in both.stderr


def test_flag_and_file_type_must_agree(tmp_path: Path, moto: MotoFake) -> None:
    """`--use-sm-provider AZURE` with a `type: AWS` file: exit 2 naming the file and `type`."""
    config = smagent_config(tmp_path)
    sm = arcion_file(tmp_path, {"type": "AWS", "namespaces": {"mysql_src": {}}})

    result = render_once(
        config, "--use-sm-provider", "AZURE", "--secret-manager", str(sm), env=aws_env(moto)
    )

    assert 2 == result.returncode
    assert f"error: {sm}: type: this file is for AWS, but --use-sm-provider says AZURE" in (
        result.stderr
    )
    assert not (tmp_path / "out").exists()


def test_test_connection_by_the_arcion_name(tmp_path: Path, moto: MotoFake) -> None:
    """`test-connection ARC` tests every provider the Arcion file became."""
    config = smagent_config(
        tmp_path,
        {"arc": {"type": "arcion", "path": two_namespace_file(tmp_path, KEY_B, SECRET_B).name}},
    )

    result = run_cli("--config", config, "test-connection", "arc", env=aws_env(moto))

    assert 0 == result.returncode, result.stdout + result.stderr
    assert "arc.mysql_src (arcion-aws): ok\narc.other (arcion-aws): ok\n" == result.stdout


# --- the file's errors -------------------------------------------------------------------------


def config_issues(config: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    return [str(issue) for issue in caught.value.issues]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            {"type": "AWS", "namespace": {}},
            "{sm}: namespace: unknown key (allowed: cache-refresh-max-retries, namespaces, "
            "type, use-password-rotation)",
        ),
        (
            {"type": "AWS", "namespaces": {"db": {"region": REGION, "rol-arn": ROLE}}},
            "{sm}: namespaces.db.rol-arn: unknown key (allowed: access-key, client-id, "
            "client-secret, region, role-arn, secret-key, session-name, tenant-id)",
        ),
        ({"type": "GCP"}, "{sm}: type: expected AWS or AZURE, got 'GCP'"),
        ({"namespaces": {}}, "{sm}: type: required key is missing"),
        (
            {"type": "AWS", "namespaces": {"db": {"access-key": KEY_A}}},
            "{sm}: namespaces.db.secret-key: access-key and secret-key go together",
        ),
        (
            {
                "type": "AWS",
                "namespaces": {"db": {"access-key": KEY_A, "secret-key": 98765432101234}},
            },
            "{sm}: namespaces.db.secret-key: expected a string or null (the value is not shown: "
            "it is a credential)",
        ),
        (
            {"type": "AWS", "namespaces": {"db": {"access-key": f"{KEY_A}\n", "secret-key": "x"}}},
            "{sm}: namespaces.db.access-key: expected the IAM user's key, on one line",
        ),
        (
            {"type": "AWS", "namespaces": {"db": {"session-name": "s"}}},
            "{sm}: namespaces.db.session-name: only used with role-arn",
        ),
        (
            {"type": "AWS", "namespaces": {"db": {"client-secret": CLIENT_SECRET}}},
            "{sm}: namespaces.db.client-secret: not a field of a type: AWS file's namespace",
        ),
        (
            {"type": "AZURE", "namespaces": {"kv1": {"tenant-id": "t"}}},
            "{sm}: namespaces.kv1.client-id: required with tenant-id",
        ),
        (
            {"type": "AZURE", "namespaces": {"kv1": {"region": REGION}}},
            "{sm}: namespaces.kv1.region: not a field of a type: AZURE file's namespace",
        ),
        (
            {"type": "AWS", "use-password-rotation": "yes"},
            "{sm}: use-password-rotation: expected true or false, got 'yes'",
        ),
        (
            {"type": "AWS", "cache-refresh-max-retries": -1},
            "{sm}: cache-refresh-max-retries: expected a whole number from 0",
        ),
    ],
)
def test_file_errors_name_the_file_and_key(
    tmp_path: Path, data: dict[str, Any], expected: str
) -> None:
    """Every problem of the Arcion file names that file and the key path inside it (exit 2)."""
    sm = arcion_file(tmp_path, data)
    config = smagent_config(tmp_path, {"arc": {"type": "arcion", "path": sm.name}})

    issues = config_issues(config)
    assert expected.format(sm=sm) in issues
    assert_no_leak("\n".join(issues), "config errors")


def test_cli_file_error_exits_2(tmp_path: Path) -> None:
    """An unknown field through the CLI: exit 2, `error: FILE: KEY: ...`, nothing written."""
    sm = arcion_file(tmp_path, {"type": "AWS", "namespaces": {"mysql_src": {"regoin": "x"}}})
    config = smagent_config(tmp_path)

    result = run_cli("--config", config, "render", "--once", "--secret-manager", sm)

    assert 2 == result.returncode
    assert f"error: {sm}: namespaces.mysql_src.regoin: unknown key" in result.stderr
    assert not (tmp_path / "out").exists()


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    """An arcion provider whose file does not exist: the file named, exit 2."""
    config = smagent_config(tmp_path, {"arc": {"type": "arcion", "path": "nope.yaml"}})

    assert [f"{tmp_path / 'nope.yaml'}: config file not found"] == config_issues(config)


def test_namespace_clash_names_both(tmp_path: Path) -> None:
    """A namespace in both the config and the Arcion file is an error naming both places."""
    sm = arcion_file(tmp_path, {"type": "AWS", "namespaces": {"mysql_src": {}}})
    config = smagent_config(
        tmp_path,
        {"arc": {"type": "arcion", "path": sm.name}, "env": {"type": "env"}},
        namespaces={"mysql_src": {"provider": "env"}},
    )

    assert [
        f"{sm}: namespaces.mysql_src: namespace 'mysql_src' is also declared in "
        f"{config}: namespaces.mysql_src; rename or remove one of them"
    ] == config_issues(config)


def test_config_namespace_on_an_arcion_provider(tmp_path: Path) -> None:
    """A config namespace cannot point at an arcion provider (its file's namespaces are the
    namespaces): a config error, not a silent skip."""
    sm = arcion_file(tmp_path, {"type": "AWS", "namespaces": {"mysql_src": {}}})
    config = smagent_config(
        tmp_path,
        {"arc": {"type": "arcion", "path": sm.name}},
        namespaces={"db": {"provider": "arc", "secret": "x"}},
    )

    (issue,) = config_issues(config)
    assert issue.startswith(f"{config}: namespaces.db.provider: 'arc' is an arcion provider")


def test_destination_over_the_arcion_file_refused(tmp_path: Path) -> None:
    """A template may not write over the Arcion file smagent reads."""
    sm = arcion_file(tmp_path, {"type": "AWS", "namespaces": {"mysql_src": {}}})
    config = smagent_config(tmp_path, {"arc": {"type": "arcion", "path": sm.name}})
    data = yaml.safe_load(config.read_text())
    data["templates"][0]["destination"] = sm.name
    config.write_text(yaml.safe_dump(data))

    (issue,) = config_issues(config)
    assert "the Arcion secret-manager file of providers.arc; writing it would replace it" in issue


# --- exposure and canaries ---------------------------------------------------------------------


def exposed(result: Any) -> list[dict[str, Any]]:
    return [e for e in result.logs() if e["event"] == "file.exposed"]


def test_inline_credentials_readable_by_others_warned(tmp_path: Path) -> None:
    """A 0644 Arcion file with inline keys: one `file.exposed` warning naming it (never its
    content); the same file without inline credentials is not a secret: no warning."""
    ns = {"region": REGION, "access-key": KEY_A, "secret-key": SECRET_A}
    sm = arcion_file(tmp_path, {"type": "AWS", "namespaces": {"mysql_src": ns}}, mode=0o644)
    config = smagent_config(tmp_path, {"arc": {"type": "arcion", "path": sm.name}})

    with_keys = run_cli("--log-format", "json", "--config", config, "check")
    arcion_file(tmp_path, {"type": "AWS", "namespaces": {"mysql_src": {}}}, mode=0o644)
    without = run_cli("--log-format", "json", "--config", config, "check")

    assert 0 == with_keys.returncode, with_keys.stderr
    (warning,) = exposed(with_keys)
    assert str(sm) == warning["path"]
    assert "Arcion secret-manager file" == warning["role"]
    assert "readable by every user" in warning["problem"]
    assert [] == exposed(without)


def test_repr_holds_no_inline_credential(tmp_path: Path) -> None:
    """The derived provider configs and providers (aws and azure) print `<redacted>` or
    nothing for inline keys and client secrets."""
    data = {
        "type": "AWS",
        "namespaces": {
            "mysql_src": {
                "region": REGION,
                "access-key": KEY_A,
                "secret-key": SECRET_A,
                "role-arn": ROLE,
            }
        },
    }
    sm = arcion_file(tmp_path, data)
    config = load_config(smagent_config(tmp_path, {"arc": {"type": "arcion", "path": sm.name}}))
    aws = config.providers["arc.mysql_src"]
    assert isinstance(aws, ArcionAwsProviderConfig)
    assert aws.secret_key is not None
    assert SECRET_A == aws.secret_key.reveal()
    provider = create_provider("arc.mysql_src", aws)
    for text in (repr(config), str(config.providers), repr(provider), str(aws)):
        assert_no_leak(text, "repr")
        assert "<redacted>" in text or "access-key" in text

    azure_sm = arcion_file(
        tmp_path,
        {
            "type": "AZURE",
            "namespaces": {
                "kv1": {"tenant-id": "t1", "client-id": "c1", "client-secret": CLIENT_SECRET}
            },
        },
    )
    azure = load_config(
        smagent_config(tmp_path, {"arc": {"type": "arcion", "path": azure_sm.name}})
    )
    assert_no_leak(repr(azure), "repr")
    assert_no_leak(repr(create_provider("arc.kv1", azure.providers["arc.kv1"])), "repr")


def test_limits_pass_through_or_default_per_type(tmp_path: Path) -> None:
    """The arcion entry's rate_limit/max_concurrency reach every provider it expands into;
    unset, each takes its own type's default (aws 50/s and 25, azure 20/s and 10)."""

    def sm_file(name: str, data: dict[str, Any]) -> str:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(data))
        path.chmod(0o600)
        return path.name

    aws = {"type": "AWS", "namespaces": {"one": {"region": REGION}}}
    azure = {"type": "AZURE", "namespaces": {"kv-one": {}}}
    aws_set = {"type": "AWS", "namespaces": {"two": {"region": REGION}}}
    azure_set = {"type": "AZURE", "namespaces": {"kv-two": {}}}
    providers = {
        "a": {"type": "arcion", "path": sm_file("a.yaml", aws)},
        "z": {"type": "arcion", "path": sm_file("z.yaml", azure)},
        "a-set": {
            "type": "arcion",
            "path": sm_file("a-set.yaml", aws_set),
            "rate_limit": 5,
            "max_concurrency": 2,
        },
        "z-set": {"type": "arcion", "path": sm_file("z-set.yaml", azure_set), "rate_limit": None},
    }
    config = load_config(smagent_config(tmp_path, providers))
    limits = {n: (p.rate_limit, p.max_concurrency) for n, p in config.providers.items()}
    assert {
        "a.one": (50.0, 25),
        "z.kv-one": (20.0, 10),
        "a-set.two": (5.0, 2),
        "z-set.kv-two": (None, 10),
    } == limits


# --- Azure namespaces (the mapping; the azure provider is not in this version yet) -------------


def test_azure_namespaces_mapping(tmp_path: Path) -> None:
    """type: AZURE: each namespace is a store namespace on its own vault, https://NS.vault.azure.net;
    tenant-id/client-id/client-secret become a client_secret credential with the secret inline
    (never a file); a namespace with none of them uses the default credential."""
    sm = arcion_file(
        tmp_path,
        {
            "type": "AZURE",
            "namespaces": {
                "kv-one": {"tenant-id": "t1", "client-id": "c1", "client-secret": CLIENT_SECRET},
                "kv-two": {},
            },
        },
    )
    config = load_config(smagent_config(tmp_path, {"arc": {"type": "arcion", "path": sm.name}}))

    one, two = config.providers["arc.kv-one"], config.providers["arc.kv-two"]
    assert isinstance(one, ArcionAzureProviderConfig)
    assert isinstance(two, ArcionAzureProviderConfig)
    assert ("https://kv-one.vault.azure.net", "client_secret", "t1", "c1") == (
        one.vault_url,
        one.credential,
        one.tenant_id,
        one.client_id,
    )
    assert one.client_secret is not None
    assert CLIENT_SECRET == one.client_secret.reveal()
    assert None is one.client_secret_file
    assert ("https://kv-two.vault.azure.net", "default", None) == (
        two.vault_url,
        two.credential,
        two.client_secret,
    )
    assert Namespace("kv-one", "arc.kv-one") == config.namespaces["kv-one"]
    assert config.namespaces["kv-two"].is_store


def test_azure_vault_name_checked(tmp_path: Path) -> None:
    """An Azure namespace that cannot be a key vault's name is an error naming it."""
    sm = arcion_file(tmp_path, {"type": "AZURE", "namespaces": {"ab": {}}})
    config = smagent_config(tmp_path, {"arc": {"type": "arcion", "path": sm.name}})

    assert [
        f"{sm}: namespaces.ab: an Azure namespace is a key vault's name: 3-24 letters, digits "
        "and dashes"
    ] == config_issues(config)
