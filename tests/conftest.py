"""Shared pytest wiring: the real-service fixtures live in plugins, one per service."""

from collections.abc import Iterator

import pytest
import structlog

pytest_plugins = [
    "tests.fixtures.libvirt_lab",
    "tests.fixtures.broker",
    "tests.fixtures.rabbit_cluster",
    "tests.fixtures.daemon",
]


@pytest.fixture(autouse=True)
def _fresh_structlog() -> Iterator[None]:
    """A test that runs the CLI configures structlog to print to pytest's captured stderr, which is closed
    after that test: later tests that log would fail writing to it."""
    yield
    structlog.reset_defaults()
