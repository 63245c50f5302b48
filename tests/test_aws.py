"""The aws provider against moto's Secrets Manager on 127.0.0.1 (tests/fakes/moto_server.py).

The real aiobotocore client talks the real protocol; requests are counted
and timed at the server, so "45 secrets in 3 calls" and "the rate limit held"
are what AWS would have seen. Secret values are canaries: the autouse
`_no_leaks` fixture fails a test whose output, logs or errors show one.
"""

from __future__ import annotations

import math
import os
import ssl
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import boto3
import botocore.session
import pytest
import trustme
import yaml

from smagent.config import AwsProviderConfig
from smagent.providers import ProviderSetupError, enter_providers
from smagent.providers.aws import BATCH_MAX, ERROR_CODES, AwsProvider, _ModelFiles, _translate
from smagent.providers.base import (
    AccessDenied,
    NotFound,
    ProviderBug,
    ProviderError,
    SecretValue,
    Unavailable,
    Unchanged,
)
from smagent.references import SecretRef
from smagent.resolver import Resolver
from tests.conftest import CANARY, CANARY_TOKEN, CANARY_USER, run_cli
from tests.fakes.moto_server import ACCOUNT, REGION, MotoFake, shared_moto
from tests.leaks import allow_secrets_in, assert_no_leak

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing-key-id",
    "AWS_SECRET_ACCESS_KEY": "testing-secret-key",
    "AWS_DEFAULT_REGION": REGION,
}


@pytest.fixture(scope="session")
def moto_server() -> MotoFake:
    """One moto server for the session (shared with test_provider_faults); `moto` resets it."""
    return shared_moto()


