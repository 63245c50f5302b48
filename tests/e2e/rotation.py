"""The rotation function of the end-to-end tests: what an AWS rotation Lambda does, step by step.

AWS rotates a secret in four steps (createSecret, setSecret, testSecret,
finishSecret). `Rotator` does the same against moto and the test's
PostgreSQL, and notes when each step happened (time.time()), so a test can
relate them to when the agent wrote its files and when pgbouncer reloaded:

1. setSecret: the new password is set in PostgreSQL, on the inactive user
   (alternating users: the one AWSPREVIOUS names) or on the only user;
2. createSecret: `put_secret_value(..., VersionStages=["AWSPENDING"])`;
3. testSecret: log in through pgbouncer with the pending credentials until it
   works (alternating users: the host accepts them before any client is given
   them), or skipped (single user: pgbouncer holds one password per user);
4. finishSecret: AWSCURRENT moves to the new version
   (`update_secret_version_stage`); AWSPREVIOUS follows by itself, and
   AWSPENDING stays on the new version, as AWS's own rotation functions leave it.

`bootstrap` creates the secret with every stage present (the userlist
template reads all three).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg

from tests.e2e.dbhost import DbHost

SECRET_ID = "prod/postgres/app"


@dataclass
class Rotation:
    """When each step of one rotation happened (time.time())."""

    user: str
    set_at: float = 0.0
    put_at: float = 0.0
    accepted_at: float = 0.0
    """testSecret: the first login through pgbouncer with the pending credentials."""
    finish_at: float = 0.0


@dataclass
class Rotator:
    client: Any
    dbhost: DbHost
    new_password: Callable[[], str]
    secret_id: str = SECRET_ID
    rotations: list[Rotation] = field(default_factory=list)

    def bootstrap(self, users: list[str]) -> None:
        """Create the roles and the secret: the last user is AWSCURRENT (and AWSPENDING), the
        one before it AWSPREVIOUS (the same user again for a single-user secret)."""
        passwords = {user: self.new_password() for user in dict.fromkeys(users)}
        for user, password in passwords.items():
            self.dbhost.create_role(user, password)
        first, last = (users[0], users[-1]) if len(users) > 1 else (users[0], users[0])
        self.client.create_secret(Name=self.secret_id, SecretString=_value(first, passwords[first]))
        if last == first:  # a single user: the previous version holds the same password
            passwords[last] = passwords[first]
        self.client.put_secret_value(
            SecretId=self.secret_id,
            SecretString=_value(last, passwords[last]),
            VersionStages=["AWSCURRENT", "AWSPENDING"],
        )

    def stage(self, stage: str) -> dict[str, str]:
        answer = self.client.get_secret_value(SecretId=self.secret_id, VersionStage=stage)
        value: dict[str, str] = json.loads(answer["SecretString"])
        return value

    def current_version(self) -> str:
        answer = self.client.describe_secret(SecretId=self.secret_id)
        for version, stages in answer["VersionIdsToStages"].items():
            if "AWSCURRENT" in stages:
                return str(version)
        raise AssertionError("no AWSCURRENT version")

    def rotate(
        self,
        *,
        alternating: bool,
        test_timeout: float = 15,
        after_set: Callable[[str], object] | None = None,
    ) -> Rotation:
        """One rotation (the four steps above); its times. `after_set(user)` runs right after
        the password changed in PostgreSQL (to end pooled server connections, say)."""
        user = self.stage("AWSPREVIOUS" if alternating else "AWSCURRENT")["username"]
        password = self.new_password()
        rotation = Rotation(user)
        old_version = self.current_version()
        self.dbhost.set_password(user, password)
        rotation.set_at = time.time()
        if after_set is not None:
            after_set(user)
        answer = self.client.put_secret_value(
            SecretId=self.secret_id,
            SecretString=_value(user, password),
            VersionStages=["AWSPENDING"],
        )
        rotation.put_at = time.time()
        if alternating:
            rotation.accepted_at = self.wait_accepted(user, password, test_timeout)
        self.finish(answer["VersionId"], old_version)
        rotation.finish_at = time.time()
        self.rotations.append(rotation)
        return rotation

    def finish(self, version: str, old_version: str | None = None) -> None:
        """finishSecret: AWSCURRENT moves to `version` (from `old_version`, else the current)."""
        self.client.update_secret_version_stage(
            SecretId=self.secret_id,
            VersionStage="AWSCURRENT",
            MoveToVersionId=version,
            RemoveFromVersionId=old_version or self.current_version(),
        )

    def wait_accepted(self, user: str, password: str, timeout: float) -> float:
        """testSecret: poll a login through pgbouncer; when it first worked."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(
                    self.dbhost.conninfo(), user=user, password=password, connect_timeout=5
                ):
                    return time.time()
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"pgbouncer did not accept the pending credentials of {user} "
                        f"within {timeout}s"
                    ) from None
                time.sleep(0.02)


def _value(user: str, password: str) -> str:
    return json.dumps({"username": user, "password": password})
