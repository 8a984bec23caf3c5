"""docs/settings.schema.json is what the settings models generate (editors complete and check the YAML with
it): kept equal, secrets without defaults, and it takes the example config and refuses what the models do."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from evacuator.cli import main
from evacuator.commands.check_config import REGENERATE, render_schema

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "docs" / "settings.schema.json"
EXAMPLE = ROOT / "config" / "evacuator.example.yaml"


def _validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(COMMITTED.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_the_committed_schema_is_what_the_settings_models_generate() -> None:
    assert COMMITTED.read_text(encoding="utf-8") == render_schema(), (
        f"docs/settings.schema.json differs from the settings models: regenerate it, from the repository "
        f"root: .venv/bin/{REGENERATE}"
    )


def test_check_config_schema_prints_it(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", "--schema"]) == 0
    assert capsys.readouterr().out == render_schema()


def _secrets(node: object, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    """Every schema node that holds a secret (pydantic's SecretStr: format password), with where it is."""
    found: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node, dict):
        variants = [node, *node.get("anyOf", [])]
        if any(isinstance(v, dict) and v.get("format") == "password" for v in variants):
            found.append((path, node))
        for key, value in node.items():
            found += _secrets(value, f"{path}/{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _secrets(value, f"{path}/{index}")
    return found


def test_no_secret_has_a_default_in_the_schema() -> None:
    secrets = _secrets(json.loads(render_schema()))
    assert {path for path, _ in secrets} >= {"/$defs/BrokerSettings/properties/url",
                                             "/$defs/IpmiSourceSettings/properties/password"}  # fmt: skip
    assert [path for path, node in secrets if node.get("default") is not None] == []
    assert "*****" not in render_schema()


def test_the_example_config_is_valid_against_the_schema() -> None:
    example = yaml.safe_load(EXAMPLE.read_text())
    assert [f"{e.json_path}: {e.message}" for e in _validator().iter_errors(example)] == []


@pytest.mark.parametrize(("change", "where"), [
    ({"evacuation": {"shutdown_timeout_secs": 3}}, "$.evacuation"),
    ({"logging": {"format": "xml"}}, "$.logging.format"),
    ({"metrics": {"port": 70000}}, "$.metrics.port"),
    ({"host": {"libvirt_uri": "qemu:///system"}}, "$.host"),
])  # fmt: skip
def test_the_schema_refuses_what_the_models_refuse(change: dict[str, Any], where: str) -> None:
    settings = yaml.safe_load(EXAMPLE.read_text())
    for section, values in change.items():
        settings[section] = {**settings.get(section, {}), **values} if section != "host" else values
    assert where in [e.json_path for e in _validator().iter_errors(settings)]