@pytest.fixture
def moto(moto_server: MotoFake, monkeypatch: pytest.MonkeyPatch) -> MotoFake:
    """moto with no secrets, knobs or counters; AWS credentials for it in the environment."""
    moto_server.reset()
    for name in ("AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    return moto_server


def seed_client(moto: MotoFake) -> Any:
    return boto3.client("secretsmanager", endpoint_url=moto.endpoint, region_name=REGION)


def aws_config(endpoint: str, **fields: Any) -> AwsProviderConfig:
    return AwsProviderConfig(region=REGION, endpoint_url=endpoint, **fields)


@pytest.fixture
async def aws(moto: MotoFake) -> AsyncIterator[AwsProvider]:
    """An open aws provider pointed at moto, unlimited unless a test builds its own."""
    async with AwsProvider("aws", aws_config(moto.endpoint, rate_limit=None)) as provider:
        yield provider


def ref(secret_id: str, version: str | None = None, stage: str | None = None) -> SecretRef:
    return SecretRef("aws", secret_id, version, stage)


def reveal(result: object) -> str | bytes:
    assert isinstance(result, SecretValue), result
    return result.reveal()


# --- values ---------------------------------------------------------------------------------------


async def test_string_json_and_binary_values(aws: AwsProvider, moto: MotoFake) -> None:
    """SecretString (plain and JSON) comes back as text, SecretBinary as bytes, with VersionId."""
    client = seed_client(moto)
    client.create_secret(Name="plain", SecretString=CANARY)
    created = client.create_secret(Name="json", SecretString=f'{{"password": "{CANARY}"}}')
    client.create_secret(Name="blob", SecretBinary=b"\x00\xffbinary")

    found = await aws.fetch([ref("plain"), ref("json"), ref("blob")])

    assert CANARY == reveal(found[ref("plain")])
    assert f'{{"password": "{CANARY}"}}' == reveal(found[ref("json")])
    assert b"\x00\xffbinary" == reveal(found[ref("blob")])
    assert created["VersionId"] == found[ref("json")].version  # type: ignore[union-attr]


async def test_each_stage_and_version(aws: AwsProvider, moto: MotoFake) -> None:
    """AWSCURRENT (default), AWSPREVIOUS, AWSPENDING, a custom label and a VersionId each read
    their own version, one GetSecretValue each for the non-default ones."""
    client = seed_client(moto)
    first = client.create_secret(Name="db", SecretString="v1")["VersionId"]
    client.put_secret_value(SecretId="db", SecretString=CANARY)  # v2 current, v1 previous
    client.put_secret_value(SecretId="db", SecretString="pending", VersionStages=["AWSPENDING"])
    client.put_secret_value(SecretId="db", SecretString="blue", VersionStages=["blue"])
    refs = [
        ref("db"),
        ref("db", stage="AWSPREVIOUS"),
        ref("db", stage="AWSPENDING"),
        ref("db", stage="blue"),
        ref("db", version=first),
    ]

    found = await aws.fetch(refs)

    assert [CANARY, "v1", "pending", "blue", "v1"] == [reveal(found[r]) for r in refs]
    assert 4 == moto.count("GetSecretValue")
    assert 1 == moto.count("BatchGetSecretValue")


async def test_missing_stage_and_version_fail_fast(aws: AwsProvider, moto: MotoFake) -> None:
    """A stage or version that does not exist is NotFound at once (one request, no retry),
    naming the reference and in AWS's words."""
    seed_client(moto).create_secret(Name="db", SecretString=CANARY)
    missing = [ref("db", stage="AWSPENDING"), ref("db", version="0" * 32), ref("nope")]

    started = time.monotonic()
    found = await aws.fetch(missing)

    assert 1.0 > time.monotonic() - started
    for r in missing:
        error = found[r]
        assert isinstance(error, NotFound), error
        assert str(r) in str(error)
        assert "ResourceNotFoundException" in error.detail
    assert 2 == moto.count("GetSecretValue")
    assert 1 == moto.count("BatchGetSecretValue")


# --- one spelling per secret ---------------------------------------------------------------------


async def test_stage_awscurrent_is_no_stage(aws: AwsProvider) -> None:
    """stage=AWSCURRENT without a version is the same secret as no stage."""
    assert ref("db") == aws.canonical(ref("db", stage="AWSCURRENT"))
    assert ref("db", stage="AWSPREVIOUS") == aws.canonical(ref("db", stage="AWSPREVIOUS"))
    assert ref("db", "v", "AWSCURRENT") == aws.canonical(ref("db", "v", "AWSCURRENT"))


async def test_name_and_arn_read_once(aws: AwsProvider, moto: MotoFake) -> None:
    """A name and its full ARN in one fetch cost one read; afterwards the ARN is canonically
    the name. A partial ARN or an ARN of another account is never taken for the name."""
    arn = seed_client(moto).create_secret(Name="prod/db", SecretString=CANARY)["ARN"]
    assert 1 == aws.canonical(ref(arn)).secret_id.count(":secret:")  # nothing learned yet
    moto.reset_counters()

    found = await aws.fetch([ref("prod/db"), ref(arn)])

    assert CANARY == reveal(found[ref("prod/db")]) == reveal(found[ref(arn)])
    assert [("prod/db",)] == [s.secret_ids for s in moto.calls()]
    assert ref("prod/db") == aws.canonical(ref(arn))
    other_account = arn.replace(ACCOUNT, "999999999999")
    assert ref(other_account) == aws.canonical(ref(other_account))
    partial = arn[:-7]
    assert ref(partial) == aws.canonical(ref(partial))


async def test_a_read_by_arn_alone_teaches_nothing(aws: AwsProvider, moto: MotoFake) -> None:
    """A secret read only by its ARN does not make that ARN canonically a name: the same name
    may be another account's secret (only a read by name learns its ARN)."""
    arn = seed_client(moto).create_secret(Name="db", SecretString=CANARY)["ARN"]

    assert CANARY == reveal((await aws.fetch([ref(arn)]))[ref(arn)])

    assert ref(arn) == aws.canonical(ref(arn))


async def test_arn_of_another_secret_is_read_alone(aws: AwsProvider, moto: MotoFake) -> None:
    """An ARN whose name part matches a name asked for, but that is not that secret's ARN,
    is read on its own (not served the name's value)."""
    seed_client(moto).create_secret(Name="db", SecretString=CANARY)
    other = f"arn:aws:secretsmanager:{REGION}:999999999999:secret:db-AbCdEf"

    found = await aws.fetch([ref("db"), ref(other)])

    assert CANARY == reveal(found[ref("db")])
    assert isinstance(found[ref(other)], NotFound)


# --- batches -------------------------------------------------------------------------------------


async def test_45_secrets_in_3_batch_calls(aws: AwsProvider, moto: MotoFake) -> None:
    """45 distinct AWSCURRENT secrets: exactly 3 BatchGetSecretValue calls of at most 20 ids,
    no GetSecretValue, every value right."""
    client = seed_client(moto)
    for i in range(45):
        client.create_secret(Name=f"s{i:02d}", SecretString=f"{CANARY}-{i}")
    moto.reset_counters()
    refs = [ref(f"s{i:02d}") for i in range(45)]

    found = await aws.fetch(refs)

    assert [f"{CANARY}-{i}" for i in range(45)] == [reveal(found[r]) for r in refs]
    batches = moto.calls("BatchGetSecretValue")
    assert 3 == len(batches)
    assert 3 == moto.count()
    assert BATCH_MAX >= max(len(b.secret_ids) for b in batches)
    assert sorted(r.secret_id for r in refs) == sorted(moto.ids_asked("BatchGetSecretValue"))


@pytest.mark.parametrize("count", [1, 20, 45, 500])
async def test_api_calls_per_pass(aws: AwsProvider, moto: MotoFake, count: int) -> None:
    """A pass of N distinct AWSCURRENT secrets makes ceil(N/20) calls, and a refresh of them
    as many (the figures README gives)."""
    client = seed_client(moto)
    for i in range(count):
        client.create_secret(Name=f"n{i:03d}", SecretString=f"v{i}")
    moto.reset_counters()
    refs = [ref(f"n{i:03d}") for i in range(count)]

    found = await aws.fetch(refs)
    fetch_calls = moto.count()
    known = {r: v for r, v in found.items() if isinstance(v, SecretValue)}
    refreshed = await aws.refresh(known)

    assert math.ceil(count / BATCH_MAX) == fetch_calls
    assert 2 * math.ceil(count / BATCH_MAX) == moto.count()
    assert all(isinstance(v, Unchanged) for v in refreshed.values())
    assert count == len(refreshed)


async def test_batch_errors_fail_only_their_refs(aws: AwsProvider, moto: MotoFake) -> None:
    """Per-id errors of a BatchGetSecretValue fail only their references, with the id named."""
    client = seed_client(moto)
    client.create_secret(Name="here", SecretString=CANARY)
    client.create_secret(Name="gone", SecretString=CANARY_USER)
    client.delete_secret(SecretId="gone")  # scheduled for deletion: an error in the batch
    moto.reset_counters()

    found = await aws.fetch([ref("here"), ref("missing"), ref("gone")])

    assert CANARY == reveal(found[ref("here")])
    for name in ("missing", "gone"):
        error = found[ref(name)]
        assert isinstance(error, NotFound), error
        assert f"aws:{name}" in str(error)
    assert 1 == moto.count()


async def test_batch_denied_falls_back_to_get(
    aws: AwsProvider, moto: MotoFake, capfd: pytest.CaptureFixture[str]
) -> None:
    """A policy without BatchGetSecretValue: the values come by GetSecretValue, and later
    passes go straight there (the denial is remembered, logged once)."""
    client = seed_client(moto)
    for i in range(3):
        client.create_secret(Name=f"s{i}", SecretString=f"{CANARY}-{i}")
    moto.knobs.deny = {"BatchGetSecretValue"}
    refs = [ref(f"s{i}") for i in range(3)]

    first = await aws.fetch(refs)
    second = await aws.fetch(refs)

    for found in (first, second):
        assert [f"{CANARY}-{i}" for i in range(3)] == [reveal(found[r]) for r in refs]
    assert 1 == moto.count("BatchGetSecretValue")
    assert 6 == moto.count("GetSecretValue")
    out, err = capfd.readouterr()
    assert 1 == (out + err).count("provider.batch_denied")


async def test_batch_denied_costs_one_denied_call(aws: AwsProvider, moto: MotoFake) -> None:
    """45 secrets on a host whose policy denies BatchGetSecretValue: one denied batch call (the
    first chunk probes alone), then 45 GetSecretValue; no denied call per chunk."""
    client = seed_client(moto)
    for i in range(45):
        client.create_secret(Name=f"s{i:02d}", SecretString=f"{CANARY}-{i}")
    moto.reset_counters()
    moto.knobs.deny = {"BatchGetSecretValue"}
    refs = [ref(f"s{i:02d}") for i in range(45)]

    found = await aws.fetch(refs)

    assert [f"{CANARY}-{i}" for i in range(45)] == [reveal(found[r]) for r in refs]
    assert {"BatchGetSecretValue": 1, "GetSecretValue": 45} == moto.by_operation()


async def test_get_denied_is_access_denied(aws: AwsProvider, moto: MotoFake) -> None:
    """AccessDenied on GetSecretValue is permanent: one request, the reference named."""
    seed_client(moto).create_secret(Name="db", SecretString=CANARY)
    moto.reset_counters()
    moto.knobs.deny = {"GetSecretValue"}

    found = await aws.fetch([ref("db", stage="AWSPREVIOUS")])

    error = found[ref("db", stage="AWSPREVIOUS")]
    assert isinstance(error, AccessDenied)
    assert "aws:db#AWSPREVIOUS" in str(error)
    assert "not authorized to perform: secretsmanager:GetSecretValue" in error.detail
    assert 1 == moto.count()


# --- faults --------------------------------------------------------------------------------------


async def test_throttling_retried_then_succeeds(aws: AwsProvider, moto: MotoFake) -> None:
    """Two ThrottlingException answers, then the value: three requests, one success."""
    seed_client(moto).create_secret(Name="db", SecretString=CANARY)
    moto.reset_counters()
    moto.knobs.throttle = 2

    found = await aws.fetch([ref("db")])

    assert CANARY == reveal(found[ref("db")])
    assert 3 == moto.count("BatchGetSecretValue")


async def test_throttling_storm_is_throttled(aws: AwsProvider, moto: MotoFake) -> None:
    """Throttled on every attempt: a Throttled error after a few attempts, not a hang."""
    seed_client(moto).create_secret(Name="db", SecretString=CANARY)
    moto.reset_counters()
    moto.knobs.throttle = 1000

    found = await aws.fetch([ref("db")])

    error = found[ref("db")]
    assert isinstance(error, ProviderError)
    assert error.transient
    assert "ThrottlingException: Rate exceeded" in str(error)
    assert 5 > moto.count()


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        ("UnrecognizedClientException", AccessDenied),
        ("InvalidSignatureException", AccessDenied),
        ("InternalServiceError", Unavailable),
        ("SomethingNew", ProviderBug),
    ],
)
async def test_error_codes_to_kinds(
    aws: AwsProvider, moto: MotoFake, code: str, kind: type[ProviderError]
) -> None:
    """An error code becomes its kind whatever the HTTP status; permanent ones are not retried."""
    seed_client(moto).create_secret(Name="db", SecretString=CANARY)
    moto.reset_counters()
    moto.knobs.fail = {"BatchGetSecretValue": (403, code)}

    error = (await aws.fetch([ref("db")]))[ref("db")]

    assert isinstance(error, kind), error
    assert code in error.detail
    if not kind.transient:
        assert 1 == moto.count()


