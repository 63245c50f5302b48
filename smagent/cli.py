"""Command line: argument parsing and exit codes; the work happens elsewhere.

Exit codes are a contract (SPEC section 1): 0 all good, 1 at least one
template, reference or action failed (the others were still done), 2 a usage
or configuration error (nothing written). Heavy modules (Jinja, providers)
are imported inside the commands that need them, so `--version` and config
errors answer fast: this module imports argparse and nothing else of weight
(not even asyncio, the config or the logging stack) until a command runs.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from smagent import __version__

if TYPE_CHECKING:
    from smagent.config import Config, TemplateSpec
    from smagent.pipeline import PassResult
    from smagent.providers.base import FetchResult, Provider
    from smagent.references import Lookup

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
MASK = "********"


class UsageError(Exception):
    """Bad arguments or config: exit 2, nothing written."""


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)  # --version and --help exit here
    from smagent.config import ConfigError
    from smagent.logging import configure

    configure(args.log_format, args.log_level)
    try:
        result: int = args.handler(args)
    except ConfigError as exc:
        for issue in exc.issues:
            _error(str(issue))
        return EXIT_USAGE
    except UsageError as exc:
        _error(str(exc))
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    return result


def run() -> NoReturn:
    """The `smagent` command (and `python -m smagent`): `main`, then a quick exit.

    Once the last file is written and the actions have run, tearing the interpreter
    down (every module's globals cleared, every object freed) is work nobody waits
    for but the caller: 20 ms of a one-shot `render --once` on the demo, more with a
    cloud SDK loaded. So the exit handlers run and stdout/stderr are flushed as at any
    exit, then the process ends with os._exit. Python's own exit is kept where it has
    more to do: a thread other than daemons still running (it would be waited for), a
    profiler or tracer (cProfile, coverage) that writes its results once we return, or
    output that cannot be flushed (Python reports it and exits 120).
    """
    code = main()
    import atexit
    import threading

    current = threading.current_thread()
    if any(t is not current and not t.daemon for t in threading.enumerate()):
        raise SystemExit(code)
    if sys.getprofile() is not None or sys.gettrace() is not None:
        raise SystemExit(code)  # a profiler or coverage writes its results after we return
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        raise SystemExit(code) from None
    atexit._run_exitfuncs()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        os._exit(code or 120)  # Python's status for output it could not flush at exit
    os._exit(code)


def _error(message: str) -> None:
    from smagent.logging import REDACTOR

    print(f"error: {REDACTOR.scrub(message)}", file=sys.stderr)


def _out(line: str = "", *, scrub: bool = True) -> None:
    """stdout; `scrub=False` only for lines made of config text (paths, names).

    A reader that went away (`smagent check | head -1`) silences further output
    without changing what the command does or the exit code it returns.
    """
    from smagent.logging import REDACTOR

    try:
        print(REDACTOR.scrub(line) if scrub else line, flush=True)
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


# --- commands ------------------------------------------------------------------------------------


def _load(args: argparse.Namespace) -> Config:
    from smagent.config import SecretManagerFlags, find_config_path, load_config

    flags = SecretManagerFlags(
        getattr(args, "use_sm_provider", None), getattr(args, "secret_manager", None)
    )
    return load_config(find_config_path(args.config), flags)


def cmd_render(args: argparse.Namespace) -> int:
    import asyncio

    config = _load(args)
    templates = _select(config, args.template or [])
    if not args.once and not args.dry_run:
        return _agent(args, config)
    result = asyncio.run(_with_providers(config, _render, config, templates, args.dry_run))
    if args.dry_run:
        _print_dry_run(result)
    return EXIT_OK if result.ok else EXIT_FAILED


def _agent(args: argparse.Namespace, config: Config) -> int:
    """`render` without `--once`: run until SIGTERM/SIGINT (exit 0)."""
    import asyncio

    from smagent.agent import StartError, run_agent
    from smagent.config import SecretManagerFlags

    flags = SecretManagerFlags(
        getattr(args, "use_sm_provider", None), getattr(args, "secret_manager", None)
    )
    try:
        return asyncio.run(run_agent(config, flags, list(dict.fromkeys(args.template or []))))
    except StartError as exc:
        raise UsageError(f"{config.path}: {exc}") from None


def _select(config: Config, names: list[str]) -> tuple[TemplateSpec, ...]:
    """The templates `--template` names; a name that matches none is a usage error."""
    from smagent.config import ConfigError

    unknown = []
    for name in dict.fromkeys(names):
        try:
            config.select([name])
        except ConfigError:
            unknown.append(name)
    if unknown:
        known = ", ".join(t.name for t in config.templates) or "none configured"
        raise UsageError(
            f"--template {', '.join(map(repr, unknown))}: no template of {config.path} has "
            f"that name, source or destination (templates: {known})"
        )
    return config.select(names)


async def _render(
    providers: dict[str, Provider], config: Config, templates: Any, dry_run: bool
) -> PassResult:
    """One pass; then every action owed, once each: this pass's, and those a process that
    died before running them left in the state folder (claimed before the pass)."""
    from smagent.pending import Journal, Ledger
    from smagent.pipeline import Pipeline

    if dry_run:  # the dry run's dynamic credentials are written nowhere: revoked
        from smagent.resolver import Resolver
        from smagent.retire import revoke_unused

        resolver = Resolver(providers, float(config.defaults.fetch_timeout))
        try:
            return await Pipeline(config, providers, one_shot=True).run(
                templates, dry_run=True, resolver=resolver
            )
        finally:
            await revoke_unused(providers, resolver.results)
    journal = await Journal.open(config)
    orphans = await journal.orphans()
    ledger = Ledger()
    try:
        await ledger.adopt(orphans, config)
        pipeline = Pipeline(config, providers, one_shot=True)
        return await pipeline.run(templates, journal=journal, ledger=ledger)
    finally:
        ledger.release()
        for record in orphans:
            record.release()


def _print_dry_run(result: PassResult) -> None:
    from smagent.pipeline import Status

    width = max((len(s.value) for s in Status), default=0)
    for item in result.templates:
        line = f"{item.status.value:<{width}}  {item.template.destination}  ({item.template.name})"
        changed = item.changed_lines
        if len(changed) == 1:
            line += f"  line {changed[0]} differs"
        elif changed:
            line += f"  lines {_ranges(changed)} differ"
        _out(line, scrub=False)
        for problem in item.problems:
            _out(f"    {problem}")


def _ranges(numbers: Sequence[int]) -> str:
    parts: list[str] = []
    start = prev = numbers[0]
    for n in [*numbers[1:], None]:
        if n is not None and n == prev + 1:
            prev = n
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if n is not None:
            start = prev = n
    return ", ".join(parts)


def cmd_check(args: argparse.Namespace) -> int:
    import asyncio

    config = _load(args)
    _out(
        f"config ok: {config.path} ({len(config.providers)} providers, "
        f"{len(config.namespaces)} namespaces, {len(config.templates)} templates)"
    )
    if not args.connect:  # offline: no provider is built, no SDK imported, nothing contacted
        return asyncio.run(_check({}, config, connect=False))
    return int(asyncio.run(_with_providers(config, _check, config, args.connect)))


async def _check(providers: dict[str, Provider], config: Config, connect: bool) -> int:
    from smagent.pipeline import Pipeline
    from smagent.render import COMPUTED
    from smagent.resolver import Resolver

    pipeline = Pipeline(config, providers, one_shot=True)
    resolver = Resolver(providers if connect else {}, float(config.defaults.fetch_timeout))
    if connect:
        from smagent.retire import revoke_unused

        try:
            outcomes = await pipeline.render_all(config.templates, resolver)
        finally:  # checked, and written nowhere: a dynamic credential is revoked
            await revoke_unused(providers, resolver.results)
    else:
        outcomes = [pipeline.renderer.render(t, {}) for t in config.templates]
    failed = False
    for template, outcome in zip(config.templates, outcomes, strict=True):
        _out(f"{template.name} -> {template.destination}", scrub=False)
        for lookup in _deepest(outcome.lookups):
            label = outcome.labels.get(lookup, COMPUTED)
            if not connect:
                _out(f"    {label}")
                continue
            problem = _lookup_problem(lookup, resolver.results.get(lookup.ref), label)
            _out(f"    {label}  " + ("ok" if problem is None else f"failed: {problem}"))
            failed = failed or problem is not None
        for error in outcome.problems:
            _out(f"    error: {error}")
            failed = True
    return EXIT_FAILED if failed else EXIT_OK


def _lookup_problem(lookup: Lookup, found: FetchResult | None, label: str) -> str | None:
    """Why `lookup` gives no value (its whole key path walked), or None when it does.

    A fetched secret is not enough: `db.pasword` fails when `pasword` is not
    in it. The reason names keys, never values; when part of the lookup was
    computed from a secret (shown as <computed>), not even the key.
    """
    from smagent.providers.base import ProviderError
    from smagent.render import COMPUTED, ReferenceProblem, extract

    if found is None:
        return "not resolved"
    if isinstance(found, ProviderError):
        return found.kind  # the provider's words follow on the template's error line
    try:
        extract(lookup, found)
    except ReferenceProblem as exc:
        return "key path not found in the secret" if COMPUTED in label else str(exc)
    return None


def _deepest(lookups: Sequence[Lookup]) -> list[Lookup]:
    """`secrets.db.password` records `db` then `db.password`: list only the latter."""
    deepest = [
        lookup
        for lookup in lookups
        if not any(
            other.ref == lookup.ref
            and len(other.key) > len(lookup.key)
            and other.key[: len(lookup.key)] == lookup.key
            for other in lookups
        )
    ]
    return sorted(deepest, key=str)  # the order of the real text; labels may mask it


def cmd_get(args: argparse.Namespace) -> int:
    import asyncio

    from smagent.references import ReferenceSyntaxError, parse_reference_text

    config = _load(args)
    try:
        lookup = parse_reference_text(args.reference, config.namespaces, set(config.providers))
    except ReferenceSyntaxError as exc:
        raise UsageError(str(exc)) from None
    return int(asyncio.run(_with_providers(config, _get, config, lookup, args.reveal)))


async def _get(providers: dict[str, Provider], config: Config, lookup: Lookup, reveal: bool) -> int:
    from smagent.providers.base import ProviderError
    from smagent.render import ReferenceProblem, extract
    from smagent.resolver import Resolver

    resolver = Resolver(providers, float(config.defaults.fetch_timeout))
    try:
        result = (await resolver.resolve([lookup.ref]))[lookup.ref]
    finally:
        if not reveal:  # masked: nobody will ever use this dynamic credential
            from smagent.retire import revoke_unused

            await revoke_unused(providers, resolver.results)
    if isinstance(result, ProviderError):
        _error(f"{lookup}: {result.kind}: {result.detail}")
        return EXIT_FAILED
    try:
        value = extract(lookup, result)
    except ReferenceProblem as exc:
        _error(f"{lookup}: {exc}")
        return EXIT_FAILED
    if not reveal:
        _out(MASK)
    elif isinstance(value, bytes):
        sys.stdout.buffer.write(value)
        sys.stdout.flush()
    else:
        print(value)
    return EXIT_OK


def cmd_test_connection(args: argparse.Namespace) -> int:
    import asyncio

    config = _load(args)
    asked = [n for name in args.providers or () for n in config.groups.get(name, (name,))]
    names = list(dict.fromkeys(asked or config.providers))
    unknown = [n for n in names if n not in config.providers]
    if unknown:
        known = ", ".join(config.providers) or "none configured"
        raise UsageError(
            f"{config.path}: no provider named {', '.join(map(repr, unknown))} (providers: {known})"
        )
    if not names:
        _out(f"no providers in {config.path}: nothing to test", scrub=False)
        return EXIT_OK
    return int(asyncio.run(_with_providers(config, _test_connection, config, names)))


async def _test_connection(providers: dict[str, Provider], config: Config, names: list[str]) -> int:
    """Every named provider at once, each within fetch_timeout; reported in the order asked."""
    import asyncio

    limit = float(config.defaults.fetch_timeout)
    outcomes = await asyncio.gather(*(_test_one(providers[name], limit) for name in names))
    for name, problem in zip(names, outcomes, strict=True):
        kind = type(config.providers[name]).__struct_config__.tag
        _out(f"{name} ({kind}): ok" if problem is None else f"{name} ({kind}): failed: {problem}")
    return EXIT_FAILED if any(outcomes) else EXIT_OK


async def _test_one(provider: Provider, limit: float) -> str | None:
    """None when the provider's connection test passed, else what failed (no value in it)."""
    import asyncio

    from smagent.logging import get_logger
    from smagent.providers.base import ProviderError

    try:
        async with asyncio.timeout(limit):
            await provider.test_connection()
    except TimeoutError:
        return f"unavailable: no answer within {limit:g}s (fetch_timeout)"
    except ProviderError as exc:
        return f"{exc.kind}: {exc.detail}"
    except Exception as exc:  # a provider's bug: its type, never its text (it may hold a value)
        get_logger().error(
            "provider.crashed", provider=provider.name, error_type=type(exc).__name__
        )
        return f"provider error: internal error in provider ({type(exc).__name__})"
    return None


async def _with_providers(config: Config, command: Any, *args: Any) -> Any:
    """Open the configured providers, run `command(providers, *args)`, always close them."""
    from smagent.providers import ProviderSetupError, open_providers

    try:
        async with open_providers(config.providers) as providers:
            return await command(providers, *args)
    except ProviderSetupError as exc:
        raise UsageError(f"{config.path}: {exc}") from None


def cmd_status(args: argparse.Namespace) -> int:
    import json
    import time
    from pathlib import Path

    from smagent import health, status_report
    from smagent.config import ConfigError, configured_state_dir, find_config_path
    from smagent.logging import REDACTOR
    from smagent.state import STATUS_FILE, state_dir_from

    config_path = find_config_path(args.config)
    config: Config | None
    problems: str | None
    try:
        config = _load(args)
    except ConfigError as exc:
        # the running agent rejected this edit and kept its last good config: show its
        # state, and the config's problems, rather than stopping at them
        config, problems = None, REDACTOR.scrub(str(exc))  # printed unscrubbed below
        _error(f"{exc}\n(the config on disk is invalid; a running agent keeps its last good one)")
        state_dir = state_dir_from(configured_state_dir(config_path))
    else:
        problems, state_dir = None, state_dir_from(config.state_dir)
    path = state_dir / STATUS_FILE
    try:
        status = health.read_status(path)
    except health.StatusUnreadable as exc:
        raise UsageError(str(exc)) from None
    if status is not None:  # the agent scrubbed its messages; scrub again with what we know
        if config is not None:
            status_report.register_local_values(config)
        status = health.scrubbed(status, REDACTOR.scrub)
    now = time.time()
    verdict = status_report.judge(status, path, now)
    if problems is not None:
        verdict = status_report.with_config_problems(verdict, problems)
    if args.json:
        machine = status_report.json_report(status, verdict, path, now)
        _out(json.dumps(machine, indent=2, ensure_ascii=False), scrub=False)
    else:
        shown = Path(os.path.abspath(config_path))
        for line in status_report.text_report(status, verdict, now, shown):
            _out(line, scrub=False)  # messages scrubbed above; names are config text
    return verdict.exit_code


# --- parser --------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    _global_options(common, argparse.SUPPRESS)
    parser = argparse.ArgumentParser(
        prog="smagent",
        description="Keep config files filled with secrets from AWS, Azure, Vault, a file or env.",
    )
    _global_options(parser, None)
    parser.add_argument("--version", action="version", version=f"smagent {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    render = commands.add_parser("render", parents=[common], help="render templates into files")
    render.add_argument("--once", action="store_true", help="one pass, then exit")
    render.add_argument(
        "--dry-run", action="store_true", help="write nothing, run nothing; show what would change"
    )
    render.add_argument(
        "--template",
        action="append",
        metavar="NAME",
        help="only this template (its name, source or destination); repeatable",
    )
    _secret_manager_options(render)
    render.set_defaults(handler=cmd_render)

    check = commands.add_parser(
        "check", parents=[common], help="validate the config and templates; list references"
    )
    check.add_argument("--connect", action="store_true", help="also resolve every reference")
    _secret_manager_options(check)
    check.set_defaults(handler=cmd_check)

    get = commands.add_parser("get", parents=[common], help="resolve one reference")
    get.add_argument(
        "reference", help="NS/KEY, secrets.NS.KEY, PROVIDER:SECRET_ID or arcion-sm://NS/KEY"
    )
    get.add_argument("--reveal", action="store_true", help="print the value instead of ********")
    get.set_defaults(handler=cmd_get)

    test = commands.add_parser(
        "test-connection", parents=[common], help="authenticate to providers; one cheap read"
    )
    test.add_argument("providers", nargs="*", metavar="PROVIDER")
    test.set_defaults(handler=cmd_test_connection)

    status = commands.add_parser(
        "status",
        parents=[common],
        help="what the running agent keeps current and what fails "
        "(exit 0 all current, 1 something failing, 3 agent not running)",
    )
    status.add_argument("--json", action="store_true", help="the machine-readable form")
    status.set_defaults(handler=cmd_status)
    return parser


def _secret_manager_options(parser: argparse.ArgumentParser) -> None:
    """Arcion Replicant's own flags, so a Replicant command line carries over unchanged."""
    parser.add_argument(
        "--use-sm-provider",
        type=str.upper,
        choices=["AWS", "AZURE", "NONE"],
        help="as Replicant: resolve arcion-sm:// tokens through this secret manager",
    )
    parser.add_argument(
        "--secret-manager",
        metavar="FILE",
        help="Replicant's secret-manager file (its namespaces become smagent namespaces)",
    )


def _global_options(parser: argparse.ArgumentParser, default: Any) -> None:
    parser.add_argument(
        "--config",
        metavar="PATH",
        default=default,
        help="config file (default: $SMAGENT_CONFIG, ./smagent.yaml, /etc/smagent/smagent.yaml)",
    )
    parser.add_argument(
        "--log-format",
        choices=["auto", "json", "console"],
        default=default if default is not None else "auto",
    )
    parser.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        default=default if default is not None else "info",
    )
