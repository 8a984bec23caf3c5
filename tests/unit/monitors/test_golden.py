"""Golden end-to-end: committed server-shaped /sys trees → `evacuator sensors --json` report, byte for byte.

After an intended change, regenerate with `EVACUATOR_UPDATE_GOLDEN=1 .venv/bin/pytest tests/unit/monitors`
and review the diff of tests/data/sysfs/golden/.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from monitors.report import build_sensor_report, format_sensor_report
from monitors.sources import EdacSource, HwmonSource, SourcePoller

SYSFS = Path(__file__).resolve().parents[2] / "data" / "sysfs"
GOLDEN = SYSFS / "golden"


def _report(tree: str) -> dict[str, object]:
    root = SYSFS / tree
    snapshot = SourcePoller([HwmonSource(root), EdacSource(root)]).poll()
    return build_sensor_report(snapshot, sysfs_root=root)


@pytest.mark.parametrize("tree", ["intel-2s", "amd-epyc", "faulty"])
def test_sensor_report_matches_golden(tree: str) -> None:
    actual = json.dumps(_report(tree), indent=2, sort_keys=True) + "\n"
    golden = GOLDEN / f"{tree}.json"
    if os.environ.get("EVACUATOR_UPDATE_GOLDEN") == "1":
        golden.write_text(actual)
    assert actual == golden.read_text()


def test_report_has_the_documented_fields() -> None:
    report = _report("amd-epyc")
    temp = report["temperatures"][0]  # type: ignore[index]
    assert {"chip", "hwmon", "sensor", "label", "celsius", "max_celsius", "crit_celsius"} <= set(temp)
    mc = report["memory_controllers"][1]  # type: ignore[index]
    assert {
        "controller",
        "ce_count",
        "ue_count",
        "ce_noinfo_count",
        "ue_noinfo_count",
        "csrows",
        "dimms",
    } <= set(mc)
    assert set(mc["csrows"][0]) == {"csrow", "ce_count", "ue_count", "channels"}
    assert set(mc["csrows"][0]["channels"][0]) == {"channel", "ce_count", "dimm_label"}
    assert set(mc["dimms"][0]) == {"dimm", "label", "ce_count", "ue_count"}


def test_text_report_lists_every_reading() -> None:
    text = format_sensor_report(_report("faulty"))
    assert "coretemp-platform-coretemp.0" in text and "FAULT /sys/devices/platform/coretemp.0" in text
