"""`evacuator check-config`: validates a settings file and names the file and each bad field; with `--schema`,
prints the settings file's JSON Schema instead (docs/settings.schema.json is this output)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from evacuator.errors import ConfigError
from evacuator.settings import Settings, load_settings

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
REGENERATE = "evacuator check-config --schema > docs/settings.schema.json"


def settings_schema() -> dict[str, Any]:
    """The settings file's JSON Schema, from the pydantic models as they validate input; a secret's default
    is left out (pydantic would show it masked, `**********`, which an editor would offer as a value)."""
    schema = Settings.model_json_schema(mode="validation")
    _drop_secret_defaults(schema)
    return {"$schema": SCHEMA_DIALECT, "$comment": f"Generated from evacuator/settings.py: {REGENERATE}",
            **schema, "title": "evacuator settings"}  # fmt: skip


def render_schema() -> str:
    return json.dumps(settings_schema(), indent=2, ensure_ascii=False) + "\n"


def _is_secret(node: dict[str, Any]) -> bool:
    variants = [node, *node.get("anyOf", []), *node.get("allOf", [])]
    return any(isinstance(v, dict) and v.get("format") == "password" for v in variants)


def _drop_secret_defaults(node: object) -> None:
    if isinstance(node, dict):
        if _is_secret(node) and node.get("default") is not None:
            del node["default"]
        for value in node.values():
            _drop_secret_defaults(value)
    elif isinstance(node, list):
        for value in node:
            _drop_secret_defaults(value)


def main(args: argparse.Namespace) -> int:
    if args.schema:
        sys.stdout.write(render_schema())
        return 0
    try:
        settings = load_settings(Path(args.file or args.config))
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"{args.file or args.config}: ok (host {settings.host.name}, {len(settings.peers)} peer(s))")
    return 0
