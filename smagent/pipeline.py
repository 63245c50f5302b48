"""One pass: discover references -> resolve -> render -> write -> actions.

`render --once` is one call of `Pipeline.run`; the agent will call the same
pass again for the templates whose inputs changed. Rendering happens in
rounds (see render/renderer.py): every template is rendered with what is known, the
union of what they are missing is fetched concurrently, and only templates
still missing something are rendered again.

A template is written only from a complete round with no failed reference,
so a failed fetch or a bad template leaves the previous file exactly as it
was; the other templates are still written.
"""

from __future__ import annotations

import asyncio
import dataclasses
import difflib
import enum
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from smagent import writer
from smagent.actions import ActionResult, coalesce
from smagent.config import Action, Config, TemplateSpec
from smagent.logging import get_logger
from smagent.providers.base import FetchResult, Provider
from smagent.references import Lookup, SecretRef
from smagent.regular_file import read_regular
from smagent.render import Problem, Renderer, RenderOutcome
from smagent.resolver import Resolver
from smagent.tasks import finish_even_if_cancelled

if TYPE_CHECKING:
    from smagent.pending import Journal, Ledger, Record

log = get_logger()

MAX_ROUNDS = 8


class Status(enum.Enum):
    WRITTEN = "written"
    UNCHANGED = "unchanged"
    METADATA_FIXED = "mode/owner fixed"
    WOULD_WRITE = "would change"
    WOULD_FIX_METADATA = "would fix mode/owner"
    WOULD_KEEP = "would not change"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class TemplateResult:
    template: TemplateSpec
    status: Status
    lookups: frozenset[Lookup] = frozenset()
    problems: tuple[Problem, ...] = ()
    changed_lines: tuple[int, ...] = ()
    """For --dry-run: the line numbers of the new file that differ (never their text)."""
    files: frozenset[Path] = frozenset()
    """What the render read: the source and its includes (for the agent's watcher)."""
    write_failed: bool = False
    """Failed at the write (folder, owner, disk), not for want of a value: worth retrying."""


@dataclass(slots=True)
class PassResult:
    templates: list[TemplateResult] = field(default_factory=list)
    actions: list[ActionResult] = field(default_factory=list)
    fetched: int = 0
    due: list[Action] = field(default_factory=list)
    """The distinct actions the written files owe, in the order first named."""
    record: Record | None = None
    """Where `due` is kept on disk until it has run (None: no journal, or nothing owed)."""
    canonical_of: dict[SecretRef, SecretRef] = field(default_factory=dict)
    """Each ref a template wrote -> its provider's one spelling (the resolver's)."""

    @property
    def ok(self) -> bool:
        return all(t.status is not Status.FAILED for t in self.templates) and all(
            a.ok for a in self.actions
        )


