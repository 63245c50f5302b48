"""The command line as users run it: real subprocesses, real files, exit codes, logs."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from smagent import __version__
from smagent.actions import OUTPUT_SHOWN
from tests.conftest import (
    CANARY,
    CANARY_TOKEN,
    CANARY_USER,
    Workspace,
    assert_no_canary,
    fake_systemctl,
    run_cli,
)
from tests.leaks import allow_secrets_in

CREDS = "user={{ secrets.db.username }}\npassword={{ secrets.db.password }}\n"


def test_version() -> None:
    """--version prints the version and exits 0."""
    run = run_cli("--version")
    assert (0, f"smagent {__version__}\n") == (run.returncode, run.stdout)


def test_render_once_writes_files_and_logs_json(ws: Workspace) -> None:
    """render --once writes every template, logs JSON lines on a non-TTY stderr, exits 0."""
    creds = ws.template("creds.j2", CREDS)
    token = ws.template("token.j2", "{{ secrets.store['api-token'] | shell_quote }}\n")
    run = ws.run("render", "--once")
    assert 0 == run.returncode, run.stderr
    assert f"user={CANARY_USER}\npassword={CANARY}\n" == creds.read_text()
    assert "'canary-token-Zp81-$HOME-'\"'\"'q'\"'\"''\n" == token.read_text()
    events = [e["event"] for e in run.logs()]
    assert 2 == events.count("template.rendered")
    assert "pass.finished" == events[-1]
    assert "" == run.stdout
    assert_no_canary(run.stdout, run.stderr)


def test_unchanged_render_does_not_touch_the_file(ws: Workspace) -> None:
    """A second pass with the same values keeps the same inode and mtime."""
    creds = ws.template("creds.j2", CREDS)
    assert 0 == ws.run("render", "--once").returncode
    before = os.stat(creds)
    run = ws.run("render", "--once")
    after = os.stat(creds)
    assert 0 == run.returncode
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)
    assert ["template.unchanged"] == [
        e["event"] for e in run.logs() if e["event"].startswith("template.")
    ]


def test_missing_secret_fails_that_template_only(ws: Workspace) -> None:
    """A missing secret: exit 1, named with template, reference and cause; old file kept."""
    bad = ws.template("bad.j2", "{{ secrets.store.nonexistent }}\n")
    good = ws.template("good.j2", CREDS)
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"last good bytes\n")
    bad.chmod(0o600)
    run = ws.run("render", "--once")
    assert 1 == run.returncode
    assert b"last good bytes\n" == bad.read_bytes()
    assert good.exists()
    (failure,) = [e for e in run.logs() if e["event"] == "reference.failed"]
    assert "bad.j2" == failure["template"]
    assert "local:nonexistent" == failure["reference"]
    assert "not found" == failure["error"]
    assert "no secret named 'nonexistent'" in failure["detail"]
    assert_no_canary(run.stdout, run.stderr)


def test_render_once_fails_fast_when_the_store_is_gone(ws: Workspace) -> None:
    """A secrets file that cannot be read fails the pass quickly and names the cause."""
    ws.template("creds.j2", CREDS)
    ws.write()
    (ws.root / "secrets.yaml").unlink()
    ws.providers["local"]["path"] = "gone.yaml"
    run = ws.run("render", "--once", timeout=20)
    assert 1 == run.returncode
    assert "cannot read" in run.stderr


def test_new_files_are_0600_whatever_the_umask(ws: Workspace) -> None:
    """With umask 000 a new file is still created 0600 (the default mode)."""
    creds = ws.template("creds.j2", CREDS)
    assert 0 == ws.run("render", "--once", umask=0).returncode
    assert 0o600 == creds.stat().st_mode & 0o777


def test_template_mode_owner_group(ws: Workspace) -> None:
    """A template's mode and numeric owner/group are applied."""
    creds = ws.template("creds.j2", CREDS, mode="0640", owner=65534, group=65534)
    assert 0 == ws.run("render", "--once", umask=0o077).returncode
    st = creds.stat()
    assert (0o640, 65534, 65534) == (st.st_mode & 0o777, st.st_uid, st.st_gid)


def test_destination_symlink_is_replaced_not_followed(ws: Workspace, tmp_path: Path) -> None:
    """A symlink at the destination is replaced; the file it pointed to is untouched."""
    creds = ws.template("creds.j2", CREDS)
    victim = tmp_path / "victim.txt"
    victim.write_text("do not overwrite\n")
    creds.parent.mkdir(parents=True)
    creds.symlink_to(victim)
    assert 0 == ws.run("render", "--once").returncode
    assert "do not overwrite\n" == victim.read_text()
    assert not creds.is_symlink()
    assert CANARY in creds.read_text()


