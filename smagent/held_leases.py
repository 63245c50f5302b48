"""The leases an agent holds, kept in its state folder so that the next one can revoke them.

An agent that restarts (upgrade, crash, reboot) reads new dynamic credentials
and writes them; the ones the previous process held would otherwise live on
until their leases end -- a whole TTL (hours, often) per restart, a database
user each. So the agent keeps `state_dir/leases-<key>.json` current (which
provider, which secret, the lease id and its end; never a credential), and
the next start treats each lease listed there as replaced: revoked once the
templates that use its secret were rendered anew and their actions ran, plus
the grace (smagent/retire.py). A lease id alone opens nothing: revoking or
renewing it takes a Vault token allowed to.

Each config has its own file, `leases-<key>.json` (key: a hash of the
config's real path, as the pending records name it), and the agent holds an
exclusive `flock` on its `.lock` sibling while it lives: two agents that
share a state folder (root's default /var/lib/smagent) never take each
other's current leases for an earlier run's, and a second agent started on
the same config (the first still running) adopts nothing, writes nothing.

The file is written atomically (like every file smagent writes) when the set
of leases changes, or a renewal moves a lease's end (a lease listed with an
end that passed is not revoked by the next start). A file that cannot be read
or parsed is reported and ignored: the leases in it then end on their own.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from smagent.logging import get_logger
from smagent.providers.base import Lease
from smagent.references import SecretRef

log = get_logger()

FORMAT = 2
"""2: the file names its config (1, unkeyed, is read as no leases: they end on their own)."""
MAX_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class HeldLease:
    ref: SecretRef
    lease: Lease

    @property
    def expires(self) -> float:
        return self.lease.obtained_at + self.lease.duration_s


def held_path(state_dir: Path, config_path: Path) -> Path:
    """The leases file of one config in `state_dir`."""
    real = os.path.realpath(config_path)
    return state_dir / f"leases-{hashlib.sha256(real.encode()).hexdigest()[:16]}.json"


def lock_held(path: Path) -> int | None:
    """Hold `path`'s lock for this process's life (the fd; closing it lets go), or None when
    a live process holds it. Blocking; OSError when the folder cannot be used."""
    fd = os.open(
        path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
    )
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except OSError:
        os.close(fd)
        raise
    return fd


def write_held(path: Path, config: str, held: list[HeldLease]) -> None:
    """Replace `path` atomically (mode 0600) with `held` of `config`; blocking."""
    from smagent.writer import FileSpec, write_file

    document = {
        "format": FORMAT,
        "config": config,
        "leases": [
            {
                "provider": item.ref.provider,
                "secret": item.ref.secret_id,
                "version": item.ref.version,
                "stage": item.ref.stage,
                "lease_id": item.lease.lease_id,
                "duration_s": item.lease.duration_s,
                "renewable": item.lease.renewable,
                "obtained_at": item.lease.obtained_at,
            }
            for item in sorted(held, key=lambda h: (str(h.ref), h.lease.lease_id))
        ],
    }
    write_file(FileSpec(path, mode=0o600), json.dumps(document, indent=1).encode() + b"\n")


def read_held(path: Path, config: str) -> list[HeldLease]:
    """The leases of `config` listed at `path`; none when there is no file, or it cannot be
    used (told)."""
    from smagent.regular_file import read_regular

    try:
        data, _ = read_regular(path, MAX_BYTES + 1)
        if len(data) > MAX_BYTES:
            raise ValueError("larger than 4 MiB")
        document = json.loads(data)
        if not isinstance(document, dict) or document.get("format") != FORMAT:
            raise ValueError("not a leases file of this smagent")
        if document.get("config") != config:
            raise ValueError("the leases file of another config")
        return [_entry(item) for item in document["leases"]]
    except FileNotFoundError:
        return []
    except (OSError, ValueError, KeyError, TypeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        log.warning(
            "leases.unreadable",
            path=str(path),
            error=str(reason),
            consequence="the leases an earlier run held end on their own",
        )
        return []


def _entry(item: dict[str, object]) -> HeldLease:
    ref = SecretRef(
        str(item["provider"]),
        str(item["secret"]),
        None if item.get("version") is None else str(item["version"]),
        None if item.get("stage") is None else str(item["stage"]),
    )
    lease = Lease(
        str(item["lease_id"]),
        float(item["duration_s"]),  # type: ignore[arg-type]
        bool(item["renewable"]),
        float(item["obtained_at"]),  # type: ignore[arg-type]
    )
    return HeldLease(ref, lease)