class Pipeline:
    def __init__(
        self,
        config: Config,
        providers: Mapping[str, Provider],
        renderer: Renderer | None = None,
    ) -> None:
        self.config = config
        self.providers = providers
        self.renderer = Renderer(config) if renderer is None else renderer
        self._warned_folders: set[Path] = set()

    def _prepare_folders(self, templates: Sequence[TemplateSpec], dry_run: bool) -> None:
        """Before a pass: warn once about exposed folders; remove dead writers' leftovers.

        A folder others can write to is a standing risk, not an event: one
        warning per folder for the life of this pipeline, not one per pass.
        Leftovers are removed only for a real pass (SPEC section 4); a live
        writer's temporary file (another `render --once` in flight) is kept.
        """
        destinations = [template.destination for template in templates]
        for folder in writer.folders_writable_by_others(destinations):
            if folder not in self._warned_folders:
                self._warned_folders.add(folder)
                log.warning(
                    "folder.writable_by_others",
                    folder=str(folder),
                    hint="other users can replace files written there; "
                    "make it writable by its owner only",
                )
        if dry_run:
            return
        names: dict[Path, list[str]] = {}
        for template in templates:
            names.setdefault(template.destination, []).append(template.name)
        for found in writer.clean_stale_temp_files(destinations):
            template_name = ", ".join(names[found.destination])
            if found.error is not None:  # the write itself will report the folder's problem
                log.warning(
                    "tempfile.cleanup_failed", template=template_name, error=str(found.error)
                )
            for path in found.removed:
                log.warning("tempfile.removed", path=str(path), template=template_name)
            for path in found.in_use:
                log.info("tempfile.in_use", path=str(path), template=template_name)

    async def run(
        self,
        templates: Sequence[TemplateSpec] | None = None,
        *,
        dry_run: bool = False,
        resolver: Resolver | None = None,
        journal: Journal | None = None,
        ledger: Ledger | None = None,
        run_actions: bool = True,
    ) -> PassResult:
        """One pass over `templates` (default: all).

        `resolver`: where values come from (default: the stores, fresh; the agent
        passes its cache's view). `journal`: where the actions owed are recorded
        before the first file is replaced. `ledger`: the actions owed across passes
        (the agent's, or `render --once`'s with what a dead process left); the pass
        adds what its files owe and runs everything owed that is due, so each
        distinct action runs once. Once writing has begun, the writes and that run
        of the actions finish even if the pass is cancelled: a file replaced must
        get its action. `run_actions=False` (the agent): the pass only adds what its files
        owe to `ledger`, for the agent to run apart, so that a slow action holds up no file.
        """
        started = time.monotonic()
        chosen = list(self.config.templates if templates is None else templates)
        await asyncio.to_thread(self._prepare_folders, chosen, dry_run)
        if resolver is None:
            resolver = Resolver(self.providers, float(self.config.defaults.fetch_timeout))
        outcomes = await self.render_all(chosen, resolver)
        if dry_run:
            result = PassResult(fetched=resolver.requests)
            for template, outcome in zip(chosen, outcomes, strict=True):
                result.templates.append(await self._finish(template, outcome, dry_run=True))
        else:
            result = await finish_even_if_cancelled(
                self._write_all(chosen, outcomes, resolver.requests, journal, ledger, run_actions)
            )
        result.canonical_of = dict(resolver.canonical_of)
        counts = {s.name.lower(): sum(t.status is s for t in result.templates) for s in Status}
        log.info(
            "pass.finished",
            **{name: count for name, count in counts.items() if count},
            secrets_fetched=resolver.requests,
            ms=round((time.monotonic() - started) * 1000, 1),
        )
        return result

    async def _write_all(
        self,
        chosen: list[TemplateSpec],
        outcomes: list[RenderOutcome],
        fetched: int,
        journal: Journal | None,
        ledger: Ledger | None,
        run_actions: bool = True,
    ) -> PassResult:
        result = PassResult(fetched=fetched)
        if journal is not None:
            result.record = await self._record_owed(chosen, outcomes, journal)
        writes = await asyncio.to_thread(_write_batch, chosen, outcomes)
        for template, outcome, written in zip(chosen, outcomes, writes, strict=True):
            finished = self._written(template, outcome, written)
            result.templates.append(dataclasses.replace(finished, files=outcome.files))
        changed = [t for t in result.templates if t.status is Status.WRITTEN]
        result.due = coalesce(a for t in changed for a in t.template.on_change)
        if result.record is not None:  # recorded but owed by no file written after all
            from smagent.pending import key_of, settle

            due = {key_of(action) for action in result.due}
            unowed = [key for key in result.record.keys if key not in due]
            await asyncio.to_thread(settle, result.record, unowed)
        if ledger is None:
            from smagent.pending import Ledger

            ledger = Ledger()
            ledger.add(result.due, result.record)
            result.actions = await ledger.run()
            ledger.release()
        else:
            ledger.add(result.due, result.record)
            if run_actions:
                result.actions = await ledger.run(ledger.due(time.monotonic()))
        return result

    async def _record_owed(
        self, chosen: list[TemplateSpec], outcomes: list[RenderOutcome], journal: Journal
    ) -> Record | None:
        """Record the actions of the files about to change, before any of them is replaced."""
        candidates = [
            (template, outcome.output)
            for template, outcome in zip(chosen, outcomes, strict=True)
            if outcome.output is not None and template.on_change
        ]
        if not candidates or not journal.enabled:
            return None
        changing = await asyncio.to_thread(_will_replace, candidates)
        owed = coalesce(a for t in changing for a in t.on_change)
        return await journal.record(owed, [t.name for t in changing])

    async def render_all(
        self, templates: Sequence[TemplateSpec], resolver: Resolver
    ) -> list[RenderOutcome]:
        """Render in rounds until every template is complete or failed."""
        outcomes: dict[int, RenderOutcome] = {}
        pending = list(range(len(templates)))
        still: list[int] = []
        for round_number in range(1, MAX_ROUNDS + 1):
            values = dict(resolver.results)
            # One thread call a round: renders hold the GIL, so one thread per template only
            # made them fight for it (and froze the event loop while they did).
            rendered = await asyncio.to_thread(self._render_round, templates, pending, values)
            missing: set[SecretRef] = set()
            still = []
            for index, outcome in zip(pending, rendered, strict=True):
                outcomes[index] = outcome
                if outcome.missing:
                    still.append(index)
                    missing |= outcome.missing
                    resolver.conceal(outcome.computed)
            if not still or round_number == MAX_ROUNDS:
                break
            await resolver.resolve(missing)
            pending = still
        if still:
            for index in still:
                label = self.renderer.template_file(templates[index])
                problem = Problem(
                    f"references still unresolved after {MAX_ROUNDS} rounds "
                    "(each depends on the value of the one before)",
                    label,
                )
                outcomes[index] = RenderOutcome(
                    outcomes[index].lookups, problems=(problem,), files=outcomes[index].files
                )
        return [outcomes[i] for i in range(len(templates))]

    def _render_round(
        self,
        templates: Sequence[TemplateSpec],
        indexes: Sequence[int],
        values: Mapping[SecretRef, FetchResult],
    ) -> list[RenderOutcome]:
        return [self.renderer.render(templates[i], values) for i in indexes]

    async def _finish(
        self, template: TemplateSpec, outcome: RenderOutcome, dry_run: bool
    ) -> TemplateResult:
        result = await self._finish_one(template, outcome, dry_run)
        return dataclasses.replace(result, files=outcome.files)

    async def _finish_one(
        self, template: TemplateSpec, outcome: RenderOutcome, dry_run: bool
    ) -> TemplateResult:
        if outcome.output is None:
            return self._written(template, outcome, None)
        spec = writer.FileSpec(template.destination, template.mode, template.owner, template.group)
        try:
            if dry_run:
                return await self._dry_run(template, spec, outcome)
            written: _Written = await writer.write_file_async(spec, outcome.output)
        except (writer.WriteError, ValueError) as exc:
            written = exc
        return self._written(template, outcome, written)

    def _written(
        self, template: TemplateSpec, outcome: RenderOutcome, written: _Written | None
    ) -> TemplateResult:
        """The result of a template, logged: failed to render (`written` None), failed to
        write (an exception), or written / unchanged / fixed."""
        name = template.name
        if written is None:
            for problem in outcome.problems:
                if problem.error is not None:
                    log.error(
                        "reference.failed",
                        template=name,
                        reference=problem.reference,
                        error=problem.error.kind,
                        detail=problem.detail,
                    )
                else:
                    log.error("template.failed", template=name, error=str(problem))
            return TemplateResult(template, Status.FAILED, outcome.lookups, outcome.problems)
        if isinstance(written, Exception):
            problem = Problem(str(written), str(template.destination))
            log.error("template.failed", template=name, error=str(problem))
            return TemplateResult(
                template, Status.FAILED, outcome.lookups, (problem,), write_failed=True
            )
        status = {
            writer.WriteOutcome.WRITTEN: Status.WRITTEN,
            writer.WriteOutcome.UNCHANGED: Status.UNCHANGED,
            writer.WriteOutcome.METADATA_FIXED: Status.METADATA_FIXED,
        }[written]
        event = {
            Status.WRITTEN: "template.rendered",
            Status.UNCHANGED: "template.unchanged",
            Status.METADATA_FIXED: "template.metadata_fixed",
        }[status]
        log.info(event, template=name, destination=str(template.destination))
        return TemplateResult(template, status, outcome.lookups)

    async def _dry_run(
        self, template: TemplateSpec, spec: writer.FileSpec, outcome: RenderOutcome
    ) -> TemplateResult:
        assert outcome.output is not None
        would = await asyncio.to_thread(writer.compare, spec, outcome.output)
        if would is writer.WriteOutcome.UNCHANGED:
            return TemplateResult(template, Status.WOULD_KEEP, outcome.lookups)
        if would is writer.WriteOutcome.METADATA_FIXED:
            return TemplateResult(template, Status.WOULD_FIX_METADATA, outcome.lookups)
        lines = await asyncio.to_thread(_changed_lines, template, outcome.output)
        return TemplateResult(template, Status.WOULD_WRITE, outcome.lookups, changed_lines=lines)


