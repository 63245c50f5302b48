"""`smagent status`: the agent's status file judged and told at a glance.

The verdict is also the exit code, for a monitoring check:

- 0: the agent runs and every template is current;
- 1: it runs, but something needs attention: a template failing or not
  rendered yet, an on_change action pending, a provider unavailable, a
  rejected config reload, an expired lease, the first pass not finished;
- 3: it is not running: no status file, its pid gone (or now another
  process), a clean stop recorded, or a status older than 3 heartbeats (a
  hung agent stops writing it, and so does one that died with the host).

(2, a usage or config error, is the CLI's.) When the agent is not running,
the last state it recorded is still shown: what was failing when it went.

Names and paths come from the config and are shown as they are; messages are
scrubbed with the redactor, which `register_local_values` fills with what
this process can know without asking a store (the agent scrubbed them
already, with every value it fetched: this is the second line).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from smagent.config import Config, EnvProviderConfig, FileProviderConfig
from smagent.health import AgentStatus
from smagent.values import leaves

EXIT_OK, EXIT_ATTENTION, EXIT_NO_STATE, EXIT_NOT_RUNNING = 0, 1, 2, 3
STALE_HEARTBEATS = 3
PID_START_SLACK = 5.0
"""Seconds by which a process may seem to have started after the agent's last status write
and still be the agent (the boot time /proc gives is whole seconds)."""


@dataclass(frozen=True, slots=True)
class Verdict:
    exit_code: int
    state: str
    """ok | attention | not_running"""
    headline: str
    problems: tuple[str, ...]


def judge(status: AgentStatus | None, path: Path, now: float) -> Verdict:
    if status is None:  # SPEC section 6: "2 when no agent state is found"
        return Verdict(
            EXIT_NO_STATE,
            "not_running",
            f"no status file at {path}: no agent has run with this config's state folder "
            "(an agent under systemd keeps it in /var/lib/smagent: run this as its user or "
            "root, or set state_dir in the config)",
            (),
        )
    gone = _why_not_running(status, now)
    problems = tuple(_problems(status, now))
    if gone is not None:
        return Verdict(EXIT_NOT_RUNNING, "not_running", gone, problems)
    if problems:
        return Verdict(EXIT_ATTENTION, "attention", _count_problems(status, now), problems)
    count = len(status.templates)
    return Verdict(EXIT_OK, "ok", f"all {count} template{_s(count)} current", ())


def with_config_problems(verdict: Verdict, problems: str) -> Verdict:
    """`verdict`, also saying that the config on disk fails validation: never better than
    attention (the next restart of the agent would refuse to start)."""
    problem = f"the config on disk is invalid: {one_line(problems)}"
    if verdict.exit_code == EXIT_OK:
        return Verdict(EXIT_ATTENTION, "attention", problem, (problem,))
    return Verdict(verdict.exit_code, verdict.state, verdict.headline, (*verdict.problems, problem))


def _why_not_running(status: AgentStatus, now: float) -> str | None:
    if status.stopped_at is not None:
        return f"stopped at {_when(status.stopped_at)} ({age(now - status.stopped_at)} ago)"
    alive = process_alive(status.pid, status.updated_at)
    if alive is False:
        return (
            f"pid {status.pid} is gone (no clean stop recorded; "
            f"last status {age(now - status.updated_at)} ago)"
        )
    if alive is None:
        return f"pid {status.pid} is now another process (the agent's is gone)"
    late = now - status.updated_at
    if late > STALE_HEARTBEATS * status.heartbeat_s:
        return (
            f"not responding: status last written {age(late)} ago, expected every "
            f"{age(status.heartbeat_s)} (pid {status.pid} exists: hung?)"
        )
    return None


def process_alive(pid: int, last_seen: float) -> bool | None:
    """True: `pid` runs and may be the agent; False: no such process; None: reused by another.

    A process of another user counts as running (we may not signal it, but it
    is there). A zombie has exited. A process that started after the agent
    last wrote its status (`last_seen`) is not the agent: the pid was reused.
    The comparison is with the last write, not with the agent's start: /proc
    gives start times against the boot time as the wall clock says it now,
    and a clock stepped forward while the agent runs (NTP at boot) would make
    a long-running agent look younger than its recorded start, for good; the
    next write (within a heartbeat) is stamped with the new clock.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    started = _process_start(pid)
    if started is None:
        return True  # no /proc (or it went meanwhile): the signal check is all we have
    state, start_time = started
    if state == "Z":
        return False
    if start_time > last_seen + PID_START_SLACK:
        return None
    return True