def test_dry_run_prints_masked_summary(ws: Workspace) -> None:
    """--dry-run writes nothing and prints per template whether it would change, no values."""
    creds = ws.template("creds.j2", CREDS)
    other = ws.template("other.j2", "static\n")
    other.parent.mkdir(parents=True)
    other.write_text("static\n")
    other.chmod(0o600)
    one = ws.template("one.j2", "static\n{{ secrets.db.password }}\n")
    one.write_text("static\nold password\n")
    run = ws.run("render", "--dry-run")
    assert 0 == run.returncode, run.stderr
    assert not creds.exists()
    lines = run.stdout.splitlines()
    assert 3 == len(lines), run.stdout
    assert lines[0].startswith("would change")
    assert str(creds) in lines[0]
    assert lines[0].endswith("  lines 1-2 differ")
    assert lines[1].startswith("would not change")
    assert str(other) in lines[1]
    assert lines[2].endswith(f"{one}  (one.j2)  line 2 differs")


def test_template_option_selects(ws: Workspace) -> None:
    """--template renders only the named templates; an unknown name is a usage error."""
    creds = ws.template("creds.j2", CREDS)
    other = ws.template("other.j2", "static\n")
    assert 0 == ws.run("render", "--once", "--template", "other.j2").returncode
    assert other.exists()
    assert not creds.exists()
    run = ws.run("render", "--once", "--template", "nope", "--template", "creds.j2")
    assert 2 == run.returncode
    assert (
        f"error: --template 'nope': no template of {ws.config_path} has that name, source or "
        "destination (templates: creds.j2, other.j2)\n"
    ) == run.stderr
    assert not creds.exists()


def test_get_masks_unless_reveal(ws: Workspace) -> None:
    """get prints ******** unless --reveal; every reference form works."""
    ws.template("creds.j2", CREDS)
    masked = ws.run("get", "db/password")
    assert (0, "********\n") == (masked.returncode, masked.stdout)
    for form in ("db/password", "secrets.db.password", "arcion-sm://db/password"):
        revealed = ws.run("get", form, "--reveal")
        assert (0, CANARY + "\n") == (revealed.returncode, revealed.stdout), form
    whole = ws.run("get", "local:api-token", "--reveal")
    assert CANARY_TOKEN + "\n" == whole.stdout
    nested = ws.run("get", "db/nested.deep.deeper.value", "--reveal")
    assert "leaf-value-1234\n" == nested.stdout


def test_get_errors(ws: Workspace) -> None:
    """get: a missing key exits 1 naming the keys; an unknown namespace exits 2."""
    ws.template("creds.j2", CREDS)
    missing = ws.run("get", "db/pasword")
    assert 1 == missing.returncode
    assert (
        "error: local:prod/db key pasword: key 'pasword' not in secret prod/db "
        "(keys: host, nested, password, port, username)\n"
    ) == missing.stderr
    unknown = ws.run("get", "nope/x")
    assert 2 == unknown.returncode
    assert "unknown namespace 'nope'" in unknown.stderr
    assert_no_canary(missing.stdout, missing.stderr, unknown.stderr)


def test_check_lists_references_offline(ws: Workspace) -> None:
    """check validates, lists each template's references, and fetches nothing."""
    ws.template("creds.j2", CREDS)
    ws.providers["local"]["path"] = "does-not-exist.yaml"  # offline: never read
    run = ws.run("check")
    assert 0 == run.returncode, run.stdout + run.stderr
    assert "config ok" in run.stdout
    assert "    local:prod/db key password\n    local:prod/db key username\n" in run.stdout


def test_check_connect_resolves(ws: Workspace) -> None:
    """check --connect walks each key path: a key missing from its secret fails, naming the keys."""
    ws.template("creds.j2", CREDS)
    ws.template("bad.j2", "{{ secrets.store.nonexistent }}{{ secrets.db.nope }}")
    run = ws.run("check", "--connect")
    assert 1 == run.returncode
    keys = "(keys: host, nested, password, port, username)"
    assert [
        f"creds.j2 -> {ws.out / 'creds'}",
        "    local:prod/db key password  ok",
        "    local:prod/db key username  ok",
        f"bad.j2 -> {ws.out / 'bad'}",
        "    local:nonexistent  failed: not found",
        f"    local:prod/db key nope  failed: key 'nope' not in secret prod/db {keys}",
        f"    error: {ws.root / 'templates/bad.j2'}: local:nonexistent: not found: "
        f"no secret named 'nonexistent' in {ws.root / 'secrets.yaml'}",
    ] == run.stdout.splitlines()[1:]


