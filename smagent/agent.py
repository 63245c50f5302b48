"""`smagent render`: one loop that keeps every file current until SIGTERM.

    events ──► dirty templates ──► quiescence (wait min/max) ──► pass ──► actions
      ▲ secrets changed   (scheduler → cache.refresh → index.using)
      ▲ files changed     (watcher → renderer.invalidate → index.reading)
      ▲ config changed / SIGHUP (reload, validated in a thread)

What outlives a pass lives here: the providers (sessions, tokens and leases
survive a reload when their config did not change), the secret cache, the
index of which template uses what, the scheduler, the compiled templates,
the ledger of actions owed, and the replaced leases waiting for their
revocation (smagent/retire.py; listed in state_dir/leases-<key>.json for the next
start). A pass (`Pipeline.run`) is the same one
`render --once` runs, given the cache's view as its resolver and the ledger.

Everything that waits does so on the loop (no blocking call: config parsing,
user look-ups, file writes and fsyncs run in threads), so the watchdog ping,
which is sent from the loop itself, stops when the loop is wedged.

Failure is local. A failing template does not stop the others; a provider
down keeps the last good values (and files) and is retried with backoff; a
failing action is retried with backoff without holding up anything; an
unexpected exception in one of the agent's own loops is logged and the loop
started again, never the process brought down.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from smagent import health, metrics, retire
from smagent.cache import SecretCache
from smagent.config import (
    Config,
    ConfigError,
    FileProviderConfig,
    ProviderConfig,
    SecretManagerFlags,
    TemplateSpec,
    load_config,
)
from smagent.held_leases import HeldLease, held_path, lock_held, read_held, write_held
from smagent.index import Index
from smagent.logging import REDACTOR, get_logger, shown
from smagent.notify import Notifier
from smagent.pending import Journal, Ledger, key_of
from smagent.pipeline import PassResult, Pipeline, Status
from smagent.providers import ProviderSetupError, create_provider
from smagent.providers.base import Provider
from smagent.references import SecretRef
from smagent.retire import HostView, Retiring, next_due, review
from smagent.scheduler import Scheduler
from smagent.state import STATUS_FILE, StateDirError, ensure_state_dir, state_dir_for
from smagent.watch import Watcher
from smagent.writer import WriteError

log = get_logger()

RESTART_DELAY = 1.0
"""Seconds before one of the agent's loops is started again after an unexpected error."""
PASS_RETRY = 10.0
"""Seconds before the templates of a pass that crashed (our bug) are tried again."""
WRITE_RETRY_FIRST = 1.0
WRITE_RETRY_MAX = 60.0


class StartError(Exception):
    """The agent cannot start (a provider cannot be built): exit 2, as a config error."""


@dataclass(slots=True)
class TemplateState:
    """What status and metrics say of one template."""

    name: str
    destination: str
    renders: int = 0
    failures: int = 0
    last_success: float | None = None
    last_written: float | None = None
    failing_since: float | None = None
    error: str | None = None
    retry_at: float | None = None
    """`time.monotonic()` at which a template whose write failed is rendered again."""
    write_failures: int = 0
    rendered_pass_started: float | None = None
    """`time.monotonic()` at which the last pass that rendered it without error began (set
    against a lease's replacement: a wall clock stepped back by NTP must not order them)."""
    held_refs: frozenset[SecretRef] | None = None
    """The secrets its last successful render used: what its file holds, while later renders
    fail (None: none in this run; its file holds what an earlier run wrote)."""


