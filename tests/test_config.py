"""Tests for smagent.config: real YAML files in tmp_path, `load_config`, and the CLI."""

from __future__ import annotations

import concurrent.futures
import contextlib
import copy
import json
import math
import os
import pwd
import shutil
import socket
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import structlog
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context

from smagent.config import (
    MAX_CONFIG_BYTES,
    AwsProviderConfig,
    AzureProviderConfig,
    CommandAction,
    Config,
    ConfigError,
    ConfigIssue,
    EnvProviderConfig,
    FileProviderConfig,
    SignalName,
    SignalPidfileAction,
    SignalUnitAction,
    TemplateSpec,
    VaultApproleAuth,
    VaultProviderConfig,
    VaultTokenAuth,
    find_config_path,
    load_config,
)
from smagent.references import Namespace
from smagent.writer import resolve_group, resolve_owner
from tests.conftest import Run, Workspace, assert_no_canary, run_cli, special_file

FULL_CONFIG = """\
providers:
  aws-prod:
    type: aws
    region: us-east-1
    endpoint_url: http://localhost:5000
    profile: ops
    rate_limit: 5
    max_concurrency: 3
  kv:
    type: azure
    vault_url: https://myvault.vault.azure.net
    credential: client_secret
    tenant_id: tenant
    client_id: client
    client_secret_file: kv-secret
  vault:
    type: vault
    address: https://vault.example.com:8200
    namespace: team-a
    ca_cert: certs/ca.pem
    auth: {method: approle, role_id: role, secret_id_file: secret-id}
  vault-token:
    type: vault
    address: https://vault.example.com:8200
    auth: {method: token, token_file: token}
  local:
    type: file
    path: secrets.yaml
  env:
    type: env
    rate_limit: null

namespaces:
  mysql_src: {provider: aws-prod, secret: prod/mysql/src, stage: AWSPREVIOUS, refresh: 1m}
  azvault: {provider: kv}
  app: {provider: vault, secret: secret/data/app, version: 3}
  pgcreds: {provider: vault-token, secret: database/creds/app}
  files: {provider: local, version: v7}

defaults:
  refresh: 10m
  wait: {min: 1s, max: 5s}
  mode: "0640"
  fetch_timeout: 45s

templates:
  - source: templates/userlist.txt.j2
    destination: out/userlist.txt
    mode: "0600"
    owner: root
    group: 70
    on_change:
      - {signal: HUP, pidfile: run/pgbouncer.pid}
  - contents: "DATABASE_URL=x\\n"
    destination: out/app.env
    name: app-env
    on_change:
      - {signal: SIGUSR1, systemd_unit: app.service}
      - {command: [systemctl, reload, app.service], timeout: 10s}
"""

# a minimal valid head that error cases can extend
BASE = "providers: {local: {type: file, path: secrets.yaml}}\n"


