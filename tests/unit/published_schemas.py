"""The published contract as a tenant reads it: docs/schemas/*.json and docs/asyncapi.yaml, checked with
jsonschema draft 2020-12 with format checking on (date-time included)."""

from __future__ import annotations

import json
import re
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

DOCS = Path(__file__).resolve().parents[2] / "docs"
ASYNCAPI_URI = "urn:evacuator:asyncapi"
_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")


def _is_date_time(value: object) -> bool:
    if not isinstance(value, str):
        return True  # formats only constrain strings
    if not _RFC3339.fullmatch(value):
        return False
    try:
        datetime.fromisoformat(value.upper())
    except ValueError:
        return False
    return True


def format_checker() -> jsonschema.FormatChecker:
    """Draft 2020-12's format checker, with `date-time` checked even without the optional rfc3339 package."""
    checker = jsonschema.FormatChecker(jsonschema.Draft202012Validator.FORMAT_CHECKER.checkers)
    if "date-time" not in checker.checkers:
        checker.checks("date-time")(_is_date_time)
    return checker


@cache
def published_schema(name: str) -> dict[str, Any]:
    """docs/schemas/<name>.json as committed."""
    loaded: dict[str, Any] = json.loads((DOCS / "schemas" / f"{name}.json").read_text(encoding="utf-8"))
    return loaded


@cache
def asyncapi() -> dict[str, Any]:
    """docs/asyncapi.yaml as committed."""
    loaded: dict[str, Any] = yaml.safe_load((DOCS / "asyncapi.yaml").read_text(encoding="utf-8"))
    return loaded


def file_validator(name: str) -> jsonschema.Draft202012Validator:
    """A validator of the published schema file `name`."""
    return jsonschema.Draft202012Validator(published_schema(name), format_checker=format_checker())


def payload_validator(kind: str) -> jsonschema.Draft202012Validator:
    """A validator of message `kind`'s payload as the AsyncAPI document gives it (its `$ref` followed)."""
    document = asyncapi()
    registry: Registry[Any] = Registry().with_resource(
        ASYNCAPI_URI, Resource.from_contents(document, default_specification=DRAFT202012)
    )
    ref = document["components"]["messages"][kind]["payload"]["$ref"]
    return jsonschema.Draft202012Validator(
        {"$ref": f"{ASYNCAPI_URI}{ref}"}, registry=registry, format_checker=format_checker()
    )


def errors(validator: jsonschema.Draft202012Validator, instance: object) -> list[str]:
    """What the validator finds wrong with `instance`, one line each (empty: valid)."""
    return [
        f"{'/'.join(map(str, error.absolute_path)) or 'body'}: {error.message}"
        for error in validator.iter_errors(instance)
    ]