async def test_malformed_answer_is_provider_bug(aws: AwsProvider, moto: MotoFake) -> None:
    """An answer that is not Secrets Manager's JSON is a ProviderBug, not retried forever."""
    moto.knobs.malformed = True

    error = (await aws.fetch([ref("db")]))[ref("db")]

    assert isinstance(error, ProviderBug), error
    assert "is not Secrets Manager's" in error.detail
    assert 2 == moto.count()  # the batch, then the one read it could not place


def test_an_answer_botocore_cannot_parse_is_a_provider_bug() -> None:
    """botocore.parsers' ResponseParserError (no BotoCoreError) is a ProviderBug, text unshown."""
    from botocore.parsers import ResponseParserError

    error = _translate(ResponseParserError(f"bad body {CANARY}"), ref("db"), "http://x")

    assert isinstance(error, ProviderBug)
    assert CANARY not in error.detail


async def test_server_down_is_unavailable(moto: MotoFake) -> None:
    """Nothing listening at endpoint_url: Unavailable naming the endpoint, within the deadline."""
    config = aws_config("http://127.0.0.1:9", rate_limit=None)
    async with AwsProvider("aws", config) as provider:
        error = (await provider.fetch([ref("db")]))[ref("db")]
        with pytest.raises(Unavailable, match=r"cannot reach http://127\.0\.0\.1:9"):
            await provider.test_connection()
    assert isinstance(error, Unavailable)
    assert "cannot reach http://127.0.0.1:9" in error.detail


