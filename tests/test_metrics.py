"""The Prometheus textfile, read back with prometheus_client's own parser."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from smagent import __version__
from smagent.health import AgentStatus, LeaseHealth, TemplateHealth
from smagent.metrics import render_metrics, write_metrics
from tests.health_samples import healthy, troubled

Series = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> tuple[dict[str, tuple[str, str]], Series]:
    """(family name -> (type, help), (sample name, sorted labels) -> value), checking what
    the parser lets through but node_exporter refuses: a sample with no HELP/TYPE before it, a
    series twice, a family declared twice, a timestamp."""
    families: dict[str, tuple[str, str]] = {}
    series: Series = {}
    for family in text_string_to_metric_families(text):
        assert family.name not in families, f"{family.name} declared twice"
        families[family.name] = (family.type, family.documentation)
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            assert key not in series, f"{key} twice"
            assert sample.timestamp is None
            series[key] = sample.value
    declared = set(re.findall(r"^# TYPE (\S+) ", text, re.MULTILINE))
    for line in text.split("\n")[:-1]:  # the format's only line break (not \r, \x1e)
        if not line.startswith("#"):
            name = re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line)
            assert name is not None, line
            assert name[0] in declared, f"undeclared sample: {line}"
    assert text.endswith("\n")
    return families, series


def test_textfile_parses_and_carries_the_numbers() -> None:
    """Every number of the status is in the file, under its family, with its labels."""
    now = 1_795_000_000.25
    status = troubled(now, pid=1)
    families, series = parse(render_metrics(status))
    userlist = (("destination", "/etc/pgbouncer/userlist.txt"), ("template", "userlist"))
    mysql = (("destination", "/opt/replicant/conn/mysql.yaml"), ("template", "mysql"))
    aws = (("provider", "aws-prod"), ("type", "aws"))
    vault = (("provider", "vault"), ("type", "vault"))
    lease = (("provider", "vault"), ("secret", "database/creds/app"))
    expected = {
        ("smagent_build_info", (("version", __version__),)): 1,
        ("smagent_agent_start_time_seconds", ()): now - 7200,
        ("smagent_status_update_time_seconds", ()): now - 2,
        ("smagent_agent_stop_time_seconds", ()): 0,
        ("smagent_agent_ready", ()): 1,
        ("smagent_config_load_time_seconds", ()): now - 3600,
        ("smagent_config_reload_failed", ()): 0,
        ("smagent_template_ok", userlist): 1,
        ("smagent_template_ok", mysql): 0,
        ("smagent_template_renders_total", userlist): 40,
        ("smagent_template_renders_total", mysql): 38,
        ("smagent_template_failures_total", userlist): 0,
        ("smagent_template_failures_total", mysql): 7,
        ("smagent_template_last_success_time_seconds", userlist): now - 12,
        ("smagent_template_last_success_time_seconds", mysql): now - 3720,
        ("smagent_template_last_written_time_seconds", userlist): now - 5400,
        ("smagent_template_last_written_time_seconds", mysql): now - 86400,
        ("smagent_provider_up", aws): 0,
        ("smagent_provider_up", vault): 1,
        ("smagent_provider_last_success_time_seconds", aws): now - 200,
        ("smagent_provider_last_success_time_seconds", vault): 0,
        ("smagent_provider_fetches_total", aws): 130,
        ("smagent_provider_fetches_total", vault): 30,
        ("smagent_provider_errors_total", aws): 9,
        ("smagent_provider_errors_total", vault): 0,
        ("smagent_provider_throttles_total", aws): 3,
        ("smagent_provider_throttles_total", vault): 1,
        ("smagent_lease_expiry_time_seconds", lease): now + 2465,
        ("smagent_lease_renewable", lease): 1,
        ("smagent_pending_actions", ()): 1,
        ("smagent_pending_action_oldest_time_seconds", ()): now - 65,
    }
    assert expected == series
    assert all(help_text for _, help_text in families.values())
    counters = {name for name, (kind, _) in families.items() if kind == "counter"}
    assert {
        "smagent_template_renders",
        "smagent_template_failures",
        "smagent_provider_fetches",
        "smagent_provider_errors",
        "smagent_provider_throttles",
    } == counters


def test_rejected_reload_stop_and_never_rendered_template() -> None:
    """A rejected reload and a clean stop set their gauges; a template never rendered has 0
    as its times."""
    status = healthy(
        pid=1,
        config_error="smagent.yaml: templates[0].mode: expected an octal mode",
        stopped_at=1234.5,
    )
    status.templates.append(TemplateHealth(name="new", destination="/etc/new", state="pending"))
    _, series = parse(render_metrics(status))
    new = (("destination", "/etc/new"), ("template", "new"))
    assert 1 == series["smagent_config_reload_failed", ()]
    assert 1234.5 == series["smagent_agent_stop_time_seconds", ()]
    assert (0, 0, 0) == (
        series["smagent_template_ok", new],
        series["smagent_template_last_success_time_seconds", new],
        series["smagent_template_last_written_time_seconds", new],
    )
    assert 0 == series["smagent_pending_actions", ()]
    assert 0 == series["smagent_pending_action_oldest_time_seconds", ()]


def test_no_error_text_reaches_the_file() -> None:
    """Error messages stay out of the metrics (labels hold config names only)."""
    status = troubled(pid=1, config_error="a reload error text")
    text = render_metrics(status)
    for message in ("fetch_timeout", "no process with pid", "a reload error text"):
        assert message not in text


def test_an_agent_with_nothing_configured() -> None:
    """No templates, providers or leases: the families are declared, with no samples."""
    status = AgentStatus(1, 10.0, 20.0, 30.0, "/c.yaml", 10.0)
    families, series = parse(render_metrics(status))
    assert ("gauge", "1 when the provider answers (0: unavailable).") == families[
        "smagent_provider_up"
    ]
    assert not any(name.startswith("smagent_template") for name, _ in series)


label_text = st.text(
    st.sampled_from('"\\\n\r{},=# ') | st.characters(codec="utf-8", exclude_categories=("Cs",)),
    max_size=30,
)
"""Any text, the characters that mean something in the format drawn often."""


@example(name='db "main"', destination="C:\\pg\\n\n", secret='a\\"} 1\nfake 2')
@given(name=label_text, destination=label_text, secret=label_text)
def test_label_values_round_trip_through_the_parser(
    name: str, destination: str, secret: str
) -> None:
    """Any text in a name, path or secret id (quotes, backslashes, newlines) reads back as is."""
    status = healthy(now=1000.0, pid=1)
    status.templates = [TemplateHealth(name=name, destination=destination, state="ok")]
    status.leases = [LeaseHealth(provider="vault", secret=secret, expires_at=5.0, renewable=False)]
    _, series = parse(render_metrics(status))
    labels = (("destination", destination), ("template", name))
    assert 1 == series["smagent_template_ok", labels]
    assert (
        5.0
        == series["smagent_lease_expiry_time_seconds", (("provider", "vault"), ("secret", secret))]
    )


def test_write_metrics_replaces_the_file_0644(tmp_path: Path) -> None:
    """The textfile is written atomically, world-readable (node_exporter is another user)."""
    path = tmp_path / "textfile" / "smagent.prom"
    write_metrics(path, healthy())
    write_metrics(path, troubled())
    assert ["smagent.prom"] == [p.name for p in path.parent.iterdir()]
    assert 0o644 == stat.S_IMODE(path.stat().st_mode)
    _, series = parse(path.read_text())
    assert 1 == series["smagent_pending_actions", ()]


NODE_EXPORTER = "prometheus-node-exporter"  # Debian's name for node_exporter


@pytest.fixture
def node_exporter(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A real node_exporter (textfile collector only) on 127.0.0.1: (textfile folder, URL)."""
    binary = shutil.which(NODE_EXPORTER)
    if binary is None:
        reason = f"{NODE_EXPORTER} is not installed (Debian package prometheus-node-exporter)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI is set: the textfile must be checked by its consumer")
        pytest.skip(reason)
    folder = tmp_path / "textfile"
    folder.mkdir()
    proc = subprocess.Popen(
        [binary, "--web.listen-address=127.0.0.1:0", "--collector.disable-defaults",
         "--collector.textfile", f"--collector.textfile.directory={folder}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        for line in proc.stderr:  # ends at its exit: a failed start fails the next assert
            found = re.search(r'msg="Listening on" address=(\S+)', line)
            if found:
                break
        assert found, "node_exporter did not start"
        yield folder, f"http://{found[1]}/metrics"
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()  # type: ignore[union-attr]


def test_node_exporter_reads_the_textfile(node_exporter: tuple[Path, str]) -> None:
    """node_exporter (the consumer) reads the file without error and serves every sample."""
    folder, url = node_exporter
    status = troubled(pid=1)
    status.templates[0].name = 'db "main" \\ 1\nnext'
    write_metrics(folder / "smagent.prom", status)
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - 127.0.0.1 only
        served = response.read().decode()
    ours_served = [  # node_exporter's own Go metrics are not ours to judge
        line
        for line in served.split("\n")
        if re.match(r"(# (HELP|TYPE) )?(smagent_|node_textfile_scrape_error)", line)
    ]
    _, series = parse("\n".join(ours_served) + "\n")
    assert 0 == series.pop(("node_textfile_scrape_error", ()))
    _, ours = parse(render_metrics(status))
    assert ours == series
