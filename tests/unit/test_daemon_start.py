"""The daemon refuses to start blind: no working sensor source means exit 1 with the reason, for systemd."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_daemon_with_no_working_source_exits_nonzero(tmp_path: Path) -> None:
    empty_sys = tmp_path / "sys"
    empty_sys.mkdir()
    config = {
        "host": {"name": "hv-01", "libvirt_uri": "test:///default", "migration_address": "127.0.0.1"},
        "peers": [{"name": "hv-02", "libvirt_uri": "test:///default"}],
        "monitors": {
            "sysfs_root": str(empty_sys),
            "sources": {"rasdaemon": {"db_path": str(tmp_path / "no-such.db")}},
        },
        "state_dir": str(tmp_path / "state"),
        "logging": {"format": "json"},
    }
    path = tmp_path / "evacuator.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "evacuator.cli", "run", "--config", str(path)],
        capture_output=True, text=True, timeout=60, check=False, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    # The reason is logged as the daemon logs everything (here JSON), not as a loose line of text.
    last = json.loads(done.stderr.strip().splitlines()[-1])
    assert (last["event"], last["stage"]) == ("startup_failed", "sensors"), done.stderr
    assert "source" in last["reason"], done.stderr