async def test_slow_store_past_deadline(moto: MotoFake) -> None:
    """A store slower than fetch_timeout: the pass's references are Unavailable on time."""
    seed_client(moto).create_secret(Name="db", SecretString=CANARY)
    moto.knobs.latency = 1.5
    async with AwsProvider("aws", aws_config(moto.endpoint)) as provider:
        started = time.monotonic()
        found = await Resolver({"aws": provider}, timeout=0.3).resolve([ref("db")])
    assert 1.2 > time.monotonic() - started
    assert isinstance(found[ref("db")], Unavailable)


async def test_rate_limit_held_at_the_server(moto: MotoFake) -> None:
    """rate_limit 10: no sliding 1 s window at the server holds more than 10 requests."""
    client = seed_client(moto)
    client.create_secret(Name="db", SecretString=CANARY)
    moto.reset_counters()
    moto.knobs.deny = {"BatchGetSecretValue"}
    refs = [ref("db", stage=f"s{i}") for i in range(20)]
    async with AwsProvider("aws", aws_config(moto.endpoint, rate_limit=10)) as provider:
        await provider.fetch(refs)
    times = sorted(seen.at for seen in moto.calls())
    assert 20 == len(times)
    busiest = max(sum(1 for t in times if start <= t < start + 1.0) for start in times)
    assert 10 >= busiest


