"""The floor for the scale benchmark: what a user would write by hand instead of smagent.

The same work as `smagent render --once` on the scale scenario's config (scale.py),
with nothing else: the secrets file read with PyYAML's C loader, each template
rendered once in Jinja's sandbox (smagent's options: strict undefined, no
autoescape, trailing newline kept), and the same atomic write only when the bytes
change: a temporary file in the destination's folder, exact mode, data, fsync,
rename, fsync of the folder. The output is byte-identical to smagent's.

Usage: `python benchmarks/minimal.py SECRETS_YAML NAMESPACE JOBS_FILE` where JOBS_FILE
holds one `SOURCE<TAB>DESTINATION<TAB>OCTAL_MODE` a line.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import jinja2
import jinja2.sandbox
import yaml


def write_if_changed(destination: Path, data: bytes, mode: int) -> bool:
    """Replace `destination` atomically when its bytes differ; True when written."""
    try:
        if destination.read_bytes() == data:
            return False
    except FileNotFoundError:
        pass
    folder = destination.parent
    fd, temp = tempfile.mkstemp(prefix=f".{destination.name}.", dir=folder)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temp, destination)
    folder_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(folder_fd)
    finally:
        os.close(folder_fd)
    return True


def main(secrets_file: str, namespace: str, jobs_file: str) -> None:
    with open(secrets_file, "rb") as handle:
        data = yaml.load(handle, Loader=yaml.CSafeLoader)
    env = jinja2.sandbox.SandboxedEnvironment(
        undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=True
    )
    context = {namespace: data}
    for line in Path(jobs_file).read_text().splitlines():
        source, destination, mode = line.split("\t")
        template = env.from_string(Path(source).read_text())
        output = template.render(secrets=context).encode()
        write_if_changed(Path(destination), output, int(mode, 8))


if __name__ == "__main__":
    main(*sys.argv[1:4])