_Written = writer.WriteOutcome | writer.WriteError | ValueError
"""What writing one file came to: its outcome, or why it failed."""


def _write_batch(
    templates: Sequence[TemplateSpec], outcomes: Sequence[RenderOutcome]
) -> list[_Written | None]:
    """Write every rendered file, in order, in the calling thread (one thread call a pass:
    a call per file cost more in hand-offs than the writes that were not needed).
    None for a template with nothing to write."""
    written: list[_Written | None] = []
    for template, outcome in zip(templates, outcomes, strict=True):
        if outcome.output is None:
            written.append(None)
            continue
        spec = writer.FileSpec(template.destination, template.mode, template.owner, template.group)
        try:
            written.append(writer.write_file(spec, outcome.output))
        except (writer.WriteError, ValueError) as exc:
            written.append(exc)
    return written


def _will_replace(candidates: list[tuple[TemplateSpec, bytes]]) -> list[TemplateSpec]:
    """The templates whose file would get new bytes (a mode/owner fix owes no action)."""
    changing = []
    for template, output in candidates:
        spec = writer.FileSpec(template.destination, template.mode, template.owner, template.group)
        try:
            if writer.compare(spec, output) is writer.WriteOutcome.WRITTEN:
                changing.append(template)
        except (writer.WriteError, ValueError, OSError):
            changing.append(template)  # the write will say what is wrong; owe to be safe
    return changing


def _changed_lines(template: TemplateSpec, new: bytes) -> tuple[int, ...]:
    """Line numbers (1-based, in the new file) that differ from the file on disk."""
    try:
        old, _ = read_regular(template.destination, follow_symlinks=False)  # replaced, not read
    except OSError:
        old = b""
    new_lines = new.splitlines()
    matcher = difflib.SequenceMatcher(None, old.splitlines(), new_lines, autojunk=False)
    changed: list[int] = []
    for tag, _, _, j1, j2 in matcher.get_opcodes():
        if tag in ("replace", "insert"):
            changed.extend(range(j1 + 1, j2 + 1))
        elif tag == "delete":
            changed.append(max(j1, 1))  # lines removed after line j1 of the new file
    return tuple(sorted(set(changed)))
