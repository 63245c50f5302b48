"""The shipped example config and templates: they render, and each file parses back right."""

from __future__ import annotations

import io
import os
import shutil
import urllib.parse
from pathlib import Path

import pytest
import yaml
from dotenv import dotenv_values

from smagent.filters import scram_sha256
from tests.conftest import REPO, run_cli

TOKEN = "demo-token-from-env"


@pytest.fixture
def demo(tmp_path: Path) -> Path:
    """A copy of examples/ and templates/ with the repository's layout."""
    shutil.copytree(REPO / "examples", tmp_path / "examples")
    shutil.copytree(REPO / "templates", tmp_path / "templates")
    return tmp_path


def secrets(demo: Path) -> dict[str, dict[str, object]]:
    data: dict[str, dict[str, object]] = yaml.safe_load(
        (demo / "examples/secrets.yaml").read_text()
    )
    return data


def test_demo_renders_every_example(demo: Path) -> None:
    """`make demo`'s command renders all six files with their modes, then changes nothing."""
    config = demo / "examples/smagent.yaml"
    run = run_cli("--config", config, "render", "--once", env={"SMAGENT_DEMO_API_TOKEN": TOKEN})
    assert 0 == run.returncode, run.stderr
    out = demo / "out"
    modes = {
        str(p.relative_to(out)): p.stat().st_mode & 0o777 for p in out.rglob("*") if p.is_file()
    }
    assert {
        "pgbouncer/userlist.txt": 0o640,
        "pgbouncer/pgbouncer.ini": 0o640,
        "mysql/my.cnf": 0o600,
        "app/app.env": 0o600,
        "postgres/pgpass": 0o600,
        "replicant/conn/mysql.yaml": 0o600,
    } == modes
    again = run_cli(
        "--config", config, "render", "--dry-run", env={"SMAGENT_DEMO_API_TOKEN": TOKEN}
    )
    assert 0 == again.returncode
    lines = again.stdout.splitlines()
    assert 6 == len(lines), again.stdout
    assert all(line.startswith("would not change") for line in lines)


def test_examples_parse_back(demo: Path) -> None:
    """Each example file gives back the secrets through its consumer's rules."""
    config = demo / "examples/smagent.yaml"
    assert (
        0
        == run_cli(
            "--config", config, "render", "--once", env={"SMAGENT_DEMO_API_TOKEN": TOKEN}
        ).returncode
    )
    out, values = demo / "out", secrets(demo)
    app, reporting, mysql = values["pg/app"], values["pg/reporting"], values["prod/mysql/src"]

    arcion = yaml.safe_load((out / "replicant/conn/mysql.yaml").read_text())
    assert (mysql["host"], 3306, mysql["username"], mysql["password"]) == (
        arcion["host"],
        arcion["port"],
        arcion["username"],
        arcion["password"],
    )

    userlist = (out / "pgbouncer/userlist.txt").read_text().splitlines()
    assert [
        f'"{app["username"]}" "{scram_sha256(app["password"])}"',
        f'"{reporting["username"]}" "{scram_sha256(reporting["password"])}"',
    ] == userlist

    env = dotenv_values(stream=io.StringIO((out / "app/app.env").read_text()))
    assert (app["password"], TOKEN) == (env["DB_PASSWORD"], env["API_TOKEN"])
    url = urllib.parse.urlsplit(env["DATABASE_URL"] or "")
    assert (app["username"], app["password"], "/app") == (
        urllib.parse.unquote(url.username or ""),
        urllib.parse.unquote(url.password or ""),
        url.path,
    )

    first = (out / "postgres/pgpass").read_text().splitlines()[0]
    fields = [f.replace("\\:", ":").replace("\\\\", "\\") for f in _split_pgpass(first)]
    assert ["127.0.0.1", "5432", "app", "app", app["password"]] == fields

    ini = (out / "pgbouncer/pgbouncer.ini").read_text()
    assert "app = host=127.0.0.1 port=5432 dbname=app\n" in ini


def _split_pgpass(line: str) -> list[str]:
    fields, current, escaped = [], "", False
    for char in line:
        if escaped:
            current += "\\" + char
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ":":
            fields.append(current)
            current = ""
        else:
            current += char
    return [*fields, current]


def test_mycnf_example_reads_back_in_mariadb(demo: Path) -> None:
    """MariaDB's option-file parser reads the example my.cnf's password exactly."""
    from tests.test_filters import _read_mycnf

    config = demo / "examples/smagent.yaml"
    run = run_cli("--config", config, "render", "--once", "--template", "my.cnf.j2")
    assert 0 == run.returncode, run.stderr
    parsed = _read_mycnf(demo / "out/mysql/my.cnf")
    mysql = secrets(demo)["prod/mysql/src"]
    assert {
        "host": mysql["host"],
        "port": "3306",
        "user": mysql["username"],
        "password": mysql["password"],
    } == parsed
    assert 0o600 == os.stat(demo / "out/mysql/my.cnf").st_mode & 0o777
