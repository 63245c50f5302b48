"""Tests for smagent.config: real YAML files in tmp_path, `load_config`, and the CLI."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from smagent.config import (
    AwsProvider,
    AzureProvider,
    CommandAction,
    Config,
    ConfigError,
    ConfigIssue,
    EnvProvider,
    FileProvider,
    SignalName,
    SignalPidfileAction,
    SignalUnitAction,
    VaultApproleAuth,
    VaultProvider,
    VaultTokenAuth,
    find_config_path,
    load_config,
)
from smagent.references import Namespace
from tests.conftest import Workspace, assert_no_canary, run_cli

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
    assert isinstance(aws, AwsProvider)
    assert ("us-east-1", "http://localhost:5000", "ops") == (
        aws.region,
        aws.endpoint_url,
        aws.profile,
    )
    assert (5.0, 3) == (aws.rate_limit, aws.max_concurrency)

    kv = providers["kv"]
    assert isinstance(kv, AzureProvider)
    assert "https://myvault.vault.azure.net" == kv.vault_url
    assert "client_secret" == kv.credential
    assert str(folder / "kv-secret") == kv.client_secret_file

    vault = providers["vault"]
    assert isinstance(vault, VaultProvider)
    assert "team-a" == vault.namespace
    assert str(folder / "certs" / "ca.pem") == vault.ca_cert
    assert isinstance(vault.auth, VaultApproleAuth)
    assert "role" == vault.auth.role_id
    assert str(folder / "secret-id") == vault.auth.secret_id_file

    vault_token = providers["vault-token"]
    assert isinstance(vault_token, VaultProvider)
    assert isinstance(vault_token.auth, VaultTokenAuth)
    assert str(folder / "token") == vault_token.auth.token_file

    local = providers["local"]
    assert isinstance(local, FileProvider)
    assert str(folder / "secrets.yaml") == local.path
    assert (20.0, 10) == (local.rate_limit, local.max_concurrency)

    env = providers["env"]
    assert isinstance(env, EnvProvider)
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
    ],
)
def test_duration_parses(tmp_path: Path, written: str, seconds: float) -> None:
    """Durations with units (and a bare zero) parse to seconds."""
    path = write_config(
        tmp_path, BASE + f"namespaces: {{a: {{provider: local, refresh: {written}}}}}\n"
    )
    assert seconds == load_config(path).namespace_refresh["a"]


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
        "unknown key (allowed: providers, namespaces, defaults, templates)",
        id="unknown-top-level-key",
    ),
    pytest.param(
        "providers: {a: {type: file, path: x, rate_limt: 2}}\n",
        "providers.a.rate_limt",
        "unknown key (allowed: max_concurrency, path, rate_limit, type)",
        id="unknown-provider-key",
    ),
    pytest.param(
        "providers: {v: {type: vault, address: x, auth: {method: token, tokn_file: t}}}\n",
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
        "required key is missing (aws|azure|vault|file|env)",
        id="missing-provider-type",
    ),
    pytest.param(
        "providers: {a: {type: s3}}\n",
        "providers.a.type",
        "expected one of aws, azure, vault, file, env, got 's3'",
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
        "invalid YAML: expected ',' or ']'",
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
        "expected a whole number of at least 1",
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


# --- find_config_path -----------------------------------------------------------------------------


def test_find_config_explicit_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`--config` wins over $SMAGENT_CONFIG and ./smagent.yaml."""
    write_config(tmp_path, "")
    monkeypatch.chdir(tmp_path)
    environ = {"SMAGENT_CONFIG": "/from/env.yaml"}
    assert Path("given.yaml") == find_config_path("given.yaml", environ)


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


@pytest.mark.parametrize(
    ("breakage", "key"),
    [
        pytest.param(_unknown_key, "providers.local.rate_limt", id="unknown-key"),
        pytest.param(_wrong_type, "providers.local.rate_limit", id="wrong-type"),
        pytest.param(_missing_source, "templates[1].source", id="missing-file"),
        pytest.param(_bad_duration, "namespaces.db.refresh", id="bad-duration"),
        pytest.param(_unknown_owner, "templates[0].owner", id="unknown-owner"),
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