# --- refresh -------------------------------------------------------------------------------------


async def test_refresh_sees_rotation(aws: AwsProvider, moto: MotoFake) -> None:
    """refresh answers Unchanged while AWSCURRENT stays, the new value once it moved; a staged
    reference is checked by DescribeSecret and read only when its label moved."""
    client = seed_client(moto)
    client.create_secret(Name="db", SecretString="v1")
    client.put_secret_value(SecretId="db", SecretString="v2")  # v1 is AWSPREVIOUS
    refs = [ref("db"), ref("db", stage="AWSPREVIOUS")]
    known = {r: v for r, v in (await aws.fetch(refs)).items() if isinstance(v, SecretValue)}
    moto.reset_counters()

    quiet = await aws.refresh(known)
    assert all(isinstance(v, Unchanged) for v in quiet.values())
    assert {"BatchGetSecretValue": 1, "DescribeSecret": 1} == moto.by_operation()

    client.put_secret_value(SecretId="db", SecretString=CANARY)  # rotation: v2 previous
    moto.reset_counters()
    rotated = await aws.refresh(known)
    assert CANARY == reveal(rotated[ref("db")])
    assert "v2" == reveal(rotated[ref("db", stage="AWSPREVIOUS")])
    assert {"BatchGetSecretValue": 1, "DescribeSecret": 1, "GetSecretValue": 1} == (
        moto.by_operation()
    )


