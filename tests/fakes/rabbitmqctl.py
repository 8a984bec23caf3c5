"""A fake `rabbitmqctl` for `--rabbitmqctl`: keeps users in a JSON file and records every command run.

Run as `python rabbitmqctl.py STATE_FILE [--quiet] COMMAND ARGS...`. The state file holds
`{"users": {name: {"password": ..., "tags": [...]}}, "permissions": {user: {vhost: [configure, write,
read]}}, "topic_permissions": {user: {"vhost exchange": [write, read]}}, "vhosts": [...],
"calls": [[...], ...], "legacy_tags": false, "failing": [command, ...]}`: each command in `failing` fails
(an injected error); with `legacy_tags` set, `list_users` prints tags as one string (`"[administrator]"`),
as rabbitmqctl before 3.9.
Passwords come on stdin, as the real one reads them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def write_state(
    path: Path, users: dict[str, dict[str, Any]], *, legacy_tags: bool = False, failing: tuple[str, ...] = ()
) -> None:
    state = {"users": users, "vhosts": ["/"], "calls": [], "legacy_tags": legacy_tags,
             "failing": list(failing)}  # fmt: skip
    path.write_text(json.dumps(state))


def read_state(path: Path) -> dict[str, Any]:
    state: dict[str, Any] = json.loads(path.read_text())
    return state


def _run(state: dict[str, Any], command: str, args: list[str]) -> int:
    users: dict[str, dict[str, Any]] = state["users"]
    if command == "list_users":
        legacy = state["legacy_tags"]
        rows = [{"user": name, "tags": f"[{', '.join(user['tags'])}]" if legacy else user["tags"]}
                for name, user in users.items()]  # fmt: skip
        print(json.dumps(rows))
        return 0
    if command in state.get("failing", []):
        print(f"Error: {command} failed (injected)", file=sys.stderr)
        return 69
    if command == "add_vhost":
        if args[0] in state["vhosts"]:
            print(f'Error: vhost "{args[0]}" already exists', file=sys.stderr)
            return 70
        state["vhosts"].append(args[0])
        return 0
    name = args[2] if command in ("set_permissions", "set_topic_permissions") else args[0]
    if command == "add_user":
        if name in users:
            print(f'Error: user "{name}" already exists', file=sys.stderr)
            return 70
        users[name] = {"password": sys.stdin.readline().rstrip("\n"), "tags": []}
        return 0
    if name not in users:
        print(f'Error: user "{name}" does not exist', file=sys.stderr)
        return 70
    if command == "change_password":
        users[name]["password"] = sys.stdin.readline().rstrip("\n")
    elif command == "set_user_tags":
        users[name]["tags"] = args[1:]
    elif command == "delete_user":
        del users[name]
        for kind in ("permissions", "topic_permissions"):
            state.get(kind, {}).pop(name, None)
    elif command in ("set_permissions", "set_topic_permissions") and args[1] not in state["vhosts"]:
        print(f'Error: vhost "{args[1]}" does not exist', file=sys.stderr)
        return 70
    elif command == "set_permissions":
        state.setdefault("permissions", {}).setdefault(name, {})[args[1]] = args[3:6]
    elif command == "set_topic_permissions":
        state.setdefault("topic_permissions", {}).setdefault(name, {})[f"{args[1]} {args[3]}"] = args[4:6]
    else:
        print(f"unknown command {command}", file=sys.stderr)
        return 64
    return 0


def main(argv: list[str]) -> int:
    path = Path(argv[0])
    args = [arg for arg in argv[1:] if arg != "--quiet"]
    state = read_state(path)
    state["calls"].append(args)
    code = _run(state, args[0], args[1:])
    path.write_text(json.dumps(state))
    return code


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
