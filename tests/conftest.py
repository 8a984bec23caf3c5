"""Shared pytest wiring: the real-service fixtures live in plugins, one per service."""

pytest_plugins = [
    "tests.fixtures.libvirt_lab",
    "tests.fixtures.broker",
]
