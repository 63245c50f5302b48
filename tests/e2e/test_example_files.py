"""examples/database-host/ as an operator copies it: the config checks, the units verify.

The templates themselves are proven by the rotation tests (test_pgbouncer_rotation.py
renders them against a real pgbouncer); here, the parts those tests replace: the
config's own paths, owners and provider, and the systemd drop-ins.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.e2e.dbhost import EXAMPLE

ANALYZE = shutil.which("systemd-analyze")
SMAGENT_UNIT = EXAMPLE.parents[1] / "systemd" / "smagent.service"
PGBOUNCER_UNIT = Path("/lib/systemd/system/pgbouncer.service")
"""Debian's unit, from the pgbouncer package."""


def test_the_example_config_checks_and_reads_every_stage(tmp_path: Path) -> None:
    """`smagent check` accepts the example (its application group swapped for one this host
    has) and lists the three stages of the one secret that the templates read."""
    folder = tmp_path / "etc-smagent"
    shutil.copytree(EXAMPLE, folder)
    config = folder / "smagent.yaml"
    text = config.read_text().replace("group: app\n", "group: root\n")
    config.write_text(text.replace(": replicant\n", ": root\n"))  # the MariaDB/Arcion account
    run = run_cli("--config", config, "check", env={"AWS_EC2_METADATA_DISABLED": "true"})
    assert 0 == run.returncode, run.stderr
    for stage in ("", "#AWSPENDING", "#AWSPREVIOUS"):
        assert f"aws:prod/postgres/app{stage} key username" in run.stdout, run.stdout


@pytest.mark.skipif(ANALYZE is None and not os.environ.get("CI"), reason="no systemd-analyze")
def test_the_example_drop_ins_verify_without_a_word(tmp_path: Path) -> None:
    """smagent's unit with the example's drop-in, and Debian's pgbouncer unit with its drop-in:
    `systemd-analyze verify` prints nothing (an unknown key would be a warning)."""
    assert ANALYZE is not None, "systemd-analyze not installed (Debian package systemd)"
    smagent = Path(sys.executable).with_name("smagent")
    units = tmp_path / "units"
    shutil.copytree(EXAMPLE / "systemd", units)
    unit = SMAGENT_UNIT.read_text().replace("/opt/smagent/bin/smagent ", f"{smagent} ")
    (units / "smagent.service").write_text(unit)
    names = ["smagent.service"]
    if PGBOUNCER_UNIT.exists():
        shutil.copy(PGBOUNCER_UNIT, units / "pgbouncer.service")
        names.append("pgbouncer.service")
    for name in names:
        proc = subprocess.run(
            [ANALYZE, "verify", str(units / name)],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "SYSTEMD_UNIT_PATH": f"{units}:"},
            check=False,
        )
        assert (0, "") == (proc.returncode, proc.stdout + proc.stderr), name
    broken = units / "smagent.service.d" / "database-host.conf"
    broken.write_text(broken.read_text() + "ReadWritePath=/etc/typo\n")
    proc = subprocess.run(
        [ANALYZE, "verify", str(units / "smagent.service")],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "SYSTEMD_UNIT_PATH": f"{units}:"},
        check=False,
    )
    assert "ReadWritePath" in proc.stderr, "the drop-in was not read at all"