async def test_refresh_of_a_pinned_version_costs_nothing(aws: AwsProvider, moto: MotoFake) -> None:
    """A VersionId's value never changes: refresh answers Unchanged without a request."""
    version = seed_client(moto).create_secret(Name="db", SecretString=CANARY)["VersionId"]
    pinned = ref("db", version=version)
    known = {pinned: reveal_value(await aws.fetch([pinned]), pinned)}
    moto.reset_counters()

    assert isinstance((await aws.refresh(known))[pinned], Unchanged)
    assert 0 == moto.count()


def reveal_value(found: Any, r: SecretRef) -> SecretValue:
    value = found[r]
    assert isinstance(value, SecretValue)
    return value


# --- the table, TLS, repr ------------------------------------------------------------------------


def test_error_table_covers_the_codes_we_can_meet() -> None:
    """Every error the Secrets Manager model lists for the operations we call, and the common
    auth/throttling codes of AWS's JSON protocol, has a kind in ERROR_CODES."""
    model = botocore.session.get_session().get_service_model("secretsmanager")
    modelled = {
        shape.name
        for op in ("GetSecretValue", "BatchGetSecretValue", "DescribeSecret")
        for shape in model.operation_model(op).error_shapes
    }
    common = {
        "AccessDeniedException",
        "UnrecognizedClientException",
        "InvalidSignatureException",
        "ExpiredTokenException",
        "IncompleteSignature",
        "MissingAuthenticationToken",
        "ThrottlingException",
        "ServiceUnavailable",
        "InternalFailure",
        "ValidationException",
    }
    assert set() == (modelled | common) - ERROR_CODES.keys()


@pytest.fixture(scope="module")
def tls_moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MotoFake, Path]]:
    """moto over HTTPS with a certificate from a throwaway CA (trustme); the CA's PEM path."""
    ca = trustme.CA()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    ca_path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    server = MotoFake(ssl_context=context)
    server.start()
    yield server, ca_path
    server.stop()


