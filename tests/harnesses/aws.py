"""The `aws` provider's contract harness: moto's Secrets Manager on 127.0.0.1.

The process's one moto server (tests/fakes/moto_server.py), reset for each
test; its middleware breaks it the ways the contract names and counts the
requests it was asked. Credentials come from the environment, as the
standard chain reads them on a host.
"""

from __future__ import annotations

from typing import Any, Self

import pytest

from smagent.references import SecretRef
from tests.fakes.moto_server import REGION, MotoFake, shared_moto
from tests.providers_harness import STORE, StoreHarness

ACCESS_KEY_ID = "AKIACONTRACTHARNESS1"
SECRET_ACCESS_KEY = "contract-harness-secret-access-key"
DOWN = "http://127.0.0.1:9"
"""A port where nothing listens (discard): connection refused at once."""


class AwsHarness(StoreHarness):
    kind = "aws"

    async def __aenter__(self) -> Self:
        self.moto: MotoFake = shared_moto()
        self.moto.reset()
        self.endpoint = self.moto.endpoint
        monkeypatch: pytest.MonkeyPatch = self.request.getfixturevalue("monkeypatch")
        for name in ("AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY)
        monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.moto.reset()  # a stalled request's latency must not outlive the test

    def config(self) -> dict[str, Any]:
        return {"type": "aws", "region": REGION, "endpoint_url": self.endpoint}

    async def put(self, name: str, value: str) -> None:
        import boto3

        client = boto3.client(
            "secretsmanager",
            endpoint_url=self.moto.endpoint,
            region_name=REGION,
            aws_access_key_id=ACCESS_KEY_ID,
            aws_secret_access_key=SECRET_ACCESS_KEY,
        )
        if name in {s["Name"] for s in client.list_secrets()["SecretList"]}:
            client.put_secret_value(SecretId=name, SecretString=value)  # AWSCURRENT moves
        else:
            client.create_secret(Name=name, SecretString=value)
        self.moto.reset_counters()

    async def deny(self, name: str) -> None:
        # a policy granting neither read: the batch is denied, then its GetSecretValue fallback
        self.moto.knobs.deny = {"BatchGetSecretValue", "GetSecretValue"}

    async def down(self) -> None:
        self.endpoint = DOWN

    async def throttle(self, times: int) -> None:
        self.moto.knobs.throttle = times

    async def stall(self) -> None:
        self.moto.knobs.latency = self.fetch_timeout + 1.0

    def spellings(self, name: str) -> list[SecretRef]:
        # A name and its ARN are one secret only once a read by name has shown the ARN
        # (test_aws.py::test_name_and_arn_read_once); before any read, canonical is pure and
        # can join only the default stage and its explicit spelling.
        return [SecretRef(STORE, name), SecretRef(STORE, name, stage="AWSCURRENT")]

    def requests(self) -> int | None:
        return self.moto.count()

    def credentials(self) -> list[str]:
        return [ACCESS_KEY_ID, SECRET_ACCESS_KEY]


HARNESS = AwsHarness
