"""Configs for agent tests: a `Workspace` with what the agent needs, changed the way hosts change.

`AgentWorkspace` adds to conftest's `Workspace` a short `defaults.refresh`,
a `state_dir` in tmp_path, `metrics_file` on demand, providers for the
fakes (moto, the Vault fake) and on_change actions aimed at a SIGHUP
counter's pidfile. Every file it writes while an agent may be watching
(config, secrets, templates) is replaced by a rename, as editors and deploy
tools do: the agent must never see half a file, so a test that edits one
cannot fail for a torn read instead of the behaviour it checks.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

import yaml

from tests import leaks
from tests.conftest import CANARY, CANARY_FILE, CANARY_TOKEN, CANARY_USER, Workspace
from tests.sighup_counter import SighupCounter

REFRESH = "500ms"
"""`defaults.refresh` of an agent test: a rotation shows within about a second."""


AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "AKIAAGENTTESTS000001",
    "AWS_SECRET_ACCESS_KEY": "agent-tests-secret-access-key",
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": "/dev/null",
    "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
}
"""The environment an agent using an `aws()` provider on moto needs (moto takes any keys);
pass it as `env=` when starting the agent, so no profile of the host is used."""


def replace_file(path: Path, text: str | bytes, mode: int = 0o600) -> None:
    """Put `text` at `path` atomically: a new file (created with `mode`) renamed over it."""
    data = text.encode() if isinstance(text, str) else text
    temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    leaks.allow_secrets_in(temp)  # it holds what `path` will hold, for a moment
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(temp, mode)  # the umask may have taken bits away
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def rotate_secret(secrets_file: Path, name: str, value: Any, *keys: str) -> None:
    """Set secret `name` (or its field `keys[0].keys[1]...`) to `value` in a file provider's
    YAML file, rewritten atomically (rename-over, mode 0600): a rotation as a deploy does it."""
    data = yaml.safe_load(secrets_file.read_text()) or {}
    if not keys:
        data[name] = value
    else:
        node = data.setdefault(name, {})
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = value
    leaks.allow_secrets_in(secrets_file)
    replace_file(secrets_file, yaml.safe_dump(data, sort_keys=True), 0o600)


def hup(target: SighupCounter | Path, signal: str = "HUP") -> dict[str, str]:
    """An on_change action signalling the process in `target`'s pidfile."""
    pidfile = target.pidfile if isinstance(target, SighupCounter) else target
    return {"signal": signal, "pidfile": str(pidfile)}


class AgentWorkspace(Workspace):
    """A config folder for an agent test (see the module docstring)."""

    def __init__(self, root: Path, *, refresh: str = REFRESH) -> None:
        super().__init__(root)
        self.defaults = {"refresh": refresh}
        self.state_dir: Path | None = root / "state"
        self.metrics_file: Path | None = None
        self.extra: dict[str, Any] = {}
        """More top-level keys, as they are (a test of a bad config, say)."""

    @classmethod
    def with_canaries(cls, root: Path, *, refresh: str = REFRESH) -> AgentWorkspace:
        """The `ws` fixture's secrets and namespaces (`db`: prod/db, `store`: the whole file)."""
        workspace = cls(root, refresh=refresh)
        workspace.secrets = {
            "prod/db": {"username": CANARY_USER, "password": CANARY, "port": 5432},
            "api-token": CANARY_TOKEN,
        }
        workspace.namespaces = {
            "db": {"provider": "local", "secret": "prod/db"},
            "store": {"provider": "local"},
        }
        return workspace

    @property
    def secrets_path(self) -> Path:
        return self.root / "secrets.yaml"

    # --- building ------------------------------------------------------------------------

    def namespace(self, name: str, provider: str = "local", **fields: Any) -> None:
        """Declare namespace `name` (`secret=`, `version=`, `stage=`, `refresh=`)."""
        self.namespaces[name] = {"provider": provider, **fields}

    def aws(self, name: str, endpoint: str, region: str = "us-east-1", **fields: Any) -> None:
        """An aws provider on a local endpoint (moto); credentials come from the environment."""
        self.providers[name] = {
            "type": "aws",
            "region": region,
            "endpoint_url": endpoint,
            **fields,
        }

    def vault(self, name: str, address: str, token: str, **fields: Any) -> None:
        """A vault provider on the Vault fake, with token auth from a 0600 file."""
        token_file = self.root / f"{name}.token"
        replace_file(token_file, token, 0o600)
        leaks.allow_secrets_in(token_file)
        self.providers[name] = {
            "type": "vault",
            "address": address,
            "auth": {"method": "token", "token_file": token_file.name},
            **fields,
        }

    def contents(self, destination: str, text: str, **extra: Any) -> Path:
        """A `contents:` template written to `destination` (relative: the config folder)."""
        self.templates.append({"contents": text, "destination": destination, **extra})
        path = self.root / destination
        leaks.allow_secrets_in(path)
        return path

    # --- writing, and changing while an agent runs -------------------------------------

    def config(self) -> dict[str, Any]:
        config: dict[str, Any] = {"providers": self.providers, "namespaces": self.namespaces}
        if self.defaults:
            config["defaults"] = self.defaults
        if self.state_dir is not None:
            config["state_dir"] = str(self.state_dir)
        if self.metrics_file is not None:
            config["metrics_file"] = str(self.metrics_file)
        config["templates"] = self.templates
        config.update(self.extra)
        return config

    def write(self) -> Path:
        """Write the secrets file and the config, each by rename; the config's path."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.write_secrets()
        return self.write_config()

    def write_secrets(self) -> None:
        data = {**self.secrets, "unused-canary": CANARY_FILE}
        leaks.allow_secrets_in(self.secrets_path)
        replace_file(self.secrets_path, yaml.safe_dump(data, sort_keys=True), 0o600)

    def write_config(self, text: str | None = None) -> Path:
        """The config from the fields (or `text` as it is: an invalid one, say), by rename."""
        body = text if text is not None else yaml.safe_dump(self.config(), sort_keys=False)
        replace_file(self.config_path, body, 0o644)
        return self.config_path

    def rotate(self, name: str, value: Any, *keys: str) -> None:
        """Change secret `name` (or its field `keys`) in the secrets file, atomically."""
        if not keys:
            self.secrets[name] = value
        else:
            node = self.secrets.setdefault(name, {})
            for key in keys[:-1]:
                node = node.setdefault(key, {})
            node[keys[-1]] = value
        rotate_secret(self.secrets_path, name, value, *keys)

    def edit_template(self, name: str, text: str) -> Path:
        """Replace template file `name` (under templates/) by rename, as an editor saves."""
        path = self.root / "templates" / name
        replace_file(path, text, 0o644)
        return path
