"""The agent's status as a Prometheus textfile (node_exporter's textfile collector).

Written by hand in the text exposition format (version 0.0.4): the format is
small, and the client library would be a runtime dependency and an import for
a dozen lines of output. Tests check the file with that library's parser.

A textfile is read by node_exporter at each scrape, so it carries no
timestamps (the collector refuses them) and is replaced atomically (a scrape
must never see half a file). A time that has not happened yet ("last
success" of a template that never rendered) is exported as 0, not left out:
an alert on `time() - smagent_template_last_success_time_seconds` then fires
for a template that never succeeded instead of staying silent.

Labels hold config text only (template, destination, provider, secret id):
never a value, never an error message.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

from smagent import __version__
from smagent.health import AgentStatus

Sample = tuple[dict[str, str], float]


def render_metrics(status: AgentStatus) -> str:
    """The exposition text of `status` (every family with HELP and TYPE, ends with a newline)."""
    out: list[str] = []

    def family(name: str, kind: str, help_text: str, samples: Iterable[Sample]) -> None:
        out.append(f"# HELP {name} {_escape_help(help_text)}")
        out.append(f"# TYPE {name} {kind}")
        out.extend(f"{name}{_labels(labels)} {_number(value)}" for labels, value in samples)

    family(
        "smagent_build_info",
        "gauge",
        "The smagent version (always 1).",
        [({"version": __version__}, 1)],
    )
    family(
        "smagent_agent_start_time_seconds",
        "gauge",
        "When the agent started (Unix time).",
        [({}, status.started_at)],
    )
    family(
        "smagent_status_update_time_seconds",
        "gauge",
        f"When the agent last wrote its status (Unix time; every {status.heartbeat_s:g}s or less).",
        [({}, status.updated_at)],
    )
    family(
        "smagent_agent_stop_time_seconds",
        "gauge",
        "When the agent stopped cleanly (Unix time; 0: running). The file outlives the agent.",
        [({}, status.stopped_at or 0)],
    )
    family(
        "smagent_agent_ready",
        "gauge",
        "1 once the agent's first pass has finished.",
        [({}, status.ready)],
    )
    family(
        "smagent_config_load_time_seconds",
        "gauge",
        "When the config in use was loaded (Unix time).",
        [({}, status.config_loaded_at)],
    )
    family(
        "smagent_config_reload_failed",
        "gauge",
        "1 when the last config reload was rejected (the agent runs on the previous config).",
        [({}, status.config_error is not None)],
    )

    templates = [({"template": t.name, "destination": t.destination}, t) for t in status.templates]
    family(
        "smagent_template_ok",
        "gauge",
        "1 when the template's last render succeeded (0: failing or not rendered yet).",
        [(labels, t.state == "ok") for labels, t in templates],
    )
    family(
        "smagent_template_renders_total",
        "counter",
        "Renders that succeeded.",
        [(labels, t.renders) for labels, t in templates],
    )
    family(
        "smagent_template_failures_total",
        "counter",
        "Renders that failed.",
        [(labels, t.failures) for labels, t in templates],
    )
    family(
        "smagent_template_last_success_time_seconds",
        "gauge",
        "When the template last rendered successfully (Unix time; 0: never).",
        [(labels, t.last_success or 0) for labels, t in templates],
    )
    family(
        "smagent_template_last_written_time_seconds",
        "gauge",
        "When the destination file's content last changed (Unix time; 0: never).",
        [(labels, t.last_written or 0) for labels, t in templates],
    )

    providers = [({"provider": p.name, "type": p.type}, p) for p in status.providers]
    family(
        "smagent_provider_up",
        "gauge",
        "1 when the provider answers (0: unavailable).",
        [(labels, p.state == "ok") for labels, p in providers],
    )
    family(
        "smagent_provider_last_success_time_seconds",
        "gauge",
        "When the secret store last answered a call (Unix time; 0: never).",
        [(labels, p.last_success or 0) for labels, p in providers],
    )
    family(
        "smagent_provider_fetches_total",
        "counter",
        "Calls made to the secret store.",
        [(labels, p.fetches) for labels, p in providers],
    )
    family(
        "smagent_provider_errors_total",
        "counter",
        "Calls to the secret store that failed.",
        [(labels, p.errors) for labels, p in providers],
    )
    family(
        "smagent_provider_throttles_total",
        "counter",
        "Calls the secret store refused as over its rate limit.",
        [(labels, p.throttles) for labels, p in providers],
    )

    leases = [
        ({"provider": lease.provider, "secret": lease.secret}, lease) for lease in status.leases
    ]
    family(
        "smagent_lease_expiry_time_seconds",
        "gauge",
        "When the lease of a dynamic secret expires unless renewed (Unix time).",
        [(labels, lease.expires_at) for labels, lease in leases],
    )
    family(
        "smagent_lease_renewable",
        "gauge",
        "1 when the lease can be renewed.",
        [(labels, lease.renewable) for labels, lease in leases],
    )

    family(
        "smagent_pending_actions",
        "gauge",
        "on_change actions whose files were written but which have not succeeded yet.",
        [({}, len(status.pending_actions))],
    )
    oldest = min((a.since for a in status.pending_actions), default=0)
    family(
        "smagent_pending_action_oldest_time_seconds",
        "gauge",
        "Since when the oldest pending action has waited (Unix time; 0: none pending).",
        [({}, oldest)],
    )
    return "\n".join(out) + "\n"


def write_metrics(path: Path, status: AgentStatus) -> None:
    """Replace `path` atomically (mode 0644: node_exporter runs as another user); blocking."""
    from smagent.writer import FileSpec, write_file

    write_file(FileSpec(path, mode=0o644), render_metrics(status).encode())


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    return (
        "{" + ",".join(f'{name}="{_escape_label(value)}"' for name, value in labels.items()) + "}"
    )


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: float) -> str:
    if isinstance(value, bool | int):
        return str(int(value))
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)
