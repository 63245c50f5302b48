"""The MariaDB/MySQL client files of examples/database-host/, read back by their real consumers.

The example's own config blocks (`mysql-client`, `arcion-mysql`) and templates
are rendered by `smagent render --once` from an AWS secret in moto, with only
the host's paths changed (destinations under tmp_path, no `replicant`
account here: owner/group dropped, the provider pointed at moto). Then:

- the `[client]` section of my.cnf is read by MariaDB's own option parser,
  `my_print_defaults`, and by the client itself (`mariadb --print-defaults`):
  every value comes back exactly, a password full of `#`, quotes, `\\`, `: `
  and spaces included;
- Arcion's connection YAML is parsed back with the types Replicant expects:
  `port` an int, the password a string equal to the secret, the file's own
  settings untouched.

Values are compared without ever being printed: a mismatch names the key.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml

from tests import leaks
from tests.agent_config import AWS_ENV
from tests.conftest import REPO, run_cli
from tests.fakes.moto_server import REGION, MotoFake

EXAMPLE = REPO / "examples" / "database-host"
TEMPLATES = ("mysql-client", "arcion-mysql")
PASSWORD = leaks.plant("canary-my # 'pa\"ss': \\wörd; x ", "MYSQL_PASSWORD")
"""What MariaDB's parser and YAML both trip on: #, both quotes, a backslash, ': ', a
non-ASCII letter, and a space at the end."""
USER = leaks.plant("replicant-canary-Ux7", "MYSQL_USER")
SECRET = {"host": "mysql-src.internal", "port": 3306, "username": USER, "password": PASSWORD}


def _tool(name: str, package: str) -> str:
    found = shutil.which(name)
    if found is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} ({package}) missing while CI is set")
        pytest.skip(f"{name} (Debian {package}) is not installed")
    return found


@pytest.fixture
def rendered(tmp_path: Path, moto: MotoFake) -> dict[str, Path]:
    """The example's client files, rendered from the secret in moto: name -> file."""
    client = boto3.client(
        "secretsmanager",
        endpoint_url=moto.endpoint,
        region_name=REGION,
        aws_access_key_id=AWS_ENV["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=AWS_ENV["AWS_SECRET_ACCESS_KEY"],
    )
    example: dict[str, Any] = yaml.safe_load((EXAMPLE / "smagent.yaml").read_text())
    namespace = example["namespaces"]["mysql_src"]
    client.create_secret(Name=namespace["secret"], SecretString=json.dumps(SECRET))
    provider = dict(example["providers"][namespace["provider"]])
    provider.update(endpoint_url=moto.endpoint, region=REGION)
    files: dict[str, Path] = {}
    templates = []
    for entry in example["templates"]:
        if entry.get("name") not in TEMPLATES:
            continue
        entry = {k: v for k, v in entry.items() if k not in ("owner", "group")}
        destination = tmp_path / "out" / Path(entry["destination"]).name
        files[entry["name"]] = destination
        leaks.allow_secrets_in(destination)
        entry.update(source=str(EXAMPLE / entry["source"]), destination=str(destination))
        templates.append(entry)
    assert set(TEMPLATES) == set(files), "the example config lost a client-file block"
    config = {
        "providers": {namespace["provider"]: provider},
        "namespaces": {"mysql_src": namespace},
        "defaults": example.get("defaults", {}),
        "state_dir": str(tmp_path / "state"),
        "templates": templates,
    }
    path = tmp_path / "smagent.yaml"
    path.write_text(yaml.safe_dump(config))
    run = run_cli("--config", path, "render", "--once", env=AWS_ENV)
    assert 0 == run.returncode, run.stderr
    return files


def _same(expected: dict[str, Any], found: dict[str, Any]) -> list[str]:
    """The keys whose values differ (or are missing), never the values."""
    return sorted(k for k in expected if k not in found or found[k] != expected[k])


def test_mycnf_client_section_reads_back_through_my_print_defaults(
    rendered: dict[str, Path],
) -> None:
    """MariaDB's option parser gives back host, port, user and password exactly."""
    tool = _tool("my_print_defaults", "mariadb-client-core")
    mycnf = rendered["mysql-client"]
    assert 0o600 == mycnf.stat().st_mode & 0o777
    result = subprocess.run(
        [tool, f"--defaults-file={mycnf}", "client"], capture_output=True, timeout=10, check=False
    )
    assert 0 == result.returncode, "my_print_defaults failed"  # its output holds the password
    found: dict[str, str] = {}
    for chunk in result.stdout.decode().split("\n--")[0:]:
        key, _, value = chunk.removeprefix("--").partition("=")
        found[key] = value.removesuffix("\n")
    expected = {"host": SECRET["host"], "port": "3306", "user": USER, "password": PASSWORD}
    assert [] == _same(expected, found)
    assert set(expected) == set(found)


def test_mycnf_read_by_the_mariadb_client_itself(rendered: dict[str, Path]) -> None:
    """`mariadb --print-defaults` (the client's own start-up) takes the same four options."""
    tool = _tool("mariadb", "mariadb-client-core")
    result = subprocess.run(
        [tool, f"--defaults-file={rendered['mysql-client']}", "--print-defaults"],
        capture_output=True,
        timeout=10,
        check=False,
    )
    assert 0 == result.returncode, "mariadb --print-defaults failed"
    lines = result.stdout.decode().splitlines()
    assert f"{tool} would have been started with the following arguments:" == lines[0]
    expected = f"--host={SECRET['host']} --port=3306 --user={USER} --password={PASSWORD} "
    same = lines[1:] == [expected]  # each argument is followed by a space
    assert same, "mariadb --print-defaults read other arguments than the secret's (not shown)"


def test_arcion_connection_yaml_keeps_its_types(rendered: dict[str, Path]) -> None:
    """Arcion's file parses with port an int and every value equal to the secret's; the file's
    own settings stay as written."""
    conn = rendered["arcion-mysql"]
    loaded = yaml.safe_load(conn.read_text())
    assert isinstance(loaded["port"], int)
    assert 3306 == loaded["port"]
    assert all(isinstance(loaded[k], str) for k in ("host", "username", "password"))
    expected = {"host": SECRET["host"], "username": USER, "password": PASSWORD}
    assert [] == _same(expected, loaded)
    source = yaml.safe_load((EXAMPLE / "templates/arcion-mysql.yaml").read_text())
    untouched = {
        k: v for k, v in source.items() if k not in ("host", "port", "username", "password")
    }
    assert untouched == {k: loaded[k] for k in untouched}
    assert isinstance(loaded["slave-server-ids"], list)
    assert "arcion-sm://" not in conn.read_text()


def test_the_vault_variant_config_checks(tmp_path: Path) -> None:
    """`smagent check` accepts smagent-vault.yaml as copied (its application group swapped for
    one this host has): the dynamic credentials and the auth_user's secret are what it reads."""
    folder = tmp_path / "etc-smagent"
    shutil.copytree(EXAMPLE, folder)
    config = folder / "smagent-vault.yaml"
    config.write_text(config.read_text().replace("group: app\n", "group: root\n"))
    run = run_cli("--config", config, "check")
    assert 0 == run.returncode, run.stderr
    assert "vault:database/creds/app key password" in run.stdout, run.stdout
    assert "vault:secret/data/pgbouncer/auth_user key password" in run.stdout, run.stdout