def write_config(folder: Path, text: str, name: str = "smagent.yaml") -> Path:
    """Write `text` (dedented) as a config file in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def issues_of(path: Path) -> list[ConfigIssue]:
    """The issues `load_config` raises for `path` (fails when it loads)."""
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return info.value.issues


def only_issue(path: Path) -> ConfigIssue:
    issues = issues_of(path)
    assert 1 == len(issues), [str(i) for i in issues]
    return issues[0]


# --- a full valid config --------------------------------------------------------------------------


@pytest.fixture
def full_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Config:
    """FULL_CONFIG in tmp_path/etc/smagent, loaded from a different cwd by a relative path."""
    folder = tmp_path / "etc" / "smagent"
    (folder / "templates").mkdir(parents=True)
    (folder / "templates" / "userlist.txt.j2").write_text("{{ secrets.app.user }}\n")
    write_config(folder, FULL_CONFIG)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    return load_config(Path("../etc/smagent/smagent.yaml"))


def test_full_config_loads_every_provider_type(full_config: Config, tmp_path: Path) -> None:
    """Every provider type loads with its fields; file paths become absolute."""
    folder = tmp_path / "etc" / "smagent"
    providers = full_config.providers
    assert folder / "smagent.yaml" == full_config.path
    assert folder == full_config.folder
    assert ["aws-prod", "kv", "vault", "vault-token", "local", "env"] == list(providers)

    aws = providers["aws-prod"]
    assert isinstance(aws, AwsProviderConfig)
    assert ("us-east-1", "http://localhost:5000", "ops") == (
        aws.region,
        aws.endpoint_url,
        aws.profile,
    )
    assert (5.0, 3) == (aws.rate_limit, aws.max_concurrency)

    kv = providers["kv"]
    assert isinstance(kv, AzureProviderConfig)
    assert "https://myvault.vault.azure.net" == kv.vault_url
    assert "client_secret" == kv.credential
    assert str(folder / "kv-secret") == kv.client_secret_file

    vault = providers["vault"]
    assert isinstance(vault, VaultProviderConfig)
    assert "team-a" == vault.namespace
    assert str(folder / "certs" / "ca.pem") == vault.ca_cert
    assert isinstance(vault.auth, VaultApproleAuth)
    assert "role" == vault.auth.role_id
    assert str(folder / "secret-id") == vault.auth.secret_id_file

    vault_token = providers["vault-token"]
    assert isinstance(vault_token, VaultProviderConfig)
    assert isinstance(vault_token.auth, VaultTokenAuth)
    assert str(folder / "token") == vault_token.auth.token_file

    local = providers["local"]
    assert isinstance(local, FileProviderConfig)
    assert str(folder / "secrets.yaml") == local.path
    assert (20.0, 10) == (local.rate_limit, local.max_concurrency)

    env = providers["env"]
    assert isinstance(env, EnvProviderConfig)
    assert env.rate_limit is None


def test_full_config_namespaces(full_config: Config) -> None:
    """Namespaces keep provider, secret, version (as text), stage; refresh is kept apart."""
    assert {
        "mysql_src": Namespace("mysql_src", "aws-prod", "prod/mysql/src", None, "AWSPREVIOUS"),
        "azvault": Namespace("azvault", "kv"),
        "app": Namespace("app", "vault", "secret/data/app", "3"),
        "pgcreds": Namespace("pgcreds", "vault-token", "database/creds/app"),
        "files": Namespace("files", "local", None, "v7"),
    } == dict(full_config.namespaces)
    assert {"mysql_src": 60.0} == dict(full_config.namespace_refresh)


def test_full_config_defaults(full_config: Config) -> None:
    """Defaults read refresh, wait min/max, a quoted octal mode and fetch_timeout."""
    defaults = full_config.defaults
    assert 600.0 == defaults.refresh
    assert (1.0, 5.0) == (defaults.wait.min, defaults.wait.max)
    assert 0o640 == defaults.mode
    assert 45.0 == defaults.fetch_timeout


def test_full_config_templates(full_config: Config, tmp_path: Path) -> None:
    """Templates get absolute source/destination/pidfile, owner/group, modes and actions."""
    folder = tmp_path / "etc" / "smagent"
    userlist, app_env = full_config.templates

    assert "userlist.txt.j2" == userlist.name
    assert folder / "templates" / "userlist.txt.j2" == userlist.source
    assert userlist.contents is None
    assert folder / "out" / "userlist.txt" == userlist.destination
    assert 0o600 == userlist.mode
    assert ("root", 70) == (userlist.owner, userlist.group)
    assert (
        SignalPidfileAction(
            signal=SignalName("HUP"), pidfile=str(folder / "run" / "pgbouncer.pid")
        ),
    ) == (userlist.on_change)
    assert 1 == userlist.on_change[0].signal.number

    assert "app-env" == app_env.name
    assert app_env.source is None
    assert "DATABASE_URL=x\n" == app_env.contents
    assert folder / "out" / "app.env" == app_env.destination
    assert 0o640 == app_env.mode  # from defaults
    unit, command = app_env.on_change
    assert SignalUnitAction(signal=SignalName("USR1"), systemd_unit="app.service") == unit
    assert isinstance(command, CommandAction)
    assert ["systemctl", "reload", "app.service"] == command.command
    assert 10.0 == command.timeout


def test_rate_limit_defaults_per_provider_type(tmp_path: Path) -> None:
    """Unset, `rate_limit` is 50/s for aws (half BatchGetSecretValue's 100/s quota) and 20/s for
    the others, `max_concurrency` 25 for aws (25 batch calls: 500 secrets at once) and 10 for the
    others; an explicit value, null included, is kept."""
    path = write_config(
        tmp_path,
        """\
        providers:
          aws: {type: aws, region: eu-west-1}
          aws-set: {type: aws, region: eu-west-1, rate_limit: 7, max_concurrency: 4}
          aws-free: {type: aws, region: eu-west-1, rate_limit: null}
          kv: {type: azure, vault_url: "https://v.vault.azure.net"}
          vault: {type: vault, address: "https://vault:8200", auth: {method: token}}
          local: {type: file, path: secrets.yaml}
        templates: [{contents: x, destination: out/x}]
        """,
    )
    providers = load_config(path).providers
    limits = {name: (p.rate_limit, p.max_concurrency) for name, p in providers.items()}
    assert {
        "aws": (50.0, 25),
        "aws-set": (7.0, 4),
        "aws-free": (None, 25),
        "kv": (20.0, 10),
        "vault": (20.0, 10),
        "local": (20.0, 10),
    } == limits


def test_defaults_apply_when_absent(tmp_path: Path) -> None:
    """A config with no defaults section gets refresh 5m, no wait, mode 0600, fetch 30s."""
    path = write_config(tmp_path, BASE + "templates: [{contents: x, destination: out/x}]\n")
    config = load_config(path)
    assert (300.0, 0.0, 0.0, 0o600, 30.0) == (
        config.defaults.refresh,
        config.defaults.wait.min,
        config.defaults.wait.max,
        config.defaults.mode,
        config.defaults.fetch_timeout,
    )
    assert 0o600 == config.templates[0].mode


# --- durations ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("written", "seconds"),
    [
        ("500ms", 0.5),
        ("30s", 30.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("1h30m", 5400.0),
        ("0", 0.0),
        ("'0'", 0.0),
        ("0s", 0.0),
        ("1d", 86400.0),
        ("365d", 365 * 86400.0),
        ("1ms", 0.001),
    ],
)
def test_duration_parses(tmp_path: Path, written: str, seconds: float) -> None:
    """Durations with units (and a bare zero) parse to seconds."""
    path = write_config(tmp_path, BASE + f"defaults: {{wait: {{min: {written}}}}}\n")
    assert seconds == load_config(path).defaults.wait.min


@pytest.mark.parametrize("written", ["5", "5 minutes", "m5", "-1s", "''", "1m30", "true"])
def test_bad_duration_names_key_path(tmp_path: Path, written: str) -> None:
    """A duration without a unit, with words, misordered, negative or empty is an error."""
    path = write_config(
        tmp_path, BASE + f"namespaces: {{a: {{provider: local, refresh: {written}}}}}\n"
    )
    issue = only_issue(path)
    assert "namespaces.a.refresh" == issue.key
    assert "expected a duration such as 500ms, 30s, 5m or 1h" in issue.problem


def test_bad_duration_in_nested_defaults(tmp_path: Path) -> None:
    """A bad duration deep in defaults or an action names its full key path."""
    path = write_config(
        tmp_path,
        BASE
        + """\
defaults: {wait: {min: 1s, max: soon}}
templates:
  - {contents: x, destination: out/x, on_change: [{command: [reload], timeout: 5}]}
""",
    )
    assert ["defaults.wait.max", "templates[0].on_change[0].timeout"] == [
        i.key for i in issues_of(path)
    ]


# --- every error names file, key path and expectation ---------------------------------------------

ERRORS = [
    pytest.param(
        "foo: 1\n",
        "foo",
        "unknown key (allowed: providers, namespaces, defaults, templates, state_dir, "
        "metrics_file)",
        id="unknown-top-level-key",
    ),
    pytest.param(
        "providers: {a: {type: file, path: x, rate_limt: 2}}\n",
        "providers.a.rate_limt",
        "unknown key (allowed: max_concurrency, path, rate_limit, type)",
        id="unknown-provider-key",
    ),
    pytest.param(
        "providers: {v: {type: vault, address: 'https://v',"
        " auth: {method: token, tokn_file: t}}}\n",
        "providers.v.auth.tokn_file",
        "unknown key (allowed: method, token_file)",
        id="unknown-vault-auth-key",
    ),
    pytest.param(
        "defaults: {wait: {min: 1s, mx: 2s}}\n",
        "defaults.wait.mx",
        "unknown key (allowed: max, min)",
        id="unknown-defaults-key",
    ),
    pytest.param(
        BASE + "templates: [{contents: x, destination: o, on_change: [{signal: HUP, pidfile: p,"
        " extra: 1}]}]\n",
        "templates[0].on_change[0].extra",
        "unknown key (allowed: pidfile, signal)",
        id="unknown-action-key",
    ),
    pytest.param(
        "providers: {a: {type: file, path: x, rate_limit: fast}}\n",
        "providers.a.rate_limit",
        "expected a number or null, got 'fast'",
        id="wrong-type",
    ),
    pytest.param(
        "providers: {a: {type: file, path: x, max_concurrency: 1.5}}\n",
        "providers.a.max_concurrency",
        "expected a whole number, got 1.5",
        id="float-for-int",
    ),
    pytest.param(
        "providers: {a: {type: file}}\n",
        "providers.a.path",
        "required key is missing",
        id="missing-required-key",
    ),
    pytest.param(
        "providers: {a: {path: x}}\n",
        "providers.a.type",
        "required key is missing (aws|azure|vault|file|env|arcion)",
        id="missing-provider-type",
    ),
    pytest.param(
        "providers: {a: {type: s3}}\n",
        "providers.a.type",
        "expected one of aws, azure, vault, file, env, arcion, got 's3'",
        id="unknown-provider-type",
    ),
    pytest.param(
        BASE + "namespaces: {n: {provider: aws}}\n",
        "namespaces.n.provider",
        "unknown provider 'aws' (providers: local)",
        id="namespace-unknown-provider",
    ),
    pytest.param(
        "providers: {a.b: {type: env}}\n",
        "providers.a.b",
        "names may hold letters, digits, '_' and '-'",
        id="bad-provider-name",
    ),
    pytest.param(
        "defaults: {mode: 0640}\n",
        "defaults.mode",
        'write the mode as a quoted octal string such as "0640"',
        id="unquoted-octal-mode",
    ),
    pytest.param(
        BASE + "templates: [{contents: x, destination: o, mode: 640}]\n",
        "templates[0].mode",
        'write the mode as a quoted octal string such as "0640"',
        id="unquoted-decimal-mode",
    ),
    pytest.param(
        BASE + "templates: [{contents: x, destination: o, mode: '0999'}]\n",
        "templates[0].mode",
        "expected a quoted octal mode such as \"0640\", got '0999'",
        id="non-octal-mode",
    ),
    pytest.param(
        BASE
        + "templates: [{contents: x, destination: o, on_change: [{signal: HUPP, pidfile: p}]}]\n",
        "templates[0].on_change[0].signal",
        "expected a signal name such as HUP, USR1 or TERM, got 'HUPP'",
        id="bad-signal",
    ),
    pytest.param(
        BASE + "templates: [{source: a.j2, contents: x, destination: o}]\n",
        "templates[0]",
        "give exactly one of `source` (a template file) or `contents` (inline)",
        id="source-and-contents",
    ),
    pytest.param(
        BASE + "templates: [{destination: o}]\n",
        "templates[0]",
        "give exactly one of `source` (a template file) or `contents` (inline)",
        id="neither-source-nor-contents",
    ),
    pytest.param(
        BASE + "templates: [{source: nope.j2, destination: o}]\n",
        "templates[0].source",
        "template file not found: ",
        id="missing-template-source",
    ),
    pytest.param(
        BASE + "templates: [{contents: a, destination: o}, {contents: b, destination: ./o,"
        " name: other}]\n",
        "templates[1].destination",
        "is also the destination of templates[0]",
        id="duplicate-destination",
    ),
    pytest.param(
        BASE + "templates: [{contents: a, destination: o, name: z}, {contents: b, destination: p,"
        " name: z}]\n",
        "templates[1].name",
        "template name 'z' is also the name of templates[0]; set `name:` on one of them",
        id="duplicate-template-name",
    ),
    pytest.param(
        BASE + "templates: [{contents: a, destination: out/}]\n",
        "templates[0].destination",
        "is a folder; name the file to write",
        id="destination-is-folder",
    ),
    pytest.param(
        BASE + "templates: {a: 1}\n",
        "templates",
        "expected a list, got a mapping",
        id="templates-not-a-list",
    ),
    pytest.param(
        "providers: [local]\n",
        "providers",
        "expected a mapping, got a list",
        id="providers-not-a-mapping",
    ),
    pytest.param(
        "providers:\n  a: {type: env}\n  b: {type: env}\n  a: {type: file, path: x}\n",
        "line 4, column 3",
        "invalid YAML: duplicate key 'a'",
        id="duplicate-yaml-key",
    ),
    pytest.param(
        "providers: {}\nnamespaces: {}\ntemplates: [a, b\n",
        "line 4, column 1",
        "expected ',' or ']'",
        id="invalid-yaml",
    ),
    pytest.param(
        "- providers\n- templates\n",
        "",
        "expected a mapping at the top, got a list",
        id="top-level-list",
    ),
    pytest.param(
        "providers: {a: {type: file, path: x, rate_limit: 0}}\n",
        "providers.a.rate_limit",
        "expected a number above 0 (or null for no limit)",
        id="rate-limit-zero",
    ),
    pytest.param(
        "providers: {a: {type: file, path: x, rate_limit: -2}}\n",
        "providers.a.rate_limit",
        "expected a number above 0 (or null for no limit)",
        id="rate-limit-negative",
    ),
    pytest.param(
        "providers: {a: {type: file, path: x, max_concurrency: 0}}\n",
        "providers.a.max_concurrency",
        "expected a whole number from 1 to 1000",
        id="max-concurrency-zero",
    ),
    pytest.param(
        BASE + "templates: [{contents: x, destination: o, on_change: [{signal: HUP}]}]\n",
        "templates[0].on_change[0]",
        "expected {signal: NAME, pidfile: PATH}, {signal: NAME, systemd_unit: UNIT} "
        "or {command: [ARGV...], timeout: DURATION}",
        id="action-without-shape",
    ),
    pytest.param(
        BASE + "templates: [{contents: x, destination: o, on_change: [reload]}]\n",
        "templates[0].on_change[0]",
        "expected a mapping, got 'reload'",
        id="action-not-a-mapping",
    ),
    pytest.param(
        BASE + "templates: [{contents: x, destination: o, on_change: [{command: []}]}]\n",
        "templates[0].on_change[0].command",
        "expected a non-empty list of arguments",
        id="empty-command",
    ),
    pytest.param(
        "defaults: {fetch_timeout: 0s}\n",
        "defaults.fetch_timeout",
        "expected a duration above 0",
        id="fetch-timeout-zero",
    ),
    pytest.param(
        "defaults: {fetch_timeout: 0}\n",
        "defaults.fetch_timeout",
        "expected a duration above 0",
        id="fetch-timeout-bare-zero",
    ),
    pytest.param(
        BASE + "templates: [{contents: x, destination: o, on_change: [{command: [reload],"
        " timeout: 0s}]}]\n",
        "templates[0].on_change[0].timeout",
        "expected a duration above 0",
        id="command-timeout-zero",
    ),
    pytest.param(
        BASE + "templates: [{contents: x, destination: o, owner: smagent-no-such-user}]\n",
        "templates[0].owner",
        "owner 'smagent-no-such-user': no such user",
        id="unknown-owner",
    ),
    pytest.param(
        BASE + "templates: [{contents: x, destination: o, group: smagent-no-such-group}]\n",
        "templates[0].group",
        "group 'smagent-no-such-group': no such group",
        id="unknown-group",
    ),
    pytest.param(
        BASE + "templates: [{contents: x, destination: o, owner: -1}]\n",
        "templates[0].owner",
        "owner -1: ids cannot be negative",
        id="negative-owner-id",
    ),
    # -- YAML that PyYAML reads but a config cannot use (defect class 6 and 9) --
    pytest.param(
        "? [a, b]\n: x\n",
        "line 1, column 3",
        "invalid YAML: a key must be plain text, not a list (a YAML complex key)",
        id="complex-key",
    ),
    pytest.param(
        "providers: {? {a: 1} : {type: env}}\n",
        "line 1, column 15",
        "a key must be plain text, not a mapping",
        id="complex-mapping-key",
    ),
    pytest.param(
        "providers: {1: {type: env}}\n",
        "providers.1",
        "names may hold letters, digits",
        id="int-provider-name",
    ),
    pytest.param(
        "providers: {~: {type: env}}\n",
        "providers.~",
        "names may hold letters, digits",
        id="null-provider-name",
    ),
    pytest.param(
        "providers: {a: {type: env}}\nnamespaces: {2: {provider: a}}\n",
        "namespaces.2",
        "names may hold letters, digits",
        id="int-namespace-name",
    ),
    pytest.param(
        "yes: 1\n",
        "yes",
        "unknown key (allowed: providers, namespaces, defaults, templates, state_dir, "
        "metrics_file)",
        id="bool-top-level-key",
    ),
    pytest.param(
        "providers: {a: {type: env, true: 1}}\n",
        "providers.a.true",
        "unknown key (allowed: max_concurrency, rate_limit, type)",
        id="bool-field-key",
    ),
    pytest.param(
        "providers: " + "[" * 500 + "]" * 500 + "\n",
        "line 1, column 75",
        "invalid YAML: nested more than 64 levels deep",
        id="500-deep",
    ),
    pytest.param(
        "x-a: &a ["
        + ", ".join(["lol"] * 10)
        + "]\n"
        + "".join(
            f"x-{n}: &{n} [{', '.join([f'*{p}'] * 10)}]\n"
            for p, n in zip("abcdef", "bcdefg", strict=True)
        ),
        "line 6, column 6",
        "invalid YAML: aliases expand this to more than 1000000 values (an alias bomb?)",
        id="billion-laughs",
    ),
    pytest.param(
        "x-loop: &loop {a: *loop}\n",
        "line 1, column 9",
        "invalid YAML: an alias refers to a node that contains it",
        id="cyclic-alias",
    ),
    pytest.param(
        "providers: {}\n---\nproviders: {}\n",
        "line 2, column 1",
        "invalid YAML: a config file holds one YAML document",
        id="two-documents",
    ),
    pytest.param(
        "providers: {a: {type: env, max_concurrency: !!int ten}}\n",
        "line 1, column 45",
        "invalid YAML: cannot read this value as int",
        id="bad-int-tag",
    ),
    pytest.param(
        "providers: {a: {type: env}}\n"
        "namespaces: {n: {provider: a, stage: !!timestamp 2001-02-30}}\n",
        "line 2, column 38",
        "invalid YAML: !!timestamp is not used in a config",
        id="timestamp-tag",
    ),
    pytest.param(
        BASE + "templates: [{contents: x, destination: o, on_change: [{command: !!set {a, b}}]}]\n",
        "line 2, column 65",
        "invalid YAML: !!set is not used in a config",
        id="set-tag",
    ),
    pytest.param(
        "providers: !!python/object/apply:os.system [true]\n",
        "line 1, column 12",
        "could not determine a constructor for the tag",
        id="python-tag",
    ),
    pytest.param(
        BASE + "templates: [{contents: !!binary aGVsbG8=, destination: o}]\n",
        "templates[0].contents",
        "expected a string or null, got binary data (!!binary)",
        id="binary-contents",
    ),
    pytest.param(
        "x-t: &t {type: env}\nproviders: {a: {<<: *t}, b: {<<: *t, type: file}}\n",
        "providers.b.path",
        "required key is missing",
        id="merged-provider-missing-key",
    ),
    pytest.param(
        "x-t: &t {type: env, rate_limt: 1}\nproviders: {a: {<<: *t}}\n",
        "providers.a.rate_limt",
        "unknown key",
        id="merged-unknown-key",
    ),
    pytest.param(
        "providers: {a: {<<: [1], type: env}}\n",
        "line 1, column 22",
        "expected a mapping for merging, but found scalar",
        id="merge-of-scalar",
    ),
    pytest.param(
        "x-t: &t {type: env}\nproviders: {a: {<<: *t, type: env, type: file}}\n",
        "line 2, column 36",
        "invalid YAML: duplicate key 'type' (first at line 2)",
        id="duplicate-after-merge",
    ),
    pytest.param("a: \x07\n", "line 1, column 4", "character U+0007", id="control-char"),
    pytest.param(
        "a:\n\tb: 1\n",
        "line 2, column 1",
        "invalid YAML: found a tab that cannot start any token (YAML indents with spaces)",
        id="tab-indent",
    ),
    pytest.param(
        "providers: {a: *nowhere}\n", "line 1, column 16", "undefined alias", id="undefined-alias"
    ),
    # -- owner and group ids (defect class 6) --
    pytest.param(
        BASE + "templates: [{contents: x, destination: o, owner: 4294967296}]\n",
        "templates[0].owner",
        "owner 4294967296: ids go from 0 to 4294967294",
        id="owner-2^32",
    ),
    pytest.param(
        BASE + "templates: [{contents: x, destination: o, owner: 4294967295}]\n",
        "templates[0].owner",
        "owner 4294967295: ids go from 0 to 4294967294",
        id="owner-2^32-1-means-no-change",
    ),
    pytest.param(
        BASE + "templates: [{contents: x, destination: o, group: 18446744073709551616}]\n",
        "templates[0].group",
        "group 18446744073709551616: ids go from 0 to 4294967294",
        id="group-2^64",
    ),
    pytest.param(
        BASE + "templates: [{contents: x, destination: o, group: '99999999999999999999'}]\n",
        "templates[0].group",
        "group '99999999999999999999': ids go from 0 to 4294967294",
        id="group-digit-string-too-big",
    ),
    pytest.param(
        BASE + "templates: [{contents: x, destination: o, group: -5}]\n",
        "templates[0].group",
        "group -5: ids cannot be negative",
        id="negative-group-id",
    ),
    pytest.param(
        BASE + "templates: [{contents: x, destination: o, owner: ''}]\n",
        "templates[0].owner",
        "expected a non-empty string, got ''",
        id="empty-owner",
    ),
    pytest.param(
        BASE + 'templates: [{contents: x, destination: o, owner: "root\\0x"}]\n',
        "templates[0].owner",
        "a NUL byte (\\0) is not allowed here",
        id="nul-in-owner",
    ),
    pytest.param(
        BASE + "templates: [{contents: x, destination: o, owner: 1.5}]\n",
        "templates[0].owner",
        "expected a whole number or a string or null, got 1.5",
        id="float-owner",
    ),
    pytest.param(
        BASE + "templates: [{contents: x, destination: o, group: true}]\n",
        "templates[0].group",
        "expected a whole number or a string or null, got True",
        id="bool-group",
    ),
    # -- paths the OS cannot take (defect class 6) --
    pytest.param(
        BASE + f"templates: [{{contents: x, destination: {'n' * 256}}}]\n",
        "templates[0].destination",
        f"the name '{'n' * 56}... is 256 bytes long; the limit is 255",
        id="256-byte-file-name",
    ),
    pytest.param(
        BASE + f"templates: [{{contents: x, destination: out/{'é' * 128}}}]\n",
        "templates[0].destination",
        "is 256 bytes long; the limit is 255",
        id="256-byte-utf8-name",
    ),
    pytest.param(
        BASE + f"templates: [{{contents: x, destination: {'/'.join(['d' * 250] * 17)}}}]\n",
        "templates[0].destination",
        "bytes long; the limit is 4095",
        id="path-over-4095-bytes",
    ),
    pytest.param(
        BASE + f"templates: [{{source: {'s' * 300}.j2, destination: o}}]\n",
        "templates[0].source",
        "is 303 bytes long; the limit is 255",
        id="long-source-name",
    ),
    pytest.param(
        BASE + 'templates: [{contents: x, destination: "out/a\\0b"}]\n',
        "templates[0].destination",
        "a NUL byte (\\0) is not allowed here",
        id="nul-in-destination",
    ),
    pytest.param(
        BASE + 'templates: [{source: "a\\0.j2", destination: o}]\n',
        "templates[0].source",
        "a NUL byte (\\0) is not allowed here",
        id="nul-in-source",
    ),
    pytest.param(
        'providers: {local: {type: file, path: "s\\0"}}\n',
        "providers.local.path",
        "a NUL byte (\\0) is not allowed here",
        id="nul-in-provider-path",
    ),
    pytest.param(
        "providers: {v: {type: vault, address: 'https://v', auth: {method: token, token_file: "
        + "t" * 256
        + "}}}\n",
        "providers.v.auth.token_file",
        "is 256 bytes long",
        id="long-token-file-name",
    ),
    pytest.param(
        BASE + "templates: [{contents: x, destination: o,"
        ' on_change: [{signal: HUP, pidfile: "p\\0"}]}]\n',
        "templates[0].on_change[0].pidfile",
        "a NUL byte (\\0) is not allowed here",
        id="nul-in-pidfile",
    ),
    pytest.param(
        BASE + 'templates: [{contents: x, destination: "\\ud800"}]\n',
        "line 2, column 43",
        "invalid YAML: found invalid Unicode character escape code",
        id="lone-surrogate-destination",
    ),
    pytest.param(
        BASE + 'templates: [{contents: "a\\udfff", destination: o}]\n',
        "line 2, column 28",
        "invalid YAML: found invalid Unicode character escape code",
        id="lone-surrogate-contents",
    ),
    pytest.param(
        BASE + "templates: [{contents: x, destination: ''}]\n",
        "templates[0].destination",
        "expected a non-empty string, got ''",
        id="empty-destination",
    ),
    pytest.param(
        BASE + "templates: [{source: '  ', destination: o}]\n",
        "templates[0].source",
        "expected a non-empty string, got '  '",
        id="blank-source",
    ),
    pytest.param(
        "providers: {local: {type: file, path: ''}}\n",
        "providers.local.path",
        "expected a non-empty string, got ''",
        id="empty-provider-path",
    ),
    pytest.param(
        BASE + "templates: [{contents: x, destination: /dev/null}]\n",
        "templates[0].destination",
        "/dev/null is a character device; smagent only replaces regular files",
        id="destination-is-a-device",
    ),
    pytest.param(
        BASE + "templates: [{contents: x, destination: smagent.yaml}]\n",
        "templates[0].destination",
        "is the config file; writing it would replace it",
        id="destination-is-the-config",
    ),
    pytest.param(
        BASE + "templates: [{contents: x, destination: ./out/../secrets.yaml}]\n",
        "templates[0].destination",
        "is the file of providers.local.path; writing it would replace it",
        id="destination-is-the-secrets-file",
    ),
    pytest.param(
        BASE + "templates: [{contents: x, destination: smagent.yaml/x}]\n",
        "templates[0].destination",
        "a part of the path that should be a folder is a file",
        id="destination-under-a-file",
    ),
    pytest.param(
        BASE + "templates: [{source: smagent.yaml/x.j2, destination: o}]\n",
        "templates[0].source",
        "a part of the path that should be a folder is a file",
        id="source-under-a-file",
    ),
    pytest.param(
        BASE + "templates: [{source: /dev/zero, destination: o}]\n",
        "templates[0].source",
        "/dev/zero is a character device; a template must be a regular file",
        id="source-is-a-device",
    ),
    pytest.param(
        BASE + "templates: [{source: /tmp, destination: o}]\n",
        "templates[0].source",
        "/tmp is a folder; a template must be a regular file",
        id="source-is-a-folder",
    ),
    # -- other strings --
    pytest.param(
        BASE + "templates: [{contents: x, destination: o, on_change: [{command: ['', x]}]}]\n",
        "templates[0].on_change[0].command[0]",
        "expected the program to run, got an empty string",
        id="empty-program",
    ),
    pytest.param(
        BASE + 'templates: [{contents: x, destination: o, on_change: [{command: [a, "b\\0"]}]}]\n',
        "templates[0].on_change[0].command[1]",
        "a NUL byte (\\0) is not allowed here",
        id="nul-in-argument",
    ),
    pytest.param(
        BASE + "templates: [{contents: x, destination: o,"
        " on_change: [{signal: HUP, systemd_unit: ''}]}]\n",
        "templates[0].on_change[0].systemd_unit",
        "expected a non-empty string, got ''",
        id="empty-unit",
    ),
    pytest.param(
        BASE
        + "templates: [{contents: x, destination: o, on_change: [{signal: '', pidfile: p}]}]\n",
        "templates[0].on_change[0].signal",
        "expected a signal name such as HUP, USR1 or TERM, got ''",
        id="empty-signal",
    ),
    pytest.param(
        BASE + 'templates: [{contents: x, destination: o, name: "a\\nb"}]\n',
        "templates[0].name",
        "a control character (a line break, a tab...) is not allowed here: 'a\\nb'",
        id="line-break-in-name",
    ),
    pytest.param(
        BASE + 'templates: [{contents: x, destination: "out/a\\tb"}]\n',
        "templates[0].destination",
        "a control character (a line break, a tab...) is not allowed here: 'out/a\\tb'",
        id="tab-in-destination",
    ),
    pytest.param(
        BASE + "templates: [{contents: x, destination: o, name: ''}]\n",
        "templates[0].name",
        "expected a non-empty string, got ''",
        id="empty-template-name",
    ),
    pytest.param(
        BASE + "namespaces: {n: {provider: local, secret: ''}}\n",
        "namespaces.n.secret",
        "expected a non-empty string, got ''",
        id="empty-secret",
    ),
    pytest.param(
        BASE + 'namespaces: {n: {provider: local, stage: "A\\0"}}\n',
        "namespaces.n.stage",
        "a NUL byte (\\0) is not allowed here",
        id="nul-in-stage",
    ),
    pytest.param(
        "providers: {a: {type: aws, region: ''}}\n",
        "providers.a.region",
        "expected a non-empty string, got ''",
        id="empty-region",
    ),
    pytest.param(
        "providers: {a: {type: vault, address: ' ', auth: {method: token}}}\n",
        "providers.a.address",
        "expected a non-empty string, got ' '",
        id="blank-vault-address",
    ),
    pytest.param(
        "providers: {a: {type: [file]}}\n",
        "providers.a.type",
        "expected one of aws, azure, vault, file, env, arcion, got a list",
        id="provider-type-list",
    ),
    # -- numbers --
    pytest.param(
        "providers: {a: {type: env, rate_limit: .nan}}\n",
        "providers.a.rate_limit",
        "expected a number above 0 (or null for no limit)",
        id="rate-limit-nan",
    ),
    pytest.param(
        "providers: {a: {type: env, rate_limit: .inf}}\n",
        "providers.a.rate_limit",
        "expected a number above 0 (or null for no limit)",
        id="rate-limit-inf",
    ),
    pytest.param(
        f"providers: {{a: {{type: env, rate_limit: {10**400}}}}}\n",
        "providers.a.rate_limit",
        "(out of range)",
        id="rate-limit-400-digits",
    ),
    pytest.param(
        f"providers: {{a: {{type: env, max_concurrency: {2**64}}}}}\n",
        "providers.a.max_concurrency",
        "expected a whole number from 1 to 1000",
        id="max-concurrency-2^64",
    ),
    pytest.param(
        "providers: {a: {type: env, max_concurrency: 1001}}\n",
        "providers.a.max_concurrency",
        "expected a whole number from 1 to 1000",
        id="max-concurrency-1001",
    ),
    pytest.param(
        "providers: {a: {type: env, max_concurrency: true}}\n",
        "providers.a.max_concurrency",
        "expected a whole number, got True",
        id="max-concurrency-bool",
    ),
    pytest.param(
        BASE + f"namespaces: {{n: {{provider: local, version: {2**64}}}}}\n",
        "namespaces.n.version",
        "expected a version id or a number from 0 to 2^63-1",
        id="version-2^64",
    ),
    pytest.param(
        BASE + "namespaces: {n: {provider: local, version: -1}}\n",
        "namespaces.n.version",
        "expected a version id or a number from 0 to 2^63-1",
        id="version-negative",
    ),
    pytest.param(
        BASE + "namespaces: {n: {provider: local, version: [1]}}\n",
        "namespaces.n.version",
        "expected a whole number or a string or null, got a list",
        id="version-list",
    ),
    # -- durations and modes --
    pytest.param(
        "defaults: {refresh: 99999999999h}\n",
        "defaults.refresh",
        "expected a duration of at most 365d, got '99999999999h'",
        id="duration-99999999999h",
    ),
    pytest.param(
        "defaults: {fetch_timeout: " + "9" * 400 + "s}\n",
        "defaults.fetch_timeout",
        "expected a duration of at most 365d",
        id="duration-400-digits",
    ),
    pytest.param(
        "defaults: {refresh: 366d}\n",
        "defaults.refresh",
        "expected a duration of at most 365d, got '366d'",
        id="duration-366d",
    ),
    pytest.param(
        "defaults: {wait: {min: 0.0001s}}\n",
        "defaults.wait.min",
        "expected a duration of at least 1ms (or 0), got '0.0001s'",
        id="duration-below-1ms",
    ),
    pytest.param(
        "defaults: {refresh: 0s}\n",
        "defaults.refresh",
        "expected a duration above 0",
        id="refresh-zero",
    ),
    pytest.param(
        BASE + "namespaces: {n: {provider: local, refresh: 0}}\n",
        "namespaces.n.refresh",
        "expected a duration above 0",
        id="namespace-refresh-zero",
    ),
    pytest.param(
        "defaults: {wait: {min: 10s, max: 5s}}\n",
        "defaults.wait",
        "min (10s) is above max (5s)",
        id="wait-min-above-max",
    ),
    pytest.param(
        "defaults: {fetch_timeout: -1s}\n",
        "defaults.fetch_timeout",
        "expected a duration such as 500ms, 30s, 5m or 1h, got '-1s'",
        id="duration-negative",
    ),
    pytest.param(
        "defaults: {mode: '9999'}\n",
        "defaults.mode",
        "expected a quoted octal mode such as \"0640\", got '9999'",
        id="mode-9999",
    ),
    pytest.param(
        "defaults: {mode: '07777'}\n",
        "defaults.mode",
        "expected a quoted octal mode such as \"0640\", got '07777'",
        id="mode-07777-setuid-bits",
    ),
    pytest.param(
        "defaults: {mode: ''}\n",
        "defaults.mode",
        "expected a quoted octal mode such as \"0640\", got ''",
        id="mode-empty",
    ),
    # -- provider fields that must agree, URLs a client can use --
    pytest.param(
        "providers: {kv: {type: azure, vault_url: 'http://kv.vault.azure.net'}}\n",
        "providers.kv.vault_url",
        "expected an https:// URL with a host name, got 'http://kv.vault.azure.net'",
        id="azure-url-not-https",
    ),
    pytest.param(
        "providers: {v: {type: vault, address: 'vault:8200', auth: {method: token}}}\n",
        "providers.v.address",
        "expected an https:// or http:// URL with a host name, got 'vault:8200'",
        id="vault-address-without-scheme",
    ),
    pytest.param(
        "providers: {v: {type: vault, address: 'https://v:99999', auth: {method: token}}}\n",
        "providers.v.address",
        "expected an https:// or http:// URL, got 'https://v:99999'",
        id="vault-address-bad-port",
    ),
    pytest.param(
        "providers: {a: {type: aws, endpoint_url: 'https://'}}\n",
        "providers.a.endpoint_url",
        "expected an https:// or http:// URL with a host name, got 'https://'",
        id="aws-endpoint-without-host",
    ),
    pytest.param(
        "providers: {kv: {type: azure, vault_url: 'https://kv', credential: client_secret,"
        " tenant_id: t, client_id: c}}\n",
        "providers.kv.client_secret_file",
        "required with credential: client_secret",
        id="azure-client-secret-without-file",
    ),
    pytest.param(
        "providers: {kv: {type: azure, vault_url: 'https://kv', client_secret_file: s}}\n",
        "providers.kv.client_secret_file",
        "only used with credential: client_secret (this one is default)",
        id="azure-secret-file-unused",
    ),
    pytest.param(
        "providers: {v: {type: vault, address: 'https://v',"
        " auth: {method: approle, role_id: r, role_id_file: f}}}\n",
        "providers.v.auth",
        "give exactly one of `role_id` or `role_id_file`",
        id="approle-two-role-ids",
    ),
    pytest.param(
        "providers: {v: {type: vault, address: 'https://v', auth: {method: approle}}}\n",
        "providers.v.auth",
        "give exactly one of `role_id` or `role_id_file`",
        id="approle-no-role-id",
    ),
    pytest.param(
        BASE + "templates: [{contents: x, destination: run/app.pid,"
        " on_change: [{signal: HUP, pidfile: run/app.pid}]}]\n",
        "templates[0].destination",
        "is the pidfile of templates[0].on_change[0]; writing it would replace it",
        id="destination-is-a-pidfile",
    ),
    # -- section shapes --
    pytest.param(
        "defaults: []\n", "defaults", "expected a mapping, got a list", id="defaults-list"
    ),
    pytest.param("defaults: 0\n", "defaults", "expected a mapping, got 0", id="defaults-zero"),
    pytest.param(
        "templates: ''\n", "templates", "expected a list, got ''", id="templates-empty-string"
    ),
    pytest.param("namespaces: 7\n", "namespaces", "expected a mapping, got 7", id="namespaces-int"),
]


@pytest.mark.parametrize(("text", "key", "expected"), ERRORS)
def test_config_error_names_file_key_and_expectation(
    tmp_path: Path, text: str, key: str, expected: str
) -> None:
    """Each config mistake is one ConfigIssue naming the file, the key path and what was wanted."""
    path = write_config(tmp_path, text)
    issue = only_issue(path)
    assert (path, key) == (issue.file, issue.key)
    assert expected in issue.problem
    shown = str(issue)
    assert shown.startswith(f"{path}: {key}: " if key else f"{path}: ")
    assert expected in shown


def test_missing_config_file(tmp_path: Path) -> None:
    """A config path with no file is a ConfigError saying so, with the absolute path."""
    path = tmp_path / "absent.yaml"
    issue = only_issue(path)
    assert (path, "", "config file not found") == (issue.file, issue.key, issue.problem)


@pytest.mark.parametrize("text", ["", "\n", "# nothing configured yet\n"])
def test_empty_config_is_valid(tmp_path: Path, text: str) -> None:
    """An empty (or comment-only) file is a valid config with nothing to do."""
    config = load_config(write_config(tmp_path, text))
    assert ((), {}, {}) == (config.templates, dict(config.providers), dict(config.namespaces))


def test_all_problems_reported_at_once(tmp_path: Path) -> None:
    """Several problems in one file all come back in a single ConfigError."""
    path = write_config(
        tmp_path,
        """\
        colour: blue
        providers:
          a: {type: file, path: x, rate_limit: fast}
          b: {type: s3}
        namespaces:
          n: {provider: a, refresh: 5}
        defaults: {mode: 0640}
        templates:
          - {destination: out/x}
          - {contents: y, destination: out/y, on_change: [{command: []}]}
        """,
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    keys = [issue.key for issue in info.value.issues]
    assert [
        "colour",
        "providers.a.rate_limit",
        "providers.b.type",
        "namespaces.n.refresh",
        "defaults.mode",
        "templates[0]",
        "templates[1].on_change[0].command",
    ] == keys
    assert all(path == issue.file for issue in info.value.issues)
    assert len(keys) == len(str(info.value).splitlines())


def test_empty_command_with_zero_timeout_reports_both(tmp_path: Path) -> None:
    """A command action that is empty and has a zero timeout gives one issue for each."""
    path = write_config(
        tmp_path,
        BASE
        + "templates: [{contents: x, destination: o, on_change: [{command: [], timeout: 0s}]}]\n",
    )
    assert [
        ("templates[0].on_change[0].command", "expected a non-empty list of arguments"),
        ("templates[0].on_change[0].timeout", "expected a duration above 0"),
    ] == [(i.key, i.problem) for i in issues_of(path)]


def test_unknown_owner_and_group_are_both_reported(tmp_path: Path) -> None:
    """A template with an unknown owner and an unknown group gets an issue at each key path."""
    path = write_config(
        tmp_path,
        BASE + "templates: [{contents: x, destination: o, owner: smagent-no-such-user,"
        " group: smagent-no-such-group}]\n",
    )
    assert [
        ("templates[0].owner", "owner 'smagent-no-such-user': no such user"),
        ("templates[0].group", "group 'smagent-no-such-group': no such group"),
    ] == [(i.key, i.problem) for i in issues_of(path)]


@pytest.mark.parametrize(
    ("written", "expected"),
    [("root", "root"), ("0", 0), ("'0'", "0"), ("4000000", 4000000)],
    ids=["name", "id", "digit-string", "id-without-account"],
)
def test_known_owner_and_group_and_numeric_ids_load_as_written(
    tmp_path: Path, written: str, expected: str | int
) -> None:
    """`root`, 0 and any other numeric id are accepted for owner and group and kept as written."""
    path = write_config(
        tmp_path,
        BASE
        + f"templates: [{{contents: x, destination: o, owner: {written}, group: {written}}}]\n",
    )
    (template,) = load_config(path).templates
    assert (expected, expected) == (template.owner, template.group)


def test_namespace_of_invalid_provider_not_reported_again(tmp_path: Path) -> None:
    """A namespace using a declared but invalid provider adds no 'unknown provider' issue."""
    path = write_config(
        tmp_path,
        """\
        providers: {local: {type: file, path: x, rate_limit: fast}}
        namespaces: {db: {provider: local, secret: prod/db}, other: {provider: nope}}
        """,
    )
    assert [
        ("providers.local.rate_limit", "expected a number or null, got 'fast'"),
        ("namespaces.other.provider", "unknown provider 'nope' (providers: local)"),
    ] == [(i.key, i.problem) for i in issues_of(path)]


def test_every_problem_of_one_template_is_listed(tmp_path: Path) -> None:
    """Templates with several crash-class mistakes each: every one is reported, in one round."""
    path = write_config(
        tmp_path,
        BASE
        + f"""\
templates:
  - source: "{"s" * 256}"
    destination: "out/a\\0b"
    owner: 4294967296
    group: -1
    on_change: [{{command: ["", x]}}, {{signal: HUP, pidfile: ""}}]
  - {{contents: x, destination: /dev/null, mode: "07777"}}
""",
    )
    assert [
        ("templates[0].destination", "a NUL byte (\\0) is not allowed here"),
        ("templates[0].owner", "owner 4294967296: ids go from 0 to 4294967294"),
        ("templates[0].group", "group -1: ids cannot be negative"),
        ("templates[0].source", f"the name '{'s' * 56}... is 256 bytes long; the limit is 255"),
        (
            "templates[0].on_change[0].command[0]",
            "expected the program to run, got an empty string",
        ),
        ("templates[0].on_change[1].pidfile", "expected a non-empty string, got ''"),
        ("templates[1].mode", "expected a quoted octal mode such as \"0640\", got '07777'"),
        (
            "templates[1].destination",
            "/dev/null is a character device; smagent only replaces regular files",
        ),
    ] == [(i.key, i.problem) for i in issues_of(path)]


# --- the config file itself: regular, bounded, UTF-8 (defect class 4) -----------------------------


def within(seconds: float, call: Callable[[], Any]) -> Any:
    """`call()` in a worker thread; fails the test (not hangs it) if it takes longer.

    Used inside `special_file`, whose exit releases a reader stuck on a FIFO,
    so the thread of a failing run ends too.
    """
    pool = concurrent.futures.ThreadPoolExecutor(1)
    try:
        return pool.submit(call).result(timeout=seconds)
    except concurrent.futures.TimeoutError:
        pytest.fail(f"still running after {seconds}s: a blocking read?")
    finally:
        pool.shutdown(wait=False)


@pytest.mark.parametrize("kind", ["fifo", "folder"])
def test_config_that_is_a_fifo_or_folder_is_refused(tmp_path: Path, kind: str) -> None:
    """A FIFO (with no writer) or a folder as the config: an error at once, no hang."""
    with special_file(tmp_path / "smagent.yaml", kind) as path:
        issue = within(10, lambda: only_issue(path))
    expected = {"fifo": "a FIFO", "folder": "a folder"}[kind]
    assert ("", f"the config must be a regular file, not {expected}") == (issue.key, issue.problem)


@pytest.mark.parametrize(
    ("device", "kind"), [("/dev/zero", "a character device"), ("/dev/null", "a character device")]
)
def test_config_that_is_a_device_is_refused(device: str, kind: str) -> None:
    """/dev/zero (endless) and /dev/null as the config are refused, not read."""
    issue = only_issue(Path(device))
    assert (Path(device), f"the config must be a regular file, not {kind}") == (
        issue.file,
        issue.problem,
    )


def test_config_that_is_a_socket_is_refused(tmp_path: Path) -> None:
    """A UNIX socket as the config is named as one."""
    path = tmp_path / "s.sock"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))
        issue = only_issue(path)
    assert "the config must be a regular file, not a socket" == issue.problem


def test_config_symlink_to_a_regular_file_loads(tmp_path: Path) -> None:
    """A symlink to a real config (the /etc/alternatives style) is followed."""
    real = write_config(tmp_path / "real", BASE)
    link = tmp_path / "smagent.yaml"
    link.symlink_to(real)
    assert ["local"] == list(load_config(link).providers)


def test_config_over_1_mib_is_refused(tmp_path: Path) -> None:
    """A config larger than 1 MiB is refused before it is parsed."""
    path = tmp_path / "smagent.yaml"
    path.write_text(BASE + "#" * MAX_CONFIG_BYTES)
    assert "config file is larger than 1 MiB" == only_issue(path).problem


def test_config_of_exactly_1_mib_is_read(tmp_path: Path) -> None:
    """The limit itself is allowed."""
    path = tmp_path / "smagent.yaml"
    path.write_text(BASE + "#" * (MAX_CONFIG_BYTES - len(BASE) - 1) + "\n")
    assert MAX_CONFIG_BYTES == path.stat().st_size
    assert ["local"] == list(load_config(path).providers)


def test_config_not_utf8_names_the_line(tmp_path: Path) -> None:
    """Bytes that are not UTF-8 are an error naming their line."""
    path = tmp_path / "smagent.yaml"
    path.write_bytes(BASE.encode() + b"# caf\xe9\n")
    assert "not UTF-8 text (line 2)" == only_issue(path).problem


def test_config_with_bom_and_crlf_loads(tmp_path: Path) -> None:
    """A UTF-8 byte-order mark and Windows line ends (a file saved by Notepad) are fine."""
    path = tmp_path / "smagent.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + BASE.replace("\n", "\r\n").encode())
    assert ["local"] == list(load_config(path).providers)


def test_config_path_with_a_256_byte_name_is_an_error(tmp_path: Path) -> None:
    """A --config name longer than the OS allows is an error, not a traceback."""
    issue = only_issue(tmp_path / ("c" * 256))
    assert "cannot read config file: file name too long" == issue.problem


def test_merge_keys_in_config_load_with_overrides(tmp_path: Path) -> None:
    """Anchors under x- keys and `<<:` merges work in providers, namespaces and templates."""
    (tmp_path / "t.j2").write_text("x\n")
    path = write_config(
        tmp_path,
        """\
        x-limits: &limits {rate_limit: 5, max_concurrency: 2}
        x-template: &tpl
          source: t.j2
          mode: "0640"
          on_change: [{signal: HUP, pidfile: run/app.pid}]
        providers:
          a: {<<: *limits, type: env}
          b: {<<: *limits, type: file, path: s.yaml, rate_limit: 9}
        namespaces:
          one: &ns {provider: a, secret: x}
          two: {<<: *ns, secret: y}
        templates:
          - {<<: *tpl, destination: out/a, name: a}
          - <<: *tpl
            name: b
            destination: out/b
            mode: "0600"
        """,
    )
    config = load_config(path)
    assert [(5.0, 2), (9.0, 2)] == [
        (p.rate_limit, p.max_concurrency) for p in config.providers.values()
    ]
    assert ["x", "y"] == [ns.secret for ns in config.namespaces.values()]
    first, second = config.templates
    assert (0o640, 0o600) == (first.mode, second.mode)
    assert first.on_change == second.on_change
    assert ("a", "b") == (first.destination.name, second.destination.name)


def test_unknown_top_level_key_still_an_error_but_x_keys_are_free(tmp_path: Path) -> None:
    """`x-anything` at the top is a place for anchors; any other unknown key is an error."""
    path = write_config(tmp_path, "x-notes: {any: thing}\nx-list: [1, 2]\nxnotes: 1\n")
    assert "xnotes" == only_issue(path).key


# --- paths checked against this host (defect class 6) ---------------------------------------------


@contextmanager
def as_user_without_privileges() -> Iterator[None]:
    """Run the body with permission checks on: as nobody when root (euid only, restored after)."""
    if os.geteuid() != 0:
        yield
        return
    os.seteuid(pwd.getpwnam("nobody").pw_uid)
    try:
        yield
    finally:
        os.seteuid(0)


@pytest.fixture
def public_folder() -> Iterator[Path]:
    """A folder every user can reach (pytest's tmp_path is private to root)."""
    folder = Path(tempfile.mkdtemp(prefix="smagent-test-"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        for locked in folder.rglob("*"):
            if locked.is_dir() and not locked.is_symlink():
                locked.chmod(0o755)
        shutil.rmtree(folder)


@pytest.mark.parametrize("key", ["source", "destination"])
def test_path_under_unsearchable_folder_is_a_config_error(public_folder: Path, key: str) -> None:
    """A source or destination under a chmod 000 folder: a ConfigIssue saying so, no traceback."""
    locked = public_folder / "locked"
    locked.mkdir()
    (locked / "t.j2").write_text("x\n")
    (public_folder / "t.j2").write_text("x\n")
    locked.chmod(0)
    spec = {"source": "t.j2", "destination": "out/x", key: "locked/t.j2"}
    path = write_config(public_folder, f"templates: [{json.dumps(spec)}]\n")
    path.chmod(0o644)
    with as_user_without_privileges(), structlog.testing.capture_logs():
        issue = only_issue(path)
    assert f"templates[0].{key}" == issue.key
    assert "permission denied (a folder on the way is not searchable" in issue.problem


def test_unreadable_config_is_a_config_error(public_folder: Path) -> None:
    """A config the user cannot read: exit-2 error naming it."""
    path = write_config(public_folder, BASE)
    path.chmod(0o600)
    with as_user_without_privileges():
        issue = only_issue(path)
    assert "cannot read config file: permission denied" in issue.problem


def test_destination_through_a_symlinked_folder_is_a_duplicate(tmp_path: Path) -> None:
    """`real/x` and `link/x` with link -> real are one file: a duplicate destination."""
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    path = write_config(
        tmp_path,
        BASE + "templates: [{contents: a, destination: real/x},"
        " {contents: b, destination: link/x, name: b}]\n",
    )
    issue = only_issue(path)
    assert (
        "templates[1].destination",
        f"{tmp_path / 'link' / 'x'} is also the destination of templates[0]",
    ) == (
        issue.key,
        issue.problem,
    )


def test_destination_that_is_another_templates_source_is_refused(tmp_path: Path) -> None:
    """Rendering into a template file would replace the template: an error naming which."""
    (tmp_path / "a.j2").write_text("a\n")
    path = write_config(
        tmp_path,
        BASE + "templates: [{contents: b, destination: a.j2, name: b},"
        " {source: a.j2, destination: out/a}]\n",
    )
    issue = only_issue(path)
    assert (
        "templates[0].destination",
        f"{tmp_path / 'a.j2'} is the source of templates[1]; writing it would replace it",
    ) == (
        issue.key,
        issue.problem,
    )


def test_destination_that_is_a_symlink_to_a_folder_is_accepted(tmp_path: Path) -> None:
    """A symlink at the destination is replaced, never followed, even one to a folder."""
    (tmp_path / "folder").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "folder")
    path = write_config(tmp_path, BASE + "templates: [{contents: a, destination: link}]\n")
    assert tmp_path / "link" == load_config(path).templates[0].destination


@pytest.mark.parametrize("kind", ["fifo", "folder"])
def test_source_that_is_a_fifo_or_folder_is_refused(tmp_path: Path, kind: str) -> None:
    """A template source that is a FIFO or a folder is named as such at load."""
    with special_file(tmp_path / "t.j2", kind):
        path = write_config(tmp_path, BASE + "templates: [{source: t.j2, destination: o}]\n")
        issue = within(10, lambda: only_issue(path))
    expected = {"fifo": "a FIFO", "folder": "a folder"}[kind]
    assert (
        "templates[0].source",
        f"{tmp_path / 't.j2'} is {expected}; a template must be a regular file",
    ) == (
        issue.key,
        issue.problem,
    )


def test_destination_that_is_a_fifo_is_refused(tmp_path: Path) -> None:
    """A FIFO at the destination is not replaced: an error at load."""
    with special_file(tmp_path / "o", "fifo"):
        path = write_config(tmp_path, BASE + "templates: [{contents: x, destination: o}]\n")
        issue = within(10, lambda: only_issue(path))
    assert f"{tmp_path / 'o'} is a FIFO; smagent only replaces regular files" == issue.problem


# --- find_config_path -----------------------------------------------------------------------------


def test_find_config_explicit_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`--config` wins over $SMAGENT_CONFIG and ./smagent.yaml."""
    write_config(tmp_path, "")
    monkeypatch.chdir(tmp_path)
    environ = {"SMAGENT_CONFIG": "/from/env.yaml"}
    assert Path("given.yaml") == find_config_path("given.yaml", environ)


def test_empty_config_option_is_an_error_not_a_fallback(tmp_path: Path) -> None:
    """`--config ""` (an unset variable) is an error, never ./smagent.yaml or /etc."""
    write_config(tmp_path, BASE)
    result = run_cli("--config", "", "check", cwd=tmp_path)
    assert (2, "", "error: --config: expected a file path, got ''\n") == (
        result.returncode,
        result.stdout,
        result.stderr,
    )


def test_find_config_env_next(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without --config, $SMAGENT_CONFIG wins over ./smagent.yaml."""
    write_config(tmp_path, "")
    monkeypatch.chdir(tmp_path)
    assert Path("/from/env.yaml") == find_config_path(None, {"SMAGENT_CONFIG": "/from/env.yaml"})


def test_find_config_local_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With neither, ./smagent.yaml is used when it exists (an empty $SMAGENT_CONFIG is unset)."""
    write_config(tmp_path, "")
    monkeypatch.chdir(tmp_path)
    assert Path("smagent.yaml") == find_config_path(None, {})
    assert Path("smagent.yaml") == find_config_path(None, {"SMAGENT_CONFIG": ""})
    assert tmp_path / "smagent.yaml" == load_config(find_config_path(None, {})).path


def test_find_config_falls_back_to_etc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With no ./smagent.yaml, the path is /etc/smagent/smagent.yaml."""
    monkeypatch.chdir(tmp_path)
    assert Path("/etc/smagent/smagent.yaml") == find_config_path(None, {})


# --- Config.select --------------------------------------------------------------------------------


@pytest.fixture
def two_templates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Config:
    """A config in tmp_path/etc with a source template and an inline one; cwd is tmp_path."""
    folder = tmp_path / "etc"
    (folder / "templates").mkdir(parents=True)
    (folder / "templates" / "a.j2").write_text("a\n")
    path = write_config(
        folder,
        """\
        templates:
          - {source: templates/a.j2, destination: out/a.conf}
          - {contents: "b\\n", destination: out/b.env, name: app-env}
        """,
    )
    monkeypatch.chdir(tmp_path)
    return load_config(path)


def test_select_nothing_means_all(two_templates: Config) -> None:
    """No --template names selects every template, in config order."""
    assert two_templates.templates == two_templates.select([])


def test_select_by_name(two_templates: Config) -> None:
    """A template answers to its name: `name:` if set, else its source file's name."""
    first, second = two_templates.templates
    assert (first,) == two_templates.select(["a.j2"])
    assert (second,) == two_templates.select(["app-env"])
    assert (second, first) == two_templates.select(["app-env", "a.j2"])


def test_select_by_source_as_written(two_templates: Config) -> None:
    """The source path as written in the config (relative to its folder) selects it."""
    assert (two_templates.templates[0],) == two_templates.select(["templates/a.j2"])


def test_select_by_absolute_destination(two_templates: Config, tmp_path: Path) -> None:
    """The absolute destination path selects it."""
    dest = str(tmp_path / "etc" / "out" / "b.env")
    assert (two_templates.templates[1],) == two_templates.select([dest])


def test_select_by_path_relative_to_cwd(two_templates: Config) -> None:
    """A source or destination path relative to the current folder selects it."""
    first, second = two_templates.templates
    assert (first,) == two_templates.select(["etc/templates/a.j2"])
    assert (second,) == two_templates.select(["etc/out/b.env"])


def test_select_same_template_twice_once(two_templates: Config) -> None:
    """Two names for one template select it once."""
    first = two_templates.templates[0]
    assert (first,) == two_templates.select(["a.j2", "templates/a.j2", "out/a.conf"])


def test_select_unknown_lists_known_names(two_templates: Config) -> None:
    """An unknown --template name is a ConfigError listing the known template names."""
    with pytest.raises(ConfigError) as info:
        two_templates.select(["a.j2", "nope"])
    (issue,) = info.value.issues
    assert ("templates", "no template named 'nope' (templates: a.j2, app-env)") == (
        issue.key,
        issue.problem,
    )


# --- through the CLI, as a real subprocess --------------------------------------------------------


def _unknown_key(ws: Workspace) -> None:
    ws.providers["local"]["rate_limt"] = 5


def _wrong_type(ws: Workspace) -> None:
    ws.providers["local"]["rate_limit"] = "fast"


def _missing_source(ws: Workspace) -> None:
    ws.template("gone.j2", "x\n")
    (ws.root / "templates" / "gone.j2").unlink()


def _bad_duration(ws: Workspace) -> None:
    ws.namespaces["db"]["refresh"] = "5 minutes"


def _unknown_owner(ws: Workspace) -> None:
    ws.templates[0]["owner"] = "smagent-no-such-user"


def _owner_2_32_on_a_later_template(ws: Workspace) -> None:
    ws.template("later.j2", "x\n", owner=2**32)


def _group_digits_on_a_later_template(ws: Workspace) -> None:
    ws.template("later.j2", "x\n", group="9" * 30)


def _nul_in_destination(ws: Workspace) -> None:
    ws.template("later.j2", "x\n", destination="out/a\0b")


def _long_destination_name(ws: Workspace) -> None:
    ws.template("later.j2", "x\n", destination="out/" + "n" * 256)


def _nul_in_pidfile(ws: Workspace) -> None:
    ws.templates[0]["on_change"] = [{"signal": "HUP", "pidfile": "run/\0.pid"}]


@pytest.mark.parametrize(
    ("breakage", "key"),
    [
        pytest.param(_unknown_key, "providers.local.rate_limt", id="unknown-key"),
        pytest.param(_wrong_type, "providers.local.rate_limit", id="wrong-type"),
        pytest.param(_missing_source, "templates[1].source", id="missing-file"),
        pytest.param(_bad_duration, "namespaces.db.refresh", id="bad-duration"),
        pytest.param(_unknown_owner, "templates[0].owner", id="unknown-owner"),
        pytest.param(_owner_2_32_on_a_later_template, "templates[1].owner", id="owner-2^32"),
        pytest.param(_group_digits_on_a_later_template, "templates[1].group", id="group-digits"),
        pytest.param(_nul_in_destination, "templates[1].destination", id="nul-destination"),
        pytest.param(_long_destination_name, "templates[1].destination", id="256-byte-name"),
        pytest.param(_nul_in_pidfile, "templates[0].on_change[0].pidfile", id="nul-pidfile"),
    ],
)
def test_cli_bad_config_exits_2_and_writes_nothing(
    ws: Workspace, breakage: Callable[[Workspace], None], key: str
) -> None:
    """`render --once` on a bad config exits 2, names the key path on stderr, writes nothing."""
    ws.template("app.conf.j2", "user={{ secrets.db.username }}\n")
    breakage(ws)
    result = ws.run("render", "--once")
    assert 2 == result.returncode
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert 1 == len(errors), result.stderr
    assert errors[0].startswith(f"error: {ws.config_path}: {key}: ")
    assert "Traceback" not in result.stderr
    assert not ws.out.exists()
    assert_no_canary(result.stdout, result.stderr)


def test_cli_missing_config_file_exits_2(tmp_path: Path) -> None:
    """A --config path with no file exits 2 with an error naming it."""
    result = run_cli("--config", tmp_path / "absent.yaml", "check")
    assert 2 == result.returncode
    assert f"error: {tmp_path / 'absent.yaml'}: config file not found\n" == result.stderr


def test_cli_check_good_config(ws: Workspace) -> None:
    """`smagent check` on a good config exits 0 and prints `config ok`."""
    ws.template("app.conf.j2", "user={{ secrets.db.username }}\npass={{ secrets.db.password }}\n")
    result = ws.run("check")
    assert 0 == result.returncode, result.stderr
    assert result.stdout.startswith(f"config ok: {ws.config_path} (")
    assert not ws.out.exists()
    assert_no_canary(result.stdout, result.stderr)


NASTY_TEXTS = {
    "500-deep": "templates: " + "[" * 500 + "]" * 500 + "\n",
    "billion-laughs": "".join(
        [
            "x-a: &a [" + ", ".join(["lol"] * 9) + "]\n",
            *(
                f"x-{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n"
                for p, n in zip("abcdefgh", "bcdefghi", strict=True)
            ),
            "templates: *i\n",
        ]
    ),
    "cyclic-alias": "templates: &t [{contents: x, destination: o, on_change: *t}]\n",
    "complex-key": "templates:\n  - ? [a, b]\n    : x\n",
    "bad-int-tag": "providers: {a: {type: env, max_concurrency: !!int x}}\n",
    "python-tag": "providers: !!python/object/apply:os.system ['touch /tmp/pwned']\n",
    "two-documents": "templates: []\n---\ntemplates: []\n",
    "owner-2^64": "templates: [{contents: x, destination: out/a},"
    " {contents: y, destination: out/b, owner: 18446744073709551616}]\n",
    "nul-destination": 'templates: [{contents: x, destination: "out/\\0"}]\n',
    "256-byte-name": f"templates: [{{contents: x, destination: out/{'n' * 256}}}]\n",
    "absurd-duration": "defaults: {fetch_timeout: 99999999999h}\n"
    "templates: [{contents: x, destination: out/a}]\n",
    "binary-path": "templates: [{contents: x, destination: !!binary b3V0L2E=}]\n",
}


def assert_clean_exit_2(result: Run) -> None:
    """Exit 2, only `error:` lines and JSON log lines on stderr, no traceback."""
    assert 2 == result.returncode, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert any(line.startswith("error: ") for line in lines)
    assert all(line.startswith(("error: ", "{")) for line in lines), result.stderr


@pytest.mark.parametrize("name", list(NASTY_TEXTS))
def test_cli_nastiest_config_texts_exit_2_and_write_nothing(tmp_path: Path, name: str) -> None:
    """`render --once` on each of the nastiest configs: exit 2, an error line, nothing written."""
    path = tmp_path / "smagent.yaml"
    path.write_bytes(NASTY_TEXTS[name].encode("utf-8", "surrogatepass"))
    result = run_cli("--config", path, "render", "--once", timeout=20)
    assert_clean_exit_2(result)
    assert not (tmp_path / "out").exists()
    assert not Path("/tmp/pwned").exists()


@pytest.mark.parametrize("kind", ["fifo", "folder", "dev-zero", "too-big", "not-utf8"])
def test_cli_check_on_nastiest_config_files_exits_2(tmp_path: Path, kind: str) -> None:
    """`check` on a FIFO, a folder, /dev/zero, a 2 MiB or a non-UTF-8 config: exit 2 at once."""
    path = tmp_path / "smagent.yaml"
    with contextlib.ExitStack() as stack:
        if kind in ("fifo", "folder"):
            stack.enter_context(special_file(path, kind))
        elif kind == "dev-zero":
            path = Path("/dev/zero")
        elif kind == "too-big":
            path.write_bytes(b"#" * (2 << 20))
        else:
            path.write_bytes(b"templates: [\xff]\n")
        result = run_cli("--config", path, "check", timeout=20)
    assert_clean_exit_2(result)
    assert result.stderr.startswith(f"error: {path}: ")


# --- property-based: whatever the bytes, a Config or a ConfigError (defect classes 4, 6, 9) -------

FIELD_NAMES = sorted(
    {
        *("providers", "namespaces", "defaults", "templates", "x-anchor"),
        *("type", "path", "region", "endpoint_url", "profile", "rate_limit", "max_concurrency"),
        *("vault_url", "credential", "client_secret_file", "address", "auth", "method"),
        *("token_file", "secret_id_file", "ca_cert", "provider", "secret", "version", "stage"),
        *("refresh", "wait", "min", "max", "mode", "fetch_timeout", "source", "destination"),
        *("contents", "name", "owner", "group", "on_change", "signal", "pidfile"),
        *("systemd_unit", "command", "timeout", "<<"),
    }
)
NASTY_SCALARS = st.one_of(
    st.sampled_from(
        [
            *("", " ", "\0", "a\0b", "\ud800", "x\udfff", "99999999999h", "0s", "-1s", "0", "1ms"),
            *("0.0001s", "366d", "07777", "9999", "0640", "640", "/dev/zero", "/dev/null", "/"),
            *("..", "../../..", "~", "~root/x", "a" * 256, "é" * 128, "/".join(["d" * 250] * 17)),
            *("HUP", "SIGKILL", "nobody", "root", "4294967296", "9" * 30, "null", "yes", "<<"),
            *("smagent.yaml", "templates/userlist.txt.j2", "secrets.yaml", "out/x", "env", "file"),
            *(2**32, 2**32 - 1, 2**63, 2**64, -1, 0, 1, 1000, 1001, 10**400 // 10**300),
        ]
    ),
    st.integers(),
    st.floats(),
    st.booleans(),
    st.none(),
    st.binary(max_size=8),
    st.text(max_size=12),
)
NASTY_VALUES = st.recursive(
    NASTY_SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(
            st.one_of(st.sampled_from(FIELD_NAMES), st.text(max_size=6)), inner, max_size=4
        ),
    ),
    max_leaves=12,
)
YAML_SNIPPETS = (
    *"{}[],:-&*!|>'\"#%@?<\n\t \\",
    *("&a ", "*a", "<<: ", "<<: *a", "!!binary ", "!!int ", "!!set ", "!!python/name:os.system "),
    *("? ", "---\n", "...\n", "\0", "\ufeff", "\r\n", "~", "null", "[[[[", "]]]]", "\\0"),
)
ANCHORED_CONFIG = """\
x-limits: &limits {rate_limit: 5, max_concurrency: 2}
x-tpl: &tpl {mode: "0640", on_change: [{signal: HUP, pidfile: run/p.pid}]}
providers:
  local: {<<: *limits, type: file, path: secrets.yaml}
  env: {<<: *limits, type: env}
namespaces:
  db: &ns {provider: local, secret: prod/db, refresh: 1m}
  other: {<<: *ns, secret: prod/other}
defaults: {refresh: 5m, wait: {min: 1s, max: 5s}, mode: "0600", fetch_timeout: 30s}
templates:
  - {<<: *tpl, source: templates/userlist.txt.j2, destination: out/userlist.txt, owner: root}
  - {<<: *tpl, contents: "x\\n", destination: out/app.env, name: app-env, group: 0}
  - contents: y
    destination: out/cmd
    on_change: [{command: [systemctl, reload, x], timeout: 10s}]
"""
FUZZ_EXAMPLES = int(os.environ.get("SMAGENT_FUZZ_EXAMPLES", "200"))
"""Examples per fuzz test; raise it for a long run (`SMAGENT_FUZZ_EXAMPLES=20000`)."""
FUZZ = settings(
    max_examples=FUZZ_EXAMPLES,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    deadline=None,
)


@pytest.fixture
def fuzz_folder(tmp_path: Path) -> Path:
    """A config folder with the template file FULL_CONFIG and ANCHORED_CONFIG name."""
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "userlist.txt.j2").write_text("x\n")
    return tmp_path


def load_or_error(folder: Path, data: bytes) -> Config | ConfigError:
    """Load `data` as folder/smagent.yaml: a Config or a ConfigError, within a few seconds.

    Anything else raised (a traceback for the user) fails the property.
    """
    path = folder / "smagent.yaml"
    path.write_bytes(data)
    path.chmod(0o600)
    started = time.monotonic()
    try:
        with structlog.testing.capture_logs():  # warnings about files the mutation points at
            result: Config | ConfigError = load_config(path)
    except ConfigError as exc:
        result = exc
    assert time.monotonic() - started < 10, "the config loader took too long"
    if currently_in_test_context():
        event(f"outcome: {type(result).__name__}")
    if isinstance(result, ConfigError):
        assert result.issues
        assert all(path == issue.file for issue in result.issues)
        assert all(str(issue).startswith(f"{path}: ") for issue in result.issues)
    else:
        assert_usable(result)
    return result


def assert_usable(config: Config) -> None:
    """What the later steps rely on holds for a Config that loaded."""
    for template in config.templates:
        for path in (template.destination, template.source, *_action_paths(template)):
            if path is not None:
                assert Path(path).is_absolute()
                encoded = os.fsencode(path)
                assert b"\0" not in encoded
                assert len(encoded) <= 4095
                assert all(len(os.fsencode(part)) <= 255 for part in Path(path).parts)
        assert 0 <= template.mode <= 0o777
        for uid in (resolve_owner(template.owner), resolve_group(template.group)):
            assert uid is None or 0 <= uid <= 2**32 - 2
        for action in template.on_change:
            if isinstance(action, CommandAction):
                assert action.command[0].strip()
                assert all("\0" not in arg for arg in action.command)
                assert 0.001 <= action.timeout <= 365 * 86400
    for provider in config.providers.values():
        rate = provider.rate_limit
        assert rate is None or (math.isfinite(rate) and rate > 0)
        assert 1 <= provider.max_concurrency <= 1000
    defaults = config.defaults
    for duration in (defaults.refresh, defaults.fetch_timeout, *config.namespace_refresh.values()):
        assert 0.001 <= duration <= 365 * 86400
    assert 0 <= defaults.wait.min <= 365 * 86400
    assert all(ns.provider in config.providers for ns in config.namespaces.values())


def _action_paths(template: TemplateSpec) -> list[str]:
    return [a.pidfile for a in template.on_change if isinstance(a, SignalPidfileAction)]


@FUZZ
@given(data=st.binary(max_size=2000))
def test_fuzz_any_bytes_load_or_config_error(fuzz_folder: Path, data: bytes) -> None:
    """Random bytes as the config: a Config or a ConfigError, never another exception."""
    load_or_error(fuzz_folder, data)


@FUZZ
@given(value=NASTY_VALUES)
def test_fuzz_any_yaml_document_loads_or_config_error(fuzz_folder: Path, value: object) -> None:
    """Any YAML document (nasty scalars, config key names) gives a Config or a ConfigError."""
    load_or_error(fuzz_folder, yaml.safe_dump(value).encode())


def _paths(node: object, trail: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    """Every place in a parsed config (a key of a mapping, an index of a list)."""
    found: list[tuple[object, ...]] = []
    items = (
        node.items()
        if isinstance(node, dict)
        else enumerate(node)
        if isinstance(node, list)
        else ()
    )
    for key, child in items:
        found.append((*trail, key))
        found.extend(_paths(child, (*trail, key)))
    return found


def _mutate(config: dict[str, Any], data: st.DataObject) -> None:
    place = data.draw(st.sampled_from(_paths(config)))
    parent: Any = config
    for key in place[:-1]:
        parent = parent[key]
    key = place[-1]
    action = data.draw(st.sampled_from(["replace", "delete", "add", "duplicate"]))
    if action == "replace":
        parent[key] = data.draw(NASTY_VALUES)
    elif action == "delete":
        del parent[key]
    elif action == "add" and isinstance(parent[key], dict):
        parent[key][data.draw(st.sampled_from(FIELD_NAMES))] = data.draw(NASTY_VALUES)
    elif action == "add" and isinstance(parent[key], list):
        parent[key].append(data.draw(NASTY_VALUES))
    elif isinstance(parent, list) and isinstance(key, int):
        parent.append(copy.deepcopy(parent[key]))  # a second template, provider... the same


@FUZZ
@given(data=st.data())
def test_fuzz_mutations_of_a_valid_config(fuzz_folder: Path, data: st.DataObject) -> None:
    """A valid config with 1-4 random replacements, deletions and additions: never a crash."""
    config = yaml.safe_load(FULL_CONFIG)
    for _ in range(data.draw(st.integers(1, 4))):
        _mutate(config, data)
    load_or_error(fuzz_folder, yaml.safe_dump(config).encode())


@FUZZ
@given(data=st.data())
def test_fuzz_text_edits_of_a_valid_config(fuzz_folder: Path, data: st.DataObject) -> None:
    """The anchored config with 1-6 YAML-significant text edits: never a crash."""
    text = ANCHORED_CONFIG
    for _ in range(data.draw(st.integers(1, 6))):
        at = data.draw(st.integers(0, len(text)))
        cut = data.draw(st.integers(0, 3))
        text = text[:at] + data.draw(st.sampled_from(YAML_SNIPPETS)) + text[at + cut :]
    load_or_error(fuzz_folder, text.encode("utf-8", "surrogatepass"))


def test_fuzz_seeds_are_valid(fuzz_folder: Path) -> None:
    """The configs the fuzzers start from load, so mutations start from a valid point."""
    assert isinstance(load_or_error(fuzz_folder, FULL_CONFIG.encode()), Config)
    loaded = load_or_error(fuzz_folder, ANCHORED_CONFIG.encode())
    assert isinstance(loaded, Config)
    assert 3 == len(loaded.templates)