def test_check_reports_template_syntax_errors(ws: Workspace) -> None:
    """check names the file and line of a template syntax error, exit 1."""
    ws.template("bad.j2", "ok\n{% for %}\n")
    run = ws.run("check")
    assert 1 == run.returncode
    assert "bad.j2:2: template syntax error" in run.stdout


def test_test_connection(ws: Workspace) -> None:
    """test-connection reports each provider; an unknown name is a usage error."""
    ws.providers["environment"] = {"type": "env"}
    run = ws.run("test-connection")
    assert (0, "local (file): ok\nenvironment (env): ok\n") == (run.returncode, run.stdout)
    unknown = ws.run("test-connection", "nope", "local", "nope")
    assert 2 == unknown.returncode
    assert (
        f"error: {ws.config_path}: no provider named 'nope' (providers: local, environment)\n"
    ) == unknown.stderr
    twice = ws.run("test-connection", "local", "local")
    assert (0, "local (file): ok\n") == (twice.returncode, twice.stdout)
    ws.providers["local"]["path"] = "missing.yaml"
    failed = ws.run("test-connection", "local")
    assert 1 == failed.returncode
    assert "local (file): failed: unavailable: cannot read" in failed.stdout


def test_test_connection_without_providers_says_so(ws: Workspace) -> None:
    """test-connection with no provider configured says there is nothing to test, exit 0."""
    ws.providers = {}
    ws.namespaces = {}
    run = ws.run("test-connection")
    assert (0, f"no providers in {ws.config_path}: nothing to test\n") == (
        run.returncode,
        run.stdout,
    )


@pytest.mark.parametrize(
    ("mutate", "key"),
    [
        (lambda ws: ws.providers["local"].update(colour="blue"), "providers.local.colour"),
        (lambda ws: ws.providers["local"].update(rate_limit="fast"), "providers.local.rate_limit"),
        (lambda ws: ws.namespaces["db"].update(refresh="5 minutes"), "namespaces.db.refresh"),
        (lambda ws: ws.templates[0].update(source="templates/missing.j2"), "templates[0].source"),
    ],
)
def test_config_errors_exit_2_and_write_nothing(ws: Workspace, mutate: object, key: str) -> None:
    """A bad config exits 2 naming the key path, and nothing is written."""
    creds = ws.template("creds.j2", CREDS)
    mutate(ws)  # type: ignore[operator]
    run = ws.run("render", "--once")
    assert 2 == run.returncode
    assert f"{ws.config_path}: {key}: " in run.stderr
    assert not creds.parent.exists()


def test_missing_config_file(tmp_path: Path) -> None:
    """A missing config exits 2 and says which path was tried."""
    run = run_cli("--config", tmp_path / "nope.yaml", "check")
    assert 2 == run.returncode
    assert "nope.yaml: config file not found" in run.stderr


def test_config_from_environment_and_cwd(ws: Workspace) -> None:
    """$SMAGENT_CONFIG, then ./smagent.yaml, are used when --config is absent."""
    ws.template("creds.j2", CREDS)
    ws.write()
    by_env = run_cli("check", env={"SMAGENT_CONFIG": str(ws.config_path)}, cwd=Path("/"))
    assert 0 == by_env.returncode
    assert str(ws.config_path) in by_env.stdout
    by_cwd = run_cli("check", cwd=ws.root)
    assert 0 == by_cwd.returncode
    assert str(ws.config_path) in by_cwd.stdout


def test_global_options_after_the_command(ws: Workspace) -> None:
    """--config and --log-format work after the command too."""
    ws.template("creds.j2", CREDS)
    ws.write()
    run = run_cli("render", "--once", "--config", ws.config_path, "--log-format", "console")
    assert 0 == run.returncode, run.stderr
    assert "template.rendered" in run.stderr
    assert not run.stderr.lstrip().startswith("{")


def test_a_provider_that_cannot_be_built_stops_before_any_write(ws: Workspace) -> None:
    """A provider that cannot be built (its client secret file is missing) exits 2 before
    writing anything, naming the provider and the file."""
    creds = ws.template("creds.j2", CREDS)
    ws.providers["kv"] = {
        "type": "azure",
        "vault_url": "https://example.vault.azure.net",
        "credential": "client_secret",
        "tenant_id": "t",
        "client_id": "c",
        "client_secret_file": "no-such-file",
    }
    run = ws.run("render", "--once")
    assert 2 == run.returncode
    assert "providers.kv: cannot read client_secret_file" in run.stderr
    assert "no-such-file: No such file or directory" in run.stderr
    assert not creds.exists()


