"""Running rabbitmqctl for provisioning: one command at a time, passwords on stdin only, and users' tags."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
from collections.abc import Callable, Sequence
from enum import StrEnum

from notifiers.errors import ProvisioningError

_TIMEOUT_SECONDS = 60.0


class UserOutcome(StrEnum):
    """What provisioning did to a broker user."""

    CREATED = "created"
    PASSWORD_RESET = "password_reset"
    UNCHANGED = "unchanged"  # it existed: its tag and permissions were made right, its password kept


def ensure_user(
    user: str, password: str, *, tag: str, check: Callable[[str, frozenset[str]], None],
    rabbitmqctl: Sequence[str], reset_password: bool,
) -> UserOutcome:
    """Creates `user` with `password`, or, if it exists, lets `check` refuse it by its tags (it raises) and
    sets the password only when `reset_password`; a user made meanwhile by someone else is checked too. Then
    `tag` becomes its only tag (any other, administrator included, is cleared)."""
    outcome = _user(user, password, check=check, rabbitmqctl=rabbitmqctl, reset_password=reset_password)
    try:
        run_ctl(rabbitmqctl, ["set_user_tags", user, tag])
    except ProvisioningError:
        if outcome is UserOutcome.CREATED:  # untagged, it would be refused by every later attempt
            with contextlib.suppress(ProvisioningError):
                run_ctl(rabbitmqctl, ["delete_user", user])
        raise
    return outcome


def _user(
    user: str, password: str, *, check: Callable[[str, frozenset[str]], None], rabbitmqctl: Sequence[str],
    reset_password: bool,
) -> UserOutcome:
    tags = list_user_tags(rabbitmqctl).get(user)
    if tags is None:
        if run_ctl(rabbitmqctl, ["add_user", user], stdin=password, ok_if="already exists"):
            return UserOutcome.CREATED
        tags = list_user_tags(rabbitmqctl).get(user, frozenset())
    check(user, tags)
    if not reset_password:
        return UserOutcome.UNCHANGED
    run_ctl(rabbitmqctl, ["change_password", user], stdin=password)
    return UserOutcome.PASSWORD_RESET


def list_user_tags(rabbitmqctl: Sequence[str] = ("rabbitmqctl",)) -> dict[str, frozenset[str]]:
    """Every broker user and its tags (`rabbitmqctl list_users --formatter json`)."""
    output = ctl_output(rabbitmqctl, ["list_users", "--formatter", "json"])
    shown = " ".join([*rabbitmqctl, "list_users"])
    try:
        rows = json.loads(output)
        return {str(row["user"]): _tags(row["tags"]) for row in rows}
    except (ValueError, TypeError, KeyError) as exc:
        raise ProvisioningError(shown, 0, f"unexpected output ({exc!r}): {output[:200]}") from exc


def _tags(value: object) -> frozenset[str]:
    """Tags as rabbitmqctl prints them: a JSON list (3.9 and later) or one string like "[a, b]" (earlier)."""
    if isinstance(value, list):
        return frozenset(str(tag) for tag in value)
    if isinstance(value, str):
        return frozenset(tag for tag in re.split(r"[\s,\[\]]+", value) if tag)
    raise TypeError(f"tags {value!r}")


def run_ctl(
    rabbitmqctl: Sequence[str], arguments: list[str], *, stdin: str = "", ok_if: str | None = None
) -> bool:
    """Run one command; True if it succeeded, False if it failed with `ok_if` in its output."""
    try:
        ctl_output(rabbitmqctl, arguments, stdin=stdin)
    except ProvisioningError as exc:
        if ok_if is not None and ok_if in exc.output:
            return False
        raise
    return True


def ctl_output(rabbitmqctl: Sequence[str], arguments: list[str], *, stdin: str = "") -> str:
    """Run one command and return its standard output; raise ProvisioningError if it fails."""
    command = [*rabbitmqctl, "--quiet", *arguments]
    shown = " ".join(command)  # passwords only ever travel on stdin, so this is safe to show
    try:
        done = subprocess.run(
            command, input=stdin, capture_output=True, text=True, timeout=_TIMEOUT_SECONDS, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ProvisioningError(shown, -1, repr(exc)) from exc
    if done.returncode != 0:
        raise ProvisioningError(shown, done.returncode, f"{done.stdout}\n{done.stderr}".strip())
    return done.stdout


