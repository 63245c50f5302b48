"""What a render gives back: the output, or the problems, and what the template asked for.

No message here holds a secret value, nor text derived from one (see messages.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from smagent.providers.base import ProviderError
from smagent.references import Lookup, SecretRef

COMPUTED = "<computed>"
"""Shown instead of a name or key whose text was computed, so may derive from a secret."""


class ReferenceProblem(Exception):
    """A reference in a template that cannot give a value (message holds no value)."""

    def __init__(self, message: str, lookup: Lookup | None = None) -> None:
        super().__init__(message)
        self.lookup = lookup


@dataclass(frozen=True, slots=True)
class Problem:
    """Why a template cannot be written: where, which reference, what went wrong."""

    message: str
    file: str | None = None
    line: int | None = None
    reference: str | None = None
    """The reference as it may be shown (computed parts masked)."""
    error: ProviderError | None = None
    detail: str | None = None
    """The provider's words, with a computed secret id masked."""

    def __str__(self) -> str:
        where = self.file or ""
        if self.line is not None:
            where = f"{where}:{self.line}"
        return f"{where}: {self.message}" if where else self.message


@dataclass(frozen=True, slots=True)
class RenderOutcome:
    """One render of one template with the values known so far."""

    lookups: frozenset[Lookup]
    missing: frozenset[SecretRef] = frozenset()
    output: bytes | None = None
    problems: tuple[Problem, ...] = ()
    computed: frozenset[str] = frozenset()
    """The parts of the missing references (id, version, stage) that were computed in the
    template, so may derive from a secret: the pipeline makes them known to the redactor
    before any provider is given them (a provider's own words spell them its own way)."""
    labels: Mapping[Lookup, str] = field(default_factory=dict)
    """Each lookup as it may be shown (computed parts masked)."""
    files: frozenset[Path] = frozenset()
    """The template's source file and every file an include, import or extends read or
    looked for (a missing include's paths too), as far as the render got: what to watch.
    A name computed in the template (`{% include secrets.db.user ~ ".j2" %}`) can put
    secret-derived text in a path: log these paths as a count, never one by one."""

    @property
    def complete(self) -> bool:
        return self.output is not None
