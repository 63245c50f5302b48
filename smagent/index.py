"""Which template uses which secrets and reads which files: what a change makes dirty.

Updated from every render, failed ones included: a template that failed for
want of a secret keeps that secret here, so when the secret recovers the
template is rendered again; one that failed on a missing include keeps the
include's path, so creating the file renders it.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from smagent.references import SecretRef


class Index:
    def __init__(self) -> None:
        self._refs: dict[str, frozenset[SecretRef]] = {}
        self._files: dict[str, frozenset[Path]] = {}

    def update(self, template: str, refs: Iterable[SecretRef], files: Iterable[Path]) -> None:
        self._refs[template] = frozenset(refs)
        self._files[template] = frozenset(files)

    def remove(self, template: str) -> None:
        self._refs.pop(template, None)
        self._files.pop(template, None)

    def __contains__(self, template: object) -> bool:
        return template in self._refs

    def templates(self) -> set[str]:
        return set(self._refs)

    def refs_of(self, template: str) -> frozenset[SecretRef]:
        return self._refs.get(template, frozenset())

    def using(self, refs: Iterable[SecretRef]) -> set[str]:
        """The templates that use any of `refs`."""
        wanted = set(refs)
        return {name for name, used in self._refs.items() if used & wanted}

    def reading(self, paths: Iterable[Path]) -> set[str]:
        """The templates that read (or tried to read) any of `paths`."""
        wanted = set(paths)
        return {name for name, read in self._files.items() if read & wanted}

    def all_refs(self) -> set[SecretRef]:
        out: set[SecretRef] = set()
        for refs in self._refs.values():
            out |= refs
        return out

    def all_files(self) -> set[Path]:
        out: set[Path] = set()
        for files in self._files.values():
            out |= files
        return out
