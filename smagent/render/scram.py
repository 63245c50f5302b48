"""The `scram_sha256` filter as templates get it: verifiers cached across passes.

PBKDF2 is deliberately slow; an unchanged password must not cost it again each
pass. The cache must not become a store of passwords, though: the agent runs
for months and passwords rotate. So an entry is keyed by an HMAC of the
password (with its salt and iteration count) under a key drawn at random when
the process starts, never by the password: the cache holds verifiers, which the
written files hold anyway, and digests no one outside this process can test a
guess against. It holds at most `MAX_ENTRIES`, dropping the least recently used,
so verifiers of rotated passwords leave it.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import secrets
import threading
from typing import Any

from smagent import filters
from smagent.render import sandbox
from smagent.values import Binary, BinaryAsTextError

MAX_ENTRIES = 4096

_KEY = secrets.token_bytes(32)
_cache: collections.OrderedDict[bytes, str] = collections.OrderedDict()
_lock = threading.Lock()
"""Renders run in threads at once."""


def _digest(password: str, salt: str | None, iterations: int) -> bytes:
    """The cache key: unambiguous over its three parts (each length-prefixed)."""
    mac = hmac.new(_KEY, digestmod=hashlib.sha256)
    salted = b"-" if salt is None else b"+" + _utf8(salt)  # no salt given is not an empty one
    for data in (_utf8(password), salted, str(iterations).encode()):
        mac.update(len(data).to_bytes(8, "big") + data)
    return mac.digest()


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")  # any str, lone surrogates included


def verifier(password: str, salt: str | None, iterations: int) -> str:
    """`filters.scram_sha256(password, salt, iterations)`, computed once per process while
    it is used; its PBKDF2 work is charged to the render under way (sandbox.py)."""
    if filters.is_scram_verifier(password):
        return password
    key = _digest(password, salt, iterations)
    with _lock:
        found = _cache.get(key)
        if found is not None:
            _cache.move_to_end(key)
            return found
    with sandbox.kdf_work(iterations * (2 if salt is None else 1)):  # the default salt: a 2nd KDF
        computed = filters.scram_sha256(password, salt=salt, iterations=iterations)
    with _lock:
        _cache[key] = computed
        while len(_cache) > MAX_ENTRIES:
            _cache.popitem(last=False)
    return computed


def scram_filter(password: Any, salt: str | None = None, iterations: int = 4096) -> str:
    """`scram_sha256` for templates: a binary secret is refused, verifiers are cached."""
    if isinstance(password, Binary):
        raise BinaryAsTextError(password.label)
    filters.check_scram_iterations(iterations)
    return verifier(str.__str__(str(password)), None if salt is None else str(salt), iterations)
