"""The SCRAM verifier cache: computed once, keyed by an HMAC, bounded, never a store of
passwords."""

from __future__ import annotations

import gc
import secrets
import subprocess
import sys
import types
from collections.abc import Iterator

from smagent import filters
from smagent.render import sandbox, scram


def fresh_password() -> str:
    """A password no other test put in the (process-wide) cache."""
    return f"pw-{secrets.token_hex(12)}-ünï"


def kdf_cost(password: str, salt: str | None = None, iterations: int = 4096) -> tuple[str, int]:
    """The verifier, and the PBKDF2 iterations computing it charged to a render."""
    with sandbox.metered() as meter:
        verifier = scram.verifier(password, salt, iterations)
    return verifier, meter.kdf_iterations


def test_a_verifier_is_computed_once() -> None:
    """The first call runs PBKDF2 (twice: the default salt is derived), the next costs
    nothing; both give the filter's own verifier."""
    password = fresh_password()
    expected = filters.scram_sha256(password)
    assert (expected, 2 * 4096) == kdf_cost(password)
    assert (expected, 0) == kdf_cost(password)


def test_salt_and_iterations_are_part_of_the_entry() -> None:
    """Another salt or iteration count is another verifier, computed anew."""
    password = fresh_password()
    kdf_cost(password)
    salted, cost = kdf_cost(password, "c2FsdA==")
    assert (filters.scram_sha256(password, salt="c2FsdA=="), 4096) == (salted, cost)
    assert (filters.scram_sha256(password, iterations=100), 200) == kdf_cost(password, None, 100)


def test_key_parts_cannot_run_into_each_other() -> None:
    """No two different (password, salt, iterations) share a key: each part is delimited,
    and no salt is not an empty salt."""
    keys = {
        scram._digest("ab", "c", 1),
        scram._digest("a", "bc", 1),
        scram._digest("a", None, 1),
        scram._digest("a", "", 1),
        scram._digest("a1", None, 1),
        scram._digest("a", None, 11),
    }
    assert 6 == len(keys)


def _reachable(module: types.ModuleType) -> Iterator[object]:
    """Every object reachable from a module's globals, without entering other modules."""
    stack = [value for name, value in vars(module).items() if not name.startswith("__")]
    seen: set[int] = set()
    while stack:
        item = stack.pop()
        if id(item) in seen or isinstance(item, types.ModuleType | type):
            continue
        seen.add(id(item))
        yield item
        if not isinstance(item, str | bytes | types.FunctionType):
            stack.extend(gc.get_referents(item))


def test_the_cache_holds_no_password() -> None:
    """After verifiers are made, nothing reachable from the cache's module holds a
    password, whole or as bytes: entries are keyed by an HMAC under a per-process key."""
    passwords = [fresh_password() for _ in range(3)]
    for password in passwords:
        kdf_cost(password)
        kdf_cost(password, "c2FsdA==", 10)
    assert len(scram._cache) >= 6
    for item in _reachable(scram):
        for password in passwords:
            if isinstance(item, str):
                assert password not in item
            elif isinstance(item, bytes):
                assert password.encode() not in item


def test_the_cache_is_bounded_least_recently_used_out() -> None:
    """Past MAX_ENTRIES the least recently used verifiers leave the cache; used ones stay."""
    kept = fresh_password()
    first = fresh_password()
    kdf_cost(first, None, 1)
    kdf_cost(kept, None, 1)
    for index in range(scram.MAX_ENTRIES):
        if index % 1000 == 0:
            assert 0 == kdf_cost(kept, None, 1)[1]  # used: moves to the back
        kdf_cost(f"filler-{index}-{secrets.token_hex(4)}", None, 1)
    assert scram.MAX_ENTRIES == len(scram._cache)
    assert 0 == kdf_cost(kept, None, 1)[1]
    assert 2 == kdf_cost(first, None, 1)[1]


def test_the_hmac_key_is_drawn_per_process() -> None:
    """Two processes key the same password differently (a digest tells nothing outside)."""
    code = "from smagent.render import scram; print(scram._digest('pw', None, 4096).hex())"
    digests = {
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout
        for _ in range(2)
    }
    assert 2 == len(digests)