async def test_tls_verified(
    tls_moto: tuple[MotoFake, Path], moto: MotoFake, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An HTTPS endpoint whose CA is not trusted is refused with a clear message; with the CA
    (AWS_CA_BUNDLE) the same endpoint answers."""
    server, ca_path = tls_moto
    async with AwsProvider("aws", aws_config(server.endpoint, rate_limit=None)) as provider:
        error = (await provider.fetch([ref("db")]))[ref("db")]
    assert isinstance(error, Unavailable)
    assert f"TLS verification of {server.endpoint} failed" in error.detail
    assert "CERTIFICATE_VERIFY_FAILED" in error.detail

    monkeypatch.setenv("AWS_CA_BUNDLE", str(ca_path))
    async with AwsProvider("aws", aws_config(server.endpoint, rate_limit=None)) as provider:
        await provider.test_connection()


async def test_repr_holds_no_credential(aws: AwsProvider) -> None:
    """repr(provider) names the provider and endpoint, never a credential."""
    text = repr(aws)
    assert "aws" in text
    for value in CREDENTIALS.values():
        if value != REGION:
            assert value not in text


def test_no_region_is_a_setup_error(moto: MotoFake, monkeypatch: pytest.MonkeyPatch) -> None:
    """No region anywhere: a setup error saying where to set it, when the provider is built."""
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)

    with pytest.raises(ProviderSetupError, match="no AWS region: set `region`"):
        AwsProvider("aws", AwsProviderConfig(endpoint_url=moto.endpoint))


@pytest.mark.parametrize("url", ["127.0.0.1:4566", "ftp://127.0.0.1", "http://"])
def test_bad_endpoint_url_is_a_setup_error(url: str) -> None:
    """An endpoint_url that is not an http(s) URL is a setup error naming the field."""
    with pytest.raises(ProviderSetupError, match="endpoint_url: expected an http"):
        AwsProvider("aws", aws_config(url))


async def test_credentials_are_resolved_by_the_first_request(
    tmp_path: Path, moto: MotoFake, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Opening contacts nothing: a credential_process that fails does not stop the providers
    from opening; it fails this provider's references as AccessDenied, at once."""
    config = tmp_path / "config"
    config.write_text("[profile broken]\ncredential_process = /bin/false\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)

    provider = AwsProvider("aws", aws_config(moto.endpoint, profile="broken", rate_limit=None))
    async with enter_providers({"aws": provider}) as opened:
        error = (await opened["aws"].fetch([ref("db")]))[ref("db")]

    assert isinstance(error, AccessDenied), error
    assert "credentials could not be obtained" in error.detail
    assert 0 == moto.count()


# --- the CLI end to end --------------------------------------------------------------------------


def write_config(root: Path, endpoint: str) -> Path:
    config = {
        "providers": {"aws-prod": {"type": "aws", "region": REGION, "endpoint_url": endpoint}},
        "namespaces": {
            "db": {"provider": "aws-prod", "secret": "prod/db"},
            "old": {"provider": "aws-prod", "secret": "prod/db", "stage": "AWSPREVIOUS"},
        },
        "defaults": {"fetch_timeout": "5s"},
        "templates": [
            {
                "contents": "user={{ secrets.db.username }}\npassword={{ secrets.db.password }}\n"
                'old={{ secrets.old.password }}\ntoken={{ secret("aws-prod:token") }}\n'
                'arn={{ secret("aws-prod:ARN_HERE", key="password") }}\n',
                "destination": "out/app.conf",
            }
        ],
    }
    path = root / "smagent.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def test_render_once_end_to_end(tmp_path: Path, moto: MotoFake) -> None:
    """`smagent render --once` in a subprocess, credentials from the environment: JSON keys,
    a stage, a plain secret and an ARN rendered; one batch call for the AWSCURRENT secrets."""
    client = seed_client(moto)
    client.create_secret(Name="prod/db", SecretString='{"username": "u", "password": "old-pw"}')
    client.put_secret_value(
        SecretId="prod/db", SecretString=f'{{"username": "{CANARY_USER}", "password": "{CANARY}"}}'
    )
    client.create_secret(Name="token", SecretString=CANARY_TOKEN)
    arn = client.describe_secret(SecretId="prod/db")["ARN"]
    config = write_config(tmp_path, moto.endpoint)
    config.write_text(config.read_text().replace("ARN_HERE", arn))
    allow_secrets_in(tmp_path / "out" / "app.conf")
    moto.reset_counters()

    result = run_cli(
        "--log-format", "json", "--config", config, "render", "--once", env=CREDENTIALS
    )

    assert 0 == result.returncode, result.stderr[-2000:]
    expected = f"user={CANARY_USER}\npassword={CANARY}\nold=old-pw\ntoken={CANARY_TOKEN}\n"
    assert expected + f"arn={CANARY}\n" == (tmp_path / "out" / "app.conf").read_text()
    assert {"BatchGetSecretValue": 1, "GetSecretValue": 1} == moto.by_operation()


def test_cli_test_connection(tmp_path: Path, moto: MotoFake) -> None:
    """`smagent test-connection`: ok against moto; rejected credentials and a server that is
    down are named failures with exit 1."""
    config = write_config(tmp_path, moto.endpoint)

    ok = run_cli("--config", config, "test-connection", env=CREDENTIALS)
    assert 0 == ok.returncode, ok.stderr
    assert "aws-prod (aws): ok" in ok.stdout

    moto.knobs.fail = {"GetSecretValue": (400, "UnrecognizedClientException")}
    rejected = run_cli("--config", config, "test-connection", env=CREDENTIALS)
    assert 1 == rejected.returncode
    assert "access denied: UnrecognizedClientException" in rejected.stdout

    down = write_config(tmp_path, "http://127.0.0.1:9")
    result = run_cli("--config", down, "test-connection", env=CREDENTIALS)
    assert 1 == result.returncode
    assert "cannot reach http://127.0.0.1:9" in result.stdout
    for text in (ok.stdout, rejected.stdout, result.stdout, result.stderr):
        assert_no_leak(text, "test-connection output")


async def test_concurrent_chunks_share_the_limits(moto: MotoFake) -> None:
    """Chunks go out concurrently, but never more at once than max_concurrency."""
    client = seed_client(moto)
    for i in range(60):
        client.create_secret(Name=f"c{i:02d}", SecretString="x")
    moto.reset_counters()
    moto.knobs.latency = 0.2
    config = aws_config(moto.endpoint, rate_limit=None, max_concurrency=2)
    async with AwsProvider("aws", config) as provider:
        started = time.monotonic()
        await provider.fetch([ref(f"c{i:02d}") for i in range(60)])
        elapsed = time.monotonic() - started
    assert 3 == moto.count("BatchGetSecretValue")
    assert 0.4 <= elapsed < 1.1  # two rounds of 0.2 s: 2 chunks at once, then the third


async def test_profile_from_the_aws_config_files(
    tmp_path: Path, moto: MotoFake, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`profile` picks credentials from the shared credentials file; an unknown profile is a
    setup error naming it."""
    seed_client(moto).create_secret(Name="db", SecretString=CANARY)
    credentials = tmp_path / "credentials"
    credentials.write_text(
        "[smagent-test]\naws_access_key_id = from-profile\naws_secret_access_key = also\n"
    )
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")

    config = aws_config(moto.endpoint, profile="smagent-test", rate_limit=None)
    async with AwsProvider("aws", config) as provider:
        assert CANARY == reveal((await provider.fetch([ref("db")]))[ref("db")])

    with pytest.raises(ProviderSetupError, match="AWS profile 'nobody' is not in the AWS config"):
        AwsProvider("aws", aws_config(moto.endpoint, profile="nobody"))
    monkeypatch.setenv("AWS_PROFILE", "nobody")
    with pytest.raises(ProviderSetupError, match=r"'nobody' \(named by AWS_PROFILE\) is not"):
        AwsProvider("aws", aws_config(moto.endpoint))


async def test_no_credentials_is_access_denied(
    moto: MotoFake, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No credentials anywhere in the chain: AccessDenied saying where to put them, at once."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")

    async with AwsProvider("aws", aws_config(moto.endpoint, rate_limit=None)) as provider:
        error = (await provider.fetch([ref("db")]))[ref("db")]

    assert isinstance(error, AccessDenied), error
    assert "no usable AWS credentials" in error.detail
    assert 0 == moto.count()


def test_model_files_decoded_by_msgspec_give_botocore_the_same_data() -> None:
    """The provider's session reads botocore's data files through `_ModelFiles` (msgspec), and
    gets the same data botocore's own json loader gives: endpoints, defaults, the service model
    and endpoint rules of Secrets Manager, and STS (Arcion's assume-role)."""
    provider = AwsProvider("aws", aws_config("http://127.0.0.1:1"))
    ours = provider._session.get_component("data_loader")
    assert isinstance(ours.file_loader, _ModelFiles)
    theirs = botocore.session.get_session().get_component("data_loader")
    assert not isinstance(theirs.file_loader, _ModelFiles)
    for name in ("endpoints", "partitions", "sdk-default-configuration", "_retry"):
        assert theirs.load_data(name) == ours.load_data(name), name
    for service in ("secretsmanager", "sts"):
        for kind in ("service-2", "endpoint-rule-set-1", "paginators-1"):
            expected = theirs.load_service_model(service, kind)
            assert expected == ours.load_service_model(service, kind), (service, kind)
    assert theirs.list_available_services("service-2") == ours.list_available_services("service-2")
