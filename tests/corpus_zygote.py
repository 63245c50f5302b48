"""A fork server for the bad-input corpus: one warm interpreter, one forked child per case.

Starting Python and importing Jinja costs ~0.2-0.5 s per run on a loaded 2-core host;
forking an interpreter that has already imported smagent costs a few milliseconds.
The server does nothing but import smagent and fork, so each child is a fresh copy of
a single-threaded process that has run no smagent code: it gets its own session,
working folder, environment, stdio files and memory cap, runs `smagent.cli.main(argv)`,
and leaves through the normal interpreter shutdown (atexit hooks, thread joins) with
the exit code, exactly as the `smagent` script would. An exception escaping `main`
is printed as Python prints it ("Traceback (most recent call last)") with exit 1.

Protocol: one JSON request per line on stdin, one JSON reply per line on stdout.
Request: {"argv", "cwd", "env", "stdout", "stderr", "timeout", "memory"}.
Reply: {"exit": code (negative: killed by that signal), "timed_out": bool}.
This file is stdlib plus smagent: it runs as a script, outside pytest.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import select
import signal
import sys
import traceback
from typing import Any


def _child(request: dict[str, Any]) -> int:
    """In the forked child: set up the case's process, then run the CLI."""
    os.setsid()  # its own process group, so the server can kill what it leaves running
    for fd, path, flags in (
        (0, os.devnull, os.O_RDONLY),
        (1, request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
        (2, request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
    ):
        opened = os.open(path, flags | os.O_CLOEXEC, 0o600)
        os.dup2(opened, fd)
        os.close(opened)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    memory = request["memory"]
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    sys.argv = ["smagent", *request["argv"]]

    from smagent.cli import main

    try:
        code = main(request["argv"])
    except SystemExit as exc:  # argparse, or a sys.exit() in our code
        if exc.code is None or isinstance(exc.code, int):
            code = exc.code or 0
        else:
            print(exc.code, file=sys.stderr)
            code = 1
    except BaseException:  # what the interpreter would print for an uncaught exception
        traceback.print_exc()
        code = 1
    return code


def _serve_one(request: dict[str, Any]) -> dict[str, Any]:
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:
        raise SystemExit(_child(request))  # unwinds this process's stack: a normal exit
    pidfd = os.pidfd_open(pid)
    try:
        ready, _, _ = select.select([pidfd], [], [], request["timeout"])
    finally:
        os.close(pidfd)
    # The child is a zombie (or still running): its group id cannot be reused yet, so
    # this kills only what the case started and left behind (actions, stuck children).
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    return {"exit": os.waitstatus_to_exitcode(status), "timed_out": not ready}


def serve() -> None:
    # Warm the imports every command uses; the child then starts with them loaded.
    import smagent.cli
    import smagent.pipeline
    import smagent.providers.env
    import smagent.providers.file
    import smagent.render  # noqa: F401

    while True:
        line = sys.stdin.readline()
        if not line:
            return
        reply = _serve_one(json.loads(line))
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    serve()
