"""Fixtures of the end-to-end suite: a database host (PostgreSQL + pgbouncer), moto, passwords.

- `dbhost`: a `DbHost` (tests/e2e/dbhost.py) on the session's PostgreSQL, with its
  own pgbouncer folder and port; pgbouncer is started by the test (`start_pgbouncer()`)
  once the agent rendered its userlist; roles the test created are dropped after it.
- `moto`: the process's moto server, emptied; `secretsmanager`: a boto3 client on it
  (what a rotation function calls).
- `new_password()`: a fresh random password holding a canary, so a test fails if one
  shows in any output (the agent's log, the test's own, failure text).

`pytest tests/e2e -s` prints the figures (rotation latencies, connections attempted
and failed). Without PostgreSQL or pgbouncer installed the tests skip, except on CI
(`CI` set), where they fail.
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest
from botocore.config import Config as BotoConfig

from tests import leaks
from tests.agent_config import AWS_ENV
from tests.e2e.dbhost import DbHost, running_dbhost
from tests.fakes.moto_server import REGION, MotoFake, shared_moto
from tests.postgres import Postgres

_COUNTER = itertools.count(1)


@pytest.fixture
def dbhost(postgres: Postgres) -> Iterator[DbHost]:
    """This test's pgbouncer in front of the session's PostgreSQL (see the module docstring)."""
    with running_dbhost(postgres) as host:
        yield host


@pytest.fixture
def moto() -> MotoFake:
    server = shared_moto()
    server.reset()
    return server


@pytest.fixture
def secretsmanager(moto: MotoFake) -> Any:
    """A boto3 Secrets Manager client on moto, as a rotation function holds one."""
    return boto3.client(
        "secretsmanager",
        endpoint_url=moto.endpoint,
        region_name=REGION,
        aws_access_key_id=AWS_ENV["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=AWS_ENV["AWS_SECRET_ACCESS_KEY"],
        config=BotoConfig(retries={"total_max_attempts": 3, "mode": "standard"}),
    )


PASSWORD_MARK = leaks.plant("pwE2E-canary-Jx4q", "E2E_PASSWORD")
"""Inside every password these tests make: one canary catches any of them (a canary per
password would multiply the leak checker's work for the rest of the session)."""


@pytest.fixture
def new_password() -> Callable[[], str]:
    """`new_password()`: a random password holding the E2E_PASSWORD canary (tests/leaks.py):
    a test fails if one shows in any output, in any of the forms the checker knows."""

    def make() -> str:
        return f"{PASSWORD_MARK}-{next(_COUNTER)}-{secrets.token_urlsafe(12)}"

    return make


def unique_roles(prefix: str, count: int = 2) -> list[str]:
    """Role names no other test of this session uses (the server is shared)."""
    tag = secrets.token_hex(3)
    return [f"{prefix}_{tag}_{chr(ord('a') + i)}" for i in range(count)]