def test_computed_secret_name_is_masked_everywhere(ws: Workspace) -> None:
    """A secret name computed from a value is masked in logs, even in the store's own words."""
    ws.template("leak.j2", "{{ secrets.store[secrets.db.password ~ '-x'] }}\n")
    run = ws.run("render", "--once")
    assert 1 == run.returncode
    (failure,) = [e for e in run.logs() if e["event"] == "reference.failed"]
    assert "local:<computed>" == failure["reference"]
    assert "no secret named '<computed>'" in failure["detail"]
    assert_no_canary(run.stdout, run.stderr)


def test_json_logs_are_one_object_per_line(ws: Workspace) -> None:
    """Every stderr line of a JSON-format run is a JSON object with event and level."""
    ws.template("creds.j2", CREDS)
    run = ws.run("--log-format", "json", "--log-level", "debug", "render", "--once")
    events = [json.loads(line) for line in run.stderr.splitlines()]
    assert ["provider.fetched", "template.rendered", "pass.finished"] == [
        e["event"] for e in events
    ]
    for event in events:
        assert {"event", "level", "timestamp"} <= event.keys()


def test_pass_finished_counts_outcomes(ws: Workspace) -> None:
    """pass.finished carries a count per outcome and the number of secrets fetched."""
    ws.template("creds.j2", CREDS)
    ws.template("bad.j2", "{{ secrets.store.nonexistent }}\n")
    (finished,) = [e for e in ws.run("render", "--once").logs() if e["event"] == "pass.finished"]
    assert (1, 1, 2) == (finished["written"], finished["failed"], finished["secrets_fetched"])


def test_failing_action_output_is_scrubbed_end_to_end(ws: Workspace) -> None:
    """An on_change command printing the secret and failing: its debug output shows <redacted>."""
    # the shown tail (OUTPUT_SHOWN characters of the raw output) starts inside the first copy
    padding = OUTPUT_SHOWN - (len(CANARY) - len(CANARY) // 2) - len("login as ") - len(CANARY)
    code = (
        "import sys\n"
        "secret = open(sys.argv[1]).read().split('password=')[1].strip()\n"
        "sys.stderr.write(secret + '.' * int(sys.argv[2]) + 'login as ' + secret)\n"
        "sys.exit(3)\n"
    )
    creds = ws.out / "creds"
    command = [sys.executable, "-c", code, str(creds), str(padding)]
    ws.template("creds.j2", CREDS, on_change=[{"command": command}])
    run = ws.run("--log-level", "debug", "render", "--once")
    assert 1 == run.returncode
    (failed,) = [e for e in run.logs() if e["event"] == "action.failed"]
    (output,) = [e for e in run.logs() if e["event"] == "action.output"]
    assert ("error", "exited with status 3") == (failed["level"], failed["error"])
    assert f"<redacted>{'.' * padding}login as <redacted>" == output["output"]


def test_cli_error_and_output_lines_are_scrubbed(ws: Workspace) -> None:
    """A fetched value that reaches a CLI error or output line (typed as a key) is <redacted>."""
    ws.template("creds.j2", CREDS)
    got = ws.run("get", f"db/{CANARY_USER}")
    assert (1, "") == (got.returncode, got.stdout)
    assert got.stderr.startswith("error: local:prod/db key <redacted>: key '<redacted>' not in")
    ws.template("literal.j2", f"{{{{ secrets.db['{CANARY}'] }}}}")
    allow_secrets_in(ws.root / "templates/literal.j2")  # holds it on purpose
    checked = ws.run("check", "--connect")
    assert 1 == checked.returncode
    assert "    local:prod/db key <redacted>  failed: key '<redacted>' not in" in checked.stdout
    dry = ws.run("render", "--dry-run")
    assert 1 == dry.returncode
    assert "key '<redacted>' not in secret prod/db" in dry.stdout


def test_systemd_unit_action_runs_systemctl_kill(ws: Workspace) -> None:
    """render --once signals a changed file's unit through `systemctl kill` (a fake on PATH)."""
    bin_dir, record = fake_systemctl(ws.root)
    ws.template("creds.j2", CREDS, on_change=[{"signal": "HUP", "systemd_unit": "pgbouncer"}])
    path = f"{bin_dir}{os.pathsep}{os.environ['PATH']}"
    run = ws.run("render", "--once", env={"PATH": path})
    assert 0 == run.returncode, run.stderr
    assert ["kill", "--kill-whom=main", "--signal=SIGHUP", "--", "pgbouncer"] == (
        record.read_text().splitlines()
    )
    (ran,) = [e for e in run.logs() if e["event"] == "action.ran"]
    assert "sent SIGHUP to pgbouncer" == ran["detail"]
