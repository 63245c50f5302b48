"""Tests for smagent.exposure and the warnings `load_config` gives for exposed files."""

from __future__ import annotations

import os
import pwd
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import pytest
import structlog
import yaml

from smagent.config import load_config
from smagent.exposure import exposure
from tests.conftest import CANARY, Workspace, run_cli
from tests.leaks import allow_secrets_in

NOBODY = pwd.getpwnam("nobody").pw_uid


def make_file(folder: Path, mode: int, name: str = "secret") -> Path:
    path = folder / name
    path.write_text(f"token: {CANARY}\n")
    path.chmod(mode)
    allow_secrets_in(path)
    return path


@pytest.mark.parametrize("mode", [0o600, 0o400, 0o640, 0o700])
def test_private_modes_are_not_exposed(tmp_path: Path, mode: int) -> None:
    """Owner-only and group-readable files (root:smagent 0640) raise nothing."""
    path = make_file(tmp_path, mode)
    assert [] == exposure(path, path.stat())


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        (0o644, ["readable by every user"]),
        (0o604, ["readable by every user"]),
        (0o602, ["writable by every user"]),
        (0o620, ["writable by its group"]),
        (0o666, ["readable by every user", "writable by every user", "writable by its group"]),
    ],
)
def test_modes_open_to_others_are_named(tmp_path: Path, mode: int, expected: list[str]) -> None:
    """Read or write by others, or write by the group, is each named."""
    path = make_file(tmp_path, mode)
    assert expected == exposure(path, path.stat())


def test_file_owned_by_another_user_is_named(tmp_path: Path) -> None:
    """A file another (non-root) user owns can be changed by that user."""
    if os.geteuid() != 0:
        pytest.skip("only root can give a file to another user")
    path = make_file(tmp_path, 0o600)
    os.chown(path, NOBODY, -1)
    assert [f"owned by another user (uid {NOBODY})"] == exposure(path, path.stat())


def test_folder_writable_by_others_is_named(tmp_path: Path) -> None:
    """A 0777 folder lets anyone replace the file, whatever the file's mode."""
    folder = tmp_path / "open"
    folder.mkdir()
    folder.chmod(0o777)
    path = make_file(folder, 0o600)
    assert [f"in a folder others can write to ({folder}, mode 0777), so they can replace it"] == (
        exposure(path, path.stat())
    )


def test_sticky_folder_is_not_exposed(tmp_path: Path) -> None:
    """In a sticky folder (like /tmp), others cannot replace a file they do not own."""
    folder = tmp_path / "sticky"
    folder.mkdir()
    folder.chmod(0o1777)
    path = make_file(folder, 0o600)
    assert [] == exposure(path, path.stat())


# --- at load time ---------------------------------------------------------------------------------


def load_logging(path: Path) -> list[MutableMapping[str, Any]]:
    """Load the config at `path` and return the warnings logged meanwhile."""
    with structlog.testing.capture_logs() as logs:
        load_config(path)
    return logs


def write(folder: Path, data: dict[str, Any], mode: int = 0o600) -> Path:
    path = folder / "smagent.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    path.chmod(mode)
    return path


def test_config_writable_by_others_gets_one_warning(tmp_path: Path) -> None:
    """A 0666 config: one `file.exposed` warning naming the file, its mode and who may write."""
    path = write(tmp_path, {}, 0o666)
    assert [
        {
            "event": "file.exposed",
            "log_level": "warning",
            "path": str(path),
            "role": "config file",
            "mode": "0666",
            "problem": "writable by every user; writable by its group",
        }
    ] == load_logging(path)


def test_config_readable_by_others_gets_no_warning(tmp_path: Path) -> None:
    """A 0644 config holds no secret (credentials live in `*_file`s): no warning on each run."""
    assert [] == load_logging(write(tmp_path, {}, 0o644))


def test_private_config_gets_no_warning(tmp_path: Path) -> None:
    """A 0600 config in a private folder loads without a warning."""
    assert [] == load_logging(write(tmp_path, {}))


CREDENTIAL_PROVIDERS = {
    "local": {"type": "file", "path": "secrets.yaml"},
    "vault": {
        "type": "vault",
        "address": "https://vault.example:8200",
        "ca_cert": "ca.pem",
        "auth": {"method": "approle", "role_id_file": "role-id", "secret_id_file": "secret-id"},
    },
    "vault-token": {
        "type": "vault",
        "address": "https://vault.example:8200",
        "auth": {"method": "token", "token_file": "token"},
    },
    "kv": {
        "type": "azure",
        "vault_url": "https://kv.vault.azure.net",
        "credential": "client_secret",
        "tenant_id": "tenant",
        "client_id": "client",
        "client_secret_file": "client-secret",
    },
}


def test_each_exposed_secret_file_gets_a_warning_without_content(tmp_path: Path) -> None:
    """Every file holding a secret or credential, readable by others, is named once, by role."""
    for name in ("secrets.yaml", "secret-id", "token", "client-secret", "ca.pem", "role-id"):
        make_file(tmp_path, 0o644, name)
    path = write(tmp_path, {"providers": CREDENTIAL_PROVIDERS})
    logs = load_logging(path)
    assert [
        ("providers.local.path", str(tmp_path / "secrets.yaml")),
        ("providers.vault.auth.secret_id_file", str(tmp_path / "secret-id")),
        ("providers.vault-token.auth.token_file", str(tmp_path / "token")),
        ("providers.kv.client_secret_file", str(tmp_path / "client-secret")),
    ] == [(log["role"], log["path"]) for log in logs]
    assert all("0644" == log["mode"] for log in logs)
    assert CANARY not in repr(logs)


def test_private_or_missing_secret_files_get_no_warning(tmp_path: Path) -> None:
    """0600 credential files, or files not there yet, raise nothing at load."""
    make_file(tmp_path, 0o600, "secrets.yaml")
    make_file(tmp_path, 0o640, "token")
    path = write(tmp_path, {"providers": CREDENTIAL_PROVIDERS})
    assert [] == load_logging(path)


def test_cli_warns_about_world_readable_secrets_file(ws: Workspace) -> None:
    """`smagent check` logs one JSON warning per exposed file; the content is never shown."""
    ws.template("app.conf.j2", "user={{ secrets.db.username }}\n")
    ws.write()
    ws.config_path.chmod(0o600)
    (ws.root / "secrets.yaml").chmod(0o644)
    result = run_cli("--config", ws.config_path, "check")
    assert 0 == result.returncode, result.stderr
    (warning,) = [e for e in result.logs() if e["event"] == "file.exposed"]
    assert (str(ws.root / "secrets.yaml"), "0644", "providers.local.path") == (
        warning["path"],
        warning["mode"],
        warning["role"],
    )
    assert "warning" == warning["level"]