class Agent:
    def __init__(
        self,
        config: Config,
        flags: SecretManagerFlags,
        names: list[str],
        notifier: Notifier,
    ) -> None:
        self.config = config
        self.flags = flags
        self.names = names
        """`--template` names: the agent keeps only these (all when empty)."""
        self.notifier = notifier
        self.providers: dict[str, Provider] = {}
        """One dict for the life of the agent: the cache's fetcher holds it, reloads edit it."""
        self.cache = SecretCache.create(self.providers, float(config.defaults.fetch_timeout))
        self.index = Index()
        self.scheduler = Scheduler(self._interval_for)
        self.ledger = Ledger()
        self.journal = Journal(None, config.path)
        self.pipeline = Pipeline(config, self.providers)
        self.watcher: Watcher | None = None
        self.templates: dict[str, TemplateState] = {}
        self.started_at = time.time()
        self.config_loaded_at = time.time()
        self.config_error: str | None = None
        self.ready = False
        self._dirty: set[str] = set()
        self._first_dirty = 0.0
        self._last_event = 0.0
        self._wake = asyncio.Event()
        self._actions_wake = asyncio.Event()
        self._reload_wanted = False
        self._stopping = False
        self._main: asyncio.Task[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._batches: set[asyncio.Task[None]] = set()
        """Runs of owed actions in progress: apart from passes and from each other, so a
        hanging action holds up no file and no other action; a stop lets them finish."""
        self._scheduled: set[str] = set()
        """The ledger keys a batch is about to run or running."""
        self._status_lock = asyncio.Lock()
        self.retiring: list[Retiring] = []
        """Replaced leases waiting to be revoked (smagent/retire.py)."""
        self._retire_wake = asyncio.Event()
        self._revoking: dict[asyncio.Task[None], Retiring] = {}
        """Revocations under way, each with its lease."""
        self._inherited: list[HeldLease] = []
        """Leases an earlier run left in the state folder: revoked once replaced here."""
        self._held_written: frozenset[tuple[str, float, float]] | None = None
        """The leases its leases file lists now, with their ends (None: not written yet)."""
        self._held_path: Path | None = None
        """This config's leases file, locked by this process (None: not used)."""
        self._held_fd: int | None = None
        self._write_errors: dict[str, str] = {}
        self._states_written: dict[str, str] = {}
        """Each provider's health state as the last status.json said it."""

    # --- life ------------------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._request_stop, signum)
        loop.add_signal_handler(signal.SIGHUP, self._request_reload)
        try:
            await self._open_providers(self.config.providers)
            self.journal = await Journal.open(self.config)
            await self.ledger.adopt(await self.journal.orphans(), self.config)
            await self._hold_leases_file()
            self._sync_templates()
            log.info(
                "agent.started",
                config=str(self.config.path),
                state_dir=str(self.journal.folder.parent) if self.journal.folder else "none",
                templates=len(self.templates),
                providers=", ".join(sorted(self.providers)) or "none",
            )
            self.watcher = Watcher(self._watched_paths())
            self._main = asyncio.current_task()
            self._start(self.notifier.watchdog, "watchdog")
            self._start(self._watch_loop, "watcher")
            self._start(self._refresh_loop, "scheduler")
            self._start(self._actions_loop, "actions")
            self._start(self._retire_loop, "leases")
            self._start(self._heartbeat_loop, "status")
            await self._first_pass()
            await self._loop()
        except asyncio.CancelledError:
            if not self._stopping:
                raise
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()  # our own stop, taken: the shut-down below must not see it
        finally:
            await self._shut_down()
        return 0

    async def _first_pass(self) -> None:
        await self._pass(set(self.templates))
        self.ready = True
        summary = self._summary()
        log.info("agent.ready", summary=summary, templates=len(self.templates))
        self.notifier.ready(summary)
        await self._write_status()

    async def _loop(self) -> None:
        while True:
            self._wake.clear()
            # a reload asked for while a pass ran set the wake-up cleared just now: not lost
            timeout = 0.0 if self._reload_wanted else self._until_next()
            if timeout is None or timeout > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        await self._wake.wait()
            if self._reload_wanted:
                self._reload_wanted = False
                try:
                    await self._reload()
                except Exception as exc:  # a bug of ours in a reload: keep the running config
                    log.error("agent.reload_crashed", error_type=type(exc).__name__)
                    self._reject([f"the reload failed ({type(exc).__name__})"])
            self._retry_failed_writes()
            if self._dirty and self._quiet_enough():
                names, self._dirty = self._dirty, set()
                try:
                    await self._pass(names)
                except Exception as exc:  # a bug in one pass must not end months of service
                    log.error("agent.pass_crashed", error_type=type(exc).__name__)
                    for name in names & set(self.templates):
                        self.templates[name].retry_at = time.monotonic() + PASS_RETRY

    def _request_stop(self, signum: int) -> None:
        if self._stopping:
            return
        self._stopping = True
        log.info("agent.stopping", signal=signal.Signals(signum).name)
        self.notifier.stopping()
        if self._main is not None:
            self._main.cancel()  # a pass mid-write finishes its write-and-action step first

    def _request_reload(self) -> None:
        log.info("agent.reload_requested", cause="SIGHUP")
        self._reload_wanted = True
        self._wake.set()

    def _start(self, loop_fn: Callable[[], Awaitable[None]], name: str) -> None:
        self._tasks.append(asyncio.create_task(self._supervised(loop_fn, name), name=name))

    async def _supervised(self, loop_fn: Callable[[], Awaitable[None]], name: str) -> None:
        while True:
            try:
                await loop_fn()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug in one loop must not stop the agent
                log.error("agent.loop_crashed", loop=name, error_type=type(exc).__name__)
                await asyncio.sleep(RESTART_DELAY)

    async def _shut_down(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        # the write-then-action step: actions running finish, and files written get theirs
        await asyncio.gather(*self._batches, return_exceptions=True)
        await self.ledger.run(self.ledger.due(time.monotonic()))
        self.ledger.release()  # what is still owed stays on disk for the next start
        await asyncio.gather(*self._revoking, return_exceptions=True)
        listed = self._held_file() is not None
        for item in self.retiring:  # not revoked now: a client may be in its grace
            log.info(
                "lease.revoke_postponed" if listed else "lease.left_to_expire",
                provider=item.ref.provider,
                reference=shown(item.ref),
                reason="the agent stopped before its grace ended",
                then="the next start revokes it" if listed else "it ends on its own",
            )
        if self.watcher is not None:
            await self.watcher.close()
        await self._close_providers(list(self.providers))
        await self._write_status(stopped=True)
        if self._held_fd is not None:  # the next start of this config may adopt them now
            os.close(self._held_fd)
            self._held_fd = None
        self.notifier.close()
        log.info("agent.stopped")

    # --- providers -------------------------------------------------------------------------

    async def _open_providers(self, configs: Mapping[str, ProviderConfig]) -> None:
        opened = await _open_all(configs)
        self.providers.update(opened)

    async def _close_providers(self, names: Iterable[str]) -> None:
        for name in list(names):
            provider = self.providers.pop(name, None)
            if provider is None:
                continue
            try:
                await provider.__aexit__(None, None, None)
            except Exception as exc:
                log.error("provider.close_failed", provider=name, error_type=type(exc).__name__)

    # --- passes ----------------------------------------------------------------------------

    async def _pass(self, names: set[str]) -> None:
        chosen = [t for t in self._managed() if t.name in names]
        if not chosen:
            return
        started = time.time()
        started_mono = time.monotonic()
        result = await self.pipeline.run(
            chosen,
            resolver=self.cache.resolver(),
            journal=self.journal,
            ledger=self.ledger,
            run_actions=False,
        )
        self._learn(result, started, started_mono)
        if self._inherited:
            self._adopt_inherited(started_mono)
        if len(self.ledger):
            self._actions_wake.set()
        if self.retiring:
            self._retire_wake.set()
        await self._write_status()

    def _learn(self, result: PassResult, started: float, started_mono: float) -> None:
        """Fold a pass into the index, the schedule, the templates' health and the watcher."""
        now = time.time()
        for item in result.templates:
            name = item.template.name
            refs = {result.canonical_of.get(lookup.ref, lookup.ref) for lookup in item.lookups}
            self.index.update(name, refs, item.files)
            state = self.templates.get(name)
            if state is None:
                continue
            state.renders += 1
            if item.status is Status.FAILED:
                state.failures += 1
                state.failing_since = state.failing_since or now
                state.error = REDACTOR.scrub("; ".join(str(p) for p in item.problems))
                if item.write_failed:
                    state.write_failures += 1
                    delay = min(
                        WRITE_RETRY_MAX, WRITE_RETRY_FIRST * 2.0 ** (state.write_failures - 1)
                    )
                    state.retry_at = time.monotonic() + delay
            else:
                state.last_success = now
                state.rendered_pass_started = started_mono
                state.held_refs = frozenset(refs)
                state.failing_since = None
                state.error = None
                state.retry_at = None
                state.write_failures = 0
                if item.status is Status.WRITTEN:
                    state.last_written = now
        for ref in self.index.all_refs():
            entry = self.cache.entries.get(ref)
            if entry is not None and ref not in self.scheduler:
                self.scheduler.plan(ref, entry)
        self.scheduler.forget(self.cache.retain(self.index.all_refs()))
        if self.watcher is not None:  # a file edited since the pass read it is still news
            self.watcher.set_paths(self._watched_paths(), since=started)

    def _mark_dirty(self, names: Iterable[str]) -> None:
        wanted = set(names) & set(self.templates)
        if not wanted:
            return
        now = time.monotonic()
        if not self._dirty:
            self._first_dirty = now
        self._dirty |= wanted
        self._last_event = now
        self._wake.set()

    def _quiet_enough(self) -> bool:
        return self._ready_at() <= time.monotonic()

    def _ready_at(self) -> float:
        """consul-template's `wait`: `min` of quiet after the last change, at most `max`
        after the first (4 x min when max is 0)."""
        wait = self.config.defaults.wait
        low, high = float(wait.min), float(wait.max)
        if low <= 0:
            return self._last_event
        if high <= 0:
            high = 4 * low
        return min(self._last_event + low, self._first_dirty + high)

    def _until_next(self) -> float | None:
        times = [s.retry_at for s in self.templates.values() if s.retry_at is not None]
        if self._dirty:
            times.append(self._ready_at())
        if not times:
            return None
        return max(0.0, min(times) - time.monotonic())

    def _retry_failed_writes(self) -> None:
        now = time.monotonic()
        due = [
            s.name for s in self.templates.values() if s.retry_at is not None and s.retry_at <= now
        ]
        for name in due:
            self.templates[name].retry_at = None
        self._mark_dirty(due)

    # --- the background loops --------------------------------------------------------------

    async def _refresh_loop(self) -> None:
        running: set[asyncio.Task[None]] = set()
        try:
            while True:
                await self.scheduler.wait()
                due = self.scheduler.take_due()
                if not due:
                    continue
                for provider, refs in _by_provider(due).items():
                    task = asyncio.create_task(self._refresh(refs), name=f"refresh-{provider}")
                    running.add(task)
                    task.add_done_callback(running.discard)
        finally:
            for task in running:
                task.cancel()

    async def _refresh(self, refs: list[SecretRef]) -> None:
        """One provider's due secrets: one batched check; re-render what changed."""
        try:
            look = await self.cache.refresh(refs)
        except Exception as exc:  # the cache contains providers' crashes; this is ours
            log.error("agent.refresh_crashed", error_type=type(exc).__name__)
            for ref in refs:
                self.scheduler.at(ref, time.monotonic() + RESTART_DELAY * 30)
            return
        for ref in refs:
            entry = self.cache.entries.get(ref)
            if entry is not None:
                self.scheduler.plan(ref, entry)
        self._take_replaced()
        if look.changed:
            self._mark_dirty(self.index.using(look.changed))
        elif self._provider_states() != self._states_written:
            await self._write_status()  # an outage (or its end) is news: not in 30 s
        else:
            async with self._status_lock:  # one writer of the leases file at a time
                await self._persist_leases()  # a renewal: its new end, not in 30 s

    def _provider_states(self) -> dict[str, str]:
        return {
            name: str(getattr(getattr(provider, "health", None), "state", "ok"))
            for name, provider in self.providers.items()
        }

    async def _watch_loop(self) -> None:
        assert self.watcher is not None
        async for changed in self.watcher.changes():
            self._on_files_changed(changed)
        # the iteration ends only when the watcher failed: a new one, and a look at everything
        log.error("watch.stopped", restarting_in=RESTART_DELAY)
        await self.watcher.close()
        self.watcher = Watcher(self._watched_paths())
        self._mark_dirty(self.templates)
        raise RuntimeError("the file watcher stopped")

    def _on_files_changed(self, changed: set[Path]) -> None:
        if self.config.path in changed:
            log.info("agent.reload_requested", cause="config file changed")
            self._reload_wanted = True
            self._wake.set()
        provider_files = self._provider_files()
        for path in changed & provider_files.keys():
            name = provider_files[path]
            self.scheduler.now(ref for ref in self.cache.entries if ref.provider == name)
        template_files = changed - {self.config.path} - provider_files.keys()
        if template_files:
            self.pipeline.renderer.invalidate(template_files)
            names = self.index.reading(template_files)
            names |= {t.name for t in self._managed() if t.source in template_files}
            log.info("template.changed", templates=", ".join(sorted(names)) or "none")
            self._mark_dirty(names)

    async def _actions_loop(self) -> None:
        """What passes owe, and retries with their backoff, each due set run as a batch of
        its own (in the order owed): never holds up a pass, a check or another batch."""
        while True:
            waiting = [o.next_try for k, o in self.ledger.owed.items() if k not in self._scheduled]
            next_try = min(waiting, default=None)
            timeout = None if next_try is None else max(0.0, next_try - time.monotonic())
            self._actions_wake.clear()
            if timeout is None or timeout > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        await self._actions_wake.wait()
            due = [k for k in self.ledger.due(time.monotonic()) if k not in self._scheduled]
            if due:
                self._scheduled.update(due)
                batch = asyncio.create_task(self._run_batch(due), name="actions")
                self._batches.add(batch)

    async def _run_batch(self, keys: list[str]) -> None:
        try:
            await self.ledger.run(keys)
        except Exception as exc:  # a bug here must not leave the keys scheduled for good
            log.error("agent.loop_crashed", loop="actions", error_type=type(exc).__name__)
        finally:
            self._scheduled.difference_update(keys)
            self._batches.discard(asyncio.current_task())
            self._actions_wake.set()  # owed again meanwhile, or a new backoff to sleep for
            if self.retiring:
                self._retire_wake.set()
        await self._write_status()

    # --- replaced leases -------------------------------------------------------------------

    def _take_replaced(self) -> None:
        """Leases a check replaced: each waits for its revocation (smagent/retire.py)."""
        for replaced in self.cache.take_replaced():
            provider = self.providers.get(replaced.ref.provider)
            grace = provider.revoke_after() if provider is not None else None
            if provider is None or grace is None:
                continue  # the provider does not revoke: the lease ends on its own
            self.retiring.append(
                Retiring(replaced.ref, replaced.lease, provider, replaced.at, grace)
            )
        if self.retiring:
            self._retire_wake.set()

    def _adopt_inherited(self, started: float) -> None:
        """Leases an earlier run (a restart) or a replaced provider instance (a reload) held:
        once this run holds its own credentials for the secret (the pass that began at
        `started` fetched them), each waits for its revocation as if just replaced."""
        now = time.time()
        current = {
            entry.value.lease.lease_id
            for entry in self.cache.entries.values()
            if entry.value is not None and entry.value.lease is not None
        }
        later: list[HeldLease] = []
        for item in self._inherited:
            provider = self.providers.get(item.ref.provider)
            grace = provider.revoke_after() if provider is not None else None
            if provider is None or grace is None or item.lease.lease_id in current:
                continue
            if item.expires <= now:
                continue  # ended on its own
            if item.ref not in self.cache.entries:
                later.append(item)  # not read by this run yet (or no longer used: it ends)
                continue
            self.retiring.append(
                Retiring(item.ref, item.lease, provider, started, grace, inherited=True)
            )
        self._inherited = later
        if self.retiring:
            self._retire_wake.set()

    def _held_file(self) -> Path | None:
        return self._held_path

    async def _hold_leases_file(self) -> None:
        """Lock this config's leases file for the agent's life and read what an earlier run
        left in it; not when another live agent holds it (the same config started twice)."""
        folder = self.journal.folder
        if folder is None:
            return
        path = held_path(folder.parent, self.config.path)
        try:
            fd = await asyncio.to_thread(lock_held, path)
        except OSError as exc:
            log.warning("leases.write_failed", path=str(path), error=str(exc))
            return
        if fd is None:
            log.warning(
                "leases.in_use",
                path=str(path),
                reason="another agent of this config uses this state folder",
                consequence="the leases this one replaces end on their own",
            )
            return
        self._held_fd = fd
        self._held_path = path
        self._inherited = await asyncio.to_thread(read_held, path, self.journal.config)

    async def _persist_leases(self) -> None:
        """The leases file lists what this run holds (and still has to revoke), when changed."""
        path = self._held_file()
        if path is None:
            return
        held = [
            HeldLease(ref, entry.value.lease)
            for ref, entry in self.cache.entries.items()
            if entry.value is not None and entry.value.lease is not None
        ]
        held += [HeldLease(item.ref, item.lease) for item in self.retiring]
        held += self._inherited  # not adopted yet: still to be revoked by someone
        # a renewal moves a lease's end: the next start skips a lease whose listed end passed
        ids = frozenset(
            (item.lease.lease_id, item.lease.obtained_at, item.lease.duration_s) for item in held
        )
        if ids == self._held_written:
            return
        try:
            await asyncio.to_thread(write_held, path, self.journal.config, held)
        except (OSError, ValueError, WriteError) as exc:
            log.warning("leases.write_failed", path=str(path), error=str(exc))
            return
        self._held_written = ids

    def _host_view(self) -> HostView:
        def still_held(item: Retiring) -> bool:
            return (
                item.ref in self.cache.entries
                and self.providers.get(item.ref.provider) is item.provider
            )

        def rendered_since(name: str) -> float | None:
            state = self.templates.get(name)
            return None if state is None else state.rendered_pass_started

        actions = {t.name: {key_of(a) for a in t.on_change} for t in self._managed()}

        def owes_actions(name: str) -> bool:
            return any(key in self.ledger.owed for key in actions.get(name, ()))

        def using(item: Retiring) -> set[str]:
            names = self.index.using({item.ref})
            for name, state in self.templates.items():
                if state.held_refs is None:
                    if item.inherited:
                        names.add(name)
                elif item.ref in state.held_refs:
                    names.add(name)
            return names

        return HostView(
            still_held=still_held,
            using=using,
            rendered_since=rendered_since,
            owes_actions=owes_actions,
        )

    async def _retire_loop(self) -> None:
        """Revoke each replaced lease once its files and actions are done and its grace ran."""
        while True:
            self._retire_wake.clear()
            found = review(self.retiring, self._host_view(), time.time(), time.monotonic())
            for item, why in found.dropped:
                log.info(
                    "lease.left_to_expire",
                    provider=item.ref.provider,
                    reference=shown(item.ref),
                    reason=why,
                )
            for item in found.due:
                task = asyncio.create_task(self._revoke(item), name="revoke")
                self._revoking[task] = item
                task.add_done_callback(lambda done: self._revoking.pop(done, None))
            at = next_due(self.retiring)
            timeout = None if at is None else max(0.0, at - time.monotonic())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._retire_wake.wait()

    async def _revoke(self, item: Retiring) -> None:
        ref = item.ref
        ends_in = round(max(0.0, item.expires - time.time()), 1)
        delay = item.retry_in()
        retry_in = delay if time.time() + delay < item.expires else None
        try:
            refused = await retire.revoke(
                item.provider, ref, item.lease, retry_in, ends_by_itself_in=ends_in
            )
            if refused is not None:
                if refused.transient and retry_in is not None:  # tried again after a wait
                    item.failures += 1
                    item.retry_at = time.monotonic() + retry_in
                    self.retiring.append(item)
                    self._retire_wake.set()
                return
        except Exception as exc:  # our bug: the same, and the loop goes on
            log.error("lease.revoke_crashed", provider=ref.provider, error_type=type(exc).__name__)
            return
        log.info(
            "lease.revoked",
            provider=ref.provider,
            reference=shown(ref),
            replaced_s_ago=round(time.monotonic() - item.replaced_at, 2),
            grace=item.grace,
        )
        await self._write_status()  # the leases file: one fewer

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(health.HEARTBEAT)
            await self._write_status()

    # --- reload ----------------------------------------------------------------------------

    async def _reload(self) -> None:
        self.notifier.reloading()
        try:
            await self._apply_reload()
        finally:
            self.notifier.ready(self._summary())
            await self._write_status()

    async def _apply_reload(self) -> None:
        try:
            new = await asyncio.to_thread(load_config, self.config.path, self.flags)
            if self.names:
                new.select(self.names)
        except ConfigError as exc:
            self._reject([str(issue) for issue in exc.issues])
            return
        except OSError as exc:
            self._reject([f"{self.config.path}: {exc.strerror or exc}"])
            return
        old = self.config
        if old.templates and not new.templates:  # a file emptied or cut short by a bad write
            self._reject(
                [
                    f"{new.path}: no templates in the new configuration (an empty or truncated "
                    "file?); to manage no files, stop the service"
                ]
            )
            return
        changed = {
            name
            for name in set(old.providers) | set(new.providers)
            if old.providers.get(name) != new.providers.get(name)
        }
        wanted = {name: cfg for name, cfg in new.providers.items() if name in changed}
        try:
            opened = await _open_all(wanted)
        except StartError as exc:
            self._reject([str(exc)])
            return
        # leases waiting for a provider being replaced wait for the new instance, and its
        # revocations under way end before it closes
        closing = [task for task, item in self._revoking.items() if item.ref.provider in changed]
        await asyncio.gather(*closing, return_exceptions=True)  # a refused one waits again
        waiting = [item for item in self.retiring if item.ref.provider in changed]
        self.retiring = [item for item in self.retiring if item.ref.provider not in changed]
        await self._close_providers(changed & set(self.providers))
        replaced = [HeldLease(item.ref, item.lease) for item in waiting]
        replaced += [
            HeldLease(ref, entry.value.lease)
            for ref, entry in self.cache.entries.items()
            if ref.provider in changed and entry.value is not None and entry.value.lease is not None
        ]
        for name in changed:
            self.scheduler.forget(self.cache.drop_provider(name))
        self.providers.update(opened)
        self._inherited += replaced  # the new instances' credentials will replace them
        self.config = new
        self.cache.fetcher.timeout = float(new.defaults.fetch_timeout)
        self.pipeline = Pipeline(new, self.providers, self.pipeline.renderer.for_config(new))
        if state_dir_for(new) != state_dir_for(old):
            self.journal = await Journal.open(new)
        removed = self._sync_templates()
        for name in removed:
            self.index.remove(name)
        self.scheduler.forget(self.cache.retain(self.index.all_refs()))
        self.config_loaded_at = time.time()
        self.config_error = None
        log.info(
            "config.reloaded",
            path=str(new.path),
            templates=len(self.templates),
            providers_replaced=", ".join(sorted(changed)) or "none",
            templates_dropped=", ".join(sorted(removed)) or "none",
        )
        if self.watcher is not None:
            self.watcher.set_paths(self._watched_paths())
        self._mark_dirty(self.templates)

    def _reject(self, problems: list[str]) -> None:
        self.config_error = REDACTOR.scrub("; ".join(problems))
        for problem in problems:
            log.error("config.invalid", error=problem, keeping="the running configuration")

    def _sync_templates(self) -> list[str]:
        """`templates` after a (re)load: new ones added, removed ones dropped (returned)."""
        managed = {t.name: t for t in self._managed()}
        removed = [name for name in self.templates if name not in managed]
        for name in removed:
            del self.templates[name]
        for name, template in managed.items():
            state = self.templates.get(name)
            if state is None:
                self.templates[name] = TemplateState(name, str(template.destination))
            else:
                state.destination = str(template.destination)
        return removed

    # --- what the agent looks at -----------------------------------------------------------

    def _managed(self) -> tuple[TemplateSpec, ...]:
        return self.config.select(self.names) if self.names else self.config.templates

    def _interval_for(self, ref: SecretRef) -> float:
        """The namespace's `refresh` (the shortest of those naming this secret), else the
        default."""
        config = self.config
        found = [
            float(config.namespace_refresh[name])
            for name, ns in config.namespaces.items()
            if name in config.namespace_refresh
            and ns.provider == ref.provider
            and (ns.secret is None or ns.secret == ref.secret_id)
        ]
        return min(found, default=float(config.defaults.refresh))

    def _provider_files(self) -> dict[Path, str]:
        return {
            Path(cfg.path): name
            for name, cfg in self.config.providers.items()
            if isinstance(cfg, FileProviderConfig)
        }

    def _watched_paths(self) -> set[Path]:
        paths = {self.config.path} | self.index.all_files() | set(self._provider_files())
        paths |= {t.source for t in self._managed() if t.source is not None}
        return paths

    # --- status ----------------------------------------------------------------------------

    def _summary(self) -> str:
        failing = [s for s in self.templates.values() if s.failing_since is not None]
        text = f"{len(self.templates) - len(failing)} of {len(self.templates)} files current"
        if failing:
            text += f"; failing: {', '.join(sorted(s.name for s in failing))}"
        if len(self.ledger):
            text += f"; {len(self.ledger)} action(s) pending"
        if self.config_error:
            text += "; last reload rejected"
        return text

    def snapshot(self, *, stopped: bool = False) -> health.AgentStatus:
        now = time.time()
        providers = []
        for name, cfg in self.config.providers.items():
            stats = self.cache.stats.get(name)
            provider = self.providers.get(name)
            state = getattr(getattr(provider, "health", None), "state", "ok")
            since = getattr(getattr(provider, "health", None), "since", None)
            providers.append(
                health.ProviderHealth(
                    name=name,
                    type=str(cfg.__struct_config__.tag),
                    state="ok" if state == "ok" else "unavailable",
                    since=since,
                    fetches=stats.fetches if stats else 0,
                    errors=stats.errors if stats else 0,
                    throttles=stats.throttles if stats else 0,
                    last_error=REDACTOR.scrub(stats.last_error)
                    if stats and stats.last_error
                    else None,
                    last_success=stats.last_success if stats else None,
                )
            )
        leases = [
            health.LeaseHealth(
                provider=entry.ref.provider,
                secret=REDACTOR.scrub(entry.ref.secret_id),
                expires_at=entry.value.lease.obtained_at + entry.value.lease.duration_s,
                renewable=entry.value.lease.renewable,
            )
            for entry in self.cache.entries.values()
            if entry.value is not None and entry.value.lease is not None
        ]
        pending = [
            health.PendingHealth(
                action=label,
                since=owed.since,
                attempts=owed.attempts,
                last_error=REDACTOR.scrub(owed.last_error) if owed.last_error else None,
            )
            for label, owed in self.ledger.describe()
        ]
        templates = [
            health.TemplateHealth(
                name=s.name,
                destination=s.destination,
                state="failing"
                if s.failing_since is not None
                else ("ok" if s.last_success is not None else "pending"),
                last_success=s.last_success,
                failing_since=s.failing_since,
                error=s.error,
                renders=s.renders,
                failures=s.failures,
                last_written=s.last_written,
            )
            for s in self.templates.values()
        ]
        return health.AgentStatus(
            pid=os.getpid(),
            started_at=self.started_at,
            updated_at=now,
            heartbeat_s=health.HEARTBEAT,
            config=str(self.config.path),
            config_loaded_at=self.config_loaded_at,
            config_error=self.config_error,
            ready=self.ready,
            stopped_at=now if stopped else None,
            templates=templates,
            providers=providers,
            leases=leases,
            pending_actions=pending,
        )

    async def _write_one(
        self,
        what: str,
        path: Path,
        write: Callable[[Path, health.AgentStatus], None],
        status: health.AgentStatus,
    ) -> None:
        """One of the two files; a failure is logged when it starts or its reason changes,
        and its end once, not at every pass and heartbeat."""
        try:
            await asyncio.to_thread(write, path, status)
        except (OSError, ValueError, StateDirError, WriteError) as exc:
            reason = str(exc)
            if self._write_errors.get(what) != reason:
                self._write_errors[what] = reason
                log.warning("status.write_failed", file=what, path=str(path), error=reason)
            return
        if self._write_errors.pop(what, None) is not None:
            log.info("status.write_recovered", file=what, path=str(path))

    async def _write_status(self, *, stopped: bool = False) -> None:
        """status.json in the state folder and the metrics textfile; a failure is logged."""
        async with self._status_lock:
            self._states_written = self._provider_states()
            status = self.snapshot(stopped=stopped)
            folder = self.journal.folder.parent if self.journal.folder is not None else None
            textfile = self.config.metrics_file
            if folder is not None:
                await self._write_one("status", folder / STATUS_FILE, _write_status, status)
            if textfile is not None:
                await self._write_one("metrics", textfile, metrics.write_metrics, status)
            if self.ready and not stopped:
                self.notifier.status(self._summary())
            await self._persist_leases()


def _write_status(path: Path, status: health.AgentStatus) -> None:
    ensure_state_dir(path.parent)
    health.write_status(path, status)


async def _open_all(configs: Mapping[str, ProviderConfig]) -> dict[str, Provider]:
    """Build and enter providers; on a failure, close the ones opened and raise StartError."""
    opened: dict[str, Provider] = {}
    try:
        for name, cfg in configs.items():
            try:
                # a store's SDK is imported, and a credential file read, when it is built:
                # not on the loop (a reload must not stall the watchdog)
                provider = await asyncio.to_thread(create_provider, name, cfg)
                opened[name] = await provider.__aenter__()
            except ProviderSetupError as exc:
                raise StartError(str(exc)) from None
            except Exception as exc:
                raise StartError(
                    f"provider {name!r} cannot be opened ({type(exc).__name__})"
                ) from None
    except BaseException:
        for provider in opened.values():
            with contextlib.suppress(Exception):
                await provider.__aexit__(None, None, None)
        raise
    return opened


def _by_provider(refs: Iterable[SecretRef]) -> dict[str, list[SecretRef]]:
    out: dict[str, list[SecretRef]] = {}
    for ref in refs:
        out.setdefault(ref.provider, []).append(ref)
    return out


async def run_agent(config: Config, flags: SecretManagerFlags, names: list[str]) -> int:
    notifier = Notifier.from_environment()
    return await Agent(config, flags, names, notifier).run()
