"""Running the lab's own commands (rabbitmq-server, rabbitmqctl, the evacuator CLI) to their end, each
failure a LabError that says which command and what it printed."""

from __future__ import annotations

import subprocess
from collections.abc import Mapping, Sequence

from evacuator.errors import LabError


def run_checked(command: Sequence[str], *, timeout_seconds: float, env: Mapping[str, str] | None = None,
                shown: str | None = None) -> str:  # fmt: skip
    """Runs `command` and returns its stdout; LabError when it cannot run or exits non-zero, naming it as
    `shown` (default: the whole command) with its output."""
    name = shown if shown is not None else " ".join(command)
    try:
        done = subprocess.run(list(command), env=None if env is None else dict(env), capture_output=True,
                              text=True, timeout=timeout_seconds, check=False)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LabError(f"`{name}` could not run: {exc!r}") from exc
    if done.returncode != 0:
        raise LabError(f"`{name}` failed ({done.returncode}): {(done.stdout + done.stderr).strip()}")
    return done.stdout
