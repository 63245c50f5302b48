"""The `scram_sha256` filter as templates get it: verifiers cached across passes.

PBKDF2 is deliberately slow; an unchanged password must not cost it again each pass.
"""

from __future__ import annotations

import functools
from typing import Any

from smagent import filters
from smagent.render import sandbox
from smagent.values import Binary, BinaryAsTextError


@functools.lru_cache(maxsize=4096)
def _scram_cached(password: str, salt: str | None, iterations: int) -> str:
    if filters.is_scram_verifier(password):
        return password
    with sandbox.kdf_work(iterations * (2 if salt is None else 1)):  # the default salt: a 2nd KDF
        return filters.scram_sha256(password, salt=salt, iterations=iterations)


def scram_filter(password: Any, salt: str | None = None, iterations: int = 4096) -> str:
    """`scram_sha256` for templates: a binary secret is refused, verifiers are cached."""
    if isinstance(password, Binary):
        raise BinaryAsTextError(password.label)
    filters.check_scram_iterations(iterations)
    return _scram_cached(
        str.__str__(str(password)), None if salt is None else str(salt), iterations
    )