def _process_start(pid: int) -> tuple[str, float] | None:
    """(state letter, start time as Unix time) of `pid`, from /proc; None if unknown."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            stat = fh.read()
        with open("/proc/stat") as fh:
            boot = next(int(line.split()[1]) for line in fh if line.startswith("btime "))
        fields = stat[stat.rindex(")") + 2 :].split()  # the name may hold spaces and ")"
        ticks = int(fields[19])  # field 22, counted after the name
        return fields[0], boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _problems(status: AgentStatus, now: float) -> Iterator[str]:
    if not status.ready:
        started = age(now - status.started_at)
        yield f"starting: the first pass has not finished (started {started} ago)"
    if status.config_error is not None:
        yield (
            f"config reload rejected: {one_line(status.config_error)} (running on the config "
            f"loaded {age(now - status.config_loaded_at)} ago)"
        )
    for t in status.templates:
        if t.state == "failing":
            yield f"template {t.name} {_failing(t.failing_since, t.error, now)}"
        elif t.state == "pending":
            yield f"template {t.name} not rendered yet"
    for p in status.providers:
        if p.state == "unavailable":
            yield f"provider {p.name} {_unavailable(p.since, p.last_error, now)}"
    for a in status.pending_actions:
        yield f"action {a.action} {_pending(a.since, a.attempts, a.last_error, now)}"
    for lease in status.leases:
        if lease.expires_at <= now:
            yield (
                f"lease of {lease.provider}:{lease.secret} expired "
                f"{age(now - lease.expires_at)} ago"
            )


def _count_problems(status: AgentStatus, now: float) -> str:
    counts = [
        (sum(t.state == "failing" for t in status.templates), "template", "failing"),
        (sum(t.state == "pending" for t in status.templates), "template", "not rendered yet"),
        (sum(p.state == "unavailable" for p in status.providers), "provider", "unavailable"),
        (len(status.pending_actions), "action", "pending"),
        (sum(lease.expires_at <= now for lease in status.leases), "lease", "expired"),
    ]
    parts = [f"{n} {noun}{_s(n)} {what}" for n, noun, what in counts if n]
    if status.config_error is not None:
        parts.append("config reload rejected")
    if not status.ready:
        parts.insert(0, "first pass not finished")
    return ", ".join(parts)


def _failing(since: float | None, error: str | None, now: float, absolute: bool = False) -> str:
    text = "failing" if since is None else f"failing for {age(now - since)}"
    if since is not None and absolute:
        text += f" (since {_when(since)})"
    return f"{text}: {one_line(error)}" if error else text


def _unavailable(since: float | None, error: str | None, now: float) -> str:
    text = "unavailable" if since is None else f"unavailable for {age(now - since)}"
    return f"{text}: {one_line(error)}" if error else text


def _pending(since: float, attempts: int, error: str | None, now: float) -> str:
    text = f"pending for {age(now - since)} ({attempts} attempt{_s(attempts)})"
    return f"{text}: {one_line(error)}" if error else text


# --- the text an operator reads ------------------------------------------------------------------


def text_report(
    status: AgentStatus | None, verdict: Verdict, now: float, config: Path | None = None
) -> list[str]:
    """The glance: the verdict first, then the agent, each template, provider, lease, action.

    `config`, the config this command read, is named when the agent runs another one (two
    configs sharing a state folder): the status is then not about the config asked about."""
    label = {"ok": "OK", "attention": "ATTENTION", "not_running": "NOT RUNNING"}[verdict.state]
    lines = [f"smagent: {label}: {one_line(verdict.headline)}"]
    if status is None:
        return lines
    if verdict.state == "not_running":
        lines.append("last state the agent recorded:")
    lines.append(
        f"agent: pid {status.pid}, started {_when(status.started_at)} "
        f"({age(now - status.started_at)} ago), status written {age(now - status.updated_at)} ago"
    )
    lines.append(
        f"config: {one_line(status.config)}, loaded {age(now - status.config_loaded_at)} ago"
    )
    if config is not None and status.config != str(config):
        lines.append(f"  note: not the config this command read ({one_line(str(config))})")
    if status.config_error is not None:
        lines.append(f"  RELOAD REJECTED: {one_line(status.config_error)}")
    lines.extend(_template_lines(status, now))
    lines.extend(_provider_lines(status, now))
    if status.leases:
        lines.append(f"leases ({len(status.leases)}):")
        for lease in sorted(status.leases, key=lambda lease: lease.expires_at):
            left = lease.expires_at - now
            when = f"expires in {age(left)}" if left > 0 else f"EXPIRED {age(-left)} ago"
            renew = "renewable" if lease.renewable else "not renewable"
            lines.append(f"  {one_line(lease.provider)}:{one_line(lease.secret)}  {when} ({renew})")
    if status.pending_actions:
        lines.append(f"pending actions ({len(status.pending_actions)}):")
        for a in status.pending_actions:
            lines.append(
                f"  {one_line(a.action)}  {_pending(a.since, a.attempts, a.last_error, now)}"
            )
    return lines


_ORDER = {"failing": 0, "pending": 1, "ok": 2}


def _template_lines(status: AgentStatus, now: float) -> Iterator[str]:
    yield f"templates ({len(status.templates)}):"
    for t in sorted(status.templates, key=lambda t: _ORDER[t.state]):  # stable: config order
        where = f"{one_line(t.name)} -> {one_line(t.destination)}"
        if t.state == "failing":
            detail = _failing(t.failing_since, t.error, now, absolute=True)
            last = "never" if t.last_success is None else f"{age(now - t.last_success)} ago"
            yield f"  FAILING  {where}  {detail}; last success {last} (the file keeps it)"
        elif t.state == "pending":
            yield f"  pending  {where}  not rendered yet"
        else:
            done = (
                "" if t.last_success is None else f"current as of {age(now - t.last_success)} ago"
            )
            changed = (
                "" if t.last_written is None else f"file changed {age(now - t.last_written)} ago"
            )
            yield f"  ok       {where}  " + ", ".join(p for p in (done, changed) if p)


def _provider_lines(status: AgentStatus, now: float) -> Iterator[str]:
    if not status.providers:
        return
    yield f"providers ({len(status.providers)}):"
    for p in sorted(status.providers, key=lambda p: p.state == "ok"):
        counts = f"{p.fetches} fetches, {p.errors} errors, {p.throttles} throttled"
        if p.last_success is not None:
            counts = f"last answer {age(now - p.last_success)} ago; {counts}"
        name = f"{one_line(p.name)} ({one_line(p.type)})"
        if p.state == "unavailable":
            yield f"  DOWN     {name}  {_unavailable(p.since, p.last_error, now)}; {counts}"
        else:
            yield f"  ok       {name}  {counts}"


# --- the machine form ----------------------------------------------------------------------------


def json_report(
    status: AgentStatus | None, verdict: Verdict, path: Path, now: float
) -> dict[str, object]:
    """What `--json` prints: the verdict, then the status file as the agent wrote it."""
    return {
        "state": verdict.state,
        "exit_code": verdict.exit_code,
        "summary": verdict.headline,
        "problems": list(verdict.problems),
        "checked_at": now,
        "status_file": str(path),
        "status": None if status is None else json.loads(status.to_json()),
    }


# --- secrets this process can know ---------------------------------------------------------------


def register_local_values(config: Config) -> None:
    """Teach the redactor the values of local stores: each file provider's file, and the
    variables the env provider's namespaces name. Best effort, never an error: status must
    answer even when it may not read the secrets (the agent scrubbed its messages already)."""
    from smagent.logging import REDACTOR

    for value in _local_values(config):
        REDACTOR.add(value)


def _local_values(config: Config) -> Iterator[str | bytes]:
    from smagent.providers.file import MAX_FILE_BYTES
    from smagent.providers.secrets_yaml import load
    from smagent.regular_file import read_regular

    for name, provider in config.providers.items():
        if isinstance(provider, FileProviderConfig):
            try:
                raw, _ = read_regular(provider.path, MAX_FILE_BYTES)
                yield from leaves(load(raw.decode("utf-8")))
            except Exception:  # noqa: S112 - unreadable here: the agent's scrub stands alone
                continue
        elif isinstance(provider, EnvProviderConfig):
            for namespace in config.namespaces.values():
                if namespace.provider == name and namespace.secret is not None:
                    value = os.environ.get(namespace.secret)
                    if value:
                        yield value


# --- wording -------------------------------------------------------------------------------------


def age(seconds: float) -> str:
    """A duration as an operator reads it: 45s, 3m12s, 2h05m, 3d04h."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def one_line(text: str | None) -> str:
    """`text` on one line, control characters shown escaped (no terminal escape goes out)."""
    if text is None:
        return ""
    text = " | ".join(part.strip() for part in text.splitlines() if part.strip())
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))


def _s(n: int) -> str:
    return "" if n == 1 else "s"
